/* Eviction policies the library's are compared with, written against the same
 * struct larder__policy interface so the replayer drives them all alike.
 *
 * Rules of other model servers, from their documented behaviour (each only orders idle
 * candidates; like the manager, the replayer never offers a leased one):
 *   keepalive  the idle component with the shortest keep-alive first, ties by name
 *              (a keep-alive scheduler that sorts loaded runners by session duration and
 *              model name, and unloads the first idle one);
 *   largest    the largest idle component first (frees the most memory per eviction);
 *   idle-load  the highest idle time divided by load time first (long-idle components
 *              go first unless they are slow to bring back).
 * The textbook cost-aware cache rule, for comparison with the library's cost policy:
 *   gdsf       GreedyDual-Size-Frequency: H = L + F x load_cost / size, F the hits since
 *              the component was loaded, L an inflation clock set to the H of each evicted
 *              component; the lowest H goes first.
 * References, which read the future through the replayer's oracle:
 *   oracle-rate   knows each component's request rate over the whole trace (not when the
 *                 requests come): the lowest rate x load_cost / size goes first. On
 *                 memoryless traffic no online policy can do better.
 *   offline-load  the next use furthest away, weighted by load time: the lowest
 *                 load_cost / (time to next use) goes first;
 *   offline       the reference: also weighted by size, the lowest
 *                 load_cost / (time to next use x GiB^0.75) goes first; components never
 *                 used again go before all others, largest first. Weighting by the whole
 *                 size (exponent 1) was sometimes beaten by offline-load; 0.75 was the
 *                 strongest of the exponents tried (see baselines.c).
 *
 * Threads: none of them keeps shared state but the oracle, which the replayer owns.
 */
#ifndef LARDER_BENCH_BASELINES_H
#define LARDER_BENCH_BASELINES_H

#include "policy.h"

#include <stdbool.h>
#include <stddef.h>

extern const struct larder__policy baseline_gdsf;
extern const struct larder__policy baseline_keepalive;
extern const struct larder__policy baseline_largest;
extern const struct larder__policy baseline_idle_load;
extern const struct larder__policy baseline_oracle_rate;
extern const struct larder__policy baseline_offline_load;
extern const struct larder__policy baseline_offline;

struct bench_policy {
    const struct larder__policy *policy;
    bool oracle; /* needs the replayer's oracle (see struct replay_opts) */
};

/* Every policy a replay can use, by name: the library's ("lru", "cost") and the ones
 * above. Returns false when the name is unknown. */
bool bench_policy_find(const char *name, struct bench_policy *ret);

/* Names of the policies a standard run compares, in table order; NULL-terminated. The
 * last one is the reference the others are measured against. */
extern const char *const bench_policy_names[];
/* The reference's name. */
extern const char *const bench_reference;

#endif
