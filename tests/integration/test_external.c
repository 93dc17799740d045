/* External models: examples/external/server.py (an XGBoost classifier in Python, with
 * Debian's packages) started by larderd on first use, reverse-proxied with its events
 * streamed as they come, stopped by its ttl, restarted after a crash, and never left
 * behind by a larderd that was SIGKILLed. Commands that exit early or never answer their
 * health fail their load with a clear cause; bad values are refused by `larder check`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#ifndef EXAMPLES_DIR
#error "EXAMPLES_DIR must name the examples directory"
#endif

#define PYTHON "/usr/bin/python3"
#define SERVER EXAMPLES_DIR "/external/server.py"
#define ROWS "{\"rows\":[[1,0,0,0],[-1,0,1,0]]}"

static const char server_section[] =
    "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\nstate_dir = %s\n"
    "log_level = debug\n\n";

static const char py_model[] =
    "[model.py]\n"
    "command = " PYTHON " " SERVER " --port ${PORT}\n"
    "infer_path = /predict\n"
    "stop_timeout = 5s\n"
    "timeout = 60s\n"
    "ttl = %s\n\n";

static char state_dir[128];

static int group_setup(void **state)
{
    if (system(PYTHON " -c 'import xgboost, numpy' 2>/dev/null") != 0) {
        fprintf(stderr, "skipped: %s cannot import xgboost and numpy (Debian's "
                        "python3-xgboost, python3-numpy)\n", PYTHON);
        exit(77);
    }
    snprintf(state_dir, sizeof state_dir, "/tmp/larder-ext-state-XXXXXX");
    return mkdtemp(state_dir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", state_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int start(struct daemon *d, const char *ttl, const char *more)
{
    char config[4096];
    int n = snprintf(config, sizeof config, server_section, state_dir);
    n += snprintf(config + n, sizeof config - (size_t)n, py_model, ttl);
    snprintf(config + n, sizeof config - (size_t)n, "%s", more ? more : "");
    return daemon_start(d, config);
}

static int infer(struct daemon *d, const char *model, struct larder__http_response *resp)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    return http(d, "POST", path, "application/json", ROWS, strlen(ROWS), false, resp);
}

/* The pid the child reports for itself through the proxy route. */
static long child_pid(struct daemon *d)
{
    struct larder__http_response resp = {0};
    long pid = -1;
    if (http(d, "GET", "/v1/models/py/proxy/pid", NULL, NULL, 0, false, &resp) == 200) {
        const char *p = strstr(resp.body, "\"pid\":");
        pid = p ? strtol(p + 6, NULL, 10) : -1;
    }
    larder__http_response_clear(&resp);
    return pid;
}

static bool alive(long pid)
{
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno != ESRCH);
}

static bool state_is(struct daemon *d, const char *model, const char *want)
{
    char path[128], needle[64];
    struct larder__http_response resp = {0};
    snprintf(path, sizeof path, "/v1/models/%s", model);
    snprintf(needle, sizeof needle, "\"state\":\"%s\"", want);
    bool ok = http(d, "GET", path, NULL, NULL, 0, false, &resp) == 200 &&
              strstr(resp.body, needle);
    larder__http_response_clear(&resp);
    return ok;
}

static void test_cold_then_warm(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m", NULL), 0);
    struct larder__http_response resp = {0};
    char buf[64];
    assert_int_equal(infer(&d, "py", &resp), 200);
    assert_non_null(strstr(resp.body, "\"predictions\""));
    assert_string_equal(larder__http_header(&resp, "X-Larder-Cold-Start", buf, sizeof buf),
                        "true");
    larder__http_response_clear(&resp);
    long pid = child_pid(&d);
    assert_true(pid > 0);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(infer(&d, "py", &resp), 200);
        assert_string_equal(
            larder__http_header(&resp, "X-Larder-Cold-Start", buf, sizeof buf), "false");
        larder__http_response_clear(&resp);
    }
    assert_int_equal(child_pid(&d), pid);
    /* Measured: the child's process tree, not nothing. */
    assert_true(json_field(&d, "/v1/models/py", "memory.measured_bytes") > (1 << 20));
    /* The child's own errors pass through as they are. */
    assert_int_equal(http(&d, "POST", "/v1/models/py/infer", "application/json", "{}", 2,
                          false, &resp), 400);
    larder__http_response_clear(&resp);
    assert_int_equal(http(&d, "GET", "/v1/models/py/proxy/nothing-here", NULL, NULL, 0, false,
                          &resp), 404);
    larder__http_response_clear(&resp);
    /* An in-process model has no proxy route. */
    assert_int_equal(http(&d, "GET", "/v1/models/nope/proxy/pid", NULL, NULL, 0, false, &resp),
                     404);
    larder__http_response_clear(&resp);
    assert_int_equal(daemon_stop(&d), 0);
    assert_false(alive(pid));
}

