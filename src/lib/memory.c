/* Memory truth inside the manager: learned profiles, the history ring, the pressure
 * watcher and its response, and the public memory report. */
#include "history.h"
#include "internal.h"
#include "probe.h"
#include "profile.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_pressure(void *ud, const struct larder__pressure *p)
{
    larder__memory_pressure(ud, p);
}

int larder__memory_start(struct larder *m)
{
    char err[256];
    if (larder__profile_open(m->opts.state_dir, err, sizeof err, &m->profiles) < 0 &&
        larder__profile_open(NULL, err, sizeof err, &m->profiles) < 0)
        return -ENOMEM;
    if (m->opts.history_seconds &&
        larder__history_new(m->opts.history_seconds, &m->history) < 0)
        return -ENOMEM;
    pthread_mutex_init(&m->pressure_mu, NULL);
    larder__gpu_open(NULL, &m->gpus);
    if (m->opts.watch_pressure) {
        struct larder__pressure_opts po = {.trigger = m->opts.psi_trigger, .cb = on_pressure,
                                           .ud = m};
        if (m->opts.psi_trigger && !*m->opts.psi_trigger)
            po.psi_path = "";
        int r = larder__pressure_watch_start(&po, &m->watch);
        m->watch_error = r < 0 ? r : larder__pressure_watch_psi_error(m->watch);
    }
    return 0;
}

/* Stops the watcher (its callback may evict, so before the loaders stop). */
void larder__memory_stop(struct larder *m)
{
    m->watch = larder__pressure_watch_stop(m->watch);
}

/* Called by free_manager: what is left. */
void larder__memory_free(struct larder *m)
{
    m->watch = larder__pressure_watch_stop(m->watch);
    m->profiles = larder__profile_close(m->profiles);
    m->history = larder__history_free(m->history);
    m->gpus = larder__gpu_close(m->gpus);
    pthread_mutex_destroy(&m->pressure_mu);
}

/* ---- profiles ------------------------------------------------------------------------ */

/* At define: sizes measured by earlier runs become this run's learned size, which is
 * never below what the last first load in a fresh process took (larder__learned). */
void larder__memory_learned(struct larder *m, struct comp *c)
{
    struct larder__profile p;
    if (!m->profiles || larder__profile_get(m->profiles, c->name, &p) < 0)
        return;
    pthread_mutex_lock(&c->mu);
    if (!c->measured && (p.measured_bytes || p.first_bytes)) {
        c->measured = p.measured_bytes;
        c->first_bytes = p.first_bytes;
        c->inst_bytes = p.instance_bytes;
        c->ps.load_cost = p.load_ms_last / 1000.0;
    }
    pthread_mutex_unlock(&c->mu);
}

/* After a load: remember what it cost. Only trusted measurements are kept (the class's
 * own figure, or the RSS delta of a load that ran alone); the first load of a class in
 * this process is also kept as the first-load figure. Runs on the loader thread. */
void larder__memory_record(struct larder *m, struct comp *c, double load_ms, bool first)
{
    pthread_mutex_lock(&c->mu);
    bool trusted = c->method == LARDER_MEASURE_CLASS || c->method == LARDER_MEASURE_RSS;
    uint64_t measured = trusted ? c->measured : 0;
    uint64_t inst = c->inst_bytes;
    pthread_mutex_unlock(&c->mu);
    if (m->profiles)
        larder__profile_put(m->profiles, c->name, measured, inst, first ? measured : 0,
                            load_ms);
}

/* ---- history ------------------------------------------------------------------------- */

void larder__memory_note(struct larder *m, const struct larder_event *ev)
{
    if (!m->history)
        return;
    enum larder__hist_kind k;
    int64_t bytes = (int64_t)ev->bytes;
    switch (ev->type) {
    case LARDER_EVENT_LOAD_DONE: k = LARDER__HIST_LOAD; break;
    case LARDER_EVENT_EVICT: k = LARDER__HIST_EVICT; break;
    case LARDER_EVENT_UNLOAD: k = LARDER__HIST_UNLOAD; bytes = ev->bytes_returned; break;
    case LARDER_EVENT_PRESSURE: k = LARDER__HIST_PRESSURE; break;
    default: return;
    }
    larder__history_push_event(m->history, wall_ms(), k, ev->name, bytes);
}

