/* larderd streamed replies (see stream.h). */
#include "stream.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define WAIT_SLICE_MS 50

struct larder__stream {
    pthread_mutex_t lock;
    pthread_cond_t room;        /* signalled when the client took bytes or went away */
    struct MHD_Connection *conn;
    char *buf;                  /* queued bytes, buf[0..len) */
    size_t len, cap;
    double last_read;           /* monotonic seconds: the client last took bytes */
    bool suspended;             /* the response suspended the connection: nothing queued */
    bool ended;                 /* the producer is done */
    bool gone;                  /* the client went away, or the server stops */
    bool stopping;              /* larder__streams_stop: pushes fail, the end still goes */
    int refs;                   /* the producer's and the response's */
    struct larder__stream *prev, *next;
};

static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static struct larder__stream *all;
static bool closing, stopping;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void stream_unref(struct larder__stream *s)
{
    pthread_mutex_lock(&s->lock);
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (!last)
        return;
    pthread_cond_destroy(&s->room);
    pthread_mutex_destroy(&s->lock);
    free(s->buf);
    free(s);
}

/* MHD's reader: hands out what is queued; parks the connection when nothing is. */
static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    struct larder__stream *s = cls;
    ssize_t n;
    pthread_mutex_lock(&s->lock);
    if (s->gone) {
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (s->len) {
        size_t take = s->len < max ? s->len : max;
        memcpy(out, s->buf, take);
        memmove(s->buf, s->buf + take, s->len - take);
        s->len -= take;
        s->last_read = mono();
        pthread_cond_signal(&s->room);
        n = (ssize_t)take;
    } else if (s->ended) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        s->suspended = true;
        MHD_suspend_connection(s->conn);
        n = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* The response is destroyed: its connection has finished or gone. */
static void stream_response_free(void *cls)
{
    struct larder__stream *s = cls;
    pthread_mutex_lock(&all_lock);
    if (s->prev)
        s->prev->next = s->next;
    else if (all == s)
        all = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    pthread_mutex_unlock(&all_lock);
    pthread_mutex_lock(&s->lock);
    s->gone = true;
    pthread_cond_signal(&s->room);
    pthread_mutex_unlock(&s->lock);
    stream_unref(s);
}

struct larder__stream *larder__stream_new(struct MHD_Connection *conn, const char *content_type,
                                          struct MHD_Response **ret_resp)
{
    *ret_resp = NULL;
    struct larder__stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->room, &ca);
    pthread_condattr_destroy(&ca);
    s->conn = conn;
    s->refs = 2;
    s->last_read = mono();
    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, 4096, stream_read, s, stream_response_free);
    if (!resp) {
        pthread_cond_destroy(&s->room);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
    }
    pthread_mutex_lock(&all_lock);
    bool refused = closing || stopping;
    if (!refused) {
        s->next = all;
        if (all)
            all->prev = s;
        all = s;
    }
    pthread_mutex_unlock(&all_lock);
    if (refused) {
        MHD_destroy_response(resp); /* the response's reference */
        stream_unref(s);            /* the producer's */
        return NULL;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    /* The kernel's buffer for this client is bounded too, so that the queue is what
     * decides when a client is slow. */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    int sndbuf = (int)LARDER__STREAM_QUEUE;
    if (ci)
        setsockopt(ci->connect_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    *ret_resp = resp;
    return s;
}

static void abs_after(int ms, struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_nsec += (long)ms * 1000000L;
    while (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Appends n bytes, waiting for room; last: the stream's end, which a stopped stream still
 * takes (without waiting), and which ends it. */
static int push(struct larder__stream *s, const char *bytes, size_t n, bool (*alive)(void *ud),
                void *ud, bool last)
{
    bool resume = false;
    int r = 0;
    pthread_mutex_lock(&s->lock);
    /* A piece larger than the whole queue still goes to a client that has taken the rest. */
    while (!s->gone && !s->stopping && s->len && s->len + n > LARDER__STREAM_QUEUE) {
        if (mono() - s->last_read > LARDER__STREAM_STALL_S) {
            s->gone = true;
            break;
        }
        struct timespec ts;
        abs_after(WAIT_SLICE_MS, &ts);
        pthread_cond_timedwait(&s->room, &s->lock, &ts);
        if (alive && !s->gone && !s->stopping) {
            pthread_mutex_unlock(&s->lock);
            bool ok = alive(ud);
            pthread_mutex_lock(&s->lock);
            if (!ok)
                s->gone = true;
        }
    }
    if (s->gone || (s->stopping && !last)) {
        r = -1;
    } else if (n) {
        if (s->len + n > s->cap) {
            size_t cap = s->cap ? s->cap : 4096;
            while (cap < s->len + n)
                cap *= 2;
            char *nb = realloc(s->buf, cap);
            if (nb) {
                s->buf = nb;
                s->cap = cap;
            }
        }
        if (s->len + n <= s->cap) {
            memcpy(s->buf + s->len, bytes, n);
            s->len += n;
        } else {
            r = -1;
        }
    }
    if (last)
        s->ended = true;
    if (!s->gone && s->suspended && (s->len || last)) {
        s->suspended = false;
        resume = true;
    }
    pthread_mutex_unlock(&s->lock);
    /* Still suspended until this call, so the connection is still there. */
    if (resume)
        MHD_resume_connection(s->conn);
    return r;
}

int larder__stream_push(struct larder__stream *s, const char *bytes, size_t n,
                        bool (*alive)(void *ud), void *ud)
{
    return push(s, bytes, n, alive, ud, false);
}

bool larder__stream_gone(struct larder__stream *s)
{
    pthread_mutex_lock(&s->lock);
    bool gone = s->gone;
    pthread_mutex_unlock(&s->lock);
    return gone;
}

bool larder__stream_stopping(struct larder__stream *s)
{
    pthread_mutex_lock(&s->lock);
    bool stopped = s->stopping;
    pthread_mutex_unlock(&s->lock);
    return stopped;
}

void larder__stream_end(struct larder__stream *s, const char *bytes, size_t n)
{
    push(s, bytes, n, NULL, NULL, true);
    stream_unref(s);
}

unsigned larder__streams_stop(void)
{
    unsigned n = 0;
    pthread_mutex_lock(&all_lock);
    stopping = true;
    for (struct larder__stream *s = all; s; s = s->next) {
        pthread_mutex_lock(&s->lock);
        if (!s->ended && !s->gone) {
            s->stopping = true;
            pthread_cond_signal(&s->room);
            n++;
        }
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&all_lock);
    return n;
}

void larder__streams_close(void)
{
    size_t n = 0, k = 0;
    pthread_mutex_lock(&all_lock);
    closing = true;
    for (struct larder__stream *s = all; s; s = s->next)
        n++;
    struct MHD_Connection **resume = n ? calloc(n, sizeof *resume) : NULL;
    for (struct larder__stream *s = all; s; s = s->next) {
        pthread_mutex_lock(&s->lock);
        s->gone = true;
        pthread_cond_signal(&s->room);
        if (s->suspended) {
            s->suspended = false;
            if (resume)
                resume[k++] = s->conn;
            else /* MHD's resume only marks the connection: safe under the locks */
                MHD_resume_connection(s->conn);
        }
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&all_lock);
    for (size_t i = 0; i < k; i++)
        MHD_resume_connection(resume[i]);
    free(resume);
}

void larder__streams_open(void)
{
    pthread_mutex_lock(&all_lock);
    closing = stopping = false;
    pthread_mutex_unlock(&all_lock);
}
