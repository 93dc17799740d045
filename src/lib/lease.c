/* Leases: acquire (blocking, async, sets), waiters, fallbacks, release. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static bool fallbackable(int err)
{
    return err == LARDER_ELOAD || err == LARDER_ECOOLDOWN || err == LARDER_ETOOBIG ||
           err == LARDER_ENOSPC || err == LARDER_ETIMEDOUT || err == LARDER_EBUSY;
}

/* ---- wait queue (c->mu held) ---------------------------------------------------- */

static void wq_push(struct comp *c, struct waiter *w)
{
    w->next = NULL;
    w->prev = c->wq_tail;
    if (c->wq_tail)
        c->wq_tail->next = w;
    else
        c->wq_head = w;
    c->wq_tail = w;
    c->n_waiters++;
    if (w->async)
        c->n_async++;
}

static void wq_unlink(struct comp *c, struct waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        c->wq_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        c->wq_tail = w->prev;
    w->next = w->prev = NULL;
    c->n_waiters--;
    if (w->async)
        c->n_async--;
}

/* Marks w finished: blocking waiters are woken, async ones go on *ret_done. */
static void complete(struct waiter *w, int err, struct waiter **ret_done)
{
    w->done = true;
    w->err = err;
    if (w->async) {
        w->next = *ret_done;
        *ret_done = w;
    } else {
        pthread_cond_signal(&w->cv);
    }
}

/* ---- the lock-free warm path -------------------------------------------------------
 *
 * A loaded shared-class component serves warm leases without taking c->mu: an acquire
 * checks c->open, adds one lease and one hit to c->lh in a single atomic add, and checks
 * c->open again. Whoever wants to stop new leases (eviction, drain, close) clears c->open
 * under c->mu and then reads the lease count. Both sides use sequentially consistent
 * operations, so at least one sees the other: either the acquirer sees the gate closed
 * (and gives its lease back) or the closer sees the lease (and does not evict).
 * Hits taken this way are handed to the policy later, spread over the time since the
 * last fold, by larder__sync_hits(). */

void larder__gate(struct comp *c)
{
    bool ok = !c->pooled && c->state == LARDER_STATE_READY && c->defined && !c->draining &&
              !atomic_load(&c->m->closing);
    atomic_store(&c->open, ok);
}

bool larder__seal_idle(struct comp *c)
{
    atomic_store(&c->open, false);
    if (larder__comp_idle(c))
        return true;
    larder__gate(c);
    return false;
}

void larder__sync_hits(struct comp *c)
{
    uint32_t hi = (uint32_t)(atomic_load(&c->lh) >> 32);
    uint32_t pending = hi - c->hits_seen;
    if (!pending)
        return;
    c->hits_seen = hi;
    c->hits += pending;
    struct larder *m = c->m;
    double last = larder__leases(c) ? larder__now_s()
                                    : (double)atomic_load(&c->idle_since_ms) / 1000.0;
    double prev = c->ps.last_use < last ? c->ps.last_use : last;
    /* The policy sees at most 16 of them, evenly spaced: the rate is right, the cost of
     * a fold is bounded. */
    unsigned k = pending > 16 ? 16 : pending;
    c->ps.hits += pending - k;
    for (unsigned i = 1; i <= k; i++) {
        double t = prev + (last - prev) * (double)i / (double)k;
        c->ps.hits++;
        c->ps.last_use = t;
        if (m->policy->on_hit)
            m->policy->on_hit(m->policy_state, &c->ps, t);
    }
}

/* ---- granting (c->mu held) ------------------------------------------------------ */

