/* Loading, admission against the budget, eviction, unloading, and the reaper that
 * enforces keep-alive ttls and async deadlines. */
#include "internal.h"
#include "probe.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- the loader pool -------------------------------------------------------------- */

/* A component prefers one loader thread (chosen by its name's hash among the first
 * loader_threads): glibc gives each thread its own malloc arena, and a component that
 * reloads on a different thread each time leaves freed pages in several arenas. With
 * affinity, its reloads reuse its own arena and RSS stays flat over load/unload cycles.
 * Affinity is only a preference: when that loader is busy (a slow or hung load, a load
 * waiting for room), the job goes to an idle loader, else to an extra loader started for
 * it (at most max_loaders in all), else to the spill queue that the first loader to
 * finish takes from. So one load never waits behind another component's. */
static bool loader_idle(const struct loader *q)
{
    return !q->busy && !q->head;
}

static void *loader_main(void *arg);

/* The loader this thread is, if it is one. */
static _Thread_local struct loader *self;

/* Called where a job is about to hand out its result: its class call (or admission wait)
 * is over, only bookkeeping is left, so the loader counts as free again. A caller who
 * gets the result and at once asks for another load of the same component then finds
 * this loader free, and the component keeps to its thread (and its arena). */
static void loader_settle(void)
{
    struct loader *q = self;
    if (!q)
        return;
    pthread_mutex_lock(&q->m->jobs_mu);
    q->busy = false;
    pthread_mutex_unlock(&q->m->jobs_mu);
}

/* m->jobs_mu held: starts one more loader; NULL when it cannot. */
static struct loader *loader_spawn(struct larder *m)
{
    if (m->n_loaders >= m->max_loaders || m->jobs_stop)
        return NULL;
    struct loader *q = &m->loaders[m->n_loaders];
    if (pthread_create(&q->tid, NULL, loader_main, q) != 0)
        return NULL;
    m->n_loaders++;
    return q;
}

/* m->jobs_mu held: the loader that runs c's next job, or NULL (the spill queue). */
static struct loader *loader_for(struct larder *m, const struct comp *c)
{
    struct loader *q = &m->loaders[c->hash % m->n_base];
    if (loader_idle(q))
        return q;
    for (unsigned i = 0; i < m->n_loaders; i++)
        if (loader_idle(&m->loaders[i]))
            return &m->loaders[i];
    return loader_spawn(m);
}