/* ---- pressure ------------------------------------------------------------------------ */

struct usage {
    uint64_t limit;
    const char *source;
    uint64_t usage;
    struct larder__cgroup cg;
    bool has_cg;
};

/* The watermarks' limit: the cgroup's memory.max or memory.high, else physical RAM (not
 * the budget: the budget covers components only, while the usage compared with the
 * limit is the whole process). The usage: the cgroup's charge when it is limited, else
 * RSS. */
static void read_usage(struct larder *m, const struct larder__cgroup *given, struct usage *u)
{
    memset(u, 0, sizeof *u);
    if (given) {
        u->cg = *given;
        u->has_cg = true;
    } else {
        u->has_cg = larder__probe_cgroup(NULL, &u->cg) >= 0;
    }
    uint64_t cg_limit = u->cg.max < u->cg.high ? u->cg.max : u->cg.high;
    struct larder__meminfo mi = {0};
    larder__probe_meminfo(NULL, &mi);
    if (u->has_cg && cg_limit != LARDER__UNLIMITED && cg_limit > 0 &&
        (!mi.total || cg_limit < mi.total)) {
        u->limit = cg_limit;
        u->source = "cgroup";
        u->usage = u->cg.current;
    } else {
        u->limit = mi.total;
        u->source = "ram";
        u->usage = larder__rss_bytes();
    }
    (void)m;
}

static uint64_t mark(uint64_t limit, double frac)
{
    return (uint64_t)((double)limit * frac);
}

/* Evicts idle components by policy until usage is under the low watermark. A PSI
 * trigger or a cgroup memory event only counts when usage is already above the low
 * watermark: on a busy host reclaim stalls happen with plenty of memory free, and
 * evicting then would only cost reloads. */
void larder__memory_pressure(struct larder *m, const struct larder__pressure *p)
{
    pthread_mutex_lock(&m->pressure_mu);
    struct usage u;
    read_usage(m, p && p->has_cgroup ? &p->cgroup : NULL, &u);
    uint64_t high = mark(u.limit, m->opts.high_watermark);
    uint64_t low = mark(u.limit, m->opts.low_watermark);
    bool psi = p && (p->fired & LARDER__PRESSURE_PSI) && u.usage >= low;
    bool oom = p && (p->delta.oom || p->delta.oom_kill || p->delta.max) && u.usage >= low;
    if (u.usage <= high && !psi && !oom) {
        if (u.usage < low && atomic_exchange(&m->pressure_hold, false)) {
            pthread_mutex_lock(&m->mu);
            pthread_cond_broadcast(&m->budget_cv);
            pthread_mutex_unlock(&m->mu);
        }
        pthread_mutex_unlock(&m->pressure_mu);
        return;
    }
    atomic_fetch_add(&m->pressure_events, 1);
    char msg[256];
    if (p)
        larder__pressure_summary(p, msg, sizeof msg);
    else
        snprintf(msg, sizeof msg, "usage %llu over high watermark %llu (%s limit %llu)",
                 (unsigned long long)u.usage, (unsigned long long)high, u.source,
                 (unsigned long long)u.limit);
    struct larder_event ev = {.struct_size = sizeof ev, .type = LARDER_EVENT_PRESSURE,
                              .message = msg, .bytes = u.usage > low ? u.usage - low : 0};
    larder__emit(m, &ev);
    unsigned evicted = 0;
    pthread_mutex_lock(&m->mu);
    while (u.usage >= low || (psi && evicted == 0)) {
        int k = larder__evict_one(m, NULL, LARDER_REASON_PRESSURE);
        if (k == 0)
            break;
        if (k == 3)
            continue;
        evicted++;
        pthread_mutex_unlock(&m->mu);
        read_usage(m, NULL, &u);
        pthread_mutex_lock(&m->mu);
    }
    atomic_store(&m->pressure_hold, u.usage > high);
    pthread_mutex_unlock(&m->mu);
    atomic_fetch_add(&m->pressure_evictions, evicted);
    malloc_trim(0);
    pthread_mutex_unlock(&m->pressure_mu);
}

/* Before a load of `need` bytes: if it would take usage over the high watermark (a
 * cgroup near its memory.max: the kernel would reclaim hard, then kill), idle components
 * are evicted first, by policy, so the load lands under the limit. Runs on the loader
 * thread with no lock held; c (the component loading) is never a victim. */
