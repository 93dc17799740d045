/* liblarder internals shared by manager.c, lease.c and load.c.
 *
 * Locks, always taken in this order:
 *   m->mu          budget accounting, registry inserts, eviction choice, state changes
 *                  that move reservations
 *   c->mu          one component: state, instances, waiters, stats
 *   m->jobs_mu, m->reaper_mu   leaves: job queue, reaper wake-up time
 * The warm acquire path takes only c->mu (the registry lookup is lock-free).
 */
#ifndef LARDER_INTERNAL_H
#define LARDER_INTERNAL_H

#include "larder/larder.h"
#include "policy.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define LARDER__ERRLEN 256
#define LARDER__MAX_HOPS 8

struct comp;

struct inst {
    struct inst *next;
    void *ptr;
};

struct job {
    struct job *next;
    struct comp *c;
    int kind; /* JOB_LOAD or JOB_GROW */
    bool queued;
};
enum { JOB_LOAD = 1, JOB_GROW = 2 };

/* One caller waiting for a lease on one component. Blocking waiters live on the
 * caller's stack and sleep on their own condition variable (with c->mu); async
 * waiters are heap-allocated and answered through their callback. */
struct waiter {
    struct waiter *next;
    struct waiter *prev;
    struct comp *c;
    struct comp *requested;   /* the name the caller asked for (head of the chain) */
    struct comp *visited[LARDER__MAX_HOPS];
    unsigned hops;
    bool async;
    bool no_fallback;         /* the caller wants this component itself */
    bool done;
    bool cold;                /* waited for a load or a new instance */
    pthread_cond_t cv;        /* blocking waiters only */
    larder_acquire_fn cb;     /* async only */
    void *ud;
    int64_t timeout_ms;       /* as given, for fallbacks */
    int64_t start_ms;
    double start_precise_ms;  /* for the lease's wait_ms */
    int64_t deadline_ms;      /* -1 = none */
    int err;
    larder_lease *lease;
};

struct larder_lease {
    struct larder *m;
    struct larder_lease *next_spare; /* on the component's free list */
    struct comp *c;           /* who served */
    struct comp *requested;
    struct inst *inst;        /* NULL for shared classes */
    bool cold;
    double wait_ms;
    double load_ms;
};

struct comp {
    struct larder *m;
    char *name;               /* immutable for the struct's life (until the manager dies) */
    uint64_t hash;
    pthread_mutex_t mu;
    pthread_cond_t cv;        /* state/lease changes, for drains */

    /* definition */
    bool defined;
    bool draining;
    const struct larder_class *cls;
    void *ud;
    void (*ud_free)(void *ud);
    char *path;
    char *fallback;
    int64_t ttl_ms;
    unsigned max_inst;        /* pooled classes; 0 for shared */
    bool pooled;
    bool pin;
    bool preload;
    int priority;
    uint64_t mem_override;
    unsigned queue_max;

    /* life */
    enum larder_state state;
    void *model;
    struct inst *free_inst;
    unsigned n_inst;
    unsigned n_busy;
    /* Live leases (low 32 bits) and warm grants made without c->mu (high 32 bits,
     * wrapping), folded into the statistics by larder__sync_hits(). */
    _Atomic uint64_t lh;
    atomic_bool open;         /* warm grants of a shared class may skip c->mu (lease.c) */
    uint32_t hits_seen;       /* high half of lh already folded */
    unsigned orphans;         /* leases counted at close that still hold the manager */
    atomic_uint cv_waiters;   /* threads waiting on c->cv: releases broadcast only then */
    _Atomic(larder_lease *) spare; /* free lease structs: pushed lock-free, popped under c->mu */
    struct larder_lease warm; /* every warm, direct lease of a shared class: nothing to free */
    bool growing;             /* an instance_new job is queued or running */
    unsigned freeing;         /* surplus instances being freed outside the lock */
    bool preload_pending;
    struct waiter *wq_head;
    struct waiter *wq_tail;
    unsigned n_waiters;
    unsigned n_async;
    _Atomic int64_t idle_since_ms; /* when the last lease came back (coarse clock) */
    int64_t cooldown_until_ms;
    unsigned fail_streak;
    int last_err;
    char last_msg[LARDER__ERRLEN];
    struct job load_job;
    struct job grow_job;

