/* Eviction policies (see policy.h).
 *
 * Both built-in policies rank candidates first by priority, then by their own value:
 * every score of priority p lies in [p * BAND, p * BAND + BAND), so an idle component of
 * higher priority is evicted only after every idle candidate of lower priority.
 * Priorities beyond +-PRIORITY_CLAMP rank as +-PRIORITY_CLAMP.
 *
 * lru:  value = last_use. The least recently used idle component goes first.
 *
 * cost: GreedyDual-Size-Frequency style. The value of keeping a component is the load
 *       time it saves per byte:
 *           value = rate x load_cost / bytes
 *       where rate is the component's expected requests per second in the near future,
 *       learned from the gaps between its acquires. Gaps shorter than COST_BURST seconds
 *       (a burst: one caller's batch, a session) and longer ones are counted apart, each
 *       as events over exposure time (running means, the newest gap weighing
 *       COST_WEIGHT):
 *           short rate = short gaps / time spent in the first COST_BURST s of gaps
 *           long rate  = long gaps / time spent beyond COST_BURST s
 *       A component used less than COST_BURST s ago is worth its short rate (or its
 *       long rate when higher): recently used and bursty, it is likely to be asked again
 *       soon. After that it is worth its long rate, and the current idle time counts as
 *       exposure with no request: a component falls in value the longer it stays unused,
 *       at a pace set by its own history (aging without a global clock). On memoryless
 *       traffic both rates estimate the same Poisson rate, and the policy keeps the
 *       components with the highest rate x cost / size, which is the best any online
 *       rule can do there. The statistics live in the component's pstat, which outlives
 *       a load: a component that comes back after an eviction is valued by its history,
 *       as with ghost entries.
 *       A component loaded but never acquired (a preload) is worth the rate of one
 *       request per COST_PRIOR_GAP s, falling with the time since its load.
 *
 * Per-component state of cost (pstat.pdata):
 *   [0] time of the last acquire
 *   [1] running mean of "the gap was short" (0 or 1)
 *   [2] running mean of min(gap, COST_BURST): short exposure per gap; 0 = never acquired
 *   [3] running mean of max(gap - COST_BURST, 0): long exposure per gap
 * cost keeps no shared state, so on_hit() running concurrently for different components
 * touches nothing but its own pstat.
 */
#include "policy.h"

#include <math.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#define BAND 4294967296.0     /* 2^32: width of one priority band */
#define BAND_TOP (BAND - 1.0) /* largest value kept inside its band */
#define PRIORITY_CLAMP 1000

#define COST_WEIGHT 0.03125    /* weight of the newest gap in the running means */
#define COST_GLOBAL_WEIGHT (1.0 / 256) /* the same, in the distribution of all components */
#define COST_PRIOR_WEIGHT 2.0  /* the prior counts as this many gaps */
#define COST_PRIOR_GAP 1800.0  /* seconds: expected gap of a component not yet acquired */
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

/* The gap distribution of all components together: the prior of each new one. */
struct cost_state {
    _Atomic double surv[NBOUNDS];
    _Atomic double tail;
};

static void cost_init(void *state)
{
    struct cost_state *st = state;

    for (int k = 0; k < NBOUNDS; k++)
        atomic_init(&st->surv[k], exp(-bounds[k + 1] / COST_PRIOR_GAP));
    atomic_init(&st->tail, COST_PRIOR_GAP * exp(-bounds[NBOUNDS] / COST_PRIOR_GAP));
}

