/* larderd configuration file parsing and validation (see config.h). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "cmdline.h"
#include "events.h"
#include "larder/larder.h"

#define MODEL_PREFIX "model."
/* inih keeps 50 bytes of a section name and of a key (49 characters); longer ones are
 * refused rather than silently cut. */
#define INI_NAME_MAX 49
#define MAX_NAME (INI_NAME_MAX - 6) /* after "model." */
#define MAX_LINE 196                /* characters of a line, without its newline */
#define LINE_BUF 512                /* bytes of a line read, before it is known too long */
#define MAX_ERRORS 100              /* then reading and checking stop */
#define MAX_KEYS 24                 /* of any one of larderd's sections */

enum section_kind {
    SEC_NONE,   /* before the first section header */
    SEC_SKIP,   /* a section already reported as bad: its keys are ignored */
    SEC_SERVER, SEC_MEMORY, SEC_MODEL
};

/* larderd's keys of one section: where each was given (0 = not given) and which parsed. */
struct keyset {
    unsigned line[MAX_KEYS];
    unsigned long ok;
};

struct error_rec {
    unsigned line;
    size_t seq;                   /* order found, among errors of the same line */
    char *section, *key, *message;
};

struct parser {
    struct larder__config *c;
    FILE *f;
    char buf[LINE_BUF];           /* the raw line */
    unsigned line;                /* the line inih is handling */
    bool stop;                    /* read no further: fatal error or too many errors */
    bool oom;
    int rc;                       /* first error code: -EINVAL, a read errno, -ENOMEM */
    struct error_rec *errs;
    size_t n_errs, cap_errs;
    char section[INI_NAME_MAX + 1]; /* the current section's name */
    enum section_kind kind;
    struct larder__model_conf *model; /* SEC_MODEL: the model being filled */
    struct keyset *ks;            /* the current section's keys */
    struct keyset server_ks;      /* [server] and [memory] may repeat; their keys may not */
    struct keyset memory_ks;
    struct keyset model_ks;
    size_t cap_models;
    size_t cap_opts;              /* of the current model's options */
    const char *hint;             /* set by a value parser: explains its error */
    char ext_hint[320];           /* the text p->hint points at for external keys */
};

static void out_of_memory(struct parser *p)
{
    p->oom = p->stop = true;
    p->rc = -ENOMEM;
}

static char *dup_or_null(const char *s, bool *failed)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *failed = true;
    return d;
}

static void add_error_v(struct parser *p, int rc, unsigned line, const char *section,
                        const char *key, const char *fmt, va_list ap)
{
    if (p->oom || p->n_errs > MAX_ERRORS)
        return;
    if (!p->rc)
        p->rc = rc;
    if (p->n_errs == p->cap_errs) {
        size_t cap = p->cap_errs ? p->cap_errs * 2 : 8;
        struct error_rec *e = realloc(p->errs, cap * sizeof *e);
        if (!e) {
            out_of_memory(p);
            return;
        }
        p->errs = e;
        p->cap_errs = cap;
    }
    char *msg = NULL;
    bool failed = false;
    if (p->n_errs == MAX_ERRORS) {
        msg = strdup("too many errors: stopped here");
        section = key = NULL;
        p->stop = true;
    } else if (vasprintf(&msg, fmt, ap) < 0) {
        msg = NULL;
    }
    struct error_rec *e = &p->errs[p->n_errs];
    *e = (struct error_rec){.line = line, .seq = p->n_errs, .message = msg,
                            .section = dup_or_null(section, &failed),
                            .key = dup_or_null(key, &failed)};
    p->n_errs++;
    if (!msg || failed)
        out_of_memory(p);
}

/* An error about key (NULL: about the line) of the current section, at line. */
static void fail_at(struct parser *p, unsigned line, const char *section, const char *key,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void fail_at(struct parser *p, unsigned line, const char *section, const char *key,
                    const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error_v(p, -EINVAL, line, section, key, fmt, ap);
    va_end(ap);
}

/* An error about key (NULL: about the line) of the current section at the current line. */
static void fail(struct parser *p, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct parser *p, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const char *section = p->kind >= SEC_SERVER ? p->section : NULL;
    add_error_v(p, -EINVAL, p->line, section, key, fmt, ap);
    va_end(ap);
}

/* An error about the whole file (cannot open or read it): line 0, code rc. */
static void fail_file(struct parser *p, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail_file(struct parser *p, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error_v(p, rc, 0, NULL, NULL, fmt, ap);
    va_end(ap);
    if (!p->oom)
        p->rc = rc; /* it, more than errors in the lines before it */
    p->stop = true;
}

/* ---- did you mean --------------------------------------------------------------------- */

#define SUGGEST_MAX 64

/* Optimal string alignment distance, letters compared case-insensitively; any value
 * above limit once it is sure to be above it (a row's least value never decreases). */
static unsigned edit_distance(const char *a, size_t la, const char *b, size_t lb,
                              unsigned limit)
{
    unsigned rows[3][SUGGEST_MAX + 1];
    unsigned *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (unsigned)i;
        unsigned least = cur[0];
        int ca = tolower((unsigned char)a[i - 1]);
        for (size_t j = 1; j <= lb; j++) {
            int cb = tolower((unsigned char)b[j - 1]);
            unsigned d = prev[j - 1] + (ca != cb);
            if (prev[j] + 1 < d)
                d = prev[j] + 1;
            if (cur[j - 1] + 1 < d)
                d = cur[j - 1] + 1;
            if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == cb && prev2[j - 2] + 1 < d)
                d = prev2[j - 2] + 1;
            cur[j] = d;
            if (d < least)
                least = d;
        }
        if (least > limit)
            return limit + 1;
        unsigned *t = prev2;
        prev2 = prev;
        prev = cur;
        cur = t;
    }
    return prev[lb];
}

/* The nearest candidate of several NULL-terminated lists (see larder__config_suggest):
 * at most 2 edits, and fewer than half the key's length. */
static const char *suggest_in(const char *key, const char *const *const *lists, size_t n)
{
    if (!key)
        return NULL;
    size_t la = strlen(key);
    if (la > SUGGEST_MAX || la == 0)
        return NULL;
    unsigned most = la < 5 ? (unsigned)(la - 1) / 2 : 2; /* 2 * d < la, d <= 2 */
    const char *best = NULL;
    unsigned best_d = most + 1;
    for (size_t l = 0; l < n && best_d; l++) {
        for (const char *const *c = lists[l]; c && *c && best_d; c++) {
            size_t lb = strlen(*c);
            if (lb > SUGGEST_MAX || (la > lb ? la - lb : lb - la) >= best_d)
                continue;
            unsigned d = edit_distance(key, la, *c, lb, best_d - 1);
            if (d < best_d) {
                best_d = d;
                best = *c;
            }
        }
    }
    return best;
}

const char *larder__config_suggest(const char *key, const char *const *candidates)
{
    return suggest_in(key, &candidates, 1);
}

/* ---- value parsers ------------------------------------------------------------------ */

int larder__parse_bool(const char *s, bool *ret_value)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *ret_value = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *ret_value = false;
            return 0;
        }
    }
    return -EINVAL;
}

int larder__parse_duration(const char *s, int64_t *ret_ms)
{
    static const struct { const char *unit; double ms; } units[] = {
        {"ms", 1}, {"s", 1000}, {"", 1000}, {"m", 60000}, {"min", 60000},
        {"h", 3600000}, {"d", 86400000},
    };
    if (strcmp(s, "never") == 0 || strcmp(s, "-1") == 0) {
        *ret_ms = -1;
        return 0;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    /* Plain decimals only: strtod also reads hexadecimal and exponents ("0x10", "1e3") */
    if (end != s + strspn(s, "0123456789."))
        return -EINVAL;
    if (end == s || errno || !isfinite(v) || v < 0 || !isdigit((unsigned char)*s))
        return errno == ERANGE ? -ERANGE : -EINVAL;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].unit) != 0)
            continue;
        double ms = v * units[i].ms;
        if (ms > (double)INT64_MAX / 2)
            return -ERANGE;
        *ret_ms = (int64_t)llround(ms);
        return 0;
    }
    return -EINVAL;
}

