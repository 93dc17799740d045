/* liblarder: lazy, single-flight, budgeted loading of heavy components.
 *
 * A manager (`larder`) holds named component definitions. Nothing is loaded until a
 * caller acquires a component; concurrent first acquires share exactly one load. Loaded
 * components are charged against a memory budget; idle ones are evicted by a policy
 * when room is needed, when their keep-alive (ttl) runs out, or on request.
 *
 * Threads: unless a function says otherwise, every function may be called from any
 * thread at any time while the manager is open. Callbacks (class functions, the
 * event callback, async acquire callbacks) are never called with a manager lock held,
 * so they may call back into the library, except where noted.
 *
 * Errors: functions return 0 (or a positive count) on success, a negative value on
 * failure: either a negated errno (-EINVAL, -ENOMEM) or a LARDER_E* code below.
 * larder_strerror() names both. Out-parameters are named ret_* and are left untouched
 * on failure. The library never aborts and never prints on bad input.
 */
#ifndef LARDER_LARDER_H
#define LARDER_LARDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LARDER_API __attribute__((visibility("default")))
#else
#define LARDER_API
#endif

#define LARDER_VERSION_MAJOR 0
#define LARDER_VERSION_MINOR 1
#define LARDER_VERSION_PATCH 0

/* Error codes: a reserved range well below any errno value. */
enum {
    LARDER_ENOTFOUND = -20001, /* no component of that name is defined */
    LARDER_EEXIST = -20002,    /* a component of that name is already defined */
    LARDER_ETIMEDOUT = -20003, /* the lease was not ready before the deadline */
    LARDER_EBUSY = -20004,     /* the component's wait queue is full */
    LARDER_ETOOBIG = -20005,   /* the component is larger than the whole budget */
    LARDER_ENOSPC = -20006,    /* no room in the budget and nothing idle to evict */
    LARDER_ELOAD = -20007,     /* the class's load (or instance_new) failed */
    LARDER_ECOOLDOWN = -20008, /* the last load failed; retry after the cooldown */
    LARDER_EDRAINING = -20009, /* the component is being unloaded or undefined */
    LARDER_ECLOSED = -20010,   /* the manager is closing */
    LARDER_ECANCELED = -20011, /* the request was canceled */
    LARDER_EINUSE = -20012,    /* the component has leases (for undefine without drain) */
    LARDER_EPOLICY = -20013,   /* unknown eviction policy name */
    LARDER_ECYCLE = -20014,    /* a fallback chain loops back on itself */
};

/* instance_new may return this (without setting *ret_instance) when the model turns
 * out to need no instances: the component then shares its model between all leases,
 * as if its class had no instance_new. For classes that learn it only at load time
 * (a plugin host, say). */
#define LARDER_INSTANCE_SHARED 1

/* Special ttl values (milliseconds). */
#define LARDER_TTL_DEFAULT INT64_MIN /* use the manager's default (5 minutes) */
#define LARDER_TTL_NEVER (-1)        /* stay loaded until evicted or unloaded */
#define LARDER_TTL_IDLE 0            /* unload as soon as the last lease returns */

/* Timeouts (milliseconds) accept these too. */
#define LARDER_WAIT_FOREVER (-1)
#define LARDER_NO_WAIT 0

/* GPUs whose device memory larder budgets: indexes 0 .. LARDER_MAX_GPUS-1. */
#define LARDER_MAX_GPUS 16

typedef struct larder larder;
typedef struct larder_lease larder_lease;

