/* The trace replayer of bench/policy: text format, generator, simulation protocol, and a
 * tiny trace whose outcome under every policy is worked out by hand below. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "baselines.h"
#include "gen.h"
#include "replay.h"
#include "trace.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB (1ull << 20)

/* ---- helpers -------------------------------------------------------------------------- */

struct evictions {
    uint32_t comp[32];
    double at[32];
    size_t n;
};

static void record(void *ud, uint32_t comp, double now)
{
    struct evictions *e = ud;

    if (e->n < 32) {
        e->comp[e->n] = comp;
        e->at[e->n++] = now;
    }
}

static struct trace *parse(const char *text)
{
    struct trace *t = NULL;
    char err[128];

    assert_int_equal(trace_parse(text, "test", &t, err, sizeof(err)), 0);
    return t;
}

static bool same_requests(const struct trace *a, const struct trace *b)
{
    if (a->nreqs != b->nreqs)
        return false;
    for (size_t i = 0; i < a->nreqs; i++)
        if (a->reqs[i].t != b->reqs[i].t || a->reqs[i].dur != b->reqs[i].dur ||
            a->reqs[i].comp != b->reqs[i].comp)
            return false;
    return true;
}

/* Replays t under the policy called `name`, recording evictions into e (may be NULL). */
static struct replay_result replay(const struct trace *t, const char *name, uint64_t budget,
                                   struct evictions *e)
{
    struct bench_policy bp;
    struct replay_result r;

    assert_true(bench_policy_find(name, &bp));
    struct replay_opts o = {.budget = budget, .policy = bp.policy, .oracle = bp.oracle,
                            .on_evict = e ? record : NULL, .ud = e};
    assert_int_equal(replay_run(t, &o, &r), 0);
    return r;
}

/* ---- the hand-worked trace ------------------------------------------------------------ */

