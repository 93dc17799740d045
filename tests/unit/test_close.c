/* Close: with leases outstanding, waiters queued and loads in flight. Close returns,
 * waiters get ECLOSED (or their lease), leases stay valid and can be released later,
 * and every model is unloaded exactly once in the end (ASan checks for leaks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUDGET (1ULL << 30)

static struct fake *define(larder *m, const char *name, bool pool, bool gated)
{
    struct fake *f = fake_new(name, &(struct fake_spec){.estimate = 1000, .gated = gated});
    assert_ok(fake_define(m, f, pool));
    return f;
}

static void assert_all_freed(struct fake *f)
{
    assert_int_equal(atomic_load(&f->loads), atomic_load(&f->unloads));
    assert_int_equal(atomic_load(&f->inst_new), atomic_load(&f->inst_free));
    assert_int_equal(atomic_load(&f->live_models), 0);
    assert_int_equal(atomic_load(&f->ud_frees), 1);
    fake_assert_clean(f);
}

struct closer {
    larder *m;
    atomic_bool done;
};

static void *close_it(void *arg)
{
    struct closer *c = arg;
    larder_close(c->m);
    atomic_store(&c->done, true);
    return NULL;
}

/* Runs larder_close on a thread and waits for it, bounded: a hang fails the test. */
static void close_bounded(larder *m, void (*meanwhile)(void *), void *ud)
{
    struct closer c = {.m = m};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, close_it, &c), 0);
    if (meanwhile)
        meanwhile(ud);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += patience_ms() / 1000;
    if (pthread_timedjoin_np(tid, NULL, &until) != 0)
        fail_msg("larder_close did not return");
}

static void test_close_with_leases(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *a = define(m, "a", false, false);
    struct fake *p = define(m, "p", true, false);
    struct fake *idle = define(m, "idle", false, false);
    larder_lease *la = NULL, *lp = NULL, *l = NULL;
    assert_ok(fake_acquire(m, "a", patience_ms(), &la));
    assert_ok(fake_acquire(m, "p", patience_ms(), &lp));
    assert_ok(fake_acquire(m, "idle", patience_ms(), &l));
    fake_release(l);

    close_bounded(m, NULL, NULL);
    /* The idle one is gone; the leased ones stay until their leases return. */
    assert_int_equal(atomic_load(&idle->unloads), 1);
    assert_int_equal(atomic_load(&a->unloads), 0);
    assert_int_equal(atomic_load(&p->unloads), 0);
    assert_string_equal(larder_lease_served_by(la), "a");
    assert_string_equal(larder_lease_requested(lp), "p");
    assert_ptr_equal(fake_of(la), a);
    assert_true(fake_instance_id(lp) > 0);

    assert_null(fake_release(la));
    assert_int_equal(atomic_load(&a->unloads), 1);
    assert_int_equal(atomic_load(&p->unloads), 0);
    assert_null(fake_release(lp));
    assert_all_freed(a);
    assert_all_freed(p);
    assert_all_freed(idle);
    fake_free(a);
    fake_free(p);
    fake_free(idle);
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

struct cbrec {
    atomic_int calls;
    atomic_int err;
    _Atomic(larder_lease *) lease;
};

static void on_done(void *ud, int err, larder_lease *lease)
{
    struct cbrec *r = ud;
    if (lease)
        fake_lease_take(lease);
    atomic_store(&r->err, err);
    atomic_store(&r->lease, lease);
    atomic_fetch_add(&r->calls, 1);
}

static void open_gate_later(void *ud)
{
    sleep_ms(20);
    fake_gate(ud, true);
}

static void test_close_with_loads_in_flight(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *g = define(m, "g", false, true);
    struct fake *p = define(m, "p", true, false);
    enum { N = 4 };
    struct waiter w[N + 1];
    pthread_t tid[N + 1];
    for (int k = 0; k < N; k++) {
        w[k] = (struct waiter){.m = m, .name = "g"};
        assert_int_equal(pthread_create(&tid[k], NULL, wait_for, &w[k]), 0);
    }
    /* And one waiting for the single instance of p, which the test holds. */
    larder_lease *lp = NULL;
    assert_ok(fake_acquire(m, "p", patience_ms(), &lp));
    w[N] = (struct waiter){.m = m, .name = "p"};
    assert_int_equal(pthread_create(&tid[N], NULL, wait_for, &w[N]), 0);
    struct cbrec r = {0};
    assert_ok(larder_acquire_async(m, "g", patience_ms(), on_done, &r));
    assert_true(fake_wait_gated(g, 1, patience_ms()));
    assert_true(wait_waiters(m, "p", 1, patience_ms()));

    close_bounded(m, open_gate_later, g);
    for (int k = 0; k <= N; k++)
        pthread_join(tid[k], NULL);
    for (int k = 0; k <= N; k++) {
        if (w[k].rc != 0 && w[k].rc != LARDER_ECLOSED)
            fail_msg("waiter %d: %s", k, larder_strerror(w[k].rc));
        fake_release(w[k].lease);
    }
    assert_err(w[N].rc, LARDER_ECLOSED); /* its instance never came back before close */
    double end = now_ms() + patience_ms();
    while (atomic_load(&r.calls) == 0 && now_ms() < end)
        sleep_ms(1);
    assert_int_equal(atomic_load(&r.calls), 1);
    int err = atomic_load(&r.err);
    assert_true(err == 0 || err == LARDER_ECLOSED);
    fake_release(atomic_load(&r.lease));
    fake_release(lp);
    assert_int_equal(atomic_load(&r.calls), 1);
    assert_all_freed(g);
    assert_all_freed(p);
    fake_free(g);
    fake_free(p);
}

static void open_gates_later(void *ud)
{
    struct fake **f = ud;
    sleep_ms(20);
    for (int k = 0; f[k]; k++)
        fake_gate(f[k], true);
}

/* More preloads than loader threads, all held at their gates when close begins. */
static void test_close_with_preloads(void **state)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.loader_threads = 2;
    larder *m = open_manager(BUDGET, NULL, &o);
    enum { N = 8 };
    struct fake *f[N + 1];
    char names[N][8];
    for (int k = 0; k < N; k++) {
        snprintf(names[k], sizeof(names[k]), "c%d", k);
        f[k] = define(m, names[k], k % 2 == 0, true);
        assert_ok(larder_preload(m, names[k]));
    }
    f[N] = NULL;
    /* Wait until the loader threads are busy at gates. */
    double end = now_ms() + patience_ms();
    int gated = 0;
    while (gated < 2 && now_ms() < end) {
        gated = 0;
        for (int k = 0; k < N; k++)
            gated += atomic_load(&f[k]->gate_waiting);
        sleep_ms(1);
    }
    assert_true(gated >= 2);
    close_bounded(m, open_gates_later, f);
    for (int k = 0; k < N; k++) {
        assert_all_freed(f[k]);
        fake_free(f[k]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_with_leases),
        cmocka_unit_test(test_close_with_loads_in_flight),
        cmocka_unit_test(test_close_with_preloads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
