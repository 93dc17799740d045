/* A tiny HTTP/1.1 client (see client.h). */
#include "client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int larder__url_parse(const char *url, struct larder__url *ret_url)
{
    struct larder__url u = {0};
    if (strncmp(url, "http://", 7) == 0)
        url += 7;
    size_t hlen;
    const char *rest;
    if (*url == '[') {
        const char *close = strchr(url, ']');
        if (!close)
            return -EINVAL;
        hlen = (size_t)(close - url - 1);
        url++;
        rest = close + 1;
    } else {
        hlen = strcspn(url, ":/");
        rest = url + hlen;
    }
    if (hlen == 0 || hlen >= sizeof u.host)
        return -EINVAL;
    memcpy(u.host, url, hlen);
    if (*rest == ':') {
        size_t plen = strcspn(rest + 1, "/");
        if (plen == 0 || plen >= sizeof u.port || strspn(rest + 1, "0123456789") != plen)
            return -EINVAL;
        memcpy(u.port, rest + 1, plen);
        rest += 1 + plen;
    } else {
        strcpy(u.port, "80");
    }
    if (*rest && strcmp(rest, "/") != 0)
        return -EINVAL;
    *ret_url = u;
    return 0;
}

static int wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n;
    do
        n = poll(&p, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n == 0 ? -ETIMEDOUT : 0;
}

static int connect_one(const struct addrinfo *ai, int timeout_ms)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    int r = connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : -errno;
    if (r == -EINPROGRESS && (r = wait_fd(fd, POLLOUT, timeout_ms)) == 0) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        r = -soerr;
    }
    if (r < 0) {
        close(fd);
        return r;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int larder__http_connect(const struct larder__url *url, int timeout_ms)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(url->host, url->port, &hints, &res) != 0 || !res)
        return -EHOSTUNREACH;
    int fd = -EHOSTUNREACH;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = connect_one(ai, timeout_ms);
    freeaddrinfo(res);
    return fd;
}

