/* larderd reverse proxy to external models (see proxy.h). */
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "external.h"
#include "log.h"
#include "routes.h"

#define HEAD_MAX (64u << 10)      /* the child's response head */
#define STREAM_BUF (64u << 10)    /* body bytes waiting for the client */
#define IN_BUF (16u << 10)        /* raw bytes read from the child at once */
#define DEFAULT_TIMEOUT_MS 60000

/* Waits on cv for at most 20 ms (mu held): the stop loops recheck their deadline. */
static void wait_a_little(pthread_cond_t *cv, pthread_mutex_t *mu)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 20 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(cv, mu, &ts);
}

/* ---- the client ------------------------------------------------------------------------ */

static int ms_left(double deadline)
{
    double left = deadline - larder__now();
    return left <= 0 ? 0 : left > 3600 ? 3600000 : (int)(left * 1000.0) + 1;
}

/* Waits for events on fd until deadline: 1 ready, 0 timed out, negative errno. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        int ms = ms_left(deadline);
        if (ms == 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, ms);
        if (n > 0)
            return 1;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

int larder__upstream_connect(const char *host, unsigned port, double deadline, char *err,
                             size_t errlen)
{
    char service[16];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV}, *res = NULL;
    snprintf(service, sizeof service, "%u", port);
    int g = getaddrinfo(host, service, &hints, &res);
    if (g != 0) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host, gai_strerror(g));
        return -EHOSTUNREACH;
    }
    int r = -ECONNREFUSED, fd = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            r = -errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            r = 0;
        } else if (errno != EINPROGRESS) {
            r = -errno;
        } else {
            int w = wait_fd(fd, POLLOUT, deadline), soerr = 0;
            socklen_t len = sizeof soerr;
            if (w == 0)
                r = -ETIMEDOUT;
            else if (w < 0)
                r = w;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr)
                r = -(soerr ? soerr : errno);
            else
                r = 0;
        }
        if (r == 0 || r == -ETIMEDOUT)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (r < 0) {
        if (fd >= 0)
            close(fd);
        snprintf(err, errlen, "cannot connect to %s:%u: %s", host, port,
                 r == -ETIMEDOUT ? "timed out" : strerror(-r));
        return r;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int send_all(int fd, const char *p, size_t n, double deadline)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int r = wait_fd(fd, POLLOUT, deadline);
        if (r <= 0)
            return r == 0 ? -ETIMEDOUT : r;
    }
    return 0;
}

/* Sends what is left of head and body on fd (*sent bytes of the two went already), in as
 * few segments as the socket takes. wait false: only what goes without waiting (then 0
 * whether or not everything went). 0, or a negative errno (-ETIMEDOUT past deadline). */
static int send_rest(int fd, const char *head, size_t head_len, const char *body,
                     size_t body_len, size_t *sent, bool wait, double deadline)
{
    while (*sent < head_len + body_len) {
        struct iovec iov[2];
        int n = 0;
        if (*sent < head_len)
            iov[n++] = (struct iovec){(void *)(head + *sent), head_len - *sent};
        if (body_len) {
            size_t from = *sent > head_len ? *sent - head_len : 0;
            iov[n++] = (struct iovec){(void *)(body + from), body_len - from};
        }
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            *sent += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        if (!wait)
            return 0;
        int r = wait_fd(fd, POLLOUT, deadline);
        if (r <= 0)
            return r == 0 ? -ETIMEDOUT : r;
    }
    return 0;
}

/* A parsed response head. */
struct head {
    int status;
    char *text;          /* the head, NUL-terminated lines (status line first) */
    size_t n_lines;
    char **lines;        /* "Name: value", the status line excluded */
    bool chunked;
    bool has_length;
    uint64_t length;
    bool keep_alive;     /* the connection may carry another exchange after this one */
};

static void head_free(struct head *h)
{
    free(h->text);
    free(h->lines);
    memset(h, 0, sizeof *h);
}

