/* larderd over HTTP with the synthetic backend: routes, errors, auth, concurrency,
 * eviction events, reload and shutdown. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static const char base_config[] =
    "[server]\n"
    "listen = 127.0.0.1:0\n"
    "admin_tokens = admin.tokens\n"
    "max_body = 64KiB\n"
    "\n"
    "[memory]\n"
    "budget = 256MiB\n"
    "\n"
    "[model.noop]\n"
    "backend = synthetic\n"
    "size = 1MiB\n"
    "\n"
    "[model.cold]\n"
    "backend = synthetic-pooled\n"
    "size = 4MiB\n"
    "load_ms = 300\n"
    "instances = 4\n"
    "infer_ms = 5\n"
    "\n"
    "[model.broken]\n"
    "backend = synthetic\n"
    "fail = always\n"
    "\n"
    "[model.rescued]\n"
    "backend = synthetic\n"
    "fail = always\n"
    "label = rescued\n"
    "fallback = noop\n";

static struct daemon shared;

static int group_setup(void **state)
{
    return daemon_start(&shared, base_config);
}

static int group_teardown(void **state)
{
    return daemon_stop(&shared) == 0 ? 0 : -1;
}

static int post(struct daemon *d, const char *path, const char *ct, const char *body,
                struct larder__http_response *resp)
{
    return http(d, "POST", path, ct, body, body ? strlen(body) : 0, false, resp);
}

/* ---- basics -------------------------------------------------------------------------- */

static void test_health_ready(void **state)
{
    assert_int_equal(http_get(&shared, "/health"), 200);
    assert_int_equal(http_get(&shared, "/ready"), 200);
    /* nothing was loaded at start-up or by /health */
    assert_int_equal(json_field(&shared, "/v1/models/noop", "loads"), 0);
    assert_int_equal(json_field(&shared, "/v1/memory", "reserved_bytes"), 0);
}

static void test_cold_then_warm(void **state)
{
    struct larder__http_response r = {0};
    assert_int_equal(post(&shared, "/v1/models/cold/infer", "text/plain", "hello", &r), 200);
    json_t *o = json_loads(r.body, 0, NULL);
    assert_non_null(o);
    assert_true(json_is_true(json_object_get(o, "cold_start")));
    assert_string_equal(json_string_value(json_object_get(o, "served_by")), "cold");
    assert_int_equal(json_integer_value(json_object_get(o, "echo")), 5);
    assert_true(json_number_value(json_object_get(o, "load_ms")) > 0);
    assert_non_null(json_object_get(o, "infer_ms"));
    assert_non_null(json_object_get(o, "queue_ms"));
    json_decref(o);
    larder__http_response_clear(&r);

    assert_int_equal(post(&shared, "/v1/models/cold/infer", "text/plain", "hello", &r), 200);
    o = json_loads(r.body, 0, NULL);
    assert_true(json_is_false(json_object_get(o, "cold_start")));
    json_decref(o);
    larder__http_response_clear(&r);
    assert_int_equal(json_field(&shared, "/v1/models/cold", "loads"), 1);
}

/* ---- 32 concurrent requests on a cold model share one load ------------------------------- */

struct burst {
    struct daemon *d;
    const char *path;
    int status;
    bool cold;
};

static void *burst_one(void *arg)
{
    struct burst *b = arg;
    struct larder__http_response r = {0};
    b->status = post(b->d, b->path, "application/octet-stream", "0123456789", &r);
    json_t *o = json_loads(r.body ? r.body : "", 0, NULL);
    b->cold = json_is_true(json_object_get(o, "cold_start"));
    json_decref(o);
    larder__http_response_clear(&r);
    return NULL;
}

static void test_concurrent_cold(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.herd]\nbackend = synthetic-pooled\n"
                                      "size = 2MiB\nload_ms = 400\ninstances = 4\n"
                                      "infer_ms = 2\n"),
                     0);
    enum { N = 32 };
    pthread_t th[N];
    struct burst b[N];
    for (int i = 0; i < N; i++) {
        b[i] = (struct burst){&d, "/v1/models/herd/infer", 0, false};
        assert_int_equal(pthread_create(&th[i], NULL, burst_one, &b[i]), 0);
    }
    int cold = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(b[i].status, 200);
        cold += b[i].cold;
    }
    assert_true(cold >= 1);
    assert_int_equal(json_field(&d, "/v1/models/herd", "loads"), 1);
    assert_int_equal(json_field(&d, "/v1/models/herd", "hits"), N);
    assert_true(json_field(&d, "/v1/models/herd", "instances.created") <= 4);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- auth ---------------------------------------------------------------------------- */

