/* Failures: loads that fail (every waiter told, cooldown, retry), loads that outlast the
 * caller's timeout, fail-then-succeed, and fallbacks on failure, on a component larger
 * than the budget and on timeout; fallback chains and cycles. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define BUDGET 1000000ULL
#define WAITERS 8

static larder *open_with_cooldown(struct evlog *log, int64_t min_ms, int64_t max_ms)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.cooldown_min_ms = min_ms;
    o.cooldown_max_ms = max_ms;
    return open_manager(BUDGET, log, &o);
}

struct waiter {
    larder *m;
    const char *name;
    int rc;
    larder_lease *lease;
};

static void *wait_for(void *arg)
{
    struct waiter *w = arg;
    w->rc = fake_acquire(w->m, w->name, patience_ms(), &w->lease);
    return NULL;
}

/* Polls acquire until it returns something other than ECOOLDOWN. Returns that result;
 * counts the ECOOLDOWN answers and checks none of them ran a load. */
static int acquire_after_cooldown(larder *m, struct fake *f, int *ret_cooldowns,
                                  larder_lease **ret_lease)
{
    int calls = atomic_load(&f->load_calls);
    double end = now_ms() + patience_ms();
    int rc;
    *ret_cooldowns = 0;
    while ((rc = fake_acquire(m, f->name, patience_ms(), ret_lease)) == LARDER_ECOOLDOWN) {
        if (atomic_load(&f->load_calls) != calls)
            fail_msg("a load ran while %s answered ECOOLDOWN", f->name);
        (*ret_cooldowns)++;
        if (now_ms() > end)
            fail_msg("%s stayed in cooldown past the test's patience", f->name);
        sleep_ms(5);
    }
    return rc;
}

static void test_fail_always(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_with_cooldown(log, 200, 400);
    struct fake *f = fake_new("bad", &(struct fake_spec){.estimate = 1000, .gated = true,
                                                         .fail_first = FAKE_FAIL_ALWAYS});
    assert_ok(fake_define(m, f, false));
    struct waiter w[WAITERS];
    pthread_t tid[WAITERS];
    for (int k = 0; k < WAITERS; k++) {
        w[k] = (struct waiter){.m = m, .name = "bad"};
        assert_int_equal(pthread_create(&tid[k], NULL, wait_for, &w[k]), 0);
    }
    bool gated = fake_wait_gated(f, 1, patience_ms());
    bool queued = gated && wait_waiters(m, "bad", WAITERS, patience_ms());
    fake_gate(f, true);
    for (int k = 0; k < WAITERS; k++)
        pthread_join(tid[k], NULL);
    assert_true(gated);
    assert_true(queued);
    /* One load, and every waiter got its failure. */
    assert_int_equal(atomic_load(&f->load_calls), 1);
    for (int k = 0; k < WAITERS; k++)
        assert_err(w[k].rc, LARDER_ELOAD);
    assert_true(evlog_wait(log, LARDER_EVENT_LOAD_FAIL, "bad", 1, patience_ms()));
    assert_int_equal(evlog_count(log, LARDER_EVENT_LOAD_FAIL, "bad"), 1);
    assert_int_equal(evlog_count(log, LARDER_EVENT_LOAD_DONE, "bad"), 0);

    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(m, &s));
    const struct larder_component_info *c = &s->components[0];
    assert_int_equal(c->state, LARDER_STATE_FAILED);
    assert_int_equal(c->failures, 1);
    assert_int_equal(c->loads, 0);
    assert_int_equal(c->reserved_bytes, 0);
    assert_int_equal(c->leases, 0);
    assert_true(c->last_error != 0);
    assert_non_null(c->last_error_message);
    assert_string_equal(c->last_error_message, FAKE_LOAD_MESSAGE);
    assert_true(c->cooldown_ms >= 0 && c->cooldown_ms <= 400);
    assert_int_equal(s->reserved_bytes, 0);
    larder_snapshot_free(s);

    /* During the cooldown: fail fast, no load; after it: one more real try. */
    int cooldowns = 0;
    larder_lease *l = NULL;
    assert_err(acquire_after_cooldown(m, f, &cooldowns, &l), LARDER_ELOAD);
    assert_true(cooldowns >= 1);
    assert_int_equal(atomic_load(&f->load_calls), 2);
    struct larder_component_info i;
    assert_true(comp_info(m, "bad", &i));
    assert_int_equal(i.failures, 2);
    assert_true(i.cooldown_ms >= 0 && i.cooldown_ms <= 400);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
    evlog_free(log);
}