static void push(struct job **head, struct job **tail, struct job *j)
{
    j->next = NULL;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

static struct job *pop(struct job **head, struct job **tail)
{
    struct job *j = *head;
    if (j && !(*head = j->next))
        *tail = NULL;
    return j;
}

void larder__submit(struct larder *m, struct job *j)
{
    pthread_mutex_lock(&m->jobs_mu);
    if (!j->queued && m->n_loaders) {
        struct loader *q = loader_for(m, j->c);
        j->queued = true;
        if (q) {
            push(&q->head, &q->tail, j);
            pthread_cond_signal(&q->cv);
        } else {
            push(&m->spill_head, &m->spill_tail, j);
        }
    }
    pthread_mutex_unlock(&m->jobs_mu);
}

void larder__start_load(struct comp *c)
{
    c->state = LARDER_STATE_LOADING;
    larder__submit(c->m, &c->load_job);
}

static void run_load(struct comp *c);
static void run_grow(struct comp *c);
static void cancel_job(struct job *j);

static void *loader_main(void *arg)
{
    struct loader *q = arg;
    struct larder *m = q->m;
    self = q;
    pthread_mutex_lock(&m->jobs_mu);
    for (;;) {
        while (!q->head && !m->spill_head && !m->jobs_stop)
            pthread_cond_wait(&q->cv, &m->jobs_mu);
        struct job *j = q->head ? pop(&q->head, &q->tail) : pop(&m->spill_head, &m->spill_tail);
        if (!j)
            break;
        j->queued = false;
        q->busy = true;
        bool stop = m->jobs_stop;
        pthread_mutex_unlock(&m->jobs_mu);
        if (stop)
            cancel_job(j);
        else if (j->kind == JOB_LOAD)
            run_load(j->c);
        else
            run_grow(j->c);
        pthread_mutex_lock(&m->jobs_mu);
        q->busy = false;
    }
    q->exited = true;
    bool orphan = q->orphan;
    pthread_cond_broadcast(&m->loaders_cv);
    pthread_mutex_unlock(&m->jobs_mu);
    if (orphan) /* close returned without it; the last reference frees the manager */
        larder__ref_drop(m);
    return NULL;
}

int larder__loaders_start(struct larder *m)
{
    unsigned n = m->opts.loader_threads;
    /* Extras only start while every loader is busy: as many again, and a few more for
     * small pools, so that hung loads cannot hold every thread. */
    unsigned max = n * 2 + 4;
    m->loaders = calloc(max, sizeof *m->loaders);
    if (!m->loaders)
        return -ENOMEM;
    m->max_loaders = max;
    for (unsigned i = 0; i < max; i++) {
        m->loaders[i].m = m;
        pthread_cond_init(&m->loaders[i].cv, NULL);
    }
    pthread_mutex_lock(&m->jobs_mu);
    for (unsigned i = 0; i < n && loader_spawn(m); i++)
        continue;
    /* Run with the threads that did start; components prefer among those. */
    m->n_base = m->n_loaders;
    pthread_mutex_unlock(&m->jobs_mu);
    return m->n_loaders ? 0 : -EAGAIN;
}

/* m->jobs_mu held: whether every loader has left its loop. */
static bool loaders_exited(const struct larder *m)
{
    for (unsigned i = 0; i < m->n_loaders; i++)
        if (!m->loaders[i].exited)
            return false;
    return true;
}

unsigned larder__loaders_stop(struct larder *m, int64_t timeout_ms)
{
    struct timespec until;
    larder__abstime(timeout_ms, &until);
    pthread_mutex_lock(&m->jobs_mu);
    m->jobs_stop = true;
    for (unsigned i = 0; i < m->n_loaders; i++)
        pthread_cond_broadcast(&m->loaders[i].cv);
    int w = 0;
    while (!loaders_exited(m) && w != ETIMEDOUT) {
        if (timeout_ms < 0)
            pthread_cond_wait(&m->loaders_cv, &m->jobs_mu);
        else
            w = pthread_cond_timedwait(&m->loaders_cv, &m->jobs_mu, &until);
    }
    unsigned left = 0;
    for (unsigned i = 0; i < m->n_loaders; i++) {
        struct loader *q = &m->loaders[i];
        if (q->exited || q->orphan)
            continue;
        q->orphan = true;
        atomic_fetch_add(&m->refs, 1);
        left++;
    }
    m->n_orphans += left;
    pthread_mutex_unlock(&m->jobs_mu);
    for (unsigned i = 0; i < m->n_loaders; i++) {
        struct loader *q = &m->loaders[i];
        if (q->tid && !q->orphan)
            pthread_join(q->tid, NULL);
        else if (q->tid)
            pthread_detach(q->tid);
        q->tid = 0;
    }
    return left;
}

static void clear_preload(struct comp *c)
{
    if (c->preload_pending) {
        c->preload_pending = false;
        atomic_fetch_sub(&c->m->preload_pending, 1);
    }
}

static void cancel_job(struct job *j)
{
    struct comp *c = j->c;
    struct waiter *done = NULL;
    pthread_mutex_lock(&c->mu);
    if (j->kind == JOB_LOAD) {
        c->state = LARDER_STATE_UNLOADED;
        larder__gate(c);
        clear_preload(c);
        larder__fail_waiters(c, LARDER_ECLOSED, &done);
    } else {
        c->growing = false;
    }
    larder__cv_broadcast(c);
    pthread_mutex_unlock(&c->mu);
    larder__deliver(c->m, done);
}

/* ---- estimates and admission ------------------------------------------------------ */

uint64_t larder__learned(const struct comp *c)
{
    return c->measured > c->first_bytes ? c->measured : c->first_bytes;
}

/* Bytes c will take before it loads: the override, else the class's estimate or the
 * learned size, whichever is larger (a measured size the class's guess undercuts is
 * what the load will take again), else the file size x factor; 0 when none gives a
 * figure. No lock held; the definition is stable (the caller defines c, or is its
 * loader). */
uint64_t larder__estimate(struct comp *c, enum larder_estimate_source *ret_src)
{
    uint64_t b = 0;
    struct stat st;
    pthread_mutex_lock(&c->mu);
    uint64_t learned = larder__learned(c);
    pthread_mutex_unlock(&c->mu);
    *ret_src = LARDER_ESTIMATE_NONE;
    if (c->mem_override) {
        b = c->mem_override;
        *ret_src = LARDER_ESTIMATE_OVERRIDE;
    } else if (c->cls->estimate && c->cls->estimate(c->ud, &b) == 0 && b) {
        *ret_src = learned > b ? LARDER_ESTIMATE_LEARNED : LARDER_ESTIMATE_CLASS;
        b = learned > b ? learned : b;
    } else if (learned) {
        b = learned;
        *ret_src = LARDER_ESTIMATE_LEARNED;
    } else if (c->path && stat(c->path, &st) == 0) {
        b = (uint64_t)((double)st.st_size * c->m->opts.file_size_factor);
        *ret_src = b ? LARDER_ESTIMATE_FILE : LARDER_ESTIMATE_NONE;
    }
    return b;
}

/* What a load must reserve: the estimate, or more when a past load measured more.
 * 0 when nothing is known: the load then runs alone (solo_step). */
static uint64_t estimate(struct comp *c)
{
    enum larder_estimate_source src;
    uint64_t b = larder__estimate(c, &src);
    pthread_mutex_lock(&c->mu);
    c->estimate = b;
    c->est_src = src;
    uint64_t learned = larder__learned(c);
    uint64_t need = learned > b ? learned : b;
    pthread_mutex_unlock(&c->mu);
    return need;
}

/* m->mu held: c's GPU reservation, all or nothing. */
static void charge_gpu(struct larder *m, struct comp *c, bool take)
{
    if (c->gpu < 0 || c->gpu >= LARDER_MAX_GPUS || (take == (c->gpu_reserved != 0)))
        return;
    if (take) {
        c->gpu_reserved = c->gpu_bytes;
        m->gpu_reserved[c->gpu] += c->gpu_bytes;
    } else {
        m->gpu_reserved[c->gpu] -= c->gpu_reserved;
        c->gpu_reserved = 0;
        pthread_cond_broadcast(&m->budget_cv);
    }
}

/* m->mu held: whether c's GPU memory fits (0 yes, 1 not now, ETOOBIG never). */
static int gpu_fits(const struct larder *m, const struct comp *c)
{
    if (c->gpu < 0 || c->gpu >= LARDER_MAX_GPUS || c->gpu_reserved || !c->gpu_bytes ||
        !m->gpu_budget[c->gpu])
        return 0;
    if (c->gpu_bytes > m->gpu_budget[c->gpu])
        return LARDER_ETOOBIG;
    return m->gpu_reserved[c->gpu] + c->gpu_bytes <= m->gpu_budget[c->gpu] ? 0 : 1;
}

static void charge(struct larder *m, struct comp *c, int64_t bytes)
{
    m->reserved = (uint64_t)((int64_t)m->reserved + bytes);
    c->reserved = (uint64_t)((int64_t)c->reserved + bytes);
    if (bytes < 0)
        pthread_cond_broadcast(&m->budget_cv);
}

static void wait_budget(struct larder *m, int64_t deadline)
{
    struct timespec ts;
    int64_t left = deadline - larder__now_ms();
    larder__abstime(left > 1000 ? 1000 : left, &ts);
    pthread_cond_timedwait(&m->budget_cv, &m->mu, &ts);
}

/* m->mu held. Whether anyone still waits for c's load (callers or a preload). */
static bool wanted(struct comp *c)
{
    pthread_mutex_lock(&c->mu);
    bool w = c->n_waiters > 0 || c->preload_pending || c->state != LARDER_STATE_LOADING;
    pthread_mutex_unlock(&c->mu);
    return w;
}

/* m->mu held: no room now. LARDER_ENOSPC past the deadline, LARDER_ECANCELED when
 * nobody wants c any more, else waits a while for room and returns 1 (look again). */
static int wait_room(struct larder *m, struct comp *c, int64_t deadline)
{
    if (larder__now_ms() >= deadline)
        return LARDER_ENOSPC;
    if (!wanted(c))
        return LARDER_ECANCELED;
    wait_budget(m, deadline);
    return 1;
}

/* m->mu held: one look at the budget for `bytes` more for c. 0 charged, 1 look again,
 * < 0 an error. A solo load in flight (not c's own) holds every other admission; one
 * waiting to start holds new loads (c has no reservation yet), so it is not starved. */
static int admit_step(struct larder *m, struct comp *c, uint64_t bytes, int64_t deadline)
{
    int g = gpu_fits(m, c);
    if (bytes > m->budget || g < 0)
        return LARDER_ETOOBIG;
    if ((m->solo && m->solo != c) || (m->solo_waiting && !c->reserved))
        return wait_room(m, c, deadline);
    bool host = m->reserved + bytes <= m->budget && !atomic_load(&m->pressure_hold);
    if (host && g == 0) {
        charge(m, c, (int64_t)bytes);
        charge_gpu(m, c, true);
        return 0;
    }
    if ((host ? larder__evict_one_gpu(m, c, LARDER_REASON_BUDGET, c->gpu)
              : larder__evict_one(m, c, LARDER_REASON_BUDGET)) != 0)
        return 1;
    return wait_room(m, c, deadline);
}

/* m->mu held: the least a loaded component reserves: a page, or all of a smaller
 * budget. */
static uint64_t min_reserve(const struct larder *m)
{
    return m->budget < LARDER__MIN_RESERVE ? m->budget : LARDER__MIN_RESERVE;
}

/* m->mu held: while a load with no estimate waits for the loads in flight to finish,
 * new loads wait behind it, so that a stream of them cannot starve it. It does not
 * hold them while it waits for room (leases to come back). */
static void hold_new_loads(struct larder *m, bool *held, bool hold)
{
    if (hold && !*held)
        m->solo_waiting++;
    else if (!hold && *held)
        m->solo_waiting--;
    *held = hold;
}

/* m->mu held: one look for a load with no estimate at all. It runs alone (no other
 * load, grow or unload in flight, and none starts until it is measured), so that its
 * RSS delta is its own. Idle components are evicted until half the budget is free;
 * it then reserves everything free. If leases keep more than half the budget until
 * the deadline, it takes what is free then (at least a page). */
static int solo_step(struct larder *m, struct comp *c, int64_t deadline, bool *held)
{
    int g = gpu_fits(m, c);
    if (g < 0 || !m->budget)
        return LARDER_ETOOBIG;
    bool busy = m->solo || m->loads_admitted || atomic_load(&m->unloads_running);
    hold_new_loads(m, held, busy);
    if (busy)
        return wait_room(m, c, deadline);
    uint64_t free = m->budget > m->reserved ? m->budget - m->reserved : 0;
    bool hold = atomic_load(&m->pressure_hold) || free < min_reserve(m);
    bool late = larder__now_ms() >= deadline;
    if (g == 0 && !hold && (free >= m->budget / 2 || late)) {
        charge(m, c, (int64_t)free);
        charge_gpu(m, c, true);
        m->solo = c;
        return 0;
    }
    int k = g ? larder__evict_one_gpu(m, c, LARDER_REASON_BUDGET, c->gpu)
              : larder__evict_one(m, c, LARDER_REASON_BUDGET);
    return k != 0 ? 1 : wait_room(m, c, deadline);
}

/* m->mu held. Reserves bytes for c (0: c has no estimate and loads alone), evicting
 * idle components, waiting up to wait_ms for leases to come back. */
static int admit(struct larder *m, struct comp *c, uint64_t bytes, int64_t wait_ms)
{
    int64_t deadline = larder__now_ms() + wait_ms;
    int r = 1;
    bool held = false;
    while (r > 0) {
        if (atomic_load(&m->closing)) {
            r = LARDER_ECLOSED;
            break;
        }
        /* Counted before looking, so a release racing with the scan still wakes us. */
        atomic_fetch_add(&m->admit_waiters, 1);
        r = bytes ? admit_step(m, c, bytes, deadline) : solo_step(m, c, deadline, &held);
        atomic_fetch_sub(&m->admit_waiters, 1);
    }
    hold_new_loads(m, &held, false);
    return r;
}

/* m->mu held: a load or grow admitted earlier is over (what it took is in the accounts
 * or given back); a load waiting to run alone may go. */
static void flight_over(struct larder *m, struct comp *c)
{
    m->loads_admitted--;
    if (m->solo == c)
        m->solo = NULL;
    pthread_cond_broadcast(&m->budget_cv);
}

/* ---- eviction ----------------------------------------------------------------------- */

struct pick {
    struct larder *m;
    struct comp *except;
    struct comp *best;
    double best_score;
    bool instances; /* pass 1: surplus instances; pass 2: whole components */
    int gpu;        /* >= 0: only components on this GPU */
    double now;
};

static void pick_one(struct comp *c, void *arg)
{
    struct pick *p = arg;
    if (c == p->except || (p->gpu >= 0 && c->gpu != p->gpu))
        return;
    pthread_mutex_lock(&c->mu);
    bool ok;
    if (p->instances)
        ok = c->state == LARDER_STATE_READY && c->free_inst && c->n_inst > 1 && !c->draining;
    else
        ok = larder__comp_idle(c) && !c->pin && !c->draining && c->defined;
    if (ok) {
        c->ps.bytes = c->reserved;
        /* Shared leases come back without the lock: their release time is idle_since
         * (same clock as now_s, in ms). A long lease just returned is recent use. */
        larder__sync_hits(c);
        double back = (double)atomic_load(&c->idle_since_ms) / 1000.0;
        if (back > c->ps.last_use)
            c->ps.last_use = back;
        double s = p->m->policy->score(p->m->policy_state, &c->ps, p->now);
        if (!p->best || s < p->best_score) {
            p->best = c;
            p->best_score = s;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

/* m->mu held; frees one idle surplus instance of c (dropping m->mu meanwhile). */
static bool free_instance(struct larder *m, struct comp *c)
{
    pthread_mutex_lock(&c->mu);
    if (!(c->state == LARDER_STATE_READY && c->free_inst && c->n_inst > 1)) {
        pthread_mutex_unlock(&c->mu);
        return false;
    }
    struct inst *i = c->free_inst;
    c->free_inst = i->next;
    c->n_inst--;
    c->freeing++;
    uint64_t bytes = c->inst_bytes < c->reserved ? c->inst_bytes : 0;
    void *model = c->model;
    pthread_mutex_unlock(&c->mu);
    atomic_fetch_add(&m->unloads_running, 1);
    pthread_mutex_unlock(&m->mu);
    c->cls->instance_free(c->ud, model, i->ptr);
    free(i);
    atomic_fetch_sub(&m->unloads_running, 1);
    larder__emit_simple(m, LARDER_EVENT_INSTANCE_FREE, c, LARDER_REASON_BUDGET, bytes);
    pthread_mutex_lock(&m->mu);
    pthread_mutex_lock(&c->mu);
    c->freeing--;
    charge(m, c, -(int64_t)bytes);
    pthread_cond_broadcast(&m->budget_cv); /* the free is over: solo loads may go */
    c->ps.bytes = c->reserved;
    larder__cv_broadcast(c);
    pthread_mutex_unlock(&c->mu);
    return true;
}

/* m->mu and c->mu held, c idle and loaded: takes it to UNLOADING, then unloads it with
 * both locks dropped, and settles the accounts. Returns with m->mu held, c->mu free. */
static void evict_taken(struct larder *m, struct comp *c, enum larder_evict_reason why)
{
    void *model = c->model;
    struct inst *insts = c->free_inst;
    uint64_t bytes = c->reserved;
    c->state = LARDER_STATE_UNLOADING;
    larder__gate(c);
    c->free_inst = NULL;
    c->n_inst = 0;
    if (why != LARDER_REASON_CLOSE)
        c->evictions++;
    if (m->policy->on_evict)
        m->policy->on_evict(m->policy_state, &c->ps, larder__now_s());
    pthread_mutex_unlock(&c->mu);
    /* Counted before m->mu goes: a load waiting to run alone sees this unload. */
    bool alone = atomic_fetch_add(&m->unloads_running, 1) == 0 &&
                 atomic_load(&m->loads_running) == 0;
    pthread_mutex_unlock(&m->mu);

    larder__emit_simple(m, LARDER_EVENT_EVICT, c, why, bytes);
    uint64_t rss0 = larder__rss_bytes();
    for (struct inst *i = insts, *n; i; i = n) {
        n = i->next;
        c->cls->instance_free(c->ud, model, i->ptr);
        free(i);
    }
    int64_t child = 0;
    bool reported = larder__class_unload(c, model, &child);
    if (m->opts.trim_after_unload)
        malloc_trim(0);
    int64_t returned = (int64_t)rss0 - (int64_t)larder__rss_bytes();
    alone = atomic_fetch_sub(&m->unloads_running, 1) == 1 && alone &&
            atomic_load(&m->loads_running) == 0;
    /* What a child process gave back is its own figure, true whatever else ran; this
     * process's delta counts only when the unload ran alone. */
    if (reported) {
        returned = child + (alone ? returned : 0);
        alone = true;
    }

    pthread_mutex_lock(&m->mu);
    pthread_mutex_lock(&c->mu);
    charge(m, c, -(int64_t)c->reserved);
    charge_gpu(m, c, false);
    pthread_cond_broadcast(&m->budget_cv); /* the unload is over: solo loads may go */
    c->model = NULL;
    c->state = LARDER_STATE_UNLOADED;
    if (alone) {
        c->last_returned = returned;
        c->leak_suspect = c->method != LARDER_MEASURE_ESTIMATE && c->measured > (4u << 20) &&
                          returned < (int64_t)(c->measured / 2);
    }
    if ((c->n_waiters > 0 || c->preload_pending) && !c->draining && c->defined)
        larder__start_load(c);
    larder__cv_broadcast(c);
    pthread_mutex_unlock(&c->mu);
    struct larder_event ev = {.struct_size = sizeof ev, .type = LARDER_EVENT_UNLOAD,
                              .name = c->name, .reason = why, .bytes = bytes,
                              .bytes_returned = alone ? returned : 0};
    pthread_mutex_unlock(&m->mu);
    larder__emit(m, &ev);
    pthread_mutex_lock(&m->mu);
}

int larder__evict_one(struct larder *m, struct comp *except, enum larder_evict_reason why)
{
    return larder__evict_one_gpu(m, except, why, -1);
}

int larder__evict_one_gpu(struct larder *m, struct comp *except, enum larder_evict_reason why,
                          int gpu)
{
    struct pick p = {.m = m, .except = except, .instances = gpu < 0, .now = larder__now_s(),
                     .gpu = gpu};
    if (p.instances) {
        larder__each_comp(m, pick_one, &p);
        if (p.best && free_instance(m, p.best))
            return 2;
    }
    p.instances = false;
    p.best = NULL;
    larder__each_comp(m, pick_one, &p);
    if (!p.best)
        return 0;
    pthread_mutex_lock(&p.best->mu);
    if (p.best->pin || !larder__seal_idle(p.best)) {
        pthread_mutex_unlock(&p.best->mu);
        return 3; /* changed meanwhile: tell the caller to look again */
    }
    evict_taken(m, p.best, why);
    return 1;
}

/* At close, waiters do not keep a component loaded (they are being failed). */
static bool seal_idle_closing(struct comp *c)
{
    atomic_store(&c->open, false);
    bool idle = larder__leases(c) == 0 && !c->growing && !c->freeing;
    if (!idle)
        larder__gate(c);
    return idle;
}

int larder__unload_comp(struct larder *m, struct comp *c, enum larder_evict_reason why)
{
    pthread_mutex_lock(&m->mu);
    pthread_mutex_lock(&c->mu);
    int r = 0;
    if (c->state != LARDER_STATE_READY) {
        pthread_mutex_unlock(&c->mu);
    } else if (!(why == LARDER_REASON_CLOSE ? seal_idle_closing(c) : larder__seal_idle(c))) {
        pthread_mutex_unlock(&c->mu);
        r = LARDER_EINUSE;
    } else {
        evict_taken(m, c, why);
    }
    pthread_mutex_unlock(&m->mu);
    return r;
}

void larder__enforce_budget(struct larder *m)
{
    pthread_mutex_lock(&m->mu);
    while (m->reserved > m->budget && larder__evict_one(m, NULL, LARDER_REASON_BUDGET) != 0)
        ;
    /* Leased components over a lowered budget go when their last lease returns. */
    atomic_store(&m->over_budget, m->reserved > m->budget);
    pthread_mutex_unlock(&m->mu);
}

/* ---- measurements after the load -------------------------------------------------------- */

int larder_update_measured(larder *m, const char *name, uint64_t bytes)
{
    if (!m || !name || !bytes)
        return -EINVAL;
    struct comp *c = larder__lookup(m, name);
    if (!c)
        return LARDER_ENOTFOUND;
    pthread_mutex_lock(&m->mu);
    pthread_mutex_lock(&c->mu);
    if (!c->defined || c->state != LARDER_STATE_READY || c->draining) {
        bool known = c->defined;
        pthread_mutex_unlock(&c->mu);
        pthread_mutex_unlock(&m->mu);
        return known ? -EAGAIN : LARDER_ENOTFOUND;
    }
    /* m->mu keeps c loaded from here on: evictions and unloads take it first. */
    c->measured = bytes;
    c->method = LARDER_MEASURE_CLASS;
    uint64_t grow = bytes > c->reserved ? bytes - c->reserved : 0;
    pthread_mutex_unlock(&c->mu);
    int r = grow ? admit(m, c, grow, 0) : 0;
    if (r < 0 && r != LARDER_ECLOSED) {
        charge(m, c, (int64_t)grow);
        r = LARDER_ENOSPC;
    }
    c->ps.bytes = c->reserved;
    uint64_t reserved = c->reserved, total = m->reserved, budget = m->budget;
    pthread_mutex_unlock(&m->mu);
    if (r != LARDER_ENOSPC)
        return r;
    char msg[256];
    snprintf(msg, sizeof msg, "'%s' grew to %llu bytes: reservations %llu over the budget "
             "%llu; idle components go, leased ones when their last lease returns", c->name,
             (unsigned long long)reserved, (unsigned long long)total,
             (unsigned long long)budget);
    struct larder_event ev = {.struct_size = sizeof ev, .type = LARDER_EVENT_PRESSURE,
                              .name = c->name, .message = msg,
                              .bytes = total > budget ? total - budget : 0};
    larder__emit(m, &ev);
    larder__enforce_budget(m);
    return LARDER_ENOSPC;
}

/* ---- loading -------------------------------------------------------------------------- */

bool larder__class_unload(struct comp *c, void *model, int64_t *ret_child)
{
    const struct larder_class *k = c->cls;
    if (k->struct_size >= offsetof(struct larder_class, unload_report) + sizeof(void *) &&
        k->unload_report) {
        int64_t b = 0;
        bool ok = k->unload_report(c->ud, model, &b) == 0;
        if (ret_child)
            *ret_child = ok ? b : 0;
        return ok;
    }
    k->unload(c->ud, model);
    return false;
}

void larder__start_cooldown(struct comp *c, int err, const char *msg)
{
    struct larder *m = c->m;
    c->last_err = err;
    snprintf(c->last_msg, sizeof c->last_msg, "%s", msg && *msg ? msg : larder_strerror(err));
    c->failures++;
    c->fail_streak++;
    int64_t cd = m->opts.cooldown_min_ms;
    for (unsigned i = 1; i < c->fail_streak && cd < m->opts.cooldown_max_ms; i++)
        cd *= 2;
    if (cd > m->opts.cooldown_max_ms)
        cd = m->opts.cooldown_max_ms;
    c->cooldown_until_ms = larder__now_ms() + cd;
    c->state = LARDER_STATE_FAILED;
}

static void load_failed(struct comp *c, int err, const char *msg, bool cooldown, double ms)
{
    struct larder *m = c->m;
    struct waiter *done = NULL;
    loader_settle();
    pthread_mutex_lock(&c->mu);
    if (cooldown) {
        larder__start_cooldown(c, err, msg);
    } else {
        c->last_err = err;
        snprintf(c->last_msg, sizeof c->last_msg, "%s",
                 msg && *msg ? msg : larder_strerror(err));
        /* A refusal (too big, no room) is a failure too; only a closing manager is not. */
        if (err != LARDER_ECLOSED)
            c->failures++;
        c->state = LARDER_STATE_UNLOADED;
    }
    larder__gate(c);
    clear_preload(c);
    larder__fail_waiters(c, err, &done);
    larder__cv_broadcast(c);
    struct larder_event ev = {.struct_size = sizeof ev, .type = LARDER_EVENT_LOAD_FAIL,
                              .name = c->name, .error = err, .message = c->last_msg,
                              .load_ms = ms};
    char msgcopy[LARDER__ERRLEN];
    memcpy(msgcopy, c->last_msg, sizeof msgcopy);
    ev.message = msgcopy;
    pthread_mutex_unlock(&c->mu);
    larder__deliver(m, done);
    larder__emit(m, &ev);
}

/* An admitted load that keeps no model gives its reservation back; its flight is over
 * once what it allocated is freed. */
static void release_reservation(struct comp *c, bool in_flight)
{
    pthread_mutex_lock(&c->m->mu);
    pthread_mutex_lock(&c->mu);
    charge(c->m, c, -(int64_t)c->reserved);
    charge_gpu(c->m, c, false);
    pthread_mutex_unlock(&c->mu);
    if (in_flight)
        flight_over(c->m, c);
    pthread_mutex_unlock(&c->m->mu);
}

struct loaded {
    void *model;
    void *inst;
    bool has_inst;    /* inst is an instance (which may be a NULL pointer) */
    bool shared;      /* instance_new said the model is shared after all */
    bool first;       /* the first load of its class in this process */
    double ms;
    uint64_t measured;
    enum larder_measure_method method;
    char err[LARDER__ERRLEN];
};

/* Classes that have loaded in this process. The first load of a class pays for mapping
 * its engine (shared libraries, global tables), which later loads of any component of
 * that class, in any manager, find mapped. Only grows: the process keeps the engine. */
static pthread_mutex_t classes_mu = PTHREAD_MUTEX_INITIALIZER;
static const struct larder_class **classes;
static size_t n_classes, cap_classes;

/* Records cls as loaded; true when it was not yet, or when there is no memory to
 * remember it (a first-load figure is only ever used as a floor: erring that way is
 * safe). */
static bool class_first_load(const struct larder_class *cls)
{
    pthread_mutex_lock(&classes_mu);
    bool first = true;
    for (size_t i = 0; i < n_classes && first; i++)
        first = classes[i] != cls;
    if (first && n_classes == cap_classes) {
        size_t cap = cap_classes ? cap_classes * 2 : 16;
        const struct larder_class **n = realloc(classes, cap * sizeof *n);
        if (n) {
            classes = n;
            cap_classes = cap;
        }
    }
    if (first && n_classes < cap_classes)
        classes[n_classes++] = cls;
    pthread_mutex_unlock(&classes_mu);
    return first;
}

/* What the load took: the class's own figure when it has one, else the RSS delta when
 * the load ran alone (no other load or unload overlapped it), else nothing trusted. */
static void measure_load(struct comp *c, struct loaded *out, bool alone, uint64_t rss0,
                         uint64_t rss1)
{
    uint64_t bytes = 0;
    if (c->cls->measure && c->cls->measure(c->ud, out->model, &bytes) == 0 && bytes) {
        out->measured = bytes;
        out->method = LARDER_MEASURE_CLASS;
    } else if (alone && rss1 && rss0) {
        out->measured = rss1 > rss0 ? rss1 - rss0 : 0;
        out->method = LARDER_MEASURE_RSS;
    } else {
        out->method = LARDER_MEASURE_ESTIMATE;
    }
}

/* Runs the class: model plus, for pooled classes, the first instance. */
static int call_load(struct comp *c, struct loaded *out)
{
    struct larder *m = c->m;
    out->first = class_first_load(c->cls);
    bool alone = atomic_fetch_add(&m->loads_running, 1) == 0 &&
                 atomic_load(&m->unloads_running) == 0;
    uint64_t rss0 = larder__rss_bytes();
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    out->err[0] = '\0';
    int r = c->cls->load(c->ud, &out->model, out->err, sizeof out->err);
    if (r >= 0 && c->pooled) {
        r = c->cls->instance_new(c->ud, out->model, &out->inst, out->err, sizeof out->err);
        out->shared = r == LARDER_INSTANCE_SHARED;
        out->has_inst = r >= 0 && !out->shared;
        if (out->shared)
            out->inst = NULL;
        if (r < 0)
            larder__class_unload(c, out->model, NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    out->ms = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
    uint64_t rss1 = larder__rss_bytes();
    alone = atomic_fetch_sub(&m->loads_running, 1) == 1 && alone &&
            atomic_load(&m->unloads_running) == 0;
    if (r < 0)
        return LARDER_ELOAD;
    measure_load(c, out, alone, rss0, rss1);
    return 0;
}

static void undo_load(struct comp *c, struct loaded *ld)
{
    if (ld->has_inst)
        c->cls->instance_free(c->ud, ld->model, ld->inst);
    larder__class_unload(c, ld->model, NULL);
    if (c->m->opts.trim_after_unload)
        malloc_trim(0);
}

/* m->mu held: settles c's reservation on what was measured, evicting idle components
 * but never waiting (the load is done; its memory is already in use). A load that ran
 * alone on a conservative reservation keeps what it measured (at least a page); others
 * keep max(estimate, measured). A figure that is not trusted never refuses a load. */
static int reconcile(struct larder *m, struct comp *c, const struct loaded *ld)
{
    if (ld->method == LARDER_MEASURE_ESTIMATE)
        return 0;
    uint64_t want = ld->measured > c->estimate ? ld->measured : c->estimate;
    if (m->solo == c) {
        want = want > min_reserve(m) ? want : min_reserve(m);
        if (want < c->reserved)
            charge(m, c, -(int64_t)(c->reserved - want));
    }
    if (want <= c->reserved)
        return 0;
    if (want > m->budget)
        return LARDER_ETOOBIG;
    return admit(m, c, want - c->reserved, 0);
}

/* c->mu held: a trusted measurement becomes c's learned size; the first load of its
 * class in this process is also kept, as the floor of c's learned size. */
static void learn(struct comp *c, const struct loaded *ld)
{
    c->method = ld->method;
    if (ld->method == LARDER_MEASURE_ESTIMATE)
        return;
    c->measured = ld->measured;
    if (ld->first)
        c->first_bytes = ld->measured;
}

static void load_succeeded(struct comp *c, struct loaded *ld)
{
    struct larder *m = c->m;
    struct waiter *done = NULL;
    struct inst *i = NULL;
    loader_settle();
    if (ld->has_inst && !(i = malloc(sizeof *i))) {
        undo_load(c, ld);
        release_reservation(c, false);
        load_failed(c, -ENOMEM, NULL, false, ld->ms);
        return;
    }
    pthread_mutex_lock(&m->mu);
    pthread_mutex_lock(&c->mu);
    c->model = ld->model;
    if (ld->shared) {
        /* Known only now (a plugin opened by this load): every lease shares the model. */
        c->pooled = false;
        c->max_inst = 0;
    }
    if (i) {
        i->ptr = ld->inst;
        i->next = NULL;
        c->free_inst = i;
        c->n_inst = 1;
    }
    learn(c, ld);
    c->state = LARDER_STATE_READY;
    larder__gate(c);
    c->loads++;
    c->load_ms_last = ld->ms;
    c->load_ms_sum += ld->ms;
    c->fail_streak = 0;
    c->last_err = 0;
    c->last_msg[0] = '\0';
    c->ps.bytes = c->reserved;
    c->ps.load_cost = ld->ms / 1000.0;
    c->ps.loaded_at = c->ps.last_use = larder__now_s();
    if (m->policy->on_load)
        m->policy->on_load(m->policy_state, &c->ps, c->ps.loaded_at);
    pthread_mutex_unlock(&m->mu);
    clear_preload(c);
    larder__dispatch(c, true, &done);
    if (c->n_waiters > 0 && c->pooled && !c->growing && c->n_inst < c->max_inst) {
        c->growing = true;
        larder__submit(m, &c->grow_job);
    }
    if (larder__leases(c) == 0)
        larder__mark_idle(c);
    larder__cv_broadcast(c);
    struct larder_event ev = {.struct_size = sizeof ev, .type = LARDER_EVENT_LOAD_DONE,
                              .name = c->name, .bytes = c->reserved, .load_ms = ld->ms};
    pthread_mutex_unlock(&c->mu);
    larder__deliver(m, done);
    larder__emit(m, &ev);
}

/* Nobody was waiting when admission gave up; if someone came since, start over. */
static void load_canceled(struct comp *c)
{
    loader_settle();
    pthread_mutex_lock(&c->mu);
    if (c->n_waiters > 0 || c->preload_pending)
        larder__submit(c->m, &c->load_job);
    else
        c->state = LARDER_STATE_UNLOADED;
    larder__cv_broadcast(c);
    pthread_mutex_unlock(&c->mu);
}

/* It takes more than the budget can hold now: the load is given back. Its size is kept
 * for the next estimate, except an RSS delta larger than the whole budget: the process's
 * RSS also counts what other threads allocated meanwhile, so that verdict is not kept
 * for ever; the component cools down like a failed load and is measured again. */
static void load_oversize(struct comp *c, struct loaded *ld, int r)
{
    struct larder *m = c->m;
    bool retry = r == LARDER_ETOOBIG && ld->method == LARDER_MEASURE_RSS;
    undo_load(c, ld);
    pthread_mutex_lock(&c->mu);
    if (!retry)
        learn(c, ld);
    pthread_mutex_unlock(&c->mu);
    release_reservation(c, true);
    larder__emit_simple(m, LARDER_EVENT_EVICT, c, LARDER_REASON_OVERSIZE, ld->measured);
    larder__emit_simple(m, LARDER_EVENT_UNLOAD, c, LARDER_REASON_OVERSIZE, ld->measured);
    load_failed(c, r == LARDER_ETOOBIG ? r : LARDER_ENOSPC,
                retry ? "measured size (RSS) does not fit the budget; measured again after "
                        "the cooldown"
                      : "measured size does not fit the budget",
                retry, ld->ms);
}

static void run_load(struct comp *c)
{
    struct larder *m = c->m;
    larder__emit_simple(m, LARDER_EVENT_LOAD_START, c, LARDER_REASON_NONE, 0);
    uint64_t need = estimate(c);
    larder__memory_make_room(m, c, need);
    pthread_mutex_lock(&m->mu);
    int r = admit(m, c, need, m->opts.admission_timeout_ms);
    m->loads_admitted += r == 0;
    pthread_mutex_unlock(&m->mu);
    if (r == LARDER_ECANCELED) {
        load_canceled(c);
        return;
    }
    if (r < 0) {
        load_failed(c, r, NULL, false, 0);
        return;
    }
    struct loaded ld = {0};
    r = call_load(c, &ld);
    if (r < 0) {
        release_reservation(c, true);
        load_failed(c, r, ld.err, true, ld.ms);
        return;
    }
    pthread_mutex_lock(&m->mu);
    r = reconcile(m, c, &ld);
    pthread_mutex_unlock(&m->mu);
    if (r < 0) {
        load_oversize(c, &ld, r);
        return;
    }
    load_succeeded(c, &ld);
    /* Over only once its LOAD_DONE is out: loads that waited for it (a load running alone
     * holds every other admission) start after that event, whichever loader runs them. */
    pthread_mutex_lock(&m->mu);
    flight_over(m, c);
    pthread_mutex_unlock(&m->mu);
    larder__memory_record(m, c, ld.ms, ld.first);
}

/* ---- growing a pool ------------------------------------------------------------------ */

static void grow_done(struct comp *c, struct inst *i, uint64_t learned, const char *err)
{
    struct larder *m = c->m;
    struct waiter *done = NULL;
    loader_settle();
    pthread_mutex_lock(&c->mu);
    c->growing = false;
    if (learned)
        c->inst_bytes = learned;
    if (i) {
        i->next = c->free_inst;
        c->free_inst = i;
        c->n_inst++;
        larder__dispatch(c, true, &done);
        if (c->n_waiters > 0 && !c->free_inst && c->n_inst < c->max_inst) {
            c->growing = true;
            larder__submit(m, &c->grow_job);
        }
        if (larder__leases(c) == 0)
            larder__mark_idle(c);
    } else if (err) {
        snprintf(c->last_msg, sizeof c->last_msg, "instance: %s", err);
    }
    larder__cv_broadcast(c);
    pthread_mutex_unlock(&c->mu);
    larder__deliver(m, done);
    if (i)
        larder__emit_simple(m, LARDER_EVENT_INSTANCE_NEW, c, LARDER_REASON_NONE, learned);
}

static void run_grow(struct comp *c)
{
    struct larder *m = c->m;
    pthread_mutex_lock(&c->mu);
    bool ok = c->state == LARDER_STATE_READY && c->defined && !c->draining;
    uint64_t bytes = c->inst_bytes ? c->inst_bytes : c->reserved;
    void *model = c->model;
    pthread_mutex_unlock(&c->mu);
    if (!ok) {
        grow_done(c, NULL, 0, NULL);
        return;
    }
    pthread_mutex_lock(&m->mu);
    uint64_t before = c->reserved;
    int r = admit(m, c, bytes, 0);
    m->loads_admitted += r == 0;
    pthread_mutex_unlock(&m->mu);
    if (r < 0) {
        grow_done(c, NULL, 0, NULL);
        return;
    }
    char err[LARDER__ERRLEN] = "";
    void *ptr = NULL;
    bool alone = atomic_fetch_add(&m->loads_running, 1) == 0 &&
                 atomic_load(&m->unloads_running) == 0;
    uint64_t rss0 = larder__rss_bytes();
    r = c->cls->instance_new(c->ud, model, &ptr, err, sizeof err);
    uint64_t rss1 = larder__rss_bytes();
    alone = atomic_fetch_sub(&m->loads_running, 1) == 1 && alone &&
            atomic_load(&m->unloads_running) == 0;
    struct inst *i = r >= 0 ? malloc(sizeof *i) : NULL;
    if (!i) {
        if (r >= 0)
            c->cls->instance_free(c->ud, model, ptr);
        pthread_mutex_lock(&m->mu);
        pthread_mutex_lock(&c->mu);
        charge(m, c, -(int64_t)(c->reserved - before));
        pthread_mutex_unlock(&c->mu);
        flight_over(m, c);
        pthread_mutex_unlock(&m->mu);
        grow_done(c, NULL, 0, r < 0 ? (*err ? err : "failed") : "out of memory");
        return;
    }
    i->ptr = ptr;
    uint64_t learned = alone && rss1 > rss0 ? rss1 - rss0 : 0;
    pthread_mutex_lock(&m->mu);
    if (learned > bytes && admit(m, c, learned - bytes, 0) < 0)
        learned = bytes; /* keep the instance; its true size is learned for next time */
    pthread_mutex_lock(&c->mu);
    c->ps.bytes = c->reserved;
    pthread_mutex_unlock(&c->mu);
    flight_over(m, c);
    pthread_mutex_unlock(&m->mu);
    grow_done(c, i, learned ? learned : bytes, NULL);
}

/* ---- the reaper: ttl unloads and async deadlines -------------------------------------- */

void larder__reaper_kick(struct larder *m, int64_t at_ms)
{
    if (at_ms >= atomic_load_explicit(&m->reaper_wake_ms, memory_order_relaxed))
        return;
    pthread_mutex_lock(&m->reaper_mu);
    if (at_ms < atomic_load(&m->reaper_wake_ms)) {
        atomic_store(&m->reaper_wake_ms, at_ms);
        m->reaper_kick = true;
        pthread_cond_signal(&m->reaper_cv);
    }
    pthread_mutex_unlock(&m->reaper_mu);
}

struct reap {
    struct larder *m;
    int64_t now;
    int64_t next;
};

static void reap_one(struct comp *c, void *arg)
{
    struct reap *a = arg;
    struct larder *m = a->m;
    struct waiter *done = NULL;
    pthread_mutex_lock(&c->mu);
    /* At least once a second (the memory tick): the lock-free hit counter is 32 bits */
    larder__sync_hits(c);
    if (c->n_async)
        larder__expire_async(c, a->now, &done, &a->next);
    int64_t exp = larder__expiry(c);
    bool due = exp && exp <= a->now && larder__comp_idle(c);
    if (exp && !due && exp < a->next && larder__comp_idle(c))
        a->next = exp;
    pthread_mutex_unlock(&c->mu);
    larder__deliver(m, done);
    if (!due)
        return;
    pthread_mutex_lock(&m->mu);
    pthread_mutex_lock(&c->mu);
    larder__sync_hits(c);
    int64_t again = larder__expiry(c);
    if (again && again <= a->now && larder__seal_idle(c))
        evict_taken(m, c, LARDER_REASON_TTL);
    else
        pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&m->mu);
}

static void *reaper_main(void *arg)
{
    struct larder *m = arg;
    pthread_mutex_lock(&m->reaper_mu);
    while (!m->reaper_stop) {
        int64_t now = larder__now_ms();
        if (!m->reaper_kick && now < atomic_load(&m->reaper_wake_ms)) {
            struct timespec ts;
            larder__abstime(atomic_load(&m->reaper_wake_ms) - now, &ts);
            pthread_cond_timedwait(&m->reaper_cv, &m->reaper_mu, &ts);
            continue;
        }
        m->reaper_kick = false;
        atomic_store(&m->reaper_wake_ms, INT64_MAX);
        pthread_mutex_unlock(&m->reaper_mu);
        /* the coarse clock may lag the precise one by a tick */
        struct reap a = {.m = m, .now = larder__now_ms() + 5, .next = INT64_MAX};
        larder__each_comp(m, reap_one, &a);
        int64_t tick = larder__memory_tick(m, larder__now_ms());
        if (tick < a.next)
            a.next = tick;
        pthread_mutex_lock(&m->reaper_mu);
        if (a.next < atomic_load(&m->reaper_wake_ms))
            atomic_store(&m->reaper_wake_ms, a.next);
    }
    pthread_mutex_unlock(&m->reaper_mu);
    return NULL;
}

int larder__reaper_start(struct larder *m)
{
    atomic_store(&m->reaper_wake_ms, INT64_MAX);
    int r = pthread_create(&m->reaper, NULL, reaper_main, m);
    return r ? -r : 0;
}

void larder__reaper_stop(struct larder *m)
{
    pthread_mutex_lock(&m->reaper_mu);
    m->reaper_stop = true;
    pthread_cond_signal(&m->reaper_cv);
    pthread_mutex_unlock(&m->reaper_mu);
    pthread_join(m->reaper, NULL);
}