/* ---- component classes ------------------------------------------------------------
 *
 * A class says how to load one kind of component. `ud` is the userdata given to
 * larder_define(); the class finds its parameters (model path, options) there.
 *
 * load:          required. Loads the shared model; *ret_model may be any pointer
 *                (NULL too). On failure returns a negative value and may write a
 *                NUL-terminated message into err (errlen bytes, always >= 128).
 * unload:        required. Frees what load returned.
 * instance_new:  optional. Creates one per-caller instance on top of the model (one
 *                decoder per thread). Classes without it share the model: every lease
 *                gets the model itself and leases are unlimited.
 * instance_free: required when instance_new is set.
 * estimate:      optional. Bytes the model (plus one instance) will take, before load.
 * measure:       optional. Bytes the loaded model really takes, backend-reported.
 * unload_report: optional (appended in 0.1). Replaces unload when set: unloads the same
 *                way and tells what the unload gave back outside this process (a child
 *                process the model ran in, measured before it exited), in bytes; the
 *                unload's figure is that plus this process's own RSS delta. Returns 0
 *                with *ret_bytes set, or negative when it could not measure.
 *
 * Class functions run on the manager's loader threads (load, instance_new, measure)
 * or on whichever thread evicts (unload, instance_free). Loads of different
 * components may run in parallel; one component never has two loads at once.
 */
struct larder_class {
    size_t struct_size; /* sizeof(struct larder_class) */
    const char *name;   /* for messages and events; may be NULL */
    int (*load)(void *ud, void **ret_model, char *err, size_t errlen);
    void (*unload)(void *ud, void *model);
    int (*instance_new)(void *ud, void *model, void **ret_instance, char *err, size_t errlen);
    void (*instance_free)(void *ud, void *model, void *instance);
    int (*estimate)(void *ud, uint64_t *ret_bytes);
    int (*measure)(void *ud, void *model, uint64_t *ret_bytes);
    /* appended in 0.1: */
    int (*unload_report)(void *ud, void *model, int64_t *ret_bytes);
};

/* ---- manager ----------------------------------------------------------------------- */

enum larder_event_type {
    LARDER_EVENT_LOAD_START = 1,
    LARDER_EVENT_LOAD_DONE,
    LARDER_EVENT_LOAD_FAIL, /* a load failed, or larder_fail() took a loaded one down */
    LARDER_EVENT_EVICT,   /* a whole component is being evicted; reason says why */
    LARDER_EVENT_UNLOAD,  /* a component finished unloading; bytes_returned measured */
    LARDER_EVENT_INSTANCE_NEW,
    LARDER_EVENT_INSTANCE_FREE,
    LARDER_EVENT_PRESSURE, /* memory pressure seen; see larder_event.detail */
    LARDER_EVENT_FALLBACK, /* a lease was served by a fallback of `name` */
};

enum larder_evict_reason {
    LARDER_REASON_NONE = 0,
    LARDER_REASON_BUDGET,   /* room was needed for another load */
    LARDER_REASON_TTL,      /* keep-alive ran out */
    LARDER_REASON_REQUEST,  /* larder_unload() or larder_undefine() */
    LARDER_REASON_TRIM,     /* larder_trim() */
    LARDER_REASON_PRESSURE, /* host memory pressure */
    LARDER_REASON_CLOSE,    /* larder_close() */
    LARDER_REASON_OVERSIZE, /* measured size did not fit the budget after load */
};

struct larder_event {
    size_t struct_size;
    enum larder_event_type type;
    const char *name;        /* component; NULL for manager-wide events */
    enum larder_evict_reason reason;
    int error;               /* LOAD_FAIL: the error code */
    const char *message;     /* LOAD_FAIL: the class's message; PRESSURE: a summary */
    uint64_t bytes;          /* LOAD_DONE: reservation; EVICT/UNLOAD: reservation freed */
    int64_t bytes_returned;  /* UNLOAD: RSS actually returned to the OS (may be < 0) */
    double load_ms;          /* LOAD_DONE / LOAD_FAIL: duration */
    const char *detail;      /* FALLBACK: the component that served */
};

typedef void (*larder_event_fn)(void *ud, const struct larder_event *ev);

