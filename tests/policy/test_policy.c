/* The library's eviction policies (src/lib/policy.c), driven through policy.h the way
 * the manager drives them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "policy.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MIB (1ull << 20)

/* ---- the manager's side --------------------------------------------------------------- */

struct run {
    const struct larder__policy *p;
    void *state;
};

static struct run open_policy(const char *name)
{
    struct run r = {.p = larder__policy_find(name)};

    assert_non_null(r.p);
    r.state = calloc(1, r.p->state_size ? r.p->state_size : 1);
    assert_non_null(r.state);
    r.p->init(r.state);
    return r;
}

static struct larder__pstat define(uint64_t mib, double load_s, int priority)
{
    return (struct larder__pstat){.bytes = mib * MIB, .load_cost = load_s,
                                  .priority = priority, .ttl_ms = -1};
}

/* A load finished at `now`. */
static void loaded(const struct run *r, struct larder__pstat *s, double now)
{
    s->loaded_at = s->last_use = now;
    r->p->on_load(r->state, s, now);
}

/* An acquire served at `now`, with its lease returned at once. */
static void acquire(const struct run *r, struct larder__pstat *s, double now)
{
    s->hits++;
    s->last_use = now;
    r->p->on_hit(r->state, s, now);
}

/* The first acquire: the load it waited for, then the acquire itself. */
static void cold(const struct run *r, struct larder__pstat *s, double now)
{
    loaded(r, s, now);
    acquire(r, s, now);
}

static double score(const struct run *r, const struct larder__pstat *s, double now)
{
    double v = r->p->score(r->state, s, now);

    assert_false(isnan(v));
    return v;
}

/* The candidate the manager evicts first: the lowest score, the first among equals. */
static size_t victim(const struct run *r, struct larder__pstat **c, size_t n, double now)
{
    size_t best = 0;

    for (size_t i = 1; i < n; i++)
        if (score(r, c[i], now) < score(r, c[best], now))
            best = i;
    return best;
}

/* ---- registry ------------------------------------------------------------------------- */

static void test_find(void **state)
{
    size_t n = 0;

    (void)state;
    assert_string_equal(larder__policy_find("lru")->name, "lru");
    assert_string_equal(larder__policy_find("cost")->name, "cost");
    assert_null(larder__policy_find("fifo"));
    assert_null(larder__policy_find(""));
    assert_null(larder__policy_find(NULL));
    for (; larder__policies[n]; n++) {
        const struct larder__policy *p = larder__policies[n];

        assert_non_null(p->init);
        assert_non_null(p->on_load);
        assert_non_null(p->on_hit);
        assert_non_null(p->on_evict);
        assert_non_null(p->score);
        assert_ptr_equal(larder__policy_find(p->name), p);
    }
    assert_int_equal(n, 2);
}

/* ---- lru ------------------------------------------------------------------------------ */

static void test_lru_recency(void **state)
{
    struct run r = open_policy("lru");
    struct larder__pstat a = define(10, 1, 0), b = define(10, 1, 0);

    (void)state;
    cold(&r, &a, 100);
    cold(&r, &b, 200);
    assert_true(score(&r, &a, 300) < score(&r, &b, 300));
    acquire(&r, &a, 250);
    assert_true(score(&r, &b, 300) < score(&r, &a, 300));
    free(r.state);
}

/* Priority dominates: a higher-priority component goes after every lower one, however
 * long it has been idle; negative priorities go first; beyond +-1000 they are clamped. */
static void test_lru_priority(void **state)
{
    struct run r = open_policy("lru");
    struct larder__pstat old_hi = define(10, 1, 1), new_lo = define(10, 1, 0);
    struct larder__pstat new_neg = define(10, 1, -3), huge = define(10, 1, 50000);
    struct larder__pstat top = define(10, 1, 1000);

    (void)state;
    cold(&r, &old_hi, 1);
    cold(&r, &new_lo, 1e6);
    cold(&r, &new_neg, 2e6);
    cold(&r, &huge, 5);
    cold(&r, &top, 6);
    assert_true(score(&r, &new_lo, 3e6) < score(&r, &old_hi, 3e6));
    assert_true(score(&r, &new_neg, 3e6) < score(&r, &new_lo, 3e6));
    assert_true(score(&r, &huge, 3e6) < score(&r, &top, 3e6)); /* same band: recency */
    assert_true(score(&r, &old_hi, 3e6) < score(&r, &huge, 3e6));
    free(r.state);
}

/* ---- cost: what the value depends on -------------------------------------------------- */