    /* memory */
    uint64_t estimate;
    enum larder_estimate_source est_src;
    uint64_t measured;
    enum larder_measure_method method;
    uint64_t first_bytes;     /* measured by a first load of its class in this process */
    uint64_t inst_bytes;      /* learned cost of one extra instance */
    uint64_t reserved;        /* charged to m->reserved (under m->mu) */
    int gpu;                  /* -1 = none */
    uint64_t gpu_bytes;
    uint64_t gpu_reserved;    /* charged to m->gpu_reserved[gpu] (under m->mu) */
    int64_t last_returned;
    bool leak_suspect;

    /* stats */
    uint64_t loads, failures, hits, cold_starts, evictions, fallbacks_served;
    double load_ms_last, load_ms_sum;
    struct larder__pstat ps;
};

struct table {
    size_t cap; /* power of two */
    struct table *retired_next;
    _Atomic(struct comp *) slots[];
};

struct loader {
    struct larder *m;
    pthread_t tid;
    pthread_cond_t cv;
    struct job *head, *tail;
    bool busy;                /* running a job (a class call, or its admission) */
    bool exited;              /* the thread has left its loop: join it */
    bool orphan;              /* close gave up on it: it drops a manager reference */
};

struct larder {
    struct larder_opts opts;
    const struct larder__policy *policy;
    void *policy_state;
    atomic_int refs;          /* owner + leases still out at close */
    atomic_bool closing;
    atomic_bool events_off;

    pthread_mutex_t mu;
    pthread_cond_t budget_cv;
    uint64_t budget;
    uint64_t reserved;
    uint64_t gpu_budget[LARDER_MAX_GPUS];   /* 0 = not enforced */
    uint64_t gpu_reserved[LARDER_MAX_GPUS];
    atomic_uint admit_waiters;
    unsigned loads_admitted;  /* loads and grows admitted and not finished */
    struct comp *solo;        /* a load with no estimate, admitted alone: others wait */
    unsigned solo_waiting;    /* loads with no estimate waiting for loads in flight */
    atomic_bool over_budget;  /* reserved > budget after the budget was lowered */
    size_t n_comps;
    _Atomic(struct table *) table;
    struct table *retired;
    pthread_mutex_t set_mu;   /* serializes larder_acquire_set */

    pthread_mutex_t jobs_mu;  /* guards every loader's queue and state */
    pthread_cond_t loaders_cv; /* a loader thread exited (with jobs_mu) */
    bool jobs_stop;
    struct loader *loaders;   /* max_loaders slots, n_loaders running */
    unsigned n_base;          /* the first ones: a component prefers loaders[hash % n_base] */
    unsigned n_loaders;       /* base plus extras started when every loader was busy */
    unsigned max_loaders;
    struct job *spill_head, *spill_tail; /* jobs for whichever loader frees first */
    unsigned n_orphans;       /* loaders close left inside a class call */
    atomic_uint loads_running;
    atomic_uint unloads_running; /* counted under m->mu before the unload starts */
    atomic_uint preload_pending;

    /* memory truth (memory.c) */
    struct larder__profiles *profiles;
    struct larder__history *history;
    struct larder__pressure_watch *watch;
    int watch_error;
    struct larder__gpus *gpus;
    atomic_bool pressure_hold;     /* above high with nothing idle: loads wait */
    atomic_uint_fast64_t pressure_events;
    atomic_uint_fast64_t pressure_evictions;
    pthread_mutex_t pressure_mu;   /* one pressure response at a time (leaf for callers) */
    int64_t next_sample_ms;        /* reaper thread only */

    pthread_mutex_t reaper_mu;
    pthread_cond_t reaper_cv;
    _Atomic int64_t reaper_wake_ms;
    bool reaper_kick;
    bool reaper_stop;
    pthread_t reaper;
};

/* manager.c */
int64_t larder__now_ms(void);
/* Inline: the warm release reads it (CLOCK_MONOTONIC_COARSE, ms). */
static inline int64_t larder__now_ms_coarse(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
double larder__now_s(void);
double larder__now_ms_precise(void);
/* Absolute CLOCK_MONOTONIC time left_ms from now (clamped to [0, 1 day]), for the
 * condition variables, which all use that clock. */
void larder__abstime(int64_t left_ms, struct timespec *ts);
static inline uint64_t larder__hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}
/* The registry lookup, lock-free (inline: every acquire starts with it). */
static inline struct comp *larder__lookup(struct larder *m, const char *name)
{
    struct table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    uint64_t h = larder__hash_name(name);
    size_t mask = t->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct comp *c = atomic_load_explicit(&t->slots[i], memory_order_acquire);
        if (!c)
            return NULL;
        if (c->hash == h && strcmp(c->name, name) == 0)
            return c;
    }
}
void larder__emit(struct larder *m, const struct larder_event *ev);
void larder__emit_simple(struct larder *m, enum larder_event_type t, const struct comp *c,
                         enum larder_evict_reason reason, uint64_t bytes);