/* Hands a lease to w if c can serve now. Returns false when it cannot. */
static bool try_grant(struct comp *c, struct waiter *w, bool cold)
{
    if (c->state != LARDER_STATE_READY || (c->pooled && !c->free_inst))
        return false;
    larder__sync_hits(c);
    if (!c->pooled && !cold && !w->cold && w->requested == c) {
        /* Warm and direct: every such lease of c looks the same, so they share one. */
        atomic_fetch_add(&c->lh, 1);
        c->hits++;
        c->ps.hits++;
        c->ps.last_use = larder__now_s();
        if (c->m->policy->on_hit)
            c->m->policy->on_hit(c->m->policy_state, &c->ps, c->ps.last_use);
        w->lease = &c->warm;
        w->err = 0;
        w->done = true;
        return true;
    }
    larder_lease *l = atomic_load_explicit(&c->spare, memory_order_acquire);
    /* Only this lock's holder pops, so the head's next is stable (no ABA). */
    while (l && !atomic_compare_exchange_weak_explicit(&c->spare, &l, l->next_spare,
                                                        memory_order_acquire,
                                                        memory_order_acquire))
        ;
    if (!l)
        l = malloc(sizeof *l);
    if (!l) {
        w->done = true;
        w->err = -ENOMEM;
        return true;
    }
    struct larder *m = c->m;
    struct inst *i = NULL;
    if (c->pooled) {
        i = c->free_inst;
        c->free_inst = i->next;
        c->n_busy++;
    }
    *l = (struct larder_lease){.m = m, .c = c, .requested = w->requested, .inst = i,
                               .cold = cold || w->cold};
    if (l->cold) {
        l->load_ms = c->load_ms_last;
        l->wait_ms = larder__now_ms_precise() - w->start_precise_ms;
        c->cold_starts++;
    }
    atomic_fetch_add(&c->lh, 1);
    c->hits++;
    if (w->requested != c)
        c->fallbacks_served++;
    c->ps.hits++;
    c->ps.last_use = larder__now_s();
    if (m->policy->on_hit)
        m->policy->on_hit(m->policy_state, &c->ps, c->ps.last_use);
    w->lease = l;
    w->err = 0;
    w->done = true;
    return true;
}

void larder__dispatch(struct comp *c, bool cold, struct waiter **ret_done)
{
    while (c->wq_head) {
        struct waiter *w = c->wq_head;
        if (!try_grant(c, w, cold))
            break;
        wq_unlink(c, w);
        complete(w, w->err, ret_done);
    }
}

void larder__fail_waiters(struct comp *c, int err, struct waiter **ret_done)
{
    while (c->wq_head) {
        struct waiter *w = c->wq_head;
        wq_unlink(c, w);
        complete(w, err, ret_done);
    }
}

void larder__expire_async(struct comp *c, int64_t now, struct waiter **ret_done,
                          int64_t *next_deadline)
{
    for (struct waiter *w = c->wq_head, *n; w; w = n) {
        n = w->next;
        if (!w->async || w->deadline_ms < 0)
            continue;
        if (w->deadline_ms <= now) {
            wq_unlink(c, w);
            complete(w, LARDER_ETIMEDOUT, ret_done);
        } else if (w->deadline_ms < *next_deadline) {
            *next_deadline = w->deadline_ms;
        }
    }
}

bool larder__comp_idle(const struct comp *c)
{
    return c->state == LARDER_STATE_READY && larder__leases(c) == 0 && !c->growing &&
           !c->freeing &&
           c->n_waiters == 0;
}

void larder__cv_broadcast(struct comp *c)
{
    if (atomic_load(&c->cv_waiters))
        pthread_cond_broadcast(&c->cv);
}

/* The last lease came back (or a load finished with none): the ttl clock starts. */
static void went_idle(struct comp *c, int64_t now)
{
    atomic_store_explicit(&c->idle_since_ms, now, memory_order_relaxed);
    if (c->ttl_ms >= 0 && !c->pin)
        larder__reaper_kick(c->m, now + c->ttl_ms);
}

void larder__mark_idle(struct comp *c)
{
    larder__cv_broadcast(c);
    went_idle(c, larder__now_ms_coarse());
}