static void test_admin_auth(void **state)
{
    static const char *const routes[] = {"/v1/models/noop/load", "/v1/models/noop/unload",
                                         "/v1/memory/cleanup", "/v1/reload"};
    const char *wrong[] = {"Authorization: Bearer not-the-token", NULL};
    const char *scheme[] = {"Authorization: Basic " ADMIN_TOKEN, NULL};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        struct larder__http_response r = {0};
        assert_int_equal(http(&shared, "POST", routes[i], NULL, NULL, 0, false, &r), 401);
        assert_string_equal(error_code(&r), "unauthorized");
        larder__http_response_clear(&r);
        assert_int_equal(larder__http_request(&shared.url, "POST", routes[i], wrong, NULL, NULL,
                                              0, 30000, &r),
                         0);
        assert_int_equal(r.status, 401);
        larder__http_response_clear(&r);
        assert_int_equal(larder__http_request(&shared.url, "POST", routes[i], scheme, NULL, NULL,
                                              0, 30000, &r),
                         0);
        assert_int_equal(r.status, 401);
        larder__http_response_clear(&r);
    }
    /* each request's line is written after its reply: wait for the last route's three */
    assert_int_equal(daemon_wait_log(&shared, "path=/v1/reload status=401", 3), 3);
    assert_false(daemon_log_has(&shared, ADMIN_TOKEN));
    assert_false(daemon_log_has(&shared, "not-the-token"));
    /* with the token: load and unload work */
    assert_int_equal(http(&shared, "POST", "/v1/models/noop/load", NULL, NULL, 0, true, NULL), 200);
    assert_int_equal(json_field(&shared, "/v1/models/noop", "memory.reserved_bytes") > 0, 1);
    assert_int_equal(http(&shared, "POST", "/v1/models/noop/unload", NULL, NULL, 0, true, NULL),
                     200);
    struct larder__http_response r = {0};
    assert_int_equal(http(&shared, "GET", "/v1/models/noop", NULL, NULL, 0, false, &r), 200);
    assert_non_null(strstr(r.body, "\"state\":\"unloaded\""));
    larder__http_response_clear(&r);
}

/* ---- bad requests ---------------------------------------------------------------------- */

static void expect_error(const char *method, const char *path, const char *ct, const char *body,
                         size_t len, int status, const char *code)
{
    struct larder__http_response r = {0};
    assert_int_equal(http(&shared, method, path, ct, body, len, false, &r), status);
    json_t *o = json_loads(r.body, 0, NULL);
    assert_non_null(o);
    json_t *e = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    assert_non_null(json_string_value(json_object_get(e, "message")));
    json_decref(o);
    larder__http_response_clear(&r);
    assert_int_equal(http_get(&shared, "/health"), 200);
}

static void test_bad_requests(void **state)
{
    expect_error("POST", "/v1/models/noop/infer", "text/plain", NULL, 0, 400, "empty_body");
    expect_error("POST", "/v1/models/nosuch/infer", "text/plain", "x", 1, 404, "model_not_found");
    expect_error("GET", "/v1/models/nosuch", NULL, NULL, 0, 404, "model_not_found");
    expect_error("POST", "/v1/models/noop/infer", "application/json", "{\"rows\": [1,", 12, 400,
                 "invalid_json");
    expect_error("GET", "/v1/models/noop/infer", NULL, NULL, 0, 405, "method_not_allowed");
    expect_error("PUT", "/health", "text/plain", "x", 1, 405, "method_not_allowed");
    expect_error("POST", "/v1/models/noop/infer", NULL, "x", 1, 415, "unsupported_media_type");
    expect_error("POST", "/v1/models/noop/infer?error=media", "text/plain", "x", 1, 415,
                 "unsupported_media_type");
    expect_error("POST", "/v1/models/noop/infer?error=input", "text/plain", "x", 1, 400,
                 "bad_input");
    expect_error("POST", "/v1/models/noop/infer?error=internal", "text/plain", "x", 1, 500,
                 "internal");
    expect_error("GET", "/nowhere", NULL, NULL, 0, 404, "not_found");
    size_t big = 65 * 1024;
    char *body = malloc(big);
    assert_non_null(body);
    memset(body, 'a', big);
    expect_error("POST", "/v1/models/noop/infer", "text/plain", body, big, 413, "body_too_large");
    free(body);
}

