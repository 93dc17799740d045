/* Test classes and helpers for the core library's unit tests.
 *
 * A fake component (struct fake) is a class whose behaviour each test sets: how long a
 * load takes, how many bytes it estimates, measures and really allocates, whether it
 * fails, and whether it blocks on a gate the test opens later. It counts every call
 * atomically and checks the manager's promises from the inside: no unload while a
 * lease is out, no two loads of one component at once, no instance handed to two
 * leases, no model unloaded with instances left. Each broken promise bumps
 * `violations` and keeps the first message in `why`; tests assert violations == 0.
 *
 * Leases must be taken with fake_acquire()/fake_lease_take() and returned with
 * fake_release() so that the per-component live lease count stays exact.
 *
 * Threads: every function may be called from any thread, except fake_free() (owner
 * only, after the manager that used the fake is closed and its leases returned).
 */
#ifndef LARDER_TEST_FAKE_H
#define LARDER_TEST_FAKE_H

#include <larder/larder.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define FAKE_FAIL_ALWAYS (-1)
#define FAKE_LOAD_ERROR (-5) /* what a failing load returns (-EIO) */
#define FAKE_LOAD_MESSAGE "fake: load refused"

struct fake_spec {
    uint64_t estimate;       /* class estimate(); 0 = the class has no figure (fails) */
    uint64_t measured;       /* class measure(); 0 = same as estimate */
    uint64_t alloc;          /* bytes load really allocates */
    bool touch;              /* write every page of the allocation */
    uint64_t instance_alloc; /* bytes each instance really allocates (touched) */
    int load_ms;             /* sleep inside load */
    int instance_ms;         /* sleep inside instance_new */
    int fail_first;          /* fail the first N load calls; FAKE_FAIL_ALWAYS = every one */
    bool gated;              /* load blocks while the fake's gate is closed */
    bool gated_unload;       /* unload blocks while the gate is closed */
};

/* A ledger of the model bytes that fakes hold right now, counted from the start of a
 * load to the end of an unload. A load that takes it past `budget` is a violation: the
 * manager let real memory exceed the budget (it must finish the unloads that make room
 * before the load that needs it starts). */
struct fake_world {
    uint64_t budget;
    atomic_ullong live;
    atomic_ullong peak;
};

struct fake {
    char name[64];
    struct fake_spec spec;
    struct fake_world *world;  /* NULL unless fake_join() was called */
    uint64_t world_bytes;
    atomic_int load_calls;  /* load entered */
    atomic_int loads;       /* load succeeded */
    atomic_int unloads;
    atomic_int inst_new;
    atomic_int inst_free;
    atomic_int ud_frees;
    atomic_int live_models;    /* loaded and not unloaded */
    atomic_int live_instances;
    atomic_int in_load;        /* loads running right now */
    atomic_int live_leases;    /* maintained by fake_lease_take/fake_release */
    atomic_int violations;
    atomic_bool why_set;
    char why[200];
    pthread_mutex_t gate_lock;
    pthread_cond_t gate_cond;
    bool gate_open;
    atomic_int gate_waiting;   /* loads blocked on the gate now */
    atomic_int next_instance_id;
};

/* Shared classes: `fake_class` has no instances (every lease gets the model);
 * `fake_pool_class` has instance_new/instance_free. Both have estimate and measure. */
extern const struct larder_class fake_class;
extern const struct larder_class fake_pool_class;

/* Creates a fake (spec NULL = all zero). The gate starts open unless spec->gated. */
struct fake *fake_new(const char *name, const struct fake_spec *spec);
/* Frees a fake. Accepts NULL. Returns NULL. */
struct fake *fake_free(struct fake *f);

/* Fills opts for this fake: cls (pool class when max_instances > 1 or pool is set),
 * ud = f, ud_free counting into f->ud_frees. Other fields keep their defaults. */
void fake_opts(struct fake *f, bool pool, struct larder_component_opts *opts);
/* larder_define with fake_opts(); returns larder_define's result. */
int fake_define(larder *m, struct fake *f, bool pool);

/* Makes f charge `bytes` to the world w per loaded model (before the fake is used). */
void fake_join(struct fake *f, struct fake_world *w, uint64_t bytes);

/* Opens / closes the gate. Closing affects loads that start afterwards. */
void fake_gate(struct fake *f, bool open);
/* Waits (bounded by timeout_ms) until n loads are blocked on the gate. */
bool fake_wait_gated(struct fake *f, int n, int timeout_ms);

/* Records a violation (first message kept). */
void fake_violation(struct fake *f, const char *fmt, ...);

