/* larderd events: log lines, server-sent events and counters (see events.h). */
#include "events.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "advice.h"
#include "log.h"

#define SSE_SOCKET_BUFFER (64 * 1024)

const double larder__load_buckets[LARDER__LOAD_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
};

struct client {
    pthread_mutex_t lock;
    struct MHD_Connection *conn;
    int fd;               /* its socket, -1 when unknown */
    struct larder__events *hub;
    char *buf;            /* queued bytes, buf[0..len) */
    size_t len;
    bool suspended;       /* we suspended the connection and nobody resumed it yet */
    bool ended;           /* end the stream normally */
    bool dropped;         /* too slow: end the stream with an error */
    bool gone;            /* its connection hung up: end the stream */
    struct client *next;
};

struct larder__events {
    pthread_mutex_t lock; /* clients list, counters, closing */
    struct client *clients;
    bool closing;
    size_t queue_bytes;
    struct larder__event_counts counts;
    struct larder__advice *advice;
};

static const char *const type_names[] = {
    [LARDER_EVENT_LOAD_START] = "load_start", [LARDER_EVENT_LOAD_DONE] = "load_done",
    [LARDER_EVENT_LOAD_FAIL] = "load_fail",   [LARDER_EVENT_EVICT] = "evict",
    [LARDER_EVENT_UNLOAD] = "unload",         [LARDER_EVENT_INSTANCE_NEW] = "instance_new",
    [LARDER_EVENT_INSTANCE_FREE] = "instance_free",
    [LARDER_EVENT_PRESSURE] = "pressure",     [LARDER_EVENT_FALLBACK] = "fallback",
};

static const char *const reason_names[] = {
    [LARDER_REASON_NONE] = "none",         [LARDER_REASON_BUDGET] = "budget",
    [LARDER_REASON_TTL] = "ttl",           [LARDER_REASON_REQUEST] = "request",
    [LARDER_REASON_TRIM] = "trim",         [LARDER_REASON_PRESSURE] = "pressure",
    [LARDER_REASON_CLOSE] = "close",       [LARDER_REASON_OVERSIZE] = "oversize",
};

const char *larder__event_type_name(enum larder_event_type t)
{
    if ((unsigned)t < sizeof type_names / sizeof type_names[0] && type_names[t])
        return type_names[t];
    return "unknown";
}

const char *larder__reason_name(enum larder_evict_reason r)
{
    if ((unsigned)r < sizeof reason_names / sizeof reason_names[0] && reason_names[r])
        return reason_names[r];
    return "unknown";
}

int larder__events_new(size_t queue_bytes, struct larder__events **ret_events)
{
    struct larder__events *h = calloc(1, sizeof *h);
    if (!h || larder__advice_new(&h->advice) < 0) {
        free(h);
        return -ENOMEM;
    }
    h->queue_bytes = queue_bytes;
    pthread_mutex_init(&h->lock, NULL);
    *ret_events = h;
    return 0;
}

struct larder__events *larder__events_free(struct larder__events *h)
{
    if (!h)
        return NULL;
    larder__events_close(h);
    /* Clients still listed belong to responses MHD has not destroyed; they unlink
     * themselves, so by now (MHD stopped) the list is empty. */
    pthread_mutex_destroy(&h->lock);
    larder__advice_free(h->advice);
    free(h);
    return NULL;
}

/* ---- queueing to clients ------------------------------------------------------------ */

/* Appends to one client (n == 0: nothing) and says whether its connection must be
 * resumed. */
static bool client_push(struct larder__events *h, struct client *c, const char *s, size_t n,
                        bool end)
{
    bool resume = false;
    pthread_mutex_lock(&c->lock);
    if (end)
        c->ended = true;
    if (n && !c->ended && !c->dropped) {
        /* One event larger than the whole queue still goes to a client that is keeping up. */
        bool fits = c->len == 0 || c->len + n <= h->queue_bytes;
        char *nb = fits ? realloc(c->buf, c->len + n) : NULL;
        if (nb) {
            memcpy(nb + c->len, s, n);
            c->buf = nb;
            c->len += n;
        } else {
            c->dropped = true;
            h->counts.sse_dropped++;
        }
    }
    if (c->suspended && (c->len || c->ended || c->dropped)) {
        c->suspended = false;
        resume = true;
    }
    pthread_mutex_unlock(&c->lock);
    return resume;
}

/* Queues s to every client, then resumes the connections that were waiting. A suspended
 * connection cannot go away before it is resumed, so resuming after the locks are
 * released is safe. */