void larder__ref_drop(struct larder *m);
/* Calls fn on every component ever defined; the registry may grow meanwhile. */
void larder__each_comp(struct larder *m, void (*fn)(struct comp *c, void *arg), void *arg);

/* memory.c */
int larder__memory_start(struct larder *m);
void larder__memory_stop(struct larder *m);
void larder__memory_free(struct larder *m);
void larder__memory_note(struct larder *m, const struct larder_event *ev);
void larder__memory_learned(struct larder *m, struct comp *c);
/* first: the load was the first of c's class in this process (see load.c). */
void larder__memory_record(struct larder *m, struct comp *c, double load_ms, bool first);
int64_t larder__memory_tick(struct larder *m, int64_t now_ms); /* next tick time */
struct larder__pressure;
void larder__memory_pressure(struct larder *m, const struct larder__pressure *p);
void larder__memory_make_room(struct larder *m, struct comp *c, uint64_t need);

/* lease.c */
int larder__acquire_comp(struct larder *m, struct waiter *w);
void larder__dispatch(struct comp *c, bool cold, struct waiter **ret_done);
void larder__fail_waiters(struct comp *c, int err, struct waiter **ret_done);
void larder__deliver(struct larder *m, struct waiter *done);
void larder__expire_async(struct comp *c, int64_t now, struct waiter **ret_done,
                          int64_t *next_deadline);
bool larder__comp_idle(const struct comp *c);
void larder__mark_idle(struct comp *c);
#define LARDER__LH_HIT (UINT64_C(1) << 32)
static inline unsigned larder__leases(const struct comp *c)
{
    return (unsigned)(uint32_t)atomic_load(&((struct comp *)c)->lh);
}
/* c->mu held: opens the lock-free warm path when c can serve shared leases, else closes
 * it. Call after any change of state, draining, definition or closing. */
void larder__gate(struct comp *c);
/* c->mu held: closes the warm path, then tells whether c is idle. When it is not, the
 * path is reopened as it was. A true answer keeps it closed: no lease can appear. */
bool larder__seal_idle(struct comp *c);
/* c->mu held: folds the warm grants made without the lock into hits and the policy. */
void larder__sync_hits(struct comp *c);
/* idle, loaded, unpinned with a ttl: when its ttl runs out; else 0. c->mu held. */
int64_t larder__expiry(const struct comp *c);
void larder__cv_broadcast(struct comp *c);

/* load.c */
int larder__loaders_start(struct larder *m);
/* Stops the loaders, waiting at most timeout_ms (-1: for ever) for jobs in flight; the
 * threads still inside one then are left to finish it, each holding a reference to m.
 * Returns how many were left. */
unsigned larder__loaders_stop(struct larder *m, int64_t timeout_ms);
void larder__submit(struct larder *m, struct job *j);
int larder__reaper_start(struct larder *m);
void larder__reaper_stop(struct larder *m);
void larder__reaper_kick(struct larder *m, int64_t at_ms);
void larder__start_load(struct comp *c); /* c->mu held; state -> LOADING */
/* m->mu held (dropped and retaken while unloading). 0 nothing evictable, 1 a whole
 * component, 2 one surplus instance, 3 nothing yet: look again. */
int larder__evict_one(struct larder *m, struct comp *except, enum larder_evict_reason why);
/* The same, among the components on GPU `gpu` only (whole components). */
int larder__evict_one_gpu(struct larder *m, struct comp *except, enum larder_evict_reason why,
                          int gpu);
int larder__unload_comp(struct larder *m, struct comp *c, enum larder_evict_reason why);
/* Unloads model through c's class: unload_report when the class has it (*ret_child gets
 * its figure and true is returned), else unload (false). */
bool larder__class_unload(struct comp *c, void *model, int64_t *ret_child);
/* c->mu held: c failed; starts its cooldown (err, msg as the last error). */
void larder__start_cooldown(struct comp *c, int err, const char *msg);
void larder__enforce_budget(struct larder *m);
uint64_t larder__estimate(struct comp *c, enum larder_estimate_source *ret_src);
/* c->mu held: the size learned from trusted measurements (never below the first load's). */
uint64_t larder__learned(const struct comp *c);
/* A loaded component reserves at least this much, or all of a smaller budget. */
#define LARDER__MIN_RESERVE UINT64_C(4096)

#endif
