/* Hung loads: a load that never returns (its class blocks on a gate the test opens only at
 * the very end) holds neither other components' loads nor larder_close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUDGET (1ULL << 30)

static struct fake *define(larder *m, const char *name, bool gated)
{
    struct fake *f = fake_new(name, &(struct fake_spec){.estimate = 1000, .gated = gated});
    assert_ok(fake_define(m, f, false));
    return f;
}

/* One loader thread: every component prefers it, the hung one included. */
static larder *open_one_loader(int64_t close_timeout_ms)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.loader_threads = 1;
    o.close_timeout_ms = close_timeout_ms;
    return open_manager(BUDGET, NULL, &o);
}

/* Waits (bounded) until cond() is true. */
static bool wait_for(bool (*cond)(void *arg), void *arg)
{
    for (double until = now_ms() + patience_ms(); !cond(arg) && now_ms() < until;)
        sleep_ms(2);
    return cond(arg);
}

static bool freed(void *arg)
{
    struct fake *f = arg;
    return atomic_load(&f->ud_frees) == 1;
}

/* Lets the hung load return, and waits until its thread has settled it and freed the
 * manager (the component's userdata goes last), so that sanitizers see a clean exit. */
static void unhang(struct fake *f)
{
    fake_gate(f, true);
    assert_true(wait_for(freed, f));
    assert_int_equal(atomic_load(&f->loads), atomic_load(&f->unloads));
    fake_assert_clean(f);
}

static void test_other_loads_go_on(void **state)
{
    larder *m = open_one_loader(LARDER_WAIT_FOREVER);
    struct fake *hung = define(m, "hung", true);
    struct fake *other = define(m, "other", false);
    assert_ok(larder_preload(m, "hung"));
    assert_true(fake_wait_gated(hung, 1, patience_ms()));
    /* The hung load's callers time out as before; the component stays loading. */
    larder_lease *l = NULL;
    assert_err(fake_acquire(m, "hung", 50, &l), LARDER_ETIMEDOUT);
    assert_true(wait_state(m, "hung", LARDER_STATE_LOADING, patience_ms()));
    /* Another component loads meanwhile, though it prefers the hung one's thread. */
    assert_ok(fake_acquire(m, "other", patience_ms(), &l));
    fake_release(l);
    /* And again, after it was unloaded. */
    assert_ok(larder_unload(m, "other", patience_ms()));
    assert_ok(fake_acquire(m, "other", patience_ms(), &l));
    fake_release(l);
    assert_int_equal(atomic_load(&other->loads), 2);
    fake_gate(hung, true);
    assert_true(wait_state(m, "hung", LARDER_STATE_READY, patience_ms()));
    larder_close(m);
    assert_int_equal(atomic_load(&hung->unloads), 1);
    fake_assert_clean(hung);
    fake_assert_clean(other);
    fake_free(hung);
    fake_free(other);
}

/* Every loader hung (one plus the extras it may start): the next load waits for the first
 * loader to come free, and then runs. */
static void test_extra_loaders_bounded(void **state)
{
    larder *m = open_one_loader(LARDER_WAIT_FOREVER);
    enum { N = 6 }; /* 1 loader, at most 2 x 1 + 4 in all */
    struct fake *hung[N];
    for (int i = 0; i < N; i++) {
        char name[16];
        snprintf(name, sizeof name, "hung%d", i);
        hung[i] = define(m, name, true);
        assert_ok(larder_preload(m, name));
        assert_true(fake_wait_gated(hung[i], 1, patience_ms()));
    }
    struct fake *late = define(m, "late", false);
    assert_ok(larder_preload(m, "late"));
    larder_lease *l = NULL;
    assert_err(fake_acquire(m, "late", 50, &l), LARDER_ETIMEDOUT);
    assert_int_equal(atomic_load(&late->load_calls), 0);
    fake_gate(hung[0], true);
    assert_ok(fake_acquire(m, "late", patience_ms(), &l));
    fake_release(l);
    for (int i = 1; i < N; i++)
        fake_gate(hung[i], true);
    larder_close(m);
    for (int i = 0; i < N; i++) {
        assert_int_equal(atomic_load(&hung[i]->unloads), 1);
        fake_assert_clean(hung[i]);
        fake_free(hung[i]);
    }
    fake_assert_clean(late);
    fake_free(late);
}

struct closer {
    larder *m;
    atomic_bool done;
    int left;
};

static void *close_it(void *arg)
{
    struct closer *c = arg;
    c->left = larder_close_report(c->m);
    atomic_store(&c->done, true);
    return NULL;
}

static bool closed(void *arg)
{
    struct closer *c = arg;
    return atomic_load(&c->done);
}

static void test_close_is_bounded(void **state)
{
    larder *m = open_one_loader(100);
    struct fake *hung = define(m, "hung", true);
    struct fake *other = define(m, "other", false);
    assert_ok(larder_preload(m, "hung"));
    assert_true(fake_wait_gated(hung, 1, patience_ms()));
    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, "other", patience_ms(), &l));
    fake_release(l);
    struct closer c = {.m = m};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, close_it, &c), 0);
    assert_true(wait_for(closed, &c));
    pthread_join(tid, NULL);
    assert_int_equal(c.left, 1);
    /* The idle one was unloaded by close; the hung one is left to its thread. */
    assert_int_equal(atomic_load(&other->unloads), 1);
    assert_int_equal(atomic_load(&other->ud_frees), 0);
    unhang(hung);
    assert_int_equal(atomic_load(&hung->unloads), 1);
    assert_true(wait_for(freed, other));
    fake_assert_clean(other);
    fake_free(hung);
    fake_free(other);
}

/* A waiter of the hung load is failed by close at once, not at its deadline. */
struct acq {
    larder *m;
    atomic_bool done;
    int err;
};

static void *acquire_hung(void *arg)
{
    struct acq *a = arg;
    larder_lease *l = NULL;
    a->err = fake_acquire(a->m, "hung", LARDER_WAIT_FOREVER, &l);
    fake_release(l);
    atomic_store(&a->done, true);
    return NULL;
}

static bool acquired(void *arg)
{
    return atomic_load(&((struct acq *)arg)->done);
}

static void test_close_fails_waiters_of_hung_load(void **state)
{
    larder *m = open_one_loader(100);
    struct fake *hung = define(m, "hung", true);
    struct acq a = {.m = m};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, acquire_hung, &a), 0);
    assert_true(fake_wait_gated(hung, 1, patience_ms()));
    assert_true(wait_waiters(m, "hung", 1, patience_ms()));
    assert_int_equal(larder_close_report(m), 1);
    assert_true(wait_for(acquired, &a));
    pthread_join(tid, NULL);
    assert_err(a.err, LARDER_ECLOSED);
    unhang(hung);
    fake_free(hung);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_other_loads_go_on),
        cmocka_unit_test(test_extra_loaders_bounded),
        cmocka_unit_test(test_close_is_bounded),
        cmocka_unit_test(test_close_fails_waiters_of_hung_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