struct larder_opts {
    size_t struct_size;       /* sizeof(struct larder_opts) */
    uint64_t budget_bytes;    /* 0 = budget_fraction of the cgroup limit, else of RAM */
    double budget_fraction;   /* used when budget_bytes == 0; default 0.75 */
    const char *policy;       /* "cost" (default) or "lru" */
    unsigned loader_threads;  /* parallel loads; default 4 */
    int64_t default_ttl_ms;   /* default 300000 */
    unsigned default_queue_max; /* waiters per component before LARDER_EBUSY; default 1024 */
    int64_t admission_timeout_ms; /* how long a load waits for room; default 30000 */
    double file_size_factor;  /* estimate = file size x factor; default 1.2 */
    int64_t cooldown_min_ms;  /* first cooldown after a failed load; default 1000 */
    int64_t cooldown_max_ms;  /* cap of the doubling cooldown; default 300000 */
    bool trim_after_unload;   /* malloc_trim(0) after each unload; default true */
    larder_event_fn on_event; /* may be NULL; called from any thread, no lock held */
    void *event_ud;
    /* Memory truth (appended in 0.1): */
    const char *state_dir;    /* learned sizes and load times persist here (SQLite);
                                 NULL = kept in memory only */
    double high_watermark;    /* fraction of the effective limit; default 0.90 */
    double low_watermark;     /* pressure eviction stops below it; default 0.80 */
    bool watch_pressure;      /* PSI trigger + cgroup memory.events watcher; default true */
    const char *psi_trigger;  /* default "some 150000 1000000"; "" = no PSI trigger */
    unsigned history_seconds; /* memory samples kept, one a second; default 3600, 0 = none */
    /* Appended in 0.1 (after history_seconds): */
    int64_t close_timeout_ms; /* how long larder_close waits for class calls in flight
                                 (loads, instance_new) to return; default 10000,
                                 LARDER_WAIT_FOREVER = as long as they take */
    /* Appended in 0.1 (after close_timeout_ms): the memory of the processes components
     * run in outside this one (worker processes), sampled into the history each second
     * (children_bytes); NULL = none. Called on the manager's sampler thread. */
    uint64_t (*children_bytes)(void *ud);
    void *children_ud;
};

/* Fills opts with defaults and sets struct_size. */
LARDER_API void larder_opts_init(struct larder_opts *opts);

/* Creates a manager. opts may be NULL for defaults. Starts the loader and reaper
 * threads. Errors: -EINVAL (bad struct_size), LARDER_EPOLICY, -ENOMEM. */
LARDER_API int larder_open(const struct larder_opts *opts, larder **ret_manager);

/* Closes a manager: fails every waiting acquirer with LARDER_ECLOSED, waits for loads
 * in flight to finish (at most close_timeout_ms), unloads every idle component. Leases
 * still outstanding stay valid; releasing them after close is allowed, and the last
 * release frees what is left. Accepts NULL. Returns NULL. Must not be called from a
 * callback, nor twice.
 *
 * Calls racing close. Close may run while other threads are inside calls on the same
 * manager (acquires, releases, async acquires and their callbacks, sets, snapshots, any
 * function here): it frees nothing they use, and returns only once every call that was
 * in progress when it started (or entered while it ran) has returned. Calls that were
 * waiting return LARDER_ECLOSED (an acquire waiting for a load, a set, an undefine or
 * unload waiting for leases); a release racing close is a plain release. Once close has
 * started: acquires (every variant) and the functions that start work (define,
 * undefine, unload, preload, preload_all, set_ttl, set_budget, set_gpu_budget, trim,
 * fail, update_measured) return LARDER_ECLOSED, and larder_acquire_async() calls back
 * with it; release, the lease accessors and the reads (snapshot, memory,
 * gpu_process_bytes, get_budget, preload_pending) go on working. After close has
 * returned, `m` may be used only by a thread that holds one of its leases: a lease
 * keeps the manager's memory valid until it is released, so that thread may still call
 * anything (and gets the answers above). Without a lease, a thread must not start a
 * call that may still be starting as close returns (that would use freed memory): stop
 * such threads first, or keep a lease while calling.
 *
 * A class call that never returns (a load or instance_new still running when
 * close_timeout_ms runs out) does not hold close: its loader thread is left running,
 * neither joined nor canceled, and keeps a reference to the manager. If the call ever
 * returns, the thread settles it (a model it loaded is unloaded through the class), exits,
 * and the last reference frees the manager's memory then; if it never returns, that
 * memory and the thread live until the process exits (a deliberate leak: nothing else
 * can be freed safely under a thread still inside the class). The class, its userdata
 * and whatever they use must therefore stay valid until then; a host that cannot promise
 * it (one that would unload a plugin) asks larder_close_report() whether any call was
 * left behind. */
