/* larderd advice: the recorder of events and the judgement of GET /v1/advice (see
 * advice.h). */
#include "advice.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"

/* The last RING entries of something, with a time and one figure each. */
#define RING 32
#define BUCKETS 1024

struct stamp {
    double t;   /* monotonic seconds */
    double a, b;
};

struct ring {
    struct stamp e[RING];
    unsigned n; /* pushed so far; the last min(n, RING) are kept */
};

struct record {
    char *name;
    struct record *next;
    double evicted_at;      /* evicted for room (budget, pressure), not loaded since; 0 none */
    double ttl_at;          /* unloaded by its ttl, not loaded since; 0 none */
    struct ring reloads;    /* loads after an eviction for room: a = load ms */
    struct ring evictions;  /* evictions for room: a = bytes */
    struct ring ttl_reuse;  /* a load after a ttl expiry: a = seconds between them */
    struct ring unloads;    /* unloads that measured their RSS: a = bytes, b = returned */
    uint64_t load_buckets[LARDER__LOAD_BUCKETS + 1];
    double load_seconds_sum;
    uint64_t loads;
};

struct larder__advice {
    pthread_mutex_t lock;
    struct record *table[BUCKETS];
    struct ring pressure;   /* pressure events */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void ring_push(struct ring *r, double t, double a, double b)
{
    r->e[r->n++ % RING] = (struct stamp){t, a, b};
}

/* Entries kept, oldest first: for (i = 0; i < ring_len(r); i++) ring_at(r, i). */
static unsigned ring_len(const struct ring *r)
{
    return r->n < RING ? r->n : RING;
}

static const struct stamp *ring_at(const struct ring *r, unsigned i)
{
    return &r->e[(r->n - ring_len(r) + i) % RING];
}

/* Entries since `since`: their count, and the sum and largest of their first figure. */
static unsigned ring_since(const struct ring *r, double since, double *ret_sum, double *ret_max)
{
    unsigned n = 0;
    double sum = 0, max = 0;
    for (unsigned i = 0; i < ring_len(r); i++) {
        const struct stamp *s = ring_at(r, i);
        if (s->t < since)
            continue;
        n++;
        sum += s->a;
        max = s->a > max ? s->a : max;
    }
    if (ret_sum)
        *ret_sum = sum;
    if (ret_max)
        *ret_max = max;
    return n;
}

int larder__advice_new(struct larder__advice **ret)
{
    struct larder__advice *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    pthread_mutex_init(&a->lock, NULL);
    *ret = a;
    return 0;
}

struct larder__advice *larder__advice_free(struct larder__advice *a)
{
    if (!a)
        return NULL;
    for (size_t i = 0; i < BUCKETS; i++)
        for (struct record *r = a->table[i], *next; r; r = next) {
            next = r->next;
            free(r->name);
            free(r);
        }
    pthread_mutex_destroy(&a->lock);
    free(a);
    return NULL;
}

static size_t name_hash(const char *s)
{
    size_t h = 5381;
    while (*s)
        h = h * 33 + (unsigned char)*s++;
    return h % BUCKETS;
}

/* a->lock held. create: add it when missing (NULL when out of memory). */
static struct record *find(struct larder__advice *a, const char *name, bool create)
{
    size_t h = name_hash(name);
    for (struct record *r = a->table[h]; r; r = r->next)
        if (strcmp(r->name, name) == 0)
            return r;
    if (!create)
        return NULL;
    struct record *r = calloc(1, sizeof *r);
    if (!r || !(r->name = strdup(name))) {
        free(r);
        return NULL;
    }
    r->next = a->table[h];
    a->table[h] = r;
    return r;
}

static void record_load(struct record *r, double t, double load_ms)
{
    double s = load_ms / 1000.0;
    size_t b = 0;
    while (b < LARDER__LOAD_BUCKETS && s > larder__load_buckets[b])
        b++;
    r->load_buckets[b]++;
    r->load_seconds_sum += s;
    r->loads++;
    if (r->evicted_at > 0)
        ring_push(&r->reloads, t, load_ms, 0);
    r->evicted_at = 0;
}

static void record_unload(struct record *r, const struct larder_event *ev, double t)
{
    if (ev->reason == LARDER_REASON_BUDGET || ev->reason == LARDER_REASON_PRESSURE) {
        r->evicted_at = t;
        ring_push(&r->evictions, t, (double)ev->bytes, 0);
    }
    if (ev->reason == LARDER_REASON_TTL)
        r->ttl_at = t;
    /* 0: the unload ran beside another load or unload and could not tell its own RSS. */
    if (ev->bytes_returned != 0 && ev->bytes)
        ring_push(&r->unloads, t, (double)ev->bytes, (double)ev->bytes_returned);
}

void larder__advice_record(struct larder__advice *a, const struct larder_event *ev)
{
    if (!a)
        return;
    double t = now_s();
    pthread_mutex_lock(&a->lock);
    if (ev->type == LARDER_EVENT_PRESSURE)
        ring_push(&a->pressure, t, 0, 0);
    struct record *r = NULL;
    if (ev->name && (ev->type == LARDER_EVENT_LOAD_START || ev->type == LARDER_EVENT_LOAD_DONE ||
                     ev->type == LARDER_EVENT_UNLOAD))
        r = find(a, ev->name, true);
    if (r && ev->type == LARDER_EVENT_LOAD_START && r->ttl_at > 0) {
        ring_push(&r->ttl_reuse, t, t - r->ttl_at, 0);
        r->ttl_at = 0;
    } else if (r && ev->type == LARDER_EVENT_LOAD_DONE) {
        record_load(r, t, ev->load_ms);
    } else if (r && ev->type == LARDER_EVENT_UNLOAD) {
        record_unload(r, ev, t);
    }
    pthread_mutex_unlock(&a->lock);
}

/* ---- judgement -------------------------------------------------------------------------- */

static uint64_t model_bytes(const struct larder_component_info *c)
{
    return c->measured_bytes > c->estimate_bytes ? c->measured_bytes : c->estimate_bytes;
}

static uint64_t mib_up(uint64_t bytes)
{
    return (bytes + (1u << 20) - 1) >> 20;
}

static void add_item(json_t *items, const char *kind, const char *model, json_t *evidence,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void add_item(json_t *items, const char *kind, const char *model, json_t *evidence,
                     const char *fmt, ...)
{
    char suggestion[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(suggestion, sizeof suggestion, fmt, ap);
    va_end(ap);
    json_array_append_new(items, json_pack("{s:s,s:s?,s:o,s:s}", "kind", kind, "model", model,
                                           "evidence", evidence, "suggestion", suggestion));
}

/* Evicted for room and loaded again, again and again. */
static void judge_thrashing(json_t *items, const struct record *r,
                            const struct larder_snapshot *s, const struct larder_component_info *c,
                            double since)
{
    double load_ms = 0;
    unsigned reloads = ring_since(&r->reloads, since, &load_ms, NULL);
    if (reloads < LARDER__ADVICE_THRASH_MIN)
        return;
    unsigned evictions = ring_since(&r->evictions, since, NULL, NULL);
    uint64_t bytes = model_bytes(c);
    uint64_t budget = s->budget_bytes + bytes;
    add_item(items, "thrashing", c->name,
             json_pack("{s:i,s:i,s:f,s:I,s:I,s:I,s:f}", "reloads_last_hour", (int)reloads,
                       "evictions_last_hour", (int)evictions, "cold_load_seconds",
                       load_ms / 1000.0, "model_bytes", (json_int_t)bytes, "budget_bytes",
                       (json_int_t)s->budget_bytes, "budget_to_keep_warm_bytes",
                       (json_int_t)budget, "window_s", LARDER__ADVICE_WINDOW_S),
             "'%s' was evicted for room and loaded again %u times in the last hour (%.1f s of "
             "cold loads): a budget of %llu MiB would have kept it warm ([memory] budget = "
             "%lluMiB), or keep it loaded with pin = yes in [model.%s]",
             c->name, reloads, load_ms / 1000.0, (unsigned long long)mib_up(budget),
             (unsigned long long)mib_up(budget), c->name);
}

/* Unloaded by its ttl and wanted again within one more ttl, repeatedly. */
static void judge_ttl(json_t *items, const struct record *r, const struct larder_component_info *c,
                      double since)
{
    if (c->ttl_ms <= 0)
        return;
    double ttl_s = (double)c->ttl_ms / 1000.0;
    unsigned n = 0;
    double max_gap = 0, sum_gap = 0;
    for (unsigned i = 0; i < ring_len(&r->ttl_reuse); i++) {
        const struct stamp *e = ring_at(&r->ttl_reuse, i);
        if (e->t < since || e->a > ttl_s)
            continue;
        n++;
        sum_gap += e->a;
        max_gap = e->a > max_gap ? e->a : max_gap;
    }
    if (n < LARDER__ADVICE_TTL_REUSE_MIN)
        return;
    long long want = (long long)ceil(ttl_s + max_gap) + 1;
    add_item(items, "ttl_too_short", c->name,
             json_pack("{s:i,s:f,s:f,s:f,s:f}", "reused_after_expiry", (int)n, "ttl_s", ttl_s,
                       "max_gap_s", max_gap, "mean_gap_s", sum_gap / n, "window_s",
                       LARDER__ADVICE_WINDOW_S),
             "'%s' expired by its ttl and was loaded again within %.1f s, %u times in the last "
             "hour: set ttl = %llds in [model.%s]",
             c->name, max_gap, n, want, c->name);
}

/* Unloads that gave back far less than the model took. */
static void judge_leak(json_t *items, const struct record *r, const struct larder_component_info *c)
{
    unsigned seen = 0, low = 0;
    double loaded = 0, returned = 0;
    for (unsigned i = 0; i < ring_len(&r->unloads); i++) {
        const struct stamp *e = ring_at(&r->unloads, i);
        if (e->a < LARDER__ADVICE_LEAK_MIN_BYTES)
            continue;
        seen++;
        loaded += e->a;
        returned += e->b;
        low += e->b < e->a / 2;
    }
    if (low < LARDER__ADVICE_LEAK_MIN || low * 2 <= seen)
        return;
    add_item(items, "leak_suspect", c->name,
             json_pack("{s:i,s:i,s:I,s:I,s:b}", "unloads", (int)seen, "unloads_under_half",
                       (int)low, "loaded_bytes", (json_int_t)loaded, "returned_bytes",
                       (json_int_t)returned, "leak_suspect", c->leak_suspect),
             "%u of %u unloads of '%s' gave back less than half of its memory (%llu of %llu "
             "MiB in all): its backend may leak; set isolation = worker in [model.%s] so "
             "that its memory goes back with its process",
             low, seen, c->name, (unsigned long long)(returned > 0 ? returned / (1 << 20) : 0),
             (unsigned long long)(loaded / (1 << 20)), c->name);
}

static void judge_estimate(json_t *items, const struct larder_component_info *c)
{
    if (!c->loads || !c->measured_bytes || !c->estimate_bytes ||
        c->estimate_source == LARDER_ESTIMATE_LEARNED || c->estimate_source == LARDER_ESTIMATE_NONE)
        return;
    double ratio = (double)c->measured_bytes / (double)c->estimate_bytes;
    uint64_t diff = c->measured_bytes > c->estimate_bytes ? c->measured_bytes - c->estimate_bytes
                                                          : c->estimate_bytes - c->measured_bytes;
    if (diff < LARDER__ADVICE_ESTIMATE_MIN_BYTES ||
        (ratio <= LARDER__ADVICE_ESTIMATE_RATIO && ratio >= 1 / LARDER__ADVICE_ESTIMATE_RATIO))
        return;
    add_item(items, "estimate_off", c->name,
             json_pack("{s:I,s:s,s:I,s:f}", "estimate_bytes", (json_int_t)c->estimate_bytes,
                       "estimate_source", larder_estimate_source_name(c->estimate_source),
                       "measured_bytes", (json_int_t)c->measured_bytes, "ratio", ratio),
             "'%s' measured %llu MiB against an estimate of %llu MiB: set memory = %lluMiB in "
             "[model.%s] so that admission reserves what it takes",
             c->name, (unsigned long long)mib_up(c->measured_bytes),
             (unsigned long long)mib_up(c->estimate_bytes),
             (unsigned long long)mib_up(c->measured_bytes), c->name);
}

/* Larger than the budget (or than what the pins of the others leave), or too large to
 * share it with even the smallest other model. */
static void judge_fit(json_t *items, const struct larder_snapshot *s, size_t k)
{
    const struct larder_component_info *c = &s->components[k];
    uint64_t bytes = model_bytes(c), pinned = 0, smallest = 0;
    const char *smallest_name = NULL;
    for (size_t i = 0; i < s->n; i++) {
        const struct larder_component_info *o = &s->components[i];
        uint64_t ob = model_bytes(o);
        if (i == k || !ob)
            continue;
        if (o->pin)
            pinned += ob;
        if (!smallest_name || ob < smallest) {
            smallest = ob;
            smallest_name = o->name;
        }
    }
    if (!bytes || !s->budget_bytes)
        return;
    uint64_t room = pinned < s->budget_bytes ? s->budget_bytes - pinned : 0;
    bool over = bytes > s->budget_bytes;
    if (over || (!c->pin && bytes > room)) {
        add_item(items, "never_fits", c->name,
                 json_pack("{s:I,s:I,s:I,s:s?}", "model_bytes", (json_int_t)bytes,
                           "budget_bytes", (json_int_t)s->budget_bytes, "pinned_bytes",
                           (json_int_t)pinned, "fallback", c->fallback),
                 over ? "'%s' needs %llu MiB, more than the whole budget: raise [memory] budget "
                        "to %lluMiB, or serve its requests with a smaller fallback"
                      : "'%s' needs %llu MiB, more than the pinned models leave of the budget: "
                        "raise [memory] budget to %lluMiB, or unpin one",
                 c->name, (unsigned long long)mib_up(bytes),
                 (unsigned long long)mib_up(over ? bytes : bytes + pinned));
        return;
    }
    if (smallest_name && bytes + smallest > s->budget_bytes)
        add_item(items, "fits_only_alone", c->name,
                 json_pack("{s:I,s:I,s:s,s:I}", "model_bytes", (json_int_t)bytes, "budget_bytes",
                           (json_int_t)s->budget_bytes, "smallest_other", smallest_name,
                           "smallest_other_bytes", (json_int_t)smallest),
                 "'%s' (%llu MiB) fits only alone: every other model is evicted when it loads; "
                 "a budget of %lluMiB would let it share with '%s'",
                 c->name, (unsigned long long)mib_up(bytes),
                 (unsigned long long)mib_up(bytes + smallest), smallest_name);
}

static void judge_memory(json_t *items, struct larder__advice *a, const struct larder_snapshot *s,
                         const struct larder_memory *mem, double now)
{
    unsigned n = 0;
    double first = 0, last = 0;
    for (unsigned i = 0; i < ring_len(&a->pressure); i++) {
        const struct stamp *e = ring_at(&a->pressure, i);
        if (e->t < now - LARDER__ADVICE_WINDOW_S)
            continue;
        if (!n++)
            first = e->t;
        last = e->t;
    }
    if (n >= LARDER__ADVICE_PRESSURE_MIN)
        add_item(items, "pressure", NULL,
                 json_pack("{s:i,s:f,s:f,s:b,s:I,s:I,s:I}", "events_last_hour", (int)n,
                           "duration_s", last - first, "last_s_ago", now - last,
                           "under_pressure", mem && mem->under_pressure, "usage_bytes",
                           (json_int_t)(mem ? mem->usage_bytes : 0), "high_bytes",
                           (json_int_t)(mem ? mem->high_bytes : 0), "pressure_evictions",
                           (json_int_t)(mem ? mem->pressure_evictions : 0)),
                 "memory was under pressure %u times over %.0f s in the last hour: lower "
                 "[memory] budget, or give larderd more memory",
                 n, last - first);
    if (!mem || !mem->cgroup_version)
        return;
    uint64_t limit = mem->cgroup_max < mem->cgroup_high ? mem->cgroup_max : mem->cgroup_high;
    if (limit == UINT64_MAX || !limit ||
        (double)s->budget_bytes < LARDER__ADVICE_CGROUP_RATIO * (double)limit)
        return;
    add_item(items, "cgroup_limit", NULL,
             json_pack("{s:I,s:I,s:f}", "budget_bytes", (json_int_t)s->budget_bytes,
                       "cgroup_limit_bytes", (json_int_t)limit, "ratio",
                       (double)s->budget_bytes / (double)limit),
             "the budget (%llu MiB) is %.0f%% of the cgroup's memory limit (%llu MiB), which "
             "leaves nothing for requests and the process itself: set [memory] budget = "
             "%lluMiB or raise the limit",
             (unsigned long long)mib_up(s->budget_bytes),
             100.0 * (double)s->budget_bytes / (double)limit, (unsigned long long)(limit >> 20),
             (unsigned long long)((limit * 3 / 4) >> 20));
}

json_t *larder__advice_items(struct larder__advice *a, const struct larder_snapshot *s,
                             const struct larder_memory *mem)
{
    json_t *items = json_array();
    double now = now_s(), since = now - LARDER__ADVICE_WINDOW_S;
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < s->n; i++) {
        const struct larder_component_info *c = &s->components[i];
        judge_fit(items, s, i);
        judge_estimate(items, c);
        const struct record *r = find(a, c->name, false);
        if (!r)
            continue;
        judge_thrashing(items, r, s, c, since);
        judge_ttl(items, r, c, since);
        judge_leak(items, r, c);
    }
    judge_memory(items, a, s, mem, now);
    pthread_mutex_unlock(&a->lock);
    return items;
}

void larder__advice_load_histograms(struct larder__advice *a, struct larder__text *t)
{
    static const char name[] = "larder_component_load_duration_seconds";
    larder__text_put(t, "# HELP %s duration of the component's successful loads\n"
                        "# TYPE %s histogram\n", name, name);
    pthread_mutex_lock(&a->lock);
    /* Component names are [A-Za-z0-9._-]: no escaping in label values. */
    for (size_t h = 0; h < BUCKETS; h++)
        for (const struct record *r = a->table[h]; r; r = r->next) {
            if (!r->loads)
                continue;
            unsigned long long cum = 0;
            for (int i = 0; i < LARDER__LOAD_BUCKETS; i++) {
                cum += r->load_buckets[i];
                larder__text_put(t, "%s_bucket{name=\"%s\",le=\"%g\"} %llu\n", name, r->name,
                                 larder__load_buckets[i], cum);
            }
            cum += r->load_buckets[LARDER__LOAD_BUCKETS];
            larder__text_put(t, "%s_bucket{name=\"%s\",le=\"+Inf\"} %llu\n", name, r->name, cum);
            larder__text_put(t, "%s_sum{name=\"%s\"} %.17g\n", name, r->name,
                             r->load_seconds_sum);
            larder__text_put(t, "%s_count{name=\"%s\"} %llu\n", name, r->name, cum);
        }
    pthread_mutex_unlock(&a->lock);
}
