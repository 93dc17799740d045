/* Models in worker processes (isolation = worker), over HTTP against the built larderd:
 * a crash inside infer, a worker SIGKILLed mid-request, a load and an inference that
 * hang, eSpeak NG speech with its memory measured back, Tesseract loaded and unloaded 20
 * times without the daemon growing, and no worker outliving a larderd that was SIGKILLed
 * (PDEATHSIG, and the records of state_dir at the next start). Real engines, the
 * workertest plugin for what they will not do on request. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

/* The text names the crash's signal: SIGSEGV; under a sanitizer, which catches the fault
 * first, ASan's abort (SIGABRT) or TSan's exit status 66. */
static bool crash_signal(const char *text)
{
    return text && (strstr(text, "killed by signal 11 (SIGSEGV)") ||
                    strstr(text, "killed by signal 6 (SIGABRT)")
#ifdef __SANITIZE_THREAD__
                    || strstr(text, "exited with status 66")
#endif
                   );
}

static char marks[64];

static void make_marks(void)
{
    snprintf(marks, sizeof marks, "/tmp/larder-wmarks-XXXXXX");
    assert_non_null(mkdtemp(marks));
}

static void rm_marks(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", marks);
    assert_int_equal(system(cmd), 0);
}

static bool mark_exists(const char *name)
{
    char path[160];
    snprintf(path, sizeof path, "%s/%s", marks, name);
    return access(path, F_OK) == 0;
}

/* True when pid is gone or a zombie. */
static bool gone(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] == 'Z';
}

static int post(struct daemon *d, const char *model, const char *ct, const void *body,
                size_t len, struct larder__http_response *resp)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    return http(d, "POST", path, ct, body, len, false, resp);
}

static int post_text(struct daemon *d, const char *model, const char *text,
                     struct larder__http_response *resp)
{
    return post(d, model, "text/plain", text, strlen(text), resp);
}

/* GET /v1/models/NAME as JSON (decref it), or NULL. */
static json_t *model_info(struct daemon *d, const char *name)
{
    char path[160];
    struct larder__http_response r = {0};
    snprintf(path, sizeof path, "/v1/models/%s", name);
    json_t *j = NULL;
    if (http(d, "GET", path, NULL, NULL, 0, false, &r) == 200)
        j = json_loads(r.body, 0, NULL);
    larder__http_response_clear(&r);
    return j;
}

static bool state_is(struct daemon *d, const char *name, const char *state)
{
    json_t *j = model_info(d, name);
    const char *s = json_string_value(json_object_get(j, "state"));
    bool yes = s && strcmp(s, state) == 0;
    json_decref(j);
    return yes;
}

/* The model's last_error message ("" when none), into buf. */
static const char *last_error(struct daemon *d, const char *name, char *buf, size_t len)
{
    json_t *j = model_info(d, name);
    json_t *e = json_object_get(j, "last_error");
    const char *m = json_string_value(json_object_get(e, "message"));
    if (!m)
        m = json_string_value(e);
    snprintf(buf, len, "%s", m ? m : "");
    json_decref(j);
    return buf;
}

static long long memory_field(struct daemon *d, const char *name, const char *field)
{
    json_t *j = model_info(d, name);
    json_t *v = json_object_get(json_object_get(j, "memory"), field);
    long long x = json_is_integer(v) ? (long long)json_integer_value(v) : LLONG_MIN;
    json_decref(j);
    return x;
}

/* The children_bytes of the newest history sample of GET /v1/memory, or -1. */
static long long history_children(struct daemon *d)
{
    struct larder__http_response r = {0};
    long long v = -1;
    if (http(d, "GET", "/v1/memory?history=5", NULL, NULL, 0, false, &r) == 200) {
        json_t *j = json_loads(r.body, 0, NULL);
        json_t *h = json_object_get(j, "history");
        for (size_t i = json_array_size(h); i-- > 0;) {
            json_t *c = json_object_get(json_array_get(h, i), "children_bytes");
            if (json_is_integer(c)) {
                v = (long long)json_integer_value(c);
                break;
            }
        }
        json_decref(j);
    }
    larder__http_response_clear(&r);
    return v;
}

