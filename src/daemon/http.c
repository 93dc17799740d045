/* larderd HTTP server (see http.h). */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"

const double larder__http_buckets[12] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30,
};

#define DISCARD_MAX (64ull << 20)

struct larder__http {
    struct larder__daemon *d;
    struct MHD_Daemon *mhd;
    unsigned port;
    int quiesced_fd;
    pthread_mutex_t lock;  /* counts */
    struct larder__http_counts counts;
    struct larder__owned owned; /* suspended requests (see the end of this file) */
};

/* Suspended requests and their owners (the end of this file). */
static void request_own(struct larder__request *r);
static bool request_disown(struct larder__request *r);
static void request_unref(struct larder__request *r);
static void request_set_owned(struct larder__request *r, unsigned status,
                              struct MHD_Response *resp, size_t len);
static void request_set_code(struct larder__request *r, const char *code);
static void request_header_owned(struct larder__request *r, const char *name,
                                 const char *value);

/* ---- replies -------------------------------------------------------------------------- */

static void store_response(struct larder__request *r, unsigned status,
                           struct MHD_Response *resp, size_t len)
{
    if (r->resp)
        MHD_destroy_response(r->resp);
    r->resp = resp;
    r->status = resp ? status : 500;
    r->resp_bytes = len;
}

static void set_response(struct larder__request *r, unsigned status, struct MHD_Response *resp,
                         size_t len)
{
    if (r->owned)
        request_set_owned(r, status, resp, len);
    else
        store_response(r, status, resp, len);
}

void larder__reply_bytes(struct larder__request *r, unsigned status, const char *content_type,
                         void *data, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!resp)
        free(data);
    else if (content_type)
        MHD_add_response_header(resp, "Content-Type", content_type);
    set_response(r, status, resp, len);
}

void larder__reply_response(struct larder__request *r, unsigned status,
                            struct MHD_Response *resp)
{
    set_response(r, status, resp, 0);
}

void larder__reply_json(struct larder__request *r, unsigned status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(7)) : NULL;
    json_decref(body);
    if (!s) {
        static const char oom[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        struct MHD_Response *resp = MHD_create_response_from_buffer(
            sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
        if (resp)
            MHD_add_response_header(resp, "Content-Type", "application/json");
        request_set_code(r, "internal");
        set_response(r, 500, resp, sizeof oom - 1);
        return;
    }
    size_t len = strlen(s);
    s[len] = '\n'; /* json_dumps leaves room: the NUL becomes a newline */
    larder__reply_bytes(r, status, "application/json", s, len + 1);
}

void larder__reply_error(struct larder__request *r, unsigned status, const char *code,
                         const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    request_set_code(r, code);
    json_t *o = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    if (!o) /* a message that is not UTF-8 */
        o = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", "(unprintable)");
    larder__reply_json(r, status, o);
}

/* ---- text replies ----------------------------------------------------------------------- */

/* Texts that grow past this move to a mapping of their own; the mapping starts with a
 * header that holds its size, so that the reply's free callback can unmap it. */
#define TEXT_MAP_MIN (256u << 10)
#define TEXT_MAP_HEADER 64u

static size_t page_size(void)
{
    static size_t ps;
    if (!ps) {
        long n = sysconf(_SC_PAGESIZE);
        ps = n > 0 ? (size_t)n : 4096;
    }
    return ps;
}

static void *map_base(const struct larder__text *t)
{
    return t->buf - TEXT_MAP_HEADER;
}

static void unmap_text(void *base)
{
    munmap(base, *(size_t *)base);
}

/* Room for cap bytes in all (plus one for a terminating byte). */
static bool text_grow(struct larder__text *t, size_t cap)
{
    if (cap < 512)
        cap = 512;
    if (cap < TEXT_MAP_MIN) {
        char *nb = realloc(t->buf, cap);
        if (!nb)
            return false;
        t->buf = nb;
        t->cap = cap;
        return true;
    }
    size_t ps = page_size();
    size_t size = (cap + TEXT_MAP_HEADER + ps - 1) / ps * ps;
    char *base;
    if (t->mapped) {
        base = mremap(map_base(t), *(size_t *)map_base(t), size, MREMAP_MAYMOVE);
    } else {
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base != MAP_FAILED && t->len)
            memcpy(base + TEXT_MAP_HEADER, t->buf, t->len);
        if (base != MAP_FAILED)
            free(t->buf);
    }
    if (base == MAP_FAILED)
        return false;
    *(size_t *)base = size;
    t->buf = base + TEXT_MAP_HEADER;
    t->cap = size - TEXT_MAP_HEADER;
    t->mapped = true;
    return true;
}