/* Reads from fd until buf holds `needle`; false on EOF, error or the bound. */
static bool read_until(int fd, char *buf, size_t cap, size_t *len, const char *needle)
{
    struct wait_bound b = wait_start();
    while (!strstr(buf, needle)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) == 0) {
            if (!wait_again(&b))
                return false;
            continue;
        }
        ssize_t n = recv(fd, buf + *len, cap - *len - 1, 0);
        if (n <= 0)
            return false;
        *len += (size_t)n;
        buf[*len] = 0;
    }
    return true;
}

static void test_events_pass_through_as_they_come(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m", NULL), 0);
    struct larder__http_response resp = {0};
    assert_int_equal(infer(&d, "py", &resp), 200); /* started */
    larder__http_response_clear(&resp);
    int fd = larder__http_connect(&d.url, 10000);
    assert_true(fd >= 0);
    char req[256], buf[8192] = "";
    size_t len = 0;
    int n = snprintf(req, sizeof req, "GET /v1/models/py/proxy/stream?id=t1&n=3 HTTP/1.1\r\n"
                                      "Host: 127.0.0.1\r\n\r\n");
    assert_int_equal(send(fd, req, (size_t)n, 0), n);
    /* The first event arrives while the server still holds the others back. */
    assert_true(read_until(fd, buf, sizeof buf, &len, "\"i\": 0"));
    assert_non_null(strstr(buf, "200 OK"));
    assert_non_null(strstr(buf, "text/event-stream"));
    assert_null(strstr(buf, "\"i\": 1"));
    assert_int_equal(http(&d, "POST", "/v1/models/py/proxy/release?id=t1", "text/plain", "", 0,
                          false, &resp), 200);
    larder__http_response_clear(&resp);
    assert_true(read_until(fd, buf, sizeof buf, &len, "event: done"));
    assert_non_null(strstr(buf, "\"i\": 2"));
    close(fd);
    /* The lease came back with the stream's end. */
    assert_int_equal(wait_json_field(&d, "/v1/models/py", "leases", 0), 0);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_client_gone_releases_the_lease(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m", NULL), 0);
    int fd = larder__http_connect(&d.url, 10000);
    assert_true(fd >= 0);
    char req[256], buf[8192] = "";
    size_t len = 0;
    int n = snprintf(req, sizeof req, "GET /v1/models/py/proxy/stream?id=t2&n=3 HTTP/1.1\r\n"
                                      "Host: 127.0.0.1\r\n\r\n");
    assert_int_equal(send(fd, req, (size_t)n, 0), n);
    assert_true(read_until(fd, buf, sizeof buf, &len, "\"i\": 0"));
    assert_int_equal(json_field(&d, "/v1/models/py", "leases"), 1);
    close(fd); /* mid-stream */
    assert_int_equal(wait_json_field(&d, "/v1/models/py", "leases", 0), 0);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_ttl_stops_the_child(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "1s", NULL), 0);
    long pid = child_pid(&d); /* a request starts it */
    assert_true(pid > 0);
    assert_true(daemon_wait_log(&d, "model server stopped", 1) >= 1);
    WAIT_UNTIL(!alive(pid));
    assert_false(alive(pid));
    assert_true(state_is(&d, "py", "unloaded"));
    /* And the next request starts it again. */
    long again = child_pid(&d);
    assert_true(again > 0 && again != pid);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_crash_then_restart(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m", NULL), 0);
    long pid = child_pid(&d);
    assert_true(pid > 0);
    assert_int_equal(kill((pid_t)pid, SIGKILL), 0);
    struct larder__http_response resp = {0};
    /* Right after the crash: 502 from the dead server, or already the cooldown's 503. */
    int st = infer(&d, "py", &resp);
    assert_true(st == 502 || st == 503);
    larder__http_response_clear(&resp);
    WAIT_UNTIL(state_is(&d, "py", "failed"));
    assert_true(state_is(&d, "py", "failed"));
    assert_int_equal(http(&d, "GET", "/v1/models/py", NULL, NULL, 0, false, &resp), 200);
    assert_non_null(strstr(resp.body, "SIGKILL"));
    larder__http_response_clear(&resp);
    /* After the cooldown a request starts a new server. */
    WAIT_UNTIL(infer(&d, "py", NULL) == 200);
    long again = child_pid(&d);
    assert_true(again > 0 && again != pid);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_sigkilled_larderd_leaves_no_child(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m", NULL), 0);
    long pid = child_pid(&d);
    assert_true(pid > 0);
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    WAIT_UNTIL(!alive(pid));
    assert_false(alive(pid));
    daemon_stop(&d);
    /* The same state_dir again: it starts clean and serves. */
    struct daemon d2 = {0};
    assert_int_equal(start(&d2, "5m", NULL), 0);
    long pid2 = child_pid(&d2);
    assert_true(pid2 > 0 && pid2 != pid);
    assert_int_equal(daemon_stop(&d2), 0);
    assert_false(alive(pid2));
}

/* Gone: no such process, or only its zombie left. */
static bool gone(long pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return !alive(pid);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] == 'Z';
}

/* The records in state_dir, proved: the command ignores SIGTERM and leaves a grandchild
 * (which ignores it too) in its process group. PR_SET_PDEATHSIG is the child's alone, so
 * when larderd is SIGKILLed the server dies but the grandchild lives on; the next larderd
 * on the same state_dir ends the recorded group at its start. */
static void test_next_start_ends_the_leftover_group(void **state)
{
    char pidfile[192], more[1024];
    snprintf(pidfile, sizeof pidfile, "%s/grandchild.pid", state_dir);
    unlink(pidfile);
    snprintf(more, sizeof more,
             "[model.stubborn]\n"
             "command = /bin/sh -c 'trap \"\" TERM; sleep 600 & echo $! > %s; "
             "exec " PYTHON " " SERVER " --port ${PORT}'\n"
             "infer_path = /predict\nstop_timeout = 1s\n\n", pidfile);
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m", more), 0);
    struct larder__http_response resp = {0};
    assert_int_equal(infer(&d, "stubborn", &resp), 200);
    const char *p = strstr(resp.body, "\"pid\":");
    long server = p ? strtol(p + 6, NULL, 10) : -1;
    larder__http_response_clear(&resp);
    assert_true(server > 0);
    FILE *f = fopen(pidfile, "r");
    assert_non_null(f);
    long grandchild = -1;
    assert_int_equal(fscanf(f, "%ld", &grandchild), 1);
    fclose(f);
    assert_true(grandchild > 0 && getpgid((pid_t)grandchild) == getpgid((pid_t)server));

    assert_int_equal(kill(d.pid, SIGKILL), 0);
    WAIT_UNTIL(gone(server));
    assert_true(gone(server));
    assert_false(gone(grandchild)); /* beyond PR_SET_PDEATHSIG's reach */
    daemon_stop(&d);

    struct daemon d2 = {0};
    assert_int_equal(start(&d2, "5m", more), 0);
    WAIT_UNTIL(gone(grandchild));
    assert_true(gone(grandchild));
    assert_int_equal(daemon_stop(&d2), 0);
    unlink(pidfile);
}

static int grow(struct daemon *d, int mib)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/models/py/proxy/grow?mib=%d", mib);
    return http(d, "POST", path, "text/plain", "", 0, false, NULL);
}