/* Acquires s every `gap` seconds, n times, from `from` on. */
static void acquire_every(const struct run *r, struct larder__pstat *s, double from, double gap,
                          int n)
{
    for (int i = 0; i < n; i++)
        acquire(r, s, from + gap * i);
}

/* More requests, same size, cost and last use: kept longer. */
static void test_cost_frequency(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat often = define(100, 2, 0), rarely = define(100, 2, 0);

    (void)state;
    cold(&r, &often, 0);
    cold(&r, &rarely, 0);
    acquire_every(&r, &often, 300, 300, 11); /* every 5 minutes until 3300 */
    acquire_every(&r, &rarely, 1800, 1500, 2); /* 1800, 3300 */
    assert_true(score(&r, &rarely, 3400) < score(&r, &often, 3400));
    free(r.state);
}

static void same_history(const struct run *r, struct larder__pstat *s)
{
    cold(r, s, 0);
    acquire_every(r, s, 200, 200, 5);
}

/* Same history and load time: the larger is evicted first. */
static void test_cost_size(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat small = define(100, 5, 0), large = define(1000, 5, 0);

    (void)state;
    same_history(&r, &small);
    same_history(&r, &large);
    assert_true(score(&r, &large, 1100) < score(&r, &small, 1100));
    free(r.state);
}

/* Same history and size: the one that reloads faster is evicted first. */
static void test_cost_load_time(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat slow = define(500, 12, 0), fast = define(500, 0.5, 0);

    (void)state;
    same_history(&r, &slow);
    same_history(&r, &fast);
    assert_true(score(&r, &fast, 1100) < score(&r, &slow, 1100));
    free(r.state);
}

/* Priority dominates value: a cheap, rarely used component of priority 1 outlives an
 * expensive, busy one of priority 0, and a negative priority goes before both. */
static void test_cost_priority(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat cheap_hi = define(2000, 0.01, 1), dear_lo = define(1, 20, 0);
    struct larder__pstat dear_neg = define(1, 20, -1);

    (void)state;
    cold(&r, &cheap_hi, 0);
    cold(&r, &dear_lo, 0);
    cold(&r, &dear_neg, 0);
    acquire_every(&r, &dear_lo, 1, 1, 100);
    acquire_every(&r, &dear_neg, 1, 1, 100);
    assert_true(score(&r, &dear_lo, 1e5) < score(&r, &cheap_hi, 1e5));
    assert_true(score(&r, &dear_neg, 100) < score(&r, &cheap_hi, 1e5));
    assert_true(score(&r, &dear_neg, 100) < score(&r, &dear_lo, 100));
    free(r.state);
}

/* A component loses value while it stays unused, and a busy one that went quiet ends up
 * below a moderately used one that is still in use. */
static void test_cost_aging(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat was_hot = define(100, 2, 0), steady = define(100, 2, 0);
    double prev = INFINITY;

    (void)state;
    cold(&r, &was_hot, 0);
    acquire_every(&r, &was_hot, 120, 120, 30); /* until 3600, then silence */
    cold(&r, &steady, 0);
    acquire_every(&r, &steady, 900, 900, 40);  /* every 15 minutes, until 36000 */
    assert_true(score(&r, &steady, 3700) < score(&r, &was_hot, 3700));
    assert_true(score(&r, &was_hot, 36050) < score(&r, &steady, 36050));
    for (double t = 3700; t < 1e6; t *= 2) {
        double s = score(&r, &was_hot, t);

        assert_true(s < prev);
        prev = s;
    }
    free(r.state);
}

/* Two components with the same rate: one in bursts (5 requests 2 s apart every 10 minutes),
 * one every 2 minutes. In the middle of a burst the bursty one is worth more when the cache
 * keeps components for seconds only (a short horizon: evictions of components idle 5 s),
 * and less while the horizon is minutes, over which the even one is sure to come back. */
static void test_cost_burst(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat bursty = define(100, 2, 0), even = define(100, 2, 0);
    struct larder__pstat young = define(10, 1, 0);

    (void)state;
    cold(&r, &bursty, 0);
    cold(&r, &even, 0);
    for (int b = 0; b < 5; b++)
        acquire_every(&r, &bursty, 600.0 * b + 595, 2, 5);
    acquire_every(&r, &bursty, 3595, 2, 3); /* 3 of the 6th burst: 3595, 3597, 3599 */
    acquire_every(&r, &even, 120, 120, 30);  /* until 3600 */
    assert_true(score(&r, &bursty, 3600) < score(&r, &even, 3600));

    cold(&r, &young, 3590);
    for (int i = 0; i < 200; i++)
        r.p->on_evict(r.state, &young, 3595);
    assert_true(score(&r, &even, 3600) < score(&r, &bursty, 3600));
    assert_true(score(&r, &bursty, 3700) < score(&r, &bursty, 3600));
    free(r.state);
}