static int parse_uint(const char *s, unsigned max, unsigned *ret)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    unsigned long v = strtoul(s, &end, 10);
    if (*end)
        return -EINVAL;
    if (errno || v > max)
        return -ERANGE;
    *ret = (unsigned)v;
    return 0;
}

static int parse_int(const char *s, int *ret)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end)
        return -EINVAL;
    if (errno || v > INT_MAX || v < INT_MIN)
        return -ERANGE;
    *ret = (int)v;
    return 0;
}

/* "75%" or a fraction in (0, 1]. */
static int parse_fraction(const char *s, double *ret)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v))
        return -EINVAL;
    if (strcmp(end, "%") == 0)
        v /= 100.0;
    else if (*end)
        return -EINVAL;
    if (v <= 0 || v > 1)
        return -ERANGE;
    *ret = v;
    return 0;
}

int larder__parse_listen(const char *s, char **ret_host, unsigned *ret_port)
{
    const char *colon = NULL;
    char *host;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        host = strndup(s + 1, (size_t)(close - s - 1));
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon && colon > s)
            host = strndup(s, (size_t)(colon - s));
        else
            host = strdup("127.0.0.1");
    }
    if (!host)
        return -ENOMEM;
    unsigned port;
    if (parse_uint(colon ? colon + 1 : s, 65535, &port) < 0 || !*host) {
        free(host);
        return -EINVAL;
    }
    *ret_host = host;
    *ret_port = port;
    return 0;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
            return false;
    return true;
}

static char *resolve_path(const struct larder__config *c, const char *v)
{
    if (v[0] == '/' || !c->dir)
        return strdup(v);
    size_t nd = strlen(c->dir), nv = strlen(v);
    char *out = malloc(nd + nv + 2);
    if (!out)
        return NULL;
    memcpy(out, c->dir, nd);
    out[nd] = '/';
    memcpy(out + nd + 1, v, nv + 1);
    return out;
}

/* ---- [server] and [memory] ------------------------------------------------------------ */

enum server_key {
    SK_LISTEN, SK_ADMIN_TOKENS, SK_INFER_TOKENS, SK_BACKEND_DIR, SK_MAX_BODY,
    SK_REQUEST_TIMEOUT, SK_THREADS, SK_HTTP_THREADS, SK_DRAIN_TIMEOUT, SK_LOG_FORMAT,
    SK_LOG_LEVEL, SK_STATE_DIR, SK_EVENTS_QUEUE, SK_ALLOW_EMPTY, SK_MAX_CONNECTIONS,
    SK_MAX_CONNECTIONS_PER_CLIENT, SK_HEADER_TIMEOUT, SK_BODY_TIMEOUT, SK_REQUEST_MEMORY, SK_NODE_NAME,
    SK_N
};
static const char *const server_keys[SK_N + 1] = {
    "listen", "admin_tokens", "infer_tokens", "backend_dir", "max_body", "request_timeout",
    "threads", "http_threads", "drain_timeout", "log_format", "log_level", "state_dir",
    "events_queue", "allow_empty", "max_connections", "max_connections_per_client",
    "header_timeout", "body_timeout", "request_memory", "node_name",
};

enum memory_key {
    MK_BUDGET, MK_POLICY, MK_TTL, MK_LOADER_THREADS, MK_ADMISSION_TIMEOUT,
    MK_HIGH_WATERMARK, MK_LOW_WATERMARK, MK_PSI_TRIGGER, MK_WATCH_PRESSURE, MK_HISTORY,
    MK_GPU_BUDGET, MK_COOLDOWN, MK_N
};
static const char *const memory_keys[MK_N + 1] = {
    "budget", "policy", "ttl", "loader_threads", "admission_timeout",
    "high_watermark", "low_watermark", "psi_trigger", "watch_pressure", "history",
    "gpu_budget", "cooldown",
};

static int key_index(const char *const *keys, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(keys[i], key) == 0)
            return i;
    return -1;
}

static int set_path(struct parser *p, char **slot, const char *v)
{
    char *s = resolve_path(p->c, v);
    if (!s)
        return -ENOMEM;
    free(*slot);
    *slot = s;
    return 0;
}

static int positive_duration(const char *v, int64_t *ret)
{
    int64_t ms;
    int r = larder__parse_duration(v, &ms);
    if (r < 0)
        return r;
    if (ms <= 0)
        return -ERANGE;
    *ret = ms;
    return 0;
}

/* A node name goes into a reply header and a Prometheus label: 1 to 64 of [A-Za-z0-9._:-]. */
bool larder__node_name_valid(const char *v)
{
    size_t n = strlen(v);
    return n >= 1 && n <= LARDER__NODE_NAME_MAX &&
           strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") == n;
}

static int set_node_name(struct larder__config *c, const char *v)
{
    if (!larder__node_name_valid(v))
        return -EINVAL;
    char *s = strdup(v);
    if (!s)
        return -ENOMEM;
    free(c->node_name);
    c->node_name = s;
    return 0;
}

static int server_value(struct parser *p, int k, const char *v)
{
    struct larder__config *c = p->c;
    switch (k) {
    case SK_LISTEN:
        free(c->listen_host);
        c->listen_host = NULL;
        return larder__parse_listen(v, &c->listen_host, &c->listen_port);
    case SK_ADMIN_TOKENS:
        c->admin_tokens_line = p->line;
        return set_path(p, &c->admin_tokens, v);
    case SK_INFER_TOKENS:
        c->infer_tokens_line = p->line;
        return set_path(p, &c->infer_tokens, v);
    case SK_BACKEND_DIR: return set_path(p, &c->backend_dir, v);
    case SK_STATE_DIR: return set_path(p, &c->state_dir, v);
    case SK_MAX_BODY: {
        int r = larder_parse_size(v, &c->max_body);
        return r < 0 ? r : c->max_body == 0 ? -ERANGE : 0;
    }
    case SK_EVENTS_QUEUE: {
        int r = larder_parse_size(v, &c->events_queue);
        return r < 0 ? r : c->events_queue < 1024 || c->events_queue > (1ull << 30) ? -ERANGE : 0;
    }
    case SK_MAX_CONNECTIONS: {
        int r = parse_uint(v, 1u << 20, &c->max_connections);
        return r < 0 ? r : c->max_connections == 0 ? -ERANGE : 0;
    }
    case SK_MAX_CONNECTIONS_PER_CLIENT: {
        int r = parse_uint(v, 1u << 20, &c->max_connections_per_client);
        return r < 0 ? r : c->max_connections_per_client == 0 ? -ERANGE : 0;
    }
    case SK_REQUEST_MEMORY: {
        int r = larder_parse_size(v, &c->request_memory);
        return r < 0 ? r : c->request_memory == 0 ? -ERANGE : 0;
    }
    case SK_HEADER_TIMEOUT: return positive_duration(v, &c->header_timeout_ms);
    case SK_BODY_TIMEOUT: return positive_duration(v, &c->body_timeout_ms);
    case SK_REQUEST_TIMEOUT: return positive_duration(v, &c->request_timeout_ms);
    case SK_DRAIN_TIMEOUT: return positive_duration(v, &c->drain_timeout_ms);
    case SK_THREADS: return parse_uint(v, 256, &c->threads);
    case SK_HTTP_THREADS: return parse_uint(v, 64, &c->http_threads);
    case SK_LOG_FORMAT: return larder__log_parse_format(v, &c->log_format);
    case SK_LOG_LEVEL: return larder__log_parse_level(v, &c->log_level);
    case SK_ALLOW_EMPTY: return larder__parse_bool(v, &c->allow_empty);
    case SK_NODE_NAME:
        p->hint = "1 to 64 letters, digits, '.', '_', ':' or '-'";
        return set_node_name(c, v);
    }
    return -EINVAL;
}

static int parse_psi(const char *v)
{
    if (strcmp(v, "off") == 0)
        return 0;
    char kind[8];
    unsigned long stall, window;
    int used = 0;
    if (sscanf(v, "%7s %lu %lu%n", kind, &stall, &window, &used) != 3 || v[used])
        return -EINVAL;
    if (strcmp(kind, "some") != 0 && strcmp(kind, "full") != 0)
        return -EINVAL;
    /* The kernel accepts windows of 0.5 s to 10 s and a stall no longer than the window. */
    if (window < 500000 || window > 10000000 || stall == 0 || stall > window)
        return -ERANGE;
    return 0;
}