int64_t larder__expiry(const struct comp *c)
{
    if (c->state != LARDER_STATE_READY || c->ttl_ms < 0 || c->pin ||
        larder__leases(c) != 0)
        return 0;
    return atomic_load_explicit(&c->idle_since_ms, memory_order_relaxed) + c->ttl_ms;
}

/* ---- submitting one waiter (c->mu held) ------------------------------------------ */

static void maybe_grow(struct comp *c)
{
    if (c->state == LARDER_STATE_READY && c->pooled && !c->free_inst && !c->growing &&
        c->n_inst < c->max_inst && c->n_waiters > 0) {
        c->growing = true;
        larder__submit(c->m, &c->grow_job);
    }
}

/* 1: answered now (granted or failed: see w->err), 0: queued, < 0: refused. */
static int submit_waiter(struct comp *c, struct waiter *w)
{
    struct larder *m = c->m;
    if (atomic_load(&m->closing))
        return LARDER_ECLOSED;
    if (!c->defined)
        return LARDER_ENOTFOUND;
    if (c->draining)
        return LARDER_EDRAINING;
    if (!c->wq_head && try_grant(c, w, false))
        return 1;
    if (c->n_waiters >= c->queue_max)
        return LARDER_EBUSY;
    int64_t now = larder__now_ms();
    switch (c->state) {
    case LARDER_STATE_FAILED:
        if (now < c->cooldown_until_ms)
            return LARDER_ECOOLDOWN;
        /* fall through */
    case LARDER_STATE_UNLOADED:
        larder__start_load(c);
        w->cold = true;
        break;
    case LARDER_STATE_LOADING:
    case LARDER_STATE_UNLOADING:
        w->cold = true;
        break;
    case LARDER_STATE_READY:
        break;
    }
    w->start_ms = now;
    w->start_precise_ms = larder__now_ms_precise();
    w->deadline_ms = w->timeout_ms < 0 ? -1 : now + w->timeout_ms;
    wq_push(c, w);
    maybe_grow(c);
    if (w->async && w->deadline_ms >= 0)
        larder__reaper_kick(m, w->deadline_ms);
    return 0;
}

/* Blocking: waits on w->cv until answered or the deadline. c->mu held. */
static void wait_answer(struct comp *c, struct waiter *w)
{
    while (!w->done) {
        if (w->deadline_ms < 0) {
            pthread_cond_wait(&w->cv, &c->mu);
            continue;
        }
        if (larder__now_ms() >= w->deadline_ms) {
            wq_unlink(c, w);
            w->done = true;
            w->err = LARDER_ETIMEDOUT;
            break;
        }
        struct timespec ts;
        larder__abstime(w->deadline_ms - larder__now_ms(), &ts);
        pthread_cond_timedwait(&w->cv, &c->mu, &ts);
    }
}

/* 0: granted (w->lease), < 0: failed, 1: an async waiter was queued (and may already
 * be answered by another thread: the caller must not touch it any more). */
int larder__acquire_comp(struct larder *m, struct waiter *w)
{
    struct comp *c = w->c;
    bool async = w->async; /* once queued, an async waiter may be freed by another thread */
    pthread_mutex_lock(&c->mu);
    int r = submit_waiter(c, w);
    if (r == 0 && !async)
        wait_answer(c, w);
    pthread_mutex_unlock(&c->mu);
    if (r < 0)
        return r;
    if (r == 0 && async)
        return 1;
    return w->err;
}

/* The next component of w's fallback chain, or NULL; *ret_err = LARDER_ECYCLE when
 * the chain loops. */
static struct comp *next_fallback(struct larder *m, struct waiter *w, int *ret_err)
{
    struct comp *c = w->c;
    pthread_mutex_lock(&c->mu);
    struct comp *f = c->defined && c->fallback ? larder__lookup(m, c->fallback) : NULL;
    pthread_mutex_unlock(&c->mu);
    if (!f)
        return NULL;
    for (unsigned i = 0; i < w->hops; i++)
        if (w->visited[i] == f) {
            *ret_err = LARDER_ECYCLE;
            return NULL;
        }
    if (w->hops >= LARDER__MAX_HOPS) {
        *ret_err = LARDER_ECYCLE;
        return NULL;
    }
    return f;
}

