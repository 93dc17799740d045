/* Asynchronous acquire: the callback runs exactly once, with a lease (at once when warm,
 * after the load when cold) or an error; it never blocks the caller on a load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUDGET (1ULL << 30)

struct cbrec {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int calls;
    int err;
    larder_lease *lease;
    bool release_inside; /* release the lease from within the callback */
    bool cold;
};

static void cbrec_init(struct cbrec *r)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
}

static void cbrec_destroy(struct cbrec *r)
{
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
}

static void on_done(void *ud, int err, larder_lease *lease)
{
    struct cbrec *r = ud;
    if (lease) {
        fake_lease_take(lease);
        r->cold = larder_lease_cold_start(lease);
        if (r->release_inside)
            lease = fake_release(lease);
    }
    pthread_mutex_lock(&r->lock);
    r->calls++;
    r->err = err;
    r->lease = lease;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static int calls_of(struct cbrec *r)
{
    pthread_mutex_lock(&r->lock);
    int n = r->calls;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* Waits (bounded) for the first call; returns the number of calls seen. */
static int wait_called(struct cbrec *r)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += patience_ms() / 1000;
    pthread_mutex_lock(&r->lock);
    while (r->calls == 0)
        if (pthread_cond_timedwait(&r->cond, &r->lock, &until) == ETIMEDOUT)
            break;
    int n = r->calls;
    pthread_mutex_unlock(&r->lock);
    return n;
}

static struct fake *define(larder *m, const char *name, bool gated, int fail_first)
{
    struct fake *f = fake_new(name, &(struct fake_spec){.estimate = 1000, .gated = gated,
                                                        .fail_first = fail_first});
    assert_ok(fake_define(m, f, false));
    return f;
}

static void test_warm(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = define(m, "a", false, 0);
    assert_ok(larder_preload(m, "a"));
    assert_true(wait_state(m, "a", LARDER_STATE_READY, patience_ms()));
    struct cbrec r;
    cbrec_init(&r);
    assert_ok(larder_acquire_async(m, "a", LARDER_WAIT_FOREVER, on_done, &r));
    assert_int_equal(wait_called(&r), 1);
    assert_ok(r.err);
    assert_non_null(r.lease);
    assert_false(r.cold);
    assert_string_equal(larder_lease_served_by(r.lease), "a");
    fake_release(r.lease);
    sleep_ms(10);
    assert_int_equal(calls_of(&r), 1);
    larder_close(m);
    cbrec_destroy(&r);
    fake_assert_clean(f);
    fake_free(f);
}

static void test_cold(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = define(m, "a", true, 0);
    struct cbrec r;
    cbrec_init(&r);
    /* Returns while the load is still held at the gate. */
    int rc = larder_acquire_async(m, "a", LARDER_WAIT_FOREVER, on_done, &r);
    bool gated = fake_wait_gated(f, 1, patience_ms());
    int before = calls_of(&r);
    fake_gate(f, true);
    assert_ok(rc);
    assert_true(gated);
    assert_int_equal(before, 0);
    assert_int_equal(wait_called(&r), 1);
    assert_ok(r.err);
    assert_non_null(r.lease);
    assert_true(r.cold);
    fake_release(r.lease);
    assert_int_equal(calls_of(&r), 1);
    assert_int_equal(atomic_load(&f->load_calls), 1);
    larder_close(m);
    cbrec_destroy(&r);
    fake_assert_clean(f);
    fake_free(f);
}

static void test_many_waiters(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = define(m, "a", true, 0);
    enum { N = 50 };
    struct cbrec r[N];
    int rc[N];
    for (int k = 0; k < N; k++) {
        cbrec_init(&r[k]);
        rc[k] = larder_acquire_async(m, "a", patience_ms(), on_done, &r[k]);
    }
    bool gated = fake_wait_gated(f, 1, patience_ms());
    fake_gate(f, true);
    assert_true(gated);
    for (int k = 0; k < N; k++) {
        assert_ok(rc[k]);
        assert_int_equal(wait_called(&r[k]), 1);
        assert_ok(r[k].err);
        assert_true(r[k].cold);
    }
    assert_int_equal(atomic_load(&f->load_calls), 1);
    struct larder_component_info i;
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.leases, N);
    assert_int_equal(i.waiters, 0);
    for (int k = 0; k < N; k++) {
        fake_release(r[k].lease);
        assert_int_equal(calls_of(&r[k]), 1);
        cbrec_destroy(&r[k]);
    }
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
}

