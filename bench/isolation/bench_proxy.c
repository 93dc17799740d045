/* Warm request latency through larderd's reverse proxy against straight to the child
 * server, measured in the same run.
 *
 * Starts larderd with examples/external/server.py (the XGBoost model server) as an
 * external model, warms it, then times the same POST /predict alternately through
 * larderd (/v1/models/py/infer) and straight to the child's port, with the same
 * connection policy on both paths: first one kept-alive connection each, then a new
 * connection per request each. Prints the median and p90 of each and their ratios
 * (target: proxy / direct <= 1.2 on kept-alive connections).
 *
 * usage: bench_proxy [LARDERD [REQUESTS]]
 *
 * The client is plain C on blocking sockets with TCP_NODELAY (a request is one send),
 * so what it adds to each figure is a few microseconds, small next to the figures. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

#ifndef LARDERD_PATH
#error "LARDERD_PATH must name the built larderd"
#endif
#ifndef EXAMPLES_DIR
#error "EXAMPLES_DIR must name the examples directory"
#endif

#define PYTHON "/usr/bin/python3"
#define SERVER EXAMPLES_DIR "/external/server.py"
#define ROWS "{\"rows\":[[1,0,0,0],[-1,0,1,0]]}"

static int dial(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Sends req (one send) and reads one response with a Content-Length body; the status,
 * or -1. The body is copied into body (cap bytes, NUL-terminated) when body is not NULL. */
static int exchange(int fd, const char *req, size_t req_len, char *body, size_t cap)
{
    char buf[16384];
    size_t len = 0;
    if (send(fd, req, req_len, MSG_NOSIGNAL) != (ssize_t)req_len)
        return -1;
    for (;;) {
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n <= 0)
            return -1;
        len += (size_t)n;
        buf[len] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        const char *cl = strcasestr(buf, "\r\nContent-Length:");
        if (!cl || cl > end)
            return -1;
        size_t want = (size_t)(end + 4 - buf) + strtoul(cl + 17, NULL, 10);
        if (want >= sizeof buf)
            return -1;
        while (len < want) {
            if ((n = recv(fd, buf + len, want - len, 0)) <= 0)
                return -1;
            len += (size_t)n;
        }
        buf[len] = 0;
        if (body)
            snprintf(body, cap, "%s", end + 4);
        return atoi(buf + 9);
    }
}

struct path {
    const char *name;
    unsigned port;
    char req[512];
    size_t req_len;
    int fd;        /* the kept-alive connection, or -1 */
    double *t;     /* seconds per request */
};