static void test_fail_then_succeed(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_with_cooldown(log, 50, 100);
    struct fake *f = fake_new("flaky", &(struct fake_spec){.estimate = 1000, .fail_first = 2});
    assert_ok(fake_define(m, f, false));
    larder_lease *l = NULL;
    assert_err(fake_acquire(m, "flaky", patience_ms(), &l), LARDER_ELOAD);
    int cooldowns;
    assert_err(acquire_after_cooldown(m, f, &cooldowns, &l), LARDER_ELOAD);
    assert_ok(acquire_after_cooldown(m, f, &cooldowns, &l));
    assert_true(larder_lease_cold_start(l));
    assert_ptr_equal(fake_of(l), f);
    assert_int_equal(atomic_load(&f->load_calls), 3);
    struct larder_component_info i;
    assert_true(comp_info(m, "flaky", &i));
    assert_int_equal(i.state, LARDER_STATE_READY);
    assert_int_equal(i.failures, 2);
    assert_int_equal(i.loads, 1);
    assert_int_equal(i.last_error, 0);
    assert_int_equal(i.cooldown_ms, 0);
    assert_true(evlog_wait(log, LARDER_EVENT_LOAD_DONE, "flaky", 1, patience_ms()));
    assert_int_equal(evlog_count(log, LARDER_EVENT_LOAD_FAIL, "flaky"), 2);
    assert_int_equal(evlog_count(log, LARDER_EVENT_LOAD_DONE, "flaky"), 1);
    fake_release(l);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
    evlog_free(log);
}

/* A load slower than the caller's timeout: the caller gets ETIMEDOUT, the load goes on,
 * later callers join it instead of starting another, and after it a hit. */
static void test_timeout(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_manager(BUDGET, log, NULL);
    struct fake *f = fake_new("slow", &(struct fake_spec){.estimate = 1000, .gated = true});
    assert_ok(fake_define(m, f, false));
    larder_lease *l = NULL;
    int rc1 = fake_acquire(m, "slow", 50, &l);
    struct larder_component_info i;
    bool seen = comp_info(m, "slow", &i);
    int rc2 = fake_acquire(m, "slow", 20, &l);
    int rc3 = fake_acquire(m, "slow", LARDER_NO_WAIT, &l);
    fake_gate(f, true);
    assert_err(rc1, LARDER_ETIMEDOUT);
    assert_err(rc2, LARDER_ETIMEDOUT);
    assert_err(rc3, LARDER_ETIMEDOUT);
    assert_true(seen);
    assert_int_equal(i.state, LARDER_STATE_LOADING);
    assert_int_equal(i.leases, 0);
    assert_true(evlog_wait(log, LARDER_EVENT_LOAD_DONE, "slow", 1, patience_ms()));
    assert_ok(fake_acquire(m, "slow", LARDER_NO_WAIT, &l));
    assert_false(larder_lease_cold_start(l));
    assert_int_equal(atomic_load(&f->load_calls), 1);
    assert_true(comp_info(m, "slow", &i));
    assert_int_equal(i.leases, 1);
    assert_int_equal(i.waiters, 0);
    fake_release(l);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
    evlog_free(log);
}

/* A component whose every load fails. */
static struct fake *failing(const char *name)
{
    return fake_new(name, &(struct fake_spec){.estimate = 100, .fail_first = FAKE_FAIL_ALWAYS});
}

static void define_with_fallback(larder *m, struct fake *f, const char *fallback,
                                 uint64_t memory_bytes)
{
    struct larder_component_opts o;
    fake_opts(f, false, &o);
    o.fallback = fallback;
    o.memory_bytes = memory_bytes;
    assert_ok(larder_define(m, f->name, &o));
}