static void test_timeout(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_manager(BUDGET, log, NULL);
    struct fake *f = define(m, "a", true, 0);
    struct cbrec r;
    cbrec_init(&r);
    int rc = larder_acquire_async(m, "a", 50, on_done, &r);
    int called = rc == 0 ? wait_called(&r) : 0;
    fake_gate(f, true);
    assert_ok(rc);
    assert_int_equal(called, 1);
    assert_err(r.err, LARDER_ETIMEDOUT);
    assert_null(r.lease);
    /* The load itself went on; the next acquire is a hit. */
    assert_true(evlog_wait(log, LARDER_EVENT_LOAD_DONE, "a", 1, patience_ms()));
    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, "a", LARDER_NO_WAIT, &l));
    assert_false(larder_lease_cold_start(l));
    fake_release(l);
    assert_int_equal(calls_of(&r), 1);
    larder_close(m);
    cbrec_destroy(&r);
    fake_assert_clean(f);
    fake_free(f);
    evlog_free(log);
}

static void test_errors(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = define(m, "bad", false, FAKE_FAIL_ALWAYS);
    struct cbrec r;
    cbrec_init(&r);
    int rc = larder_acquire_async(m, "nope", 1000, on_done, &r);
    if (rc == 0) {
        assert_int_equal(wait_called(&r), 1);
        assert_err(r.err, LARDER_ENOTFOUND);
    } else {
        assert_err(rc, LARDER_ENOTFOUND);
        sleep_ms(10);
        assert_int_equal(calls_of(&r), 0);
    }
    assert_err(larder_acquire_async(m, "bad", 1000, NULL, &r), -EINVAL);
    assert_err(larder_acquire_async(m, NULL, 1000, on_done, &r), -EINVAL);
    cbrec_destroy(&r);

    cbrec_init(&r);
    assert_ok(larder_acquire_async(m, "bad", patience_ms(), on_done, &r));
    assert_int_equal(wait_called(&r), 1);
    assert_err(r.err, LARDER_ELOAD);
    assert_null(r.lease);
    larder_close(m);
    cbrec_destroy(&r);
    fake_assert_clean(f);
    fake_free(f);
}

/* The callback may call back into the library: here it releases its lease. */
static void test_release_inside(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = define(m, "a", false, 0);
    struct cbrec r[2];
    for (int k = 0; k < 2; k++) {
        cbrec_init(&r[k]);
        r[k].release_inside = true;
        assert_ok(larder_acquire_async(m, "a", patience_ms(), on_done, &r[k]));
        assert_int_equal(wait_called(&r[k]), 1);
        assert_ok(r[k].err);
        assert_null(r[k].lease); /* already released */
    }
    struct larder_component_info i;
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.leases, 0);
    assert_int_equal(i.state, LARDER_STATE_READY);
    larder_close(m);
    for (int k = 0; k < 2; k++)
        cbrec_destroy(&r[k]);
    fake_assert_clean(f);
    fake_free(f);
}

/* Cold async acquires whose load finishes at once, over and over: the answer may come
 * from a loader thread before larder_acquire_async() has returned. */
static void test_cold_churn(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = define(m, "a", false, 0);
    enum { N = 4 };
    const int rounds = scaled(200, 40);
    for (int round = 0; round < rounds; round++) {
        struct cbrec r[N];
        for (int k = 0; k < N; k++) {
            cbrec_init(&r[k]);
            r[k].release_inside = true;
            assert_ok(larder_acquire_async(m, "a", patience_ms(), on_done, &r[k]));
        }
        for (int k = 0; k < N; k++) {
            assert_int_equal(wait_called(&r[k]), 1);
            assert_ok(r[k].err);
            cbrec_destroy(&r[k]);
        }
        assert_ok(larder_unload(m, "a", patience_ms()));
    }
    assert_int_equal(atomic_load(&f->loads), rounds);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_warm),    cmocka_unit_test(test_cold),
        cmocka_unit_test(test_many_waiters), cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_errors),  cmocka_unit_test(test_release_inside),
        cmocka_unit_test(test_cold_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
