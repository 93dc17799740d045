/* Eviction policies (see policy.h).
 *
 * Both built-in policies rank candidates first by priority, then by their own value:
 * every score of priority p lies in [p * BAND, p * BAND + BAND), so an idle component of
 * higher priority is evicted only after every idle candidate of lower priority.
 * Priorities beyond +-PRIORITY_CLAMP rank as +-PRIORITY_CLAMP.
 *
 * lru:  value = last_use. The least recently used idle component goes first.
 *
 * cost: GreedyDual-Size-Frequency style: the value of keeping a component is the load
 *       time it is expected to save per byte,
 *           value = rate x load_cost / bytes,
 *       and the lowest value goes first. rate is the number of requests the component is
 *       expected to get over the next H seconds, divided by H, given how long it has
 *       been idle. It comes from the component's own distribution of gaps between
 *       acquires, learned as it runs: the share of gaps that reach 10 s, 60 s, 300 s and
 *       1800 s, and the mean excess beyond 1800 s (running means; the newest gap weighs
 *       COST_WEIGHT, or more while there are few). Between those bounds the chance of a
 *       request per second is taken as constant, so:
 *         - on memoryless traffic the rate is the component's request rate, and the
 *           policy keeps the components with the highest rate x cost / size, which is
 *           what an oracle that knows every rate would keep;
 *         - a component in the middle of a burst (one caller's batch, a session) is
 *           worth what its bursts say, even if its bursts are minutes apart;
 *         - a component idle past 1800 s loses value the longer it stays unused, since
 *           that idle time counts as exposure without a request: aging comes from idle
 *           time itself, where classic GDSF ages through an inflation clock advanced by
 *           evictions (which lets a cheap component used once outrank a busy one).
 *       H is the cache's own memory: the typical (geometric mean) time that evicted
 *       components had been idle, learned in on_evict(), COST_HORIZON_START seconds at
 *       first. A tight budget evicts young components and so values the near future; a
 *       loose one looks further ahead.
 *       The statistics live in the component's pstat, which outlives a load: a component
 *       that comes back after an eviction is valued by its history, as a ghost entry
 *       would be. Before its first acquire (a preload), a component is worth one request
 *       per COST_PRIOR_GAP s, less as time since its load goes by; its first acquire
 *       starts it on memoryless gaps of COST_PRIOR_GAP s, which its own gaps replace.
 *
 * Per-component state of cost (pstat.pdata): [0] the time of the last acquire; [1..3]
 * six floats (see struct gaps). Shared state: the horizon, written by on_evict() and read
 * by score(), which never run at once; on_hit() touches nothing but its own pstat.
 */
#include "policy.h"

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define BAND 4294967296.0     /* 2^32: width of one priority band */
#define BAND_TOP (BAND - 1.0) /* largest value kept inside its band */
#define PRIORITY_CLAMP 1000

#define COST_WEIGHT 0.03125      /* weight of the newest gap in the running means */
#define COST_PRIOR_GAP 1800.0    /* seconds: mean gap assumed before any is seen */
#define COST_HORIZON_START 600.0 /* seconds: the horizon before any eviction */
#define COST_HORIZON_MIN 1.0     /* seconds: bounds of the horizon */
#define COST_HORIZON_MAX 86400.0
#define COST_HORIZON_WEIGHT 0.05 /* weight of the newest eviction in the horizon */
#define COST_MIN_TIME 0.001    /* seconds: floor of exposures and load costs */
#define COST_MIN_GIB (1.0 / 1048576.0) /* floor of the size: 1 KiB */
#define COST_LOG_BIAS 1100.0   /* log2 of values in [2^-1100, 2^1000] maps into [0, 2100] */

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

static void no_init(void *state)
{
    (void)state;
}

static void no_hook(void *state, struct larder__pstat *s, double now)
{
    (void)state;
    (void)s;
    (void)now;
}

/* ---- lru ------------------------------------------------------------------------------ */

static double lru_score(const void *state, const struct larder__pstat *s, double now)
{
    (void)state;
    (void)now;
    return banded(s->priority, s->last_use);
}

/* The manager keeps last_use up to date; lru needs nothing else. */
static const struct larder__policy lru_policy = {
    .name = "lru",
    .state_size = 0,
    .init = no_init,
    .on_load = no_hook,
    .on_hit = no_hook,
    .on_evict = no_hook,
    .score = lru_score,
};

/* ---- cost ----------------------------------------------------------------------------- */

/* Idle-time bins of the gap distribution: [0, 10), [10, 60), [60, 300), [300, 1800) s,
 * and the tail from 1800 s on. */
#define NBOUNDS 4
static const double bounds[NBOUNDS + 1] = {0, 10, 60, 300, 1800};

/* What cost keeps per component, unpacked from pdata: pdata[0] is the time of the last
 * acquire; pdata[1..3] hold six floats: the survival of gaps at bounds[1..4] (running
 * means of "the gap reached it"), the mean excess of gaps over the last bound (tail
 * exposure), and whether anything was recorded yet. */
struct gaps {
    double last;
    float surv[NBOUNDS]; /* survival at bounds[1..NBOUNDS] */
    float tail;          /* mean of max(gap - bounds[NBOUNDS], 0) */
    float started;       /* 1 once the first acquire was seen */
};

static void gaps_get(const struct larder__pstat *s, struct gaps *g)
{
    float f[6];

    memcpy(f, &s->pdata[1], sizeof(f));
    g->last = s->pdata[0];
    memcpy(g->surv, f, sizeof(g->surv));
    g->tail = f[4];
    g->started = f[5];
}

