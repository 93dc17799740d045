/* Request traces: in-memory form and text format (see trace.h). */
#include "trace.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

int trace_new(const char *name, struct trace **ret_trace)
{
    struct trace *t = calloc(1, sizeof(*t));

    if (!t)
        return -ENOMEM;
    t->name = strdup(name ? name : "trace");
    if (!t->name) {
        free(t);
        return -ENOMEM;
    }
    *ret_trace = t;
    return 0;
}

struct trace *trace_free(struct trace *t)
{
    if (!t)
        return NULL;
    for (size_t i = 0; i < t->ncomps; i++)
        free(t->comps[i].name);
    free(t->comps);
    free(t->reqs);
    free(t->name);
    free(t);
    return NULL;
}

/* Makes room for one more element of `size` bytes in *items. */
static int grow(void **items, size_t n, size_t *cap, size_t size)
{
    size_t ncap;
    void *p;

    if (n < *cap)
        return 0;
    ncap = *cap ? *cap * 2 : 64;
    p = realloc(*items, ncap * size);
    if (!p)
        return -ENOMEM;
    *items = p;
    *cap = ncap;
    return 0;
}

int trace_find(const struct trace *t, const char *name)
{
    for (size_t i = 0; i < t->ncomps; i++)
        if (strcmp(t->comps[i].name, name) == 0)
            return (int)i;
    return -ENOENT;
}

int trace_add_comp(struct trace *t, const struct trace_comp *c)
{
    struct trace_comp *slot;

    if (!c->name || !c->name[0] || c->bytes == 0 || !isfinite(c->load_s) || c->load_s < 0)
        return -EINVAL;
    if (trace_find(t, c->name) >= 0 || t->ncomps >= INT32_MAX)
        return -EINVAL;
    if (grow((void **)&t->comps, t->ncomps, &t->capcomps, sizeof(*t->comps)) < 0)
        return -ENOMEM;
    slot = &t->comps[t->ncomps];
    *slot = *c;
    slot->name = strdup(c->name);
    if (!slot->name)
        return -ENOMEM;
    return (int)t->ncomps++;
}

int trace_add_req(struct trace *t, double time, uint32_t comp, double dur)
{
    if (comp >= t->ncomps || !isfinite(time) || time < 0 || !isfinite(dur) || dur < 0)
        return -EINVAL;
    if (grow((void **)&t->reqs, t->nreqs, &t->capreqs, sizeof(*t->reqs)) < 0)
        return -ENOMEM;
    t->reqs[t->nreqs++] = (struct trace_req){.t = time, .dur = dur, .comp = comp};
    return 0;
}

/* Bottom-up merge sort by time: stable, so equal times keep their order. */
int trace_sort(struct trace *t)
{
    struct trace_req *a = t->reqs, *b;
    size_t n = t->nreqs;

    if (n < 2)
        return 0;
    b = malloc(n * sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;

            while (i < mid && j < hi)
                b[k++] = a[j].t < a[i].t ? a[j++] : a[i++];
            while (i < mid)
                b[k++] = a[i++];
            while (j < hi)
                b[k++] = a[j++];
        }
        struct trace_req *tmp = a;
        a = b;
        b = tmp;
    }
    t->reqs = a;
    free(b);
    return 0;
}

uint64_t trace_total_bytes(const struct trace *t)
{
    uint64_t sum = 0;

    for (size_t i = 0; i < t->ncomps; i++)
        sum += t->comps[i].bytes;
    return sum;
}

/* ---- text format ---------------------------------------------------------------------- */

int trace_parse_size(const char *s, uint64_t *ret_bytes)
{
    static const struct {
        const char *suffix;
        unsigned shift;
    } units[] = {{"", 0}, {"B", 0}, {"K", 10}, {"KiB", 10}, {"M", 20}, {"MiB", 20},
                 {"G", 30}, {"GiB", 30}};
    char *end;
    unsigned long long v;

    if (!s || *s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].suffix) != 0)
            continue;
        if (v > (UINT64_MAX >> units[i].shift))
            return -ERANGE;
        *ret_bytes = (uint64_t)v << units[i].shift;
        return 0;
    }
    return -EINVAL;
}

struct parser {
    struct trace *t;
    unsigned line;
    double last_time;
    char *err;
    size_t errlen;
};

static int fail(struct parser *p, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (!p->errlen)
        return -EINVAL;
    n = snprintf(p->err, p->errlen, "line %u: ", p->line);
    if (n >= 0 && (size_t)n < p->errlen) {
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* Parses a finite, non-negative decimal number that is the whole of s. */
static int parse_seconds(const char *s, double *ret)
{
    char *end;
    double v;

    if (!s)
        return -EINVAL;
    errno = 0;
    v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v < 0)
        return -EINVAL;
    *ret = v;
    return 0;
}

static int parse_long(const char *s, long long lo, long long hi, long long *ret)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -EINVAL;
    *ret = v;
    return 0;
}

/* One optional attribute of a component line. */
static int parse_attr(struct parser *p, const char *tok, struct trace_comp *c)
{
    long long v;

    if (strcmp(tok, "pin") == 0) {
        c->pin = true;
    } else if (strncmp(tok, "priority=", 9) == 0) {
        if (parse_long(tok + 9, -1000000, 1000000, &v) < 0)
            return fail(p, "bad priority '%s'", tok + 9);
        c->priority = (int)v;
    } else if (strncmp(tok, "ttl=", 4) == 0) {
        if (parse_long(tok + 4, -1, INT64_MAX, &v) < 0)
            return fail(p, "bad ttl '%s'", tok + 4);
        c->ttl_ms = v;
    } else {
        return fail(p, "unknown attribute '%s'", tok);
    }
    return 0;
}