/* Budget 100 MiB. a, b, c fill it exactly; at t=30 d needs 20 MiB, so something goes.
 *
 *   load time per GiB ("density"): a 4/(40/1024) = 102.4, b 102.4, c 163.84, d 153.6
 *
 * Common start: a, b, c load at t=0 and are ready at 4, 1 and 8 (last_use then);
 * a is hit at 10, b at 20 and 21. At t=30: a last 10, b last 21, c last 8.
 *
 * lru: t=30 evicts c (last 8); d loads. t=40 b hit. t=50 c misses, reserved 70: evicts
 *   a (last 10 < d 33 < b 40). t=60 a misses, reserved 80: evicts d (33 < b 40 < c 58).
 *   Loads a b c d c a = 4+1+8+3+8+4 = 28 s; hits 10a 20b 21b 40b = 4.
 * cost: value = rate x density; rate = expected requests over the next H seconds / H,
 *   from each component's gap distribution (share of gaps reaching 10, 60, 300, 1800 s;
 *   first acquire: memoryless gaps of 1800 s, i.e. 1/1800 per second; then running
 *   means, gap number i weighing 1/(i+1)); H = 600 s until the first eviction.
 *   t=30  a: one gap of 6 s halves every share: only [0, 10) s gets a higher hazard;
 *            idle 20 s, so the next 600 s still see 1/1800 per s -> 102.4/1800 = 0.0569
 *         b: gaps of 19 s and 1 s: shares (0.665, 0.322, 0.282, 0.123) give hazards
 *            0.0408/s in [0, 10) and 0.0145/s in [10, 60); idle 9 s: 1 x 0.0408 +
 *            50 x 0.0145 + 240/1800 + 309/1800 = 1.070 requests in 600 s -> 0.1825
 *         c: first acquire only: 1/1800 per s -> 163.84/1800 = 0.0910
 *   evicts a; idle 20 s at eviction: H = exp(ln 600 + 0.05 (ln 20 - ln 600)) = 505.9 s.
 *   t=40 b, t=50 c hit. t=60 a misses, reserved 80:
 *         b (gaps 19, 1, 19; idle 20): 0.2353;  c (gap 42; idle 10): 0.3163;
 *         d (first acquire at 33 only): 153.6/1800 = 0.0853
 *   evicts d. Loads a b c d a = 20 s; hits 10a 20b 21b 40b 50c = 5.
 * gdsf: H = L + F x density. t=30 a 204.8, b 307.2, c 163.84: evicts c, L = 163.84;
 *   d = L + 153.6 = 317.44. t=40 b = L + 4 x 102.4 = 573.44. t=50: evicts a (204.8),
 *   L = 204.8, c = 368.64. t=60: evicts d (317.44). Same as lru: 28 s, 4 hits.
 * keepalive (a 600 s, b 300 s, c 900 s, d never): t=30 evicts b, then a (70 + 20 fits
 *   only then). t=40 b misses, fits. t=50 c hits. t=60 a misses, reserved 80: evicts b,
 *   then c. Loads a b c d b a = 21 s; hits 10a 20b 21b 50c = 4.
 * largest: t=30 evicts c (50). t=50 c misses: evicts a (40). t=60 a misses: evicts c.
 *   28 s, 4 hits.
 * idle-load (idle / load, highest first): t=30 a 20/4 = 5, b 9/1 = 9, c 22/8 = 2.75:
 *   evicts b, then a. t=40 b misses. t=50 c hits. t=60 a misses: b 19/1, c 10/8, d 27/3:
 *   evicts b, then d. 21 s, 4 hits.
 * oracle-rate (requests / 60 s x density): a 3 -> 5.12, b 4 -> 6.83, c 2 -> 5.46,
 *   d 1 -> 2.56. t=30 evicts a. t=40 b, t=50 c hit. t=60 a misses: evicts d.
 *   Loads a b c d a = 20 s; hits 10a 20b 21b 40b 50c = 5.
 * offline-load (load / time to next use): t=30 a 4/30, b 1/10, c 8/20: evicts b, then a.
 *   t=40 b misses. t=50 c hits. t=60 a misses; nothing is used again: largest first, c.
 *   21 s, 4 hits.
 * offline (load / (time to next use x GiB^0.75)): t=30 a 4/(30 x 0.088) = 1.5,
 *   b 1/(10 x 0.031) = 3.2, c 8/(20 x 0.104) = 3.9: evicts a. t=40 b, t=50 c hit.
 *   t=60 a misses: evicts c (largest of the never used again). 20 s, 5 hits.
 */
static const char tiny[] = "# hand-worked\n"
                           "component a 40M 4 ttl=600000\n"
                           "component b 10M 1 ttl=300000\n"
                           "component c 50M 8 ttl=900000\n"
                           "component d 20M 3\n"
                           "0 a\n0 b\n0 c\n10 a\n20 b\n21 b\n30 d\n40 b\n50 c\n60 a\n";

struct expected {
    const char *policy;
    double cold_s;
    uint64_t hits;
    const char *victims; /* one letter per eviction, in order */
    double at[4];        /* when each happened */
};

static const struct expected tiny_expected[] = {
    {"lru", 28, 4, "cad", {30, 50, 60}},
    {"cost", 20, 5, "ad", {30, 60}},
    {"gdsf", 28, 4, "cad", {30, 50, 60}},
    {"keepalive", 21, 4, "babc", {30, 30, 60, 60}},
    {"largest", 28, 4, "cac", {30, 50, 60}},
    {"idle-load", 21, 4, "babd", {30, 30, 60, 60}},
    {"oracle-rate", 20, 5, "ad", {30, 60}},
    {"offline-load", 21, 4, "bac", {30, 30, 60}},
    {"offline", 20, 5, "ac", {30, 60}},
};

static void check_tiny(const struct expected *x)
{
    struct trace *t = parse(tiny);
    struct evictions e = {0};
    struct replay_result r = replay(t, x->policy, 100 * MIB, &e);
    size_t n = strlen(x->victims);

    print_message("%s: %.1f s, %llu hits, %zu evictions\n", x->policy, r.cold_s,
                  (unsigned long long)r.hits, e.n);
    assert_int_equal(r.requests, 10);
    assert_int_equal(r.rejected, 0);
    assert_true(fabs(r.cold_s - x->cold_s) < 1e-9);
    assert_int_equal(r.hits, x->hits);
    assert_int_equal(r.loads, r.requests - r.hits);
    assert_int_equal(r.evictions, n);
    assert_int_equal(e.n, n);
    for (size_t i = 0; i < n; i++) {
        char want[2] = {x->victims[i], '\0'};

        assert_string_equal(t->comps[e.comp[i]].name, want);
        assert_true(fabs(e.at[i] - x->at[i]) < 1e-9);
    }
    trace_free(t);
}

