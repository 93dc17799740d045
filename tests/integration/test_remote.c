/* larderd's end of the worker protocol (remote.h) against the real larder-worker hosting
 * the workertest plugin: streamed pieces reach the host's emit in order, request memory
 * goes to the host's reserve, two instances serve at once (no head-of-line blocking),
 * a cancel reaches the worker, and a "worker" that sends garbage is killed and reported
 * while the process that talks to it goes on. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "children.h"
#include "remote.h"

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

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- a host that records what it is asked ---- */

struct ctx {
    int cancel;           /* cancelled() answers this */
    char pieces[64][32];
    int n_pieces;
    uint64_t reserved;
    int refuse_reserve;
};

static void t_log(enum larder_log_level level, const char *backend, const char *msg)
{
    fprintf(stderr, "log %d %s: %s\n", (int)level, backend ? backend : "-", msg);
}

static uint64_t t_rss(void)
{
    return 0;
}

static int t_cancelled(void *c)
{
    return c ? __atomic_load_n(&((struct ctx *)c)->cancel, __ATOMIC_SEQ_CST) : 0;
}

static int t_reserve(void *c, uint64_t bytes)
{
    struct ctx *x = c;
    if (x->refuse_reserve)
        return -1;
    x->reserved += bytes;
    return 0;
}

static int t_emit(void *c, const char *json, size_t len)
{
    struct ctx *x = c;
    if (x->n_pieces >= 64)
        return -1;
    snprintf(x->pieces[x->n_pieces++], 32, "%.*s", (int)len, json);
    return 0;
}

static const struct larder_host test_host = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .log = t_log,
    .rss_bytes = t_rss,
    .cancelled = t_cancelled,
    .reserve_request_bytes = t_reserve,
    .emit = t_emit,
};

static char marks[64];
static struct larder__children *kids;
static int dead_calls;
static char dead_why[512];

static pthread_mutex_t dead_mu = PTHREAD_MUTEX_INITIALIZER;

static void on_dead(void *ctx, struct larder__remote *r, int code, const char *why)
{
    (void)ctx;
    (void)r;
    (void)code;
    pthread_mutex_lock(&dead_mu);
    snprintf(dead_why, sizeof dead_why, "%s", why);
    pthread_mutex_unlock(&dead_mu);
    __atomic_add_fetch(&dead_calls, 1, __ATOMIC_SEQ_CST);
}

static struct larder__remote *start(const char *worker, const char *plugin, int *rc,
                                    char *err, size_t errlen)
{
    struct larder__remote_spec spec = {
        .children = kids, .worker = worker, .plugin = plugin, .model = "wt",
        .backend = "workertest", .host = &test_host, .call_timeout_ms = 30000,
        .on_dead = on_dead};
    struct larder__remote *r = NULL;
    *rc = larder__remote_start(&spec, &r, err, errlen);
    return r;
}

static struct larder__remote *start_loaded(void)
{
    char err[512] = "";
    int rc;
    struct larder__remote *r = start(WORKER_PATH, TEST_PLUGIN_DIR "/larder-workertest.so", &rc,
                                     err, sizeof err);
    assert_int_equal(rc, 0);
    struct larder_option o[] = {{"marks", marks}, {"isolation", "worker"}};
    rc = larder__remote_load(r, o, 2, err, sizeof err);
    if (rc)
        fprintf(stderr, "load: %s\n", err);
    assert_int_equal(rc, 0);
    return r;
}

static int infer(struct larder__remote *r, void *inst, const char *body, bool stream,
                 struct ctx *x, struct larder_infer_result *res, char *err, size_t errlen)
{
    const struct larder_backend_ops *ops = larder__remote_ops(r);
    struct larder_infer_request req = {.body = body, .body_len = strlen(body),
                                       .content_type = "text/plain", .host_ctx = x,
                                       .stream = stream};
    memset(res, 0, sizeof *res);
    return ops->infer(r, inst, &req, res, err, errlen);
}

