/* Set acquire: all or nothing; overlapping sets that do not fit together finish one
 * after the other instead of deadlocking; a set larger than the budget is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define U 1000ULL
#define BUDGET (100 * U)

/* Exclusive components (one instance each), so overlapping sets really contend. */
static struct fake *define_excl(larder *m, const char *name, uint64_t bytes, int fail_first)
{
    struct fake *f = fake_new(name, &(struct fake_spec){.estimate = bytes,
                                                        .fail_first = fail_first});
    struct larder_component_opts o;
    fake_opts(f, true, &o);
    o.max_instances = 1;
    assert_ok(larder_define(m, name, &o));
    return f;
}

static unsigned leases_of(larder *m, const char *name)
{
    struct larder_component_info i;
    assert_true(comp_info(m, name, &i));
    return i.leases;
}

static void take_all(larder_lease **l, size_t n)
{
    for (size_t k = 0; k < n; k++)
        fake_lease_take(l[k]);
}

static void release_all(larder_lease **l, size_t n)
{
    for (size_t k = 0; k < n; k++)
        l[k] = fake_release(l[k]);
}

static void test_all_or_nothing(void **state)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.cooldown_min_ms = 60000;
    o.cooldown_max_ms = 60000;
    larder *m = open_manager(BUDGET, NULL, &o);
    struct fake *a = define_excl(m, "a", 20 * U, 0);
    struct fake *b = define_excl(m, "b", 20 * U, 0);
    struct fake *bad = define_excl(m, "bad", 20 * U, FAKE_FAIL_ALWAYS);

    const char *ok_set[] = {"a", "b"};
    larder_lease *l[3] = {NULL, NULL, NULL};
    assert_ok(larder_acquire_set(m, ok_set, 2, patience_ms(), l));
    take_all(l, 2);
    assert_string_equal(larder_lease_served_by(l[0]), "a");
    assert_string_equal(larder_lease_served_by(l[1]), "b");
    assert_ptr_equal(fake_of(l[0]), a);
    assert_ptr_equal(fake_of(l[1]), b);
    release_all(l, 2);

    /* One member fails: no lease is kept, the out array is untouched. */
    larder_lease *sentinel = (larder_lease *)&sentinel;
    larder_lease *out[3] = {sentinel, sentinel, sentinel};
    const char *bad_set[] = {"a", "bad", "b"};
    assert_err(larder_acquire_set(m, bad_set, 3, patience_ms(), out), LARDER_ELOAD);
    for (int k = 0; k < 3; k++)
        assert_ptr_equal(out[k], sentinel);
    assert_int_equal(leases_of(m, "a"), 0);
    assert_int_equal(leases_of(m, "b"), 0);
    assert_err(larder_acquire_set(m, bad_set, 3, patience_ms(), out), LARDER_ECOOLDOWN);

    const char *unknown_set[] = {"a", "zzz"};
    assert_err(larder_acquire_set(m, unknown_set, 2, patience_ms(), out), LARDER_ENOTFOUND);
    assert_int_equal(leases_of(m, "a"), 0);
    for (int k = 0; k < 3; k++)
        assert_ptr_equal(out[k], sentinel);
    assert_err(larder_acquire_set(m, NULL, 2, 1000, out), -EINVAL);
    assert_err(larder_acquire_set(m, ok_set, 2, 1000, NULL), -EINVAL);

    /* A member held elsewhere: the set waits, then times out holding nothing. */
    larder_lease *held = NULL;
    assert_ok(fake_acquire(m, "b", patience_ms(), &held));
    assert_err(larder_acquire_set(m, ok_set, 2, 50, out), LARDER_ETIMEDOUT);
    assert_int_equal(leases_of(m, "a"), 0);
    assert_int_equal(leases_of(m, "b"), 1);
    fake_release(held);
    larder_close(m);
    fake_assert_clean(a);
    fake_assert_clean(b);
    fake_free(a);
    fake_free(b);
    fake_free(bad);
}

static void test_set_too_big(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f[3];
    const char *names[] = {"a", "b", "c"};
    for (int k = 0; k < 3; k++)
        f[k] = define_excl(m, names[k], 40 * U, 0);
    larder_lease *out[3] = {NULL, NULL, NULL};
    assert_err(larder_acquire_set(m, names, 3, patience_ms(), out), LARDER_ETOOBIG);
    for (int k = 0; k < 3; k++) {
        assert_null(out[k]);
        assert_int_equal(leases_of(m, names[k]), 0);
    }
    /* Two of them fit. */
    assert_ok(larder_acquire_set(m, names, 2, patience_ms(), out));
    take_all(out, 2);
    release_all(out, 2);
    larder_close(m);
    for (int k = 0; k < 3; k++) {
        fake_assert_clean(f[k]);
        fake_free(f[k]);
    }
}

struct looper {
    larder *m;
    const char *set[2];
    int rounds;
    int done;
    int rc;
};

static void *loop_sets(void *arg)
{
    struct looper *lp = arg;
    for (lp->done = 0; lp->done < lp->rounds; lp->done++) {
        larder_lease *l[2] = {NULL, NULL};
        lp->rc = larder_acquire_set(lp->m, lp->set, 2, patience_ms(), l);
        if (lp->rc < 0)
            return NULL;
        take_all(l, 2);
        release_all(l, 2);
    }
    return NULL;
}

/* {a,b} and {b,c}: each pair fits, all three do not, b is exclusive. A naive
 * one-by-one acquire deadlocks here (one holds a and waits for b, the other holds b
 * and waits for room for c). Both must complete every round. */
static void test_overlapping_sets(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f[3];
    const char *names[] = {"a", "b", "c"};
    struct fake_world world = {.budget = BUDGET};
    for (int k = 0; k < 3; k++) {
        f[k] = define_excl(m, names[k], 40 * U, 0);
        fake_join(f[k], &world, 40 * U);
    }
    const int rounds = scaled(300, 30);
    struct looper lp[2] = {
        {.m = m, .set = {"a", "b"}, .rounds = rounds},
        {.m = m, .set = {"b", "c"}, .rounds = rounds},
    };
    pthread_t tid[2];
    for (int k = 0; k < 2; k++)
        assert_int_equal(pthread_create(&tid[k], NULL, loop_sets, &lp[k]), 0);
    /* Watchdog: a deadlock fails the test instead of hanging it. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 2 * patience_ms() / 1000;
    for (int k = 0; k < 2; k++) {
        int jr = pthread_timedjoin_np(tid[k], NULL, &until);
        if (jr != 0)
            fail_msg("set loop %d stuck after %d of %d rounds (deadlock?)", k, lp[k].done,
                     rounds);
    }
    for (int k = 0; k < 2; k++) {
        if (lp[k].rc < 0)
            fail_msg("set loop %d failed in round %d: %s", k, lp[k].done,
                     larder_strerror(lp[k].rc));
        assert_int_equal(lp[k].done, rounds);
    }
    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(m, &s));
    assert_null(check_snapshot(s));
    for (size_t k = 0; k < s->n; k++)
        assert_int_equal(s->components[k].leases, 0);
    larder_snapshot_free(s);
    larder_close(m);
    for (int k = 0; k < 3; k++) {
        fake_assert_clean(f[k]);
        fake_free(f[k]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_or_nothing),
        cmocka_unit_test(test_set_too_big),
        cmocka_unit_test(test_overlapping_sets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