/* POSTs "hello" and returns the pid of the worker that answered, or -1. */
static pid_t echo_pid(struct daemon *d, const char *model)
{
    struct larder__http_response r = {0};
    pid_t pid = -1;
    if (post_text(d, model, "hello", &r) == 200) {
        json_t *j = json_loads(r.body, 0, NULL);
        json_t *p = json_object_get(j, "pid");
        if (json_is_integer(p))
            pid = (pid_t)json_integer_value(p);
        json_decref(j);
    }
    larder__http_response_clear(&r);
    return pid;
}

static bool serves(struct daemon *d, const char *model)
{
    return echo_pid(d, model) > 0;
}

static char config[4096];
static char backend_dir[64];

/* A backend directory with the build's plugins and the workertest one (links). */
static const char *backends(void)
{
    if (backend_dir[0])
        return backend_dir;
    snprintf(backend_dir, sizeof backend_dir, "/tmp/larder-wbe-XXXXXX");
    assert_non_null(mkdtemp(backend_dir));
    const char *build = getenv("LARDER_BACKEND_DIR");
    assert_non_null(build);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "ln -s %s/larder-*.so %s/larder-workertest.so %s/", build,
             TEST_PLUGIN_DIR, backend_dir);
    assert_int_equal(system(cmd), 0);
    return backend_dir;
}

/* Starts a daemon on `models` with the backend directory above (and `server`, more
 * [server] lines). */
static int start(struct daemon *d, const char *server, const char *models)
{
    char text[8192];
    snprintf(text, sizeof text,
             "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\nbackend_dir = %s\n"
             "%s\n%s",
             backends(), server ? server : "", models);
    return daemon_start(d, text);
}

/* ---- a crash inside infer --------------------------------------------------------------- */

static void test_crash_in_infer(void **state)
{
    (void)state;
    make_marks();
    snprintf(config, sizeof config,
             "[memory]\ncooldown = 100ms\nwatch_pressure = no\n\n"
             "[model.crashy]\nbackend = workertest\nisolation = worker\ninstances = 2\n"
             "marks = %s\n\n"
             "[model.calm]\nbackend = workertest\nisolation = worker\nmarks = %s\n\n"
             "[model.inproc]\nbackend = synthetic\n",
             marks, marks);
    struct daemon d;
    assert_int_equal(start(&d, NULL, config), 0);
    pid_t first = echo_pid(&d, "crashy");
    assert_true(first > 0);
    assert_true(first != d.pid);
    assert_true(serves(&d, "calm"));

    struct larder__http_response r = {0};
    assert_int_equal(post_text(&d, "crashy", "crash", &r), 502);
    assert_string_equal(error_code(&r), "worker_crashed");
    assert_true(crash_signal(r.body));
    larder__http_response_clear(&r);

    /* the daemon and the other models go on */
    assert_int_equal(http_get(&d, "/health"), 200);
    assert_true(serves(&d, "calm"));
    assert_int_equal(post(&d, "inproc", "application/json", "{\"x\":1}", 7, &r), 200);
    larder__http_response_clear(&r);

    /* failed, naming the signal; its process reaped */
    WAIT_UNTIL(state_is(&d, "crashy", "failed"));
    assert_true(state_is(&d, "crashy", "failed"));
    char why[512];
    assert_true(crash_signal(last_error(&d, "crashy", why, sizeof why)));
    WAIT_UNTIL(gone(first));
    assert_true(gone(first));
    json_t *j = model_info(&d, "crashy");
    assert_int_equal(json_integer_value(json_object_get(j, "leases")), 0);
    json_decref(j);

    /* after the cooldown a new worker serves */
    pid_t second = -1;
    WAIT_UNTIL((second = echo_pid(&d, "crashy")) > 0);
    assert_true(second > 0);
    assert_true(second != first);
    assert_true(state_is(&d, "crashy", "ready"));
    assert_int_equal(daemon_stop(&d), 0);
    rm_marks();
}

