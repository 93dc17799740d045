/* Eviction policies (see policy.h).
 *
 * Both built-in policies rank candidates first by priority, then by their own value:
 * every score of priority p lies in [p * BAND, p * BAND + BAND), so a higher-priority idle
 * component is evicted only after every lower-priority candidate. Priorities beyond
 * +-PRIORITY_CLAMP rank as +-PRIORITY_CLAMP.
 *
 * lru:  value = last_use. The least recently used idle component goes first.
 *
 * cost: GreedyDual-Size-Frequency. Each component carries a key
 *           H = L + F * C / S
 *       where C is its load cost (seconds), S its size (GiB), F its access frequency and L
 *       the policy's inflation clock. The candidate with the lowest H goes first, and
 *       evicting it advances L to its H, so components that have not been used for a
 *       while sink below newly used ones: aging without a sweep.
 *       F counts acquires with exponential decay (half-life COST_HALF_LIFE seconds). It
 *       lives in the component's pstat, which outlives a load, so a component that comes
 *       back after an eviction is valued by its whole (decayed) history, not as a
 *       stranger: the pstat is its own ghost entry.
 *
 * Per-component state of cost (pstat.pdata):
 *   [0] H, the key      [1] F, decayed count as of [2]      [2] time of the last update
 *
 * Shared state of cost: the clock L. on_evict() writes it under the manager lock; on_hit()
 * reads it concurrently from other threads, so it is an atomic.
 */
#include "policy.h"

#include <math.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#define BAND 4294967296.0          /* 2^32: width of one priority band */
#define BAND_TOP (BAND - 1.0)      /* largest value kept inside its band */
#define PRIORITY_CLAMP 1000
#define COST_HALF_LIFE 7200.0      /* seconds for an access to count half */
#define COST_MIN_LOAD 0.001        /* floor of the load cost (seconds) */
#define COST_MIN_GIB (1.0 / 1048576.0) /* floor of the size: 1 KiB */

enum { P_KEY = 0, P_FREQ = 1, P_STAMP = 2 };

/* Score of `value` inside the band of `priority`. NaN and negative values rank lowest. */
static double banded(int priority, double value)
{
    if (priority > PRIORITY_CLAMP)
        priority = PRIORITY_CLAMP;
    if (priority < -PRIORITY_CLAMP)
        priority = -PRIORITY_CLAMP;
    if (!(value >= 0.0))
        value = 0.0;
    if (value > BAND_TOP)
        value = BAND_TOP;
    return (double)priority * BAND + value;
}

/* ---- lru ------------------------------------------------------------------------------ */

static void lru_init(void *state)
{
    (void)state;
}

static void lru_touch(void *state, struct larder__pstat *s, double now)
{
    /* The manager keeps last_use up to date; lru needs nothing else. */
    (void)state;
    (void)s;
    (void)now;
}

static double lru_score(const void *state, const struct larder__pstat *s, double now)
{
    (void)state;
    (void)now;
    return banded(s->priority, s->last_use);
}

static const struct larder__policy lru_policy = {
    .name = "lru",
    .state_size = 0,
    .init = lru_init,
    .on_load = lru_touch,
    .on_hit = lru_touch,
    .on_evict = lru_touch,
    .score = lru_score,
};

/* ---- cost ----------------------------------------------------------------------------- */

struct cost_state {
    _Atomic double clock; /* L */
};

static void cost_init(void *state)
{
    struct cost_state *st = state;

    atomic_init(&st->clock, 0.0);
}

/* The decayed access count of s at `now`. */
static double cost_freq(const struct larder__pstat *s, double now)
{
    double age = now - s->pdata[P_STAMP];

    if (!(age > 0.0))
        return s->pdata[P_FREQ];
    return s->pdata[P_FREQ] * exp2(-age / COST_HALF_LIFE);
}

/* Seconds of loading saved per GiB kept, per counted access. */
static double cost_density(const struct larder__pstat *s)
{
    double cost = s->load_cost > COST_MIN_LOAD ? s->load_cost : COST_MIN_LOAD;
    double gib = (double)s->bytes / 1073741824.0;

    if (gib < COST_MIN_GIB)
        gib = COST_MIN_GIB;
    return cost / gib;
}

/* Brings the count to `now`, adds `add` accesses and recomputes the key. */
static void cost_update(struct cost_state *st, struct larder__pstat *s, double now, double add)
{
    double clock = atomic_load_explicit(&st->clock, memory_order_relaxed);
    double freq = cost_freq(s, now) + add;

    s->pdata[P_FREQ] = freq;
    if (now > s->pdata[P_STAMP])
        s->pdata[P_STAMP] = now;
    /* A load is worth at least the access that asked for it. */
    s->pdata[P_KEY] = clock + (freq > 1.0 ? freq : 1.0) * cost_density(s);
}

static void cost_on_load(void *state, struct larder__pstat *s, double now)
{
    cost_update(state, s, now, 0.0);
}

static void cost_on_hit(void *state, struct larder__pstat *s, double now)
{
    cost_update(state, s, now, 1.0);
}

/* True when s is going because its keep-alive ran out, not to make room: such an unload
 * says nothing about the value of what stays, so it does not move the clock. */
static bool cost_expired(const struct larder__pstat *s, double now)
{
    return s->ttl_ms >= 0 && now - s->last_use >= (double)s->ttl_ms / 1000.0;
}

static void cost_on_evict(void *state, struct larder__pstat *s, double now)
{
    struct cost_state *st = state;
    double clock = atomic_load_explicit(&st->clock, memory_order_relaxed);
    double key = s->pdata[P_KEY];

    if (cost_expired(s, now) || !(key > clock))
        return;
    if (key > BAND_TOP)
        key = BAND_TOP;
    atomic_store_explicit(&st->clock, key, memory_order_relaxed);
}

static double cost_score(const void *state, const struct larder__pstat *s, double now)
{
    (void)state;
    (void)now;
    return banded(s->priority, s->pdata[P_KEY]);
}

static const struct larder__policy cost_policy = {
    .name = "cost",
    .state_size = sizeof(struct cost_state),
    .init = cost_init,
    .on_load = cost_on_load,
    .on_hit = cost_on_hit,
    .on_evict = cost_on_evict,
    .score = cost_score,
};

/* ---- registry ------------------------------------------------------------------------- */

const struct larder__policy *const larder__policies[] = {&cost_policy, &lru_policy, NULL};

const struct larder__policy *larder__policy_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; larder__policies[i]; i++)
        if (strcmp(larder__policies[i]->name, name) == 0)
            return larder__policies[i];
    return NULL;
}
