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
#include <unistd.h>

#include "events.h"
#include "larder/larder.h"

#define MODEL_PREFIX "model."
/* inih keeps 50 bytes of a section name and of a key (49 characters); longer ones are
 * refused rather than silently cut. */
#define INI_NAME_MAX 49
#define MAX_NAME (INI_NAME_MAX - 6) /* after "model." */

enum section_kind { SEC_NONE, SEC_SERVER, SEC_MEMORY, SEC_MODEL };

struct parser {
    struct larder__config *c;
    FILE *f;
    unsigned line;
    unsigned header_line;         /* line of the last [section] header read */
    bool line_too_long;
    unsigned long_name_line;      /* first line with a section name or key inih would cut */
    char *err;
    size_t errlen;
    int rc;                       /* first error */
    char section[MAX_NAME + 16];  /* the section the handler saw last */
    enum section_kind kind;
    struct larder__model_conf *model; /* SEC_MODEL: the model being filled */
    unsigned long seen;           /* bit per known key of the current section */
    unsigned long server_seen;    /* [server] and [memory] may repeat; their keys may not */
    unsigned long memory_seen;
};

static void fail(struct parser *p, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct parser *p, const char *key, const char *fmt, ...)
{
    if (p->rc)
        return;
    p->rc = -EINVAL;
    int n = snprintf(p->err, p->errlen, "%s:%u: ", p->c->file, p->line);
    if (key && n >= 0 && (size_t)n < p->errlen)
        n += snprintf(p->err + n, p->errlen - (size_t)n, "[%s] %s: ", p->section, key);
    if (n >= 0 && (size_t)n < p->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
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
    char *out;
    if (v[0] == '/' || !c->dir)
        return strdup(v);
    if (asprintf(&out, "%s/%s", c->dir, v) < 0)
        return NULL;
    return out;
}

/* ---- [server] and [memory] ------------------------------------------------------------ */

enum server_key {
    SK_LISTEN, SK_ADMIN_TOKENS, SK_INFER_TOKENS, SK_BACKEND_DIR, SK_MAX_BODY,
    SK_REQUEST_TIMEOUT, SK_THREADS, SK_HTTP_THREADS, SK_DRAIN_TIMEOUT, SK_LOG_FORMAT,
    SK_LOG_LEVEL, SK_STATE_DIR, SK_EVENTS_QUEUE, SK_N
};
static const char *const server_keys[SK_N] = {
    "listen", "admin_tokens", "infer_tokens", "backend_dir", "max_body", "request_timeout",
    "threads", "http_threads", "drain_timeout", "log_format", "log_level", "state_dir",
    "events_queue",
};

enum memory_key {
    MK_BUDGET, MK_POLICY, MK_TTL, MK_LOADER_THREADS, MK_ADMISSION_TIMEOUT,
    MK_HIGH_WATERMARK, MK_LOW_WATERMARK, MK_PSI_TRIGGER, MK_WATCH_PRESSURE, MK_HISTORY,
    MK_GPU_BUDGET, MK_N
};
static const char *const memory_keys[MK_N] = {
    "budget", "policy", "ttl", "loader_threads", "admission_timeout",
    "high_watermark", "low_watermark", "psi_trigger", "watch_pressure", "history",
    "gpu_budget",
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

static int server_value(struct parser *p, int k, const char *v)
{
    struct larder__config *c = p->c;
    switch (k) {
    case SK_LISTEN:
        free(c->listen_host);
        c->listen_host = NULL;
        return larder__parse_listen(v, &c->listen_host, &c->listen_port);
    case SK_ADMIN_TOKENS: return set_path(p, &c->admin_tokens, v);
    case SK_INFER_TOKENS: return set_path(p, &c->infer_tokens, v);
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
    case SK_REQUEST_TIMEOUT: return positive_duration(v, &c->request_timeout_ms);
    case SK_DRAIN_TIMEOUT: return positive_duration(v, &c->drain_timeout_ms);
    case SK_THREADS: return parse_uint(v, 256, &c->threads);
    case SK_HTTP_THREADS: return parse_uint(v, 64, &c->http_threads);
    case SK_LOG_FORMAT: return larder__log_parse_format(v, &c->log_format);
    case SK_LOG_LEVEL: return larder__log_parse_level(v, &c->log_level);
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

static int memory_value(struct parser *p, int k, const char *v)
{
    struct larder__config *c = p->c;
    switch (k) {
    case MK_BUDGET:
        if (strchr(v, '%')) {
            c->budget_bytes = 0;
            return parse_fraction(v, &c->budget_fraction);
        }
        return larder_parse_size(v, &c->budget_bytes) < 0 ? -EINVAL
               : c->budget_bytes == 0                     ? -ERANGE
                                                          : 0;
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
    MD_FALLBACK, MD_MEMORY, MD_QUEUE, MD_TIMEOUT, MD_GPU, MD_GPU_MEMORY, MD_N
};
static const char *const model_keys[MD_N] = {
    "backend", "path", "instances", "ttl", "preload", "pin", "priority",
    "fallback", "memory", "queue", "timeout", "gpu", "gpu_memory",
};

static int dup_str(char **slot, const char *v)
{
    free(*slot);
    *slot = strdup(v);
    return *slot ? 0 : -ENOMEM;
}

static int model_value(struct parser *p, struct larder__model_conf *m, int k, const char *v)
{
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
    }
    return -EINVAL;
}

static int model_option(struct parser *p, struct larder__model_conf *m, const char *key,
                        const char *v)
{
    for (size_t i = 0; i < m->n_opts; i++) {
        if (strcmp(m->opts[i].key, key) == 0) {
            fail(p, key, "key given twice");
            return 0;
        }
    }
    struct larder_option *o = realloc(m->opts, (m->n_opts + 1) * sizeof *o);
    if (!o)
        return -ENOMEM;
    m->opts = o;
    unsigned *lines = realloc(m->opt_lines, (m->n_opts + 1) * sizeof *lines);
    if (!lines)
        return -ENOMEM;
    m->opt_lines = lines;
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

static int new_model(struct parser *p, const char *name)
{
    struct larder__config *c = p->c;
    if (!valid_name(name)) {
        fail(p, NULL, "bad model name '%s' (letters, digits, '.', '-', '_'; at most %d)",
             name, MAX_NAME);
        return 0;
    }
    for (size_t i = 0; i < c->n_models; i++) {
        if (strcmp(c->models[i].name, name) == 0) {
            fail(p, NULL, "section [model.%s] given twice", name);
            return 0;
        }
    }
    struct larder__model_conf *ms = realloc(c->models, (c->n_models + 1) * sizeof *ms);
    if (!ms)
        return -ENOMEM;
    c->models = ms;
    struct larder__model_conf *m = &ms[c->n_models];
    *m = (struct larder__model_conf){.instances = 1, .ttl_ms = LARDER_TTL_DEFAULT, .gpu = -1,
                                     .line = p->header_line ? p->header_line : p->line};
    if (!(m->name = strdup(name)))
        return -ENOMEM;
    c->n_models++;
    p->model = m;
    return 0;
}

/* ---- the inih callbacks ------------------------------------------------------------------ */

static int enter_section(struct parser *p, const char *section)
{
    if (p->kind == SEC_SERVER)
        p->server_seen = p->seen;
    else if (p->kind == SEC_MEMORY)
        p->memory_seen = p->seen;
    snprintf(p->section, sizeof p->section, "%s", section);
    p->seen = 0;
    p->model = NULL;
    if (strcmp(section, "server") == 0) {
        p->kind = SEC_SERVER;
        p->seen = p->server_seen;
    } else if (strcmp(section, "memory") == 0) {
        p->kind = SEC_MEMORY;
        p->seen = p->memory_seen;
    }
    else if (strncmp(section, MODEL_PREFIX, strlen(MODEL_PREFIX)) == 0) {
        p->kind = SEC_MODEL;
        return new_model(p, section + strlen(MODEL_PREFIX));
    } else {
        p->kind = SEC_NONE;
        if (*section)
            fail(p, NULL, "unknown section [%s]", section);
        else
            fail(p, NULL, "key outside of any section");
    }
    return 0;
}

static bool mark_seen(struct parser *p, int k, const char *key)
{
    if (p->seen & (1ul << k)) {
        fail(p, key, "key given twice");
        return false;
    }
    p->seen |= 1ul << k;
    return true;
}

static int handle_known(struct parser *p, const char *key, const char *value)
{
    int k, r;
    const char *what = "bad value";
    if (!*value && !(p->kind == SEC_MODEL && key_index(model_keys, MD_N, key) < 0))
        return fail(p, key, "empty value"), 0;
    if (p->kind == SEC_SERVER) {
        if ((k = key_index(server_keys, SK_N, key)) < 0)
            return fail(p, key, "unknown key"), 0;
        r = mark_seen(p, k, key) ? server_value(p, k, value) : 0;
    } else if (p->kind == SEC_MEMORY) {
        if ((k = key_index(memory_keys, MK_N, key)) < 0)
            return fail(p, key, "unknown key"), 0;
        r = mark_seen(p, k, key) ? memory_value(p, k, value) : 0;
    } else if (p->kind == SEC_MODEL && p->model) {
        if ((k = key_index(model_keys, MD_N, key)) < 0)
            return model_option(p, p->model, key, value);
        r = mark_seen(p, k, key) ? model_value(p, p->model, k, value) : 0;
    } else {
        return 0;
    }
    if (r == -ENOMEM)
        return r;
    if (r == -ERANGE)
        what = "value out of range";
    if (r < 0)
        fail(p, key, "%s '%s'", what, value);
    return 0;
}

static int on_pair(void *user, const char *section, const char *key, const char *value)
{
    struct parser *p = user;
    int r = 0;
    if (p->rc)
        return 1;
    if (p->line_too_long) {
        fail(p, NULL, "line longer than %d characters", 196);
        return 1;
    }
    if (p->long_name_line) {
        p->line = p->long_name_line;
        fail(p, NULL, "section name or key longer than %d characters (model names: %d)",
             INI_NAME_MAX, MAX_NAME);
        return 1;
    }
    if (strcmp(section, p->section) != 0 || p->kind == SEC_NONE)
        r = enter_section(p, section);
    if (r == 0 && !p->rc)
        r = handle_known(p, key, value);
    if (r == -ENOMEM) {
        fail(p, key, "out of memory");
        p->rc = -ENOMEM;
    }
    return 1;
}

/* True when the section name or key of a raw line is longer than inih keeps. */
static bool name_too_long(const char *s)
{
    size_t n;
    if (*s == ';' || *s == '#' || !*s)
        return false;
    if (*s == '[')
        n = strcspn(s + 1, "]");
    else
        n = strcspn(s, "=:");
    return n > INI_NAME_MAX;
}

/* Reads one line per call, so the parser's line count is the current line. */
static char *read_line(char *str, int num, void *stream)
{
    struct parser *p = stream;
    int ch, n = 0;
    if (p->rc)
        return NULL;
    while ((ch = fgetc(p->f)) != EOF) {
        if (n < num - 2)
            str[n++] = (char)ch;
        else if (ch != '\n' && ch != '\r')
            p->line_too_long = true;
        if (ch == '\n')
            break;
    }
    if (n == 0 && ch == EOF)
        return NULL;
    str[n] = 0;
    p->line++;
    size_t lead = strspn(str, " \t");
    if (str[lead] == '[')
        p->header_line = p->line;
    if (!p->long_name_line && name_too_long(str + lead))
        p->long_name_line = p->line;
    return str;
}

/* ---- whole-file checks ---------------------------------------------------------------- */

static int cmp_model(const void *a, const void *b)
{
    return strcmp(((const struct larder__model_conf *)a)->name,
                  ((const struct larder__model_conf *)b)->name);
}

static void model_error(struct parser *p, const struct larder__model_conf *m, const char *key,
                        const char *msg)
{
    p->line = strcmp(key, "fallback") == 0 ? m->fallback_line : m->line;
    snprintf(p->section, sizeof p->section, "model.%s", m->name);
    fail(p, key, "%s", msg);
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

static bool fallback_loops(const struct larder__config *c, const struct larder__model_conf *m)
{
    const struct larder__model_conf *at = m;
    for (size_t steps = 0; at && at->fallback; steps++) {
        if (steps > c->n_models)
            return true;
        at = larder__config_model(c, at->fallback);
    }
    return false;
}

static void check_models(struct parser *p)
{
    struct larder__config *c = p->c;
    for (size_t i = 0; i < c->n_models && !p->rc; i++) {
        struct larder__model_conf *m = &c->models[i];
        if (!m->backend)
            model_error(p, m, "backend", "missing (required)");
        else if (m->fallback && strcmp(m->fallback, m->name) == 0)
            model_error(p, m, "fallback", "a model cannot be its own fallback");
        else if (m->fallback && !larder__config_model(c, m->fallback))
            model_error(p, m, "fallback", "names no [model.*] section");
        else if (fallback_loops(c, m))
            model_error(p, m, "fallback", "the fallback chain loops back on itself");
        else if (m->gpu_bytes && m->gpu < 0)
            model_error(p, m, "gpu_memory", "needs a gpu key naming the GPU");
        else if (m->path && path_option(m) < 0)
            p->rc = -ENOMEM;
    }
    if (!p->rc && c->low_watermark > 0 && c->high_watermark > 0 &&
        c->low_watermark >= c->high_watermark) {
        p->line = 0;
        snprintf(p->section, sizeof p->section, "memory");
        fail(p, "low_watermark", "must be below high_watermark");
    }
}

static int set_defaults(struct larder__config *c, const char *file)
{
    c->listen_port = LARDER__DEFAULT_PORT;
    c->max_body = 32ull << 20;
    c->events_queue = LARDER__SSE_QUEUE_DEFAULT;
    c->request_timeout_ms = 60000;
    c->drain_timeout_ms = 30000;
    c->log_format = LARDER__LOG_TEXT;
    c->log_level = LARDER__LOG_INFO;
    c->default_ttl_ms = LARDER_TTL_DEFAULT;
    c->watch_pressure = true;
    c->history_s = -1;
    if (!(c->file = strdup(file)) || !(c->listen_host = strdup("127.0.0.1")))
        return -ENOMEM;
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

int larder__config_load(const char *file, struct larder__config **ret_config, char *err,
                        size_t errlen)
{
    struct larder__config *c = calloc(1, sizeof *c);
    struct parser p = {.c = c, .err = err, .errlen = errlen};
    if (!c)
        return -ENOMEM;
    int r = set_defaults(c, file);
    if (r == 0 && !(p.f = fopen(file, "r")))
        r = -errno;
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", file, strerror(-r));
        larder__config_free(c);
        return r;
    }
    int ir = ini_parse_stream(read_line, &p, on_pair, &p);
    fclose(p.f);
    if (!p.rc && ir > 0) {
        p.line = (unsigned)ir;
        fail(&p, NULL, "syntax error (expected [section] or key = value)");
    }
    if (!p.rc && c->n_models)
        qsort(c->models, c->n_models, sizeof *c->models, cmp_model);
    if (!p.rc)
        check_models(&p);
    if (p.rc) {
        larder__config_free(c);
        return p.rc;
    }
    *ret_config = c;
    return 0;
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

bool larder__model_conf_equal(const struct larder__model_conf *a,
                              const struct larder__model_conf *b)
{
    if (!str_eq(a->name, b->name) || !str_eq(a->backend, b->backend) ||
        !str_eq(a->path, b->path) || !str_eq(a->fallback, b->fallback) ||
        a->instances != b->instances || a->ttl_ms != b->ttl_ms || a->preload != b->preload ||
        a->pin != b->pin || a->priority != b->priority || a->memory_bytes != b->memory_bytes ||
        a->queue != b->queue || a->timeout_ms != b->timeout_ms || a->gpu != b->gpu ||
        a->gpu_bytes != b->gpu_bytes || a->n_opts != b->n_opts)
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