/* During the cooldown after a crash, the fallback serves. */
static void test_crash_fallback(void **state)
{
    (void)state;
    make_marks();
    snprintf(config, sizeof config,
             "[memory]\ncooldown = 60s\nwatch_pressure = no\n\n"
             "[model.fragile]\nbackend = workertest\nisolation = worker\nfallback = sturdy\n"
             "marks = %s\n\n"
             "[model.sturdy]\nbackend = workertest\nisolation = worker\nmarks = %s\n",
             marks, marks);
    struct daemon d;
    assert_int_equal(start(&d, NULL, config), 0);
    pid_t first = echo_pid(&d, "fragile");
    assert_true(first > 0);
    struct larder__http_response r = {0};
    assert_int_equal(post_text(&d, "fragile", "crash", &r), 502);
    assert_string_equal(error_code(&r), "worker_crashed");
    larder__http_response_clear(&r);
    WAIT_UNTIL(state_is(&d, "fragile", "failed"));
    assert_true(state_is(&d, "fragile", "failed"));
    assert_int_equal(post_text(&d, "fragile", "hello", &r), 200);
    json_t *j = json_loads(r.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "served_by")), "sturdy");
    assert_true(json_integer_value(json_object_get(j, "pid")) != first);
    json_decref(j);
    larder__http_response_clear(&r);
    assert_int_equal(daemon_stop(&d), 0);
    rm_marks();
}

/* ---- SIGKILL mid-request ------------------------------------------------------------------ */

struct slow_req {
    struct daemon *d;
    int status;
    char code[64];
    char body[1024];
};

static void *slow_thread(void *p)
{
    struct slow_req *s = p;
    struct larder__http_response r = {0};
    s->status = post_text(s->d, "victim", "slow", &r);
    snprintf(s->code, sizeof s->code, "%s", error_code(&r));
    snprintf(s->body, sizeof s->body, "%s", r.body ? r.body : "");
    larder__http_response_clear(&r);
    return NULL;
}

static void test_sigkill_mid_request(void **state)
{
    (void)state;
    make_marks();
    snprintf(config, sizeof config,
             "[model.victim]\nbackend = workertest\nisolation = worker\ninstances = 2\n"
             "marks = %s\n",
             marks);
    struct daemon d;
    assert_int_equal(start(&d, NULL, config), 0);
    pid_t pid = echo_pid(&d, "victim");
    assert_true(pid > 0);
    struct slow_req s = {.d = &d};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, slow_thread, &s), 0);
    WAIT_UNTIL(mark_exists("slow-running"));
    assert_true(mark_exists("slow-running"));
    assert_int_equal(kill(pid, SIGKILL), 0);
    pthread_join(t, NULL);
    assert_int_equal(s.status, 502);
    assert_string_equal(s.code, "worker_crashed");
    assert_non_null(strstr(s.body, "SIGKILL"));
    WAIT_UNTIL(state_is(&d, "victim", "failed"));
    assert_true(state_is(&d, "victim", "failed"));
    pid_t again = -1;
    WAIT_UNTIL((again = echo_pid(&d, "victim")) > 0);
    assert_true(again > 0 && again != pid);
    assert_int_equal(daemon_stop(&d), 0);
    rm_marks();
}

/* ---- hangs ----------------------------------------------------------------------------------- */

/* The pid of the one worker whose load left its mark, or -1. */
static pid_t loaded_pid(void)
{
    char cmd[160], out[32] = "";
    snprintf(cmd, sizeof cmd, "ls %s | grep '\\.load$' | head -1", marks);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    if (!fgets(out, sizeof out, p))
        out[0] = 0;
    pclose(p);
    return out[0] ? (pid_t)atoi(out) : -1;
}

