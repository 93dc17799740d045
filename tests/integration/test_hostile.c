/* larderd against hostile clients and configs: connection floods, trickled headers and
 * bodies, bodies larger than the request memory, paths and headers meant to be read two
 * ways, Content-Type parameters, cooldowns, event streams that go away, token files.
 * Every wait is for a condition, with a generous deadline only to give up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "harness.h"
#include "http.h"
#include "log.h"

#define GIVE_UP_MS 20000

static const char models[] = "[model.noop]\nbackend = synthetic\nsize = 1MiB\n";

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Raises this process's open-file limit to its hard limit; false when that leaves fewer
 * than `need` descriptors. */
static bool enough_fds(rlim_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return false;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need;
}

/* A TCP connection to the daemon from the loopback address src ("127.0.0.2": another
 * client than the harness's 127.0.0.1), or -1. */
static int dial(struct daemon *d, const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    if (fd < 0)
        return -1;
    if (src) {
        inet_pton(AF_INET, src, &a.sin_addr);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            close(fd);
            return -1;
        }
    }
    a.sin_port = htons((uint16_t)d->port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Reads until the peer closes or GIVE_UP_MS passes; the bytes (NUL-terminated) into buf.
 * Returns the count, or -1 when nothing came. */
static ssize_t read_reply(int fd, char *buf, size_t len)
{
    size_t got = 0;
    double until = now_ms() + GIVE_UP_MS;
    while (got + 1 < len && now_ms() < until) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n = recv(fd, buf + got, len - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = 0;
    return got ? (ssize_t)got : -1;
}

/* Sends `request` as is from src on a connection of its own; the reply's status, or -1.
 * The reply (head and body) goes to out when not NULL. */
static int raw(struct daemon *d, const char *src, const char *request, size_t len, char *out,
               size_t outlen)
{
    char buf[8192];
    int fd = dial(d, src);
    if (fd < 0)
        return -1;
    int status = -1;
    if (send_all(fd, request, len) && read_reply(fd, buf, sizeof buf) > 0)
        sscanf(buf, "HTTP/1.%*d %d", &status);
    if (out)
        snprintf(out, outlen, "%s", buf);
    close(fd);
    return status;
}

static int raw_text(struct daemon *d, const char *src, const char *request, char *out,
                    size_t outlen)
{
    return raw(d, src, request, strlen(request), out, outlen);
}

/* GET path from src; the status. */
static int get_from(struct daemon *d, const char *src, const char *path, char *out,
                    size_t outlen)
{
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
    return raw_text(d, src, req, out, outlen);
}

/* The value of the Prometheus sample `name` (with its labels, exactly) fetched from src;
 * -1 when absent or unreachable. */
static double metric_from(struct daemon *d, const char *src, const char *name)
{
    static char buf[8192 * 8];
    char req[256];
    snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    int fd = dial(d, src);
    if (fd < 0)
        return -1;
    size_t got = 0;
    if (send_all(fd, req, strlen(req))) {
        ssize_t n;
        while (got + 1 < sizeof buf && (n = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
            got += (size_t)n;
    }
    close(fd);
    buf[got] = 0;
    char key[256];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *at = strstr(buf, key);
    return at ? strtod(at + strlen(key), NULL) : -1;
}

static double metric(struct daemon *d, const char *name)
{
    return metric_from(d, NULL, name);
}

/* True once the peer has closed fd (or reset it). */
static bool peer_closed(int fd)
{
    struct pollfd p = {fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR))
        return true;
    char c;
    return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* ---- connection floods ------------------------------------------------------------------ */

enum { FLOOD = 2000 };

/* Opens FLOOD connections from src, idle or trickling the start of a request; fds[] gets
 * them (-1 where the connect itself failed). */
static void flood(struct daemon *d, const char *src, int *fds)
{
    for (int i = 0; i < FLOOD; i++) {
        fds[i] = dial(d, src);
        if (fds[i] >= 0 && i % 2)
            send_all(fds[i], "GET /he", 7);
    }
}

static void unflood(int *fds)
{
    for (int i = 0; i < FLOOD; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* Waits until the daemon has closed (or refused) at least n of the first count of fds;
 * their number. */
static int wait_closed(int *fds, int count, int n)
{
    int closed = 0;
    for (double until = now_ms() + GIVE_UP_MS; now_ms() < until; sleep_ms(20)) {
        closed = 0;
        for (int i = 0; i < count; i++)
            closed += fds[i] < 0 || peer_closed(fds[i]);
        if (closed >= n)
            break;
    }
    return closed;
}

/* What a new client must still get while the flood is held. */
static void assert_served(struct daemon *d, const char *src)
{
    char out[8192];
    assert_int_equal(get_from(d, src, "/health", out, sizeof out), 200);
    static const char req[] = "POST /v1/models/noop/infer HTTP/1.1\r\nHost: t\r\n"
                              "Connection: close\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 2\r\n\r\nhi";
    assert_int_equal(raw_text(d, src, req, out, sizeof out), 200);
    assert_non_null(strstr(out, "\"echo\":2"));
}

static void test_flood_limits(void **state)
{
    if (!enough_fds(FLOOD + 200))
        skip();
    struct daemon d;
    char config[1024];
    snprintf(config, sizeof config,
             "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
             "max_connections = 64\nmax_connections_per_client = 16\n%s", models);
    assert_int_equal(daemon_start(&d, config), 0);
    static int fds[FLOOD];
    flood(&d, "127.0.0.1", fds);
    /* The flood keeps 16; the others are closed at once, and counted. */
    int closed = wait_closed(fds, FLOOD, FLOOD - 16);
    if (closed < FLOOD - 16)
        fail_msg("%d of %d closed; %g open", closed, FLOOD,
                 metric_from(&d, "127.0.0.2", "larder_http_connections"));
    assert_served(&d, "127.0.0.2");
    assert_true(metric_from(&d, "127.0.0.2",
                            "larder_http_connections_refused_total{limit=\"max_connections_"
                            "per_client\"}") >= FLOOD - 16);
    /* Several flooding addresses together reach the total limit: it holds too. */
    static int more[FLOOD];
    for (int i = 0; i < FLOOD; i++)
        more[i] = -1;
    for (int i = 0; i < 100; i++) {
        char src[32];
        snprintf(src, sizeof src, "127.0.1.%d", 1 + i / 16);
        more[i] = dial(&d, src);
    }
    /* 16 + 100 > 64: 52 of these are closed at once, whatever their address. */
    enum { OVER = 100 - (64 - 16) };
    closed = wait_closed(more, 100, OVER);
    if (closed < OVER)
        fail_msg("%d of 100 closed over the total limit", closed);
    unflood(more);
    double refused = -1; /* -1 while the total limit still refuses this request too */
    for (double until = now_ms() + GIVE_UP_MS; now_ms() < until && refused < 0; sleep_ms(20))
        refused = metric_from(&d, "127.0.0.2",
                              "larder_http_connections_refused_total{limit=\"max_connections\"}");
    assert_true(refused >= OVER);
    unflood(fds);
    /* Once they go, every slot is free again. */
    for (double until = now_ms() + GIVE_UP_MS;
         now_ms() < until && metric_from(&d, "127.0.0.2", "larder_http_connections") > 1;)
        sleep_ms(20);
    assert_served(&d, "127.0.0.1");
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_flood_defaults(void **state)
{
    if (!enough_fds(FLOOD + 200))
        skip();
    struct daemon d;
    assert_int_equal(daemon_start(&d, models), 0);
    static int fds[FLOOD];
    flood(&d, "127.0.0.1", fds);
    assert_true(wait_closed(fds, FLOOD, FLOOD - 256) >= FLOOD - 256);
    assert_served(&d, "127.0.0.2");
    /* The connections from 127.0.0.1 that were kept are still open: idle and trickling
     * clients within their deadlines are not cut off. */
    assert_true(metric_from(&d, "127.0.0.2", "larder_http_connections") >= 256);
    unflood(fds);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- read deadlines ----------------------------------------------------------------------- */

/* Sends `start`, then the byte `trickle` every 100 ms until the daemon closes
 * the connection; false when it has not after GIVE_UP_MS. */
static bool trickled_out(struct daemon *d, const char *start, const char *trickle)
{
    int fd = dial(d, NULL);
    if (fd < 0 || !send_all(fd, start, strlen(start)))
        return false;
    bool closed = false;
    for (double until = now_ms() + GIVE_UP_MS; !closed && now_ms() < until;) {
        if (!send_all(fd, trickle, 1))
            closed = true;
        sleep_ms(100);
        closed = closed || peer_closed(fd);
    }
    close(fd);
    return closed;
}

static void test_trickling(void **state)
{
    struct daemon d;
    char config[1024];
    snprintf(config, sizeof config,
             "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
             "header_timeout = 1s\nbody_timeout = 1s\n%s", models);
    assert_int_equal(daemon_start(&d, config), 0);
    assert_true(trickled_out(&d, "GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ", "a"));
    assert_true(trickled_out(&d, "POST /v1/models/noop/infer HTTP/1.1\r\nHost: t\r\n"
                                 "Content-Type: text/plain\r\nContent-Length: 100000\r\n\r\n",
                             "b"));
    assert_true(metric(&d, "larder_http_read_timeouts_total{part=\"headers\"}") >= 1);
    assert_true(metric(&d, "larder_http_read_timeouts_total{part=\"body\"}") >= 1);
    /* A client that keeps its pace is served, on the same connection, request after
     * request. */
    int fd = dial(&d, NULL);
    static const char req[] = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    char buf[1024];
    for (int i = 0; i < 3; i++) {
        assert_true(send_all(fd, req, sizeof req - 1));
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        assert_true(n > 0);
        buf[n] = 0;
        assert_non_null(strstr(buf, "200 OK"));
    }
    close(fd);
    assert_int_equal(http_get(&d, "/health"), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- request memory ----------------------------------------------------------------------- */

static long long memory_field(struct daemon *d, const char *field)
{
    char path[64];
    snprintf(path, sizeof path, "requests.%s", field);
    return json_field(d, "/v1/memory", path);
}

static void test_request_memory(void **state)
{
    struct daemon d;
    char config[1024];
    snprintf(config, sizeof config,
             "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
             "max_body = 1MiB\nrequest_memory = 1MiB\n%s", models);
    assert_int_equal(daemon_start(&d, config), 0);
    assert_int_equal(memory_field(&d, "limit_bytes"), 1 << 20);
    /* One request holds 900 kB of the megabyte while its body comes slowly. */
    int slow = dial(&d, NULL);
    static const char head[] = "POST /v1/models/noop/infer HTTP/1.1\r\nHost: t\r\n"
                               "Content-Type: text/plain\r\nContent-Length: 900000\r\n\r\nxx";
    assert_true(send_all(slow, head, sizeof head - 1));
    for (double until = now_ms() + GIVE_UP_MS;
         now_ms() < until && memory_field(&d, "in_flight_bytes") < 900000;)
        sleep_ms(10);
    assert_true(memory_field(&d, "in_flight_bytes") >= 900000);
    /* Another that would go past the limit is refused from its Content-Length... */
    char out[8192];
    static const char big[] = "POST /v1/models/noop/infer HTTP/1.1\r\nHost: t\r\n"
                              "Connection: close\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 200000\r\n\r\n";
    assert_int_equal(raw_text(&d, NULL, big, out, sizeof out), 503);
    assert_non_null(strstr(out, "\"request_memory\""));
    assert_non_null(strstr(out, "Retry-After: 1"));
    /* ...and one without a length as soon as its chunks grow past it. */
    char chunked[512];
    int n = snprintf(chunked, sizeof chunked,
                     "POST /v1/models/noop/infer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n");
    int fd = dial(&d, NULL);
    assert_true(send_all(fd, chunked, (size_t)n));
    static char chunk[65536 + 16];
    n = snprintf(chunk, sizeof chunk, "10000\r\n");
    memset(chunk + n, 'c', 65536);
    memcpy(chunk + n + 65536, "\r\n", 2);
    for (int i = 0; i < 4; i++)
        assert_true(send_all(fd, chunk, (size_t)n + 65536 + 2));
    assert_true(send_all(fd, "0\r\n\r\n", 5));
    char buf[8192];
    assert_true(read_reply(fd, buf, sizeof buf) > 0);
    close(fd);
    assert_non_null(strstr(buf, " 503 "));
    assert_non_null(strstr(buf, "\"request_memory\""));
    assert_true(memory_field(&d, "refused") >= 2);
    assert_true(metric(&d, "larder_request_memory_refused_total") >= 2);
    /* Small requests still pass beside the slow one, and /health never needs memory. */
    assert_int_equal(http(&d, "POST", "/v1/models/noop/infer", "text/plain", "hi", 2, false,
                          NULL),
                     200);
    close(slow);
    for (double until = now_ms() + GIVE_UP_MS;
         now_ms() < until && memory_field(&d, "in_flight_bytes") != 0;)
        sleep_ms(10);
    assert_int_equal(memory_field(&d, "in_flight_bytes"), 0);
    char *body = calloc(1, 200000);
    assert_non_null(body);
    assert_int_equal(http(&d, "POST", "/v1/models/noop/infer", "text/plain", body, 200000,
                          false, NULL),
                     200);
    free(body);
    assert_int_equal(daemon_stop(&d), 0);
}

/* An invalid JSON body is answered 400 invalid_json without loading its model; a valid
 * one is served. The check itself is the daemon's scan, compared with jansson below. */
static void test_invalid_json(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, models), 0);
    struct larder__http_response r = {0};
    assert_int_equal(http(&d, "POST", "/v1/models/noop/infer", "application/json; charset=utf-8",
                          "{\"rows\": [1,", 12, false, &r),
                     400);
    assert_string_equal(error_code(&r), "invalid_json");
    assert_non_null(strstr(r.body, "line 1 column"));
    larder__http_response_clear(&r);
    assert_int_equal(json_field(&d, "/v1/models/noop", "loads"), 0);
    static const char rows[] = "{\"rows\": [[1, 2.5e3, null]]}";
    assert_int_equal(http(&d, "POST", "/v1/models/noop/infer", "application/json", rows,
                          sizeof rows - 1, false, NULL),
                     200);
    assert_int_equal(daemon_stop(&d), 0);
}

struct json_burst {
    struct daemon *d;
    int odd;  /* replies that were neither 200 nor 400 invalid_json */
};

static void *json_burst(void *arg)
{
    struct json_burst *b = arg;
    for (int i = 0; i < 100; i++) {
        const char *body = i % 3 ? "{\"rows\":[[1,2]]}" : "{\"rows\":[[1,";
        int st = http(b->d, "POST", "/v1/models/noop/infer", "application/json", body,
                      strlen(body), false, NULL);
        b->odd += st != (i % 3 ? 200 : 400);
    }
    return NULL;
}

/* JSON bodies are checked on the worker threads, which then ask for the model: many at
 * once, valid and not, are all answered, and the daemon stops cleanly after them. */
static void test_json_concurrent(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, models), 0);
    enum { N = 12 };
    pthread_t th[N];
    struct json_burst b[N];
    for (int i = 0; i < N; i++) {
        b[i] = (struct json_burst){&d, 0};
        assert_int_equal(pthread_create(&th[i], NULL, json_burst, &b[i]), 0);
    }
    int odd = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        odd += b[i].odd;
    }
    assert_int_equal(odd, 0);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_json_check(void **state)
{
    static const char *const texts[] = {
        "{}", "[]", "0", "-0", "1.5e-3", "\"x\"", "true", "null", " [1, [2, {\"a\": []}]] ",
        "{\"a\":1,\"b\":[true,false,null]}", "\"\\u00e9\\ud83d\\ude00\"", "\"\xc3\xa9\"",
        "", " ", "{", "[1,]", "{\"a\"}", "{\"a\":}", "{,}", "[1 2]", "01", "1.", "-", "1e",
        "+1", ".5", "tru", "nul", "[\"a\nb\"]", "\"\\x\"", "\"\\u12\"", "\"\\u0000\"",
        "\"\\ud800\"", "\"\\udc00\"", "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "{} {}",
        "[1]]", "{\"a\":1,}", "\"abc", "[", "\"\xe2\x82\"", "{\"a\" 1}", "[nan]", "[1e5,-2E+3]",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        json_error_t jerr;
        json_t *v = json_loadb(texts[i], strlen(texts[i]), JSON_DECODE_ANY, &jerr);
        char err[256] = "";
        bool ok = larder__json_check(texts[i], strlen(texts[i]), err, sizeof err);
        if (ok != (v != NULL))
            fail_msg("'%s': the scan says %s (%s), jansson %s", texts[i], ok ? "valid" : "invalid",
                     err, v ? "valid" : jerr.text);
        if (!ok)
            assert_int_equal(strncmp(err, "line ", 5), 0);
        json_decref(v);
    }
    /* A NUL inside the text, deep nesting (jansson stops at 2048). */
    assert_false(larder__json_check("[1,\0]", 5, (char[64]){0}, 64));
    char deep[5000];
    memset(deep, '[', 2048);
    memset(deep + 2048, ']', 2048);
    assert_true(larder__json_check(deep, 4096, (char[64]){0}, 64));
    memset(deep, '[', 2049);
    memset(deep + 2049, ']', 2049);
    assert_false(larder__json_check(deep, 4098, (char[64]){0}, 64));
    char err[64];
    assert_false(larder__json_check("{\n  \"a\": x}", 11, err, sizeof err));
    assert_string_equal(err, "line 2 column 8: invalid token");
}

/* ---- paths and headers read two ways ---------------------------------------------------- */

static void test_not_fooled(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, models), 0);
    char out[8192];
    /* %00 would cut the path: it is refused, not served as what comes before it. */
    assert_int_equal(get_from(&d, NULL, "/v1/models/noop%00junk", out, sizeof out), 400);
    assert_non_null(strstr(out, "\"bad_path\""));
    assert_int_equal(raw_text(&d, NULL,
                              "POST /v1/models/noop/infer%00x HTTP/1.1\r\nHost: t\r\n"
                              "Connection: close\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 1\r\n\r\nx", out, sizeof out),
                     400);
    assert_non_null(strstr(out, "\"bad_path\""));
    assert_int_equal(get_from(&d, NULL, "/health%0d%0a", out, sizeof out), 400);
    assert_int_equal(get_from(&d, NULL, "/health%7f", out, sizeof out), 400);
    assert_int_equal(get_from(&d, NULL, "/v1/memory?history=1%00000", out, sizeof out), 400);
    assert_int_equal(get_from(&d, NULL, "/health?note=a%0ab", out, sizeof out), 200);
    assert_int_equal(json_field(&d, "/v1/models/noop", "loads"), 0);
    /* Two of a header that decides something: no choice is made. */
    assert_int_equal(raw_text(&d, NULL,
                              "POST /v1/models/noop/infer HTTP/1.1\r\nHost: t\r\n"
                              "Connection: close\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 1\r\nContent-Length: 2\r\n\r\nxx", out,
                              sizeof out),
                     400);
    assert_non_null(strstr(out, "\"bad_header\""));
    assert_non_null(strstr(out, "Content-Length"));
    assert_int_equal(raw_text(&d, NULL,
                              "POST /v1/reload HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                              "Authorization: Bearer nothing\r\n" AUTH_HEADER "\r\n\r\n", out,
                              sizeof out),
                     400);
    assert_non_null(strstr(out, "Authorization"));
    assert_int_equal(raw_text(&d, NULL,
                              "POST /v1/models/noop/infer HTTP/1.1\r\nHost: t\r\n"
                              "Connection: close\r\nContent-Type: text/plain\r\n"
                              "Content-Type: application/json\r\nContent-Length: 1\r\n\r\nx",
                              out, sizeof out),
                     400);
    assert_int_equal(raw_text(&d, NULL,
                              "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n", out,
                              sizeof out),
                     400);
    assert_non_null(strstr(out, "Host"));
    assert_int_equal(raw_text(&d, NULL, "GET /health HTTP/1.0\r\n\r\n", out, sizeof out), 200);
    assert_int_equal(raw_text(&d, NULL,
                              "POST /v1/models/noop/infer HTTP/1.1\r\nHost: t\r\n"
                              "Connection: close\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "1\r\nx\r\n0\r\n\r\n", out, sizeof out),
                     400);
    assert_int_equal(json_field(&d, "/v1/models/noop", "loads"), 0);
    assert_int_equal(http_get(&d, "/health"), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

/* The backend gets the whole Content-Type, so it sees what it cannot decode. */
static void test_content_type_parameters(void **state)
{
    const char *dir = getenv("LARDER_BACKEND_DIR");
    char so[512];
    snprintf(so, sizeof so, "%s/larder-pocketsphinx.so", dir ? dir : ".");
    if (access(so, R_OK) != 0)
        skip();
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.asr]\nbackend = pocketsphinx\n"), 0);
    static char pcm[3200]; /* 0.1 s of silence, 16 kHz mono */
    struct larder__http_response r = {0};
    assert_int_equal(http(&d, "POST", "/v1/models/asr/infer", "audio/L16; rate=8000", pcm,
                          sizeof pcm, false, &r),
                     400);
    assert_string_equal(error_code(&r), "bad_input");
    larder__http_response_clear(&r);
    assert_int_equal(http(&d, "POST", "/v1/models/asr/infer", "audio/L16;channels=2", pcm,
                          sizeof pcm, false, &r),
                     400);
    assert_string_equal(error_code(&r), "bad_input");
    larder__http_response_clear(&r);
    assert_int_equal(http(&d, "POST", "/v1/models/asr/infer", "Audio/L16; rate=16000", pcm,
                          sizeof pcm, false, NULL),
                     200);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- Retry-After during a cooldown ------------------------------------------------------- */

static int retry_after(const struct larder__http_response *r)
{
    const char *h = r->headers ? strcasestr(r->headers, "\r\nRetry-After:") : NULL;
    return h ? atoi(h + 14) : -1;
}

static void test_cooldown_retry_after(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.bad]\nbackend = synthetic\nfail = always\n"), 0);
    /* Failures double the cooldown: 1 s, 2 s, 4 s. */
    for (int i = 0; i < 3; i++) {
        for (double until = now_ms() + GIVE_UP_MS;
             now_ms() < until && json_field(&d, "/v1/models/bad", "cooldown_ms") > 0;)
            sleep_ms(20);
        assert_int_equal(http(&d, "POST", "/v1/models/bad/infer", "text/plain", "x", 1, false,
                              NULL),
                         500);
    }
    long long before = json_field(&d, "/v1/models/bad", "cooldown_ms");
    struct larder__http_response r = {0};
    assert_int_equal(http(&d, "POST", "/v1/models/bad/infer", "text/plain", "x", 1, false, &r),
                     503);
    assert_string_equal(error_code(&r), "cooldown");
    long long after = json_field(&d, "/v1/models/bad", "cooldown_ms");
    int ra = retry_after(&r);
    larder__http_response_clear(&r);
    /* What was left when it answered, rounded up: between the two readings. */
    assert_true(before > 1000);
    assert_true(ra >= (after + 999) / 1000 && ra <= (before + 999) / 1000);
    assert_int_equal(http(&d, "POST", "/v1/models/bad/load", NULL, NULL, 0, true, &r), 503);
    ra = retry_after(&r);
    larder__http_response_clear(&r);
    assert_true(ra >= 1 && ra <= (before + 999) / 1000);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- event streams ------------------------------------------------------------------------ */

static void test_events_clients(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, models), 0);
    double total = metric(&d, "larder_sse_clients_total");
    struct larder__http_response r = {0};
    assert_int_equal(http(&d, "HEAD", "/v1/events", NULL, NULL, 0, false, &r), 200);
    assert_non_null(strcasestr(r.headers, "text/event-stream"));
    larder__http_response_clear(&r);
    assert_true(metric(&d, "larder_sse_clients_total") == total);
    assert_true(metric(&d, "larder_sse_clients") == 0);
    /* A client that goes stops counting at once, not at the next ping. */
    int fd = dial(&d, NULL);
    static const char req[] = "GET /v1/events HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_true(send_all(fd, req, sizeof req - 1));
    char buf[512];
    assert_true(recv(fd, buf, sizeof buf, 0) > 0);
    for (double until = now_ms() + GIVE_UP_MS;
         now_ms() < until && metric(&d, "larder_sse_clients") != 1;)
        sleep_ms(10);
    assert_true(metric(&d, "larder_sse_clients") == 1);
    close(fd);
    /* The daemon pings every 15 s; before that, the socket's hang-up is what tells. */
    for (double until = now_ms() + 10000;
         now_ms() < until && metric(&d, "larder_sse_clients") != 0;)
        sleep_ms(10);
    assert_true(metric(&d, "larder_sse_clients") == 0);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- token files -------------------------------------------------------------------------- */

static char tmpdir[64];

static const char *tmp_file(const char *name, const char *text, mode_t mode)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
    return path;
}

static void test_token_files(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/larder-it-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    char err[1024], path[256];
    struct larder__config *c = NULL;
    /* A missing file: the error names the config line and the key. */
    snprintf(path, sizeof path, "%s",
             tmp_file("larder.ini", "[server]\nlisten = :0\n\nadmin_tokens = none.tokens\n",
                      0600));
    assert_int_equal(larder__config_load(path, &c, err, sizeof err), -EINVAL);
    char want[512];
    snprintf(want, sizeof want,
             "%s:4: [server] admin_tokens: %s/none.tokens: No such file or directory", path,
             tmpdir);
    assert_string_equal(err, want);
    /* An unreadable one (unless this runs as root), an empty one, a directory. */
    tmp_file("secret.tokens", "tok\n", 0);
    tmp_file("larder.ini", "[server]\ninfer_tokens = secret.tokens\n", 0600);
    if (access(tmp_file("secret.tokens", "tok\n", 0), R_OK) != 0) {
        assert_int_equal(larder__config_load(path, &c, err, sizeof err), -EINVAL);
        assert_non_null(strstr(err, ":2: [server] infer_tokens: "));
        assert_non_null(strstr(err, "Permission denied"));
    }
    tmp_file("empty.tokens", "# nothing\n", 0600);
    tmp_file("larder.ini", "[server]\nadmin_tokens = empty.tokens\n", 0600);
    assert_int_equal(larder__config_load(path, &c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, ":2: [server] admin_tokens: "));
    assert_non_null(strstr(err, "no token"));
    tmp_file("larder.ini", "[server]\nadmin_tokens = .\n", 0600);
    assert_int_equal(larder__config_load(path, &c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "is a directory"));
    /* A good one loads; one that others may read is loaded with a warning. */
    char logpath[128];
    snprintf(logpath, sizeof logpath, "%s/log", tmpdir);
    int logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(logfd >= 0);
    larder__log_setup(LARDER__LOG_TEXT, LARDER__LOG_WARN, logfd);
    struct larder__tokens *t = NULL;
    snprintf(path, sizeof path, "%s", tmp_file("own.tokens", "tok\n", 0600));
    assert_int_equal(larder__tokens_load(path, &t, err, sizeof err), 0);
    t = larder__tokens_free(t);
    char *log = read_file(logpath, NULL);
    assert_null(strstr(log, "readable"));
    free(log);
    snprintf(path, sizeof path, "%s", tmp_file("open.tokens", "tok\n", 0644));
    assert_int_equal(larder__tokens_load(path, &t, err, sizeof err), 0);
    t = larder__tokens_free(t);
    log = read_file(logpath, NULL);
    assert_non_null(strstr(log, "token file readable by others"));
    assert_non_null(strstr(log, "open.tokens"));
    free(log);
    larder__log_setup(LARDER__LOG_TEXT, LARDER__LOG_INFO, 2);
    close(logfd);
    /* The new [server] keys: values and the combination with max_body. */
    snprintf(path, sizeof path, "%s",
             tmp_file("larder.ini",
                      "[server]\nmax_connections = 10\nmax_connections_per_client = 2\n"
                      "header_timeout = 2s\nbody_timeout = 3s\nrequest_memory = 64MiB\n",
                      0600));
    assert_int_equal(larder__config_load(path, &c, err, sizeof err), 0);
    assert_int_equal(c->max_connections, 10);
    assert_int_equal(c->max_connections_per_client, 2);
    assert_int_equal(c->header_timeout_ms, 2000);
    assert_int_equal(c->body_timeout_ms, 3000);
    assert_int_equal(c->request_memory, 64 << 20);
    c = larder__config_free(c);
    tmp_file("larder.ini", "[server]\nmax_body = 8MiB\nrequest_memory = 4MiB\n", 0600);
    assert_int_equal(larder__config_load(path, &c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, ":3: [server] request_memory: must be at least max_body"));
    tmp_file("larder.ini", "[server]\nmax_connections = 0\n", 0600);
    assert_int_equal(larder__config_load(path, &c, err, sizeof err), -EINVAL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_check),
        cmocka_unit_test(test_token_files),
        cmocka_unit_test_teardown(test_not_fooled, daemon_teardown),
        cmocka_unit_test_teardown(test_invalid_json, daemon_teardown),
        cmocka_unit_test_teardown(test_json_concurrent, daemon_teardown),
        cmocka_unit_test_teardown(test_request_memory, daemon_teardown),
        cmocka_unit_test_teardown(test_trickling, daemon_teardown),
        cmocka_unit_test_teardown(test_events_clients, daemon_teardown),
        cmocka_unit_test_teardown(test_cooldown_retry_after, daemon_teardown),
        cmocka_unit_test_teardown(test_content_type_parameters, daemon_teardown),
        cmocka_unit_test_teardown(test_flood_limits, daemon_teardown),
        cmocka_unit_test_teardown(test_flood_defaults, daemon_teardown),
    };
    return cmocka_run_group_tests_name("daemon-hostile", tests, NULL, NULL);
}