static void path_init(struct path *p, const char *name, unsigned port, const char *target,
                      size_t n)
{
    p->name = name;
    p->port = port;
    p->fd = -1;
    p->t = calloc(n, sizeof *p->t);
    p->req_len = (size_t)snprintf(p->req, sizeof p->req,
                                  "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n"
                                  "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                                  "\r\n%s", target, port, strlen(ROWS), ROWS);
}

/* One timed request; keep: on the kept-alive connection, else on a new one (connect
 * included in the time, as a client without keep-alive pays it). */
static double once(struct path *p, bool keep)
{
    double t0 = bench_now();
    int fd = keep ? p->fd : dial(p->port);
    if (keep && fd < 0)
        fd = p->fd = dial(p->port);
    int st = fd < 0 ? -1 : exchange(fd, p->req, p->req_len, NULL, 0);
    double t = bench_now() - t0;
    if (!keep && fd >= 0)
        close(fd);
    if (st != 200) {
        fprintf(stderr, "bench_proxy: %s: status %d\n", p->name, st);
        exit(1);
    }
    return t;
}

/* CPU seconds larderd has used so far (user + system, all threads). */
static double cpu_of(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                     &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static pid_t larderd_pid;

static double quantile(double *v, size_t n, double q)
{
    bench_median(v, n); /* sorts */
    return v[(size_t)(q * (double)(n - 1))];
}

/* n requests on each path, alternating; returns the ratio of the medians (via / direct). */
static double round_of(struct path *via, struct path *direct, size_t n, bool keep)
{
    for (size_t i = 0; i < 50; i++) { /* warm both paths (threads, pooled connections) */
        once(via, keep);
        once(direct, keep);
    }
    double cpu0 = cpu_of(larderd_pid);
    for (size_t i = 0; i < n; i++) {
        via->t[i] = once(via, keep);
        direct->t[i] = once(direct, keep);
    }
    double cpu = cpu_of(larderd_pid) - cpu0;
    double mv = bench_median(via->t, n) * 1e6, md = bench_median(direct->t, n) * 1e6;
    printf("%s: through larderd median %.0f us, p90 %.0f us; straight to the child median "
           "%.0f us, p90 %.0f us\n", keep ? "kept-alive connections" : "a connection per request",
           mv, quantile(via->t, n, 0.9) * 1e6, md, quantile(direct->t, n, 0.9) * 1e6);
    printf("larderd CPU per proxied request: %.0f us\n", cpu / (double)n * 1e6);
    printf("ratio %s: %.3f\n", keep ? "proxy_keepalive" : "proxy_per_connection", mv / md);
    return mv / md;
}

int main(int argc, char **argv)
{
    const char *larderd = argc > 1 ? argv[1] : LARDERD_PATH;
    size_t n = argc > 2 ? strtoul(argv[2], NULL, 10) : 2000;
    if (n < 10)
        n = 10;
    if (access(PYTHON, X_OK) != 0 ||
        system(PYTHON " -c 'import xgboost, numpy' 2>/dev/null") != 0) {
        printf("summary: skipped: %s cannot import xgboost and numpy (Debian's "
               "python3-xgboost, python3-numpy)\n", PYTHON);
        return 0;
    }
    /* A port of its own, so that larderd's log can stay at warn: at info it would log
     * each request line the child writes, on both paths. */
    int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (probe < 0 || bind(probe, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(probe, (struct sockaddr *)&a, &alen) < 0) {
        perror("bench_proxy: a free port");
        return 1;
    }
    close(probe);
    unsigned port = ntohs(a.sin_port);
    char config[2048];
    snprintf(config, sizeof config,
             "[server]\nlisten = 127.0.0.1:%u\nlog_level = warn\n\n"
             "[memory]\nwatch_pressure = no\n\n"
             "[model.py]\ncommand = %s %s --port ${PORT}\n"
             "infer_path = /predict\nttl = never\n", port, PYTHON, SERVER);
    struct bench_daemon d;
    int prepared = bench_prepare(&d, config);
    char url[64];
    snprintf(url, sizeof url, "127.0.0.1:%u", port);
    d.port = port;
    larder__url_parse(url, &d.url);
    if (prepared < 0 || bench_start(&d, larderd) < 0) {
        fprintf(stderr, "bench_proxy: larderd did not start (%s)\n", larderd);
        bench_stop(&d);
        return 1;
    }
    /* The first request starts the child; the child names its port. */
    char body[1024] = "";
    const char pid_req[] = "GET /v1/models/py/proxy/pid HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    int fd = dial(d.port);
    int st = fd < 0 ? -1 : exchange(fd, pid_req, sizeof pid_req - 1, body, sizeof body);
    if (fd >= 0)
        close(fd);
    const char *p = strstr(body, "\"port\":");
    unsigned child = p ? (unsigned)strtoul(p + 7, NULL, 10) : 0;
    if (st != 200 || !child) {
        fprintf(stderr, "bench_proxy: the model did not start (status %d: %s)\n", st, body);
        bench_stop(&d);
        return 1;
    }
    larderd_pid = d.pid;
    struct path via, direct;
    path_init(&via, "through larderd", d.port, "/v1/models/py/infer", n);
    path_init(&direct, "straight to the child", child, "/predict", n);
    printf("requests: %zu on each path, alternating, POST /predict of two rows\n", n);
    double keep = round_of(&via, &direct, n, true);
    close(via.fd);
    close(direct.fd);
    double per = round_of(&via, &direct, n, false);
    printf("summary: proxy / direct %.3fx on kept-alive connections (target <= 1.2), %.3fx "
           "with a connection per request\n", keep, per);
    free(via.t);
    free(direct.t);
    bench_stop(&d);
    return 0;
}