static void expect_served_by(larder *m, const char *name, struct fake *by)
{
    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, name, patience_ms(), &l));
    assert_string_equal(larder_lease_requested(l), name);
    assert_string_equal(larder_lease_served_by(l), by->name);
    assert_ptr_equal(fake_of(l), by);
    fake_release(l);
}

static unsigned fallback_events(struct evlog *log, const char *name, const char *detail)
{
    unsigned n = 0;
    struct evrec r;
    for (size_t k = 0; evlog_get(log, k, &r); k++)
        n += r.type == LARDER_EVENT_FALLBACK && strcmp(r.name, name) == 0 &&
             strcmp(r.detail, detail) == 0;
    return n;
}

/* "big" always fails to load; its fallback "lite" loads. */
static void define_big_and_lite(larder *m, uint64_t big_estimate, struct fake **ret_big,
                                struct fake **ret_lite)
{
    *ret_big = fake_new("big", &(struct fake_spec){.estimate = big_estimate,
                                                   .fail_first = FAKE_FAIL_ALWAYS});
    *ret_lite = fake_new("lite", &(struct fake_spec){.estimate = 100});
    define_with_fallback(m, *ret_big, "lite", 0);
    assert_ok(fake_define(m, *ret_lite, false));
}

static void test_fallback_on_failure(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_with_cooldown(log, 60000, 60000);
    struct fake *big, *lite;
    define_big_and_lite(m, 5000, &big, &lite);
    expect_served_by(m, "big", lite);            /* the load failed */
    expect_served_by(m, "big", lite);            /* in cooldown */
    expect_served_by(m, "lite", lite);           /* and lite is itself */
    assert_int_equal(atomic_load(&big->load_calls), 1);
    assert_int_equal(fallback_events(log, "big", "lite"), 2);
    struct larder_component_info i;
    assert_true(comp_info(m, "lite", &i));
    assert_int_equal(i.fallbacks_served, 2);
    assert_true(comp_info(m, "big", &i));
    assert_int_equal(i.state, LARDER_STATE_FAILED);
    assert_int_equal(i.fallbacks_served, 0);
    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(m, &s));
    assert_string_equal(s->components[0].name, "big");
    assert_non_null(s->components[0].fallback);
    assert_string_equal(s->components[0].fallback, "lite");
    larder_snapshot_free(s);
    larder_close(m);
    fake_assert_clean(big);
    fake_assert_clean(lite);
    fake_free(big);
    fake_free(lite);
    evlog_free(log);
}

static void test_fallback_on_toobig(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_manager(BUDGET, log, NULL);
    struct fake *huge = fake_new("huge", &(struct fake_spec){.estimate = 100});
    struct fake *alone = fake_new("alone", &(struct fake_spec){.estimate = 100});
    struct fake *lite = fake_new("lite", &(struct fake_spec){.estimate = 100});
    define_with_fallback(m, huge, "lite", 5 * BUDGET);
    define_with_fallback(m, alone, NULL, BUDGET + 1);
    assert_ok(fake_define(m, lite, false));
    expect_served_by(m, "huge", lite);
    assert_int_equal(fallback_events(log, "huge", "lite"), 1);
    larder_lease *l = NULL;
    assert_err(fake_acquire(m, "alone", patience_ms(), &l), LARDER_ETOOBIG);
    /* Neither was ever loaded: the estimate alone rules them out. */
    assert_int_equal(atomic_load(&huge->load_calls), 0);
    assert_int_equal(atomic_load(&alone->load_calls), 0);
    struct larder_component_info i;
    assert_true(comp_info(m, "lite", &i));
    assert_int_equal(i.fallbacks_served, 1);
    larder_close(m);
    fake_assert_clean(lite);
    fake_free(huge);
    fake_free(alone);
    fake_free(lite);
    evlog_free(log);
}