/* A chunked body (no Content-Length) that grows past max_body: 413 once it ends. */
static void test_chunked_too_large(void **state)
{
    int fd = larder__http_connect(&shared.url, 30000);
    assert_true(fd >= 0);
    static const char head[] = "POST /v1/models/noop/infer HTTP/1.1\r\nHost: t\r\n"
                               "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                               "Connection: close\r\n\r\n";
    assert_int_equal(send(fd, head, sizeof head - 1, MSG_NOSIGNAL), (ssize_t)sizeof head - 1);
    char chunk[16384 + 16];
    int n = snprintf(chunk, sizeof chunk, "4000\r\n");
    memset(chunk + n, 'z', 16384);
    memcpy(chunk + n + 16384, "\r\n", 2);
    for (int i = 0; i < 8; i++) /* 128 KiB */
        assert_int_equal(send(fd, chunk, (size_t)n + 16386, MSG_NOSIGNAL), n + 16386);
    assert_int_equal(send(fd, "0\r\n\r\n", 5, MSG_NOSIGNAL), 5);
    struct larder__http_response r = {0};
    assert_int_equal(larder__http_read(fd, 30000, &r), 0);
    close(fd);
    assert_int_equal(r.status, 413);
    assert_string_equal(error_code(&r), "body_too_large");
    larder__http_response_clear(&r);
    assert_int_equal(http_get(&shared, "/health"), 200);
}

static void test_failed_load_and_fallback(void **state)
{
    struct larder__http_response r = {0};
    int st = post(&shared, "/v1/models/broken/infer", "text/plain", "x", &r);
    assert_int_equal(st, 500);
    assert_string_equal(error_code(&r), "load_failed");
    larder__http_response_clear(&r);
    /* during the cooldown (at least a second after each failure): 503 with Retry-After.
     * A host slow enough to reach the end of a cooldown gets another 500 and a longer
     * cooldown: ask until the answer comes. */
    char v[32];
    struct wait_bound p = wait_start();
    while (st == 500 && wait_again(&p)) {
        larder__http_response_clear(&r);
        st = post(&shared, "/v1/models/broken/infer", "text/plain", "x", &r);
        if (st == 500)
            assert_string_equal(error_code(&r), "load_failed");
    }
    assert_int_equal(st, 503);
    assert_string_equal(error_code(&r), "cooldown");
    assert_non_null(larder__http_header(&r, "Retry-After", v, sizeof v));
    assert_non_null(strstr(r.body, "synthetic load failure"));
    larder__http_response_clear(&r);
    assert_int_equal(post(&shared, "/v1/models/rescued/infer", "text/plain", "x", &r), 200);
    json_t *o = json_loads(r.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(o, "served_by")), "noop");
    json_decref(o);
    larder__http_response_clear(&r);
    assert_true(json_field(&shared, "/v1/models/broken", "failures") >= 1);
}

static void test_metrics_memory(void **state)
{
    struct larder__http_response r = {0};
    assert_int_equal(http(&shared, "GET", "/metrics", NULL, NULL, 0, false, &r), 200);
    assert_non_null(strstr(r.body, "# TYPE larder_budget_bytes gauge"));
    assert_non_null(strstr(r.body, "larder_budget_bytes 268435456"));
    assert_non_null(strstr(r.body, "larder_component_state{name=\"noop\""));
    assert_non_null(strstr(r.body, "larder_load_duration_seconds_bucket{le=\"+Inf\"}"));
    larder__http_response_clear(&r);
    assert_int_equal(json_field(&shared, "/v1/memory", "budget_bytes"), 256 << 20);
    assert_true(json_field(&shared, "/v1/memory", "process.rss_bytes") > 0);
    assert_int_equal(http(&shared, "POST", "/v1/memory/cleanup", NULL, NULL, 0, true, &r), 200);
    assert_non_null(strstr(r.body, "rss_freed_bytes"));
    larder__http_response_clear(&r);
}

/* ---- events and eviction ------------------------------------------------------------------ */