/* m += w (x - m), atomically: several components' on_hit() may run at once. */
static void mean_add(_Atomic double *m, double x, double w)
{
    double old = atomic_load_explicit(m, memory_order_relaxed);

    while (!atomic_compare_exchange_weak_explicit(m, &old, old + w * (x - old),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

static void global_add(struct cost_state *st, double gap)
{
    for (int k = 0; k < NBOUNDS; k++)
        mean_add(&st->surv[k], gap >= bounds[k + 1] ? 1.0 : 0.0, COST_GLOBAL_WEIGHT);
    mean_add(&st->tail, fmax(gap - bounds[NBOUNDS], 0.0), COST_GLOBAL_WEIGHT);
}

/* Prior of a component's first acquire: what all components have shown so far. */
static void gaps_prior(const struct cost_state *st, struct gaps *g, double now)
{
    for (int k = 0; k < NBOUNDS; k++)
        g->surv[k] = (float)atomic_load_explicit(&st->surv[k], memory_order_relaxed);
    g->tail = (float)atomic_load_explicit(&st->tail, memory_order_relaxed);
    g->started = 1;
    g->last = now;
}

/* Folds one gap into the running means; early gaps weigh more, down to COST_WEIGHT. */
static void gaps_add(struct gaps *g, double gap, uint64_t hits)
{
    double w = hits > 1 ? 1.0 / ((double)hits - 1.0 + COST_PRIOR_WEIGHT) : 1.0;

    if (w < COST_WEIGHT)
        w = COST_WEIGHT;
    for (int k = 0; k < NBOUNDS; k++)
        g->surv[k] += (float)(w * ((gap >= bounds[k + 1] ? 1.0 : 0.0) - g->surv[k]));
    g->tail += (float)(w * (fmax(gap - bounds[NBOUNDS], 0.0) - g->tail));
}

static void cost_on_hit(void *state, struct larder__pstat *s, double now)
{
    double gap;
    struct gaps g;

    gaps_get(s, &g);
    if (!g.started) {
        gaps_prior(state, &g, now);
    } else {
        gap = now > g.last ? now - g.last : 0.0;
        gaps_add(&g, gap, s->hits);
        global_add(state, gap);
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

/* Integral over [0, len] of exp(-h t). */
static double segment(double h, double len)
{
    return h > 1e-12 ? -expm1(-h * len) / h : len;
}

/* Expected seconds from now to the next acquire of a component idle for `idle` seconds:
 * the mean residual life of its gap distribution, taken as piecewise memoryless between
 * the bounds. Idle time in the tail counts as exposure without a request, so the
 * expectation grows while the component stays unused. */
static double cost_expected_wait(const struct gaps *g, double idle)
{
    const double n = 1.0 / COST_WEIGHT;
    double tail_rate, rel = 1.0, total = 0.0;
    int k = 0;

    tail_rate = n * surv_at(g, NBOUNDS) /
                (n * at_least(g->tail, COST_MIN_TIME) + fmax(idle - bounds[NBOUNDS], 0.0));
    while (k < NBOUNDS && idle >= bounds[k + 1])
        k++;
    for (double from = idle; k < NBOUNDS; k++, from = bounds[k]) {
        double w = bounds[k + 1] - bounds[k], len = bounds[k + 1] - from;
        double h = log(surv_at(g, k) / surv_at(g, k + 1)) / w;

        total += rel * segment(h, len);
        rel *= exp(-h * len);
    }
    return total + rel / tail_rate;
}

static double cost_score(const void *state, const struct larder__pstat *s, double now)
{
    struct gaps g;
    double wait, value;

    (void)state;
    gaps_get(s, &g);
    if (!g.started)
        wait = COST_PRIOR_GAP + fmax(now - s->loaded_at, 0.0);
    else
        wait = cost_expected_wait(&g, now > g.last ? now - g.last : 0.0);
    value = cost_density(s) / at_least(wait, COST_MIN_TIME);
    if (!(value > 0))
        return banded(s->priority, 0);
    return banded(s->priority, fmax(COST_LOG_BIAS + log2(value), 0.0));
}

static const struct larder__policy cost_policy = {
    .name = "cost",
    .state_size = sizeof(struct cost_state),
    .init = cost_init,
    .on_load = no_hook,
    .on_hit = cost_on_hit,
    .on_evict = no_hook,
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