LARDER_API larder *larder_close(larder *m);

/* larder_close(), telling what it left behind: 0 when every class call had returned,
 * else how many loader threads were still inside one when close_timeout_ms ran out
 * (see larder_close). Accepts NULL (0). Appended in 0.1. */
LARDER_API int larder_close_report(larder *m);

/* Changes the budget; loaded components over a lowered budget are evicted when idle. */
LARDER_API int larder_set_budget(larder *m, uint64_t bytes);
/* Sets the device-memory budget of GPU `gpu` (0 = not enforced, the default). Loads of
 * components declared on that GPU are admitted against it as against the host budget,
 * evicting idle components of the same GPU first. Errors: -EINVAL. */
LARDER_API int larder_set_gpu_budget(larder *m, unsigned gpu, uint64_t bytes);
LARDER_API uint64_t larder_get_budget(const larder *m);

/* ---- component definitions --------------------------------------------------------- */

struct larder_component_opts {
    size_t struct_size;           /* sizeof(struct larder_component_opts) */
    const struct larder_class *cls; /* required; must outlive the definition */
    void *ud;                     /* passed to every class function */
    void (*ud_free)(void *ud);    /* called when the definition is dropped; may be NULL */
    const char *path;             /* model file: used for size-based estimates; may be NULL */
    int64_t ttl_ms;               /* LARDER_TTL_DEFAULT, LARDER_TTL_NEVER, 0, or ms */
    unsigned max_instances;       /* pool size for classes with instance_new; default 1 */
    bool pin;                     /* never evicted (still unloadable on request) */
    int priority;                 /* higher survives eviction longer; default 0 */
    bool preload;                 /* loaded by larder_preload_all() */
    const char *fallback;         /* name of a lighter component; may be NULL */
    uint64_t memory_bytes;        /* estimate override; 0 = none */
    unsigned queue_max;           /* 0 = manager default */
    /* appended in 0.1: */
    int gpu;                      /* GPU whose memory it takes; -1 = none (default) */
    uint64_t gpu_bytes;           /* device memory it takes once loaded */
};

/* Fills opts with defaults and sets struct_size. */
LARDER_API void larder_component_opts_init(struct larder_component_opts *opts);

/* Defines a component. The name and strings are copied. Errors: -EINVAL (NULL or bad
 * fields, empty name), LARDER_EEXIST, LARDER_ECLOSED, -ENOMEM. On failure ud_free is
 * not called: the caller still owns ud. */
LARDER_API int larder_define(larder *m, const char *name, const struct larder_component_opts *opts);

/* Drops a definition. New acquires fail with LARDER_EDRAINING (then LARDER_ENOTFOUND
 * once it is gone). Waits up to timeout_ms for its leases to come back, then unloads.
 * On timeout returns LARDER_ETIMEDOUT and the component stays defined. */
LARDER_API int larder_undefine(larder *m, const char *name, int64_t timeout_ms);

/* ---- leases ------------------------------------------------------------------------ */