static void test_tiny_every_policy(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(tiny_expected) / sizeof(tiny_expected[0]); i++)
        check_tiny(&tiny_expected[i]);
}

/* Every policy a standard run compares has its hand-worked outcome above. */
static void test_tiny_covers_all(void **state)
{
    (void)state;
    for (size_t i = 0; bench_policy_names[i]; i++) {
        bool found = false;

        for (size_t k = 0; k < sizeof(tiny_expected) / sizeof(tiny_expected[0]); k++)
            found |= strcmp(tiny_expected[k].policy, bench_policy_names[i]) == 0;
        assert_true(found);
    }
    assert_true(bench_policy_find(bench_reference, &(struct bench_policy){0}));
}

/* ---- protocol ------------------------------------------------------------------------- */

/* Requests that arrive while a load runs share it: one load, every waiter served when it
 * ends, each waiting from its own arrival. */
static void test_single_flight(void **state)
{
    struct trace *t = parse("component m 10M 5\n0 m\n1 m\n2 m 3\n9 m\n");
    struct replay_result r = replay(t, "lru", 100 * MIB, NULL);

    (void)state;
    assert_int_equal(r.loads, 1);
    assert_true(fabs(r.cold_s - 5) < 1e-9);
    assert_int_equal(r.hits, 1);                      /* only t=9 */
    assert_true(fabs(r.wait_s - (5 + 4 + 3)) < 1e-9); /* served at 5 */
    assert_true(fabs(r.end - 9) < 1e-9);              /* the lease from 5 + 3 ends at 8 */
    trace_free(t);
}

/* A leased component is never evicted: the load waits until the lease returns, and only
 * then evicts. */
static void test_lease_blocks_eviction(void **state)
{
    struct trace *t = parse("component x 60M 1\ncomponent y 60M 2\n0 x 10\n3 y\n");
    struct evictions e = {0};
    struct replay_result r = replay(t, "lru", 100 * MIB, &e);

    (void)state;
    assert_int_equal(r.loads, 2);
    assert_int_equal(e.n, 1);
    assert_true(fabs(e.at[0] - 11) < 1e-9); /* x served at 1, leased until 11 */
    assert_true(fabs(r.wait_s - (1 + (11 - 3) + 2)) < 1e-9);
    trace_free(t);
}

/* Pinned components are never offered; what cannot fit beside them is never served. */
static void test_pin_and_too_big(void **state)
{
    struct trace *t = parse("component p 70M 1 pin\ncomponent q 40M 1\ncomponent big 200M 1\n"
                            "0 p\n5 q\n6 big\n");
    struct evictions e = {0};
    struct replay_result r = replay(t, "lru", 100 * MIB, &e);

    (void)state;
    assert_int_equal(e.n, 0);
    assert_int_equal(r.loads, 1);
    assert_int_equal(r.rejected, 2);
    trace_free(t);
}

/* Priorities reach the policies: lru keeps the higher-priority component even though it
 * was used longer ago. */
static void test_priority_reaches_policy(void **state)
{
    struct trace *t = parse("component hi 50M 1 priority=5\ncomponent lo 50M 1\n"
                            "component n 50M 1\n0 hi\n1 lo\n5 n\n");
    struct evictions e = {0};

    (void)state;
    replay(t, "lru", 100 * MIB, &e);
    assert_int_equal(e.n, 1);
    assert_string_equal(t->comps[e.comp[0]].name, "lo");
    trace_free(t);
}

