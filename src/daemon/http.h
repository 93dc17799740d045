/* larderd HTTP server (libmicrohttpd): request bodies, routing, replies, suspension.
 *
 * Every request gets a struct larder__request. A route either replies at once
 * (larder__reply_*) or suspends the request, hands work to another thread, sets the
 * reply there and resumes it; the reply is queued when MHD calls back. A request is
 * freed (and its log line written) when MHD reports it completed.
 *
 * Threads: routes run on HTTP threads. Once a request is suspended, exactly one other
 * thread owns it until it calls larder__request_resume().
 */
#ifndef LARDER_DAEMON_HTTP_H
#define LARDER_DAEMON_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "daemon.h"


struct larder__http;
struct larder__conn;

/* The shape of a request's error replies: larder's {"error":{"code","message"}}, OpenAI's
 * {"error":{"message","type","code","param"}} or Ollama's {"error":"message"}. */
enum larder__error_style {
    LARDER__ERRORS_LARDER = 0,
    LARDER__ERRORS_OPENAI,
    LARDER__ERRORS_OLLAMA,
};

struct larder__request {
    struct larder__daemon *d;
    struct larder__http *http;
    struct MHD_Connection *conn;
    struct larder__conn *cs;    /* the connection's limits and deadlines; may be NULL */
    const char *method;
    const char *url;
    char *target;               /* the request target as sent, query included, not decoded */
    const char *content_type;   /* NULL when the request has none */
    char *body;                 /* NUL-terminated copy of the body; NULL when empty */
    size_t body_len;
    size_t body_cap;
    uint64_t discarded;         /* body bytes dropped past max_body */
    bool too_big;
    bool started;               /* its headers are complete: the access handler saw it */
    bool bad_path;              /* a control byte in the path, or a NUL in the query */
    bool no_memory;             /* its body would take request_memory past its limit */
    uint64_t reserved;          /* bytes of request_memory it holds */
    uint64_t memory_limit;      /* request_memory when it started */
    double body_deadline;       /* monotonic seconds: its body must be complete by then */
    bool suspended;
    bool inflight;              /* counted in the daemon's inflight until completed */
    bool dispatched;
    double t_start;             /* monotonic seconds, headers received */
    double t_body;              /* body complete */
    const char *route;          /* route pattern, for logs and metrics */
    /* the reply */
    struct MHD_Response *resp;
    unsigned status;
    size_t resp_bytes;
    const char *error_code;     /* for the log line */
    char *model;                /* the model named in the path, for the log line */
    enum larder__error_style error_style; /* the shape of its error replies */
    /* While suspended (the end of http.c): owned by another thread, or taken back by the
     * shutdown, which then answers it itself. */
    bool owned;                 /* handed to an owner: its replies are set under a lock */
    bool taken;                 /* answered by the shutdown; the owner's replies are dropped */
    atomic_int refs;            /* once owned: MHD's completion and the owner */
    struct larder__request *own_prev, *own_next;
};

/* The requests owned by other threads (inside struct larder__http). */
struct larder__owned {
    pthread_mutex_t lock;
    struct larder__request *head; /* owned, not yet resumed nor taken */
    unsigned owners;            /* owners that have not called larder__request_resume yet */
    bool closing;               /* answer_all ran: later suspensions are answered at once */
};

struct larder__http_counts {
    uint64_t by_status[6];      /* 1xx .. 5xx at [1..5] */
    uint64_t duration_buckets[13]; /* see larder__http_buckets, plus +Inf */
    double duration_sum;
    uint64_t total;
};
extern const double larder__http_buckets[12];

/* Starts listening on host:port with `threads` polling threads (0 = automatic).
 * Errors: negative errno, message in err. */
int larder__http_start(struct larder__daemon *d, const char *host, unsigned port,
                       unsigned threads, struct larder__http **ret_http, char *err,
                       size_t errlen);

