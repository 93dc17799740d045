/* Eviction policies: one small interface, so the manager and the trace replayer in
 * bench/policy drive the very same code.
 *
 * The manager keeps one struct larder__pstat per component and calls the hooks as
 * things happen. When it needs room it asks score() for every evictable candidate and
 * evicts the lowest score first. Pinned and leased components are never offered.
 *
 * Locking contract (the manager's side):
 *   - on_hit() runs with only that component's lock held, concurrently with hooks of
 *     other components. It may write that component's pstat, and may read the
 *     policy's shared state only through atomics.
 *   - on_load(), on_evict() and score() run with the manager lock held (and the
 *     component's lock), never concurrently with each other.
 * Time is in seconds on any monotonic clock (the replayer uses a simulated one).
 */
#ifndef LARDER_POLICY_H
#define LARDER_POLICY_H

#include <stdint.h>

struct larder__pstat {
    uint64_t bytes;     /* reservation of the component (model + instances) */
    double load_cost;   /* seconds one load takes: last measured, else estimated */
    uint64_t hits;      /* acquires since the component was defined */
    double last_use;    /* time of the last acquire or release */
    double loaded_at;   /* time the current load finished */
    int priority;       /* higher survives longer */
    int64_t ttl_ms;     /* keep-alive; -1 never */
    double pdata[4];    /* the policy's own per-component state, zeroed at define */
};

struct larder__policy {
    const char *name;
    /* Size of the policy's shared state; the caller allocates it zeroed. */
    unsigned long state_size;
    void (*init)(void *state);
    /* A load of this component finished. */
    void (*on_load)(void *state, struct larder__pstat *s, double now);
    /* An acquire was served by this (loaded) component. */
    void (*on_hit)(void *state, struct larder__pstat *s, double now);
    /* This component is being evicted (or unloaded). */
    void (*on_evict)(void *state, struct larder__pstat *s, double now);
    /* Lower = evicted first. */
    double (*score)(const void *state, const struct larder__pstat *s, double now);
};

/* Built-in policies: "lru", "cost". NULL when unknown. */
const struct larder__policy *larder__policy_find(const char *name);
/* NULL-terminated list of the built-in policies. */
extern const struct larder__policy *const larder__policies[];

#endif