static void for_clients(struct larder__events *h, const char *s, size_t n, bool end)
{
    size_t count = 0, nr = 0;
    pthread_mutex_lock(&h->lock);
    for (struct client *c = h->clients; c; c = c->next)
        count++;
    struct MHD_Connection **resume = count ? malloc(count * sizeof *resume) : NULL;
    for (struct client *c = h->clients; c && (resume || !count); c = c->next)
        if (client_push(h, c, s, n, end))
            resume[nr++] = c->conn;
    pthread_mutex_unlock(&h->lock);
    for (size_t i = 0; i < nr; i++)
        MHD_resume_connection(resume[i]);
    free(resume);
}

static void broadcast(struct larder__events *h, const char *type, json_t *data)
{
    char *js = json_dumps(data, JSON_COMPACT | JSON_REAL_PRECISION(6));
    char *msg = NULL;
    int n = js ? asprintf(&msg, "event: %s\ndata: %s\n\n", type, js) : -1;
    free(js);
    if (n > 0)
        for_clients(h, msg, (size_t)n, false);
    free(msg);
}

/* ---- library events ------------------------------------------------------------------ */

static void count_event(struct larder__events *h, const struct larder_event *ev)
{
    pthread_mutex_lock(&h->lock);
    if ((unsigned)ev->type <= LARDER_EVENT_FALLBACK)
        h->counts.by_type[ev->type]++;
    if (ev->type == LARDER_EVENT_EVICT && (unsigned)ev->reason <= LARDER_REASON_OVERSIZE)
        h->counts.evict_by_reason[ev->reason]++;
    if (ev->type == LARDER_EVENT_LOAD_DONE) {
        double s = ev->load_ms / 1000.0;
        size_t b = 0;
        while (b < LARDER__LOAD_BUCKETS && s > larder__load_buckets[b])
            b++;
        h->counts.load_buckets[b]++;
        h->counts.load_seconds_sum += s;
    }
    pthread_mutex_unlock(&h->lock);
}

static json_t *event_json(const struct larder_event *ev)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(larder__event_type_name(ev->type)));
    if (ev->name)
        json_object_set_new(o, "name", json_string(ev->name));
    if (ev->type == LARDER_EVENT_EVICT || ev->type == LARDER_EVENT_UNLOAD)
        json_object_set_new(o, "reason", json_string(larder__reason_name(ev->reason)));
    if (ev->type == LARDER_EVENT_LOAD_FAIL) {
        json_object_set_new(o, "error", json_string(larder_strerror(ev->error)));
        json_object_set_new(o, "error_code", json_integer(ev->error));
    }
    if (ev->message)
        json_object_set_new(o, "message", json_string(ev->message));
    if (ev->bytes)
        json_object_set_new(o, "bytes", json_integer((json_int_t)ev->bytes));
    if (ev->type == LARDER_EVENT_UNLOAD)
        json_object_set_new(o, "bytes_returned", json_integer(ev->bytes_returned));
    if (ev->type == LARDER_EVENT_LOAD_DONE || ev->type == LARDER_EVENT_LOAD_FAIL)
        json_object_set_new(o, "load_ms", json_real(ev->load_ms));
    if (ev->detail)
        json_object_set_new(o, ev->type == LARDER_EVENT_FALLBACK ? "served_by" : "detail",
                            json_string(ev->detail));
    return o;
}

void larder__events_on_event(void *ud, const struct larder_event *ev)
{
    struct larder__events *h = ud;
    count_event(h, ev);
    larder__advice_record(h->advice, ev);
    json_t *o = event_json(ev);
    if (!o)
        return;
    broadcast(h, larder__event_type_name(ev->type), o);
    enum larder__log_level level =
        ev->type == LARDER_EVENT_LOAD_FAIL   ? LARDER__LOG_WARN
        : ev->type == LARDER_EVENT_PRESSURE  ? LARDER__LOG_WARN
        : ev->type == LARDER_EVENT_INSTANCE_NEW || ev->type == LARDER_EVENT_INSTANCE_FREE
            ? LARDER__LOG_DEBUG
            : LARDER__LOG_INFO;
    json_object_del(o, "type");
    char msg[32];
    snprintf(msg, sizeof msg, "event %s", larder__event_type_name(ev->type));
    larder__log(level, msg, o);
}

void larder__events_publish(struct larder__events *h, const char *type, json_t *data)
{
    if (!data)
        return;
    json_object_set_new(data, "type", json_string(type));
    broadcast(h, type, data);
    json_decref(data);
}

void larder__events_ping(struct larder__events *h)
{
    static const char ping[] = ": ping\n\n";
    for_clients(h, ping, sizeof ping - 1, false);
}