/* Stops accepting new connections (existing ones go on). Idempotent. */
void larder__http_quiesce(struct larder__http *h);

/* Answers every request still suspended with 503 `shutting_down` (larder's error shape,
 * Retry-After, Connection: close) and resumes it; a request suspended from now on is
 * answered the same way at once. Owners still running (an inference inside a backend
 * call) find their request answered when they finish: their replies are dropped, and
 * larder__request_resume only gives the request back. Returns how many it answered.
 * Any thread; accepts NULL. */
unsigned larder__http_answer_all(struct larder__http *h);

/* Owners that have not given their request back yet (larder__request_resume). */
unsigned larder__http_owners(struct larder__http *h);

/* Stops the server, answering first (larder__http_answer_all) whatever is still
 * suspended: MHD must never stop with a suspended connection. While owners are still
 * out (larder__http_owners) the server's memory is left to the process's exit, since
 * they take its lock when they return. Accepts NULL; returns NULL. */
struct larder__http *larder__http_stop(struct larder__http *h);

/* The bound port (useful with port 0). */
unsigned larder__http_port(struct larder__http *h);

/* A copy of the request counters. */
void larder__http_counts(struct larder__http *h, struct larder__http_counts *ret);

/* Body bytes buffered for requests in flight ([server] request_memory). */
struct larder__request_memory {
    uint64_t in_flight_bytes;
    uint64_t limit_bytes;
    uint64_t refused;           /* requests answered 503 request_memory */
};
void larder__http_request_memory(struct larder__http *h, struct larder__request_memory *ret);


/* Replies: set the response of r (replacing any earlier one). The json reference is
 * stolen. Any thread that owns r. */
