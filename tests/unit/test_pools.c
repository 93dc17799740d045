/* Pools: components with per-caller instances (max_instances), waiting for a free
 * instance, reuse, queue limits; and shared classes with unlimited leases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <stdlib.h>
#include <string.h>

#define BUDGET (1ULL << 30)

static struct fake *define_pool(larder *m, const char *name, unsigned max, unsigned queue_max)
{
    struct fake *f = fake_new(name, &(struct fake_spec){.estimate = 1000, .instance_ms = 1});
    struct larder_component_opts o;
    fake_opts(f, true, &o);
    o.max_instances = max;
    o.queue_max = queue_max;
    assert_ok(larder_define(m, name, &o));
    return f;
}

struct waiter {
    larder *m;
    const char *name;
    int hold_ms;   /* release after this long; < 0 = keep */
    atomic_bool done;
    int rc;
    int instance;
    larder_lease *lease;
};

static void *wait_for(void *arg)
{
    struct waiter *w = arg;
    w->rc = fake_acquire(w->m, w->name, patience_ms(), &w->lease);
    if (w->rc == 0) {
        w->instance = fake_instance_id(w->lease);
        if (w->hold_ms >= 0) {
            sleep_ms(w->hold_ms);
            w->lease = fake_release(w->lease);
        }
    }
    atomic_store(&w->done, true);
    return NULL;
}

static void test_distinct_wait_reuse(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = define_pool(m, "p", 3, 0);
    larder_lease *l[3];
    for (int k = 0; k < 3; k++)
        assert_ok(fake_acquire(m, "p", patience_ms(), &l[k]));
    int ids[3];
    for (int k = 0; k < 3; k++) {
        ids[k] = fake_instance_id(l[k]);
        assert_true(ids[k] > 0);
        assert_ptr_equal(larder_lease_model(l[k]), larder_lease_model(l[0]));
        for (int j = 0; j < k; j++)
            assert_int_not_equal(ids[k], ids[j]);
    }
    assert_int_equal(atomic_load(&f->load_calls), 1);
    assert_int_equal(atomic_load(&f->inst_new), 3);
    struct larder_component_info i;
    assert_true(comp_info(m, "p", &i));
    assert_int_equal(i.instances, 3);
    assert_int_equal(i.instances_busy, 3);
    assert_int_equal(i.instances_max, 3);
    assert_int_equal(i.leases, 3);

    /* The 4th waits until a release, then gets the instance that was returned. */
    struct waiter w = {.m = m, .name = "p", .hold_ms = -1};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, wait_for, &w), 0);
    bool queued = wait_waiters(m, "p", 1, patience_ms());
    bool early = atomic_load(&w.done);
    fake_release(l[1]);
    pthread_join(tid, NULL);
    assert_true(queued);
    assert_false(early);
    assert_ok(w.rc);
    assert_int_equal(w.instance, ids[1]);
    assert_int_equal(atomic_load(&f->inst_new), 3);

    fake_release(w.lease);
    fake_release(l[0]);
    fake_release(l[2]);
    assert_true(comp_info(m, "p", &i));
    assert_int_equal(i.instances_busy, 0);
    assert_int_equal(i.leases, 0);

    /* Reuse: three more leases, no new instance. */
    for (int k = 0; k < 3; k++)
        assert_ok(fake_acquire(m, "p", patience_ms(), &l[k]));
    assert_int_equal(atomic_load(&f->inst_new), 3);
    for (int k = 0; k < 3; k++) {
        assert_false(larder_lease_cold_start(l[k]));
        fake_release(l[k]);
    }
    larder_close(m);
    assert_int_equal(atomic_load(&f->inst_free), 3);
    assert_int_equal(atomic_load(&f->unloads), 1);
    fake_assert_clean(f);
    fake_free(f);
}

static void test_queue_max(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = define_pool(m, "q", 1, 2);
    larder_lease *held = NULL, *l = NULL;
    assert_ok(fake_acquire(m, "q", patience_ms(), &held));
    assert_err(fake_acquire(m, "q", LARDER_NO_WAIT, &l), LARDER_ETIMEDOUT);
    assert_err(fake_acquire(m, "q", 20, &l), LARDER_ETIMEDOUT);
    struct larder_component_info i;
    assert_true(comp_info(m, "q", &i));
    assert_int_equal(i.waiters, 0); /* timed-out waiters left the queue */

    struct waiter w[2];
    pthread_t tid[2];
    for (int k = 0; k < 2; k++) {
        w[k] = (struct waiter){.m = m, .name = "q", .hold_ms = 1};
        assert_int_equal(pthread_create(&tid[k], NULL, wait_for, &w[k]), 0);
    }
    bool queued = wait_waiters(m, "q", 2, patience_ms());
    int rc = fake_acquire(m, "q", patience_ms(), &l);
    fake_release(held);
    for (int k = 0; k < 2; k++)
        pthread_join(tid[k], NULL);
    if (rc == 0)
        fake_release(l);
    assert_true(queued);
    assert_err(rc, LARDER_EBUSY);
    for (int k = 0; k < 2; k++) {
        assert_ok(w[k].rc);
        assert_int_equal(w[k].instance, 1);
    }
    assert_int_equal(atomic_load(&f->inst_new), 1);
    assert_true(comp_info(m, "q", &i));
    assert_int_equal(i.waiters, 0);
    assert_int_equal(i.leases, 0);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
}

/* Many threads cycling through a pool of 3: never more than 3 instances, never one
 * instance in two hands (the fake checks), every acquire served. */
static void test_pool_churn(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = define_pool(m, "p", 3, 0);
    enum { N = 12 };
    const int rounds = scaled(50, 5);
    struct waiter w[N];
    pthread_t tid[N];
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < N; k++) {
            w[k] = (struct waiter){.m = m, .name = "p", .hold_ms = 0};
            assert_int_equal(pthread_create(&tid[k], NULL, wait_for, &w[k]), 0);
        }
        for (int k = 0; k < N; k++)
            pthread_join(tid[k], NULL);
        for (int k = 0; k < N; k++)
            assert_ok(w[k].rc);
    }
    assert_true(atomic_load(&f->inst_new) <= 3);
    assert_int_equal(atomic_load(&f->load_calls), 1);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
}

/* A shared class: every lease gets the model itself, and leases are unlimited. */
static void test_shared_unlimited(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("s", &(struct fake_spec){.estimate = 1000});
    assert_ok(fake_define(m, f, false));
    enum { N = 200 };
    larder_lease *l[N];
    for (int k = 0; k < N; k++) {
        assert_ok(fake_acquire(m, "s", patience_ms(), &l[k]));
        assert_null(larder_lease_instance(l[k]));
        assert_ptr_equal(larder_lease_model(l[k]), larder_lease_model(l[0]));
    }
    struct larder_component_info i;
    assert_true(comp_info(m, "s", &i));
    assert_int_equal(i.leases, N);
    assert_int_equal(i.instances_max, 0);
    for (int k = 0; k < N; k++)
        fake_release(l[k]);
    assert_int_equal(atomic_load(&f->load_calls), 1);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distinct_wait_reuse),
        cmocka_unit_test(test_queue_max),
        cmocka_unit_test(test_pool_churn),
        cmocka_unit_test(test_shared_unlimited),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
