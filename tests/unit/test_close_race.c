/* Close racing the calls of other threads: many threads acquire and release warm and
 * cold, shared and pooled components (blocking, async and as sets) while another thread
 * closes the manager, over and over in one run. Every worker holds one lease from before
 * close starts until it stops, so all its calls are allowed after close too (a lease keeps
 * the manager's memory valid). Checked: nothing crashes or touches freed memory (run it
 * under ASan and TSan), every call answers 0 or LARDER_ECLOSED, every async callback is
 * called exactly once, and in the end every model was unloaded exactly once and every
 * definition freed, on whichever thread let go last. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUDGET (1ULL << 30)
#define WORKERS 6

enum { C_ANCHOR, C_WARM, C_POOL, C_COLD, C_COLDPOOL, N_COMPS };
static const char *const names[N_COMPS] = {"anchor", "warm", "pool", "cold", "coldpool"};

struct round {
    larder *m;
    struct fake *f[N_COMPS];
    atomic_int ready;         /* workers holding their anchor lease */
    atomic_long ops;          /* calls made, all workers */
    atomic_int async_pending; /* async acquires whose callback has not run yet */
    atomic_int unexpected;
    atomic_int closed_seen;
    char msg[160];
    atomic_bool msg_set;
};

struct worker {
    struct round *r;
    unsigned seed;
    int id;
};

static void unexpected(struct round *r, const char *what, int rc)
{
    atomic_fetch_add(&r->unexpected, 1);
    if (!atomic_exchange(&r->msg_set, true))
        snprintf(r->msg, sizeof r->msg, "%s returned %s (%d)", what, larder_strerror(rc), rc);
}

/* 0 and LARDER_ECLOSED are the only answers a call may give here; true on ECLOSED. */
static bool closed(struct round *r, const char *what, int rc)
{
    if (rc == LARDER_ECLOSED) {
        atomic_fetch_add(&r->closed_seen, 1);
        return true;
    }
    if (rc != 0)
        unexpected(r, what, rc);
    return false;
}

static void on_async(void *ud, int err, larder_lease *lease)
{
    struct round *r = ud;
    if (err == 0) {
        fake_lease_take(lease);
        fake_release(lease);
    } else {
        closed(r, "async acquire callback", err);
    }
    atomic_fetch_sub(&r->async_pending, 1);
}

/* One call (or acquire + release pair); true once the manager said it is closing. */
static bool one_op(struct worker *w)
{
    struct round *r = w->r;
    larder *m = r->m;
    larder_lease *l = NULL;
    int rc;
    unsigned k = (unsigned)rand_r(&w->seed) % 8;
    atomic_fetch_add(&r->ops, 1);
    switch (k) {
    case 0: case 1: /* the lock-free warm path */
        rc = fake_acquire(m, names[C_WARM], LARDER_WAIT_FOREVER, &l);
        fake_release(l);
        return closed(r, "warm acquire", rc);
    case 2: /* a pooled component, instances handed back and forth */
        rc = fake_acquire(m, names[C_POOL], LARDER_WAIT_FOREVER, &l);
        fake_release(l);
        return closed(r, "pooled acquire", rc);
    case 3: /* cold: ttl 0 unloads it as soon as the last lease returns */
        rc = fake_acquire(m, names[C_COLD], LARDER_WAIT_FOREVER, &l);
        fake_release(l);
        return closed(r, "cold acquire", rc);
    case 4:
        rc = fake_acquire(m, names[C_COLDPOOL], LARDER_WAIT_FOREVER, &l);
        fake_release(l);
        return closed(r, "cold pooled acquire", rc);
    case 5: { /* async: the callback releases on whichever thread answers */
        atomic_fetch_add(&r->async_pending, 1);
        const char *name = names[(w->seed & 1) ? C_COLD : C_WARM];
        rc = larder_acquire_async(m, name, LARDER_WAIT_FOREVER, on_async, r);
        if (rc != 0) {
            atomic_fetch_sub(&r->async_pending, 1);
            unexpected(r, "larder_acquire_async", rc);
        }
        return false;
    }
    case 6: { /* all or nothing, over a warm and a cold component */
        const char *set[2] = {names[C_POOL], names[C_COLD]};
        larder_lease *ls[2] = {NULL, NULL};
        rc = larder_acquire_set(m, set, 2, LARDER_WAIT_FOREVER, ls);
        larder_release(ls[0]);
        larder_release(ls[1]);
        return closed(r, "larder_acquire_set", rc);
    }
    default: { /* a snapshot and a preload: reads go on, new work is refused */
        struct larder_snapshot *s = NULL;
        rc = larder_snapshot(m, &s);
        larder_snapshot_free(s);
        if (rc != 0)
            unexpected(r, "larder_snapshot", rc);
        return closed(r, "larder_preload", larder_preload(m, names[C_COLD]));
    }
    }
}