/* Acquires a lease on `name`, loading it first if needed. Waits at most timeout_ms
 * (LARDER_WAIT_FOREVER for no limit). When the component cannot serve (load failed,
 * cooldown, larger than the budget, timeout), its fallback chain is tried, and the
 * lease says who served. Errors: LARDER_ENOTFOUND, LARDER_ETIMEDOUT, LARDER_EBUSY,
 * LARDER_ETOOBIG, LARDER_ENOSPC, LARDER_ELOAD, LARDER_ECOOLDOWN, LARDER_EDRAINING,
 * LARDER_ECLOSED, -ENOMEM. */
LARDER_API int larder_acquire(larder *m, const char *name, int64_t timeout_ms,
                              larder_lease **ret_lease);

/* Called once with either a lease (err == 0) or an error (lease == NULL). It may run
 * on the calling thread before larder_acquire_async() returns, or on a manager thread. */
typedef void (*larder_acquire_fn)(void *ud, int err, larder_lease *lease);

/* Asynchronous acquire: never blocks on a load. Returns 0 when the callback will be
 * (or has been) called, or a negative error when it will not be called at all. */
LARDER_API int larder_acquire_async(larder *m, const char *name, int64_t timeout_ms,
                                    larder_acquire_fn cb, void *ud);

/* Flags for larder_acquire_flags() and larder_acquire_async_flags(). */
#define LARDER_ACQUIRE_NO_FALLBACK 1u /* only `name` itself may serve the lease */

/* larder_acquire() and larder_acquire_async() with flags; flags 0 behaves exactly as
 * they do. With LARDER_ACQUIRE_NO_FALLBACK the fallback chain is not tried: when the
 * component cannot serve, its own error is returned (and no FALLBACK event is
 * emitted), as an explicit load of that component wants. Errors as theirs, plus
 * -EINVAL for unknown flags. */
LARDER_API int larder_acquire_flags(larder *m, const char *name, int64_t timeout_ms,
                                    unsigned flags, larder_lease **ret_lease);
LARDER_API int larder_acquire_async_flags(larder *m, const char *name, int64_t timeout_ms,
                                          unsigned flags, larder_acquire_fn cb, void *ud);

/* All-or-nothing acquire of several components (a pipeline stage): either every name
 * gets a lease, stored in ret_leases[i] for names[i], or none does. Concurrent set
 * acquires whose sets overlap and do not fit the budget together finish one after
 * the other. Errors as larder_acquire, plus LARDER_ETOOBIG when the set alone is
 * larger than the budget. No fallbacks are used for sets. */
LARDER_API int larder_acquire_set(larder *m, const char *const *names, size_t n,
                                  int64_t timeout_ms, larder_lease **ret_leases);

/* Returns a lease. Accepts NULL. Returns NULL. */
LARDER_API larder_lease *larder_release(larder_lease *lease);

/* The model (shared weights) and the instance of a lease (NULL for shared classes). */
LARDER_API void *larder_lease_model(const larder_lease *lease);
LARDER_API void *larder_lease_instance(const larder_lease *lease);
/* The component that served: the requested one or a fallback. Valid until release. */
LARDER_API const char *larder_lease_served_by(const larder_lease *lease);
/* The name originally requested. */
LARDER_API const char *larder_lease_requested(const larder_lease *lease);
/* True when this acquire waited for a load (of the component or a new instance). */
LARDER_API bool larder_lease_cold_start(const larder_lease *lease);
/* Milliseconds spent waiting for the lease, and of that, the load's duration. */
LARDER_API double larder_lease_wait_ms(const larder_lease *lease);
LARDER_API double larder_lease_load_ms(const larder_lease *lease);

/* ---- explicit control -------------------------------------------------------------- */

/* Starts loading `name` on a loader thread and returns at once. 0 if started or
 * already loaded/loading. */
LARDER_API int larder_preload(larder *m, const char *name);
/* Preloads every component defined with preload = true; returns how many started. */
LARDER_API int larder_preload_all(larder *m);
/* Number of preloads started by larder_preload/_all that have not finished. */
LARDER_API unsigned larder_preload_pending(larder *m);

