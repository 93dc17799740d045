/* larderd shutdown: requests that outlive drain_timeout are answered 503 shutting_down and
 * the daemon exits 0, whatever its threads are stuck in (an inference, a load). */
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

/* A request inside a backend call longer than drain_timeout: answered, not aborted. */
static void test_inference_past_drain(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, CONFIG("", "[model.slow]\nbackend = synthetic\n"
                                             "infer_ms = 15000\n")),
                     0);
    struct pending p;
    pthread_t th;
    start_post(&p, &d, "slow", &th);
    wait_field(&d, "slow", "leases", 1);
    kill(d.pid, SIGTERM);
    wait_answer(&p, th);
    assert_int_equal(p.status, 503);
    assert_string_equal(p.code, "shutting_down");
    wait_exit(&d);
    assert_int_equal(daemon_stop(&d), 0);
}

/* Several at once, each on its own inference thread, plus one waiting for a worker. */
static void test_many_inferences_past_drain(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, CONFIG("threads = 2\n", "[model.slow]\nbackend = synthetic\n"
                                                           "infer_ms = 15000\n")),
                     0);
    enum { N = 3 };
    struct pending p[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++)
        start_post(&p[i], &d, "slow", &th[i]);
    wait_field(&d, "slow", "leases", N);
    kill(d.pid, SIGTERM);
    for (int i = 0; i < N; i++) {
        wait_answer(&p[i], th[i]);
        assert_int_equal(p[i].status, 503);
        assert_string_equal(p[i].code, "shutting_down");
    }
    wait_exit(&d);
    assert_int_equal(daemon_stop(&d), 0);
}

/* A request waiting for a load that outlives the drain: the manager's close fails it. */
static void test_load_past_drain(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, CONFIG("", "[model.heavy]\nbackend = synthetic\n"
                                             "load_ms = 60000\n")),
                     0);
    struct pending p;
    pthread_t th;
    start_post(&p, &d, "heavy", &th);
    wait_field(&d, "heavy", "waiters", 1);
    kill(d.pid, SIGTERM);
    wait_answer(&p, th);
    assert_int_equal(p.status, 503);
    assert_string_equal(p.code, "shutting_down");
    wait_exit(&d);
    assert_int_equal(daemon_stop(&d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_inference_past_drain, daemon_teardown),
        cmocka_unit_test_teardown(test_many_inferences_past_drain, daemon_teardown),
        cmocka_unit_test_teardown(test_load_past_drain, daemon_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