static void move_to(struct waiter *w, struct comp *f)
{
    w->visited[w->hops++] = f;
    w->c = f;
    w->done = false;
    w->cold = false;
    w->err = 0;
    w->lease = NULL;
}

static void emit_fallback(struct larder *m, struct waiter *w)
{
    struct larder_event ev = {.struct_size = sizeof ev, .type = LARDER_EVENT_FALLBACK,
                              .name = w->requested->name, .detail = w->c->name};
    larder__emit(m, &ev);
}

/* Answers finished async waiters: retries a fallback when one applies, else calls back. */
void larder__deliver(struct larder *m, struct waiter *done)
{
    while (done) {
        struct waiter *w = done;
        done = w->next;
        int err = w->err;
        while (err < 0 && !w->no_fallback && fallbackable(err)) {
            struct comp *f = next_fallback(m, w, &err);
            if (!f)
                break;
            move_to(w, f);
            err = larder__acquire_comp(m, w);
            if (err == 1)
                goto queued;
        }
        if (err == 0 && w->requested != w->c)
            emit_fallback(m, w);
        w->cb(w->ud, err, err == 0 ? w->lease : NULL);
        free(w);
    queued:;
    }
}

static void waiter_init(struct waiter *w, struct comp *c, int64_t timeout_ms)
{
    memset(w, 0, sizeof *w);
    w->c = c;
    w->requested = c;
    w->visited[0] = c;
    w->hops = 1;
    w->timeout_ms = timeout_ms;
    w->deadline_ms = -1;
}

static int acquire_blocking(struct larder *m, struct comp *c, int64_t timeout_ms,
                            bool fallbacks, larder_lease **ret_lease)
{
    struct waiter w;
    waiter_init(&w, c, timeout_ms);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w.cv, &ca);
    pthread_condattr_destroy(&ca);
    int r = larder__acquire_comp(m, &w);
    while (fallbacks && r < 0 && fallbackable(r)) {
        struct comp *f = next_fallback(m, &w, &r);
        if (!f)
            break;
        move_to(&w, f);
        r = larder__acquire_comp(m, &w);
    }
    pthread_cond_destroy(&w.cv);
    if (r < 0)
        return r;
    if (w.requested != w.c)
        emit_fallback(m, &w);
    *ret_lease = w.lease;
    return 0;
}

/* Every acquire the lock-free path cannot serve: pooled classes (one component lock, no
 * waiter set-up when an instance is free), then the waiting path. Out of line, so that
 * the lock-free path stays a small leaf. Called inside the guarded leaf (or call) that
 * `call` says; ends it. */
static __attribute__((noinline)) int acquire_locked(larder *m, struct comp *c,
                                                   int64_t timeout_ms, bool fallbacks,
                                                   larder_lease **ret_lease,
                                                   bool call)
{
    pthread_mutex_lock(&c->mu);
    if (c->state == LARDER_STATE_READY && c->defined && !c->draining && !c->wq_head &&
        !atomic_load_explicit(&m->closing, memory_order_relaxed)) {
        struct waiter w;
        w.requested = c;
        w.cold = false;
        if (try_grant(c, &w, false)) {
            pthread_mutex_unlock(&c->mu);
            larder__unguard(m, call);
            if (w.err < 0)
                return w.err;
            *ret_lease = w.lease;
            return 0;
        }
    }
    pthread_mutex_unlock(&c->mu);
    /* It may wait, load, or run fallbacks: a call, which close waits for. */
    call = larder__upgrade(m, call);
    int r = acquire_blocking(m, c, timeout_ms, fallbacks, ret_lease);
    larder__unguard(m, call);
    return r;
}