static int open_events(struct daemon *d)
{
    int fd = larder__http_connect(&d->url, 30000);
    assert_true(fd >= 0);
    assert_int_equal(larder__http_send(fd, &d->url, "GET", "/v1/events", NULL, NULL, NULL, 0), 0);
    char buf[4096];
    size_t used = 0;
    assert_true(larder__http_read_until(fd, buf, sizeof buf, &used, ": larder events", 30000) > 0);
    return fd;
}

static void test_eviction_event(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[server]\nlisten = 127.0.0.1:0\n"
                                      "[memory]\nbudget = 24MiB\n"
                                      "[model.a]\nbackend = synthetic\nsize = 16MiB\n"
                                      "[model.b]\nbackend = synthetic\nsize = 16MiB\n"),
                     0);
    int fd = open_events(&d);
    assert_int_equal(post(&d, "/v1/models/a/infer", "text/plain", "x", NULL), 200);
    assert_int_equal(post(&d, "/v1/models/b/infer", "text/plain", "x", NULL), 200);
    char buf[16384];
    size_t used = 0;
    assert_true(larder__http_read_until(fd, buf, sizeof buf, &used, "event: evict", 60000) > 0);
    assert_true(larder__http_read_until(fd, buf, sizeof buf, &used, "\"reason\":\"budget\"",
                                        60000) > 0);
    /* the loader thread publishes a's load_done on its own: it may follow the eviction */
    assert_true(larder__http_read_until(fd, buf, sizeof buf, &used, "event: load_done", 60000) >
                0);
    /* both are still served, one at a time */
    assert_int_equal(post(&d, "/v1/models/a/infer", "text/plain", "x", NULL), 200);
    assert_int_equal(json_field(&d, "/v1/models/a", "loads"), 2);
    close(fd);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_sse_stream_survives_shutdown(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.m]\nbackend = synthetic\n"), 0);
    int fd = open_events(&d);
    assert_int_equal(daemon_stop(&d), 0);
    char buf[1024];
    size_t used = 0;
    /* the stream ends with the daemon */
    assert_true(larder__http_read_until(fd, buf, sizeof buf, &used, "never-sent", 30000) < 0);
    close(fd);
}

/* A client that does not read its event stream is dropped once its queue is full;
 * the daemon goes on serving. */
static long long metric(struct daemon *d, const char *name)
{
    struct larder__http_response r = {0};
    long long v = -1;
    if (http(d, "GET", "/metrics", NULL, NULL, 0, false, &r) == 200) {
        char *at = strstr(r.body, name);
        while (at && at > r.body && at[-1] != '\n')
            at = strstr(at + 1, name);
        if (at)
            v = strtoll(at + strlen(name), NULL, 10);
    }
    larder__http_response_clear(&r);
    return v;
}

/* A config with `extra` long-named models beside model m. */
static char *many_models(int extra)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fprintf(f, "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
               "events_queue = 4KiB\n[model.m]\nbackend = synthetic\n");
    for (int i = 0; i < extra; i++)
        fprintf(f, "[model.%040d]\nbackend = synthetic\n", i);
    fclose(f);
    return text;
}

