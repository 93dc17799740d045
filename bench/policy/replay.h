/* Trace replayer: drives an eviction policy (struct larder__policy, the very code the
 * manager runs) through a trace, on a simulated clock, with simulated loads whose size
 * and duration come from the trace.
 *
 * The simulation follows the manager's protocol:
 *   - a request for a READY component is a hit: on_hit(), a lease until now + duration;
 *   - a request for a component being loaded (or waiting for room) joins that load;
 *   - a request for an unloaded component queues it for admission. A queued load starts
 *     when its size fits the budget: until it does, the replayer calls score() on every
 *     idle (unleased, unpinned, READY) component and evicts the lowest (on_evict()); when
 *     none is left and it still does not fit, it waits for leases to come back;
 *   - a load reserves its size when it starts and finishes load_s seconds later: then
 *     on_load(), and each request that waited is served (on_hit(), a lease);
 *   - a lease ends after its duration (last_use = now); freed room admits queued loads.
 * Hooks see the pstat as the manager keeps it: bytes and load_cost from the trace, hits
 * counted per acquire served, last_use at every acquire and release, loaded_at.
 * At equal times, load completions and lease ends (in the order they were scheduled) come
 * before arrivals; among candidates with equal scores, the earliest declared goes first.
 * Loads run in parallel without limit, and keep-alive expiry is not simulated: only the
 * policy decides what leaves. Everything is deterministic.
 *
 * Threads: a replay is single-threaded; separate replays may run in parallel.
 */
#ifndef LARDER_BENCH_REPLAY_H
#define LARDER_BENCH_REPLAY_H

#include "policy.h"
#include "trace.h"

#include <stdbool.h>
#include <stdint.h>

/* The future, for offline policies. next_use: the time of the next request for the
 * component whose pstat is s, after every request already seen at `now`; INFINITY when
 * there is none. rate: its requests per second over the whole trace. */
struct replay_oracle {
    double (*next_use)(const void *ctx, const struct larder__pstat *s, double now);
    double (*rate)(const void *ctx, const struct larder__pstat *s);
    const void *ctx;
};

/* Called for each eviction, for tests and logs. */
typedef void (*replay_evict_fn)(void *ud, uint32_t comp, double now);

struct replay_opts {
    uint64_t budget;                     /* bytes */
    const struct larder__policy *policy;
    /* When set, the policy's state starts with a struct replay_oracle, which the replayer
     * fills after init(). */
    bool oracle;
    replay_evict_fn on_evict;            /* may be NULL */
    void *ud;
};

struct replay_result {
    uint64_t requests;  /* requests in the trace */
    uint64_t hits;      /* served at once by a READY component */
    uint64_t rejected;  /* never served: larger than the budget, or blocked by pins */
    uint64_t loads;
    uint64_t evictions;
    double cold_s;      /* sum of the durations of every load: total cold-load seconds */
    double wait_s;      /* sum over served requests of the time from arrival to lease */
    double end;         /* simulated time when the last lease ended */
};

/* Replays t under o. Errors: -EINVAL (NULL policy, no score, zero budget), -ENOMEM. */
int replay_run(const struct trace *t, const struct replay_opts *o, struct replay_result *ret);

#endif