static int send_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) {
            int r = wait_fd(fd, POLLOUT, 30000);
            if (r < 0)
                return r;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int larder__http_send(int fd, const struct larder__url *url, const char *method,
                      const char *path, const char *const *headers, const char *content_type,
                      const void *body, size_t body_len)
{
    char *head = NULL;
    size_t hlen = 0;
    FILE *f = open_memstream(&head, &hlen);
    if (!f)
        return -ENOMEM;
    fprintf(f, "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n", method, path,
            url->host, url->port);
    for (size_t i = 0; headers && headers[i]; i++)
        fprintf(f, "%s\r\n", headers[i]);
    if (content_type)
        fprintf(f, "Content-Type: %s\r\n", content_type);
    if (body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0)
        fprintf(f, "Content-Length: %zu\r\n", body_len);
    fprintf(f, "\r\n");
    if (fclose(f) != 0) {
        free(head);
        return -ENOMEM;
    }
    int r = send_all(fd, head, hlen);
    free(head);
    if (r == 0 && body_len)
        r = send_all(fd, body, body_len);
    return r;
}

/* ---- reading ------------------------------------------------------------------------------ */

struct buf {
    char *p;
    size_t len, cap;
};

/* Reads more bytes; returns 0 at EOF, > 0 bytes read, < 0 error. */
static ssize_t read_more(int fd, struct buf *b, int timeout_ms)
{
    if (b->cap - b->len < 4096) {
        size_t cap = b->cap ? b->cap * 2 : 16384;
        char *np = realloc(b->p, cap);
        if (!np)
            return -ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    for (;;) {
        ssize_t n = recv(fd, b->p + b->len, b->cap - b->len - 1, 0);
        if (n >= 0) {
            b->len += (size_t)n;
            b->p[b->len] = 0;
            return n;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        int r = wait_fd(fd, POLLIN, timeout_ms);
        if (r < 0)
            return r;
    }
}

/* Decodes a chunked body in place; returns its length or -EPROTO / -EAGAIN (incomplete). */
static ssize_t unchunk(char *body, size_t len)
{
    size_t in = 0, out = 0;
    for (;;) {
        char *end;
        char *crlf = memmem(body + in, len - in, "\r\n", 2);
        if (!crlf)
            return -EAGAIN;
        unsigned long n = strtoul(body + in, &end, 16);
        if (end == body + in)
            return -EPROTO;
        in = (size_t)(crlf - body) + 2;
        if (n == 0)
            return (ssize_t)out;
        if (len - in < n + 2)
            return -EAGAIN;
        memmove(body + out, body + in, n);
        out += n;
        in += n + 2;
    }
}

static int finish(struct buf *b, size_t head_end, struct larder__http_response *ret)
{
    int status = 0;
    if (sscanf(b->p, "HTTP/1.%*d %d", &status) != 1)
        return -EPROTO;
    char *headers = strndup(b->p, head_end);
    char *body = malloc(b->len - head_end - 4 + 1);
    if (!headers || !body) {
        free(headers);
        free(body);
        return -ENOMEM;
    }
    size_t blen = b->len - head_end - 4;
    memcpy(body, b->p + head_end + 4, blen);
    body[blen] = 0;
    struct larder__http_response resp = {status, headers, body, blen};
    char te[64];
    if (larder__http_header(&resp, "Transfer-Encoding", te, sizeof te) &&
        strcasecmp(te, "chunked") == 0) {
        ssize_t n = unchunk(body, blen);
        if (n < 0) {
            free(headers);
            free(body);
            return n == -EAGAIN ? -EPROTO : (int)n;
        }
        resp.body_len = (size_t)n;
        body[n] = 0;
    }
    *ret = resp;
    return 0;
}

/* True when the response in b is complete (by Content-Length or the final chunk). */
static bool complete(const struct buf *b, size_t head_end)
{
    struct larder__http_response tmp = {0, b->p, NULL, 0};
    char v[64];
    size_t have = b->len - head_end - 4;
    char saved = b->p[head_end];
    b->p[head_end] = 0;
    const char *cl = larder__http_header(&tmp, "Content-Length", v, sizeof v);
    unsigned long long need = cl ? strtoull(cl, NULL, 10) : 0;
    bool chunked = !cl && larder__http_header(&tmp, "Transfer-Encoding", v, sizeof v);
    b->p[head_end] = saved;
    if (cl)
        return have >= need;
    if (chunked)
        return have >= 5 && memcmp(b->p + b->len - 5, "0\r\n\r\n", 5) == 0;
    return false; /* read to EOF */
}

int larder__http_read(int fd, int timeout_ms, struct larder__http_response *ret)
{
    struct buf b = {0};
    size_t head_end = 0; /* offset of the blank line ending the headers; 0 = not seen */
    int r = 0;
    for (;;) {
        ssize_t n = read_more(fd, &b, timeout_ms);
        if (n < 0) {
            r = (int)n;
            break;
        }
        char *blank = !head_end && b.p ? strstr(b.p, "\r\n\r\n") : NULL;
        if (blank)
            head_end = (size_t)(blank - b.p);
        if (n == 0 || (head_end && complete(&b, head_end))) {
            r = head_end ? finish(&b, head_end, ret) : -EPROTO;
            break;
        }
    }
    free(b.p);
    return r;
}

int larder__http_request(const struct larder__url *url, const char *method, const char *path,
                         const char *const *headers, const char *content_type,
                         const void *body, size_t body_len, int timeout_ms,
                         struct larder__http_response *ret)
{
    int fd = larder__http_connect(url, timeout_ms);
    if (fd < 0)
        return fd;
    int r = larder__http_send(fd, url, method, path, headers, content_type, body, body_len);
    if (r == 0)
        r = larder__http_read(fd, timeout_ms, ret);
    close(fd);
    return r;
}

const char *larder__http_header(const struct larder__http_response *resp, const char *name,
                                char *buf, size_t len)
{
    size_t nlen = strlen(name);
    for (const char *line = resp->headers; line && *line;) {
        const char *eol = strstr(line, "\r\n");
        size_t llen = eol ? (size_t)(eol - line) : strlen(line);
        if (llen > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            while (*v == ' ')
                v++;
            size_t vlen = llen - (size_t)(v - line);
            snprintf(buf, len, "%.*s", (int)vlen, v);
            return buf;
        }
        line = eol ? eol + 2 : line + llen;
    }
    return NULL;
}

void larder__http_response_clear(struct larder__http_response *resp)
{
    free(resp->headers);
    free(resp->body);
    memset(resp, 0, sizeof *resp);
}

static long ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

int larder__http_read_until(int fd, char *buf, size_t len, size_t *used, const char *needle,
                            int timeout_ms)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        buf[*used] = 0;
        if (strstr(buf, needle))
            return (int)*used;
        long left = timeout_ms - ms_since(&t0);
        if (left <= 0 || *used + 1 >= len)
            return -ETIMEDOUT;
        int r = wait_fd(fd, POLLIN, (int)left);
        if (r < 0)
            return r;
        ssize_t n = recv(fd, buf + *used, len - *used - 1, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -ECONNRESET;
        *used += (size_t)n;
    }
}
