/* Faults that must neither kill, hang nor split larderd: requests that outlive
 * drain_timeout at shutdown (answered 503 shutting_down, exit 0, whatever the threads are
 * stuck in), and reloads that would leave it beyond repair over HTTP. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* drain_timeout of these tests, and the bound a shutdown must finish within after it. */
#define DRAIN_S 2
#define BOUND_MS ((DRAIN_S + 30) * 1000)

struct pending {
    struct daemon *d;
    char path[128];
    atomic_bool done;
    int status;
    char code[64];
};

static void *post_one(void *arg)
{
    struct pending *p = arg;
    struct larder__http_response r = {0};
    int e = larder__http_request(&p->d->url, "POST", p->path, NULL, "text/plain", "x", 1,
                                 120000, &r);
    p->status = e < 0 ? e : r.status;
    snprintf(p->code, sizeof p->code, "%s", e < 0 ? "" : error_code(&r));
    larder__http_response_clear(&r);
    atomic_store(&p->done, true);
    return NULL;
}

static void start_post(struct pending *p, struct daemon *d, const char *model, pthread_t *th)
{
    memset(p, 0, sizeof *p);
    p->d = d;
    snprintf(p->path, sizeof p->path, "/v1/models/%s/infer", model);
    assert_int_equal(pthread_create(th, NULL, post_one, p), 0);
}

/* Waits (bounded) until GET /v1/models/NAME has field >= want. */
static void wait_field(struct daemon *d, const char *model, const char *field, long long want)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s", model);
    for (int i = 0; i < 6000 && json_field(d, path, field) < want; i++)
        usleep(5000);
    assert_true(json_field(d, path, field) >= want);
}

/* Waits for the request's reply at most BOUND_MS after SIGTERM. */
static void wait_answer(struct pending *p, pthread_t th)
{
    for (int waited = 0; waited < BOUND_MS && !atomic_load(&p->done); waited += 10)
        usleep(10000);
    assert_true(atomic_load(&p->done));
    pthread_join(th, NULL);
}

/* Waits at most BOUND_MS for the daemon to exit, leaving it to daemon_stop to reap. */
static void wait_exit(struct daemon *d)
{
    siginfo_t si;
    bool gone = false;
    for (int waited = 0; waited < BOUND_MS && !gone; waited += 10) {
        memset(&si, 0, sizeof si);
        gone = waitid(P_PID, (id_t)d->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
               si.si_pid == d->pid;
        if (!gone)
            usleep(10000);
    }
    assert_true(gone);
}

#define CONFIG(server, models)                                                              \
    "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\ndrain_timeout = 2s\n"     \
    "request_timeout = 60s\n" server models

/* Starts a daemon with `config`, sends n requests to `model`, waits until the model has n
 * of `field` (leases: inside the backend; waiters: waiting for its load), sends SIGTERM:
 * every request must be answered 503 shutting_down and the daemon exit 0, each within
 * BOUND_MS. */
static void answered_at_stop(const char *config, const char *model, const char *field, int n)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, config), 0);
    struct pending p[4];
    pthread_t th[4];
    assert_true(n <= 4);
    for (int i = 0; i < n; i++)
        start_post(&p[i], &d, model, &th[i]);
    wait_field(&d, model, field, n);
    kill(d.pid, SIGTERM);
    for (int i = 0; i < n; i++) {
        wait_answer(&p[i], th[i]);
        assert_int_equal(p[i].status, 503);
        assert_string_equal(p[i].code, "shutting_down");
    }
    wait_exit(&d);
    assert_int_equal(daemon_stop(&d), 0);
}

/* A request inside a backend call longer than drain_timeout: answered, not aborted. */
static void test_inference_past_drain(void **state)
{
    answered_at_stop(CONFIG("", "[model.slow]\nbackend = synthetic\ninfer_ms = 15000\n"), "slow",
                     "leases", 1);
}