static void test_slow_event_client_dropped(void **state)
{
    struct daemon d;
    char *small = many_models(0), *big = many_models(2000);
    assert_int_equal(daemon_start(&d, small), 0);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int rcvbuf = 1024;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d.port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(larder__http_send(fd, &d.url, "GET", "/v1/events", NULL, NULL, NULL, 0), 0);
    /* Each reload between the two configs publishes an event of about 86 KB (the names
     * added or removed); the client reads none, so the socket buffers fill (the daemon
     * keeps its side small), then its queue. */
    for (int i = 0; i < 100 && metric(&d, "larder_sse_dropped_total ") < 1; i++) {
        assert_int_equal(daemon_write_config(&d, big), 0);
        assert_int_equal(http(&d, "POST", "/v1/reload", NULL, NULL, 0, true, NULL), 200);
        assert_int_equal(daemon_write_config(&d, small), 0); /* and /metrics stays small */
        assert_int_equal(http(&d, "POST", "/v1/reload", NULL, NULL, 0, true, NULL), 200);
    }
    free(small);
    free(big);
    assert_int_equal(metric(&d, "larder_sse_dropped_total "), 1);
    /* its stream ends: what was sent can still be read, then the connection closes */
    char buf[65536];
    size_t used = 0;
    int r = 0;
    while ((r = larder__http_read_until(fd, buf, sizeof buf, &used, "never sent", 30000)) ==
               -ETIMEDOUT && used + 1 >= sizeof buf)
        used = 0;
    assert_true(r < 0 && r != -ETIMEDOUT);
    close(fd);
    WAIT_UNTIL(metric(&d, "larder_sse_clients ") == 0);
    assert_int_equal(metric(&d, "larder_sse_clients "), 0);
    assert_int_equal(http_get(&d, "/health"), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- queue limit ---------------------------------------------------------------------------- */

/* One instance, a queue of one: while a request holds the instance and another waits,
 * a third is refused with 429. The holder sleeps long, but the test does not count on
 * it: a refusal is asserted only when the waiter was seen queued both before the third
 * request was sent and after its answer came, so it waited throughout. */
struct queued {
    struct daemon *d;
    const char *path;
    atomic_int status; /* 0 until the answer came */
};

static void *queued_one(void *arg)
{
    struct queued *q = arg;
    atomic_store(&q->status, post(q->d, q->path, "text/plain", "q", NULL));
    return NULL;
}

static void test_queue_full(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.q]\nbackend = synthetic-pooled\n"
                                      "instances = 1\nqueue = 1\n"),
                     0);
    assert_int_equal(post(&d, "/v1/models/q/infer", "text/plain", "warm", NULL), 200);
    int refused = 0;
    for (int round = 0; round < 20 && !refused; round++) {
        struct queued holder = {&d, "/v1/models/q/infer?sleep_ms=3000", 0};
        struct queued waiter = {&d, "/v1/models/q/infer", 0};
        pthread_t th_holder, th_waiter;
        assert_int_equal(pthread_create(&th_holder, NULL, queued_one, &holder), 0);
        WAIT_UNTIL(json_field(&d, "/v1/models/q", "leases") == 1 ||
                   atomic_load(&holder.status) != 0);
        assert_int_equal(pthread_create(&th_waiter, NULL, queued_one, &waiter), 0);
        WAIT_UNTIL(json_field(&d, "/v1/models/q", "waiters") == 1 ||
                   atomic_load(&waiter.status) != 0);
        bool queued_before = json_field(&d, "/v1/models/q", "waiters") == 1;
        struct larder__http_response r = {0};
        int st = post(&d, "/v1/models/q/infer", "text/plain", "third", &r);
        bool queued_after = json_field(&d, "/v1/models/q", "waiters") == 1;
        if (queued_before && queued_after) {
            assert_int_equal(st, 429);
            assert_string_equal(error_code(&r), "queue_full");
            refused++;
        } else {
            assert_true(st == 200 || st == 429);
        }
        larder__http_response_clear(&r);
        pthread_join(th_holder, NULL);
        pthread_join(th_waiter, NULL);
        assert_int_equal(atomic_load(&holder.status), 200);
        assert_int_equal(atomic_load(&waiter.status), 200);
    }
    assert_int_equal(refused, 1);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- reload ------------------------------------------------------------------------------- */

static void test_reload_adds_and_drops(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.old]\nbackend = synthetic\n"
                                      "[model.kept]\nbackend = synthetic\n"),
                     0);
    assert_int_equal(post(&d, "/v1/models/kept/infer", "text/plain", "x", NULL), 200);
    assert_int_equal(daemon_write_config(&d, "[model.kept]\nbackend = synthetic\n"
                                             "[model.new]\nbackend = synthetic\n"),
                     0);
    struct larder__http_response r = {0};
    assert_int_equal(http(&d, "POST", "/v1/reload", NULL, NULL, 0, true, &r), 200);
    json_t *o = json_loads(r.body, 0, NULL);
    assert_string_equal(json_string_value(json_array_get(json_object_get(o, "added"), 0)), "new");
    assert_string_equal(json_string_value(json_array_get(json_object_get(o, "removed"), 0)), "old");
    assert_int_equal(json_array_size(json_object_get(o, "changed")), 0);
    json_decref(o);
    larder__http_response_clear(&r);
    assert_int_equal(http_get(&d, "/v1/models/old"), 404);
    assert_int_equal(post(&d, "/v1/models/new/infer", "text/plain", "x", NULL), 200);
    /* the unchanged model kept its loaded state */
    assert_int_equal(json_field(&d, "/v1/models/kept", "loads"), 1);

    /* SIGHUP: change a model (redefined), a bad config is refused and changes nothing */
    assert_int_equal(daemon_write_config(&d, "[model.kept]\nbackend = synthetic\nsize = 2MiB\n"
                                             "[model.new]\nbackend = synthetic\n"),
                     0);
    kill(d.pid, SIGHUP);
    assert_int_equal(wait_json_field(&d, "/v1/models/kept", "loads", 0), 0);
    assert_int_equal(daemon_write_config(&d, "[model.kept]\nbackend = synthetic\nbogus_key\n"), 0);
    assert_int_equal(http(&d, "POST", "/v1/reload", NULL, NULL, 0, true, &r), 400);
    assert_non_null(strstr(r.body, "larder.ini:"));
    larder__http_response_clear(&r);
    assert_int_equal(http_get(&d, "/v1/models/new"), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

struct slow_req {
    struct daemon *d;
    const char *path;
    int status;
};

static void *slow_one(void *arg)
{
    struct slow_req *s = arg;
    s->status = post(s->d, s->path, "text/plain", "slow", NULL);
    return NULL;
}

/* Waits until the daemon holds a lease on `model`. */
static void wait_leased(struct daemon *d, const char *model)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s", model);
    assert_int_equal(wait_json_field(d, path, "leases", 1), 1);
}