static bool token_in(const char *list, const char *token)
{
    size_t n = strlen(token);
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        size_t k = strcspn(p, " \t,;");
        if (k == n && strncasecmp(p, token, n) == 0)
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

/* Parses the head of len bytes at buf (ending with the empty line); false on nonsense. */
static bool parse_head(const char *buf, size_t len, struct head *h)
{
    memset(h, 0, sizeof *h);
    if (!(h->text = malloc(len + 1)))
        return false;
    memcpy(h->text, buf, len);
    h->text[len] = 0;
    size_t cap = 16;
    h->lines = malloc(cap * sizeof *h->lines);
    char *save = NULL, *line = strtok_r(h->text, "\r\n", &save);
    int major, minor, status;
    if (!h->lines || !line || sscanf(line, "HTTP/%d.%d %d", &major, &minor, &status) != 3 ||
        status < 100 || status > 999)
        return false;
    h->status = status;
    /* HTTP/1.1 keeps the connection unless told otherwise; 1.0 only when told to. */
    bool says_close = false, says_keep = false;
    while ((line = strtok_r(NULL, "\r\n", &save))) {
        char *colon = strchr(line, ':');
        if (!colon || colon == line)
            return false;
        if (h->n_lines == cap) {
            char **more = realloc(h->lines, (cap *= 2) * sizeof *more);
            if (!more)
                return false;
            h->lines = more;
        }
        h->lines[h->n_lines++] = line;
        const char *v = colon + 1 + strspn(colon + 1, " \t");
        size_t kn = (size_t)(colon - line);
        if (kn == 17 && strncasecmp(line, "Transfer-Encoding", kn) == 0)
            h->chunked = token_in(v, "chunked");
        else if (kn == 10 && strncasecmp(line, "Connection", kn) == 0) {
            says_close = says_close || token_in(v, "close");
            says_keep = says_keep || token_in(v, "keep-alive");
        }
        else if (kn == 14 && strncasecmp(line, "Content-Length", kn) == 0) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(v, &end, 10);
            if (errno || end == v || (h->has_length && n != h->length))
                return false;
            h->has_length = true;
            h->length = n;
        }
    }
    h->keep_alive = !says_close && (major > 1 || (major == 1 && minor >= 1) || says_keep);
    return true;
}

/* Reads up to the end of the head into buf (cap bytes): *ret_head_len the head's bytes,
 * *ret_len all bytes read (body bytes may follow the head). */
static int read_head(int fd, char *buf, size_t cap, size_t *ret_len, size_t *ret_head_len,
                     double deadline)
{
    size_t len = 0;
    *ret_len = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        if (n > 0) {
            size_t from = len > 3 ? len - 3 : 0;
            len += (size_t)n;
            for (size_t i = from; i + 3 < len; i++) {
                if (memcmp(buf + i, "\r\n\r\n", 4) == 0) {
                    *ret_head_len = i + 4;
                    *ret_len = len;
                    return 0;
                }
            }
            if (len == cap)
                return -E2BIG;
            continue;
        }
        *ret_len = len;
        if (n == 0)
            return -ECONNRESET;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int r = wait_fd(fd, POLLIN, deadline);
        if (r <= 0)
            return r == 0 ? -ETIMEDOUT : r;
    }
}

int larder__upstream_get_status(const char *host, unsigned port, const char *path,
                                double deadline, int *ret_status, char *err, size_t errlen)
{
    int fd = larder__upstream_connect(host, port, deadline, err, errlen);
    if (fd < 0)
        return fd;
    char req[1024], *buf = malloc(HEAD_MAX);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%u\r\nConnection: close\r\n"
                     "User-Agent: larderd\r\n\r\n", path, host, port);
    size_t len = 0, head_len = 0;
    int r = !buf ? -ENOMEM : n < 0 || (size_t)n >= sizeof req ? -ENAMETOOLONG
                                                             : send_all(fd, req, (size_t)n, deadline);
    if (r == 0)
        r = read_head(fd, buf, HEAD_MAX, &len, &head_len, deadline);
    struct head h;
    if (r == 0 && !parse_head(buf, head_len, &h))
        r = -EPROTO;
    if (r == 0)
        *ret_status = h.status;
    else
        snprintf(err, errlen, "GET %s: %s", path,
                 r == -ETIMEDOUT ? "no answer in time" : r == -EPROTO ? "not an HTTP response"
                                                                      : strerror(-r));
    if (r != -ENOMEM && r != -ENAMETOOLONG && buf)
        head_free(&h);
    free(buf);
    close(fd);
    return r;
}

/* ---- the request ---------------------------------------------------------------------- */

struct larder__proxy_request {
    char *method;
    char *target;
    struct larder__text head;  /* the end-to-end header lines of the client */
    const char *body;
    size_t body_len;
    double queue_ms;           /* < 0: not known */
};

void larder__proxy_request_free(struct larder__proxy_request *pr)
{
    if (!pr)
        return;
    free(pr->method);
    free(pr->target);
    larder__text_free(&pr->head);
    free(pr);
}

/* Hop-by-hop headers (RFC 9110 7.6.1), and what the proxy sets itself. */
static bool hop_header(const char *key)
{
    static const char *const hop[] = {"Connection", "Keep-Alive", "Proxy-Connection",
                                      "Proxy-Authenticate", "Proxy-Authorization", "TE",
                                      "Trailer", "Transfer-Encoding", "Upgrade",
                                      "Content-Length", "Host"};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (strcasecmp(key, hop[i]) == 0)
            return true;
    return false;
}

