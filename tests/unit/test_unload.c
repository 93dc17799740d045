/* Unload and undefine: draining refuses new leases while old ones are out, completes
 * when they return, times out leaving the component serving; undefined names are gone
 * and can be defined again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <stdlib.h>
#include <string.h>

#define BUDGET (1ULL << 30)

struct drainer {
    larder *m;
    const char *name;
    bool undefine;
    atomic_bool done;
    int rc;
};

static void *drain(void *arg)
{
    struct drainer *d = arg;
    if (d->undefine)
        d->rc = larder_undefine(d->m, d->name, patience_ms());
    else
        d->rc = larder_unload(d->m, d->name, patience_ms());
    atomic_store(&d->done, true);
    return NULL;
}

static bool wait_draining(larder *m, const char *name)
{
    double end = now_ms() + patience_ms();
    struct larder_component_info i;
    while (now_ms() < end) {
        if (comp_info(m, name, &i) && i.draining)
            return true;
        sleep_ms(1);
    }
    return false;
}

/* Drains "a" with a lease out: new acquires are refused until the unload (or undefine)
 * completes after the release. */
static void run_drain(bool undefine)
{
    struct evlog *log = evlog_new();
    larder *m = open_manager(BUDGET, log, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 1000});
    assert_ok(fake_define(m, f, false));
    larder_lease *held = NULL, *l = NULL;
    assert_ok(fake_acquire(m, "a", patience_ms(), &held));
    struct drainer d = {.m = m, .name = "a", .undefine = undefine};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, drain, &d), 0);
    bool draining = wait_draining(m, "a");
    int rc = fake_acquire(m, "a", 1000, &l);
    int preload_rc = larder_preload(m, "a");
    bool early = atomic_load(&d.done);
    int unloads = atomic_load(&f->unloads);
    fake_release(held);
    pthread_join(tid, NULL);
    if (rc == 0)
        fake_release(l);
    assert_true(draining);
    assert_err(rc, LARDER_EDRAINING);
    assert_err(preload_rc, LARDER_EDRAINING);
    assert_false(early);
    assert_int_equal(unloads, 0);
    assert_ok(d.rc);
    assert_int_equal(atomic_load(&f->unloads), 1);
    assert_int_equal(evlog_count(log, LARDER_EVENT_UNLOAD, "a"), 1);
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "a", LARDER_REASON_REQUEST),
                     1);
    struct larder_component_info i;
    if (undefine) {
        assert_false(comp_info(m, "a", &i));
        assert_err(fake_acquire(m, "a", 1000, &l), LARDER_ENOTFOUND);
        assert_int_equal(atomic_load(&f->ud_frees), 1);
    } else {
        assert_true(comp_info(m, "a", &i));
        assert_int_equal(i.state, LARDER_STATE_UNLOADED);
        assert_false(i.draining);
        assert_int_equal(i.reserved_bytes, 0);
        /* Serving again: the next acquire loads it anew. */
        assert_ok(fake_acquire(m, "a", patience_ms(), &l));
        assert_true(larder_lease_cold_start(l));
        fake_release(l);
        assert_int_equal(atomic_load(&f->loads), 2);
    }
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
    evlog_free(log);
}

static void test_unload_drain(void **state)
{
    run_drain(false);
}

static void test_undefine_drain(void **state)
{
    run_drain(true);
}

/* Drain with a deadline shorter than the lease: ETIMEDOUT, and the component keeps
 * serving as if nothing happened. */
static void test_drain_timeout(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 1000});
    assert_ok(fake_define(m, f, false));
    larder_lease *held = NULL, *l = NULL;
    assert_ok(fake_acquire(m, "a", patience_ms(), &held));
    assert_err(larder_unload(m, "a", 30), LARDER_ETIMEDOUT);
    assert_ok(fake_acquire(m, "a", 1000, &l));
    assert_false(larder_lease_cold_start(l));
    fake_release(l);
    assert_err(larder_undefine(m, "a", 30), LARDER_ETIMEDOUT);
    struct larder_component_info i;
    assert_true(comp_info(m, "a", &i));
    assert_false(i.draining);
    assert_int_equal(i.state, LARDER_STATE_READY);
    assert_ok(fake_acquire(m, "a", 1000, &l));
    fake_release(l);
    assert_int_equal(atomic_load(&f->unloads), 0);
    assert_int_equal(atomic_load(&f->ud_frees), 0);
    fake_release(held);
    /* Idle now: unload and undefine complete at once. */
    assert_ok(larder_unload(m, "a", LARDER_NO_WAIT));
    assert_int_equal(atomic_load(&f->unloads), 1);
    assert_ok(larder_unload(m, "a", LARDER_NO_WAIT)); /* not loaded: nothing to do */
    assert_ok(larder_undefine(m, "a", LARDER_NO_WAIT));
    assert_int_equal(atomic_load(&f->ud_frees), 1);
    larder_close(m);
    assert_int_equal(atomic_load(&f->ud_frees), 1);
    assert_int_equal(atomic_load(&f->unloads), 1);
    fake_assert_clean(f);
    fake_free(f);
}

