/* larderd HTTP server (see http.h). */
#include "remote.h"
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "stream.h"

const double larder__http_buckets[12] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30,
};

#define DISCARD_MAX (64ull << 20)
#define CLIENT_BUCKETS 256

struct client_count;
struct larder__conn;

struct larder__http {
    struct larder__daemon *d;
    struct MHD_Daemon *mhd;
    unsigned port;
    int quiesced_fd;
    pthread_mutex_t lock;  /* counts */
    struct larder__http_counts counts;
    struct larder__owned owned; /* suspended requests (see the end of this file) */
    /* connections (see "connections" below) */
    pthread_mutex_t conns_lock; /* conns, n_conns, clients, stats */
    struct larder__conn *conns;
    unsigned n_conns;
    struct client_count *clients[CLIENT_BUCKETS];
    struct conn_stats {
        uint64_t refused_total, refused_client, header_timeouts, body_timeouts;
    } stats;
    unsigned conn_cap;     /* connections the open-file limit allows */
    pthread_t sweeper;
    bool sweeper_running;
    pthread_mutex_t sweep_lock;
    pthread_cond_t sweep_cond;
    bool sweep_stop;
    /* request memory */
    atomic_ullong memory_in_flight;
    atomic_ullong memory_refused;
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

/* OpenAI's error type for a status. */
static const char *openai_type(unsigned status)
{
    return status == 401 ? "authentication_error"
         : status == 403 ? "permission_error"
         : status == 404 ? "invalid_request_error"
         : status == 429 ? "rate_limit_error"
         : status >= 500 ? "server_error"
                         : "invalid_request_error";
}

json_t *larder__error_json(enum larder__error_style style, unsigned status, const char *code,
                           const char *param, const char *msg)
{
    json_t *o, *check = json_string(msg);
    if (!check) /* not UTF-8 */
        msg = "(unprintable)";
    json_decref(check);
    switch (style) {
    case LARDER__ERRORS_OPENAI:
        o = json_pack("{s:{s:s,s:s,s:s,s:s?}}", "error", "message", msg, "type",
                      openai_type(status), "code", code, "param", param);
        if (o && !param)
            json_object_set_new(json_object_get(o, "error"), "param", json_null());
        return o;
    case LARDER__ERRORS_OLLAMA:
        return json_pack("{s:s}", "error", msg);
    default:
        return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    }
}

static void reply_error_v(struct larder__request *r, unsigned status, const char *code,
                          const char *param, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    request_set_code(r, code);
    larder__reply_json(r, status, larder__error_json(r->error_style, status, code, param, msg));
}

void larder__reply_error(struct larder__request *r, unsigned status, const char *code,
                         const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(r, status, code, NULL, fmt, ap);
    va_end(ap);
}

void larder__reply_error_param(struct larder__request *r, unsigned status, const char *code,
                               const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(r, status, code, param, fmt, ap);
    va_end(ap);
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

/* ---- JSON validity, without a tree ------------------------------------------------------- */

#define JSON_MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */

struct json_scan {
    const unsigned char *p, *end, *line_start;
    unsigned line;
    const char *what; /* the error */
};

static bool scan_fail(struct json_scan *s, const char *what)
{
    s->what = what;
    return false;
}

static void scan_blanks(struct json_scan *s)
{
    for (; s->p < s->end; s->p++) {
        if (*s->p == '\n') {
            s->line++;
            s->line_start = s->p + 1;
        } else if (*s->p != ' ' && *s->p != '\t' && *s->p != '\r') {
            return;
        }
    }
}

static int hex_value(unsigned c)
{
    return c >= '0' && c <= '9' ? (int)(c - '0')
         : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (int)((c | 0x20) - 'a' + 10) : -1;
}

/* The code unit of "\uXXXX" at p, or -1. */
static long scan_u_escape(const unsigned char *p, const unsigned char *end)
{
    long v = 0;
    if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
        return -1;
    for (int i = 2; i < 6; i++) {
        int d = hex_value(p[i]);
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* A string, from its opening quote. */
static bool scan_string(struct json_scan *s)
{
    for (s->p++; s->p < s->end;) {
        unsigned char c = *s->p;
        if (c == '"') {
            s->p++;
            return true;
        }
        if (c < 0x20)
            return scan_fail(s, "control character in a string");
        if (c == '\\') {
            unsigned char e = s->end - s->p > 1 ? s->p[1] : 0;
            if (e != 'u') {
                if (!e || !strchr("\"\\/bfnrt", e))
                    return scan_fail(s, "invalid escape in a string");
                s->p += 2;
                continue;
            }
            long v = scan_u_escape(s->p, s->end);
            if (v < 0)
                return scan_fail(s, "invalid \\u escape in a string");
            if (v == 0)
                return scan_fail(s, "\\u0000 is not allowed in a string");
            if (v >= 0xDC00 && v <= 0xDFFF)
                return scan_fail(s, "invalid Unicode: a low surrogate alone");
            if (v >= 0xD800 && v <= 0xDBFF) {
                long lo = scan_u_escape(s->p + 6, s->end);
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return scan_fail(s, "invalid Unicode: a high surrogate without its low one");
                s->p += 6;
            }
            s->p += 6;
            continue;
        }
        if (c < 0x80) {
            s->p++;
            continue;
        }
        unsigned char seq[5] = {0}; /* utf8_len stops at the NUL after the input */
        size_t room = (size_t)(s->end - s->p);
        memcpy(seq, s->p, room < 4 ? room : 4);
        size_t n = utf8_len(seq);
        if (!n)
            return scan_fail(s, "invalid UTF-8 in a string");
        s->p += n;
    }
    return scan_fail(s, "premature end of input in a string");
}

static bool is_digit(const unsigned char *p, const unsigned char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

static bool scan_number(struct json_scan *s)
{
    const unsigned char *p = s->p, *end = s->end;
    if (*p == '-')
        p++;
    if (!is_digit(p, end))
        return scan_fail(s, "invalid number");
    if (*p++ != '0')
        while (is_digit(p, end))
            p++;
    if (p < end && *p == '.') {
        if (!is_digit(++p, end))
            return scan_fail(s, "invalid number: no digit after '.'");
        while (is_digit(p, end))
            p++;
    }
    if (p < end && (*p | 0x20) == 'e') {
        if (++p < end && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(p, end))
            return scan_fail(s, "invalid number: no digit in the exponent");
        while (is_digit(p, end))
            p++;
    }
    s->p = p;
    return true;
}

/* A value that is not an array or object. */
static bool scan_scalar(struct json_scan *s)
{
    static const char *const words[] = {"true", "false", "null"};
    unsigned char c = *s->p;
    if (c == '"')
        return scan_string(s);
    if (c == '-' || (c >= '0' && c <= '9'))
        return scan_number(s);
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if ((size_t)(s->end - s->p) >= n && memcmp(s->p, words[i], n) == 0) {
            s->p += n;
            return true;
        }
    }
    return scan_fail(s, c ? "invalid token" : "NUL byte in the input");
}

/* An object's key and its ':'. */
static bool scan_key(struct json_scan *s)
{
    if (s->p >= s->end || *s->p != '"')
        return scan_fail(s, s->p >= s->end ? "premature end of input" : "string expected as key");
    if (!scan_string(s))
        return false;
    scan_blanks(s);
    if (s->p >= s->end || *s->p != ':')
        return scan_fail(s, "':' expected after a key");
    s->p++;
    scan_blanks(s);
    return true;
}

/* After a value: closes what it ends, and says whether another value follows. */
static bool scan_after_value(struct json_scan *s, const unsigned char *objects, size_t *depth,
                             bool *more)
{
    for (;;) {
        scan_blanks(s);
        if (*depth == 0) {
            *more = false;
            return s->p == s->end || scan_fail(s, "end of input expected after the value");
        }
        if (s->p >= s->end)
            return scan_fail(s, "premature end of input");
        bool object = objects[(*depth - 1) / 8] & (1u << ((*depth - 1) % 8));
        if (*s->p == ',') {
            s->p++;
            scan_blanks(s);
            *more = true;
            return !object || scan_key(s);
        }
        if (*s->p != (object ? '}' : ']'))
            return scan_fail(s, object ? "',' or '}' expected" : "',' or ']' expected");
        s->p++;
        (*depth)--;
    }
}

static bool scan_text(struct json_scan *s)
{
    unsigned char objects[JSON_MAX_DEPTH / 8] = {0}; /* bit d: level d is an object */
    size_t depth = 0;
    bool more = true;
    scan_blanks(s);
    while (more) {
        if (s->p >= s->end)
            return scan_fail(s, depth ? "premature end of input" : "no JSON text");
        unsigned char c = *s->p;
        if (c != '[' && c != '{') {
            if (!scan_scalar(s) || !scan_after_value(s, objects, &depth, &more))
                return false;
            continue;
        }
        if (depth == JSON_MAX_DEPTH)
            return scan_fail(s, "maximum parsing depth reached");
        if (c == '{')
            objects[depth / 8] |= (unsigned char)(1u << (depth % 8));
        else
            objects[depth / 8] &= (unsigned char)~(1u << (depth % 8));
        depth++;
        s->p++;
        scan_blanks(s);
        if (s->p < s->end && *s->p == (c == '{' ? '}' : ']')) {
            s->p++;
            depth--;
            if (!scan_after_value(s, objects, &depth, &more))
                return false;
        } else if (c == '{' && !scan_key(s)) {
            return false;
        }
    }
    return true;
}

bool larder__json_check(const char *text, size_t len, char *err, size_t errlen)
{
    const unsigned char *start = (const unsigned char *)(text ? text : "");
    struct json_scan s = {start, start + (text ? len : 0), start, 1, NULL};
    if (scan_text(&s))
        return true;
    unsigned column = 1; /* characters, not bytes, as an editor counts them */
    for (const unsigned char *p = s.line_start; p < s.p && p < s.end; p++)
        column += (*p & 0xC0) != 0x80;
    snprintf(err, errlen, "line %u column %u: %s", s.line, column, s.what);
    return false;
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
    {LARDER__EWORKER_CRASHED, 502, "worker_crashed", NULL},
    {LARDER__EWORKER_TIMEOUT, 504, "worker_timeout", NULL},
    {LARDER_BACKEND_EINPUT, 400, "bad_input", NULL},
    {LARDER_BACKEND_EMEDIA, 415, "unsupported_media_type", NULL},
    {LARDER_BACKEND_EOPTION, 500, "bad_option", NULL},
    {LARDER_BACKEND_EMODEL, 500, "model_unavailable", NULL},
    {LARDER_BACKEND_ENOMEM, 503, "no_memory", "5"},
    {-ENOMEM, 503, "no_memory", "5"},
};

static const struct error_map *error_map(int err)
{
    for (size_t i = 0; i < sizeof error_maps / sizeof error_maps[0]; i++)
        if (error_maps[i].err == err)
            return &error_maps[i];
    return NULL;
}

void larder__error_status(int err, unsigned *ret_status, const char **ret_code)
{
    const struct error_map *m = error_map(err);
    *ret_status = m ? m->status : 500;
    *ret_code = m ? m->code : "internal";
}

void larder__reply_larder_error_retry(struct larder__request *r, int err, const char *what,
                                      int64_t retry_ms)
{
    const struct error_map *m = error_map(err);
    const char *msg = what && *what ? what : err <= -30001 && err >= -30006 ? "backend error"
                                                                            : larder_strerror(err);
    larder__reply_error(r, m ? m->status : 500, m ? m->code : "internal", "%s", msg);
    if (retry_ms >= 0) {
        char secs[24];
        int64_t s = retry_ms / 1000 + (retry_ms % 1000 != 0);
        snprintf(secs, sizeof secs, "%lld", (long long)(s < 1 ? 1 : s));
        larder__reply_header(r, "Retry-After", secs);
    } else if (m && m->retry_after) {
        larder__reply_header(r, "Retry-After", m->retry_after);
    }
}

void larder__reply_larder_error(struct larder__request *r, int err, const char *what)
{
    larder__reply_larder_error_retry(r, err, what, -1);
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

/* ---- connections: limits and read deadlines ------------------------------------------------
 *
 * Every connection has an entry, made and dropped by MHD's connection notifications, that
 * says what it is waiting for and since when: its request's headers (since it opened, or
 * since its previous request ended), its body (since the headers), or nothing from the
 * client (a request being served). MHD's own timeout restarts at every byte, so a client
 * that trickles a byte now and then would hold its connection forever; the sweeper thread
 * shuts down the connections whose headers or body are late, however slowly they keep
 * sending. The same lock counts connections in all and per client address, for the
 * limits the accept policy applies. */

#define SWEEP_MS 100

enum conn_phase { CONN_HEADERS, CONN_BODY, CONN_SERVING };

struct client_count {
    struct client_count *next;
    unsigned char addr[16];
    size_t len;
    unsigned n;
};

struct larder__conn {
    struct larder__conn *prev, *next;
    struct client_count *client; /* NULL: its address is not counted */
    int fd;
    enum conn_phase phase;
    double since;                /* monotonic seconds */
    bool shut;                   /* its deadline passed: shut down, MHD closes it */
    unsigned refs;               /* the connection's, and its current request's */
};

static void put(struct larder__text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put(struct larder__text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    larder__text_vput(t, fmt, ap);
    va_end(ap);
}

/* The address of a client (IPv4, or IPv6 unless it maps an IPv4 one) into key; its length,
 * or 0 for other families. */
static size_t client_key(const struct sockaddr *sa, size_t salen, unsigned char key[16])
{
    if (sa && sa->sa_family == AF_INET && salen >= sizeof(struct sockaddr_in)) {
        memcpy(key, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 4;
    }
    if (sa && sa->sa_family == AF_INET6 && salen >= sizeof(struct sockaddr_in6)) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            memcpy(key, a->s6_addr + 12, 4);
            return 4;
        }
        memcpy(key, a->s6_addr, 16);
        return 16;
    }
    return 0;
}

static unsigned key_bucket(const unsigned char *key, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % CLIENT_BUCKETS;
}

/* conns_lock held. */
static struct client_count *client_find(struct larder__http *h, const unsigned char *key,
                                        size_t len, bool create);
static void client_put(struct larder__http *h, struct client_count *c);

/* ---- request memory ------------------------------------------------------------------------ */

/* Takes n more bytes of request_memory for r; false when they do not fit. */
static bool memory_take(struct larder__request *r, uint64_t n);
static void memory_give_back(struct larder__request *r);

/* ---- request life ---------------------------------------------------------------------- */

static void conn_phase(struct larder__http *h, struct larder__conn *c, enum conn_phase phase);
/* A request holds a reference to its connection's entry, so that it does not depend on
 * the order in which MHD reports the request completed and the connection closed. */
static struct larder__conn *conn_ref(struct larder__http *h, struct larder__conn *c);
static void conn_unref(struct larder__http *h, struct larder__conn *c);

/* True when the request target as sent (before %-decoding, which would cut the path at a
 * %00) has a control character in its path, or a NUL in its query. */
static bool target_bad(const char *uri)
{
    bool query = false;
    for (const unsigned char *p = (const unsigned char *)uri; *p; p++) {
        unsigned v = *p;
        if (v == '?')
            query = true;
        if (v == '%' && hex_value(p[1]) >= 0 && hex_value(p[2]) >= 0) {
            v = (unsigned)(hex_value(p[1]) * 16 + hex_value(p[2]));
            p += 2;
        }
        if (query ? v == 0 : v < 0x20 || v == 0x7F)
            return true;
    }
    return false;
}

/* MHD's URI log callback: the request object is made here, where the raw target is seen.
 * MHD hands it to every later call and to on_completed. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct larder__http *h = cls;
    struct larder__request *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->d = h->d;
    r->http = h;
    r->conn = conn;
    r->bad_path = target_bad(uri);
    r->target = strdup(uri);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    r->cs = ci ? conn_ref(h, ci->socket_context) : NULL;
    return r;
}

struct server_limits {
    uint64_t max_body, request_memory;
    int64_t body_timeout_ms;
};

static void server_limits(struct larder__daemon *d, struct server_limits *ret)
{
    pthread_rwlock_rdlock(&d->conf_lock);
    ret->max_body = d->conf->max_body;
    ret->request_memory = d->conf->request_memory;
    ret->body_timeout_ms = d->conf->body_timeout_ms;
    pthread_rwlock_unlock(&d->conf_lock);
}

static uint64_t max_body(struct larder__daemon *d)
{
    pthread_rwlock_rdlock(&d->conf_lock);
    uint64_t n = d->conf->max_body;
    pthread_rwlock_unlock(&d->conf_lock);
    return n;
}

/* Headers counted by count_header. */
struct header_counts {
    unsigned content_length, transfer_encoding, authorization, host, content_type;
};

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    struct header_counts *n = cls;
    if (strcasecmp(key, "Content-Length") == 0)
        n->content_length++;
    else if (strcasecmp(key, "Transfer-Encoding") == 0)
        n->transfer_encoding++;
    else if (strcasecmp(key, "Authorization") == 0)
        n->authorization++;
    else if (strcasecmp(key, "Host") == 0)
        n->host++;
    else if (strcasecmp(key, "Content-Type") == 0)
        n->content_type++;
    return MHD_YES;
}

/* Headers that two parties could read differently: given twice (which one counts?), a
 * length beside a transfer coding, an HTTP/1.1 request without Host. False with a 400
 * reply: no choice is made for the client. */
static bool headers_ok(struct larder__request *r, const char *version)
{
    struct header_counts n = {0};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, count_header, &n);
    const char *twice = n.content_length > 1  ? "Content-Length"
                        : n.authorization > 1 ? "Authorization"
                        : n.host > 1          ? "Host"
                        : n.content_type > 1  ? "Content-Type"
                                              : NULL;
    if (twice)
        larder__reply_error(r, 400, "bad_header", "the request has more than one %s header",
                            twice);
    else if (n.content_length && n.transfer_encoding)
        larder__reply_error(r, 400, "bad_header",
                            "the request has both Content-Length and Transfer-Encoding");
    else if (!n.host && version && strcasecmp(version, MHD_HTTP_VERSION_1_1) == 0)
        larder__reply_error(r, 400, "bad_header", "an HTTP/1.1 request needs a Host header");
    else
        return true;
    return false;
}

/* Drops what r holds of its body (it will not be used) and its request memory. */
static void drop_body(struct larder__request *r)
{
    free(r->body);
    r->body = NULL;
    r->body_cap = 0;
    memory_give_back(r);
}

/* Checks Content-Length before any byte of the body arrives, takes its request memory and
 * sizes the buffer. */
static void early_checks(struct larder__request *r, uint64_t limit)
{
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
    if (n > limit) {
        r->too_big = true;
        return;
    }
    if (n && !memory_take(r, n + 1)) {
        r->no_memory = true;
        return;
    }
    if (n && (r->body = malloc((size_t)n + 1)))
        r->body_cap = (size_t)n + 1;
    else
        memory_give_back(r);
}

static int append_body(struct larder__request *r, const char *data, size_t n, uint64_t limit)
{
    if (!r->too_big && !r->no_memory && r->body_len + n > limit) {
        r->too_big = true;
        drop_body(r);
    }
    if (r->too_big || r->no_memory)
        return 0;
    if (r->body_len + n + 1 > r->body_cap) {
        size_t need = r->body_len + n + 1, cap = need * 2;
        if (!memory_take(r, cap - r->body_cap) &&
            (cap = need, !memory_take(r, cap - r->body_cap))) {
            r->no_memory = true; /* answered once the body is over; its bytes are dropped */
            drop_body(r);
            return 0;
        }
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
    MHD_add_response_header(r->resp, "X-Larder-Node", r->d->node_name);
    enum MHD_Result ok = MHD_queue_response(r->conn, r->status, r->resp);
    MHD_destroy_response(r->resp);
    r->resp = NULL;
    return ok;
}

static void reply_too_big(struct larder__request *r, uint64_t limit)
{
    larder__reply_error(r, 413, "body_too_large", "the request body is larger than %llu bytes",
                        (unsigned long long)limit);
}

static void reply_no_memory(struct larder__request *r)
{
    atomic_fetch_add(&r->http->memory_refused, 1);
    larder__reply_error(r, 503, "request_memory",
                        "the bodies of the requests in flight take the server's request "
                        "memory (%llu bytes): try again shortly",
                        (unsigned long long)r->memory_limit);
    larder__reply_header(r, "Retry-After", "1");
}

/* The first call, with the headers complete: checks what can be checked before the body. */
static enum MHD_Result start_request(struct larder__http *h, struct larder__request *r,
                                     const char *url, const char *method, const char *version)
{
    struct server_limits lim;
    server_limits(h->d, &lim);
    r->started = true;
    r->url = url;
    r->method = method;
    r->t_start = larder__now();
    r->memory_limit = lim.request_memory;
    r->body_deadline = r->t_start + (double)lim.body_timeout_ms / 1000.0;
    r->content_type = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type");
    conn_phase(h, r->cs, CONN_BODY);
    if (r->bad_path) {
        larder__reply_error(r, 400, "bad_path",
                            "the request path holds a control character (or its query a NUL, "
                            "%%00)");
    } else if (headers_ok(r, version)) {
        early_checks(r, lim.max_body);
        if (r->too_big)
            reply_too_big(r, lim.max_body);
        else if (r->no_memory)
            reply_no_memory(r);
        else
            return MHD_YES;
    }
    r->dispatched = true;
    conn_phase(h, r->cs, CONN_SERVING);
    return queue_reply(r);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **ctx)
{
    struct larder__http *h = cls;
    struct larder__request *r = *ctx;
    if (!r) /* on_uri ran out of memory */
        return MHD_NO;
    if (!r->started)
        return start_request(h, r, url, method, version);
    if (r->suspended) { /* resumed: the reply is ready */
        r->suspended = false;
        return queue_reply(r);
    }
    if (*upload_size) {
        if (larder__now() > r->body_deadline) {
            pthread_mutex_lock(&h->conns_lock);
            h->stats.body_timeouts++;
            pthread_mutex_unlock(&h->conns_lock);
            return MHD_NO;
        }
        uint64_t limit = max_body(h->d);
        if (append_body(r, upload_data, *upload_size, limit) < 0)
            return MHD_NO;
        if (r->too_big || r->no_memory)
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
    conn_phase(h, r->cs, CONN_SERVING);
    if (r->too_big)
        reply_too_big(r, max_body(h->d));
    else if (r->no_memory)
        reply_no_memory(r);
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
    /* A keep-alive connection waits for its next request's headers from now on. */
    conn_phase(h, r->cs, CONN_HEADERS);
    conn_unref(h, r->cs);
    if (r->started) { /* else its headers never came: nothing to count or log */
        double secs = larder__now() - r->t_start;
        count_request(h, r, secs);
        log_request(r, secs * 1000.0, toe);
    }
    if (r->inflight)
        atomic_fetch_sub(&r->d->inflight, 1);
    *ctx = NULL;
    request_unref(r);
}

/* ---- connection entries, limits and the sweeper ------------------------------------------ */

static struct client_count *client_find(struct larder__http *h, const unsigned char *key,
                                        size_t len, bool create)
{
    unsigned b = key_bucket(key, len);
    for (struct client_count *c = h->clients[b]; c; c = c->next)
        if (c->len == len && memcmp(c->addr, key, len) == 0)
            return c;
    struct client_count *c = create ? calloc(1, sizeof *c) : NULL;
    if (c) {
        memcpy(c->addr, key, len);
        c->len = len;
        c->next = h->clients[b];
        h->clients[b] = c;
    }
    return c;
}

static void client_put(struct larder__http *h, struct client_count *c)
{
    if (--c->n)
        return;
    for (struct client_count **pp = &h->clients[key_bucket(c->addr, c->len)]; *pp;
         pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    free(c);
}

static struct larder__conn *conn_ref(struct larder__http *h, struct larder__conn *c)
{
    if (!c)
        return NULL;
    pthread_mutex_lock(&h->conns_lock);
    c->refs++;
    pthread_mutex_unlock(&h->conns_lock);
    return c;
}

static void conn_unref(struct larder__http *h, struct larder__conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&h->conns_lock);
    bool last = --c->refs == 0;
    pthread_mutex_unlock(&h->conns_lock);
    if (last)
        free(c);
}

static void conn_phase(struct larder__http *h, struct larder__conn *c, enum conn_phase phase)
{
    if (!c)
        return;
    double now = larder__now();
    pthread_mutex_lock(&h->conns_lock);
    c->phase = phase;
    c->since = now;
    pthread_mutex_unlock(&h->conns_lock);
}

struct conn_limits {
    unsigned total, per_client;
};

static void conn_limits(struct larder__http *h, struct conn_limits *ret)
{
    struct larder__daemon *d = h->d;
    pthread_rwlock_rdlock(&d->conf_lock);
    ret->total = d->conf->max_connections;
    ret->per_client = d->conf->max_connections_per_client;
    pthread_rwlock_unlock(&d->conf_lock);
    if (ret->total > h->conn_cap)
        ret->total = h->conn_cap;
}

/* MHD's accept policy: refuses a connection over a limit (MHD closes it at once). */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    struct larder__http *h = cls;
    struct conn_limits lim;
    unsigned char key[16];
    size_t klen = client_key(addr, addrlen, key);
    conn_limits(h, &lim);
    pthread_mutex_lock(&h->conns_lock);
    const struct client_count *c = klen ? client_find(h, key, klen, false) : NULL;
    bool ok = false;
    if (h->n_conns >= lim.total)
        h->stats.refused_total++;
    else if (c && c->n >= lim.per_client)
        h->stats.refused_client++;
    else
        ok = true;
    pthread_mutex_unlock(&h->conns_lock);
    return ok ? MHD_YES : MHD_NO;
}

/* MHD's connection notifications: an entry per open connection. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct larder__http *h = cls;
    struct larder__conn *c = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        if (!(c = calloc(1, sizeof *c)))
            return;
        const union MHD_ConnectionInfo *fd =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *addr =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        unsigned char key[16];
        size_t klen = addr ? client_key(addr->client_addr, sizeof(struct sockaddr_in6), key) : 0;
        struct conn_limits lim;
        conn_limits(h, &lim);
        c->fd = fd ? fd->connect_fd : -1;
        c->phase = CONN_HEADERS;
        c->since = larder__now();
        c->refs = 1;
        pthread_mutex_lock(&h->conns_lock);
        if (klen && (c->client = client_find(h, key, klen, true)))
            c->client->n++;
        c->next = h->conns;
        if (h->conns)
            h->conns->prev = c;
        h->conns = c;
        h->n_conns++;
        /* Two threads may both have let a connection in at the limit's edge: the later
         * one to count goes at once, so the limits hold exactly. */
        bool over_total = h->n_conns > lim.total;
        if ((over_total || (c->client && c->client->n > lim.per_client)) && c->fd >= 0) {
            c->shut = true;
            if (over_total)
                h->stats.refused_total++;
            else
                h->stats.refused_client++;
            shutdown(c->fd, SHUT_RDWR);
        }
        pthread_mutex_unlock(&h->conns_lock);
        *socket_context = c;
        return;
    }
    if (code != MHD_CONNECTION_NOTIFY_CLOSED || !c)
        return;
    pthread_mutex_lock(&h->conns_lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->n_conns--;
    if (c->client)
        client_put(h, c->client);
    c->client = NULL;
    c->fd = -1; /* unlisted: its fd is not ours any more */
    pthread_mutex_unlock(&h->conns_lock);
    conn_unref(h, c);
    *socket_context = NULL;
}

/* Shuts down the connections whose headers or body are late. MHD closes a connection only
 * after it has reported it closed, which takes conns_lock: the fds here are still theirs. */
static void sweep(struct larder__http *h)
{
    struct larder__daemon *d = h->d;
    pthread_rwlock_rdlock(&d->conf_lock);
    double header = (double)d->conf->header_timeout_ms / 1000.0;
    double body = (double)d->conf->body_timeout_ms / 1000.0;
    pthread_rwlock_unlock(&d->conf_lock);
    double now = larder__now();
    pthread_mutex_lock(&h->conns_lock);
    for (struct larder__conn *c = h->conns; c; c = c->next) {
        bool late = c->phase == CONN_HEADERS ? now - c->since > header
                    : c->phase == CONN_BODY  ? now - c->since > body
                                             : false;
        if (!late || c->shut || c->fd < 0)
            continue;
        c->shut = true;
        if (c->phase == CONN_HEADERS)
            h->stats.header_timeouts++;
        else
            h->stats.body_timeouts++;
        shutdown(c->fd, SHUT_RDWR);
    }
    pthread_mutex_unlock(&h->conns_lock);
}

static void *sweeper_main(void *arg)
{
    struct larder__http *h = arg;
    pthread_mutex_lock(&h->sweep_lock);
    while (!h->sweep_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += SWEEP_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->sweep_cond, &h->sweep_lock, &ts);
        if (h->sweep_stop)
            break;
        pthread_mutex_unlock(&h->sweep_lock);
        sweep(h);
        if (h->d->events)
            larder__events_reap(h->d->events);
        pthread_mutex_lock(&h->sweep_lock);
    }
    pthread_mutex_unlock(&h->sweep_lock);
    return NULL;
}

static bool memory_take(struct larder__request *r, uint64_t n)
{
    atomic_ullong *in_flight = &r->http->memory_in_flight;
    unsigned long long cur = atomic_load(in_flight);
    do {
        if (n > r->memory_limit || cur > r->memory_limit - n)
            return false;
    } while (!atomic_compare_exchange_weak(in_flight, &cur, cur + n));
    r->reserved += n;
    return true;
}

static void memory_give_back(struct larder__request *r)
{
    if (r->reserved)
        atomic_fetch_sub(&r->http->memory_in_flight, r->reserved);
    r->reserved = 0;
}

void larder__http_request_memory(struct larder__http *h, struct larder__request_memory *ret)
{
    struct larder__daemon *d = h->d;
    pthread_rwlock_rdlock(&d->conf_lock);
    ret->limit_bytes = d->conf->request_memory;
    pthread_rwlock_unlock(&d->conf_lock);
    ret->in_flight_bytes = atomic_load(&h->memory_in_flight);
    ret->refused = atomic_load(&h->memory_refused);
}

void larder__http_metrics_text(struct larder__http *h, struct larder__text *t)
{
    struct conn_limits lim;
    struct larder__request_memory mem;
    conn_limits(h, &lim);
    larder__http_request_memory(h, &mem);
    pthread_mutex_lock(&h->conns_lock);
    unsigned open = h->n_conns;
    struct conn_stats st = h->stats;
    pthread_mutex_unlock(&h->conns_lock);
    put(t, "# HELP larder_http_connections open HTTP connections\n"
           "# TYPE larder_http_connections gauge\nlarder_http_connections %u\n", open);
    put(t, "# HELP larder_http_connections_max connections allowed at once (max_connections)\n"
           "# TYPE larder_http_connections_max gauge\nlarder_http_connections_max %u\n",
        lim.total);
    put(t, "# HELP larder_http_connections_refused_total connections closed at once, over a "
           "limit\n# TYPE larder_http_connections_refused_total counter\n"
           "larder_http_connections_refused_total{limit=\"max_connections\"} %llu\n"
           "larder_http_connections_refused_total{limit=\"max_connections_per_client\"} %llu\n",
        (unsigned long long)st.refused_total, (unsigned long long)st.refused_client);
    put(t, "# HELP larder_http_read_timeouts_total connections closed because a request's "
           "headers or body came too late\n# TYPE larder_http_read_timeouts_total counter\n"
           "larder_http_read_timeouts_total{part=\"headers\"} %llu\n"
           "larder_http_read_timeouts_total{part=\"body\"} %llu\n",
        (unsigned long long)st.header_timeouts, (unsigned long long)st.body_timeouts);
    put(t, "# HELP larder_request_memory_bytes body bytes buffered for requests in flight\n"
           "# TYPE larder_request_memory_bytes gauge\nlarder_request_memory_bytes %llu\n",
        (unsigned long long)mem.in_flight_bytes);
    put(t, "# HELP larder_request_memory_limit_bytes request_memory\n"
           "# TYPE larder_request_memory_limit_bytes gauge\n"
           "larder_request_memory_limit_bytes %llu\n",
        (unsigned long long)mem.limit_bytes);
    put(t, "# HELP larder_request_memory_refused_total requests refused for request memory\n"
           "# TYPE larder_request_memory_refused_total counter\n"
           "larder_request_memory_refused_total %llu\n",
        (unsigned long long)mem.refused);
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

/* Connections the open-file limit leaves room for, once its soft limit is raised to the
 * hard one; the rest of the descriptors are kept for models, plugins, pipes and logs. */
static unsigned connection_room(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 768;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < rl.rlim_max) {
        struct rlimit up = {rl.rlim_max == RLIM_INFINITY ? 1u << 20 : rl.rlim_max, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl.rlim_cur = up.rlim_cur;
    }
    rlim_t n = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 20) ? 1u << 20 : rl.rlim_cur;
    rlim_t keep = n > 1024 ? 256 : n / 4;
    return (unsigned)(n - keep);
}

static void stop_sweeper(struct larder__http *h)
{
    pthread_mutex_lock(&h->sweep_lock);
    h->sweep_stop = true;
    pthread_cond_signal(&h->sweep_cond);
    pthread_mutex_unlock(&h->sweep_lock);
    if (h->sweeper_running)
        pthread_join(h->sweeper, NULL);
    h->sweeper_running = false;
}

static struct larder__http *http_free(struct larder__http *h)
{
    for (size_t b = 0; b < CLIENT_BUCKETS; b++) {
        while (h->clients[b]) {
            struct client_count *c = h->clients[b];
            h->clients[b] = c->next;
            free(c);
        }
    }
    pthread_cond_destroy(&h->sweep_cond);
    pthread_mutex_destroy(&h->sweep_lock);
    pthread_mutex_destroy(&h->conns_lock);
    pthread_mutex_destroy(&h->owned.lock);
    pthread_mutex_destroy(&h->lock);
    free(h);
    return NULL;
}

static struct larder__http *http_new(struct larder__daemon *d)
{
    struct larder__http *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->d = d;
    h->quiesced_fd = -1;
    pthread_mutex_init(&h->lock, NULL);
    pthread_mutex_init(&h->owned.lock, NULL);
    pthread_mutex_init(&h->conns_lock, NULL);
    pthread_mutex_init(&h->sweep_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->sweep_cond, &ca);
    pthread_condattr_destroy(&ca);
    return h;
}

int larder__http_start(struct larder__daemon *d, const char *host, unsigned port,
                       unsigned threads, struct larder__http **ret_http, char *err,
                       size_t errlen)
{
    struct sockaddr_storage ss = {0};
    int r = resolve(host, port, &ss, err, errlen);
    if (r < 0)
        return r;
    struct larder__http *h = http_new(d);
    if (!h)
        return -ENOMEM;
    larder__streams_open();
    h->conn_cap = connection_room();
    struct conn_limits lim;
    conn_limits(h, &lim);
    if (lim.total < d->conf->max_connections)
        larder__log(LARDER__LOG_WARN, "max_connections lowered to the open-file limit",
                    json_pack("{s:i,s:i}", "max_connections", (int)d->conf->max_connections,
                              "allowed", (int)lim.total));
    /* poll, not epoll: with a thread pool, MHD's quiesce (the start of every drain) and a
     * worker thread that is awake at that moment both remove the listening socket from
     * that worker's epoll set, and the loser aborts the process ("Failed to remove listen
     * FD from epoll set"). Each thread polls only its own share of the connections. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    if (threads == 0)
        threads = 2;
    /* MHD's own limit is split between its threads and only stops accepting (connections
     * then wait unseen in the backlog): set above ours, which refuses them at once. */
    unsigned mhd_limit = h->conn_cap < UINT_MAX / threads ? h->conn_cap * threads : UINT_MAX;
    h->mhd = MHD_start_daemon(
        flags, (uint16_t)port, on_accept, h, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        h, MHD_OPTION_SOCK_ADDR, &ss, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_URI_LOG_CALLBACK, on_uri, h,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT, mhd_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_END);
    if (!h->mhd) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", host, port, strerror(errno));
        http_free(h);
        return -EADDRNOTAVAIL;
    }
    if (pthread_create(&h->sweeper, NULL, sweeper_main, h) != 0) {
        snprintf(err, errlen, "cannot start the connection sweeper: %s", strerror(errno));
        MHD_stop_daemon(h->mhd);
        http_free(h);
        return -EAGAIN;
    }
    h->sweeper_running = true;
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
    stop_sweeper(h);
    /* MHD aborts the process when it stops with a connection still suspended. */
    larder__http_answer_all(h);
    larder__streams_close();
    MHD_stop_daemon(h->mhd);
    if (h->quiesced_fd >= 0)
        close(h->quiesced_fd);
    if (larder__http_owners(h)) /* they still take owned.lock when they return */
        return NULL;
    return http_free(h);
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

int larder__request_socket_dup(struct larder__request *r, bool *ret_answered)
{
    struct larder__owned *o = &r->http->owned;
    int fd = -1;
    if (r->owned)
        pthread_mutex_lock(&o->lock);
    /* Once the shutdown has answered r, MHD may have closed and freed its connection. */
    *ret_answered = r->owned && r->taken;
    if (!*ret_answered) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        fd = ci ? fcntl((int)ci->connect_fd, F_DUPFD_CLOEXEC, 0) : -1;
    }
    if (r->owned)
        pthread_mutex_unlock(&o->lock);
    return fd;
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
    memory_give_back(r);
    free(r->model);
    free(r->target);
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

bool larder__request_memory_take(struct larder__request *r, uint64_t bytes)
{
    if (memory_take(r, bytes))
        return true;
    atomic_fetch_add(&r->http->memory_refused, 1);
    return false;
}