void larder__memory_make_room(struct larder *m, struct comp *c, uint64_t need)
{
    struct usage u;
    read_usage(m, NULL, &u);
    uint64_t high = mark(u.limit, m->opts.high_watermark);
    unsigned evicted = 0;
    while (u.limit && u.usage + need > high) {
        pthread_mutex_lock(&m->mu);
        int k = larder__evict_one(m, c, LARDER_REASON_PRESSURE);
        pthread_mutex_unlock(&m->mu);
        if (k == 0)
            break;
        if (k == 3)
            continue;
        evicted++;
        read_usage(m, NULL, &u);
    }
    if (evicted) {
        atomic_fetch_add(&m->pressure_evictions, evicted);
        malloc_trim(0);
    }
}

/* The reaper's once-a-second work: a history sample and the watermark check. */
int64_t larder__memory_tick(struct larder *m, int64_t now_ms)
{
    if (now_ms < m->next_sample_ms)
        return m->next_sample_ms;
    m->next_sample_ms = now_ms + 1000;
    struct usage u;
    read_usage(m, NULL, &u);
    if (m->history) {
        struct larder__hist_sample s = {.rss_bytes = larder__rss_bytes(),
                                        .cgroup_bytes = u.has_cg ? u.cg.current : 0};
        struct larder__psi psi;
        if (larder__probe_psi(NULL, &psi) >= 0)
            s.psi_some_avg10 = psi.some.avg10;
        if (m->opts.children_bytes)
            s.children_bytes = m->opts.children_bytes(m->opts.children_ud);
        pthread_mutex_lock(&m->mu);
        s.reserved_bytes = m->reserved;
        pthread_mutex_unlock(&m->mu);
        larder__history_push_sample(m->history, wall_ms(), &s);
    }
    if (u.usage > mark(u.limit, m->opts.high_watermark) || atomic_load(&m->pressure_hold))
        larder__memory_pressure(m, NULL);
    return m->next_sample_ms;
}

/* ---- the public report ---------------------------------------------------------------- */

static void fill_history(struct larder *m, size_t max, struct larder_memory *r)
{
    size_t n = m->history ? larder__history_count(m->history) : 0;
    if (n > max)
        n = max;
    struct larder__hist_entry *e = n ? calloc(n, sizeof *e) : NULL;
    r->history = n ? calloc(n, sizeof *r->history) : NULL;
    if (!e || !r->history) {
        free(e);
        return;
    }
    n = larder__history_copy(m->history, n, e);
    for (size_t i = 0; i < n; i++) {
        struct larder_history_entry *h = &r->history[i];
        h->time_ms = e[i].time_ms;
        h->kind = (enum larder_history_kind)e[i].kind;
        snprintf(h->name, sizeof h->name, "%s", e[i].name);
        h->bytes = e[i].bytes;
        h->rss_bytes = e[i].sample.rss_bytes;
        h->reserved_bytes = e[i].sample.reserved_bytes;
        h->cgroup_bytes = e[i].sample.cgroup_bytes;
        h->psi_some_avg10 = e[i].sample.psi_some_avg10;
        h->children_bytes = e[i].sample.children_bytes;
    }
    r->n_history = n;
    free(e);
}

static void fill_gpus(struct larder *m, struct larder_memory *r)
{
    unsigned n = larder__gpu_count(m->gpus);
    r->gpus = n ? calloc(n, sizeof *r->gpus) : NULL;
    for (unsigned i = 0; r->gpus && i < n; i++) {
        struct larder__gpu_info g;
        if (larder__gpu_read(m->gpus, i, &g) < 0)
            continue;
        struct larder_gpu_info *o = &r->gpus[r->n_gpus++];
        snprintf(o->name, sizeof o->name, "%s", g.name);
        o->total_bytes = g.total;
        o->used_bytes = g.used;
        o->free_bytes = g.free;
    }
}