struct collect {
    struct larder__proxy_request *pr;
    bool drop_auth;
};

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    struct collect *c = cls;
    if (hop_header(key) || (c->drop_auth && strcasecmp(key, "Authorization") == 0))
        return MHD_YES;
    larder__text_add(&c->pr->head, key, strlen(key));
    larder__text_lit(&c->pr->head, ": ");
    larder__text_add(&c->pr->head, value ? value : "", value ? strlen(value) : 0);
    larder__text_lit(&c->pr->head, "\r\n");
    return MHD_YES;
}

struct larder__proxy_request *larder__proxy_request_new(struct larder__request *r,
                                                        const char *method, const char *target,
                                                        bool drop_auth)
{
    struct larder__proxy_request *pr = calloc(1, sizeof *pr);
    if (!pr)
        return NULL;
    pr->method = strdup(method);
    pr->target = strdup(target);
    struct collect c = {pr, drop_auth};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, collect_header, &c);
    pr->body = r->body;
    pr->body_len = r->body_len;
    pr->queue_ms = -1;
    if (!pr->method || !pr->target || pr->head.failed) {
        larder__proxy_request_free(pr);
        return NULL;
    }
    return pr;
}

void larder__proxy_request_set_queue_ms(struct larder__proxy_request *pr, double queue_ms)
{
    pr->queue_ms = queue_ms > 0 ? queue_ms : 0;
}

/* ---- the stream ------------------------------------------------------------------------ */

enum framing { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE };
enum chunk_state { CH_SIZE, CH_EXT, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF, CH_TRAILER,
                   CH_TRAILER_LF, CH_DONE };

struct stream {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;                  /* the pump, the MHD response */
    struct MHD_Connection *conn;
    int fd;
    int client_fd;             /* a duplicate of the client's socket, polled for a hang-up */
    char *buf;                 /* STREAM_BUF bytes: decoded body bytes for the client */
    size_t len;
    bool suspended, ended, failed, gone;
    bool reusable;             /* fd may carry another exchange once the body has ended */
    bool shut;                 /* fd was shut down (to wake the pump): never reused */
    struct larder__ext_run *run;
    larder_lease *lease;
    char *model;
    /* the child's framing */
    enum framing framing;
    uint64_t remaining;        /* BODY_LENGTH: bytes left; chunked: of this chunk */
    enum chunk_state ch;
    unsigned size_digits;
    bool trailer_empty;        /* the trailer line being read is empty so far */
    struct stream *prev, *next;
};

static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t streams_cond = PTHREAD_COND_INITIALIZER;
static struct stream *streams;
static unsigned n_streams;     /* streams whose lease is still held */