static void test_reload_drains_inflight(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.going]\nbackend = synthetic\ninfer_ms = 600\n"), 0);
    struct slow_req s = {&d, "/v1/models/going/infer", 0};
    pthread_t th;
    pthread_create(&th, NULL, slow_one, &s);
    wait_leased(&d, "going");
    assert_int_equal(daemon_write_config(&d, "[model.other]\nbackend = synthetic\n"), 0);
    assert_int_equal(http(&d, "POST", "/v1/reload", NULL, NULL, 0, true, NULL), 200);
    pthread_join(th, NULL);
    assert_int_equal(s.status, 200);
    assert_int_equal(http_get(&d, "/v1/models/going"), 404);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_sigterm_drains_inflight(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.busy]\nbackend = synthetic\ninfer_ms = 600\n"), 0);
    struct slow_req s = {&d, "/v1/models/busy/infer", 0};
    pthread_t th;
    pthread_create(&th, NULL, slow_one, &s);
    wait_leased(&d, "busy");
    kill(d.pid, SIGTERM);
    pthread_join(th, NULL);
    assert_int_equal(s.status, 200);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_bad_config_refused(void **state)
{
    struct daemon d;
    /* an unknown backend stops the start-up with a message naming file, line and key */
    assert_int_equal(daemon_start(&d, "[model.x]\nbackend = nosuchbackend\n"), -1);
    assert_true(daemon_log_has(&d, "larder.ini:6: [model.x] backend: unknown backend"));
    assert_int_equal(daemon_stop(&d), 1);
}

int main(void)
{
    const struct CMUnitTest shared_tests[] = {
        cmocka_unit_test(test_health_ready),
        cmocka_unit_test(test_cold_then_warm),
        cmocka_unit_test(test_admin_auth),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_chunked_too_large),
        cmocka_unit_test(test_failed_load_and_fallback),
        cmocka_unit_test(test_metrics_memory),
    };
    const struct CMUnitTest own_daemon_tests[] = {
        cmocka_unit_test_teardown(test_concurrent_cold, daemon_teardown),
        cmocka_unit_test_teardown(test_eviction_event, daemon_teardown),
        cmocka_unit_test_teardown(test_sse_stream_survives_shutdown, daemon_teardown),
        cmocka_unit_test_teardown(test_slow_event_client_dropped, daemon_teardown),
        cmocka_unit_test_teardown(test_queue_full, daemon_teardown),
        cmocka_unit_test_teardown(test_reload_adds_and_drops, daemon_teardown),
        cmocka_unit_test_teardown(test_reload_drains_inflight, daemon_teardown),
        cmocka_unit_test_teardown(test_sigterm_drains_inflight, daemon_teardown),
        cmocka_unit_test_teardown(test_bad_config_refused, daemon_teardown),
    };
    int failed = cmocka_run_group_tests_name("larderd shared", shared_tests, group_setup,
                                             group_teardown);
    failed += cmocka_run_group_tests_name("larderd own", own_daemon_tests, NULL, NULL);
    return failed;
}