void larder__reply_json(struct larder__request *r, unsigned status, json_t *body);
void larder__reply_error(struct larder__request *r, unsigned status, const char *code,
                         const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The same naming the request field at fault (OpenAI's "param"; NULL: none). */
void larder__reply_error_param(struct larder__request *r, unsigned status, const char *code,
                               const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The error object of r's style (see enum larder__error_style), for a reply or a stream. */
json_t *larder__error_json(enum larder__error_style style, unsigned status, const char *code,
                           const char *param, const char *msg);
/* Takes ownership of data (malloc'd). */
void larder__reply_bytes(struct larder__request *r, unsigned status, const char *content_type,
                         void *data, size_t len);
/* A response built by the caller (e.g. a stream); takes ownership. */
void larder__reply_response(struct larder__request *r, unsigned status,
                            struct MHD_Response *resp);
/* A growing text buffer for replies written directly rather than through a jansson
 * tree (listings, metrics). Large texts live in a mapping of their own, so that they go
 * back to the system as soon as their reply has been sent, whatever the allocator keeps.
 * On ENOMEM the text is marked failed and further output is dropped. Zero-initialise
 * it; one thread at a time. */
struct larder__text {
    char *buf;
    size_t len, cap;
    bool failed;
    bool mapped;
};

/* Makes room for at least `more` further bytes (a hint; output grows as needed). */
void larder__text_reserve(struct larder__text *t, size_t more);
void larder__text_add_slow(struct larder__text *t, const char *s, size_t n);
static inline void larder__text_add(struct larder__text *t, const char *s, size_t n)
{
    if (t->len + n < t->cap) {
        memcpy(t->buf + t->len, s, n);
        t->len += n;
    } else {
        larder__text_add_slow(t, s, n);
    }
}
/* s: a string literal (the "" "" makes anything else a compile error). */
#define larder__text_lit(t, s) larder__text_add((t), "" s "", sizeof(s) - 1)
void larder__text_put(struct larder__text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void larder__text_vput(struct larder__text *t, const char *fmt, va_list ap);
/* JSON values: a string quoted and escaped (invalid UTF-8 becomes U+FFFD; NULL is
 * null), integers, a real as jansson writes it with JSON_REAL_PRECISION(7) (null when
 * not finite), a boolean. */
void larder__text_json_string(struct larder__text *t, const char *s);
void larder__text_json_int(struct larder__text *t, int64_t v);
void larder__text_json_uint(struct larder__text *t, uint64_t v);
void larder__text_json_real(struct larder__text *t, double v);
void larder__text_json_bool(struct larder__text *t, bool v);
/* Frees the text and zeroes it. */
void larder__text_free(struct larder__text *t);

/* Replies with t's bytes (taking them: t is left empty); a failed text answers 500. */
void larder__reply_text(struct larder__request *r, unsigned status, const char *content_type,
                        struct larder__text *t);

/* Appends the server's own Prometheus lines (connections, refusals, read deadlines,
 * request memory) to t. */
void larder__http_metrics_text(struct larder__http *h, struct larder__text *t);

/* Adds a header to the reply set last. */
void larder__reply_header(struct larder__request *r, const char *name, const char *value);

/* The status and code a library or backend error answers. */
void larder__error_status(int err, unsigned *ret_status, const char **ret_code);
/* Maps a library or backend error to a reply (status, code, Retry-After). */
void larder__reply_larder_error(struct larder__request *r, int err, const char *what);
/* The same with Retry-After saying retry_ms rounded up to whole seconds (at least 1);
 * retry_ms < 0: the error's usual Retry-After. */
void larder__reply_larder_error_retry(struct larder__request *r, int err, const char *what,
                                      int64_t retry_ms);

/* Checks that len bytes at s are one JSON text (RFC 8259, as jansson reads it with
 * JSON_DECODE_ANY: no NUL character, nesting at most 2048 deep) without building
 * anything: no allocation, one pass. False with "line L column C: WHAT" in err when it
 * is not. Any thread. */
bool larder__json_check(const char *s, size_t len, char *err, size_t errlen);

/* Suspends r (HTTP thread, inside the route). Counts it in d->inflight. */
void larder__request_suspend(struct larder__request *r);
/* Resumes r once its reply is set (any thread): the owner gives r back. When the shutdown
 * answered r meanwhile (larder__http_answer_all), r is only given back. */
void larder__request_resume(struct larder__request *r);

/* A header of the request, or NULL. HTTP thread only. */
const char *larder__request_header(struct larder__request *r, const char *name);
/* A query argument of the request, or NULL. HTTP thread only. */
const char *larder__request_arg(struct larder__request *r, const char *name);

/* Query arguments with a typed value. A present argument that does not parse (or is
 * out of range, or has no value) sets a 400 `bad_parameter` reply naming it and
 * returns false; an absent one leaves *ret as it is and returns true. HTTP thread only.
 *   BOOL:     yes/no, true/false, on/off, 1/0 (any case) into a bool
 *   DURATION: "500ms", "30s", "30", "2m", "1h" (not "never") into an int64_t of ms
 *   COUNT:    a decimal whole number 0..max into a uint64_t */
enum larder__arg_kind { LARDER__ARG_BOOL, LARDER__ARG_DURATION, LARDER__ARG_COUNT };
bool larder__request_arg_parse(struct larder__request *r, const char *name,
                               enum larder__arg_kind kind, uint64_t max, void *ret);

/* Routes one complete request (routes.c). Sets a reply or suspends r. */
void larder__route(struct larder__request *r);

/* A duplicate of the socket of r's connection, for polling whether its client hung up
 * (never read or written through it): the caller closes it. -1 when unknown, and also
 * when r was already answered by the shutdown (*ret_answered true: its connection may be
 * gone, and the owner has nothing left to do but give r back). The owner of a suspended
 * r, any thread. */
int larder__request_socket_dup(struct larder__request *r, bool *ret_answered);

/* Charges `bytes` more of request_memory to r (decoded input a backend reported, on top
 * of its body), given back with the body when r is freed. False, and counted as a
 * refusal, when they do not fit. The thread that owns r. */
bool larder__request_memory_take(struct larder__request *r, uint64_t bytes);

#endif