static int setup(void **state)
{
    (void)state;
    snprintf(marks, sizeof marks, "/tmp/larder-remote-XXXXXX");
    assert_non_null(mkdtemp(marks));
    char err[256];
    assert_int_equal(larder__children_open(NULL, &kids, NULL, err, sizeof err), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    larder__children_close(kids, 1000);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", marks);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_stream_in_order(void **state)
{
    (void)state;
    struct larder__remote *r = start_loaded();
    const struct larder_backend_ops *ops = larder__remote_ops(r);
    assert_non_null(ops->instance_new);
    void *inst = NULL;
    char err[256] = "";
    assert_int_equal(ops->instance_new(r, &inst, err, sizeof err), 0);
    struct ctx x = {0};
    struct larder_infer_result res;
    assert_int_equal(infer(r, inst, "stream 40", true, &x, &res, err, sizeof err), 0);
    assert_int_equal(x.n_pieces, 40);
    for (int i = 0; i < 40; i++) {
        char want[32];
        snprintf(want, sizeof want, "{\"piece\":%d}", i);
        assert_string_equal(x.pieces[i], want);
    }
    assert_string_equal(res.json, "{\"pieces\":40}");
    ops->result_free(&res);
    /* without the stream flag nothing is emitted */
    struct ctx y = {0};
    assert_int_equal(infer(r, inst, "stream 5", false, &y, &res, err, sizeof err), 0);
    assert_int_equal(y.n_pieces, 0);
    ops->result_free(&res);
    /* request memory goes to the host, and a refusal comes back as the backend's */
    struct ctx z = {0};
    assert_int_equal(infer(r, inst, "reserve 4096", false, &z, &res, err, sizeof err), 0);
    assert_int_equal(z.reserved, 4096);
    ops->result_free(&res);
    z.refuse_reserve = 1;
    assert_int_equal(infer(r, inst, "reserve 4096", false, &z, &res, err, sizeof err),
                     LARDER_BACKEND_ETOOBIG);
    ops->instance_free(r, inst);
    uint64_t bytes = 0;
    assert_int_equal(ops->measure(r, &bytes), 0);
    assert_true(bytes > 0);
    pid_t pid = larder__remote_pid(r);
    int64_t returned = -1;
    larder__remote_stop(r, 5000, &returned);
    assert_true(returned > 0);
    assert_int_equal(kill(pid, 0), -1); /* reaped */
}

struct slow_arg {
    struct larder__remote *r;
    void *inst;
    struct ctx x;
    int rc;
    char err[256];
};

static void *slow_thread(void *p)
{
    struct slow_arg *a = p;
    struct larder_infer_result res;
    a->rc = infer(a->r, a->inst, "slow", false, &a->x, &res, a->err, sizeof a->err);
    if (a->rc == 0)
        larder__remote_ops(a->r)->result_free(&res);
    return NULL;
}

static bool mark_exists(const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", marks, name);
    return access(path, F_OK) == 0;
}

static void set_mark(const char *name, bool on)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", marks, name);
    if (!on) {
        unlink(path);
        return;
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

static void wait_mark(const char *name)
{
    for (int i = 0; i < 6000 && !mark_exists(name); i++)
        sleep_ms(10);
    assert_true(mark_exists(name));
}

/* While one instance waits inside infer, the other answers; then a cancel stops it. */
static void test_no_head_of_line(void **state)
{
    (void)state;
    set_mark("go", false);
    set_mark("slow-running", false);
    struct larder__remote *r = start_loaded();
    const struct larder_backend_ops *ops = larder__remote_ops(r);
    void *a = NULL, *b = NULL;
    char err[256] = "";
    assert_int_equal(ops->instance_new(r, &a, err, sizeof err), 0);
    assert_int_equal(ops->instance_new(r, &b, err, sizeof err), 0);
    struct slow_arg s = {.r = r, .inst = a};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, slow_thread, &s), 0);
    wait_mark("slow-running");
    struct ctx x = {0};
    struct larder_infer_result res;
    assert_int_equal(infer(r, b, "quick", false, &x, &res, err, sizeof err), 0);
    assert_non_null(strstr(res.json, "\"echo\":\"quick\""));
    ops->result_free(&res);
    assert_false(mark_exists("go")); /* the slow one is still inside its call */
    __atomic_store_n(&s.x.cancel, 1, __ATOMIC_SEQ_CST);
    pthread_join(t, NULL);
    assert_int_equal(s.rc, LARDER_BACKEND_ECANCELED);
    /* a second slow one finishes once it may */
    set_mark("slow-running", false);
    struct slow_arg s2 = {.r = r, .inst = a};
    assert_int_equal(pthread_create(&t, NULL, slow_thread, &s2), 0);
    wait_mark("slow-running");
    set_mark("go", true);
    pthread_join(t, NULL);
    assert_int_equal(s2.rc, 0);
    ops->instance_free(r, a);
    ops->instance_free(r, b);
    larder__remote_stop(r, 5000, NULL);
    assert_int_equal(__atomic_load_n(&dead_calls, __ATOMIC_SEQ_CST), 0);
}

/* A crash inside infer: the call fails with the signal, later calls fail fast. */
static void test_crash(void **state)
{
    (void)state;
    __atomic_store_n(&dead_calls, 0, __ATOMIC_SEQ_CST);
    struct larder__remote *r = start_loaded();
    const struct larder_backend_ops *ops = larder__remote_ops(r);
    void *a = NULL;
    char err[512] = "";
    assert_int_equal(ops->instance_new(r, &a, err, sizeof err), 0);
    struct ctx x = {0};
    struct larder_infer_result res;
    assert_int_equal(infer(r, a, "crash", false, &x, &res, err, sizeof err),
                     LARDER__EWORKER_CRASHED);
    assert_true(crash_signal(err));
    assert_true(larder__remote_dead(r));
    assert_int_equal(infer(r, a, "quick", false, &x, &res, err, sizeof err),
                     LARDER__EWORKER_CRASHED);
    for (int i = 0; i < 6000 && !__atomic_load_n(&dead_calls, __ATOMIC_SEQ_CST); i++)
        sleep_ms(10);
    assert_int_equal(__atomic_load_n(&dead_calls, __ATOMIC_SEQ_CST), 1);
    pthread_mutex_lock(&dead_mu);
    bool named = crash_signal(dead_why);
    pthread_mutex_unlock(&dead_mu);
    assert_true(named);
    ops->instance_free(r, a); /* on a dead worker: returns at once */
    int64_t returned = -1;
    larder__remote_stop(r, 5000, &returned);
    assert_int_equal(returned, 0);
}

/* "Workers" that are shell scripts sending bad frames: each is killed and reported. */
static void test_garbage(void **state)
{
    (void)state;
    static const char *const scripts[] = {
        /* a length past the bound */
        "printf '\\001\\000\\000\\000\\377\\377\\377\\177\\000\\000\\000\\000\\000\\000\\000"
        "\\000' >&3; sleep 600",
        /* a length shorter than the meta length field */
        "printf '\\001\\000\\000\\000\\002\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000"
        "\\000xx' >&3; sleep 600",
        /* meta that is not JSON */
        "printf '\\001\\000\\000\\000\\010\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000"
        "\\000\\004\\000\\000\\000nope' >&3; sleep 600",
        /* a meta length past the payload */
        "printf '\\001\\000\\000\\000\\010\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000"
        "\\000\\377\\000\\000\\000nope' >&3; sleep 600",
        /* half a header, then the end */
        "printf '\\001\\000\\000' >&3",
    };
    for (size_t i = 0; i < sizeof scripts / sizeof *scripts; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/bad%zu.sh", marks, i);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "%s\n", scripts[i]);
        fclose(f);
        char err[512] = "";
        int rc;
        struct larder__remote *r = start("/bin/sh", path, &rc, err, sizeof err);
        assert_null(r);
        assert_int_equal(rc, LARDER__EWORKER_CRASHED);
        fprintf(stderr, "bad worker %zu: %s\n", i, err);
        assert_true(strstr(err, "protocol") || strstr(err, "exited"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_in_order),
        cmocka_unit_test(test_no_head_of_line),
        cmocka_unit_test(test_crash),
        cmocka_unit_test(test_garbage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
