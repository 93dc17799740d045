/* Single flight: many threads racing for one cold component share exactly one load,
 * and every one of them gets a lease. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define THREADS 64
#define BUDGET (1ULL << 30)

struct racer {
    larder *m;
    const char *name;
    pthread_barrier_t *start;
    int hold_ms;        /* release after this long; < 0 = keep the lease */
    int rc;
    bool cold;
    const void *model;
    larder_lease *lease;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    pthread_barrier_wait(r->start);
    r->rc = fake_acquire(r->m, r->name, patience_ms(), &r->lease);
    if (r->rc < 0)
        return NULL;
    r->cold = larder_lease_cold_start(r->lease);
    r->model = larder_lease_model(r->lease);
    if (r->hold_ms >= 0) {
        sleep_ms(r->hold_ms);
        r->lease = fake_release(r->lease);
    }
    return NULL;
}

static void start_racers(struct racer *r, pthread_t *tid, pthread_barrier_t *start, larder *m,
                         const char *name, int hold_ms)
{
    pthread_barrier_init(start, NULL, THREADS);
    for (int k = 0; k < THREADS; k++) {
        r[k] = (struct racer){.m = m, .name = name, .start = start, .hold_ms = hold_ms};
        assert_int_equal(pthread_create(&tid[k], NULL, race, &r[k]), 0);
    }
}

static void join_racers(struct racer *r, pthread_t *tid, pthread_barrier_t *start)
{
    for (int k = 0; k < THREADS; k++)
        pthread_join(tid[k], NULL);
    pthread_barrier_destroy(start);
    for (int k = 0; k < THREADS; k++)
        if (r[k].rc < 0)
            fail_msg("racer %d: %s", k, larder_strerror(r[k].rc));
}

/* All 64 wait on a load held closed until every one of them is queued. */
static void test_gated_race(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 1000, .gated = true});
    assert_ok(fake_define(m, f, false));
    struct racer r[THREADS];
    pthread_t tid[THREADS];
    pthread_barrier_t start;
    const int rounds = 3;
    for (int round = 1; round <= rounds; round++) {
        fake_gate(f, false);
        start_racers(r, tid, &start, m, "a", -1);
        if (!fake_wait_gated(f, 1, patience_ms()))
            fail_msg("round %d: the load never started", round);
        bool queued = wait_waiters(m, "a", THREADS, patience_ms());
        struct larder_component_info i;
        bool seen = comp_info(m, "a", &i);
        fake_gate(f, true);
        join_racers(r, tid, &start);
        assert_true(seen);
        if (!queued)
            fail_msg("round %d: snapshot never showed %d waiters (last: %u)", round, THREADS,
                     i.waiters);
        assert_int_equal(i.state, LARDER_STATE_LOADING);
        assert_int_equal(atomic_load(&f->load_calls), round);
        for (int k = 0; k < THREADS; k++) {
            assert_true(r[k].cold);
            assert_ptr_equal(r[k].model, r[0].model);
        }
        assert_true(comp_info(m, "a", &i));
        assert_int_equal(i.state, LARDER_STATE_READY);
        assert_int_equal(i.leases, THREADS);
        assert_int_equal(i.waiters, 0);
        assert_int_equal(i.loads, (uint64_t)round);
        assert_int_equal(i.cold_starts, (uint64_t)(THREADS * round));
        for (int k = 0; k < THREADS; k++)
            fake_release(r[k].lease);
        assert_ok(larder_unload(m, "a", patience_ms()));
        assert_int_equal(atomic_load(&f->unloads), round);
    }
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
}