static void fill_kernel(struct larder_memory *r, const struct usage *u)
{
    struct larder__proc_mem pm;
    if (larder__probe_proc(NULL, &pm) >= 0) {
        r->rss_bytes = pm.rss;
        r->peak_rss_bytes = pm.hwm;
        r->has_rollup = pm.has_rollup;
        r->pss_bytes = pm.pss;
        r->anon_bytes = pm.anon;
    }
    struct larder__meminfo mi;
    if (larder__probe_meminfo(NULL, &mi) >= 0) {
        r->ram_bytes = mi.total;
        r->available_bytes = mi.available;
    }
    if (u->has_cg) {
        r->cgroup_version = u->cg.version;
        r->cgroup_current = u->cg.current;
        r->cgroup_max = u->cg.max;
        r->cgroup_high = u->cg.high;
        r->cgroup_oom = u->cg.events.oom;
        r->cgroup_oom_kill = u->cg.events.oom_kill;
        r->cgroup_high_events = u->cg.events.high;
        r->cgroup_max_events = u->cg.events.max;
    }
    struct larder__psi psi;
    if (larder__probe_psi(NULL, &psi) >= 0) {
        r->has_psi = true;
        r->psi_some_avg10 = psi.some.avg10;
        r->psi_some_avg60 = psi.some.avg60;
        r->psi_some_avg300 = psi.some.avg300;
        r->psi_full_avg10 = psi.full.avg10;
        r->psi_full_avg60 = psi.full.avg60;
        r->psi_full_avg300 = psi.full.avg300;
    }
}

static int gpu_process_bytes(larder *m, const int *pids, size_t n, uint64_t *ret_bytes,
                             unsigned max)
{
    unsigned count = larder__gpu_count(m->gpus);
    if (count > max)
        count = max;
    if (count > LARDER_MAX_GPUS)
        count = LARDER_MAX_GPUS;
    if (n == 0) {
        memset(ret_bytes, 0, count * sizeof *ret_bytes);
        return (int)count;
    }
    uint64_t v[LARDER_MAX_GPUS];
    for (unsigned i = 0; i < count; i++) {
        int r = larder__gpu_process_bytes(m->gpus, i, pids, n, &v[i]);
        if (r < 0)
            return r;
    }
    memcpy(ret_bytes, v, count * sizeof *v);
    return (int)count;
}

int larder_gpu_process_bytes(larder *m, const int *pids, size_t n, uint64_t *ret_bytes,
                             unsigned max)
{
    if (!m || !ret_bytes || (n && !pids))
        return -EINVAL;
    larder__enter(m); /* a read: it goes on while close runs (calls.c) */
    int r = gpu_process_bytes(m, pids, n, ret_bytes, max);
    larder__leave(m);
    return r;
}

static int memory(larder *m, size_t history_max, struct larder_memory **ret_memory)
{
    struct larder_memory *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    struct usage u;
    read_usage(m, NULL, &u);
    pthread_mutex_lock(&m->mu);
    r->budget_bytes = m->budget;
    r->reserved_bytes = m->reserved;
    pthread_mutex_unlock(&m->mu);
    r->limit_bytes = u.limit;
    r->limit_source = u.source;
    r->high_bytes = mark(u.limit, m->opts.high_watermark);
    r->low_bytes = mark(u.limit, m->opts.low_watermark);
    r->usage_bytes = u.usage;
    r->under_pressure = atomic_load(&m->pressure_hold);
    r->pressure_events = atomic_load(&m->pressure_events);
    r->pressure_evictions = atomic_load(&m->pressure_evictions);
    r->pressure_watch = m->watch && !m->watch_error ? larder__pressure_watch_trigger(m->watch)
                                                   : NULL;
    r->pressure_watch_error = m->watch_error;
    fill_kernel(r, &u);
    fill_gpus(m, r);
    fill_history(m, history_max, r);
    *ret_memory = r;
    return 0;
}

int larder_memory(larder *m, size_t history_max, struct larder_memory **ret_memory)
{
    if (!m || !ret_memory)
        return -EINVAL;
    larder__enter(m);
    int r = memory(m, history_max, ret_memory);
    larder__leave(m);
    return r;
}

struct larder_memory *larder_memory_free(struct larder_memory *mem)
{
    if (!mem)
        return NULL;
    free(mem->gpus);
    free(mem->history);
    free(mem);
    return NULL;
}

const char *larder_history_kind_name(enum larder_history_kind k)
{
    static const char *const names[] = {"sample", "load", "evict", "unload", "pressure"};
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "unknown";
}