/* Inline in both entry points: the lock-free warm grant of a shared class. */
static inline __attribute__((always_inline)) int
acquire_named(larder *m, const char *name, int64_t timeout_ms, bool fallbacks,
              larder_lease **ret_lease)
{
    if (!m || !name || !ret_lease)
        return -EINVAL;
    bool call = larder__guard(m);
    struct comp *c = larder__lookup(m, name);
    if (!c) {
        larder__unguard(m, call);
        return LARDER_ENOTFOUND;
    }
    if (atomic_load_explicit(&c->open, memory_order_relaxed)) {
        atomic_fetch_add(&c->lh, LARDER__LH_HIT | 1);
        if (atomic_load(&c->open)) {
            larder__unguard(m, call);
            *ret_lease = &c->warm;
            return 0;
        }
        /* Closed meanwhile: this grant never happened. Given back as a call (the
         * release guards a leaf of its own). */
        atomic_fetch_sub(&c->lh, LARDER__LH_HIT);
        call = larder__upgrade(m, call);
        larder_release(&c->warm);
    }
    return acquire_locked(m, c, timeout_ms, fallbacks, ret_lease, call);
}

int larder_acquire(larder *m, const char *name, int64_t timeout_ms, larder_lease **ret_lease)
{
    return acquire_named(m, name, timeout_ms, true, ret_lease);
}

int larder_acquire_flags(larder *m, const char *name, int64_t timeout_ms, unsigned flags,
                         larder_lease **ret_lease)
{
    if (flags & ~LARDER_ACQUIRE_NO_FALLBACK)
        return -EINVAL;
    return acquire_named(m, name, timeout_ms, !(flags & LARDER_ACQUIRE_NO_FALLBACK), ret_lease);
}

int larder_acquire_async(larder *m, const char *name, int64_t timeout_ms, larder_acquire_fn cb,
                         void *ud)
{
    return larder_acquire_async_flags(m, name, timeout_ms, 0, cb, ud);
}

static int acquire_async(larder *m, const char *name, int64_t timeout_ms, unsigned flags,
                         larder_acquire_fn cb, void *ud);

int larder_acquire_async_flags(larder *m, const char *name, int64_t timeout_ms, unsigned flags,
                               larder_acquire_fn cb, void *ud)
{
    if (!m || !name || !cb || (flags & ~LARDER_ACQUIRE_NO_FALLBACK))
        return -EINVAL;
    larder__enter(m);
    int r = acquire_async(m, name, timeout_ms, flags, cb, ud);
    larder__leave(m);
    return r;
}

static int acquire_async(larder *m, const char *name, int64_t timeout_ms, unsigned flags,
                         larder_acquire_fn cb, void *ud)
{
    int r;
    struct comp *c = larder__lookup(m, name);
    if (!c)
        return LARDER_ENOTFOUND;
    struct waiter *w = malloc(sizeof *w);
    if (!w)
        return -ENOMEM;
    waiter_init(w, c, timeout_ms);
    w->async = true;
    w->no_fallback = flags & LARDER_ACQUIRE_NO_FALLBACK;
    w->cb = cb;
    w->ud = ud;
    r = larder__acquire_comp(m, w);
    if (r == 1)
        return 0; /* queued: answered later, maybe already */
    if (r == LARDER_ENOTFOUND || r == -EINVAL) {
        free(w);
        return r;
    }
    w->err = r;
    w->next = NULL;
    larder__deliver(m, w);
    return 0;
}

/* ---- sets --------------------------------------------------------------------------- */