/* A plain race (no gate): still one load per cold period. */
static void test_free_race(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 1000, .load_ms = 20});
    assert_ok(fake_define(m, f, false));
    struct racer r[THREADS];
    pthread_t tid[THREADS];
    pthread_barrier_t start;
    const int rounds = scaled(10, 2);
    for (int round = 1; round <= rounds; round++) {
        start_racers(r, tid, &start, m, "a", 0);
        join_racers(r, tid, &start);
        assert_int_equal(atomic_load(&f->load_calls), round);
        int cold = 0;
        for (int k = 0; k < THREADS; k++)
            cold += r[k].cold;
        assert_true(cold >= 1);
        struct larder_component_info i;
        assert_true(comp_info(m, "a", &i));
        assert_int_equal(i.leases, 0);
        assert_int_equal(i.hits, (uint64_t)(THREADS * round)); /* every lease served */
        assert_true(i.cold_starts >= (uint64_t)round && i.cold_starts <= i.hits);
        assert_ok(larder_unload(m, "a", patience_ms()));
    }
    larder_close(m);
    assert_int_equal(atomic_load(&f->loads), rounds);
    assert_int_equal(atomic_load(&f->unloads), rounds);
    fake_assert_clean(f);
    fake_free(f);
}

/* A pool of 4 instances under 64 racers: one load, at most 4 instances, everyone served,
 * no instance ever handed to two leases. */
static void test_pool_race(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("p", &(struct fake_spec){.estimate = 1000, .gated = true});
    struct larder_component_opts o;
    fake_opts(f, true, &o);
    o.max_instances = 4;
    assert_ok(larder_define(m, "p", &o));
    struct racer r[THREADS];
    pthread_t tid[THREADS];
    pthread_barrier_t start;
    start_racers(r, tid, &start, m, "p", 1);
    if (!fake_wait_gated(f, 1, patience_ms()))
        fail_msg("the load never started");
    fake_gate(f, true);
    join_racers(r, tid, &start);
    assert_int_equal(atomic_load(&f->load_calls), 1);
    int made = atomic_load(&f->inst_new);
    assert_true(made >= 1 && made <= 4);
    struct larder_component_info i;
    assert_true(comp_info(m, "p", &i));
    assert_int_equal(i.leases, 0);
    assert_int_equal(i.instances_busy, 0);
    assert_int_equal(i.instances_max, 4);
    assert_true(i.instances >= 1 && i.instances <= 4);
    assert_int_equal(i.instances, (unsigned)(made - atomic_load(&f->inst_free)));
    larder_close(m);
    assert_int_equal(atomic_load(&f->inst_new), atomic_load(&f->inst_free));
    fake_assert_clean(f);
    fake_free(f);
}

static double thread_cpu_ms(pthread_t tid)
{
    clockid_t cid;
    struct timespec ts;
    if (pthread_getcpuclockid(tid, &cid) != 0 || clock_gettime(cid, &ts) != 0)
        return -1;
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A caller blocked on a load (with a deadline) sleeps: over 300 ms of waiting it must
 * use a small fraction of that in CPU, not spin on its condition variable. */
static void test_waiters_sleep(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 1000, .gated = true});
    assert_ok(fake_define(m, f, false));
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 1);
    struct racer r = {.m = m, .name = "a", .start = &start, .hold_ms = 0};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, race, &r), 0);
    bool queued = fake_wait_gated(f, 1, patience_ms()) && wait_waiters(m, "a", 1, patience_ms());
    double cpu0 = thread_cpu_ms(tid);
    sleep_ms(300);
    double cpu1 = thread_cpu_ms(tid);
    fake_gate(f, true);
    pthread_join(tid, NULL);
    pthread_barrier_destroy(&start);
    assert_true(queued);
    assert_ok(r.rc);
    assert_true(cpu0 >= 0 && cpu1 >= 0);
    if (cpu1 - cpu0 > 75)
        fail_msg("a blocked acquire used %.0f ms of CPU in 300 ms of waiting (busy wait)",
                 cpu1 - cpu0);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gated_race),
        cmocka_unit_test(test_free_race),
        cmocka_unit_test(test_pool_race),
        cmocka_unit_test(test_waiters_sleep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