/* "0=8GiB, 1=12GiB": a device-memory budget per GPU index. */
static int parse_gpu_budgets(const char *v, uint64_t *budgets)
{
    char *copy = strdup(v), *save = NULL;
    int r = copy ? 0 : -ENOMEM;
    for (char *item = copy ? strtok_r(copy, ", ", &save) : NULL; item && r == 0;
         item = strtok_r(NULL, ", ", &save)) {
        char *eq = strchr(item, '=');
        unsigned gpu;
        if (!eq)
            r = -EINVAL;
        else
            *eq = 0;
        if (r == 0)
            r = parse_uint(item, LARDER_MAX_GPUS - 1, &gpu);
        if (r == 0 && larder_parse_size(eq + 1, &budgets[gpu]) < 0)
            r = -EINVAL;
    }
    free(copy);
    return r;
}

/* "75%", a fraction "0.75" (a plain number with a decimal point), or a size: "150MiB",
 * "123" (bytes). */
static int parse_budget(struct parser *p, const char *v)
{
    struct larder__config *c = p->c;
    bool number = v[strspn(v, "+-0123456789.")] == 0;
    if (strchr(v, '%') || (number && strchr(v, '.'))) {
        double f;
        int r = parse_fraction(v, &f);
        if (r == -ERANGE)
            p->hint = "a fraction of the memory limit is above 0 and at most 1, or 100%";
        if (r < 0)
            return r;
        c->budget_bytes = 0;
        c->budget_fraction = f;
        return 0;
    }
    if (number && strcmp(v, "1") == 0) {
        p->hint = "write 100% for the whole memory limit, or a size with a unit such as 1GiB";
        return -EINVAL;
    }
    if (number && strchr(v, '-')) {
        p->hint = "the budget must be above 0";
        return -ERANGE;
    }
    uint64_t bytes;
    if (larder_parse_size(v, &bytes) < 0)
        return -EINVAL;
    if (bytes == 0) {
        p->hint = "the budget must be above 0";
        return -ERANGE;
    }
    c->budget_bytes = bytes;
    c->budget_fraction = 0;
    return 0;
}

static int memory_value(struct parser *p, int k, const char *v)
{
    struct larder__config *c = p->c;
    switch (k) {
    case MK_BUDGET: return parse_budget(p, v);
    case MK_POLICY:
        if (strcmp(v, "cost") != 0 && strcmp(v, "lru") != 0)
            return -EINVAL;
        free(c->policy);
        return (c->policy = strdup(v)) ? 0 : -ENOMEM;
    case MK_TTL: return larder__parse_duration(v, &c->default_ttl_ms);
    case MK_LOADER_THREADS: return parse_uint(v, 64, &c->loader_threads);
    case MK_ADMISSION_TIMEOUT: return positive_duration(v, &c->admission_timeout_ms);
    case MK_HIGH_WATERMARK: return parse_fraction(v, &c->high_watermark);
    case MK_LOW_WATERMARK: return parse_fraction(v, &c->low_watermark);
    case MK_PSI_TRIGGER: {
        int r = parse_psi(v);
        if (r < 0)
            return r;
        free(c->psi_trigger);
        return (c->psi_trigger = strdup(strcmp(v, "off") == 0 ? "" : v)) ? 0 : -ENOMEM;
    }
    case MK_WATCH_PRESSURE: return larder__parse_bool(v, &c->watch_pressure);
    case MK_GPU_BUDGET: return parse_gpu_budgets(v, c->gpu_budget);
    case MK_COOLDOWN: return positive_duration(v, &c->cooldown_ms);
    case MK_HISTORY: {
        int64_t ms;
        int r = larder__parse_duration(v, &ms);
        if (r < 0 || ms < 0 || ms / 1000 > 7 * 86400)
            return r < 0 ? r : -ERANGE;
        c->history_s = ms / 1000;
        return 0;
    }
    }
    return -EINVAL;
}

/* ---- [model.NAME] ----------------------------------------------------------------------- */

enum model_key {
    MD_BACKEND, MD_PATH, MD_INSTANCES, MD_TTL, MD_PRELOAD, MD_PIN, MD_PRIORITY,
    MD_FALLBACK, MD_MEMORY, MD_QUEUE, MD_TIMEOUT, MD_GPU, MD_GPU_MEMORY, MD_INFER_TIMEOUT,
    MD_ISOLATION, MD_WORKER_TIMEOUT, MD_COMMAND, MD_ENV, MD_WORKDIR, MD_HEALTH, MD_PROXY,
    MD_STOP_TIMEOUT, MD_INFER_PATH, MD_API, MD_N
};
static const char *const model_keys[MD_N + 1] = {
    "backend", "path", "instances", "ttl", "preload", "pin", "priority",
    "fallback", "memory", "queue", "timeout", "gpu", "gpu_memory", "infer_timeout",
    "isolation", "worker_timeout", "command", "env", "workdir", "health", "proxy",
    "stop_timeout", "infer_path", "api",
};

const char *larder__isolation_name(enum larder__isolation i)
{
    switch (i) {
    case LARDER__ISOLATION_IN_PROCESS: return "in-process";
    case LARDER__ISOLATION_WORKER: return "worker";
    case LARDER__ISOLATION_EXTERNAL: return "external";
    }
    return "?";
}

static int parse_isolation(const char *v, enum larder__isolation *ret)
{
    for (int i = LARDER__ISOLATION_IN_PROCESS; i <= LARDER__ISOLATION_EXTERNAL; i++)
        if (strcmp(v, larder__isolation_name((enum larder__isolation)i)) == 0) {
            *ret = (enum larder__isolation)i;
            return 0;
        }
    return -EINVAL;
}
_Static_assert(SK_N <= MAX_KEYS && MK_N <= MAX_KEYS && MD_N <= MAX_KEYS, "struct keyset");

static int dup_str(char **slot, const char *v)
{
    free(*slot);
    *slot = strdup(v);
    return *slot ? 0 : -ENOMEM;
}

/* ---- external models: isolation, command and the keys that go with it ---------------- */

/* The parser's hint buffer for a message made here (one per parser: one key at a time). */
static const char *ext_hint(struct parser *p, const char *msg)
{
    snprintf(p->ext_hint, sizeof p->ext_hint, "%s", msg);
    p->hint = p->ext_hint;
    return p->hint;
}

static int ext_words(struct parser *p, const char *v, char ***slot, size_t *n)
{
    char msg[256];
    char **words = NULL;
    size_t count = 0;
    int r = larder__cmdline_check_macros(v, msg, sizeof msg);
    if (r == 0)
        r = larder__cmdline_split(v, &words, &count, msg, sizeof msg);
    if (r == -EINVAL)
        ext_hint(p, msg);
    if (r < 0)
        return r;
    larder__cmdline_free(*slot);
    *slot = words;
    *n = count;
    return 0;
}

