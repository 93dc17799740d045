/* The manager: open/close, the registry of definitions, snapshots, names. */
#include "internal.h"
#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t larder__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void larder__abstime(int64_t left_ms, struct timespec *ts)
{
    if (left_ms < 0)
        left_ms = 0;
    if (left_ms > 86400000)
        left_ms = 86400000; /* callers re-check their deadline after a wake-up */
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += left_ms / 1000;
    ts->tv_nsec += (left_ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

double larder__now_ms_precise(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

double larder__now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- registry: open addressing, lock-free lookups, inserts under m->mu ---------- */

static struct table *table_new(size_t cap)
{
    struct table *t = calloc(1, sizeof *t + cap * sizeof(t->slots[0]));
    if (t)
        t->cap = cap;
    return t;
}

static void table_put(struct table *t, struct comp *c)
{
    size_t mask = t->cap - 1;
    size_t i = c->hash & mask;
    while (atomic_load_explicit(&t->slots[i], memory_order_relaxed))
        i = (i + 1) & mask;
    atomic_store_explicit(&t->slots[i], c, memory_order_release);
}

/* m->mu held. Old tables stay readable until the manager dies: lookups never lock. */
static int registry_insert(struct larder *m, struct comp *c)
{
    struct table *t = atomic_load_explicit(&m->table, memory_order_relaxed);
    if ((m->n_comps + 1) * 2 > t->cap) {
        struct table *nt = table_new(t->cap * 2);
        if (!nt)
            return -ENOMEM;
        for (size_t i = 0; i < t->cap; i++) {
            struct comp *o = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
            if (o)
                table_put(nt, o);
        }
        t->retired_next = m->retired;
        m->retired = t;
        atomic_store_explicit(&m->table, nt, memory_order_release);
        t = nt;
    }
    table_put(t, c);
    m->n_comps++;
    return 0;
}

void larder__each_comp(struct larder *m, void (*fn)(struct comp *c, void *arg), void *arg)
{
    struct table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    for (size_t i = 0; i < t->cap; i++) {
        struct comp *c = atomic_load_explicit(&t->slots[i], memory_order_acquire);
        if (c)
            fn(c, arg);
    }
}

/* ---- events --------------------------------------------------------------------- */

void larder__emit(struct larder *m, const struct larder_event *ev)
{
    larder__memory_note(m, ev);
    if (m->opts.on_event && !atomic_load(&m->events_off))
        m->opts.on_event(m->opts.event_ud, ev);
}

void larder__emit_simple(struct larder *m, enum larder_event_type t, const struct comp *c,
                         enum larder_evict_reason reason, uint64_t bytes)
{
    struct larder_event ev = {.struct_size = sizeof ev, .type = t, .reason = reason,
                              .bytes = bytes, .name = c ? c->name : NULL};
    larder__emit(m, &ev);
}

/* ---- open / close ----------------------------------------------------------------- */

void larder_opts_init(struct larder_opts *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->budget_fraction = 0.75;
    o->policy = "cost";
    o->loader_threads = 4;
    o->default_ttl_ms = 300000;
    o->default_queue_max = 1024;
    o->admission_timeout_ms = 30000;
    o->file_size_factor = 1.2;
    o->cooldown_min_ms = 1000;
    o->cooldown_max_ms = 300000;
    o->trim_after_unload = true;
    o->high_watermark = 0.90;
    o->low_watermark = 0.80;
    o->watch_pressure = true;
    o->history_seconds = 3600;
    o->close_timeout_ms = 10000;
}

static uint64_t default_budget(double fraction)
{
    uint64_t b = 0;
    if (fraction <= 0 || fraction > 1)
        fraction = 0.75;
    larder__default_budget(NULL, fraction, &b);
    return b ? b : 1;
}

static int check_opts(const struct larder_opts *o, struct larder_opts *out)
{
    larder_opts_init(out);
    if (!o)
        return 0;
    if (o->struct_size < offsetof(struct larder_opts, event_ud) + sizeof(void *) ||
        o->struct_size > 4096)
        return -EINVAL;
    memcpy(out, o, o->struct_size < sizeof *out ? o->struct_size : sizeof *out);
    out->struct_size = sizeof *out;
    if (!out->policy)
        out->policy = "cost";
    if (!out->loader_threads)
        out->loader_threads = 4;
    if (out->loader_threads > 256 || out->cooldown_min_ms < 0 ||
        out->cooldown_max_ms < out->cooldown_min_ms || out->admission_timeout_ms < 0 ||
        out->default_ttl_ms < -1 || out->file_size_factor < 0 || out->low_watermark <= 0 ||
        out->high_watermark > 1 || out->low_watermark > out->high_watermark ||
        out->history_seconds > 7 * 24 * 3600 || out->close_timeout_ms < -1)
        return -EINVAL;
    if (!out->default_queue_max)
        out->default_queue_max = 1024;
    return 0;
}

static void free_manager(struct larder *m);

static int init_sync(struct larder *m)
{
    pthread_mutex_init(&m->mu, NULL);
    pthread_mutex_init(&m->set_mu, NULL);
    pthread_mutex_init(&m->jobs_mu, NULL);
    pthread_mutex_init(&m->reaper_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->budget_cv, &ca);
    pthread_cond_init(&m->reaper_cv, &ca);
    pthread_cond_init(&m->loaders_cv, &ca);
    pthread_condattr_destroy(&ca);
    return 0;
}

int larder_open(const struct larder_opts *opts, larder **ret_manager)
{
    if (!ret_manager)
        return -EINVAL;
    struct larder_opts o;
    int r = check_opts(opts, &o);
    if (r < 0)
        return r;
    const struct larder__policy *p = larder__policy_find(o.policy);
    if (!p)
        return LARDER_EPOLICY;
    struct larder *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->opts = o;
    m->opts.policy = p->name;
    m->policy = p;
    m->policy_state = calloc(1, p->state_size ? p->state_size : 1);
    atomic_init(&m->table, table_new(16));
    if (!m->policy_state || !atomic_load(&m->table)) {
        free(m->policy_state);
        free(atomic_load(&m->table));
        free(m);
        return -ENOMEM;
    }
    if (p->init)
        p->init(m->policy_state);
    init_sync(m);
    m->budget = o.budget_bytes ? o.budget_bytes : default_budget(o.budget_fraction);
    atomic_init(&m->refs, 1);
    r = larder__memory_start(m);
    if (r >= 0)
        r = larder__loaders_start(m);
    if (r >= 0)
        r = larder__reaper_start(m);
    if (r < 0) {
        larder__loaders_stop(m, -1);
        free_manager(m);
        return r;
    }
    *ret_manager = m;
    return 0;
}

static void close_waiters(struct comp *c, void *arg)
{
    struct waiter *done = NULL;
    pthread_mutex_lock(&c->mu);
    larder__gate(c);
    larder__fail_waiters(c, LARDER_ECLOSED, &done);
    larder__cv_broadcast(c);
    pthread_mutex_unlock(&c->mu);
    larder__deliver(c->m, done);
}

static void close_unload(struct comp *c, void *arg)
{
    larder__unload_comp(c->m, c, LARDER_REASON_CLOSE);
}

/* Leases still out keep the manager alive: each holds one reference until released. */
static void close_count(struct comp *c, void *arg)
{
    pthread_mutex_lock(&c->mu);
    c->orphans = larder__leases(c);
    atomic_fetch_add(&c->m->refs, (int)c->orphans);
    pthread_mutex_unlock(&c->mu);
}

int larder_close_report(larder *m)
{
    if (!m)
        return 0;
    pthread_mutex_lock(&m->mu);
    atomic_store(&m->closing, true);
    pthread_cond_broadcast(&m->budget_cv);
    pthread_mutex_unlock(&m->mu);
    larder__each_comp(m, close_waiters, NULL);
    larder__memory_stop(m);
    larder__reaper_stop(m);
    /* A class call that never returns keeps its loader thread: close goes on without it,
     * and that thread holds a reference to the manager until its call returns. */
    unsigned left = larder__loaders_stop(m, m->opts.close_timeout_ms);
    /* Loads that were in flight have finished (or are left to their threads): their
     * waiters were already failed. */
    larder__each_comp(m, close_waiters, NULL);
    larder__each_comp(m, close_unload, NULL);
    larder__each_comp(m, close_count, NULL);
    atomic_store(&m->events_off, true);
    larder__ref_drop(m);
    return (int)left;
}

larder *larder_close(larder *m)
{
    larder_close_report(m);
    return NULL;
}

static void comp_free(struct comp *c)
{
    for (larder_lease *l = atomic_load(&c->spare), *n; l; l = n) {
        n = l->next_spare;
        free(l);
    }
    struct inst *i = c->free_inst;
    while (i) {
        struct inst *n = i->next;
        if (c->cls && c->cls->instance_free)
            c->cls->instance_free(c->ud, c->model, i->ptr);
        free(i);
        i = n;
    }
    if (c->state == LARDER_STATE_READY && c->cls)
        larder__class_unload(c, c->model, NULL);
    if (c->defined && c->ud_free)
        c->ud_free(c->ud);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c->path);
    free(c->fallback);
    free(c->name);
    free(c);
}

static void free_manager(struct larder *m)
{
    struct table *t = atomic_load(&m->table);
    for (size_t i = 0; t && i < t->cap; i++) {
        struct comp *c = atomic_load(&t->slots[i]);
        if (c)
            comp_free(c);
    }
    free(t);
    while (m->retired) {
        struct table *n = m->retired->retired_next;
        free(m->retired);
        m->retired = n;
    }
    larder__memory_free(m);
    for (unsigned i = 0; m->loaders && i < m->max_loaders; i++)
        pthread_cond_destroy(&m->loaders[i].cv);
    free(m->loaders);
    free(m->policy_state);
    pthread_mutex_destroy(&m->mu);
    pthread_mutex_destroy(&m->set_mu);
    pthread_mutex_destroy(&m->jobs_mu);
    pthread_mutex_destroy(&m->reaper_mu);
    pthread_cond_destroy(&m->budget_cv);
    pthread_cond_destroy(&m->reaper_cv);
    pthread_cond_destroy(&m->loaders_cv);
    free(m);
}

void larder__ref_drop(struct larder *m)
{
    if (atomic_fetch_sub(&m->refs, 1) == 1) {
        free_manager(m);
        malloc_trim(0);
    }
}

int larder_set_budget(larder *m, uint64_t bytes)
{
    if (!m || !bytes)
        return -EINVAL;
    pthread_mutex_lock(&m->mu);
    m->budget = bytes;
    pthread_cond_broadcast(&m->budget_cv);
    pthread_mutex_unlock(&m->mu);
    larder__enforce_budget(m);
    return 0;
}

int larder_set_gpu_budget(larder *m, unsigned gpu, uint64_t bytes)
{
    if (!m || gpu >= LARDER_MAX_GPUS)
        return -EINVAL;
    pthread_mutex_lock(&m->mu);
    m->gpu_budget[gpu] = bytes;
    pthread_cond_broadcast(&m->budget_cv);
    while (bytes && m->gpu_reserved[gpu] > bytes &&
           larder__evict_one_gpu(m, NULL, LARDER_REASON_BUDGET, (int)gpu) != 0)
        ;
    pthread_mutex_unlock(&m->mu);
    return 0;
}

uint64_t larder_get_budget(const larder *m)
{
    if (!m)
        return 0;
    pthread_mutex_lock((pthread_mutex_t *)&m->mu);
    uint64_t b = m->budget;
    pthread_mutex_unlock((pthread_mutex_t *)&m->mu);
    return b;
}

/* ---- definitions ---------------------------------------------------------------- */

void larder_component_opts_init(struct larder_component_opts *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->ttl_ms = LARDER_TTL_DEFAULT;
    o->max_instances = 1;
    o->gpu = -1;
}

static bool valid_name(const char *name)
{
    if (!name || !*name || strlen(name) > 256)
        return false;
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '/')
            return false;
    return true;
}

static int check_comp_opts(const struct larder_component_opts *o)
{
    if (!o || o->struct_size < offsetof(struct larder_component_opts, queue_max) +
                                  sizeof(unsigned) || !o->cls)
        return -EINVAL;
    const struct larder_class *k = o->cls;
    if (k->struct_size < offsetof(struct larder_class, measure) + sizeof(void *) || !k->load ||
        !k->unload || (k->instance_new && !k->instance_free))
        return -EINVAL;
    if (o->ttl_ms < -1 && o->ttl_ms != LARDER_TTL_DEFAULT)
        return -EINVAL;
    if (k->instance_new && (o->max_instances == 0 || o->max_instances > 65536))
        return -EINVAL;
    if (o->fallback && !valid_name(o->fallback))
        return -EINVAL;
    if (o->struct_size >= offsetof(struct larder_component_opts, gpu_bytes) + sizeof(uint64_t) &&
        (o->gpu < -1 || o->gpu >= LARDER_MAX_GPUS))
        return -EINVAL;
    return 0;
}

/* c->mu held (or c private). Copies the definition; on failure c is unchanged. */
static int comp_set_def(struct larder *m, struct comp *c, const struct larder_component_opts *o)
{
    char *path = o->path ? strdup(o->path) : NULL;
    char *fb = o->fallback ? strdup(o->fallback) : NULL;
    if ((o->path && !path) || (o->fallback && !fb)) {
        free(path);
        free(fb);
        return -ENOMEM;
    }
    free(c->path);
    free(c->fallback);
    c->path = path;
    c->fallback = fb;
    c->cls = o->cls;
    c->ud = o->ud;
    c->ud_free = o->ud_free;
    c->ttl_ms = o->ttl_ms == LARDER_TTL_DEFAULT ? m->opts.default_ttl_ms : o->ttl_ms;
    c->pooled = o->cls->instance_new != NULL;
    c->max_inst = c->pooled ? o->max_instances : 0;
    c->pin = o->pin;
    c->preload = o->preload;
    c->priority = o->priority;
    c->mem_override = o->memory_bytes;
    c->queue_max = o->queue_max ? o->queue_max : m->opts.default_queue_max;
    bool has_gpu = o->struct_size >= offsetof(struct larder_component_opts, gpu_bytes) +
                                         sizeof(uint64_t);
    c->gpu = has_gpu ? o->gpu : -1;
    c->gpu_bytes = has_gpu && c->gpu >= 0 ? o->gpu_bytes : 0;
    c->defined = true;
    c->draining = false;
    c->estimate = 0;
    c->est_src = LARDER_ESTIMATE_NONE;
    c->loads = c->failures = c->hits = c->cold_starts = c->evictions = 0;
    c->fallbacks_served = 0;
    c->load_ms_last = c->load_ms_sum = 0;
    c->fail_streak = 0;
    c->last_err = 0;
    c->last_msg[0] = '\0';
    c->last_returned = -1;
    c->leak_suspect = false;
    memset(&c->ps, 0, sizeof c->ps);
    c->ps.priority = c->priority;
    c->ps.ttl_ms = c->ttl_ms;
    return 0;
}

static struct comp *comp_new(struct larder *m, const char *name)
{
    /* Whole cache lines: threads warm on different components share no line. */
    size_t size = (sizeof(struct comp) + 63) & ~(size_t)63;
    struct comp *c = aligned_alloc(64, size);
    if (c)
        memset(c, 0, size);
    if (!c || !(c->name = strdup(name))) {
        free(c);
        return NULL;
    }
    c->m = m;
    c->hash = larder__hash_name(name);
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    c->warm = (struct larder_lease){.m = m, .c = c, .requested = c};
    c->load_job.c = c;
    c->load_job.kind = JOB_LOAD;
    c->grow_job.c = c;
    c->grow_job.kind = JOB_GROW;
    return c;
}

int larder_define(larder *m, const char *name, const struct larder_component_opts *opts)
{
    if (!m || !valid_name(name))
        return -EINVAL;
    int r = check_comp_opts(opts);
    if (r < 0)
        return r;
    if (atomic_load(&m->closing))
        return LARDER_ECLOSED;
    pthread_mutex_lock(&m->mu);
    struct comp *c = larder__lookup(m, name);
    if (c) {
        pthread_mutex_lock(&c->mu);
        if (c->defined)
            r = LARDER_EEXIST;
        else if (c->state != LARDER_STATE_UNLOADED && c->state != LARDER_STATE_FAILED)
            r = LARDER_EDRAINING;
        else if ((r = comp_set_def(m, c, opts)) == 0)
            c->state = LARDER_STATE_UNLOADED;
        pthread_mutex_unlock(&c->mu);
    } else if (!(c = comp_new(m, name))) {
        r = -ENOMEM;
    } else if ((r = comp_set_def(m, c, opts)) < 0 || (r = registry_insert(m, c)) < 0) {
        c->defined = false;
        comp_free(c);
    }
    pthread_mutex_unlock(&m->mu);
    if (r < 0)
        return r;
    /* Known before anything loads: admission, set checks and `larder check` use it. */
    larder__memory_learned(m, c);
    enum larder_estimate_source src;
    uint64_t est = larder__estimate(c, &src);
    pthread_mutex_lock(&c->mu);
    if (c->state == LARDER_STATE_UNLOADED && !c->estimate) {
        c->estimate = est;
        c->est_src = src;
    }
    pthread_mutex_unlock(&c->mu);
    return 0;
}

/* Waits (c->mu held) until c has no leases and no load in flight, or the deadline. */
static int wait_quiet(struct comp *c, int64_t timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : larder__now_ms() + timeout_ms;
    int r = 0;
    /* Counted before looking: a release that empties c after the look will see it. */
    atomic_fetch_add(&c->cv_waiters, 1);
    while (larder__leases(c) > 0 || c->state == LARDER_STATE_LOADING ||
           c->state == LARDER_STATE_UNLOADING || c->growing || c->freeing) {
        if (deadline < 0) {
            pthread_cond_wait(&c->cv, &c->mu);
            continue;
        }
        int64_t left = deadline - larder__now_ms();
        if (left <= 0) {
            r = LARDER_ETIMEDOUT;
            break;
        }
        struct timespec ts;
        larder__abstime(left, &ts);
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
    atomic_fetch_sub(&c->cv_waiters, 1);
    return r;
}

/* Drains c: new acquires fail, waiters are failed, then waits for quiet. c->mu held.
 * On success c stays draining (the caller finishes); on timeout draining is undone. */
static int drain(struct comp *c, int64_t timeout_ms)
{
    struct waiter *done = NULL;
    c->draining = true;
    larder__gate(c);
    if (c->preload_pending) { /* an unload cancels a preload that has not finished */
        c->preload_pending = false;
        atomic_fetch_sub(&c->m->preload_pending, 1);
    }
    larder__fail_waiters(c, LARDER_EDRAINING, &done);
    if (done) {
        pthread_mutex_unlock(&c->mu);
        larder__deliver(c->m, done);
        pthread_mutex_lock(&c->mu);
    }
    int r = wait_quiet(c, timeout_ms);
    if (r < 0) {
        c->draining = false;
        larder__gate(c);
    }
    return r;
}

static struct comp *find_defined(struct larder *m, const char *name)
{
    if (!m || !name)
        return NULL;
    struct comp *c = larder__lookup(m, name);
    return c && c->defined ? c : NULL;
}

int larder_set_ttl(larder *m, const char *name, int64_t ttl_ms)
{
    if (!m || !name || (ttl_ms < -1 && ttl_ms != LARDER_TTL_DEFAULT))
        return -EINVAL;
    pthread_mutex_lock(&m->mu);
    struct comp *c = find_defined(m, name);
    if (!c) {
        pthread_mutex_unlock(&m->mu);
        return LARDER_ENOTFOUND;
    }
    pthread_mutex_lock(&c->mu);
    c->ttl_ms = ttl_ms == LARDER_TTL_DEFAULT ? m->opts.default_ttl_ms : ttl_ms;
    c->ps.ttl_ms = c->ttl_ms;
    int64_t expiry = larder__comp_idle(c) ? larder__expiry(c) : 0;
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&m->mu);
    if (expiry)
        larder__reaper_kick(m, expiry);
    return 0;
}

/* Drains `name` and unloads it. Returns with c->mu held and c still draining on
 * success (the caller decides what c becomes), or an error with draining undone. */
static int drain_unload(struct larder *m, const char *name, int64_t timeout_ms,
                        struct comp **ret_c)
{
    if (!m || !name)
        return -EINVAL;
    struct comp *c = larder__lookup(m, name);
    if (!c)
        return LARDER_ENOTFOUND;
    pthread_mutex_lock(&c->mu);
    if (!c->defined || c->draining) {
        int r = c->defined ? LARDER_EDRAINING : LARDER_ENOTFOUND;
        pthread_mutex_unlock(&c->mu);
        return r;
    }
    int64_t deadline = timeout_ms < 0 ? -1 : larder__now_ms() + timeout_ms;
    int r = drain(c, timeout_ms);
    pthread_mutex_unlock(&c->mu);
    /* Between the drain and the unload an admission may be freeing one of c's surplus
     * instances: drain again until quiet. */
    while (r == 0 && (r = larder__unload_comp(m, c, LARDER_REASON_REQUEST)) == LARDER_EINUSE) {
        int64_t left = deadline < 0 ? -1 : deadline - larder__now_ms();
        pthread_mutex_lock(&c->mu);
        r = left < 0 && deadline >= 0 ? LARDER_ETIMEDOUT : wait_quiet(c, left);
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_lock(&c->mu);
    if (r < 0) {
        c->draining = false;
        larder__gate(c);
        larder__cv_broadcast(c);
        pthread_mutex_unlock(&c->mu);
        return r;
    }
    *ret_c = c;
    return 0;
}

int larder_unload(larder *m, const char *name, int64_t timeout_ms)
{
    struct comp *c = NULL;
    int r = drain_unload(m, name, timeout_ms, &c);
    if (r < 0)
        return r;
    c->draining = false;
    if (c->state == LARDER_STATE_FAILED)
        c->state = LARDER_STATE_UNLOADED;
    larder__gate(c);
    larder__cv_broadcast(c);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int larder_fail(larder *m, const char *name, const void *model, int err, const char *msg,
                int64_t timeout_ms)
{
    if (!m || !name)
        return -EINVAL;
    struct comp *c = larder__lookup(m, name);
    if (!c)
        return LARDER_ENOTFOUND;
    pthread_mutex_lock(&c->mu);
    bool same = c->state == LARDER_STATE_READY && (!model || c->model == model);
    pthread_mutex_unlock(&c->mu);
    if (!same)
        return 0;
    int r = drain_unload(m, name, timeout_ms, &c);
    if (r < 0)
        return r;
    c->draining = false;
    larder__start_cooldown(c, err, msg);
    larder__gate(c);
    larder__cv_broadcast(c);
    struct larder_event ev = {.struct_size = sizeof ev, .type = LARDER_EVENT_LOAD_FAIL,
                              .name = c->name, .error = err};
    char msgcopy[LARDER__ERRLEN];
    memcpy(msgcopy, c->last_msg, sizeof msgcopy);
    ev.message = msgcopy;
    pthread_mutex_unlock(&c->mu);
    larder__emit(m, &ev);
    return 0;
}

int larder_undefine(larder *m, const char *name, int64_t timeout_ms)
{
    struct comp *c = NULL;
    int r = drain_unload(m, name, timeout_ms, &c);
    if (r < 0)
        return r;
    void (*ud_free)(void *) = c->ud_free;
    void *ud = c->ud;
    c->defined = false;
    c->draining = false;
    c->state = LARDER_STATE_UNLOADED;
    larder__gate(c);
    c->ud_free = NULL;
    c->ud = NULL;
    larder__cv_broadcast(c);
    pthread_mutex_unlock(&c->mu);
    if (ud_free)
        ud_free(ud);
    return 0;
}

/* ---- preload -------------------------------------------------------------------- */

int larder_preload(larder *m, const char *name)
{
    if (!m || !name)
        return -EINVAL;
    if (atomic_load(&m->closing))
        return LARDER_ECLOSED;
    struct comp *c = find_defined(m, name);
    if (!c)
        return LARDER_ENOTFOUND;
    int r = 0;
    pthread_mutex_lock(&c->mu);
    if (!c->defined || c->draining) {
        r = c->defined ? LARDER_EDRAINING : LARDER_ENOTFOUND;
    } else if (c->state == LARDER_STATE_FAILED && larder__now_ms() < c->cooldown_until_ms) {
        r = LARDER_ECOOLDOWN;
    } else if (c->state != LARDER_STATE_READY && !c->preload_pending) {
        c->preload_pending = true;
        atomic_fetch_add(&m->preload_pending, 1);
        if (c->state == LARDER_STATE_UNLOADED || c->state == LARDER_STATE_FAILED)
            larder__start_load(c);
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

struct preload_all_arg {
    struct larder *m;
    int started;
};

static void preload_one(struct comp *c, void *arg)
{
    struct preload_all_arg *a = arg;
    pthread_mutex_lock(&c->mu);
    bool want = c->defined && c->preload;
    pthread_mutex_unlock(&c->mu);
    if (want && larder_preload(a->m, c->name) == 0)
        a->started++;
}

int larder_preload_all(larder *m)
{
    if (!m)
        return -EINVAL;
    struct preload_all_arg a = {.m = m};
    larder__each_comp(m, preload_one, &a);
    return a.started;
}

unsigned larder_preload_pending(larder *m)
{
    return m ? atomic_load(&m->preload_pending) : 0;
}

/* ---- trim ----------------------------------------------------------------------- */

int larder_trim(larder *m, struct larder_trim_result *ret)
{
    if (!m || (ret && ret->struct_size < sizeof *ret))
        return -EINVAL;
    uint64_t rss0 = larder__rss_bytes();
    pthread_mutex_lock(&m->mu);
    uint64_t reserved0 = m->reserved;
    pthread_mutex_unlock(&m->mu);
    unsigned comps = 0, insts = 0;
    pthread_mutex_lock(&m->mu);
    for (int k; (k = larder__evict_one(m, NULL, LARDER_REASON_TRIM)) != 0;) {
        if (k == 1)
            comps++;
        else if (k == 2)
            insts++;
    }
    pthread_mutex_unlock(&m->mu);
    malloc_trim(0);
    pthread_mutex_lock(&m->mu);
    uint64_t reserved1 = m->reserved;
    pthread_mutex_unlock(&m->mu);
    if (ret) {
        ret->components = comps;
        ret->instances = insts;
        ret->reserved_freed = reserved0 > reserved1 ? reserved0 - reserved1 : 0;
        ret->rss_freed = (int64_t)rss0 - (int64_t)larder__rss_bytes();
    }
    return (int)(comps + insts);
}

/* ---- snapshot ------------------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

static void info_fill(struct larder_component_info *i, struct comp *c, int64_t now)
{
    larder__sync_hits(c);
    i->name = strdup(c->name);
    i->class_name = dup_or_null(c->cls ? c->cls->name : NULL);
    i->fallback = dup_or_null(c->fallback);
    i->state = c->state;
    i->draining = c->draining;
    i->pin = c->pin;
    i->preload = c->preload;
    i->priority = c->priority;
    i->ttl_ms = c->ttl_ms;
    int64_t exp = larder__expiry(c);
    i->expires_in_ms = exp ? (exp > now ? exp - now : 0) : -1;
    i->instances = c->n_inst;
    i->instances_busy = c->n_busy;
    i->instances_max = c->max_inst;
    i->leases = larder__leases(c);
    i->waiters = c->n_waiters;
    i->estimate_bytes = c->estimate;
    i->estimate_source = c->est_src;
    /* a size learned from an earlier run is an estimate until this run measures */
    i->measured_bytes = c->method == LARDER_MEASURE_NONE ? 0 : c->measured;
    i->measure_method = c->method;
    i->instance_bytes = c->inst_bytes;
    i->reserved_bytes = c->reserved;
    i->last_returned_bytes = c->last_returned;
    i->leak_suspect = c->leak_suspect;
    i->loads = c->loads;
    i->failures = c->failures;
    i->hits = c->hits;
    i->cold_starts = c->cold_starts;
    i->evictions = c->evictions;
    i->fallbacks_served = c->fallbacks_served;
    i->load_ms_last = c->load_ms_last;
    i->load_ms_avg = c->loads ? c->load_ms_sum / (double)c->loads : 0;
    i->last_error = c->last_err;
    i->last_error_message = dup_or_null(c->last_msg);
    i->gpu = c->gpu;
    i->gpu_bytes = c->gpu_bytes;
    i->gpu_reserved_bytes = c->gpu_reserved;
    i->cooldown_ms = c->state == LARDER_STATE_FAILED && c->cooldown_until_ms > now
                         ? c->cooldown_until_ms - now : 0;
}

struct snap_arg {
    struct larder_snapshot *s;
    size_t cap;
    int64_t now;
    bool oom;
};

static void snap_one(struct comp *c, void *arg)
{
    struct snap_arg *a = arg;
    pthread_mutex_lock(&c->mu);
    if (c->defined && a->s->n < a->cap) {
        struct larder_component_info *i = &a->s->components[a->s->n++];
        info_fill(i, c, a->now);
        if (!i->name)
            a->oom = true;
    }
    pthread_mutex_unlock(&c->mu);
}

static int info_cmp(const void *a, const void *b)
{
    const struct larder_component_info *x = a, *y = b;
    return strcmp(x->name ? x->name : "", y->name ? y->name : "");
}

int larder_snapshot(larder *m, struct larder_snapshot **ret_snapshot)
{
    if (!m || !ret_snapshot)
        return -EINVAL;
    struct larder_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    pthread_mutex_lock(&m->mu);
    struct snap_arg a = {.s = s, .cap = m->n_comps, .now = larder__now_ms()};
    s->components = calloc(a.cap ? a.cap : 1, sizeof *s->components);
    if (s->components)
        larder__each_comp(m, snap_one, &a);
    s->budget_bytes = m->budget;
    s->reserved_bytes = m->reserved;
    memcpy(s->gpu_budget_bytes, m->gpu_budget, sizeof s->gpu_budget_bytes);
    memcpy(s->gpu_reserved_bytes, m->gpu_reserved, sizeof s->gpu_reserved_bytes);
    pthread_mutex_unlock(&m->mu);
    s->policy = m->policy->name;
    if (!s->components || a.oom) {
        larder_snapshot_free(s);
        return -ENOMEM;
    }
    qsort(s->components, s->n, sizeof *s->components, info_cmp);
    s->rss_bytes = larder__rss_bytes();
    s->peak_rss_bytes = s->rss_bytes;
    FILE *f = fopen("/proc/self/status", "re"); /* VmHWM only: smaps_rollup is costly */
    char line[256];
    unsigned long long kb;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1)
            s->peak_rss_bytes = kb * 1024;
    if (f)
        fclose(f);
    *ret_snapshot = s;
    return 0;
}

struct larder_snapshot *larder_snapshot_free(struct larder_snapshot *s)
{
    if (!s)
        return NULL;
    for (size_t i = 0; s->components && i < s->n; i++) {
        free(s->components[i].name);
        free(s->components[i].class_name);
        free(s->components[i].fallback);
        free(s->components[i].last_error_message);
    }
    free(s->components);
    free(s);
    return NULL;
}

/* ---- names ---------------------------------------------------------------------- */

const char *larder_state_name(enum larder_state s)
{
    static const char *const names[] = {"unloaded", "loading", "ready", "unloading", "failed"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown";
}

const char *larder_measure_method_name(enum larder_measure_method v)
{
    static const char *const names[] = {"none", "class", "rss", "estimate"};
    return (unsigned)v < sizeof names / sizeof names[0] ? names[v] : "unknown";
}

const char *larder_estimate_source_name(enum larder_estimate_source v)
{
    static const char *const names[] = {"none", "class", "override", "learned", "file"};
    return (unsigned)v < sizeof names / sizeof names[0] ? names[v] : "unknown";
}

const char *larder_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case LARDER_ENOTFOUND: return "no such component";
    case LARDER_EEXIST: return "component already defined";
    case LARDER_ETIMEDOUT: return "timed out waiting for the component";
    case LARDER_EBUSY: return "too many requests waiting for the component";
    case LARDER_ETOOBIG: return "component is larger than the whole memory budget";
    case LARDER_ENOSPC: return "no room in the memory budget and nothing idle to evict";
    case LARDER_ELOAD: return "component failed to load";
    case LARDER_ECOOLDOWN: return "component failed to load recently; retry after cooldown";
    case LARDER_EDRAINING: return "component is being unloaded";
    case LARDER_ECLOSED: return "manager is closing";
    case LARDER_ECANCELED: return "request canceled";
    case LARDER_EINUSE: return "component is in use";
    case LARDER_EPOLICY: return "unknown eviction policy";
    case LARDER_ECYCLE: return "fallback chain loops";
    case -EINVAL: return "invalid argument";
    case -ENOMEM: return "out of memory";
    case -ERANGE: return "value out of range";
    case -ENOENT: return "no such file or directory";
    case -EACCES: return "permission denied";
    default: return err < 0 && err > -4096 ? "system error" : "unknown error";
    }
}