static void *work(void *arg)
{
    struct worker *w = arg;
    struct round *r = w->r;
    larder_lease *anchor = NULL;
    int rc = fake_acquire(r->m, names[C_ANCHOR], LARDER_WAIT_FOREVER, &anchor);
    atomic_fetch_add(&r->ready, 1);
    if (rc != 0) {
        unexpected(r, "anchor acquire", rc);
        return NULL;
    }
    while (!one_op(w))
        ;
    /* Some workers keep their anchor a little longer, so that the last lease (which frees
     * the manager) comes back on different threads in different rounds. */
    for (int i = (int)(w->seed % 4); i > 0; i--)
        one_op(w);
    fake_release(anchor);
    return NULL;
}

static struct round *round_open(void)
{
    struct round *r = calloc(1, sizeof *r);
    assert_non_null(r);
    struct larder_opts o;
    larder_opts_init(&o);
    o.loader_threads = 2;
    o.watch_pressure = false;
    o.history_seconds = 0;
    r->m = open_manager(BUDGET, NULL, &o);
    for (int i = 0; i < N_COMPS; i++) {
        bool pool = i == C_POOL || i == C_COLDPOOL;
        r->f[i] = fake_new(names[i], &(struct fake_spec){.estimate = 4096});
        struct larder_component_opts co;
        fake_opts(r->f[i], pool, &co);
        co.max_instances = pool ? 2 : 1;
        co.ttl_ms = i == C_COLD || i == C_COLDPOOL ? LARDER_TTL_IDLE : LARDER_TTL_NEVER;
        assert_ok(larder_define(r->m, names[i], &co));
    }
    assert_ok(larder_preload(r->m, names[C_WARM]));
    assert_ok(larder_preload(r->m, names[C_POOL]));
    assert_true(wait_state(r->m, names[C_WARM], LARDER_STATE_READY, patience_ms()));
    assert_true(wait_state(r->m, names[C_POOL], LARDER_STATE_READY, patience_ms()));
    return r;
}

static bool wait_until(atomic_long *v, long n, atomic_int *v2, int n2)
{
    double until = now_ms() + patience_ms();
    while ((v && atomic_load(v) < n) || (v2 && atomic_load(v2) != n2)) {
        if (now_ms() > until)
            return false;
        sched_yield();
    }
    return true;
}

static void run_round(int round)
{
    struct round *r = round_open();
    pthread_t tid[WORKERS];
    struct worker w[WORKERS];
    for (int t = 0; t < WORKERS; t++) {
        w[t] = (struct worker){.r = r, .seed = (unsigned)(round * 7919 + t * 104729 + 1),
                               .id = t};
        assert_int_equal(pthread_create(&tid[t], NULL, work, &w[t]), 0);
    }
    /* Close once every worker holds its anchor and a number of calls (different in each
     * round, none in some) have been made, so that close meets the calls at every stage. */
    long after = (round % 5) * 40;
    assert_true(wait_until(NULL, 0, &r->ready, WORKERS));
    assert_true(wait_until(&r->ops, after, NULL, 0));
    assert_int_equal(larder_close_report(r->m), 0);

    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += patience_ms() / 1000;
    for (int t = 0; t < WORKERS; t++)
        if (pthread_timedjoin_np(tid[t], NULL, &until) != 0)
            fail_msg("round %d: worker %d did not stop after close", round, t);
    /* Async answers come on the closing thread or the loaders, all before the last
     * lease came back; none may be missing. */
    assert_true(wait_until(NULL, 0, &r->async_pending, 0));
    if (atomic_load(&r->unexpected))
        fail_msg("round %d: %d unexpected answer(s); first: %s", round,
                 atomic_load(&r->unexpected), r->msg);
    assert_true(atomic_load(&r->closed_seen) >= WORKERS);
    for (int i = 0; i < N_COMPS; i++) {
        struct fake *f = r->f[i];
        assert_int_equal(atomic_load(&f->live_leases), 0);
        assert_int_equal(atomic_load(&f->loads), atomic_load(&f->unloads));
        assert_int_equal(atomic_load(&f->inst_new), atomic_load(&f->inst_free));
        assert_int_equal(atomic_load(&f->live_models), 0);
        assert_int_equal(atomic_load(&f->ud_frees), 1);
        fake_assert_clean(f);
        fake_free(f);
    }
    free(r);
}

static void test_close_races_calls(void **state)
{
    (void)state;
    int rounds = scaled(500, 100);
    for (int i = 0; i < rounds; i++)
        run_round(i);
    printf("close_race: %d rounds of %d threads\n", rounds, WORKERS);
}