static void stream_unref(struct stream *s)
{
    pthread_mutex_lock(&s->lock);
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (!last)
        return;
    pthread_mutex_lock(&streams_lock);
    if (s->prev)
        s->prev->next = s->next;
    else if (streams == s)
        streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    pthread_mutex_unlock(&streams_lock);
    if (s->fd >= 0)
        close(s->fd);
    if (s->client_fd >= 0)
        close(s->client_fd);
    larder_release(s->lease);
    pthread_mutex_lock(&streams_lock);
    n_streams--;
    pthread_cond_broadcast(&streams_cond);
    pthread_mutex_unlock(&streams_lock);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s->buf);
    free(s->model);
    free(s);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    struct stream *s = cls;
    ssize_t n;
    pthread_mutex_lock(&s->lock);
    if (s->len) {
        size_t take = s->len < max ? s->len : max;
        memcpy(out, s->buf, take);
        memmove(s->buf, s->buf + take, s->len - take);
        s->len -= take;
        n = (ssize_t)take;
        pthread_cond_broadcast(&s->cond); /* room for the pump */
    } else if (s->failed) {
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (s->ended) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* Nothing yet: park the connection until the pump resumes it. */
        s->suspended = true;
        MHD_suspend_connection(s->conn);
        n = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* MHD is done with the response: the body was sent, or the client went away. */
static void stream_free(void *cls)
{
    struct stream *s = cls;
    pthread_mutex_lock(&s->lock);
    s->gone = true;
    if (s->fd >= 0 && !s->ended) {
        shutdown(s->fd, SHUT_RDWR); /* wakes the pump out of its poll */
        s->shut = true;
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    stream_unref(s);
}

/* Under s->lock: true when the caller must resume the connection (after unlocking). */
static bool wake_locked(struct stream *s)
{
    if (!s->suspended)
        return false;
    s->suspended = false;
    return true;
}

/* Decodes n raw bytes of a chunked body into out (room for n bytes); returns the payload
 * bytes written, or -1 on a framing error. *ret_used: the raw bytes that were the body's
 * (fewer than n when the body ended before them). */
static ssize_t dechunk(struct stream *s, const char *in, size_t n, char *out,
                       size_t *ret_used)
{
    size_t w = 0, i = 0;
    while (i < n && s->ch != CH_DONE) {
        char c = in[i];
        switch (s->ch) {
        case CH_SIZE: {
            int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (v >= 0) {
                if (++s->size_digits > 15)
                    return -1;
                s->remaining = s->remaining * 16 + (uint64_t)v;
            } else if (s->size_digits && (c == ';' || c == ' ' || c == '\t')) {
                s->ch = CH_EXT;
            } else if (s->size_digits && c == '\r') {
                s->ch = CH_SIZE_LF;
            } else {
                return -1;
            }
            i++;
            break;
        }
        case CH_EXT:
            if (c == '\r')
                s->ch = CH_SIZE_LF;
            i++;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                return -1;
            i++;
            s->ch = s->remaining ? CH_DATA : CH_TRAILER;
            s->trailer_empty = true;
            break;
        case CH_DATA: {
            size_t take = n - i < s->remaining ? n - i : (size_t)s->remaining;
            memcpy(out + w, in + i, take);
            w += take;
            i += take;
            if (!(s->remaining -= take))
                s->ch = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            if (c != '\r')
                return -1;
            s->ch = CH_DATA_LF;
            i++;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                return -1;
            s->ch = CH_SIZE;
            s->size_digits = 0;
            s->remaining = 0;
            i++;
            break;
        case CH_TRAILER: /* trailer fields are dropped */
            if (c == '\r')
                s->ch = CH_TRAILER_LF;
            else
                s->trailer_empty = false;
            i++;
            break;
        case CH_TRAILER_LF:
            if (c != '\n')
                return -1;
            s->ch = s->trailer_empty ? CH_DONE : CH_TRAILER;
            s->trailer_empty = true;
            i++;
            break;
        case CH_DONE:
            break;
        }
    }
    *ret_used = i;
    return (ssize_t)w;
}

/* Moves n raw bytes of the child's body into the client's buffer (s->lock held, room for
 * n bytes). */
static void take_body(struct stream *s, const char *in, size_t n)
{
    if (s->framing == BODY_CHUNKED) {
        size_t used = n;
        ssize_t w = dechunk(s, in, n, s->buf + s->len, &used);
        if (w < 0)
            s->failed = true;
        else
            s->len += (size_t)w;
        if (s->ch == CH_DONE)
            s->ended = true;
        if (used < n)
            s->reusable = false; /* bytes past the body's end: not an exchange to trust */
        return;
    }
    if (s->framing == BODY_LENGTH && n > s->remaining) {
        n = (size_t)s->remaining; /* bytes past the length are not the body's */
        s->reusable = false;
    }
    memcpy(s->buf + s->len, in, n);
    s->len += n;
    if (s->framing == BODY_LENGTH && !(s->remaining -= n))
        s->ended = true;
}

/* The pump: the child's body into the buffer, until its end, an error or the client's
 * going. Runs on the proxy thread once the reply is queued. */
static void pump(struct stream *s)
{
    char *in = malloc(IN_BUF);
    pthread_mutex_lock(&s->lock);
    if (!in)
        s->failed = true;
    while (!s->gone && !s->ended && !s->failed) {
        while (!s->gone && s->len == STREAM_BUF)
            pthread_cond_wait(&s->cond, &s->lock);
        if (s->gone)
            break;
        size_t room = STREAM_BUF - s->len;
        pthread_mutex_unlock(&s->lock);
        /* Waits for the child's bytes, or the client's hang-up: a connection parked in
         * stream_read does not see its client go, so the pump watches for it. */
        struct pollfd p[2] = {{.fd = s->fd, .events = POLLIN},
                              {.fd = s->client_fd, .events = POLLRDHUP}};
        int pr = poll(p, s->client_fd >= 0 ? 2 : 1, -1);
        bool hung_up = pr > 0 && s->client_fd >= 0 &&
                       (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR));
        ssize_t n = -1;
        int e = EINTR;
        if (pr > 0 && !hung_up && p[0].revents) {
            n = recv(s->fd, in, room < IN_BUF ? room : IN_BUF, MSG_DONTWAIT);
            e = n < 0 && errno == EAGAIN ? EINTR : errno;
        }
        pthread_mutex_lock(&s->lock);
        if (hung_up)
            s->failed = true;
        else if (n > 0)
            take_body(s, in, (size_t)n);
        else if (n == 0 && s->framing == BODY_CLOSE)
            s->ended = true;
        else if (n == 0 || e != EINTR)
            s->failed = true; /* the child closed before the body's end, or broke */
        bool resume = (s->len || s->ended || s->failed) && wake_locked(s);
        if (resume) {
            pthread_mutex_unlock(&s->lock);
            MHD_resume_connection(s->conn);
            pthread_mutex_lock(&s->lock);
        }
    }
    if (s->failed && !s->gone)
        larder__log(LARDER__LOG_WARN, "proxied body cut short",
                    json_pack("{s:s}", "model", s->model));
    /* A complete exchange on a kept-alive connection: the connection goes back to the
     * model's pool (the lease is still held: the model is still running). */
    int keep = -1;
    if (s->ended && !s->failed && s->reusable && !s->shut && s->fd >= 0) {
        keep = s->fd;
        s->fd = -1;
    }
    bool resume = wake_locked(s) && !s->gone;
    pthread_mutex_unlock(&s->lock);
    if (keep >= 0)
        larder__ext_conn_give(s->run, keep);
    if (resume)
        MHD_resume_connection(s->conn);
    free(in);
}

static void threads_stop(double until);

unsigned larder__proxy_close_all(int64_t timeout_ms)
{
    double until = larder__now() + (double)timeout_ms / 1000.0;
    pthread_mutex_lock(&streams_lock);
    for (struct stream *s = streams; s; s = s->next) {
        pthread_mutex_lock(&s->lock);
        if (!s->ended)
            s->failed = true;
        if (s->fd >= 0 && !s->ended) {
            shutdown(s->fd, SHUT_RDWR);
            s->shut = true;
        }
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
    }
    while (n_streams && larder__now() < until) {
        wait_a_little(&streams_cond, &streams_lock);
    }
    unsigned left = n_streams;
    pthread_mutex_unlock(&streams_lock);
    threads_stop(until);
    return left;
}

/* ---- one exchange ------------------------------------------------------------------------ */

struct exchange {
    struct larder__request *r;
    larder_lease *lease;
    struct larder__proxy_request *pr;
    int64_t timeout_ms;
    char *model;
    struct larder__ext_run *run;
    struct larder__text head;  /* the request head for the child; empty until built */
    int fd;                    /* a kept-alive connection taken early, or -1 */
    size_t sent;               /* bytes of head and body already sent on fd */
    struct exchange *next;     /* in the threads' queue */
};

static void exchange_free(struct exchange *x)
{
    if (x->fd >= 0)
        close(x->fd);
    larder__text_free(&x->head);
    larder__proxy_request_free(x->pr);
    free(x->model);
    free(x);
}

/* The request head for the child. */
static bool build_head(struct larder__text *t, const struct exchange *x, const char *host,
                       unsigned port, const char *prefix)
{
    const struct larder__proxy_request *pr = x->pr;
    larder__text_put(t, "%s %s%s HTTP/1.1\r\nHost: %s:%u\r\n", pr->method, prefix, pr->target,
                     host, port);
    if (pr->head.len)
        larder__text_add(t, pr->head.buf, pr->head.len);
    if (pr->body_len || (strcmp(pr->method, "GET") != 0 && strcmp(pr->method, "HEAD") != 0))
        larder__text_put(t, "Content-Length: %zu\r\n", pr->body_len);
    larder__text_put(t, "X-Larder-Model: %s\r\n\r\n", x->model);
    return !t->failed;
}

static void add_lease_headers(struct MHD_Response *resp, larder_lease *lease, double queue_ms)
{
    char buf[32];
    MHD_add_response_header(resp, "X-Larder-Served-By", larder_lease_served_by(lease));
    MHD_add_response_header(resp, "X-Larder-Cold-Start",
                            larder_lease_cold_start(lease) ? "true" : "false");
    snprintf(buf, sizeof buf, "%.3f", larder_lease_load_ms(lease));
    MHD_add_response_header(resp, "X-Larder-Load-Ms", buf);
    if (queue_ms >= 0) {
        snprintf(buf, sizeof buf, "%.3f", queue_ms);
        MHD_add_response_header(resp, "X-Larder-Queue-Ms", buf);
    }
}

/* The child's end-to-end headers onto resp. */
static void copy_headers(struct MHD_Response *resp, const struct head *h)
{
    for (size_t i = 0; i < h->n_lines; i++) {
        char *line = h->lines[i], *colon = strchr(line, ':');
        *colon = 0;
        const char *v = colon + 1 + strspn(colon + 1, " \t");
        if (!hop_header(line))
            MHD_add_response_header(resp, line, v);
        *colon = ':';
    }
}

static void reply_upstream_error(struct exchange *x, int e, const char *msg)
{
    struct larder__ext_run *run = larder__ext_of_lease(x->lease);
    char cause[768];
    if (run && larder__ext_dead(run, cause, sizeof cause))
        larder__reply_error(x->r, 502, "model_crashed", "model '%s': its server died: %s",
                            x->model, cause);
    else if (e == -ETIMEDOUT)
        larder__reply_error(x->r, 504, "upstream_timeout",
                            "model '%s': its server did not answer within %lld ms: %s",
                            x->model, (long long)x->timeout_ms, msg);
    else
        larder__reply_error(x->r, 502, "upstream_error", "model '%s': %s", x->model, msg);
}

static void exchange_run(struct exchange *x)
{
    struct larder__request *r = x->r;
    const char *host, *prefix;
    unsigned port;
    char err[512] = "";
    struct head h = {0};
    size_t len = 0, head_len = 0;
    double deadline = larder__now() + (double)x->timeout_ms / 1000.0;
    struct larder__ext_run *run = x->run;
    char *buf = malloc(HEAD_MAX);
    int fd = x->fd, e = 0;
    x->fd = -1;
    if (!run || !buf || !x->head.len) {
        larder__reply_error(r, 500, "internal", run ? "out of memory"
                                                    : "the lease holds no external model");
        goto fail;
    }
    larder__ext_target(run, &host, &port, &prefix);
    /* A kept-alive connection (taken, and written to, by larder__proxy_run); one the child
     * closed under us before answering a byte is replaced by a new one, once (the request
     * is in memory, so it can go again). */
    bool reused = fd >= 0;
    for (;;) {
        if (fd < 0 && (fd = larder__upstream_connect(host, port, deadline, err, sizeof err)) < 0) {
            reply_upstream_error(x, fd, err);
            goto fail;
        }
        e = send_rest(fd, x->head.buf, x->head.len, x->pr->body, x->pr->body_len, &x->sent,
                      true, deadline);
        if (e == 0)
            e = read_head(fd, buf, HEAD_MAX, &len, &head_len, deadline);
        bool stale = e == -ECONNRESET || e == -EPIPE;
        if (!reused || !stale || len)
            break;
        close(fd);
        fd = -1;
        x->sent = 0;
        reused = false;
    }
    if (e == 0 && !parse_head(buf, head_len, &h))
        e = -EPROTO;
    if (e < 0) {
        snprintf(err, sizeof err, "%s", e == -ETIMEDOUT ? "timed out"
                                        : e == -EPROTO   ? "the answer is not HTTP"
                                        : e == -E2BIG    ? "the response head is too large"
                                        : e == -ECONNRESET ? "the connection closed before "
                                                             "a response"
                                                           : strerror(-e));
        reply_upstream_error(x, e, err);
        goto fail;
    }
    struct stream *s = calloc(1, sizeof *s);
    bool no_body = strcmp(x->pr->method, "HEAD") == 0 || h.status < 200 || h.status == 204 ||
                   h.status == 304;
    if (!s || !(s->buf = malloc(STREAM_BUF)) || !(s->model = strdup(x->model))) {
        if (s)
            free(s->buf);
        free(s);
        larder__reply_error(r, 500, "internal", "out of memory");
        goto fail;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->refs = 2;
    s->conn = r->conn;
    s->fd = fd;
    bool answered = false;
    s->client_fd = larder__request_socket_dup(r, &answered);
    s->lease = x->lease;
    s->run = run;
    s->framing = no_body ? BODY_NONE : h.chunked ? BODY_CHUNKED
                 : h.has_length ? BODY_LENGTH : BODY_CLOSE;
    s->remaining = s->framing == BODY_LENGTH ? h.length : 0;
    s->ended = s->framing == BODY_NONE || (s->framing == BODY_LENGTH && !h.length);
    s->reusable = h.keep_alive && s->framing != BODY_CLOSE &&
                  (len == head_len || !s->ended);
    if (!s->ended && len > head_len) /* body bytes that came with the head */
        take_body(s, buf + head_len, len - head_len < STREAM_BUF ? len - head_len : STREAM_BUF);
    uint64_t size = s->framing == BODY_LENGTH ? h.length : no_body ? 0 : MHD_SIZE_UNKNOWN;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(size, 16 << 10, stream_read, s, stream_free);
    if (!resp) {
        s->refs = 1;
        s->fd = -1;
        if (s->client_fd >= 0)
            close(s->client_fd);
        s->client_fd = -1;
        s->lease = NULL;
        pthread_mutex_lock(&streams_lock);
        n_streams++;
        pthread_mutex_unlock(&streams_lock);
        stream_unref(s);
        larder__reply_error(r, 500, "internal", "out of memory");
        goto fail;
    }
    copy_headers(resp, &h);
    add_lease_headers(resp, x->lease, x->pr->queue_ms);
    pthread_mutex_lock(&streams_lock);
    s->next = streams;
    if (streams)
        streams->prev = s;
    streams = s;
    n_streams++;
    pthread_mutex_unlock(&streams_lock);
    larder__reply_response(r, (unsigned)h.status, resp);
    head_free(&h);
    free(buf);
    exchange_free(x);
    larder__request_resume(r);
    pump(s);
    stream_unref(s);
    return;
fail:
    if (fd >= 0)
        close(fd);
    head_free(&h);
    free(buf);
    larder_release(x->lease);
    exchange_free(x);
    larder__request_resume(r);
}

/* ---- the proxy's threads ------------------------------------------------------------------
 *
 * An exchange holds its thread until the child's body has ended (a stream of events may
 * last minutes), so the threads are elastic: an exchange goes to an idle thread when there
 * is one, else a new thread starts, up to THREADS_MAX; a thread idle for IDLE_MS ends.
 * Warm traffic thus runs on threads that already exist. */

#define THREADS_MAX 512
#define IDLE_MS 30000

static pthread_mutex_t threads_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t threads_cond = PTHREAD_COND_INITIALIZER;  /* work, or the end */
static pthread_cond_t threads_gone = PTHREAD_COND_INITIALIZER;  /* a thread ended */
static struct exchange *queue_head, *queue_tail;
static unsigned n_threads, n_idle, n_queued;
static bool threads_stopping;

static void *thread_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&threads_lock);
    for (;;) {
        while (!queue_head && !threads_stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += IDLE_MS / 1000;
            n_idle++;
            int w = pthread_cond_timedwait(&threads_cond, &threads_lock, &ts);
            n_idle--;
            if (w == ETIMEDOUT && !queue_head)
                goto out;
        }
        struct exchange *x = queue_head;
        if (!x)
            break; /* stopping */
        if (!(queue_head = x->next))
            queue_tail = NULL;
        n_queued--;
        pthread_mutex_unlock(&threads_lock);
        exchange_run(x);
        pthread_mutex_lock(&threads_lock);
    }
out:
    n_threads--;
    pthread_cond_broadcast(&threads_gone);
    pthread_mutex_unlock(&threads_lock);
    return NULL;
}

/* Queues x for a thread: 0, or an errno (EAGAIN at the bound, ESHUTDOWN at the end). */
static int submit(struct exchange *x)
{
    int e = 0;
    pthread_mutex_lock(&threads_lock);
    if (threads_stopping) {
        e = ESHUTDOWN;
    } else if (n_idle <= n_queued) {
        pthread_attr_t attr;
        pthread_t tid;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 << 10);
        e = n_threads >= THREADS_MAX ? EAGAIN : pthread_create(&tid, &attr, thread_main, NULL);
        pthread_attr_destroy(&attr);
        if (e == 0) {
            pthread_setname_np(tid, "larder-proxy");
            n_threads++;
        }
    }
    if (e == 0) {
        x->next = NULL;
        if (queue_tail)
            queue_tail->next = x;
        else
            queue_head = x;
        queue_tail = x;
        n_queued++;
        pthread_cond_signal(&threads_cond);
    }
    pthread_mutex_unlock(&threads_lock);
    return e;
}