/* The child's memory is sampled while it runs: its measured size and its reservation
 * follow what it grows to. */
static void test_measured_size_follows_the_child(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m", NULL), 0);
    assert_true(child_pid(&d) > 0);
    long long before = json_field(&d, "/v1/models/py", "memory.measured_bytes");
    assert_true(before > (1 << 20));
    assert_int_equal(grow(&d, 96), 200);
    long long want = before + (80LL << 20);
    WAIT_UNTIL(json_field(&d, "/v1/models/py", "memory.measured_bytes") >= want);
    assert_true(json_field(&d, "/v1/models/py", "memory.measured_bytes") >= want);
    assert_true(json_field(&d, "/v1/models/py", "memory.reserved_bytes") >= want);
    assert_int_equal(daemon_stop(&d), 0);
}

/* A child that grows past the budget: a warning, and the model goes once idle (its
 * child stopped); its last size is what its next load would reserve, so the next request
 * is refused as too big rather than started over the budget. */
static void test_growth_past_the_budget(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m", "[memory]\nbudget = 400MiB\nwatch_pressure = no\n\n"),
                     0);
    long pid = child_pid(&d);
    assert_true(pid > 0);
    assert_int_equal(grow(&d, 450), 200);
    assert_true(daemon_wait_log(&d, "model server grew past the budget", 1) >= 1);
    WAIT_UNTIL(!alive(pid));
    assert_false(alive(pid));
    assert_true(state_is(&d, "py", "unloaded"));
    struct larder__http_response resp = {0};
    assert_int_equal(infer(&d, "py", &resp), 503);
    assert_string_equal(error_code(&resp), "too_big");
    larder__http_response_clear(&resp);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_early_exit_names_its_stderr(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m",
                           "[model.quits]\n"
                           "command = /bin/sh -c 'echo \"no weights in /nowhere\" >&2; exit 3'\n"
                           "\n"),
                     0);
    struct larder__http_response resp = {0};
    int st = infer(&d, "quits", &resp);
    assert_true(st >= 500);
    assert_non_null(strstr(resp.body, "exited with status 3"));
    assert_non_null(strstr(resp.body, "no weights in /nowhere"));
    larder__http_response_clear(&resp);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_health_never_answers(void **state)
{
    struct daemon d = {0};
    assert_int_equal(start(&d, "5m",
                           "[model.mute]\n"
                           "command = /bin/sleep 600\n"
                           "timeout = 1500ms\n"
                           "stop_timeout = 1s\n"
                           "\n"),
                     0);
    struct larder__http_response resp = {0};
    /* The request waits as long as the load may take: either may give up first. */
    int st = infer(&d, "mute", &resp);
    assert_true(st >= 500);
    larder__http_response_clear(&resp);
    WAIT_UNTIL(state_is(&d, "mute", "failed"));
    assert_int_equal(http(&d, "GET", "/v1/models/mute", NULL, NULL, 0, false, &resp), 200);
    assert_non_null(strstr(resp.body, "did not answer 200 on /health"));
    larder__http_response_clear(&resp);
    assert_true(daemon_wait_log(&d, "model server started", 1) >= 1);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_bad_values(void **state)
{
    static const struct {
        const char *section, *needle;
    } cases[] = {
        {"command = server --port ${PORTT}\n", "unknown macro '${PORTT}'"},
        {"command = server 'unterminated\n", "unterminated single quote"},
        {"isolation = sideways\ncommand = x\n", "in-process, worker or external"},
        {"command = /bin/true\nbackend = xgboost\n", "an external model has no backend"},
        {"command = /bin/true\nhealth = health\n", "a path starts with '/'"},
        {"command = /bin/true\nproxy = https://127.0.0.1:1\n", "use http://"},
        {"command = /bin/true\nenv = NOEQUALS\n", "is not KEY=VALUE"},
        {"command = /bin/true\nstop_timeout = 0\n", "out of range"},
        {"isolation = external\n", "required with isolation = external"},
        {"backend = xgboost\nhealth = /h\n", "only an external model takes it"},
        {"command = /nonexistent/server\n", "is not an executable file"},
        {"backend = xgboost\napi = openai\n", "only an external model takes it"},
        {"command = /bin/true\napi = ollama\n", "write api = openai"},
        {"command = /bin/true\napi = grpc\n", "openai or none"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char file[] = "/tmp/larder-ext-check-XXXXXX";
        int fd = mkstemp(file);
        assert_true(fd >= 0);
        FILE *f = fdopen(fd, "w");
        fprintf(f, "[model.x]\n%s", cases[i].section);
        fclose(f);
        char cmd[512], out[4096] = "";
        snprintf(cmd, sizeof cmd, "%s check %s 2>&1", LARDER_CLI_PATH, file);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        size_t n = fread(out, 1, sizeof out - 1, p);
        out[n] = 0;
        int st = pclose(p);
        unlink(file);
        if (!strstr(out, cases[i].needle) || st == 0)
            fprintf(stderr, "case %zu: %s\n", i, out);
        assert_true(st != 0);
        assert_non_null(strstr(out, cases[i].needle));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_cold_then_warm, daemon_teardown),
        cmocka_unit_test_teardown(test_events_pass_through_as_they_come, daemon_teardown),
        cmocka_unit_test_teardown(test_client_gone_releases_the_lease, daemon_teardown),
        cmocka_unit_test_teardown(test_ttl_stops_the_child, daemon_teardown),
        cmocka_unit_test_teardown(test_crash_then_restart, daemon_teardown),
        cmocka_unit_test_teardown(test_sigkilled_larderd_leaves_no_child, daemon_teardown),
        cmocka_unit_test_teardown(test_next_start_ends_the_leftover_group, daemon_teardown),
        cmocka_unit_test_teardown(test_measured_size_follows_the_child, daemon_teardown),
        cmocka_unit_test_teardown(test_growth_past_the_budget, daemon_teardown),
        cmocka_unit_test_teardown(test_early_exit_names_its_stderr, daemon_teardown),
        cmocka_unit_test_teardown(test_health_never_answers, daemon_teardown),
        cmocka_unit_test(test_bad_values),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