static void gaps_put(struct larder__pstat *s, const struct gaps *g)
{
    float f[6];

    memcpy(f, g->surv, sizeof(g->surv));
    f[4] = g->tail;
    f[5] = g->started;
    s->pdata[0] = g->last;
    memcpy(&s->pdata[1], f, sizeof(f));
}

static double at_least(double v, double floor)
{
    return v > floor ? v : floor;
}

/* Load seconds saved per GiB kept, per request. */
static double cost_density(const struct larder__pstat *s)
{
    return at_least(s->load_cost, COST_MIN_TIME) /
           at_least((double)s->bytes / 1073741824.0, COST_MIN_GIB);
}

/* Prior: memoryless gaps of COST_PRIOR_GAP seconds on average. */
static void gaps_prior(struct gaps *g, double now)
{
    for (int k = 0; k < NBOUNDS; k++)
        g->surv[k] = (float)exp(-bounds[k + 1] / COST_PRIOR_GAP);
    g->tail = (float)(COST_PRIOR_GAP * exp(-bounds[NBOUNDS] / COST_PRIOR_GAP));
    g->started = 1;
    g->last = now;
}

/* Folds one gap into the running means; early gaps weigh more, down to COST_WEIGHT. */
static void gaps_add(struct gaps *g, double gap, uint64_t hits)
{
    double w = hits > 1 ? 1.0 / (double)hits : 1.0;

    if (w < COST_WEIGHT)
        w = COST_WEIGHT;
    for (int k = 0; k < NBOUNDS; k++)
        g->surv[k] += (float)(w * ((gap >= bounds[k + 1] ? 1.0 : 0.0) - g->surv[k]));
    g->tail += (float)(w * (fmax(gap - bounds[NBOUNDS], 0.0) - g->tail));
}

/* Shared state: written by on_evict(), read by score(); never by on_hit(). */
struct cost_state {
    double log_horizon;
};

static void cost_init(void *state)
{
    ((struct cost_state *)state)->log_horizon = log(COST_HORIZON_START);
}

static void cost_on_hit(void *state, struct larder__pstat *s, double now)
{
    struct gaps g;

    (void)state;
    gaps_get(s, &g);
    if (!g.started) {
        gaps_prior(&g, now);
    } else {
        gaps_add(&g, now > g.last ? now - g.last : 0.0, s->hits);
        if (now > g.last)
            g.last = now;
    }
    gaps_put(s, &g);
}

/* Survival at bound k (k = 0: at 0, always 1), floored so that ratios stay finite. */
static double surv_at(const struct gaps *g, int k)
{
    return k == 0 ? 1.0 : at_least(g->surv[k - 1], 1e-6);
}

/* Hazard (requests per second) of bin k: constant within it. */
static double bin_hazard(const struct gaps *g, int k)
{
    return log(surv_at(g, k) / surv_at(g, k + 1)) / (bounds[k + 1] - bounds[k]);
}

/* Expected requests per second over the next `horizon` seconds of a component idle for
 * `idle` seconds: its cumulative hazard over [idle, idle + horizon] divided by the
 * horizon. Idle time in the tail counts as exposure without a request, so the tail
 * hazard falls while the component stays unused. */
static double cost_rate(const struct gaps *g, double idle, double horizon)
{
    const double n = 1.0 / COST_WEIGHT, last = bounds[NBOUNDS];
    double to = idle + horizon, sum = 0.0;

    for (int k = 0; k < NBOUNDS; k++) {
        double lo = fmax(idle, bounds[k]), hi = fmin(to, bounds[k + 1]);

        if (hi > lo)
            sum += bin_hazard(g, k) * (hi - lo);
    }
    if (to > last)
        sum += n * surv_at(g, NBOUNDS) /
               (n * at_least(g->tail, COST_MIN_TIME) + fmax(idle - last, 0.0)) *
               (to - fmax(idle, last));
    return sum / horizon;
}

static double cost_score(const void *state, const struct larder__pstat *s, double now)
{
    const struct cost_state *st = state;
    struct gaps g;
    double rate, value;

    gaps_get(s, &g);
    if (!g.started)
        rate = 1.0 / (COST_PRIOR_GAP + fmax(now - s->loaded_at, 0.0));
    else
        rate = cost_rate(&g, now > g.last ? now - g.last : 0.0, exp(st->log_horizon));
    value = rate * cost_density(s);
    if (!(value > 0))
        return banded(s->priority, 0);
    return banded(s->priority, fmax(COST_LOG_BIAS + log2(value), 0.0));
}

/* True when s is going because its keep-alive ran out, not to make room. */
static bool cost_expired(const struct larder__pstat *s, double now)
{
    return s->ttl_ms >= 0 && now - s->last_use >= (double)s->ttl_ms / 1000.0;
}

/* Learns the horizon: how long evicted components had been idle (a geometric mean). */
static void cost_on_evict(void *state, struct larder__pstat *s, double now)
{
    struct cost_state *st = state;
    struct gaps g;
    double idle;

    gaps_get(s, &g);
    if (!g.started || cost_expired(s, now))
        return;
    idle = fmin(fmax(now - g.last, COST_HORIZON_MIN), COST_HORIZON_MAX);
    st->log_horizon += COST_HORIZON_WEIGHT * (log(idle) - st->log_horizon);
}

static const struct larder__policy cost_policy = {
    .name = "cost",
    .state_size = sizeof(struct cost_state),
    .init = cost_init,
    .on_load = no_hook,
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