/* Ends the idle threads (the others end when their exchange does) and waits for them,
 * up to until (monotonic seconds); the queue is empty by then (the HTTP server takes no
 * more requests). */
static void threads_stop(double until)
{
    pthread_mutex_lock(&threads_lock);
    threads_stopping = true;
    pthread_cond_broadcast(&threads_cond);
    while (n_threads && larder__now() < until) {
        wait_a_little(&threads_gone, &threads_lock);
    }
    pthread_mutex_unlock(&threads_lock);
}

void larder__proxy_run(struct larder__request *r, larder_lease *lease,
                       struct larder__proxy_request *pr, int64_t timeout_ms)
{
    struct exchange *x = calloc(1, sizeof *x);
    const char *name = larder_lease_served_by(lease);
    if (!x || !(x->model = strdup(name ? name : "?"))) {
        free(x);
        larder__reply_error(r, 500, "internal", "out of memory");
        goto fail;
    }
    x->r = r;
    x->lease = lease;
    x->pr = pr;
    x->timeout_ms = timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS;
    x->fd = -1;
    /* On a kept-alive connection the request goes out from here, without waiting: the
     * child works on it while a proxy thread takes the exchange over. */
    if ((x->run = larder__ext_of_lease(lease))) {
        const char *host, *prefix;
        unsigned port;
        larder__ext_target(x->run, &host, &port, &prefix);
        if (!build_head(&x->head, x, host, port, prefix))
            larder__text_free(&x->head); /* the thread answers 500 */
        else if ((x->fd = larder__ext_conn_take(x->run)) >= 0 &&
                 send_rest(x->fd, x->head.buf, x->head.len, pr->body, pr->body_len, &x->sent,
                           false, 0) < 0) {
            close(x->fd); /* the thread reconnects */
            x->fd = -1;
            x->sent = 0;
        }
    }
    int e = submit(x);
    if (e == 0)
        return;
    x->pr = NULL; /* freed below */
    x->lease = NULL;
    exchange_free(x);
    if (e == ESHUTDOWN)
        larder__reply_error(r, 503, "shutting_down", "larderd is stopping");
    else
        larder__reply_error(r, 503, "busy", "cannot start the proxy: %s", strerror(e));
    larder__reply_header(r, "Retry-After", "1");
fail:
    larder__proxy_request_free(pr);
    larder_release(lease);
    larder__request_resume(r);
}