/* Sets the keep-alive of `name` from now on (the ttl of larder_component_opts: ms, 0 to
 * unload as soon as the last lease returns, LARDER_TTL_NEVER, or LARDER_TTL_DEFAULT). An
 * idle loaded component whose new ttl has already run out is unloaded by the reaper at
 * once. Errors: -EINVAL, LARDER_ENOTFOUND. */
LARDER_API int larder_set_ttl(larder *m, const char *name, int64_t ttl_ms);
/* A new measurement of a loaded component's size, from its owner (a component whose
 * memory lives outside the process, say, sampled while it runs): its measured size
 * becomes `bytes` (method CLASS; what the next load reserves). The reservation never
 * shrinks while loaded; when bytes exceed it, it grows: idle components are evicted by
 * policy to make room, without waiting. When even that leaves no room, the reservation
 * grows all the same (the memory is in use) and the manager is over its budget: no load
 * is admitted until it is back under, idle components go by policy (this one too, once
 * it is idle) and leased ones when their last lease returns, as after a lowered budget;
 * a LARDER_EVENT_PRESSURE event says so, and LARDER_ENOSPC is returned. Errors: -EINVAL
 * (NULL, bytes 0), LARDER_ENOTFOUND, -EAGAIN (not loaded now: loading, unloading, or
 * not at all). Any thread; it may run an eviction's unload on the caller's thread. */
LARDER_API int larder_update_measured(larder *m, const char *name, uint64_t bytes);

/* Drains and unloads: refuses new leases (LARDER_EDRAINING), waits up to timeout_ms for
 * the leases out, then unloads. On timeout the component keeps serving and
 * LARDER_ETIMEDOUT is returned. 0 when unloaded or not loaded. */
LARDER_API int larder_unload(larder *m, const char *name, int64_t timeout_ms);

/* Takes a loaded component that broke outside a load (the process it ran in died) out of
 * service: new acquires fail (LARDER_EDRAINING) while the leases out come back (at most
 * timeout_ms), then it is unloaded and enters FAILED with err and msg as its last error
 * and the cooldown of a failed load; acquirers during the cooldown fail with
 * LARDER_ECOOLDOWN or are served by the fallback, and the first after it loads anew.
 * Only when the component's loaded model still is `model` (any model when NULL): a
 * model that was already replaced is left alone (0). Returns 0, LARDER_ENOTFOUND,
 * LARDER_EDRAINING (an unload is already running), LARDER_ETIMEDOUT (leases still out:
 * it keeps its state). Appended in 0.1. */
LARDER_API int larder_fail(larder *m, const char *name, const void *model, int err,
                           const char *msg, int64_t timeout_ms);

struct larder_trim_result {
    size_t struct_size;
    unsigned components;      /* whole components evicted */
    unsigned instances;       /* surplus instances freed */
    uint64_t reserved_freed;  /* reservation bytes released */
    int64_t rss_freed;        /* process RSS before minus after (may be < 0) */
};
/* Evicts every idle, unpinned component and every idle surplus instance, then
 * malloc_trim(0), and reports what was freed. ret may be NULL; set its struct_size before the call. */
LARDER_API int larder_trim(larder *m, struct larder_trim_result *ret);

/* ---- registry snapshot ------------------------------------------------------------- */

enum larder_state {
    LARDER_STATE_UNLOADED = 0,
    LARDER_STATE_LOADING,
    LARDER_STATE_READY,
    LARDER_STATE_UNLOADING,
    LARDER_STATE_FAILED,
};
LARDER_API const char *larder_state_name(enum larder_state s);

enum larder_measure_method {
    LARDER_MEASURE_NONE = 0,  /* not loaded yet, or not measured */
    LARDER_MEASURE_CLASS,     /* the class's measure() */
    LARDER_MEASURE_RSS,       /* RSS delta of a load that ran alone */
    LARDER_MEASURE_ESTIMATE,  /* no measurement possible; the estimate is kept */
};
LARDER_API const char *larder_measure_method_name(enum larder_measure_method m);