/* The statistics outlive an eviction: reloaded, a component with a long history is worth
 * more than a newcomer of the same size and cost. */
static void test_cost_history_survives_eviction(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat veteran = define(100, 3, 0), newcomer = define(100, 3, 0);

    (void)state;
    cold(&r, &veteran, 0);
    acquire_every(&r, &veteran, 100, 100, 20);
    r.p->on_evict(r.state, &veteran, 2100);
    cold(&r, &veteran, 2500);
    cold(&r, &newcomer, 2500);
    assert_true(score(&r, &newcomer, 2510) < score(&r, &veteran, 2510));
    free(r.state);
}

/* The horizon is learned from evictions made for room: a component unloaded because its
 * keep-alive ran out says nothing about it. */
static void test_cost_ttl_unload_keeps_horizon(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat probe = define(100, 2, 0), idle = define(10, 1, 0);
    double before;

    (void)state;
    cold(&r, &probe, 0);
    acquire_every(&r, &probe, 100, 100, 10);
    cold(&r, &idle, 1000);
    idle.ttl_ms = 1000;
    before = score(&r, &probe, 1010);
    for (int i = 0; i < 100; i++)
        r.p->on_evict(r.state, &idle, 1002); /* idle 2 s, keep-alive 1 s: expired */
    assert_true(score(&r, &probe, 1010) == before);
    idle.ttl_ms = -1;
    for (int i = 0; i < 100; i++)
        r.p->on_evict(r.state, &idle, 1002); /* the same, evicted for room */
    assert_true(score(&r, &probe, 1010) != before);
    free(r.state);
}

/* Loaded but never acquired (a preload): worth something, less and less as time goes,
 * and less than a component in use. */
static void test_cost_preload(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat pre = define(100, 3, 0), used = define(100, 3, 0);

    (void)state;
    loaded(&r, &pre, 0);
    cold(&r, &used, 0);
    acquire_every(&r, &used, 60, 60, 10);
    assert_true(score(&r, &pre, 100) > score(&r, &pre, 5000));
    assert_true(score(&r, &pre, 700) < score(&r, &used, 700));
    free(r.state);
}

/* Zero sizes and load costs, a clock that steps back, huge and tiny values: scores stay
 * numbers inside their priority band. */
static void test_cost_odd_inputs(void **state)
{
    struct run r = open_policy("cost");
    struct larder__pstat zero = define(0, 0, 0), huge = define(1ull << 40, 1e9, 0);
    struct larder__pstat above = define(1, 1, 1);

    (void)state;
    cold(&r, &zero, 50);
    acquire(&r, &zero, 40); /* clock stepped back */
    cold(&r, &huge, 0);
    cold(&r, &above, 0);
    for (double t = 0; t < 1e12; t = t * 10 + 1) {
        assert_true(score(&r, &zero, t) >= 0);
        assert_true(score(&r, &huge, t) >= 0);
        assert_true(score(&r, &zero, t) < score(&r, &above, 1e12));
        assert_true(score(&r, &huge, t) < score(&r, &above, 1e12));
    }
    free(r.state);
}

/* ---- hand-worked trace ---------------------------------------------------------------- */

/* Budget 100 MiB: a (40 MiB, loads in 4 s), b (10 MiB, 1 s), c (50 MiB, 8 s) fill it;
 * d (20 MiB, 3 s) is asked for at t=30. They are ready at 4, 1 and 8; a is acquired
 * again at 10, b at 20 and 21. Load seconds per GiB: a and b 102.4, c 163.84, d 153.6. */
struct tiny {
    struct run r;
    struct larder__pstat a, b, c, d;
};

static void tiny_start(struct tiny *t, const char *policy)
{
    t->r = open_policy(policy);
    t->a = define(40, 4, 0);
    t->b = define(10, 1, 0);
    t->c = define(50, 8, 0);
    t->d = define(20, 3, 0);
    cold(&t->r, &t->b, 1);
    cold(&t->r, &t->a, 4);
    cold(&t->r, &t->c, 8);
    acquire(&t->r, &t->a, 10);
    acquire(&t->r, &t->b, 20);
    acquire(&t->r, &t->b, 21);
}

/* lru: t=30 evicts c (last used at 8 < a 10 < b 21); d loads, b is acquired at 40;
 * t=50 c is back and evicts a (10 < d 33 < b 40). */