static void test_fallback_on_timeout(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_manager(BUDGET, log, NULL);
    struct fake *slow = fake_new("slow", &(struct fake_spec){.estimate = 1000, .gated = true});
    struct fake *lite = fake_new("lite", &(struct fake_spec){.estimate = 100});
    define_with_fallback(m, slow, "lite", 0);
    assert_ok(fake_define(m, lite, false));
    assert_ok(larder_preload(m, "lite"));
    assert_true(wait_state(m, "lite", LARDER_STATE_READY, patience_ms()));

    larder_lease *l = NULL;
    int rc = fake_acquire(m, "slow", 50, &l);
    const char *by = rc == 0 ? larder_lease_served_by(l) : "";
    bool by_lite = rc == 0 && strcmp(by, "lite") == 0;
    fake_release(l);
    fake_gate(slow, true);
    assert_ok(rc);
    assert_true(by_lite);
    assert_int_equal(fallback_events(log, "slow", "lite"), 1);
    assert_true(evlog_wait(log, LARDER_EVENT_LOAD_DONE, "slow", 1, patience_ms()));
    expect_served_by(m, "slow", slow);
    assert_int_equal(atomic_load(&slow->load_calls), 1);
    larder_close(m);
    fake_assert_clean(slow);
    fake_assert_clean(lite);
    fake_free(slow);
    fake_free(lite);
    evlog_free(log);
}

static void test_fallback_chain(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_with_cooldown(log, 60000, 60000);
    struct fake *a = failing("a");
    struct fake *b = failing("b");
    struct fake *c = fake_new("c", &(struct fake_spec){.estimate = 100});
    define_with_fallback(m, c, NULL, 0);
    define_with_fallback(m, b, "c", 0);
    define_with_fallback(m, a, "b", 0);
    expect_served_by(m, "a", c);
    assert_int_equal(atomic_load(&a->load_calls), 1);
    assert_int_equal(atomic_load(&b->load_calls), 1);
    struct larder_component_info i;
    assert_true(comp_info(m, "c", &i));
    assert_int_equal(i.fallbacks_served, 1);

    /* When the whole chain fails, the caller gets the component's own error. */
    struct fake *d = failing("d");
    struct fake *e = failing("e");
    define_with_fallback(m, e, NULL, 0);
    define_with_fallback(m, d, "e", 0);
    larder_lease *l = NULL;
    assert_err(fake_acquire(m, "d", patience_ms(), &l), LARDER_ELOAD);
    assert_int_equal(atomic_load(&d->load_calls), 1);
    assert_int_equal(atomic_load(&e->load_calls), 1);
    larder_close(m);
    fake_free(e);
    fake_assert_clean(c);
    fake_free(a);
    fake_free(b);
    fake_free(c);
    fake_free(d);
    evlog_free(log);
}

/* x -> y -> x: refused at define, or handled at acquire (no endless loop, one load each). */
static void test_fallback_cycle(void **state)
{
    larder *m = open_with_cooldown(NULL, 60000, 60000);
    struct fake *x = failing("x");
    struct fake *y = failing("y");
    struct fake *s = failing("s");
    struct larder_component_opts o;
    fake_opts(s, false, &o);
    o.fallback = "s";
    int rc = larder_define(m, "s", &o);
    if (rc == 0) {
        larder_lease *l = NULL;
        rc = fake_acquire(m, "s", patience_ms(), &l);
        assert_true(rc == LARDER_ECYCLE || rc == LARDER_ELOAD);
        assert_int_equal(atomic_load(&s->load_calls), 1);
    } else {
        assert_true(rc == LARDER_ECYCLE || rc == -EINVAL);
    }

    fake_opts(x, false, &o);
    o.fallback = "y";
    int rx = larder_define(m, "x", &o);
    fake_opts(y, false, &o);
    o.fallback = "x";
    int ry = larder_define(m, "y", &o);
    if (rx == 0 && ry == 0) {
        larder_lease *l = NULL;
        rc = fake_acquire(m, "x", patience_ms(), &l);
        assert_true(rc == LARDER_ECYCLE || rc == LARDER_ELOAD);
        assert_true(atomic_load(&x->load_calls) <= 1);
        assert_true(atomic_load(&y->load_calls) <= 1);
        rc = fake_acquire(m, "y", patience_ms(), &l);
        assert_true(rc == LARDER_ECYCLE || rc == LARDER_ELOAD || rc == LARDER_ECOOLDOWN);
    } else if (rx == 0) {
        assert_err(ry, LARDER_ECYCLE);
    } else {
        /* Fallbacks must name defined components: then no cycle can be built. */
        assert_true(rx == LARDER_ENOTFOUND || rx == -EINVAL);
    }
    larder_close(m);
    fake_free(x);
    fake_free(y);
    fake_free(s);
}