static int name_cmp(const void *a, const void *b)
{
    const struct comp *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Bytes the set needs at once: reservations of loaded members, estimates of others.
 * Reservations change under m->mu (admission charges them holding only that), so they are
 * read under it, then each component's own figures under its lock (the usual order). */
static int set_fits(struct larder *m, struct comp **cs, size_t n)
{
    uint64_t total = 0;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && cs[i] == cs[i - 1])
            continue;
        pthread_mutex_lock(&cs[i]->mu);
        uint64_t b = cs[i]->reserved ? cs[i]->reserved
                     : cs[i]->measured > cs[i]->estimate ? cs[i]->measured : cs[i]->estimate;
        if (!b)
            b = cs[i]->mem_override;
        pthread_mutex_unlock(&cs[i]->mu);
        total += b;
    }
    pthread_mutex_unlock(&m->mu);
    return total > larder_get_budget(m) ? LARDER_ETOOBIG : 0;
}

static int acquire_set(larder *m, const char *const *names, size_t n, int64_t timeout_ms,
                       larder_lease **ret_leases)
{
    struct comp **cs = malloc(n * sizeof *cs);
    larder_lease **ls = calloc(n, sizeof *ls);
    int r = cs && ls ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i < n; i++)
        if (!names[i] || !(cs[i] = larder__lookup(m, names[i])))
            r = names[i] ? LARDER_ENOTFOUND : -EINVAL;
    if (r == 0) {
        qsort(cs, n, sizeof *cs, name_cmp);
        r = set_fits(m, cs, n);
    }
    if (r == 0) {
        int64_t deadline = timeout_ms < 0 ? -1 : larder__now_ms() + timeout_ms;
        pthread_mutex_lock(&m->set_mu);
        for (size_t i = 0; r == 0 && i < n; i++) {
            int64_t left = deadline < 0 ? -1 : deadline - larder__now_ms();
            r = acquire_blocking(m, cs[i], deadline >= 0 && left < 0 ? 0 : left, false, &ls[i]);
        }
        pthread_mutex_unlock(&m->set_mu);
    }
    for (size_t i = 0; r < 0 && ls && i < n; i++)
        larder_release(ls[i]);
    /* Leases go back in the caller's order: sorted slot i holds component cs[i]. */
    for (size_t k = 0; r == 0 && k < n; k++) {
        for (size_t i = 0; i < n; i++) {
            if (ls[i] && strcmp(cs[i]->name, names[k]) == 0) {
                ret_leases[k] = ls[i];
                ls[i] = NULL;
                break;
            }
        }
    }
    free(cs);
    free(ls);
    return r;
}

int larder_acquire_set(larder *m, const char *const *names, size_t n, int64_t timeout_ms,
                       larder_lease **ret_leases)
{
    if (!m || !names || !n || !ret_leases || n > 4096)
        return -EINVAL;
    larder__enter(m);
    int r = acquire_set(m, names, n, timeout_ms, ret_leases);
    larder__leave(m);
    return r;
}

/* ---- lease accessors and release ---------------------------------------------------- */

void *larder_lease_model(const larder_lease *l)
{
    return l ? l->c->model : NULL;
}

void *larder_lease_instance(const larder_lease *l)
{
    return l && l->inst ? l->inst->ptr : NULL;
}

const char *larder_lease_served_by(const larder_lease *l)
{
    return l ? l->c->name : NULL;
}

const char *larder_lease_requested(const larder_lease *l)
{
    return l ? l->requested->name : NULL;
}

bool larder_lease_cold_start(const larder_lease *l)
{
    return l && l->cold;
}

double larder_lease_wait_ms(const larder_lease *l)
{
    return l ? l->wait_ms : 0;
}

double larder_lease_load_ms(const larder_lease *l)
{
    return l ? l->load_ms : 0;
}

/* Puts a lease struct back on its component's free list (lock-free push). */
static void lease_put(struct comp *c, larder_lease *l)
{
    larder_lease *head = atomic_load_explicit(&c->spare, memory_order_relaxed);
    do
        l->next_spare = head;
    while (!atomic_compare_exchange_weak_explicit(&c->spare, &head, l, memory_order_release,
                                                   memory_order_relaxed));
}

/* What release_locked found: the component went idle, the lease dropped its hold on
 * the manager. */