/* The fake that served a lease (from its model), NULL if the model is not a fake's. */
struct fake *fake_of(const larder_lease *lease);
/* Accounts a lease the caller got from the library; checks model and instance. A lease
 * whose model is not a live fake model is counted in fake_stray_leases. */
extern atomic_int fake_stray_leases;
void fake_lease_take(larder_lease *lease);
/* larder_acquire + fake_lease_take on success. */
int fake_acquire(larder *m, const char *name, int64_t timeout_ms, larder_lease **ret_lease);
/* Un-accounts and releases. Accepts NULL. Returns NULL. */
larder_lease *fake_release(larder_lease *lease);
/* The numeric id of a lease's instance (>= 1), 0 when the lease has none. */
int fake_instance_id(const larder_lease *lease);

/* Asserts (cmocka) that the fake recorded no violation, printing the first one, and
 * that no stray lease was seen. Main test thread only. */
void fake_assert_clean(struct fake *f);

/* ---- events ----------------------------------------------------------------------- */

struct evrec {
    enum larder_event_type type;
    char name[64];
    char detail[64];
    enum larder_evict_reason reason;
    int error;
    uint64_t bytes;
};

/* Records every event (up to a fixed number; counts are exact past that). An optional
 * hook is called too, from the event's thread. */
struct evlog {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct evrec *recs;
    size_t n, cap;
    unsigned long total;
    void (*hook)(void *ud, const struct larder_event *ev);
    void *hook_ud;
};

/* A new log on the heap (so that a manager left open by a failed test never writes
 * into a dead stack frame). Asserts on allocation failure. */
struct evlog *evlog_new(void);
/* Frees a log. Accepts NULL. Returns NULL. */
struct evlog *evlog_free(struct evlog *log);
/* The larder_event_fn to put in larder_opts.on_event, with event_ud = log. */
void evlog_fn(void *ud, const struct larder_event *ev);
/* Events of that type (and name, when not NULL) recorded so far. */
unsigned evlog_count(struct evlog *log, enum larder_event_type type, const char *name);
/* Same, with a given evict reason. */
unsigned evlog_count_reason(struct evlog *log, enum larder_event_type type, const char *name,
                            enum larder_evict_reason reason);
/* Waits (bounded) until at least n such events were recorded. */
bool evlog_wait(struct evlog *log, enum larder_event_type type, const char *name, unsigned n,
                int timeout_ms);
/* Copies the i-th recorded event; false past the end. */
bool evlog_get(struct evlog *log, size_t i, struct evrec *ret);
/* Events recorded so far, counted past the fixed number too (read under the lock: an
 * event may still be arriving from a manager thread). */
unsigned long evlog_total(struct evlog *log);
/* Forgets the recorded events. */
void evlog_clear(struct evlog *log);

/* ---- misc ------------------------------------------------------------------------- */

/* cmocka checks of a library return code that name the error when they fail. */
#define assert_ok(expr)                                                                    \
    do {                                                                                   \
        int rc_ = (expr);                                                                  \
        if (rc_ < 0)                                                                       \
            fail_msg("%s failed: %s (%d)", #expr, larder_strerror(rc_), rc_);              \
    } while (0)
#define assert_err(expr, code)                                                             \
    do {                                                                                   \
        int rc_ = (expr), want_ = (code);                                                  \
        if (rc_ != want_)                                                                  \
            fail_msg("%s returned %s (%d), expected %s (%d)", #expr, larder_strerror(rc_), \
                     rc_, larder_strerror(want_), want_);                                  \
    } while (0)

/* Loop sizes are multiplied by this: LARDER_TEST_SCALE from the environment, else 1,
 * divided by 5 in sanitizer builds. */
double test_scale(void);
/* n x test_scale(), at least `min`. */
int scaled(int n, int min);
/* Bounds for waits that only end early when something is broken (ms): generous, and
 * larger under sanitizers. */
int patience_ms(void);

double now_ms(void);
void sleep_ms(int ms);

/* A manager with budget_bytes and the event log wired in; other options as given
 * (opts may be NULL). Asserts success. */
larder *open_manager(uint64_t budget, struct evlog *log, const struct larder_opts *opts);

/* Copies one component's snapshot entry (strings set to NULL); false when absent. */
bool comp_info(larder *m, const char *name, struct larder_component_info *ret);
/* Waits (bounded) until the component reaches the state. */
bool wait_state(larder *m, const char *name, enum larder_state state, int timeout_ms);
/* Waits (bounded) until the component has at least n waiters. */
bool wait_waiters(larder *m, const char *name, unsigned n, int timeout_ms);
/* Checks a snapshot: reserved <= budget, sum of reservations == reserved. Returns a
 * message for the first problem (static storage), NULL when consistent. */
const char *check_snapshot(const struct larder_snapshot *s);

#endif