/* Makes room for n more bytes plus a terminating one. */
static bool text_room(struct larder__text *t, size_t n)
{
    if (t->failed)
        return false;
    if (t->len + n < t->cap)
        return true;
    size_t want = t->cap * 2 > t->len + n + 1 ? t->cap * 2 : t->len + n + 1;
    if (!text_grow(t, want)) {
        t->failed = true;
        return false;
    }
    return true;
}

void larder__text_reserve(struct larder__text *t, size_t more)
{
    if (!t->failed && t->len + more >= t->cap && !text_grow(t, t->len + more + 1))
        t->failed = true;
}

void larder__text_add_slow(struct larder__text *t, const char *s, size_t n)
{
    if (text_room(t, n)) {
        memcpy(t->buf + t->len, s, n);
        t->len += n;
    }
}

void larder__text_vput(struct larder__text *t, const char *fmt, va_list ap)
{
    for (int tries = 0; tries < 2 && text_room(t, 0); tries++) {
        va_list aq;
        va_copy(aq, ap);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, aq);
        va_end(aq);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        text_room(t, (size_t)n);
    }
}

void larder__text_put(struct larder__text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    larder__text_vput(t, fmt, ap);
    va_end(ap);
}

/* Length of the well-formed UTF-8 sequence (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF) at s, or 0. Reads no further than a NUL. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c < 0xC2 || c > 0xF4 || (s[1] & 0xC0) != 0x80)
        return 0;
    if (c < 0xE0)
        return 2;
    if ((s[2] & 0xC0) != 0x80 || (c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F))
        return 0;
    if (c < 0xF0)
        return 3;
    if ((s[3] & 0xC0) != 0x80 || (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F))
        return 0;
    return 4;
}

void larder__text_json_string(struct larder__text *t, const char *str)
{
    static const char hex[] = "0123456789ABCDEF";
    if (!str) {
        larder__text_lit(t, "null");
        return;
    }
    const unsigned char *s = (const unsigned char *)str;
    larder__text_lit(t, "\"");
    for (;;) {
        const unsigned char *run = s;
        while (*s >= 0x20 && *s < 0x80 && *s != '"' && *s != '\\')
            s++;
        larder__text_add(t, (const char *)run, (size_t)(s - run));
        if (!*s)
            break;
        size_t n = *s >= 0x80 ? utf8_len(s) : 0;
        if (n) {
            larder__text_add(t, (const char *)s, n);
            s += n;
            continue;
        }
        char esc[6] = {'\\', 0};
        size_t len = 2;
        switch (*s) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            if (*s >= 0x80) { /* not UTF-8: U+FFFD */
                memcpy(esc, "\\ufffd", 6);
            } else {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[*s >> 4];
                esc[5] = hex[*s & 15];
            }
            len = 6;
        }
        larder__text_add(t, esc, len);
        s++;
    }
    larder__text_lit(t, "\"");
}

void larder__text_json_uint(struct larder__text *t, uint64_t v)
{
    char tmp[24], *p = tmp + sizeof tmp;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    larder__text_add(t, p, (size_t)(tmp + sizeof tmp - p));
}

void larder__text_json_int(struct larder__text *t, int64_t v)
{
    if (v < 0)
        larder__text_lit(t, "-");
    larder__text_json_uint(t, v < 0 ? -(uint64_t)v : (uint64_t)v);
}