/* KEY=VALUE words, KEY a shell-style name. */
static int ext_env(struct parser *p, struct larder__model_conf *m, const char *v)
{
    int r = ext_words(p, v, &m->ext.env, &m->ext.n_env);
    for (size_t i = 0; r == 0 && i < m->ext.n_env; i++) {
        const char *w = m->ext.env[i];
        size_t k = strspn(w, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_");
        if (k == 0 || w[k] != '=' || (w[0] >= '0' && w[0] <= '9')) {
            char msg[160];
            snprintf(msg, sizeof msg, "'%.64s' is not KEY=VALUE", w);
            ext_hint(p, msg);
            r = -EINVAL;
        }
    }
    return r;
}

/* A path of the child's server: starts with '/', no blank or control character. */
static int ext_url_path(struct parser *p, const char *v, char **slot)
{
    for (const unsigned char *c = (const unsigned char *)v; *c; c++)
        if (*c <= ' ' || *c == 0x7f)
            return ext_hint(p, "a path holds no blank or control character"), -EINVAL;
    if (v[0] != '/')
        return ext_hint(p, "a path starts with '/'"), -EINVAL;
    return dup_str(slot, v);
}

/* http://HOST[:PORT][/PREFIX], macros allowed. */
static int ext_proxy(struct parser *p, const char *v, char **slot)
{
    char msg[256];
    if (strncmp(v, "https://", 8) == 0)
        return ext_hint(p, "larderd speaks plain HTTP to its children: use http://"), -EINVAL;
    if (strncmp(v, "http://", 7) != 0 || !v[7] || v[7] == '/' || v[7] == ':')
        return ext_hint(p, "a base URL such as http://127.0.0.1:${PORT}"), -EINVAL;
    for (const unsigned char *c = (const unsigned char *)v; *c; c++)
        if (*c <= ' ' || *c == 0x7f || *c == '?' || *c == '#')
            return ext_hint(p, "a base URL holds no blank, control character, query or "
                               "fragment"), -EINVAL;
    if (larder__cmdline_check_macros(v, msg, sizeof msg) < 0)
        return ext_hint(p, msg), -EINVAL;
    return dup_str(slot, v);
}

/* The dialect of an external model's server. */
static int ext_api(struct parser *p, const char *v, enum larder__ext_api *slot)
{
    if (strcmp(v, "openai") == 0) {
        *slot = LARDER__EXT_API_OPENAI;
        return 0;
    }
    if (strcmp(v, "none") == 0) {
        *slot = LARDER__EXT_API_NONE;
        return 0;
    }
    if (strcmp(v, "ollama") == 0)
        return ext_hint(p, "larderd proxies only OpenAI's API to a server: write api = openai "
                           "(Ollama serves it too, under /v1)"), -EINVAL;
    return ext_hint(p, "openai or none"), -EINVAL;
}

static int ext_value(struct parser *p, struct larder__model_conf *m, int k, const char *v)
{
    switch (k) {
    case MD_COMMAND:
        m->ext.command_line = p->line;
        return ext_words(p, v, &m->ext.argv, &m->ext.argc);
    case MD_ENV: return ext_env(p, m, v);
    case MD_WORKDIR: return set_path(p, &m->ext.workdir, v);
    case MD_HEALTH: return ext_url_path(p, v, &m->ext.health);
    case MD_INFER_PATH: return ext_url_path(p, v, &m->ext.infer_path);
    case MD_PROXY: return ext_proxy(p, v, &m->ext.proxy);
    case MD_STOP_TIMEOUT: return positive_duration(v, &m->ext.stop_timeout_ms);
    case MD_API: return ext_api(p, v, &m->ext.api);
    }
    return -EINVAL;
}

/* Checks of an external model's section once it is complete, and its defaults. */
static void close_external(struct parser *p, struct larder__model_conf *m,
                           const struct keyset *ks)
{
    static const int only_external[] = {MD_ENV, MD_WORKDIR, MD_HEALTH, MD_PROXY,
                                        MD_STOP_TIMEOUT, MD_INFER_PATH, MD_API};
    bool external = ks->line[MD_COMMAND] ||
                    ((ks->ok & (1ul << MD_ISOLATION)) &&
                     m->isolation == LARDER__ISOLATION_EXTERNAL);
    if (!external) {
        for (size_t i = 0; i < sizeof only_external / sizeof only_external[0]; i++)
            if (ks->line[only_external[i]])
                fail_at(p, ks->line[only_external[i]], p->section,
                        model_keys[only_external[i]],
                        "only an external model takes it (set command = ...)");
        return;
    }
    if ((ks->ok & (1ul << MD_ISOLATION)) && m->isolation != LARDER__ISOLATION_EXTERNAL)
        fail_at(p, ks->line[MD_ISOLATION], p->section, "isolation",
                "a model with a command is external: write isolation = external or drop it");
    m->isolation = LARDER__ISOLATION_EXTERNAL;
    if (!ks->line[MD_COMMAND])
        fail_at(p, ks->line[MD_ISOLATION], p->section, "command",
                "missing (required with isolation = external)");
    if (ks->line[MD_BACKEND])
        fail_at(p, ks->line[MD_BACKEND], p->section, "backend",
                "an external model has no backend: its command serves it");
    if (ks->line[MD_INSTANCES])
        fail_at(p, ks->line[MD_INSTANCES], p->section, "instances",
                "an external model has no instances: its server takes concurrent requests");
    if (ks->line[MD_WORKER_TIMEOUT])
        fail_at(p, ks->line[MD_WORKER_TIMEOUT], p->section, "worker_timeout",
                "only a worker model takes it (an external model has stop_timeout)");
    for (size_t i = 0; i < m->n_opts; i++)
        fail_at(p, m->opt_lines[i], p->section, m->opts[i].key,
                "unknown key for an external model");
    if (!m->ext.health && dup_str(&m->ext.health, "/health") < 0)
        out_of_memory(p);
    if (!m->ext.infer_path && dup_str(&m->ext.infer_path, "/infer") < 0)
        out_of_memory(p);
    if (!m->ext.proxy && dup_str(&m->ext.proxy, "http://127.0.0.1:${PORT}") < 0)
        out_of_memory(p);
    if (!m->ext.stop_timeout_ms)
        m->ext.stop_timeout_ms = 10000;
}

static int model_value(struct parser *p, struct larder__model_conf *m, int k, const char *v)
{
    if (k >= MD_COMMAND)
        return ext_value(p, m, k, v);
    switch (k) {
    case MD_BACKEND:
        m->backend_line = p->line;
        return valid_name(v) ? dup_str(&m->backend, v) : -EINVAL;
    case MD_PATH:
        m->path_line = p->line;
        return set_path(p, &m->path, v);
    case MD_INSTANCES: {
        int r = parse_uint(v, 1024, &m->instances);
        return r < 0 ? r : m->instances == 0 ? -ERANGE : 0;
    }
    case MD_TTL: return larder__parse_duration(v, &m->ttl_ms);
    case MD_PRELOAD: return larder__parse_bool(v, &m->preload);
    case MD_PIN: return larder__parse_bool(v, &m->pin);
    case MD_PRIORITY: return parse_int(v, &m->priority);
    case MD_FALLBACK:
        m->fallback_line = p->line;
        return valid_name(v) ? dup_str(&m->fallback, v) : -EINVAL;
    case MD_MEMORY: return larder_parse_size(v, &m->memory_bytes) < 0 ? -EINVAL : 0;
    case MD_QUEUE: return parse_uint(v, 1u << 20, &m->queue);
    case MD_TIMEOUT: return positive_duration(v, &m->timeout_ms);
    case MD_GPU: {
        unsigned gpu;
        int r = parse_uint(v, LARDER_MAX_GPUS - 1, &gpu);
        if (r == 0)
            m->gpu = (int)gpu;
        return r;
    }
    case MD_GPU_MEMORY: return larder_parse_size(v, &m->gpu_bytes) < 0 ? -EINVAL : 0;
    case MD_INFER_TIMEOUT: return positive_duration(v, &m->infer_timeout_ms);
    case MD_ISOLATION:
        p->hint = "in-process, worker or external";
        return parse_isolation(v, &m->isolation);
    case MD_WORKER_TIMEOUT: return positive_duration(v, &m->worker_timeout_ms);
    }
    return -EINVAL;
}

/* A backend option, in config order. Keys given twice are found when the section ends. */
static int model_option(struct parser *p, struct larder__model_conf *m, const char *key,
                        const char *v)
{
    if (m->n_opts == p->cap_opts) {
        size_t cap = p->cap_opts ? p->cap_opts * 2 : 4;
        struct larder_option *o = realloc(m->opts, cap * sizeof *o);
        if (!o)
            return -ENOMEM;
        m->opts = o;
        unsigned *lines = realloc(m->opt_lines, cap * sizeof *lines);
        if (!lines)
            return -ENOMEM;
        m->opt_lines = lines;
        p->cap_opts = cap;
    }
    char *kc = strdup(key), *vc = strdup(v);
    if (!kc || !vc) {
        free(kc);
        free(vc);
        return -ENOMEM;
    }
    m->opts[m->n_opts] = (struct larder_option){kc, vc};
    m->opt_lines[m->n_opts++] = p->line;
    return 0;
}

struct key_line {
    const char *key;
    unsigned line;
};

static int cmp_key_line(const void *a, const void *b)
{
    const struct key_line *x = a, *y = b;
    int d = strcmp(x->key, y->key);
    return d ? d : x->line < y->line ? -1 : x->line > y->line;
}

/* Options are in line order: the later of two with the same key is the error. A few
 * are compared pairwise; many are sorted (by key, then line), so that neighbours
 * compare: not quadratic in any section. */
static void check_option_keys(struct parser *p, const struct larder__model_conf *m)
{
    size_t n = m->n_opts;
    if (n <= 16) {
        for (size_t j = 1; j < n; j++) {
            for (size_t i = 0; i < j; i++) {
                if (strcmp(m->opts[i].key, m->opts[j].key) != 0)
                    continue;
                fail_at(p, m->opt_lines[j], p->section, m->opts[j].key,
                        "key given twice (first at line %u)", m->opt_lines[i]);
                break;
            }
        }
        return;
    }
    struct key_line *v = malloc(n * sizeof *v);
    if (!v) {
        out_of_memory(p);
        return;
    }
    for (size_t i = 0; i < n; i++)
        v[i] = (struct key_line){m->opts[i].key, m->opt_lines[i]};
    qsort(v, n, sizeof *v, cmp_key_line);
    for (size_t k = 1, first = 0; k < n; k++) {
        if (strcmp(v[first].key, v[k].key) != 0)
            first = k;
        else
            fail_at(p, v[k].line, p->section, v[k].key, "key given twice (first at line %u)",
                    v[first].line);
    }
    free(v);
}

/* Duplicate names are found once the models are sorted, not here: one pass, not n. */
static int new_model(struct parser *p, const char *name)
{
    struct larder__config *c = p->c;
    if (!valid_name(name)) {
        fail(p, NULL, "bad model name '%s' (letters, digits, '.', '-', '_'; at most %d)",
             name, MAX_NAME);
        p->kind = SEC_SKIP;
        return 0;
    }
    if (c->n_models == p->cap_models) {
        size_t cap = p->cap_models ? p->cap_models * 2 : 16;
        struct larder__model_conf *ms = realloc(c->models, cap * sizeof *ms);
        if (!ms)
            return -ENOMEM;
        c->models = ms;
        p->cap_models = cap;
    }
    struct larder__model_conf *m = &c->models[c->n_models];
    *m = (struct larder__model_conf){.instances = 1, .ttl_ms = LARDER_TTL_DEFAULT, .gpu = -1,
                                     .line = p->line};
    if (!(m->name = strdup(name)))
        return -ENOMEM;
    c->n_models++;
    p->model = m;
    return 0;
}

/* ---- sections and keys ------------------------------------------------------------------ */

/* Checks of one [model.NAME] section that need all its keys. */
static void close_model(struct parser *p)
{
    struct larder__model_conf *m = p->model;
    const struct keyset *ks = &p->model_ks;
    close_external(p, m, ks);
    if (!ks->line[MD_BACKEND] && m->isolation != LARDER__ISOLATION_EXTERNAL)
        fail_at(p, m->line, p->section, "backend", "missing (required)");
    if ((ks->ok & (1ul << MD_GPU_MEMORY)) && m->gpu_bytes && !ks->line[MD_GPU])
        fail_at(p, ks->line[MD_GPU_MEMORY], p->section, "gpu_memory",
                "needs a gpu key naming the GPU");
    check_option_keys(p, m);
}

static void close_section(struct parser *p)
{
    if (p->kind == SEC_MODEL && p->model)
        close_model(p);
    p->kind = SEC_NONE;
    p->model = NULL;
    p->ks = NULL;
}

/* An unknown section (reported with its name as the error's section). */
static void unknown_section(struct parser *p, const char *s)
{
    static const char *const fixed[] = {"server", "memory", NULL};
    static const char *const model[] = {"model", NULL};
    const char *dot = strchr(s, '.'), *near = NULL;
    char prefix[INI_NAME_MAX + 1], hint[INI_NAME_MAX + 48] = "";
    snprintf(prefix, sizeof prefix, "%.*s", (int)(dot ? dot - s : (ptrdiff_t)strlen(s)), s);
    if (dot && larder__config_suggest(prefix, model))
        snprintf(hint, sizeof hint, " (did you mean [model.%s]?)", dot + 1);
    else if (!dot && (near = larder__config_suggest(s, fixed)))
        snprintf(hint, sizeof hint, " (did you mean [%s]?)", near);
    else if (!dot && larder__config_suggest(s, model))
        snprintf(hint, sizeof hint, " (a model's section is [model.NAME])");
    if (!*s)
        fail_at(p, p->line, s, NULL, "empty section name []");
    else
        fail_at(p, p->line, s, NULL, "unknown section [%s]%s", s, hint);
}

/* A "[section]" header at the current line. */
static int enter_section(struct parser *p, const char *section)
{
    close_section(p);
    snprintf(p->section, sizeof p->section, "%s", section);
    if (strcmp(section, "server") == 0) {
        p->kind = SEC_SERVER;
        p->ks = &p->server_ks;
    } else if (strcmp(section, "memory") == 0) {
        p->kind = SEC_MEMORY;
        p->ks = &p->memory_ks;
    } else if (strncmp(section, MODEL_PREFIX, strlen(MODEL_PREFIX)) == 0) {
        p->kind = SEC_MODEL;
        p->model_ks = (struct keyset){0};
        p->cap_opts = 0;
        p->ks = &p->model_ks;
        return new_model(p, section + strlen(MODEL_PREFIX));
    } else {
        unknown_section(p, section);
        p->kind = SEC_SKIP;
    }
    return 0;
}

static bool mark_seen(struct parser *p, int k, const char *key)
{
    if (p->ks->line[k]) {
        fail(p, key, "key given twice (first at line %u)", p->ks->line[k]);
        return false;
    }
    p->ks->line[k] = p->line;
    return true;
}

static void unknown_key(struct parser *p, const char *key, const char *const *own)
{
    const char *where = NULL, *near;
    if (p->kind == SEC_SERVER && key_index(memory_keys, MK_N, key) >= 0)
        where = "[memory]";
    else if (p->kind == SEC_MEMORY && key_index(server_keys, SK_N, key) >= 0)
        where = "[server]";
    else if (key_index(model_keys, MD_N, key) >= 0)
        where = "a [model.NAME] section";
    if (where)
        fail(p, key, "unknown key (it belongs in %s)", where);
    else if ((near = larder__config_suggest(key, own)))
        fail(p, key, "unknown key (did you mean '%s'?)", near);
    else
        fail(p, key, "unknown key");
}

static int handle_known(struct parser *p, const char *key, const char *value)
{
    int k = -1, r;
    const char *what = "bad value";
    if (p->kind == SEC_MODEL && key_index(model_keys, MD_N, key) < 0)
        return model_option(p, p->model, key, value);
    if (p->kind == SEC_SERVER && (k = key_index(server_keys, SK_N, key)) < 0)
        return unknown_key(p, key, server_keys), 0;
    if (p->kind == SEC_MEMORY && (k = key_index(memory_keys, MK_N, key)) < 0)
        return unknown_key(p, key, memory_keys), 0;
    if (p->kind == SEC_MODEL)
        k = key_index(model_keys, MD_N, key);
    if (k < 0 || !mark_seen(p, k, key))
        return 0;
    if (!*value)
        return fail(p, key, "empty value"), 0;
    p->hint = NULL;
    if (p->kind == SEC_SERVER)
        r = server_value(p, k, value);
    else if (p->kind == SEC_MEMORY)
        r = memory_value(p, k, value);
    else
        r = model_value(p, p->model, k, value);
    if (r == -ENOMEM)
        return r;
    if (r == 0) {
        p->ks->ok |= 1ul << k;
        return 0;
    }
    if (r == -ERANGE)
        what = "value out of range";
    if (p->hint)
        fail(p, key, "%s '%s' (%s)", what, value, p->hint);
    else
        fail(p, key, "%s '%s'", what, value);
    return 0;
}

static int on_pair(void *user, const char *section, const char *key, const char *value)
{
    struct parser *p = user;
    (void)section; /* the reader tracks sections itself, with their lines */
    if (p->stop || !key || !value)
        return 1;
    p->c->n_settings++;
    int r = 0;
    if (p->kind == SEC_NONE) {
        fail(p, NULL, "key outside of any section");
        p->kind = SEC_SKIP; /* once, not for every key before the first header */
    } else if (p->kind != SEC_SKIP) {
        r = handle_known(p, key, value);
    }
    if (r == -ENOMEM)
        out_of_memory(p);
    return 1;
}

/* ---- the reader ------------------------------------------------------------------------ */

/* Like inih: an inline comment is ';' after whitespace. The first of c1, c2 or of such
 * a comment in s, or its end. */
static const char *find_or_comment(const char *s, char c1, char c2)
{
    bool was_space = false;
    for (; *s && *s != c1 && *s != c2; s++) {
        if (was_space && *s == ';')
            break;
        was_space = isspace((unsigned char)*s);
    }
    return s;
}

/* Checks one line (leading and trailing blanks cut, len characters at s) the way inih
 * will read it, reports what inih would refuse or cut, and enters sections. Returns
 * whether inih may have the line (else it gets a blank one). */
static bool check_line(struct parser *p, const char *s, size_t len)
{
    if (len == 0 || *s == ';' || *s == '#')
        return true;
    if (*s == '[') {
        const char *end = find_or_comment(s + 1, ']', ']');
        const char *rest = *end == ']' ? end + 1 + strspn(end + 1, " \t") : end;
        size_t n = (size_t)(end - s - 1);
        if (*end == ']' && (!*rest || *rest == ';' || *rest == '#') && n <= INI_NAME_MAX) {
            char name[INI_NAME_MAX + 1];
            memcpy(name, s + 1, n);
            name[n] = 0;
            if (enter_section(p, name) < 0)
                out_of_memory(p);
            return true;
        }
        close_section(p);
        p->kind = SEC_SKIP; /* its keys would land in the section before */
        if (*end != ']')
            fail(p, NULL, "syntax error: section header without its closing ']'");
        else if (n <= INI_NAME_MAX)
            fail(p, NULL, "syntax error: text after the section header's ']'");
        else
            fail(p, NULL, "section name or key longer than %d characters (model names: %d)",
                 INI_NAME_MAX, MAX_NAME);
        return false;
    }
    const char *sep = find_or_comment(s, '=', ':');
    if (*sep != '=' && *sep != ':') {
        fail(p, NULL, "syntax error (expected [section] or key = value)");
        return false;
    }
    size_t n = (size_t)(sep - s);
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    if (n == 0) {
        fail(p, NULL, "syntax error: no key before '%c'", *sep);
        return false;
    }
    if (n > INI_NAME_MAX) {
        fail(p, NULL, "section name or key longer than %d characters (model names: %d)",
             INI_NAME_MAX, MAX_NAME);
        return false;
    }
    return true;
}

/* inih's reader: one line per call, so the parser's line count is inih's.
 *
 * Debian 12's libinih (55) is built with its defaults: it does not stop at the first
 * error but only returns that error's line number when done; it reads an indented line
 * after a key as a continuation of that key's value; a header without its ']' leaves
 * the section as it was, so the keys after it would be filed under the section before;
 * inline comments start at a ';' after a blank; lines have 200 bytes. So the reader
 * checks each line itself, the same way, and reports every one that inih would refuse,
 * misread or cut; such lines are handed over blank. Leading blanks are cut: larderd has
 * no multi-line values, and an indented line is a line like any other. */
/* Reads the next line into p->buf, keeping at most LINE_BUF - 1 bytes of it (the rest
 * of a longer one is skipped, *cut says so), so that no file makes it allocate: not
 * one of a single enormous line, nor /dev/zero (it stops at a NUL byte, *nul).
 * Returns the length kept, newline included, or -1 at the end of the file or on error. */
static ssize_t next_line(struct parser *p, bool *cut, bool *nul)
{
    size_t n = 0;
    int ch;
    *cut = *nul = false;
    while ((ch = getc_unlocked(p->f)) != EOF) {
        if (ch == 0) {
            *nul = true;
            return (ssize_t)n;
        }
        if (n < LINE_BUF - 1)
            p->buf[n++] = (char)ch;
        else
            *cut = true;
        if (ch == '\n')
            break;
    }
    p->buf[n] = 0;
    return n || *cut ? (ssize_t)n : -1;
}

static char *read_line(char *str, int num, void *stream)
{
    struct parser *p = stream;
    /* Lines that fit inih's buffer with their newline; Debian's libinih has 200 bytes. */
    size_t max = num > 2 && (size_t)num - 2 < MAX_LINE ? (size_t)num - 2 : MAX_LINE;
    bool cut, nul;
    if (p->stop || num < 2)
        return NULL;
    errno = 0;
    ssize_t n = next_line(p, &cut, &nul);
    if (n < 0 || ferror(p->f)) {
        if (ferror(p->f))
            fail_file(p, errno ? -errno : -EIO, "read error after line %u: %s", p->line,
                      strerror(errno ? errno : EIO));
        return NULL;
    }
    p->line++;
    char *s = p->buf;
    size_t len = (size_t)n;
    if (nul) {
        fail(p, NULL, "NUL byte: not a text file (stopped reading here)");
        p->stop = true;
        return strcpy(str, "\n");
    }
    if (p->line == 1 && len >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0) {
        s += 3;
        len -= 3;
    }
    while (len && (s[len - 1] == '\n' || s[len - 1] == '\r'))
        len--;
    if (cut || len > max) {
        fail(p, NULL, "line longer than %zu characters", max);
        return strcpy(str, "\n");
    }
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    while (len && isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    s[len] = 0;
    if (!check_line(p, s, len))
        len = 0;
    memcpy(str, s, len); /* len <= max: it fits with the newline */
    str[len] = '\n';
    str[len + 1] = 0;
    return str;
}

/* ---- whole-file checks ---------------------------------------------------------------- */

static int cmp_model(const void *a, const void *b)
{
    const struct larder__model_conf *x = a, *y = b;
    int d = strcmp(x->name, y->name);
    return d ? d : x->line < y->line ? -1 : x->line > y->line;
}

static void model_error(struct parser *p, const struct larder__model_conf *m, unsigned line,
                        const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void model_error(struct parser *p, const struct larder__model_conf *m, unsigned line,
                        const char *key, const char *fmt, ...)
{
    char section[INI_NAME_MAX + 1];
    snprintf(section, sizeof section, "model.%s", m->name);
    va_list ap;
    va_start(ap, fmt);
    add_error_v(p, -EINVAL, line, section, key, fmt, ap);
    va_end(ap);
}

/* Puts "path" first among the backend options, so backends read it like any option. */
static int path_option(struct larder__model_conf *m)
{
    struct larder_option *o = realloc(m->opts, (m->n_opts + 1) * sizeof *o);
    if (!o)
        return -ENOMEM;
    m->opts = o;
    unsigned *lines = realloc(m->opt_lines, (m->n_opts + 1) * sizeof *lines);
    if (!lines)
        return -ENOMEM;
    m->opt_lines = lines;
    char *k = strdup("path"), *v = strdup(m->path);
    if (!k || !v) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    memmove(o + 1, o, m->n_opts * sizeof *o);
    memmove(lines + 1, lines, m->n_opts * sizeof *lines);
    o[0] = (struct larder_option){k, v};
    lines[0] = 0;
    m->n_opts++;
    return 0;
}

/* Sorted models with the same name are neighbours: the later sections are errors. */
static bool check_duplicates(struct parser *p)
{
    struct larder__config *c = p->c;
    bool dup = false;
    for (size_t i = 1, first = 0; i < c->n_models; i++) {
        const struct larder__model_conf *b = &c->models[i];
        if (strcmp(c->models[first].name, b->name) != 0) {
            first = i;
            continue;
        }
        fail_at(p, b->line, NULL, NULL, "section [model.%s] given twice (first at line %u)",
                b->name, c->models[first].line);
        dup = true;
    }
    return dup;
}

static void missing_fallback(struct parser *p, const struct larder__model_conf *m,
                             const char **names)
{
    /* A search of every name each: not once past the errors that will be shown. */
    bool shown = p->n_errs < MAX_ERRORS;
    const char *near = names && shown ? larder__config_suggest(m->fallback, names) : NULL;
    if (near)
        model_error(p, m, m->fallback_line, "fallback",
                    "names no [model.*] section (did you mean '%s'?)", near);
    else
        model_error(p, m, m->fallback_line, "fallback", "names no [model.*] section");
}

/* Fallbacks name a model, not themselves, and chains end: each model is walked once
 * (O(n log n) in all), stamped with the walk that reached it first. */
static void check_fallbacks(struct parser *p)
{
    struct larder__config *c = p->c;
    size_t n = c->n_models, none = SIZE_MAX;
    size_t *next = malloc((n + 1) * sizeof *next), *stamp = calloc(n + 1, sizeof *stamp);
    const char **names = NULL;
    if (!next || !stamp) {
        free(next);
        free(stamp);
        out_of_memory(p);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const struct larder__model_conf *m = &c->models[i], *fb;
        next[i] = none;
        if (!m->fallback)
            continue;
        if (strcmp(m->fallback, m->name) == 0) {
            model_error(p, m, m->fallback_line, "fallback",
                        "a model cannot be its own fallback");
        } else if ((fb = larder__config_model(c, m->fallback))) {
            next[i] = (size_t)(fb - c->models);
        } else {
            if (!names && (names = calloc(n + 1, sizeof *names)))
                for (size_t j = 0; j < n; j++)
                    names[j] = c->models[j].name;
            missing_fallback(p, m, names);
        }
    }
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        while (j != none && !stamp[j]) {
            stamp[j] = i + 1;
            j = next[j];
        }
        if (j == none || stamp[j] != i + 1)
            continue;
        size_t k = j; /* j is on a loop that this walk found: report each of its models */
        do {
            const struct larder__model_conf *m = &c->models[k];
            model_error(p, m, m->fallback_line, "fallback",
                        "the fallback chain loops back on itself (%s -> %s -> ... -> %s)",
                        m->name, m->fallback, m->name);
            k = next[k];
        } while (k != j);
    }
    free(names);
    free(next);
    free(stamp);
}

static void format_fraction(double v, char *buf, size_t len)
{
    snprintf(buf, len, "%g%%", v * 100);
}

/* What larder_open() refuses, found here with the line and key: a low watermark that is
 * not below the high one, with the library's default standing in for a key not given. */
static void check_watermarks(struct parser *p)
{
    const struct larder__config *c = p->c;
    const struct keyset *ks = &p->memory_ks;
    struct larder_opts d;
    larder_opts_init(&d);
    bool low_set = ks->ok & (1ul << MK_LOW_WATERMARK);
    bool high_set = ks->ok & (1ul << MK_HIGH_WATERMARK);
    if ((ks->line[MK_LOW_WATERMARK] && !low_set) || (ks->line[MK_HIGH_WATERMARK] && !high_set))
        return; /* a bad value, already reported */
    double low = low_set ? c->low_watermark : d.low_watermark;
    double high = high_set ? c->high_watermark : d.high_watermark;
    char other[64];
    if (low < high)
        return;
    if (low_set) {
        format_fraction(high, other, sizeof other);
        if (high_set)
            fail_at(p, ks->line[MK_LOW_WATERMARK], "memory", "low_watermark",
                    "must be below high_watermark (%s, line %u)", other,
                    ks->line[MK_HIGH_WATERMARK]);
        else
            fail_at(p, ks->line[MK_LOW_WATERMARK], "memory", "low_watermark",
                    "must be below high_watermark (%s when not set)", other);
    } else {
        format_fraction(low, other, sizeof other);
        fail_at(p, ks->line[MK_HIGH_WATERMARK], "memory", "high_watermark",
                "must be above low_watermark (%s when not set)", other);
    }
}

/* A request body of max_body must fit in request_memory, or it could never be taken. */
static void check_request_memory(struct parser *p)
{
    const struct larder__config *c = p->c;
    const struct keyset *ks = &p->server_ks;
    unsigned line = ks->line[SK_REQUEST_MEMORY];
    char body[32], mem[32];
    if (!(ks->ok & (1ul << SK_REQUEST_MEMORY)) && !(ks->ok & (1ul << SK_MAX_BODY)))
        return;
    if ((ks->line[SK_MAX_BODY] && !(ks->ok & (1ul << SK_MAX_BODY))) ||
        (line && !(ks->ok & (1ul << SK_REQUEST_MEMORY))) || c->request_memory >= c->max_body)
        return; /* a bad value is already reported */
    larder__format_size(c->max_body, body, sizeof body);
    larder__format_size(c->request_memory, mem, sizeof mem);
    if (line)
        fail_at(p, line, "server", "request_memory", "must be at least max_body (%s%s)", body,
                ks->line[SK_MAX_BODY] ? "" : " when not set");
    else
        fail_at(p, ks->line[SK_MAX_BODY], "server", "max_body",
                "must be at most request_memory (%s when not set)", mem);
}

/* The token files are read like the config itself: a missing, unreadable or empty one is
 * an error at the line of its key. */
static void check_token_files(struct parser *p)
{
    const struct larder__config *c = p->c;
    const struct keyset *ks = &p->server_ks;
    static const int keys[] = {SK_ADMIN_TOKENS, SK_INFER_TOKENS};
    for (size_t i = 0; i < 2; i++) {
        const char *path = keys[i] == SK_ADMIN_TOKENS ? c->admin_tokens : c->infer_tokens;
        char err[512];
        if (!path || !(ks->ok & (1ul << keys[i])))
            continue;
        int r = larder__tokens_check_file(path, err, sizeof err);
        if (r == -ENOMEM)
            out_of_memory(p);
        else if (r < 0)
            fail_at(p, ks->line[keys[i]], "server", server_keys[keys[i]], "%s", err);
    }
}

static void check_models(struct parser *p)
{
    struct larder__config *c = p->c;
    if (c->n_models)
        qsort(c->models, c->n_models, sizeof *c->models, cmp_model);
    if (!check_duplicates(p))
        check_fallbacks(p);
    check_watermarks(p);
    check_request_memory(p);
    check_token_files(p);
    for (size_t i = 0; i < c->n_models && !p->rc; i++)
        if (c->models[i].path && path_option(&c->models[i]) < 0)
            out_of_memory(p);
}

static int set_defaults(struct larder__config *c, const char *file)
{
    c->listen_port = LARDER__DEFAULT_PORT;
    c->max_body = 32ull << 20;
    c->events_queue = LARDER__SSE_QUEUE_DEFAULT;
    c->request_timeout_ms = 60000;
    c->drain_timeout_ms = 30000;
    c->max_connections = 1024;
    c->max_connections_per_client = 256;
    c->header_timeout_ms = 30000;
    c->body_timeout_ms = 120000;
    c->request_memory = 256ull << 20;
    c->log_format = LARDER__LOG_TEXT;
    c->log_level = LARDER__LOG_INFO;
    c->default_ttl_ms = LARDER_TTL_DEFAULT;
    c->watch_pressure = true;
    c->history_s = -1;
    if (!(c->file = strdup(file)) || !(c->listen_host = strdup("127.0.0.1")))
        return -ENOMEM;
    return 0;
}

/* The absolute directory of the file, which relative paths resolve against. */
static int set_dir(struct larder__config *c, const char *file)
{
    char *abs = realpath(file, NULL);
    if (!abs)
        return -errno;
    char *slash = strrchr(abs, '/');
    if (slash == abs)
        slash[1] = 0;
    else
        *slash = 0;
    c->dir = abs;
    return 0;
}

/* Opens the file and checks that it is one, before any line is read. */
static void open_file(struct parser *p, const char *file)
{
    struct stat st;
    int r = set_dir(p->c, file);
    if (r == 0 && !(p->f = fopen(file, "r")))
        r = -errno;
    if (r == 0 && fstat(fileno(p->f), &st) < 0)
        r = -errno;
    if (r == 0 && S_ISDIR(st.st_mode)) {
        fail_file(p, -EISDIR, "is a directory, not a config file");
        return;
    }
    if (r == -ENOMEM)
        out_of_memory(p);
    else if (r < 0)
        fail_file(p, r, "%s", strerror(-r));
}

static int cmp_error(const void *a, const void *b)
{
    const struct error_rec *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void report_one(const char *file, const struct error_rec *e,
                       larder__config_report_fn report, void *ud)
{
    char *text = NULL;
    int n;
    if (e->line && e->key)
        n = asprintf(&text, "%s:%u: [%s] %s: %s", file, e->line, e->section ? e->section : "",
                     e->key, e->message);
    else if (e->line)
        n = asprintf(&text, "%s:%u: %s", file, e->line, e->message);
    else
        n = asprintf(&text, "%s: %s", file, e->message);
    struct larder__config_error out = {.file = file, .line = e->line, .section = e->section,
                                       .key = e->key, .message = e->message,
                                       .text = n < 0 ? e->message : text};
    report(ud, &out);
    if (n >= 0)
        free(text);
}

/* Sorts the errors by line, hands them to report, frees them. */
static void report_errors(struct parser *p, const char *file, larder__config_report_fn report,
                          void *ud)
{
    if (p->n_errs > 1)
        qsort(p->errs, p->n_errs, sizeof *p->errs, cmp_error);
    for (size_t i = 0; i < p->n_errs; i++) {
        struct error_rec *e = &p->errs[i];
        if (report && e->message)
            report_one(file, e, report, ud);
        free(e->section);
        free(e->key);
        free(e->message);
    }
    if (p->oom && report) {
        struct error_rec e = {.message = (char *)"out of memory"};
        report_one(file, &e, report, ud);
    }
    free(p->errs);
    p->errs = NULL;
    p->n_errs = 0;
}

void larder__config_report_print(void *ud, const struct larder__config_error *e)
{
    fprintf(ud, "%s\n", e->text);
}

int larder__config_load_all(const char *file, struct larder__config **ret_config,
                            larder__config_report_fn report, void *ud)
{
    struct larder__config *c = calloc(1, sizeof *c);
    struct parser p = {.c = c};
    if (ret_config)
        *ret_config = NULL;
    if (!c || !file || set_defaults(c, file) < 0) {
        out_of_memory(&p);
    } else {
        open_file(&p, file);
    }
    if (!p.stop) {
        int ir = ini_parse_stream(read_line, &p, on_pair, &p);
        if (ir == -2)
            out_of_memory(&p);
        else if (ir > 0 && !p.rc)
            fail_at(&p, (unsigned)ir, NULL, NULL,
                    "syntax error (expected [section] or key = value)");
        if (!p.stop)
            close_section(&p);
    }
    if (p.f)
        fclose(p.f);
    if (!p.stop)
        check_models(&p);
    int r = p.rc;
    report_errors(&p, file ? file : "(null)", report, ud);
    if (r < 0 || !ret_config) {
        larder__config_free(c);
        return r;
    }
    *ret_config = c;
    return 0;
}

struct first_error {
    char *err;
    size_t errlen;
    bool done;
};

static void keep_first(void *ud, const struct larder__config_error *e)
{
    struct first_error *f = ud;
    if (!f->done && f->err && f->errlen)
        snprintf(f->err, f->errlen, "%s", e->text);
    f->done = true;
}

int larder__config_load(const char *file, struct larder__config **ret_config, char *err,
                        size_t errlen)
{
    struct first_error f = {err, errlen, false};
    if (err && errlen)
        err[0] = 0;
    return larder__config_load_all(file, ret_config, keep_first, &f);
}

const char *const *larder__config_model_keys(void)
{
    return model_keys;
}

size_t larder__config_check_model_keys(const struct larder__config *c,
                                       const struct larder__model_conf *m,
                                       const char *const *backend_keys,
                                       larder__config_report_fn report, void *ud)
{
    const char *const *lists[2] = {model_keys, backend_keys};
    size_t unknown = 0;
    char section[INI_NAME_MAX + 1];
    snprintf(section, sizeof section, "model.%s", m->name);
    for (size_t i = 0; i < m->n_opts; i++) {
        const char *key = m->opts[i].key;
        if (key_index(model_keys, MD_N, key) >= 0)
            continue;
        bool listed = false;
        for (const char *const *k = backend_keys; k && *k && !listed; k++)
            listed = strcmp(*k, key) == 0;
        if (listed)
            continue;
        unknown++;
        if (!report)
            continue;
        const char *near = suggest_in(key, lists, 2);
        char msg[256];
        struct error_rec e = {.line = m->opt_lines[i], .section = section, .key = (char *)key,
                              .message = msg};
        if (near)
            snprintf(msg, sizeof msg, "unknown key for backend '%s' (did you mean '%s'?)",
                     m->backend ? m->backend : "", near);
        else
            snprintf(msg, sizeof msg, "unknown key for backend '%s'", m->backend ? m->backend : "");
        report_one(c->file, &e, report, ud);
    }
    return unknown;
}

static void model_conf_free(struct larder__model_conf *m)
{
    for (size_t i = 0; i < m->n_opts; i++) {
        free((char *)m->opts[i].key);
        free((char *)m->opts[i].value);
    }
    free(m->opts);
    free(m->opt_lines);
    free(m->name);
    free(m->backend);
    free(m->path);
    free(m->fallback);
    larder__cmdline_free(m->ext.argv);
    larder__cmdline_free(m->ext.env);
    free(m->ext.workdir);
    free(m->ext.health);
    free(m->ext.proxy);
    free(m->ext.infer_path);
}

struct larder__config *larder__config_free(struct larder__config *c)
{
    if (!c)
        return NULL;
    for (size_t i = 0; i < c->n_models; i++)
        model_conf_free(&c->models[i]);
    free(c->models);
    free(c->file);
    free(c->dir);
    free(c->listen_host);
    free(c->admin_tokens);
    free(c->infer_tokens);
    free(c->backend_dir);
    free(c->state_dir);
    free(c->node_name);
    free(c->policy);
    free(c->psi_trigger);
    free(c);
    return NULL;
}

const struct larder__model_conf *larder__config_model(const struct larder__config *c,
                                                      const char *name)
{
    size_t lo = 0, hi = c->n_models;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int d = strcmp(name, c->models[mid].name);
        if (d == 0)
            return &c->models[mid];
        if (d < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool words_eq(char *const *a, char *const *b)
{
    size_t i = 0;
    for (; a && b && a[i] && b[i]; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return (!a || !a[i]) && (!b || !b[i]);
}

static bool external_conf_equal(const struct larder__model_conf *a,
                                const struct larder__model_conf *b)
{
    const struct larder__external_conf *x = &a->ext, *y = &b->ext;
    return a->isolation == b->isolation && words_eq(x->argv, y->argv) &&
           words_eq(x->env, y->env) && str_eq(x->workdir, y->workdir) &&
           str_eq(x->health, y->health) && str_eq(x->proxy, y->proxy) &&
           str_eq(x->infer_path, y->infer_path) && x->stop_timeout_ms == y->stop_timeout_ms &&
           x->api == y->api;
}

bool larder__model_conf_equal(const struct larder__model_conf *a,
                              const struct larder__model_conf *b)
{
    if (!str_eq(a->name, b->name) || !str_eq(a->backend, b->backend) ||
        !str_eq(a->path, b->path) || !str_eq(a->fallback, b->fallback) ||
        a->instances != b->instances || a->ttl_ms != b->ttl_ms || a->preload != b->preload ||
        a->pin != b->pin || a->priority != b->priority || a->memory_bytes != b->memory_bytes ||
        a->queue != b->queue || a->timeout_ms != b->timeout_ms || a->gpu != b->gpu ||
        a->gpu_bytes != b->gpu_bytes || a->n_opts != b->n_opts ||
        !external_conf_equal(a, b))
        return false;
    for (size_t i = 0; i < a->n_opts; i++)
        if (!str_eq(a->opts[i].key, b->opts[i].key) ||
            !str_eq(a->opts[i].value, b->opts[i].value))
            return false;
    return true;
}

void larder__format_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
}