/* ---- the route ------------------------------------------------------------------------- */

struct proxy_job {
    struct larder__request *r;
    struct larder__proxy_request *pr;
    char *name;
    int64_t timeout_ms;        /* the response head's */
};

static void on_proxy_lease(void *ud, int err, larder_lease *lease)
{
    struct proxy_job *j = ud;
    struct larder__request *r = j->r;
    if (err < 0) {
        larder__reply_acquire_error(r, j->name, err);
        larder__proxy_request_free(j->pr);
        larder__request_resume(r);
    } else if (!larder__ext_of_lease(lease)) {
        larder__reply_error(r, 502, "not_external",
                            "model '%s' was served by '%s', which is not an external model: "
                            "only an external model has a proxy route", j->name,
                            larder_lease_served_by(lease));
        larder_release(lease);
        larder__proxy_request_free(j->pr);
        larder__request_resume(r);
    } else {
        larder__proxy_run(r, lease, j->pr, j->timeout_ms);
    }
    free(j->name);
    free(j);
}

void larder__route_proxy(struct larder__request *r, const char *name)
{
    if (!larder__require_token(r, false))
        return;
    struct larder__daemon *d = r->d;
    pthread_rwlock_rdlock(&d->conf_lock);
    const struct larder__model_conf *m = larder__config_model(d->conf, name);
    bool external = m && m->isolation == LARDER__ISOLATION_EXTERNAL;
    int64_t timeout = !m ? 0 : m->timeout_ms ? m->timeout_ms : d->conf->request_timeout_ms;
    int64_t head_timeout = m && m->infer_timeout_ms ? m->infer_timeout_ms : timeout;
    bool drop_auth = d->infer != NULL;
    pthread_rwlock_unlock(&d->conf_lock);
    if (!m) {
        larder__reply_error(r, 404, "model_not_found", "no model named '%s'", name);
        return;
    }
    if (!external) {
        larder__reply_error(r, 404, "not_external",
                            "model '%s' is not an external model: only those have a proxy "
                            "route", name);
        return;
    }
    /* The path after /proxy as the client sent it, %-escapes and query untouched. */
    const char *t = r->target ? r->target : "";
    while (*t == '/')
        t++;
    size_t nl = strlen(name);
    if (strncmp(t, "v1/models/", 10) != 0 || strncmp(t + 10, name, nl) != 0 ||
        strncmp(t + 10 + nl, "/proxy", 6) != 0) {
        larder__reply_error(r, 400, "bad_path", "write the proxy path as "
                            "/v1/models/%s/proxy/PATH, without escapes in its first part", name);
        return;
    }
    const char *rest = t + 10 + nl + 6;
    char *target = NULL;
    if (asprintf(&target, "%s%s", *rest == '/' ? "" : "/", rest) < 0)
        target = NULL;
    struct proxy_job *j = calloc(1, sizeof *j);
    if (j && target)
        j->pr = larder__proxy_request_new(r, r->method, target, drop_auth);
    free(target);
    if (!j || !j->pr || !(j->name = strdup(name))) {
        if (j)
            larder__proxy_request_free(j->pr);
        free(j);
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    j->r = r;
    j->timeout_ms = head_timeout;
    larder__request_suspend(r);
    larder *mgr = larder__mgr_get(d);
    int e = mgr ? larder_acquire_async(mgr, name, timeout, on_proxy_lease, j) : LARDER_ECLOSED;
    if (mgr)
        larder__mgr_put(d);
    if (e < 0) /* on_proxy_lease is not called */
        on_proxy_lease(j, e, NULL);
}