/* Several at once: two inside the backend on both inference threads, one queued for them. */
static void test_many_inferences_past_drain(void **state)
{
    answered_at_stop(CONFIG("threads = 2\n", "[model.slow]\nbackend = synthetic\n"
                                             "infer_ms = 15000\n"),
                     "slow", "leases", 3);
}

/* A request waiting for a load that outlives the drain (and the manager's close_timeout):
 * the manager's close fails it, and the loader thread is not waited for. */
static void test_load_past_drain(void **state)
{
    answered_at_stop(CONFIG("", "[model.heavy]\nbackend = synthetic\nload_ms = 60000\n"),
                     "heavy", "waiters", 1);
}

/* ---- reloads that would empty the daemon --------------------------------------------------- */

/* Writes the config file byte for byte (no [server] added). */
static void write_raw(struct daemon *d, const char *bytes, size_t len)
{
    FILE *f = fopen(d->config, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_text(struct daemon *d, const char *text)
{
    write_raw(d, text, strlen(text));
}

/* POST /v1/reload answers 400 reload_failed with `needle` in its message. */
static void reload_refused(struct daemon *d, const char *needle)
{
    struct larder__http_response r = {0};
    assert_int_equal(http(d, "POST", "/v1/reload", NULL, NULL, 0, true, &r), 400);
    assert_string_equal(error_code(&r), "reload_failed");
    if (needle && !strstr(r.body, needle))
        fail_msg("'%s' lacks '%s'", r.body, needle);
    larder__http_response_clear(&r);
}

#define TWO_MODELS "[model.a]\nbackend = synthetic\n[model.b]\nbackend = synthetic\n"

static void test_reload_refuses_to_empty(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, TWO_MODELS), 0);
    static const char nul[] = "\0[model.a]\nbackend = synthetic\n";
    static const struct {
        const char *bytes;
        size_t len; /* 0: strlen */
        const char *needle;
    } files[] = {
        {"", 0, "allow_empty = yes"},
        {"  \n\t\n\n", 0, "allow_empty = yes"},
        {"# nothing here\n; nor here\n", 0, "allow_empty = yes"},
        {nul, sizeof nul - 1, NULL},
        {"[server]\nlisten = 127.0.0.1:0\n" TWO_MODELS, 0, "admin_tokens"},
        {"[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n", 0,
         "would drop all 2 models"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        write_raw(&d, files[i].bytes,
                  files[i].len ? files[i].len : strlen(files[i].bytes));
        reload_refused(&d, files[i].needle);
        /* nothing changed: the models are there, the admin routes answer */
        assert_int_equal(http_get(&d, "/v1/models/a"), 200);
        assert_int_equal(http_get(&d, "/v1/models/b"), 200);
    }
    /* a directory where the file was */
    assert_int_equal(unlink(d.config), 0);
    assert_int_equal(mkdir(d.config, 0700), 0);
    reload_refused(&d, NULL);
    assert_int_equal(rmdir(d.config), 0);
    assert_int_equal(http_get(&d, "/v1/models/a"), 200);
    /* said explicitly, the same emptying reload goes through */
    write_text(&d, "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
                   "allow_empty = yes\n");
    assert_int_equal(http(&d, "POST", "/v1/reload", NULL, NULL, 0, true, NULL), 200);
    assert_int_equal(http_get(&d, "/v1/models/a"), 404);
    /* and a daemon with no model may reload into another without the key */
    assert_int_equal(daemon_write_config(&d, "[model.c]\nbackend = synthetic\n"), 0);
    assert_int_equal(http(&d, "POST", "/v1/reload", NULL, NULL, 0, true, NULL), 200);
    assert_int_equal(http_get(&d, "/v1/models/c"), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- reloads that cannot drop or change a busy model --------------------------------------- */

#define BUSY_SERVER "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n" \
                    "drain_timeout = 200ms\n"
#define BUSY "[model.busy]\nbackend = synthetic\ninfer_ms = 4000\n"
#define OTHER "[model.other]\nbackend = synthetic\n"

/* POST /v1/reload: 200, with `pending` naming `name` (action given) or empty (NULL). */
static void reload_pending(struct daemon *d, const char *name, const char *action)
{
    struct larder__http_response r = {0};
    assert_int_equal(http(d, "POST", "/v1/reload", NULL, NULL, 0, true, &r), 200);
    json_t *o = json_loads(r.body, 0, NULL);
    json_t *pending = json_object_get(o, "pending");
    assert_true(json_is_array(pending));
    assert_int_equal(json_array_size(json_object_get(o, "failed")), 0);
    if (!name) {
        assert_int_equal(json_array_size(pending), 0);
    } else {
        assert_int_equal(json_array_size(pending), 1);
        json_t *e = json_array_get(pending, 0);
        assert_string_equal(json_string_value(json_object_get(e, "name")), name);
        assert_string_equal(json_string_value(json_object_get(e, "action")), action);
        assert_non_null(json_string_value(json_object_get(e, "error")));
    }
    json_decref(o);
    larder__http_response_clear(&r);
}

/* The busy model answers with its old definition (no sleep: ?sleep_ms=0). */
static int quick_infer(struct daemon *d, const char *model)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/infer?sleep_ms=0", model);
    return http(d, "POST", path, "text/plain", "x", 1, false, NULL);
}

static void test_reload_keeps_busy_model(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, BUSY_SERVER BUSY OTHER), 0);
    struct pending p;
    pthread_t th;
    start_post(&p, &d, "busy", &th);
    wait_field(&d, "busy", "leases", 1);
    /* dropped while busy: kept, listed and served as it was, and pending */
    assert_int_equal(daemon_write_config(&d, BUSY_SERVER OTHER), 0);
    reload_pending(&d, "busy", "drop");
    assert_int_equal(http_get(&d, "/v1/models/busy"), 200);
    assert_int_equal(quick_infer(&d, "busy"), 200);
    /* a reload that no longer drops it clears it, and nothing is "already defined" */
    assert_int_equal(daemon_write_config(&d, BUSY_SERVER BUSY OTHER), 0);
    reload_pending(&d, NULL, NULL);
    /* changed while busy: the old definition stays until the lease comes back... */
    assert_int_equal(daemon_write_config(&d, BUSY_SERVER BUSY "size = 2MiB\n" OTHER), 0);
    reload_pending(&d, "busy", "change");
    assert_int_equal(quick_infer(&d, "busy"), 200);
    /* ...then the background retry applies it: the model is defined anew, never loaded */
    wait_answer(&p, th);
    assert_int_equal(p.status, 200);
    wait_field(&d, "busy", "leases", 0);
    for (int i = 0; i < 2000 && json_field(&d, "/v1/models/busy", "loads") != 0; i++)
        usleep(10000);
    assert_int_equal(json_field(&d, "/v1/models/busy", "loads"), 0);
    assert_int_equal(quick_infer(&d, "busy"), 200);
    /* dropped again while busy, then drained: the retry drops it */
    start_post(&p, &d, "busy", &th);
    wait_field(&d, "busy", "leases", 1);
    assert_int_equal(daemon_write_config(&d, BUSY_SERVER OTHER), 0);
    reload_pending(&d, "busy", "drop");
    wait_answer(&p, th);
    assert_int_equal(p.status, 200);
    for (int i = 0; i < 2000 && http_get(&d, "/v1/models/busy") != 404; i++)
        usleep(10000);
    assert_int_equal(http_get(&d, "/v1/models/busy"), 404);
    assert_int_equal(quick_infer(&d, "busy"), 404);
    assert_int_equal(quick_infer(&d, "other"), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_inference_past_drain, daemon_teardown),
        cmocka_unit_test_teardown(test_many_inferences_past_drain, daemon_teardown),
        cmocka_unit_test_teardown(test_load_past_drain, daemon_teardown),
        cmocka_unit_test_teardown(test_reload_refuses_to_empty, daemon_teardown),
        cmocka_unit_test_teardown(test_reload_keeps_busy_model, daemon_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