/* ---- calls blocked inside the library when close starts ------------------------------ */

struct blocked {
    larder *m;
    const char *name;
    bool unload;          /* larder_unload (waits for leases) instead of an acquire */
    int rc;
    atomic_bool done;
};

static void *block(void *arg)
{
    struct blocked *b = arg;
    larder_lease *l = NULL;
    if (b->unload) {
        b->rc = larder_unload(b->m, b->name, LARDER_WAIT_FOREVER);
    } else {
        b->rc = fake_acquire(b->m, b->name, LARDER_WAIT_FOREVER, &l);
        fake_release(l);
    }
    atomic_store(&b->done, true);
    return NULL;
}

static bool draining(larder *m, const char *name)
{
    struct larder_component_info i;
    return comp_info(m, name, &i) && i.draining;
}

/* Threads without a lease wait inside the library (acquires behind a load that does not
 * return, an unload waiting for a lease that stays out) when close starts: each returns
 * LARDER_ECLOSED, none hangs close, and the manager is freed once the lease and the
 * loader close left behind are done with it. */
static void test_close_wakes_blocked_calls(void **state)
{
    (void)state;
    enum { ACQUIRERS = 4 };
    int rounds = scaled(20, 4);
    for (int round = 0; round < rounds; round++) {
        struct larder_opts o;
        larder_opts_init(&o);
        o.loader_threads = 1;
        o.watch_pressure = false;
        o.history_seconds = 0;
        o.close_timeout_ms = 0; /* the gated load is left to its thread */
        larder *m = open_manager(BUDGET, NULL, &o);
        struct fake *g = fake_new("gated", &(struct fake_spec){.estimate = 4096, .gated = true});
        struct fake *held = fake_new("held", &(struct fake_spec){.estimate = 4096});
        assert_ok(fake_define(m, g, false));
        assert_ok(fake_define(m, held, false));
        larder_lease *lease = NULL;
        assert_ok(fake_acquire(m, "held", patience_ms(), &lease));

        pthread_t tid[ACQUIRERS + 1];
        struct blocked b[ACQUIRERS + 1];
        for (int i = 0; i <= ACQUIRERS; i++) {
            b[i] = (struct blocked){.m = m, .name = i < ACQUIRERS ? "gated" : "held",
                                    .unload = i == ACQUIRERS};
            assert_int_equal(pthread_create(&tid[i], NULL, block, &b[i]), 0);
        }
        assert_true(wait_waiters(m, "gated", ACQUIRERS, patience_ms()));
        assert_true(fake_wait_gated(g, 1, patience_ms()));
        double until = now_ms() + patience_ms();
        while (!draining(m, "held") && now_ms() < until)
            sched_yield();
        assert_true(draining(m, "held"));

        assert_int_equal(larder_close_report(m), 1); /* the gated load's thread */
        struct timespec by;
        clock_gettime(CLOCK_REALTIME, &by);
        by.tv_sec += patience_ms() / 1000;
        for (int i = 0; i <= ACQUIRERS; i++) {
            if (pthread_timedjoin_np(tid[i], NULL, &by) != 0)
                fail_msg("round %d: %s still blocked after close", round,
                         b[i].unload ? "larder_unload" : "an acquire");
            assert_err(b[i].rc, LARDER_ECLOSED);
        }
        /* Still held: the lease and the loader. Calls with the lease are answered. */
        larder_lease *more = NULL;
        assert_err(larder_acquire(m, "held", 0, &more), LARDER_ECLOSED);
        assert_err(larder_define(m, "late", &(struct larder_component_opts){
                                                .struct_size = sizeof(struct larder_component_opts),
                                                .cls = &fake_class}),
                   LARDER_ECLOSED);
        fake_release(lease);
        fake_gate(g, true);
        until = now_ms() + patience_ms();
        while ((atomic_load(&g->ud_frees) < 1 || atomic_load(&held->ud_frees) < 1) &&
               now_ms() < until)
            sched_yield();
        assert_int_equal(atomic_load(&g->ud_frees), 1);
        assert_int_equal(atomic_load(&held->ud_frees), 1);
        assert_int_equal(atomic_load(&g->loads), atomic_load(&g->unloads));
        assert_int_equal(atomic_load(&held->loads), atomic_load(&held->unloads));
        assert_int_equal(atomic_load(&held->unloads), 1);
        fake_assert_clean(g);
        fake_assert_clean(held);
        /* The loader thread is detached and may still be leaving the fake's gate. */
        until = now_ms() + patience_ms();
        while (atomic_load(&g->gate_waiting) > 0 && now_ms() < until)
            sched_yield();
        fake_free(g);
        fake_free(held);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_races_calls),
        cmocka_unit_test(test_close_wakes_blocked_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