/* Refusals (larger than the budget at admission or once measured, no room in time)
 * count as failures of the component, without a cooldown. */
static void test_refusals_count_as_failures(void **state)
{
    struct evlog *log = evlog_new();
    struct larder_opts o;
    larder_opts_init(&o);
    o.admission_timeout_ms = 0;
    larder *m = open_manager(BUDGET, log, &o);
    struct fake *huge = fake_new("huge", &(struct fake_spec){.estimate = 100});
    struct fake *grows = fake_new("grows", &(struct fake_spec){.estimate = 100,
                                                               .measured = 5 * BUDGET});
    struct fake *fill = fake_new("fill", &(struct fake_spec){.estimate = BUDGET});
    struct fake *late = fake_new("late", &(struct fake_spec){.estimate = 100});
    define_with_fallback(m, huge, NULL, 5 * BUDGET);
    assert_ok(fake_define(m, grows, false));
    assert_ok(fake_define(m, fill, false));
    assert_ok(fake_define(m, late, false));
    larder_lease *l = NULL, *held = NULL;
    assert_err(fake_acquire(m, "huge", patience_ms(), &l), LARDER_ETOOBIG);
    assert_err(fake_acquire(m, "huge", patience_ms(), &l), LARDER_ETOOBIG);
    assert_err(fake_acquire(m, "grows", patience_ms(), &l), LARDER_ETOOBIG);
    assert_ok(fake_acquire(m, "fill", patience_ms(), &held));
    assert_err(fake_acquire(m, "late", patience_ms(), &l), LARDER_ENOSPC);
    const char *names[] = {"huge", "grows", "late"};
    const uint64_t want[] = {2, 1, 1};
    for (int k = 0; k < 3; k++) {
        struct larder_component_info i;
        assert_true(comp_info(m, names[k], &i));
        assert_int_equal(i.failures, want[k]);
        assert_int_equal(i.state, LARDER_STATE_UNLOADED);
        assert_int_equal(i.reserved_bytes, 0);
    }
    assert_int_equal(atomic_load(&grows->loads), 1); /* measured, then given back */
    fake_release(held);
    larder_close(m);
    fake_assert_clean(grows);
    fake_free(huge);
    fake_free(grows);
    fake_free(fill);
    fake_free(late);
    evlog_free(log);
}

struct answer {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int err;
};