static int parse_component(struct parser *p, char **save)
{
    struct trace_comp c = {.ttl_ms = -1};
    const char *bytes, *load;
    char *tok;
    int rc;

    c.name = strtok_r(NULL, " \t", save);
    bytes = strtok_r(NULL, " \t", save);
    load = strtok_r(NULL, " \t", save);
    if (!load)
        return fail(p, "component needs NAME BYTES LOAD_SECONDS");
    if (trace_parse_size(bytes, &c.bytes) < 0 || c.bytes == 0)
        return fail(p, "bad size '%s'", bytes);
    if (parse_seconds(load, &c.load_s) < 0)
        return fail(p, "bad load time '%s'", load);
    while ((tok = strtok_r(NULL, " \t", save)))
        if ((rc = parse_attr(p, tok, &c)) < 0)
            return rc;
    if (trace_find(p->t, c.name) >= 0)
        return fail(p, "component '%s' declared twice", c.name);
    rc = trace_add_comp(p->t, &c);
    return rc < 0 ? rc : 0;
}

static int parse_request(struct parser *p, const char *first, char **save)
{
    const char *name = strtok_r(NULL, " \t", save), *dur_s = strtok_r(NULL, " \t", save);
    double time, dur = 0;
    int comp;

    if (parse_seconds(first, &time) < 0)
        return fail(p, "bad time '%s'", first);
    if (!name)
        return fail(p, "request needs TIME NAME [DURATION]");
    if ((comp = trace_find(p->t, name)) < 0)
        return fail(p, "unknown component '%s'", name);
    if (dur_s && parse_seconds(dur_s, &dur) < 0)
        return fail(p, "bad duration '%s'", dur_s);
    if (strtok_r(NULL, " \t", save))
        return fail(p, "extra fields after the duration");
    if (time < p->last_time)
        return fail(p, "time %g goes back (previous %g)", time, p->last_time);
    p->last_time = time;
    return trace_add_req(p->t, time, (uint32_t)comp, dur);
}

static int parse_line(struct parser *p, char *line)
{
    char *save = NULL, *hash = strchr(line, '#'), *tok;

    if (hash)
        *hash = '\0';
    line[strcspn(line, "\r\n")] = '\0';
    tok = strtok_r(line, " \t", &save);
    if (!tok)
        return 0;
    if (strcmp(tok, "component") == 0)
        return parse_component(p, &save);
    return parse_request(p, tok, &save);
}

int trace_read(FILE *f, const char *name, struct trace **ret_trace, char *err, size_t errlen)
{
    struct parser p = {.err = err, .errlen = errlen};
    char *line = NULL;
    size_t cap = 0;
    int rc;

    if (errlen)
        err[0] = '\0';
    if ((rc = trace_new(name, &p.t)) < 0)
        return rc;
    errno = 0;
    while (getline(&line, &cap, f) >= 0) {
        p.line++;
        if ((rc = parse_line(&p, line)) < 0)
            break;
    }
    if (rc >= 0 && ferror(f))
        rc = errno ? -errno : -EIO;
    free(line);
    if (rc < 0) {
        trace_free(p.t);
        return rc;
    }
    *ret_trace = p.t;
    return 0;
}

int trace_parse(const char *text, const char *name, struct trace **ret_trace, char *err,
                size_t errlen)
{
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    int rc;

    if (!f)
        return -errno;
    rc = trace_read(f, name, ret_trace, err, errlen);
    fclose(f);
    return rc;
}

/* "dir/zipf-0.8.trace" -> "zipf-0.8" */
static char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/'), *b = slash ? slash + 1 : path;
    const char *dot = strrchr(b, '.');
    size_t n = dot && dot != b ? (size_t)(dot - b) : strlen(b);

    return strndup(b, n);
}

int trace_load(const char *path, struct trace **ret_trace, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char *name;
    int rc;

    if (!f) {
        rc = -errno;
        if (errlen)
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return rc;
    }
    name = base_name(path);
    rc = name ? trace_read(f, name, ret_trace, err, errlen) : -ENOMEM;
    free(name);
    fclose(f);
    return rc;
}

/* The shortest of %.15g, %.16g, %.17g that reads back as exactly v. */
static const char *num(char buf[32], double v)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return buf;
}

int trace_write(const struct trace *t, FILE *f)
{
    char a[32], b[32];

    fprintf(f, "# larder trace: %s\n# component NAME BYTES LOAD_SECONDS [priority=N] "
               "[ttl=MS] [pin]\n# TIME NAME [DURATION]\n", t->name);
    for (size_t i = 0; i < t->ncomps; i++) {
        const struct trace_comp *c = &t->comps[i];

        fprintf(f, "component %s %" PRIu64 " %s", c->name, c->bytes, num(a, c->load_s));
        if (c->priority)
            fprintf(f, " priority=%d", c->priority);
        if (c->ttl_ms != -1)
            fprintf(f, " ttl=%" PRId64, c->ttl_ms);
        fputs(c->pin ? " pin\n" : "\n", f);
    }
    for (size_t i = 0; i < t->nreqs; i++) {
        const struct trace_req *r = &t->reqs[i];

        if (r->dur > 0)
            fprintf(f, "%s %s %s\n", num(a, r->t), t->comps[r->comp].name, num(b, r->dur));
        else
            fprintf(f, "%s %s\n", num(a, r->t), t->comps[r->comp].name);
    }
    return ferror(f) ? -EIO : 0;
}