static void test_redefine(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f1 = fake_new("a", &(struct fake_spec){.estimate = 1000});
    struct fake *f2 = fake_new("a", &(struct fake_spec){.estimate = 2000});
    assert_ok(fake_define(m, f1, false));
    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, "a", patience_ms(), &l));
    fake_release(l);
    assert_ok(larder_undefine(m, "a", patience_ms()));
    assert_int_equal(atomic_load(&f1->unloads), 1);
    assert_int_equal(atomic_load(&f1->ud_frees), 1);
    assert_err(fake_acquire(m, "a", 1000, &l), LARDER_ENOTFOUND);
    assert_err(larder_undefine(m, "a", 0), LARDER_ENOTFOUND);

    /* The same name, another definition: a fresh component. */
    assert_ok(fake_define(m, f2, false));
    struct larder_component_info i;
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.loads, 0);
    assert_int_equal(i.hits, 0);
    assert_int_equal(i.evictions, 0);
    assert_int_equal(i.state, LARDER_STATE_UNLOADED);
    assert_ok(fake_acquire(m, "a", patience_ms(), &l));
    assert_ptr_equal(fake_of(l), f2);
    assert_true(larder_lease_cold_start(l));
    fake_release(l);
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.estimate_bytes, 2000);
    assert_int_equal(i.loads, 1);
    assert_int_equal(atomic_load(&f1->load_calls), 1);
    larder_close(m);
    assert_int_equal(atomic_load(&f2->unloads), 1);
    assert_int_equal(atomic_load(&f2->ud_frees), 1);
    fake_assert_clean(f1);
    fake_assert_clean(f2);
    fake_free(f1);
    fake_free(f2);
}

/* Undefine while a load is in flight: the load finishes, then the model is unloaded
 * and the name is gone; the waiter gets its lease or EDRAINING, never a crash. */
static void test_undefine_during_load(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 1000, .gated = true});
    assert_ok(fake_define(m, f, false));
    assert_ok(larder_preload(m, "a"));
    assert_true(fake_wait_gated(f, 1, patience_ms()));
    struct drainer d = {.m = m, .name = "a", .undefine = true};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, drain, &d), 0);
    sleep_ms(10);
    fake_gate(f, true);
    pthread_join(tid, NULL);
    assert_ok(d.rc);
    larder_lease *l = NULL;
    assert_err(fake_acquire(m, "a", 1000, &l), LARDER_ENOTFOUND);
    assert_int_equal(atomic_load(&f->loads), atomic_load(&f->unloads));
    assert_int_equal(atomic_load(&f->ud_frees), 1);
    assert_int_equal(larder_preload_pending(m), 0);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
}

static void *trim_all(void *arg)
{
    struct drainer *d = arg;
    d->rc = larder_trim(d->m, NULL);
    atomic_store(&d->done, true);
    return NULL;
}

/* A preload asked for while the component is being evicted (not drained) loads it
 * again afterwards, and the pending count comes back to zero. */
static void test_preload_while_unloading(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 1000, .gated_unload = true});
    assert_ok(fake_define(m, f, false));
    fake_gate(f, true);
    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, "a", patience_ms(), &l));
    fake_release(l);
    fake_gate(f, false);
    struct drainer d = {.m = m, .name = "a"};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, trim_all, &d), 0);
    bool in_unload = fake_wait_gated(f, 1, patience_ms());
    struct larder_component_info i;
    bool seen = comp_info(m, "a", &i);
    int rc = larder_preload(m, "a");
    fake_gate(f, true);
    pthread_join(tid, NULL);
    assert_true(in_unload && seen);
    assert_int_equal(i.state, LARDER_STATE_UNLOADING);
    assert_ok(rc);
    assert_ok(d.rc);
    double end = now_ms() + patience_ms();
    while (larder_preload_pending(m) != 0 && now_ms() < end)
        sleep_ms(1);
    assert_int_equal(larder_preload_pending(m), 0);
    /* Loaded again (a trim still looping may have evicted it once more since). */
    assert_int_equal(atomic_load(&f->loads), 2);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unload_drain),  cmocka_unit_test(test_undefine_drain),
        cmocka_unit_test(test_drain_timeout), cmocka_unit_test(test_redefine),
        cmocka_unit_test(test_undefine_during_load),
        cmocka_unit_test(test_preload_while_unloading),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