enum larder_estimate_source {
    LARDER_ESTIMATE_NONE = 0,
    LARDER_ESTIMATE_CLASS,
    LARDER_ESTIMATE_OVERRIDE,
    LARDER_ESTIMATE_LEARNED,  /* the last measured size of this component */
    LARDER_ESTIMATE_FILE,     /* file size x factor */
};
LARDER_API const char *larder_estimate_source_name(enum larder_estimate_source s);

struct larder_component_info {
    char *name;
    char *class_name;
    char *fallback;          /* NULL when none */
    enum larder_state state;
    bool draining;
    bool pin;
    bool preload;
    int priority;
    int64_t ttl_ms;
    int64_t expires_in_ms;   /* idle and loaded: ms until ttl unload; else -1 */
    unsigned instances;      /* created */
    unsigned instances_busy;
    unsigned instances_max;  /* 0 for shared classes */
    unsigned leases;         /* live leases */
    unsigned waiters;
    uint64_t estimate_bytes;
    enum larder_estimate_source estimate_source;
    uint64_t measured_bytes; /* 0 until measured */
    enum larder_measure_method measure_method;
    uint64_t instance_bytes; /* per extra instance */
    uint64_t reserved_bytes; /* charged against the budget now */
    int64_t last_returned_bytes; /* RSS returned by the last unload; -1 if none yet */
    bool leak_suspect;       /* last unload returned far less than measured */
    uint64_t loads;
    uint64_t failures;
    uint64_t hits;
    uint64_t cold_starts;
    uint64_t evictions;
    uint64_t fallbacks_served; /* leases this component served for another */
    double load_ms_last;
    double load_ms_avg;
    int last_error;          /* 0 if the last load succeeded */
    char *last_error_message; /* NULL when none */
    int64_t cooldown_ms;     /* FAILED: ms until retry allowed; else 0 */
    int gpu;                 /* -1 = none */
    uint64_t gpu_bytes;      /* declared device memory */
    uint64_t gpu_reserved_bytes; /* charged against the GPU's budget now */
};

struct larder_snapshot {
    uint64_t budget_bytes;
    uint64_t reserved_bytes;
    uint64_t rss_bytes;
    uint64_t peak_rss_bytes;
    const char *policy;
    size_t n;
    struct larder_component_info *components; /* sorted by name */
    uint64_t gpu_budget_bytes[LARDER_MAX_GPUS];   /* 0 = not enforced */
    uint64_t gpu_reserved_bytes[LARDER_MAX_GPUS];
};

/* Takes a consistent snapshot: every component's figures are read under one lock
 * hold, so reservations add up to reserved_bytes. Free with larder_snapshot_free. */
LARDER_API int larder_snapshot(larder *m, struct larder_snapshot **ret_snapshot);
/* Accepts NULL. Returns NULL. */
LARDER_API struct larder_snapshot *larder_snapshot_free(struct larder_snapshot *s);

/* ---- memory report ------------------------------------------------------------------ */

enum larder_history_kind {
    LARDER_HISTORY_SAMPLE = 0,
    LARDER_HISTORY_LOAD,
    LARDER_HISTORY_EVICT,
    LARDER_HISTORY_UNLOAD,
    LARDER_HISTORY_PRESSURE,
};

struct larder_history_entry {
    int64_t time_ms;          /* wall clock, ms since 1970 */
    enum larder_history_kind kind;
    char name[64];            /* events: the component ("" for none) */
    int64_t bytes;            /* events: reservation (load/evict), RSS returned (unload) */
    uint64_t rss_bytes;       /* samples */
    uint64_t reserved_bytes;
    uint64_t cgroup_bytes;    /* 0 when unknown */
    double psi_some_avg10;
    uint64_t children_bytes;  /* samples: opts.children_bytes's figure (0 when none) */
};

struct larder_gpu_info {
    char name[96];
    uint64_t total_bytes;
    uint64_t used_bytes;
    uint64_t free_bytes;
};