static void test_bad_options(void **state)
{
    struct trace *t = parse("component m 1M 1\n0 m\n");
    struct replay_opts o = {.budget = 0, .policy = larder__policy_find("lru")};
    struct replay_result r;

    (void)state;
    assert_int_equal(replay_run(t, &o, &r), -EINVAL);
    o.budget = MIB;
    o.policy = NULL;
    assert_int_equal(replay_run(t, &o, &r), -EINVAL);
    assert_int_equal(replay_run(NULL, &o, &r), -EINVAL);
    trace_free(t);
}

/* ---- text format ---------------------------------------------------------------------- */

static void test_parse_fields(void **state)
{
    struct trace *t = parse("  # comment\n\ncomponent ocr 15MiB 0.25 priority=-2 ttl=0 pin\n"
                            "component lm 2G 20   # trailing comment\n"
                            "0.5 ocr\n0.5 lm 1.25\n");

    (void)state;
    assert_int_equal(t->ncomps, 2);
    assert_int_equal(t->comps[0].bytes, 15 * MIB);
    assert_true(t->comps[0].load_s == 0.25);
    assert_int_equal(t->comps[0].priority, -2);
    assert_int_equal(t->comps[0].ttl_ms, 0);
    assert_true(t->comps[0].pin);
    assert_int_equal(t->comps[1].bytes, 2048 * MIB);
    assert_int_equal(t->comps[1].ttl_ms, -1);
    assert_false(t->comps[1].pin);
    assert_int_equal(t->nreqs, 2);
    assert_true(t->reqs[1].t == 0.5 && t->reqs[1].dur == 1.25 && t->reqs[1].comp == 1);
    assert_true(t->reqs[0].dur == 0);
    assert_int_equal(trace_total_bytes(t), 2063 * MIB);
    trace_free(t);
}

static void expect_error(const char *text, const char *what)
{
    struct trace *t = NULL;
    char err[128];

    assert_int_equal(trace_parse(text, "bad", &t, err, sizeof(err)), -EINVAL);
    assert_null(t);
    assert_non_null(strstr(err, what));
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_error("component a 1M 1\n1 b\n", "line 2: unknown component 'b'");
    expect_error("component a 1M 1\n2 a\n1 a\n", "line 3: time 1 goes back");
    expect_error("component a 1X 1\n", "bad size");
    expect_error("component a 0 1\n", "bad size");
    expect_error("component a 1M -1\n", "bad load time");
    expect_error("component a 1M 1\ncomponent a 2M 1\n", "declared twice");
    expect_error("component a 1M 1 colour=red\n", "unknown attribute");
    expect_error("component a 1M\n", "needs NAME BYTES LOAD_SECONDS");
    expect_error("component a 1M 1\nsoon a\n", "bad time 'soon'");
    expect_error("component a 1M 1\n1 a 2 3\n", "extra fields");
    expect_error("component a 1M 1\n1 a nan\n", "bad duration");
}

static void test_size_parser(void **state)
{
    uint64_t v = 0;

    (void)state;
    assert_int_equal(trace_parse_size("123", &v), 0);
    assert_int_equal(v, 123);
    assert_int_equal(trace_parse_size("3K", &v), 0);
    assert_int_equal(v, 3072);
    assert_int_equal(trace_parse_size("2GiB", &v), 0);
    assert_int_equal(v, 2ull << 30);
    assert_int_equal(trace_parse_size("1T", &v), -EINVAL);
    assert_int_equal(trace_parse_size("-1", &v), -EINVAL);
    assert_int_equal(trace_parse_size("99999999999999999999", &v), -ERANGE);
    assert_int_equal(trace_parse_size("17179869184G", &v), -ERANGE);
}