static void test_hand_worked_lru(void **state)
{
    struct tiny t;

    (void)state;
    tiny_start(&t, "lru");
    struct larder__pstat *first[] = {&t.a, &t.b, &t.c};
    assert_ptr_equal(first[victim(&t.r, first, 3, 30)], &t.c);
    t.r.p->on_evict(t.r.state, &t.c, 30);
    cold(&t.r, &t.d, 33);
    acquire(&t.r, &t.b, 40);
    struct larder__pstat *second[] = {&t.a, &t.b, &t.d};
    assert_ptr_equal(second[victim(&t.r, second, 3, 50)], &t.a);
    free(t.r.state);
}

/* cost (value = expected requests per second over the next H seconds x load seconds per
 * GiB; H = 600 s before any eviction; a first acquire means memoryless gaps of 1800 s):
 *   t=30  a: its one gap (6 s) only raises the hazard below 10 s; idle 20 s: 1/1800 per s,
 *            x 102.4 = 0.0569
 *         b: gaps of 19 and 1 s; idle 9 s: 1.070 requests in 600 s, x 102.4 = 0.1825
 *         c: 1/1800 per s, x 163.84 = 0.0910
 *   so cost evicts a, not c: c is slower to reload per byte. That eviction (a idle 20 s)
 *   shortens H to 505.9 s. d loads (acquired at 33), b is acquired at 40, c at 50.
 *   t=60  a is back: b 0.2353, c 0.3163, d 153.6/1800 = 0.0853: cost evicts d. */
static void test_hand_worked_cost(void **state)
{
    struct tiny t;

    (void)state;
    tiny_start(&t, "cost");
    struct larder__pstat *first[] = {&t.a, &t.b, &t.c};
    assert_ptr_equal(first[victim(&t.r, first, 3, 30)], &t.a);
    t.r.p->on_evict(t.r.state, &t.a, 30);
    cold(&t.r, &t.d, 33);
    acquire(&t.r, &t.b, 40);
    acquire(&t.r, &t.c, 50);
    struct larder__pstat *second[] = {&t.b, &t.c, &t.d};
    assert_ptr_equal(second[victim(&t.r, second, 3, 60)], &t.d);
    /* the order of the other two, and how far below them d is */
    assert_true(score(&t.r, &t.b, 60) < score(&t.r, &t.c, 60));
    assert_true(score(&t.r, &t.d, 60) < score(&t.r, &t.b, 60));
    free(t.r.state);
}

/* ---- threads -------------------------------------------------------------------------- */

struct hitter {
    const struct run *r;
    struct larder__pstat s;
};

static void *hit_loop(void *arg)
{
    struct hitter *h = arg;

    for (int i = 0; i < 20000; i++)
        acquire(h->r, &h->s, i * 0.5);
    return NULL;
}

/* on_hit runs for different components at once, beside score and on_evict of others
 * (under the manager lock); under TSan this proves the policy shares nothing unguarded. */
static void test_concurrent_hooks(void **state)
{
    static const char *const names[] = {"lru", "cost"};

    (void)state;
    for (size_t k = 0; k < 2; k++) {
        struct run r = open_policy(names[k]);
        struct hitter h[2] = {{&r, define(10, 1, 0)}, {&r, define(20, 2, 0)}};
        struct larder__pstat other = define(30, 3, 0);
        pthread_t th[2];

        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_create(&th[i], NULL, hit_loop, &h[i]), 0);
        for (int i = 0; i < 2000; i++) {
            cold(&r, &other, i);
            (void)score(&r, &other, i + 0.5);
            r.p->on_evict(r.state, &other, i + 0.5);
        }
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(h[0].s.hits, 20000);
        assert_false(isnan(score(&r, &h[1].s, 1e4)));
        free(r.state);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_lru_recency),
        cmocka_unit_test(test_lru_priority),
        cmocka_unit_test(test_cost_frequency),
        cmocka_unit_test(test_cost_size),
        cmocka_unit_test(test_cost_load_time),
        cmocka_unit_test(test_cost_priority),
        cmocka_unit_test(test_cost_aging),
        cmocka_unit_test(test_cost_burst),
        cmocka_unit_test(test_cost_history_survives_eviction),
        cmocka_unit_test(test_cost_ttl_unload_keeps_horizon),
        cmocka_unit_test(test_cost_preload),
        cmocka_unit_test(test_cost_odd_inputs),
        cmocka_unit_test(test_hand_worked_lru),
        cmocka_unit_test(test_hand_worked_cost),
        cmocka_unit_test(test_concurrent_hooks),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