void larder__text_json_real(struct larder__text *t, double v)
{
    char b[40];
    if (v == 0 && !signbit(v)) { /* the figures of models never loaded */
        larder__text_lit(t, "0.0");
        return;
    }
    if (!isfinite(v)) {
        larder__text_lit(t, "null");
        return;
    }
    int n = snprintf(b, sizeof b - 2, "%.7g", v);
    if (n < 0 || (size_t)n >= sizeof b - 2) {
        t->failed = true;
        return;
    }
    char *comma = strchr(b, ','); /* a locale's decimal point */
    if (comma)
        *comma = '.';
    char *e = strchr(b, 'e');
    if (!e && !strchr(b, '.')) {
        memcpy(b + n, ".0", 3); /* stays a real when read back */
        n += 2;
    }
    if (e) { /* "1e+20" -> "1e20", "1e-05" -> "1e-5" */
        char *out = e + 1, *in = e + 1;
        if (*in == '-')
            *out++ = *in++;
        else if (*in == '+')
            in++;
        while (*in == '0' && in[1])
            in++;
        memmove(out, in, strlen(in) + 1);
        n = (int)strlen(b);
    }
    larder__text_add(t, b, (size_t)n);
}

void larder__text_json_bool(struct larder__text *t, bool v)
{
    if (v)
        larder__text_lit(t, "true");
    else
        larder__text_lit(t, "false");
}

void larder__text_free(struct larder__text *t)
{
    if (t->mapped)
        unmap_text(map_base(t));
    else
        free(t->buf);
    memset(t, 0, sizeof *t);
}