static void on_answer(void *ud, int err, larder_lease *lease)
{
    struct answer *a = ud;
    if (lease)
        fake_lease_take(lease);
    fake_release(lease);
    pthread_mutex_lock(&a->lock);
    a->done = true;
    a->err = err;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

/* larder_acquire_async_flags, then waits for its answer. */
static int acquire_async_wait(larder *m, const char *name, unsigned flags)
{
    struct answer a = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    assert_ok(larder_acquire_async_flags(m, name, patience_ms(), flags, on_answer, &a));
    pthread_mutex_lock(&a.lock);
    while (!a.done)
        pthread_cond_wait(&a.cond, &a.lock);
    pthread_mutex_unlock(&a.lock);
    return a.err;
}

static unsigned all_fallback_events(struct evlog *log)
{
    return evlog_count(log, LARDER_EVENT_FALLBACK, NULL);
}

/* A fallback event says a fallback served: none when the whole chain failed, whether
 * it failed to load, was in cooldown or was refused, blocking or async. */
static void test_no_fallback_event_without_a_lease(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_with_cooldown(log, 60000, 60000);
    struct fake *a = failing("a");
    struct fake *b = failing("b");
    struct fake *big = fake_new("big", &(struct fake_spec){.estimate = 100});
    struct fake *p = failing("p");
    struct fake *q = failing("q");
    define_with_fallback(m, b, NULL, 0);
    define_with_fallback(m, a, "b", 0);
    define_with_fallback(m, big, NULL, 5 * BUDGET);
    define_with_fallback(m, p, "big", 0);
    define_with_fallback(m, q, "b", 0);
    larder_lease *l = NULL;
    assert_err(fake_acquire(m, "a", patience_ms(), &l), LARDER_ELOAD);   /* both fail */
    assert_err(fake_acquire(m, "a", patience_ms(), &l), LARDER_ECOOLDOWN); /* both cool */
    assert_err(fake_acquire(m, "p", patience_ms(), &l), LARDER_ETOOBIG); /* big refused */
    assert_err(acquire_async_wait(m, "q", 0), LARDER_ECOOLDOWN); /* q fails, b cools down */
    assert_err(acquire_async_wait(m, "a", 0), LARDER_ECOOLDOWN);
    assert_int_equal(all_fallback_events(log), 0);
    /* and one when a fallback does serve */
    struct fake *c = fake_new("c", &(struct fake_spec){.estimate = 100});
    struct fake *d = failing("d");
    define_with_fallback(m, c, NULL, 0);
    define_with_fallback(m, d, "c", 0);
    assert_ok(acquire_async_wait(m, "d", 0));
    assert_int_equal(all_fallback_events(log), 1);
    assert_int_equal(fallback_events(log, "d", "c"), 1);
    larder_close(m);
    struct fake *all[] = {a, b, big, p, q, c, d};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) {
        fake_assert_clean(all[k]);
        fake_free(all[k]);
    }
    evlog_free(log);
}

/* LARDER_ACQUIRE_NO_FALLBACK: the component itself or its own error; no fallback is
 * loaded or served, no FALLBACK event. Flags 0 is the plain acquire. */
static void test_acquire_without_fallback(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_with_cooldown(log, 60000, 60000);
    struct fake *big, *lite;
    define_big_and_lite(m, 100, &big, &lite);
    larder_lease *l = NULL;
    assert_err(larder_acquire_flags(m, "big", patience_ms(), LARDER_ACQUIRE_NO_FALLBACK, &l),
               LARDER_ELOAD);
    assert_err(acquire_async_wait(m, "big", LARDER_ACQUIRE_NO_FALLBACK),
               LARDER_ECOOLDOWN);
    assert_int_equal(atomic_load(&lite->load_calls), 0);
    assert_int_equal(all_fallback_events(log), 0);
    assert_err(larder_acquire_flags(m, "big", 0, 0x80, &l), -EINVAL);
    assert_err(larder_acquire_async_flags(m, "big", 0, 0x80, on_answer, NULL), -EINVAL);
    /* flags 0: the fallback serves, as with larder_acquire */
    assert_ok(larder_acquire_flags(m, "big", patience_ms(), 0, &l));
    fake_lease_take(l);
    assert_string_equal(larder_lease_served_by(l), "lite");
    fake_release(l);
    assert_ok(acquire_async_wait(m, "big", 0));
    assert_int_equal(fallback_events(log, "big", "lite"), 2);
    /* the component itself serves with the flag when it can */
    assert_ok(larder_acquire_flags(m, "lite", patience_ms(), LARDER_ACQUIRE_NO_FALLBACK, &l));
    fake_lease_take(l);
    assert_string_equal(larder_lease_served_by(l), "lite");
    fake_release(l);
    larder_close(m);
    fake_assert_clean(big);
    fake_assert_clean(lite);
    fake_free(big);
    fake_free(lite);
    evlog_free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_always),         cmocka_unit_test(test_fail_then_succeed),
        cmocka_unit_test(test_timeout),             cmocka_unit_test(test_fallback_on_failure),
        cmocka_unit_test(test_fallback_on_toobig),  cmocka_unit_test(test_fallback_on_timeout),
        cmocka_unit_test(test_fallback_chain),      cmocka_unit_test(test_fallback_cycle),
        cmocka_unit_test(test_refusals_count_as_failures),
        cmocka_unit_test(test_no_fallback_event_without_a_lease),
        cmocka_unit_test(test_acquire_without_fallback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