static void test_hang_in_load(void **state)
{
    (void)state;
    make_marks();
    snprintf(config, sizeof config,
             "[model.stuck]\nbackend = workertest\nisolation = worker\nhang_load = yes\n"
             "worker_timeout = 1s\nmarks = %s\n\n"
             "[model.fine]\nbackend = workertest\nisolation = worker\nmarks = %s/fine\n",
             marks, marks);
    char sub[128];
    snprintf(sub, sizeof sub, "%s/fine", marks);
    assert_int_equal(mkdir(sub, 0755), 0);
    struct daemon d;
    assert_int_equal(start(&d, NULL, config), 0);
    struct larder__http_response r = {0};
    int st = post_text(&d, "stuck", "hello", &r);
    assert_int_equal(st, 500);
    assert_non_null(strstr(r.body, "did not answer load"));
    larder__http_response_clear(&r);
    pid_t pid = loaded_pid();
    assert_true(pid > 0);
    WAIT_UNTIL(gone(pid));
    assert_true(gone(pid));
    assert_true(state_is(&d, "stuck", "failed"));
    assert_true(serves(&d, "fine"));
    assert_int_equal(daemon_stop(&d), 0);
    rm_marks();
}

static void test_hang_in_infer(void **state)
{
    (void)state;
    make_marks();
    snprintf(config, sizeof config,
             "[model.hangs]\nbackend = workertest\nisolation = worker\ninstances = 2\n"
             "infer_timeout = 300ms\nworker_timeout = 1s\nmarks = %s\n",
             marks);
    struct daemon d;
    assert_int_equal(start(&d, NULL, config), 0);
    pid_t pid = echo_pid(&d, "hangs");
    assert_true(pid > 0);
    struct larder__http_response r = {0};
    /* a backend that honours the cancel: the ordinary infer_timeout */
    assert_int_equal(post_text(&d, "hangs", "slow", &r), 504);
    assert_string_equal(error_code(&r), "infer_timeout");
    larder__http_response_clear(&r);
    assert_int_equal(echo_pid(&d, "hangs"), pid); /* the same worker serves on */
    /* one that ignores it: the worker is killed */
    assert_int_equal(post_text(&d, "hangs", "hang", &r), 504);
    assert_string_equal(error_code(&r), "worker_timeout");
    larder__http_response_clear(&r);
    WAIT_UNTIL(gone(pid));
    assert_true(gone(pid));
    WAIT_UNTIL(state_is(&d, "hangs", "failed"));
    char why[512];
    assert_non_null(strstr(last_error(&d, "hangs", why, sizeof why), "did not stop"));
    pid_t again = -1;
    WAIT_UNTIL((again = echo_pid(&d, "hangs")) > 0);
    assert_true(again > 0 && again != pid);
    assert_int_equal(daemon_stop(&d), 0);
    rm_marks();
}

/* ---- eSpeak NG -------------------------------------------------------------------------------- */