void larder__reply_text(struct larder__request *r, unsigned status, const char *content_type,
                        struct larder__text *t)
{
    if (t->failed || !t->buf) {
        larder__text_free(t);
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    if (!t->mapped) {
        larder__reply_bytes(r, status, content_type, t->buf, t->len);
        memset(t, 0, sizeof *t);
        return;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback_cls(
        t->len, t->buf, unmap_text, map_base(t));
    size_t len = t->len;
    if (!resp)
        larder__text_free(t);
    else
        MHD_add_response_header(resp, "Content-Type", content_type);
    memset(t, 0, sizeof *t);
    set_response(r, status, resp, len);
}

void larder__reply_header(struct larder__request *r, const char *name, const char *value)
{
    if (r->owned)
        request_header_owned(r, name, value);
    else if (r->resp)
        MHD_add_response_header(r->resp, name, value);
}

struct error_map {
    int err;
    unsigned status;
    const char *code;
    const char *retry_after;
};

static const struct error_map error_maps[] = {
    {LARDER_ENOTFOUND, 404, "model_not_found", NULL},
    {LARDER_EBUSY, 429, "queue_full", "1"},
    {LARDER_ETIMEDOUT, 503, "timeout", "1"},
    {LARDER_ENOSPC, 503, "no_memory", "5"},
    {LARDER_ETOOBIG, 503, "too_big", NULL},
    {LARDER_ELOAD, 500, "load_failed", NULL},
    {LARDER_ECOOLDOWN, 503, "cooldown", "1"},
    {LARDER_EDRAINING, 503, "draining", "1"},
    {LARDER_ECLOSED, 503, "shutting_down", "5"},
    {LARDER_ECANCELED, 503, "canceled", "1"},
    {LARDER_ECYCLE, 500, "fallback_cycle", NULL},
    {LARDER_BACKEND_EINPUT, 400, "bad_input", NULL},
    {LARDER_BACKEND_EMEDIA, 415, "unsupported_media_type", NULL},
    {LARDER_BACKEND_EOPTION, 500, "bad_option", NULL},
    {LARDER_BACKEND_EMODEL, 500, "model_unavailable", NULL},
    {LARDER_BACKEND_ENOMEM, 503, "no_memory", "5"},
    {-ENOMEM, 503, "no_memory", "5"},
};

void larder__reply_larder_error(struct larder__request *r, int err, const char *what)
{
    const struct error_map *m = NULL;
    for (size_t i = 0; i < sizeof error_maps / sizeof error_maps[0]; i++)
        if (error_maps[i].err == err)
            m = &error_maps[i];
    const char *msg = what && *what ? what : err <= -30001 && err >= -30006 ? "backend error"
                                                                            : larder_strerror(err);
    larder__reply_error(r, m ? m->status : 500, m ? m->code : "internal", "%s", msg);
    if (m && m->retry_after)
        larder__reply_header(r, "Retry-After", m->retry_after);
}

/* ---- suspension -------------------------------------------------------------------------- */

void larder__request_suspend(struct larder__request *r)
{
    /* Counted until its reply has gone out (on_completed), not only until it resumes: a
     * shutdown that waits for in-flight requests must not stop the server while a
     * resumed reply is still being written. */
    if (!r->inflight) {
        r->inflight = true;
        atomic_fetch_add(&r->d->inflight, 1);
    }
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    request_own(r);
}

void larder__request_resume(struct larder__request *r)
{
    if (request_disown(r))
        MHD_resume_connection(r->conn);
    request_unref(r);
    /* r may be gone from here on. */
}

const char *larder__request_header(struct larder__request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *larder__request_arg(struct larder__request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* Whole decimal number, digits only; -ERANGE past max. */
static int parse_count(const char *s, uint64_t max, uint64_t *ret)
{
    uint64_t v = 0;
    if (!*s)
        return -EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        unsigned d = (unsigned)(*s - '0');
        if (d > max || v > (max - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *ret = v;
    return 0;
}

bool larder__request_arg_parse(struct larder__request *r, const char *name,
                               enum larder__arg_kind kind, uint64_t max, void *ret)
{
    const char *v = NULL;
    if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name), &v,
                                      NULL) != MHD_YES)
        return true;
    int e = -EINVAL;
    bool b;
    int64_t ms;
    uint64_t n;
    const char *want = "";
    switch (kind) {
    case LARDER__ARG_BOOL:
        want = "yes or no (true/false, on/off, 1/0)";
        if (v && (e = larder__parse_bool(v, &b)) == 0)
            *(bool *)ret = b;
        break;
    case LARDER__ARG_DURATION:
        /* digits, maybe a fraction, then a unit: no signs, exponents or hex */
        want = "a duration such as 500ms, 30s or 2m";
        if (v && !v[strspn(v, "0123456789.") + strspn(v + strspn(v, "0123456789."),
                                                       "abcdefghijklmnopqrstuvwxyz")] &&
            (e = larder__parse_duration(v, &ms)) == 0 && (ms < 0 || (uint64_t)ms > max))
            e = ms < 0 ? -EINVAL : -ERANGE;
        if (e == 0)
            *(int64_t *)ret = ms;
        break;
    case LARDER__ARG_COUNT:
        want = "a whole number";
        if (v && (e = parse_count(v, max, &n)) == 0)
            *(uint64_t *)ret = n;
        break;
    }
    if (e == 0)
        return true;
    char range[64] = "";
    if (e == -ERANGE && kind == LARDER__ARG_DURATION)
        snprintf(range, sizeof range, " of at most %llu ms", (unsigned long long)max);
    else if (e == -ERANGE || (kind == LARDER__ARG_COUNT && max != UINT64_MAX))
        snprintf(range, sizeof range, " from 0 to %llu", (unsigned long long)max);
    if (!v)
        larder__reply_error(r, 400, "bad_parameter", "query parameter '%s' needs a value: %s%s",
                            name, want, range);
    else
        larder__reply_error(r, 400, "bad_parameter",
                            "query parameter '%s' is '%.200s', it must be %s%s", name, v, want,
                            range);
    return false;
}

/* ---- request life ---------------------------------------------------------------------- */

static struct larder__request *request_new(struct larder__http *h, struct MHD_Connection *conn,
                                           const char *url, const char *method)
{
    struct larder__request *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->d = h->d;
    r->http = h;
    r->conn = conn;
    r->url = url;
    r->method = method;
    r->t_start = larder__now();
    r->content_type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    return r;
}

static uint64_t max_body(struct larder__daemon *d)
{
    pthread_rwlock_rdlock(&d->conf_lock);
    uint64_t n = d->conf->max_body;
    pthread_rwlock_unlock(&d->conf_lock);
    return n;
}

/* Checks Content-Length before any byte of the body arrives, and sizes the buffer. */
static void early_checks(struct larder__request *r, uint64_t limit)
{
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
    if (n > limit) {
        r->too_big = true;
        return;
    }
    if (n && (r->body = malloc((size_t)n + 1)))
        r->body_cap = (size_t)n + 1;
}

static int append_body(struct larder__request *r, const char *data, size_t n, uint64_t limit)
{
    if (r->too_big || r->body_len + n > limit) {
        r->too_big = true;
        return 0;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = (r->body_len + n + 1) * 2;
        char *nb = realloc(r->body, cap);
        if (!nb)
            return -ENOMEM;
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
    return 0;
}

static enum MHD_Result queue_reply(struct larder__request *r)
{
    if (!r->resp)
        larder__reply_error(r, 500, "internal", "no reply was produced");
    if (!r->resp)
        return MHD_NO;
    enum MHD_Result ok = MHD_queue_response(r->conn, r->status, r->resp);
    MHD_destroy_response(r->resp);
    r->resp = NULL;
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **ctx)
{
    struct larder__http *h = cls;
    struct larder__request *r = *ctx;
    if (!r) {
        if (!(r = request_new(h, conn, url, method)))
            return MHD_NO;
        *ctx = r;
        uint64_t limit = max_body(h->d);
        early_checks(r, limit);
        if (!r->too_big)
            return MHD_YES;
        r->dispatched = true;
        larder__reply_error(r, 413, "body_too_large", "the request body is larger than %llu bytes",
                            (unsigned long long)limit);
        return queue_reply(r);
    }
    if (r->suspended) { /* resumed: the reply is ready */
        r->suspended = false;
        return queue_reply(r);
    }
    if (*upload_size) {
        uint64_t limit = max_body(h->d);
        if (append_body(r, upload_data, *upload_size, limit) < 0)
            return MHD_NO;
        if (r->too_big)
            r->discarded += *upload_size;
        *upload_size = 0;
        /* A body without Content-Length that grew too large is read to its end (MHD
         * answers only once the request is complete) and dropped; a client that keeps
         * sending far beyond that is cut off. */
        return r->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
    }
    if (r->dispatched)
        return r->resp ? queue_reply(r) : MHD_YES;
    r->dispatched = true;
    r->t_body = larder__now();
    if (r->too_big)
        larder__reply_error(r, 413, "body_too_large", "the request body is larger than %llu bytes",
                            (unsigned long long)max_body(h->d));
    else
        larder__route(r);
    return r->suspended ? MHD_YES : queue_reply(r);
}

static void count_request(struct larder__http *h, struct larder__request *r, double secs)
{
    pthread_mutex_lock(&h->lock);
    unsigned cls = r->status / 100;
    h->counts.by_status[cls < 6 ? cls : 0]++;
    size_t b = 0;
    while (b < 12 && secs > larder__http_buckets[b])
        b++;
    h->counts.duration_buckets[b]++;
    h->counts.duration_sum += secs;
    h->counts.total++;
    pthread_mutex_unlock(&h->lock);
}

static void log_request(struct larder__request *r, double ms, enum MHD_RequestTerminationCode toe)
{
    enum larder__log_level level = r->status >= 500 ? LARDER__LOG_WARN : LARDER__LOG_INFO;
    if (!larder__log_enabled(level))
        return;
    json_t *o = json_pack("{s:s,s:s,s:i,s:f,s:I,s:I}", "method", r->method, "path", r->url,
                          "status", (int)r->status, "ms", ms, "bytes_in", (json_int_t)r->body_len,
                          "bytes_out", (json_int_t)r->resp_bytes);
    if (o && r->model)
        json_object_set_new(o, "model", json_string(r->model));
    if (o && r->error_code)
        json_object_set_new(o, "error", json_string(r->error_code));
    if (o && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        json_object_set_new(o, "terminated",
                            json_string(toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? "client_abort"
                                        : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED
                                            ? "timeout"
                                        : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN
                                            ? "shutdown"
                                            : "error"));
    larder__log(level, "request", o);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **ctx,
                         enum MHD_RequestTerminationCode toe)
{
    struct larder__http *h = cls;
    struct larder__request *r = *ctx;
    if (!r)
        return;
    double secs = larder__now() - r->t_start;
    count_request(h, r, secs);
    log_request(r, secs * 1000.0, toe);
    if (r->inflight)
        atomic_fetch_sub(&r->d->inflight, 1);
    *ctx = NULL;
    request_unref(r);
}

/* ---- the server ----------------------------------------------------------------------- */

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    larder__log(LARDER__LOG_WARN, "http", json_pack("{s:s}", "detail", buf));
}

static int resolve(const char *host, unsigned port, struct sockaddr_storage *ss, char *err,
                   size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    char ports[16];
    snprintf(ports, sizeof ports, "%u", port);
    int g = getaddrinfo(host, ports, &hints, &res);
    if (g != 0 || !res) {
        snprintf(err, errlen, "listen address '%s': %s", host, gai_strerror(g));
        return -EINVAL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

int larder__http_start(struct larder__daemon *d, const char *host, unsigned port,
                       unsigned threads, struct larder__http **ret_http, char *err,
                       size_t errlen)
{
    struct sockaddr_storage ss = {0};
    int r = resolve(host, port, &ss, err, errlen);
    if (r < 0)
        return r;
    struct larder__http *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->d = d;
    h->quiesced_fd = -1;
    pthread_mutex_init(&h->lock, NULL);
    pthread_mutex_init(&h->owned.lock, NULL);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    if (threads == 0)
        threads = 2;
    h->mhd = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
        MHD_OPTION_SOCK_ADDR, &ss, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_TIMEOUT, 120u,
        MHD_OPTION_END);
    if (!h->mhd) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", host, port, strerror(errno));
        pthread_mutex_destroy(&h->owned.lock);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return -EADDRNOTAVAIL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : port;
    *ret_http = h;
    return 0;
}

void larder__http_quiesce(struct larder__http *h)
{
    if (h && h->quiesced_fd < 0) {
        MHD_socket fd = MHD_quiesce_daemon(h->mhd);
        h->quiesced_fd = fd == MHD_INVALID_SOCKET ? -2 : fd;
    }
}

struct larder__http *larder__http_stop(struct larder__http *h)
{
    if (!h)
        return NULL;
    /* MHD aborts the process when it stops with a connection still suspended. */
    larder__http_answer_all(h);
    MHD_stop_daemon(h->mhd);
    if (h->quiesced_fd >= 0)
        close(h->quiesced_fd);
    if (larder__http_owners(h)) /* they still take owned.lock when they return */
        return NULL;
    pthread_mutex_destroy(&h->owned.lock);
    pthread_mutex_destroy(&h->lock);
    free(h);
    return NULL;
}

unsigned larder__http_port(struct larder__http *h)
{
    return h->port;
}

void larder__http_counts(struct larder__http *h, struct larder__http_counts *ret)
{
    pthread_mutex_lock(&h->lock);
    *ret = h->counts;
    pthread_mutex_unlock(&h->lock);
}

int larder__request_socket(struct larder__request *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? (int)ci->connect_fd : -1;
}

/* ---- suspended requests and their owners --------------------------------------------------
 *
 * A suspended request belongs to another thread (an inference job, an admin job, an async
 * acquire's callback) until it calls larder__request_resume(). At shutdown a request whose
 * owner is still busy (a backend call that outlives drain_timeout) is answered by
 * larder__http_answer_all() instead; its owner runs on and finds it answered. One lock,
 * owned.lock, decides which of the two answers: while a request is owned every reply it
 * gets is set under that lock, and once the shutdown has taken it the owner's replies are
 * dropped. The request struct is counted (MHD's completion and the owner) and freed by
 * whichever of the two is last, so an owner that returns after the reply went out still
 * finds its request (and its body) alive. */

static void request_free(struct larder__request *r)
{
    if (r->resp)
        MHD_destroy_response(r->resp);
    free(r->body);
    free(r->model);
    free(r);
}

static void request_unref(struct larder__request *r)
{
    if (!r->owned || atomic_fetch_sub(&r->refs, 1) == 1)
        request_free(r);
}

static void owned_unlink(struct larder__owned *o, struct larder__request *r)
{
    if (r->own_prev)
        r->own_prev->own_next = r->own_next;
    else
        o->head = r->own_next;
    if (r->own_next)
        r->own_next->own_prev = r->own_prev;
    r->own_prev = r->own_next = NULL;
}

/* owned.lock held: answers r 503 shutting_down in larder's error shape; the owner's own
 * reply, set or to come, is dropped. */
static void take_locked(struct larder__owned *o, struct larder__request *r)
{
    static const char body[] = "{\"error\":{\"code\":\"shutting_down\",\"message\":"
                               "\"the server is stopping; the request was not finished\"}}\n";
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        sizeof body - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
    if (resp) {
        MHD_add_response_header(resp, "Content-Type", "application/json");
        MHD_add_response_header(resp, "Retry-After", "5");
        MHD_add_response_header(resp, "Connection", "close");
    }
    owned_unlink(o, r);
    r->taken = true;
    store_response(r, 503, resp, sizeof body - 1);
    r->error_code = "shutting_down";
}

/* HTTP thread, r just suspended and about to be handed to its owner. Once the shutdown
 * has answered everything, a request suspended late is answered at once. */
static void request_own(struct larder__request *r)
{
    struct larder__owned *o = &r->http->owned;
    if (r->owned)
        return;
    atomic_init(&r->refs, 2);
    r->owned = true;
    pthread_mutex_lock(&o->lock);
    r->own_next = o->head;
    if (o->head)
        o->head->own_prev = r;
    o->head = r;
    o->owners++;
    bool late = o->closing;
    if (late)
        take_locked(o, r);
    pthread_mutex_unlock(&o->lock);
    if (late)
        MHD_resume_connection(r->conn);
}

/* The owner is done with r: true when it must resume it (nobody answered it before). */
static bool request_disown(struct larder__request *r)
{
    struct larder__owned *o = &r->http->owned;
    if (!r->owned)
        return true;
    pthread_mutex_lock(&o->lock);
    bool mine = !r->taken;
    if (mine)
        owned_unlink(o, r);
    o->owners--;
    pthread_mutex_unlock(&o->lock);
    return mine;
}

static void request_set_owned(struct larder__request *r, unsigned status,
                              struct MHD_Response *resp, size_t len)
{
    struct larder__owned *o = &r->http->owned;
    pthread_mutex_lock(&o->lock);
    if (r->taken) {
        pthread_mutex_unlock(&o->lock);
        if (resp)
            MHD_destroy_response(resp);
        return;
    }
    store_response(r, status, resp, len);
    pthread_mutex_unlock(&o->lock);
}

static void request_set_code(struct larder__request *r, const char *code)
{
    if (!r->owned) {
        r->error_code = code;
        return;
    }
    struct larder__owned *o = &r->http->owned;
    pthread_mutex_lock(&o->lock);
    if (!r->taken)
        r->error_code = code;
    pthread_mutex_unlock(&o->lock);
}

static void request_header_owned(struct larder__request *r, const char *name,
                                 const char *value)
{
    struct larder__owned *o = &r->http->owned;
    pthread_mutex_lock(&o->lock);
    if (!r->taken && r->resp)
        MHD_add_response_header(r->resp, name, value);
    pthread_mutex_unlock(&o->lock);
}

unsigned larder__http_answer_all(struct larder__http *h)
{
    if (!h)
        return 0;
    struct larder__owned *o = &h->owned;
    pthread_mutex_lock(&o->lock);
    o->closing = true;
    unsigned n = 0;
    for (struct larder__request *r = o->head; r; r = r->own_next)
        n++;
    struct MHD_Connection **conns = n ? calloc(n, sizeof *conns) : NULL;
    unsigned k = 0;
    /* Without memory for the list, each is resumed under the lock: MHD's resume only
     * marks the connection, it calls nothing back. */
    while (o->head) {
        struct larder__request *r = o->head;
        take_locked(o, r);
        if (conns)
            conns[k++] = r->conn;
        else
            MHD_resume_connection(r->conn);
    }
    pthread_mutex_unlock(&o->lock);
    for (unsigned i = 0; i < k; i++)
        MHD_resume_connection(conns[i]);
    free(conns);
    return n;
}

unsigned larder__http_owners(struct larder__http *h)
{
    if (!h)
        return 0;
    pthread_mutex_lock(&h->owned.lock);
    unsigned n = h->owned.owners;
    pthread_mutex_unlock(&h->owned.lock);
    return n;
}