enum { REL_IDLE = 1, REL_DROP = 2 };

/* The release work that needs c->mu: a pooled instance goes back (to a waiter first),
 * drains are woken, leases counted at close drop their hold on the manager. Returns
 * REL_* bits; async waiters the instance went to are left on *done for the caller. */
static unsigned release_locked(struct larder *m, struct comp *c, struct inst *inst, bool dec,
                               struct waiter **done)
{
    unsigned out = 0;
    pthread_mutex_lock(&c->mu);
    unsigned left = dec ? (unsigned)(uint32_t)(atomic_fetch_sub(&c->lh, 1) - 1)
                        : larder__leases(c);
    if (inst) {
        c->n_busy--;
        inst->next = c->free_inst;
        c->free_inst = inst;
        c->ps.last_use = larder__now_s();
        if (c->wq_head)
            larder__dispatch(c, false, done);
        left = larder__leases(c);
    }
    if (c->orphans > left) {
        c->orphans--;
        out |= REL_DROP;
    }
    if (left == 0 && dec)
        larder__mark_idle(c);
    else if (left == 0)
        larder__cv_broadcast(c);
    out |= left == 0 ? REL_IDLE : 0;
    pthread_mutex_unlock(&c->mu);
    return out;
}

/* After the last lease of c came back, or a lease dropped its hold: admissions waiting
 * for room look again; at close, or over a lowered budget, c goes now. */
static __attribute__((noinline)) void release_settle(struct larder *m, struct comp *c,
                                                     unsigned rel)
{
    bool idle = rel & REL_IDLE;
    if (idle && atomic_load(&m->admit_waiters) > 0) {
        pthread_mutex_lock(&m->mu);
        pthread_cond_broadcast(&m->budget_cv);
        pthread_mutex_unlock(&m->mu);
    }
    if (idle && atomic_load(&m->closing))
        larder__unload_comp(m, c, LARDER_REASON_CLOSE);
    else if (idle && atomic_load(&m->over_budget))
        larder__enforce_budget(m);
    if (rel & REL_DROP)
        larder__ref_drop(m);
}

/* What may follow a release once its callbacks and waits are allowed: async answers,
 * then the settling. A call (see calls.c), entered while the leaf was still guarded. */
static __attribute__((noinline)) void release_after(struct larder *m, struct comp *c,
                                                    unsigned rel, struct waiter *done,
                                                    bool call)
{
    call = larder__upgrade(m, call);
    larder__deliver(m, done);
    if (rel)
        release_settle(m, c, rel);
    larder__unguard(m, call);
}

/* The lease is given back inside a guarded leaf: once the count drops, nothing but the
 * guard keeps the manager alive (close may count this lease out), until the work that
 * follows has entered as a call. */
larder_lease *larder_release(larder_lease *l)
{
    if (!l)
        return NULL;
    struct comp *c = l->c;
    struct larder *m = l->m;
    bool call = larder__guard(m);
    struct waiter *done = NULL;
    unsigned rel;
    if (l->inst) {
        rel = release_locked(m, c, l->inst, true, &done);
    } else {
        /* Shared model: no instance to hand back, so no lock unless someone waits. */
        rel = (uint32_t)atomic_fetch_sub(&c->lh, 1) == 1 ? REL_IDLE : 0;
        if (rel)
            went_idle(c, larder__now_ms_coarse());
        if (atomic_load(&m->closing) || (rel && atomic_load(&c->cv_waiters)))
            rel = release_locked(m, c, NULL, false, &done);
    }
    if (l != &c->warm)
        lease_put(c, l);
    bool settle = (rel & REL_DROP) ||
                  (rel && (atomic_load(&m->admit_waiters) > 0 || atomic_load(&m->closing) ||
                           atomic_load(&m->over_budget)));
    if (settle || done)
        release_after(m, c, settle ? rel : 0, done, call);
    else
        larder__unguard(m, call);
    return NULL;
}