/* Writing a trace and reading it back gives the same trace, to the last bit. */
static void test_round_trip(void **state)
{
    struct gen_params p;
    struct trace *t, *back;
    char *buf = NULL, err[128];
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    (void)state;
    assert_int_equal(gen_defaults("pipeline", &p), 0);
    p.hours = 2;
    assert_int_equal(gen_trace(&p, "pipeline", &t), 0);
    assert_int_equal(trace_write(t, f), 0);
    fclose(f);
    assert_int_equal(trace_parse(buf, "pipeline", &back, err, sizeof(err)), 0);
    assert_int_equal(back->ncomps, t->ncomps);
    assert_int_equal(back->nreqs, t->nreqs);
    for (size_t i = 0; i < t->ncomps; i++) {
        assert_string_equal(back->comps[i].name, t->comps[i].name);
        assert_int_equal(back->comps[i].bytes, t->comps[i].bytes);
        assert_true(back->comps[i].load_s == t->comps[i].load_s);
    }
    assert_true(same_requests(back, t));
    free(buf);
    trace_free(back);
    trace_free(t);
}

/* ---- generator ------------------------------------------------------------------------ */

static void test_generator_standard(void **state)
{
    (void)state;
    for (size_t i = 0; gen_standard[i]; i++) {
        struct gen_params p;
        struct trace *t;

        assert_int_equal(gen_defaults(gen_standard[i], &p), 0);
        p.hours = 1;
        assert_int_equal(gen_trace(&p, gen_standard[i], &t), 0);
        assert_int_equal(t->ncomps, 50);
        assert_int_equal(t->comps[0].bytes, MIB);
        assert_true(t->comps[0].load_s == 0.005);
        assert_int_equal(t->comps[49].bytes, 2048 * MIB);
        assert_true(t->comps[49].load_s == 20);
        assert_true(t->nreqs > 100);
        for (size_t k = 0; k < t->ncomps; k++)
            assert_true(t->comps[k].load_s >= 0.005 && t->comps[k].load_s <= 20);
        for (size_t k = 1; k < t->nreqs; k++)
            assert_true(t->reqs[k - 1].t <= t->reqs[k].t);
        assert_true(t->reqs[t->nreqs - 1].t < 3600);
        trace_free(t);
    }
    assert_int_equal(gen_defaults("nonsense", &(struct gen_params){0}), -EINVAL);
}

/* Same parameters, same trace; another seed, another trace. */
static void test_generator_deterministic(void **state)
{
    struct gen_params p;
    struct trace *a, *b, *c;

    (void)state;
    gen_defaults("zipf-1.2", &p);
    p.hours = 1;
    assert_int_equal(gen_trace(&p, "x", &a), 0);
    assert_int_equal(gen_trace(&p, "x", &b), 0);
    p.seed = 2;
    assert_int_equal(gen_trace(&p, "x", &c), 0);
    assert_true(same_requests(a, b));
    assert_false(same_requests(a, c));
    trace_free(a);
    trace_free(b);
    trace_free(c);
}

/* The scan touches every component once; the pipeline acquires whole stages at once;
 * a shifted trace changes its most requested component. */
static void test_generator_shapes(void **state)
{
    struct gen_params p;
    struct trace *t;
    size_t same_time = 0;

    (void)state;
    gen_defaults("pipeline", &p);
    p.hours = 2;
    p.rate = 0.0001;
    assert_int_equal(gen_trace(&p, "pipeline", &t), 0);
    for (size_t k = 1; k < t->nreqs; k++)
        same_time += t->reqs[k].t == t->reqs[k - 1].t && t->reqs[k].dur >= 20;
    assert_true(same_time >= t->nreqs / 3);
    trace_free(t);

    gen_defaults("scan", &p);
    p.rate = 0.0001;
    assert_int_equal(gen_trace(&p, "scan", &t), 0);
    assert_true(t->nreqs >= 50);
    for (uint32_t c = 0; c < 50; c++) {
        size_t n = 0;

        for (size_t k = 0; k < t->nreqs; k++)
            n += t->reqs[k].comp == c;
        assert_true(n >= 1);
    }
    trace_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_every_policy),
        cmocka_unit_test(test_tiny_covers_all),
        cmocka_unit_test(test_single_flight),
        cmocka_unit_test(test_lease_blocks_eviction),
        cmocka_unit_test(test_pin_and_too_big),
        cmocka_unit_test(test_priority_reaches_policy),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_parse_fields),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_size_parser),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_generator_standard),
        cmocka_unit_test(test_generator_deterministic),
        cmocka_unit_test(test_generator_shapes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