void larder__events_reap(struct larder__events *h)
{
    size_t n = 0, k = 0, nr = 0;
    pthread_mutex_lock(&h->lock);
    for (struct client *c = h->clients; c; c = c->next)
        n++;
    struct pollfd *fds = n ? calloc(n, sizeof *fds) : NULL;
    struct client **waiting = n ? calloc(n, sizeof *waiting) : NULL;
    struct MHD_Connection **resume = n ? calloc(n, sizeof *resume) : NULL;
    /* A suspended stream is resumed only under h->lock, and MHD does not close it while
     * it is suspended: its socket stays its own while this holds the lock. */
    for (struct client *c = h->clients; c && fds && waiting && resume; c = c->next) {
        pthread_mutex_lock(&c->lock);
        if (c->suspended && c->fd >= 0 && !c->gone) {
            fds[k] = (struct pollfd){.fd = c->fd, .events = POLLRDHUP};
            waiting[k++] = c;
        }
        pthread_mutex_unlock(&c->lock);
    }
    if (k && poll(fds, k, 0) > 0) {
        for (size_t i = 0; i < k; i++) {
            if (!(fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
                continue;
            struct client *c = waiting[i];
            pthread_mutex_lock(&c->lock);
            c->gone = true;
            c->suspended = false;
            resume[nr++] = c->conn;
            pthread_mutex_unlock(&c->lock);
        }
    }
    pthread_mutex_unlock(&h->lock);
    /* As in for_clients: still suspended, so still there, and no one else resumes them. */
    for (size_t i = 0; i < nr; i++)
        MHD_resume_connection(resume[i]);
    free(fds);
    free(waiting);
    free(resume);
}

void larder__events_close(struct larder__events *h)
{
    pthread_mutex_lock(&h->lock);
    h->closing = true;
    pthread_mutex_unlock(&h->lock);
    for_clients(h, "", 0, true);
}

struct larder__advice *larder__events_advice(struct larder__events *h)
{
    return h->advice;
}

unsigned larder__events_clients(struct larder__events *h)
{
    unsigned n = 0;
    pthread_mutex_lock(&h->lock);
    for (struct client *c = h->clients; c; c = c->next)
        n++;
    pthread_mutex_unlock(&h->lock);
    return n;
}

void larder__events_counts(struct larder__events *h, struct larder__event_counts *ret)
{
    pthread_mutex_lock(&h->lock);
    *ret = h->counts;
    pthread_mutex_unlock(&h->lock);
}

/* ---- the streaming response ----------------------------------------------------------- */

static ssize_t client_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct client *c = cls;
    ssize_t n;
    pthread_mutex_lock(&c->lock);
    if (c->dropped || c->gone) {
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (c->len) {
        size_t take = c->len < max ? c->len : max;
        memcpy(buf, c->buf, take);
        memmove(c->buf, c->buf + take, c->len - take);
        c->len -= take;
        n = (ssize_t)take;
    } else if (c->ended) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* Nothing to send: park the connection until client_push resumes it. */
        c->suspended = true;
        MHD_suspend_connection(c->conn);
        n = 0;
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}

static void client_free(void *cls)
{
    struct client *c = cls;
    struct larder__events *h = c->hub;
    pthread_mutex_lock(&h->lock);
    for (struct client **pp = &h->clients; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    pthread_mutex_unlock(&h->lock);
    pthread_mutex_destroy(&c->lock);
    free(c->buf);
    free(c);
}

struct MHD_Response *larder__events_response(struct larder__events *h,
                                             struct MHD_Connection *conn)
{
    static const char hello[] = ": larder events\n\n";
    struct client *c = calloc(1, sizeof *c);
    if (!c || !(c->buf = malloc(sizeof hello - 1))) {
        free(c);
        return NULL;
    }
    memcpy(c->buf, hello, sizeof hello - 1);
    c->len = sizeof hello - 1;
    c->conn = conn;
    c->fd = -1;
    c->hub = h;
    pthread_mutex_init(&c->lock, NULL);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, client_read, c, client_free);
    if (!resp) {
        pthread_mutex_destroy(&c->lock);
        free(c->buf);
        free(c);
        return NULL;
    }
    pthread_mutex_lock(&h->lock);
    bool closing = h->closing;
    if (!closing) {
        c->next = h->clients;
        h->clients = c;
        h->counts.sse_clients++;
    }
    pthread_mutex_unlock(&h->lock);
    if (closing) {
        MHD_destroy_response(resp); /* calls client_free, which finds nothing to unlink */
        return NULL;
    }
    /* Bound what the kernel buffers for this client too (it would grow to megabytes),
     * so that the queue limit is what decides when a client is too slow. */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    int sndbuf = SSE_SOCKET_BUFFER;
    if (ci)
        setsockopt(ci->connect_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    pthread_mutex_lock(&c->lock);
    c->fd = ci ? ci->connect_fd : -1;
    pthread_mutex_unlock(&c->lock);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    return resp;
}