struct larder_memory {
    uint64_t budget_bytes;
    uint64_t reserved_bytes;
    /* The effective limit the watermarks apply to, and where it comes from:
     * "cgroup" (memory.max or memory.high, the lower) or "ram" (MemTotal). */
    uint64_t limit_bytes;
    const char *limit_source;
    uint64_t high_bytes;      /* high watermark in bytes */
    uint64_t low_bytes;
    uint64_t usage_bytes;     /* what the watermarks are compared with: cgroup usage, else RSS */
    bool under_pressure;      /* above high with nothing idle: new loads wait */
    uint64_t pressure_events; /* pressure responses so far */
    uint64_t pressure_evictions;
    /* process */
    uint64_t rss_bytes;
    uint64_t peak_rss_bytes;
    bool has_rollup;
    uint64_t pss_bytes;
    uint64_t anon_bytes;
    uint64_t ram_bytes;       /* MemTotal */
    uint64_t available_bytes; /* MemAvailable */
    /* cgroup (version 0 = none found) */
    int cgroup_version;
    uint64_t cgroup_current;
    uint64_t cgroup_max;      /* UINT64_MAX = unlimited */
    uint64_t cgroup_high;
    uint64_t cgroup_oom;
    uint64_t cgroup_oom_kill;
    uint64_t cgroup_high_events;
    uint64_t cgroup_max_events;
    /* PSI */
    bool has_psi;
    double psi_some_avg10, psi_some_avg60, psi_some_avg300;
    double psi_full_avg10, psi_full_avg60, psi_full_avg300;
    const char *pressure_watch; /* the PSI trigger in use, or NULL */
    int pressure_watch_error;   /* why PSI is not watched (0 when it is) */
    /* GPUs (NVML); n_gpus == 0 when there is no driver or device */
    unsigned n_gpus;
    struct larder_gpu_info *gpus;
    /* history, oldest first */
    size_t n_history;
    struct larder_history_entry *history;
};

/* Reads every memory figure now (process, cgroup, PSI, GPUs) plus the last
 * history_max history entries. Free with larder_memory_free(). */
LARDER_API int larder_memory(larder *m, size_t history_max, struct larder_memory **ret_memory);
/* Accepts NULL. Returns NULL. */
LARDER_API struct larder_memory *larder_memory_free(struct larder_memory *mem);
LARDER_API const char *larder_history_kind_name(enum larder_history_kind k);

/* Device memory that a set of processes holds on each GPU, from NVML's per-process lists:
 * for every GPU i below the returned count (at most max), ret_bytes[i] gets the bytes
 * that the processes pids[0..n-1] hold there, summed (0 for a GPU they do not use);
 * with n == 0 NVML is not asked, so that a caller can learn the count cheaply.
 * Returns the number of GPUs filled: 0 when there is no NVML or no GPU. Errors: -EINVAL
 * (NULL), -ENOTSUP (this NVML has no per-process figures), -ENODATA (the driver
 * withholds them for one of these processes), -EIO (NVML failed), -ENOMEM; ret_bytes is
 * then left as it was. Any thread. Appended in 0.1. */
LARDER_API int larder_gpu_process_bytes(larder *m, const int *pids, size_t n,
                                        uint64_t *ret_bytes, unsigned max);

/* ---- misc -------------------------------------------------------------------------- */

/* Static string for any error code (negative errno or LARDER_E*). Never NULL. */
LARDER_API const char *larder_strerror(int err);

/* Parses a size: "123", "512MiB", "2GiB", "1.5G", "100kB". Units, any case: B;
 * k/M/G/T/P alone or with "i"/"iB" = 1024^n; with "B" ("kB", "MB") = 1000^n. Fractions
 * exact to 6 places, rounded down. Errors: -EINVAL, -ERANGE. */
LARDER_API int larder_parse_size(const char *s, uint64_t *ret_bytes);

#ifdef __cplusplus
}
#endif
#endif