static void test_espeak(void **state)
{
    (void)state;
    struct daemon d;
    assert_int_equal(start(&d, NULL, "[model.tts]\nbackend = espeak\nisolation = worker\n"), 0);
    struct larder__http_response r = {0};
    assert_int_equal(post_text(&d, "tts", "hello from larder", &r), 200);
    assert_true(r.body_len > 44 + 8000);
    assert_memory_equal(r.body, "RIFF", 4);
    assert_memory_equal(r.body + 8, "WAVE", 4);
    assert_non_null(strstr(r.headers, "audio/wav"));
    larder__http_response_clear(&r);
    const char js[] = "{\"text\": \"good morning\"}";
    assert_int_equal(post(&d, "tts", "application/json", js, sizeof js - 1, &r), 200);
    assert_memory_equal(r.body, "RIFF", 4);
    larder__http_response_clear(&r);
    assert_int_equal(post(&d, "tts", "application/json", "{\"txt\":1}", 9, &r), 400);
    larder__http_response_clear(&r);

    json_t *info = model_info(&d, "tts");
    assert_string_equal(json_string_value(json_object_get(info, "isolation")), "worker");
    json_decref(info);
    long long measured = memory_field(&d, "tts", "measured_bytes");
    assert_true(measured > (1 << 20));
    /* the worker's memory is sampled into the history each second */
    WAIT_UNTIL(history_children(&d) > (1 << 20));
    assert_true(history_children(&d) > (1 << 20));
    assert_int_equal(http(&d, "POST", "/v1/models/tts/unload", NULL, NULL, 0, true, &r), 200);
    larder__http_response_clear(&r);
    WAIT_UNTIL(state_is(&d, "tts", "unloaded"));
    WAIT_UNTIL(history_children(&d) == 0);
    assert_int_equal(history_children(&d), 0);
    long long back = memory_field(&d, "tts", "last_returned_bytes");
    fprintf(stderr, "espeak worker: measured %lld bytes, %lld returned by its unload\n",
            measured, back);
    assert_true(back >= measured / 2);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_espeak_refuses_in_process(void **state)
{
    (void)state;
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/larder-espeak-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char path[128], cmd[512], out[2048] = "";
    snprintf(path, sizeof path, "%s/larder.ini", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[model.tts]\nbackend = espeak\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s check %s 2>&1", LARDER_CLI_PATH, path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    assert_non_null(strstr(out, "isolation = worker"));
    /* and as a worker it checks clean */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("[model.tts]\nbackend = espeak\nisolation = worker\n", f);
    fclose(f);
    p = popen(cmd, "r");
    assert_non_null(p);
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    st = pclose(p);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fprintf(stderr, "%s\n", out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- Tesseract: 20 load/unload cycles --------------------------------------------------------- */

static uint64_t vm_rss(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    uint64_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %" SCNu64, &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

/* Daemon RSS after the first cycle and after `cycles`, for one isolation mode. */
static void ocr_cycles(const char *isolation, int cycles, uint64_t *ret_first, uint64_t *ret_last)
{
    size_t png_len = 0;
    char *png = read_file(EXAMPLES_DIR "/ocr.png", &png_len);
    assert_non_null(png);
    snprintf(config, sizeof config,
             "[model.ocr]\nbackend = tesseract\nlanguage = eng\nisolation = %s\n", isolation);
    struct daemon d;
    assert_int_equal(start(&d, NULL, config), 0);
    for (int i = 0; i < cycles; i++) {
        struct larder__http_response r = {0};
        assert_int_equal(post(&d, "ocr", "image/png", png, png_len, &r), 200);
        assert_non_null(strstr(r.body, "text"));
        larder__http_response_clear(&r);
        assert_int_equal(http(&d, "POST", "/v1/models/ocr/unload", NULL, NULL, 0, true, &r),
                         200);
        larder__http_response_clear(&r);
        WAIT_UNTIL(state_is(&d, "ocr", "unloaded"));
        if (i == 0)
            *ret_first = vm_rss(d.pid);
    }
    *ret_last = vm_rss(d.pid);
    assert_int_equal(daemon_stop(&d), 0);
    free(png);
}

static void test_tesseract_cycles(void **state)
{
    (void)state;
    uint64_t w0 = 0, w1 = 0, p0 = 0, p1 = 0;
    ocr_cycles("worker", 20, &w0, &w1);
    ocr_cycles("in-process", 20, &p0, &p1);
    fprintf(stderr,
            "larderd RSS over 20 tesseract load/unload cycles: worker %.1f -> %.1f MiB, "
            "in-process %.1f -> %.1f MiB\n",
            w0 / 1048576.0, w1 / 1048576.0, p0 / 1048576.0, p1 / 1048576.0);
    /* the worker case: the daemon never maps the engine, so it stays put (a few pages
     * of malloc arenas and HTTP buffers aside) and far below the in-process daemon */
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    /* (a sanitizer's quarantine and shadow memory grow the daemon: only the second bound) */
    assert_true(w1 <= w0 + (4u << 20));
#endif
    assert_true(w1 < p0);
}

/* ---- no orphans --------------------------------------------------------------------------------- */

static int count_records(const char *state_dir)
{
    char cmd[256], out[32] = "";
    snprintf(cmd, sizeof cmd, "ls %s/children 2>/dev/null | wc -l", state_dir);
    FILE *p = popen(cmd, "r");
    if (!p || !fgets(out, sizeof out, p))
        out[0] = 0;
    if (p)
        pclose(p);
    return atoi(out);
}

static void test_no_orphans(void **state)
{
    (void)state;
    make_marks();
    char sd[128];
    snprintf(sd, sizeof sd, "%s/state", marks);
    char server[256];
    snprintf(server, sizeof server, "state_dir = %s\n", sd);
    struct daemon d;
    assert_int_equal(start(&d, server,
                           "[model.a]\nbackend = workertest\nisolation = worker\n\n"
                           "[model.b]\nbackend = workertest\nisolation = worker\n\n"
                           "[model.c]\nbackend = espeak\nisolation = worker\n"),
                     0);
    pid_t a = echo_pid(&d, "a"), b = echo_pid(&d, "b");
    struct larder__http_response r = {0};
    assert_int_equal(post_text(&d, "c", "three", &r), 200);
    larder__http_response_clear(&r);
    assert_true(a > 0 && b > 0);
    assert_int_equal(count_records(sd), 3);

    /* PDEATHSIG: the kernel ends them with the daemon */
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    daemon_stop(&d);
    WAIT_UNTIL(gone(a) && gone(b));
    assert_true(gone(a) && gone(b));
    assert_int_equal(count_records(sd), 3); /* nobody removed them */

    /* records: a real worker this daemon did not start (so no PDEATHSIG ties it to a
     * daemon), recorded as the child of a larderd that died */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    waitpid(dead, NULL, 0);
    pid_t orphan = fork();
    if (orphan == 0) {
        setpgid(0, 0);
        dup2(sv[1], 3);
        execl(WORKER_PATH, "larder-worker", TEST_PLUGIN_DIR "/larder-workertest.so", "x",
              (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    setpgid(orphan, orphan);
    char hello[16];
    assert_true(read(sv[0], hello, sizeof hello) == (ssize_t)sizeof hello); /* it runs */
    char starttime[64], path[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)orphan);
    char *st = read_file(path, NULL);
    assert_non_null(st);
    unsigned long long t = 0;
    assert_int_equal(sscanf(strrchr(st, ')') + 2,
                            "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d "
                            "%*d %*d %*d %llu", &t), 1);
    free(st);
    snprintf(starttime, sizeof starttime, "%llu", t);
    snprintf(path, sizeof path, "%s/children/%d", sd, (int)orphan);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "pid %d\npgid %d\nstart %s\nlarderd %d\nlarderd_start 1\nlabel worker x\n",
            (int)orphan, (int)orphan, starttime, (int)dead);
    fclose(f);

    assert_int_equal(start(&d, server, "[model.a]\nbackend = workertest\nisolation = worker\n"),
                     0);
    int status = 0;
    assert_int_equal(waitpid(orphan, &status, 0), orphan);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(count_records(sd), 0);
    assert_int_equal(daemon_log_count(&d, "ended the model processes of a larderd that died"), 1);
    close(sv[0]);
    assert_true(serves(&d, "a"));
    assert_int_equal(daemon_stop(&d), 0);
    assert_int_equal(count_records(sd), 0);
    rm_marks();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_crash_in_infer, daemon_teardown),
        cmocka_unit_test_teardown(test_crash_fallback, daemon_teardown),
        cmocka_unit_test_teardown(test_sigkill_mid_request, daemon_teardown),
        cmocka_unit_test_teardown(test_hang_in_load, daemon_teardown),
        cmocka_unit_test_teardown(test_hang_in_infer, daemon_teardown),
        cmocka_unit_test_teardown(test_espeak, daemon_teardown),
        cmocka_unit_test(test_espeak_refuses_in_process),
        cmocka_unit_test_teardown(test_tesseract_cycles, daemon_teardown),
        cmocka_unit_test_teardown(test_no_orphans, daemon_teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (backend_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", backend_dir);
        if (system(cmd) != 0)
            failed++;
    }
    return failed;
}
