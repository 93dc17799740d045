/* Stress: random acquire/release/preload/unload from 8 threads over components that add
 * up to 5x the budget, while a monitor thread and the event callback check the budget
 * invariants on snapshots, and the fake classes check that nothing leased is unloaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define THREADS 8
#define NCOMP 40
#define BUDGET 1000000ULL
#define TOTAL_OPS 100000
#define MAX_HELD 2

struct world {
    larder *m;
    struct fake *f[NCOMP];
    char names[NCOMP][16];
    struct fake_world world;
    atomic_bool stop;
    atomic_int bad;             /* invariant breaks seen by the monitor or the hook */
    atomic_int unexpected;      /* errors no operation here may return */
    atomic_long checks;
    atomic_long ok_acquires;
    atomic_long timeouts, nospc, draining, busy_unloads;
    pthread_mutex_t msg_lock;
    char msg[256];
};

static void note(struct world *w, atomic_int *counter, const char *fmt, const char *what)
{
    if (atomic_fetch_add(counter, 1) != 0)
        return;
    pthread_mutex_lock(&w->msg_lock);
    snprintf(w->msg, sizeof(w->msg), fmt, what);
    pthread_mutex_unlock(&w->msg_lock);
}

/* One snapshot check: budget, sums, and "leased implies ready". */
static void check_once(struct world *w)
{
    struct larder_snapshot *s = NULL;
    if (larder_snapshot(w->m, &s) != 0) {
        note(w, &w->bad, "%s", "larder_snapshot failed");
        return;
    }
    const char *why = check_snapshot(s);
    if (why)
        note(w, &w->bad, "snapshot: %s", why);
    for (size_t i = 0; i < s->n; i++) {
        const struct larder_component_info *c = &s->components[i];
        if (c->leases > 0 && c->state != LARDER_STATE_READY)
            note(w, &w->bad, "%s has leases but is not READY", c->name);
        if (c->state == LARDER_STATE_UNLOADED && c->reserved_bytes != 0)
            note(w, &w->bad, "%s is UNLOADED but still reserves bytes", c->name);
    }
    larder_snapshot_free(s);
    atomic_fetch_add(&w->checks, 1);
}

static void *monitor(void *arg)
{
    struct world *w = arg;
    const struct timespec breath = {0, 500000};
    while (!atomic_load(&w->stop)) {
        check_once(w);
        nanosleep(&breath, NULL); /* each snapshot reads /proc: leave the workers room */
    }
    return NULL;
}

static void on_event(void *ud, const struct larder_event *ev)
{
    struct world *w = ud;
    if (atomic_load(&w->stop))
        return;
    if (ev->type == LARDER_EVENT_LOAD_DONE) /* just admitted: the budget is tightest */
        check_once(w);
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static bool allowed_acquire_error(int rc)
{
    return rc == LARDER_ETIMEDOUT || rc == LARDER_ENOSPC || rc == LARDER_EDRAINING;
}

struct worker {
    struct world *w;
    uint64_t seed;
    int ops;
    larder_lease *held[MAX_HELD];
    int nheld;
};

static void do_acquire(struct worker *k, const char *name)
{
    if (k->nheld == MAX_HELD)
        return;
    /* Only the first lease may wait: a thread that holds one never blocks. */
    int64_t timeout = k->nheld == 0 ? patience_ms() : LARDER_NO_WAIT;
    larder_lease *l = NULL;
    int rc = fake_acquire(k->w->m, name, timeout, &l);
    if (rc == 0) {
        k->held[k->nheld++] = l;
        atomic_fetch_add(&k->w->ok_acquires, 1);
    } else if (!allowed_acquire_error(rc)) {
        note(k->w, &k->w->unexpected, "acquire: %s", larder_strerror(rc));
    } else {
        atomic_fetch_add(rc == LARDER_ETIMEDOUT ? &k->w->timeouts
                         : rc == LARDER_ENOSPC  ? &k->w->nospc
                                                : &k->w->draining, 1);
    }
}

static void do_release(struct worker *k, uint64_t r)
{
    if (k->nheld == 0)
        return;
    int idx = (int)(r % (uint64_t)k->nheld);
    fake_release(k->held[idx]);
    k->held[idx] = k->held[--k->nheld];
}

static void *work(void *arg)
{
    struct worker *k = arg;
    struct world *w = k->w;
    for (int op = 0; op < k->ops; op++) {
        uint64_t r = rnd(&k->seed);
        const char *name = w->names[(r >> 8) % NCOMP];
        int kind = (int)(r % 100);
        if (kind < 45) {
            do_acquire(k, name);
        } else if (kind < 85) {
            do_release(k, r >> 20);
        } else if (kind < 93) {
            int rc = larder_preload(w->m, name);
            if (rc < 0 && rc != LARDER_EDRAINING && rc != LARDER_ENOSPC)
                note(w, &w->unexpected, "preload: %s", larder_strerror(rc));
        } else {
            int rc = larder_unload(w->m, name, LARDER_NO_WAIT);
            if (rc < 0 && rc != LARDER_ETIMEDOUT && rc != LARDER_EDRAINING)
                note(w, &w->unexpected, "unload: %s", larder_strerror(rc));
            else if (rc < 0)
                atomic_fetch_add(&w->busy_unloads, 1);
        }
    }
    while (k->nheld > 0)
        do_release(k, 0);
    return NULL;
}

static void define_all(struct world *w, uint64_t seed)
{
    uint64_t raw[NCOMP], sum = 0;
    for (int i = 0; i < NCOMP; i++) {
        raw[i] = 1 + rnd(&seed) % 1000;
        sum += raw[i];
    }
    for (int i = 0; i < NCOMP; i++) {
        /* Scale to 5 x budget in total; no single component over a third of it. */
        uint64_t size = raw[i] * 5 * BUDGET / sum;
        if (size > BUDGET / 3)
            size = BUDGET / 3;
        if (size < 1000)
            size = 1000;
        snprintf(w->names[i], sizeof(w->names[i]), "c%02d", i);
        bool override = i % 2 == 1;
        struct fake_spec spec = {.estimate = override ? 0 : size, .measured = size,
                                 .load_ms = rnd(&seed) % 8 == 0};
        w->f[i] = fake_new(w->names[i], &spec);
        fake_join(w->f[i], &w->world, size);
        struct larder_component_opts o;
        bool pool = i % 5 == 0;
        fake_opts(w->f[i], pool, &o);
        if (pool)
            o.max_instances = 2;
        if (override)
            o.memory_bytes = size;
        o.priority = (int)(rnd(&seed) % 3);
        assert_ok(larder_define(w->m, w->names[i], &o));
    }
}

/* Prints what has not settled (for the failure message). */
static void dump_unsettled(struct world *w)
{
    struct larder_snapshot *s = NULL;
    printf("stress: %u preload(s) pending\n", larder_preload_pending(w->m));
    if (larder_snapshot(w->m, &s) != 0)
        return;
    for (size_t i = 0; i < s->n; i++) {
        const struct larder_component_info *c = &s->components[i];
        if (c->state == LARDER_STATE_LOADING || c->state == LARDER_STATE_UNLOADING ||
            c->waiters || c->leases)
            printf("stress: %s %s waiters %u leases %u instances %u/%u reserved %llu\n",
                   c->name, larder_state_name(c->state), c->waiters, c->leases,
                   c->instances_busy, c->instances, (unsigned long long)c->reserved_bytes);
    }
    printf("stress: reserved %llu of %llu\n", (unsigned long long)s->reserved_bytes,
           (unsigned long long)s->budget_bytes);
    larder_snapshot_free(s);
}

/* Waits for background preloads and loads to settle. */
static bool quiesce(struct world *w)
{
    double end = now_ms() + patience_ms();
    while (now_ms() < end) {
        struct larder_snapshot *s = NULL;
        if (larder_preload_pending(w->m) != 0 || larder_snapshot(w->m, &s) != 0) {
            sleep_ms(2);
            continue;
        }
        bool busy = false;
        for (size_t i = 0; i < s->n; i++)
            busy |= s->components[i].state == LARDER_STATE_LOADING ||
                    s->components[i].state == LARDER_STATE_UNLOADING;
        larder_snapshot_free(s);
        if (!busy)
            return true;
        sleep_ms(2);
    }
    dump_unsettled(w);
    return false;
}

static void check_end(struct world *w)
{
    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(w->m, &s));
    assert_null(check_snapshot(s));
    assert_int_equal(s->n, NCOMP);
    for (size_t i = 0; i < s->n; i++) {
        const struct larder_component_info *c = &s->components[i];
        struct fake *f = w->f[i];
        assert_string_equal(c->name, f->name);
        assert_int_equal(c->leases, 0);
        assert_int_equal(c->waiters, 0);
        int live = atomic_load(&f->loads) - atomic_load(&f->unloads);
        int loaded = c->state == LARDER_STATE_READY;
        if (live != loaded)
            fail_msg("%s: %d loads - %d unloads, but state %s", c->name,
                     atomic_load(&f->loads), atomic_load(&f->unloads),
                     larder_state_name(c->state));
        assert_int_equal(c->loads, (uint64_t)atomic_load(&f->loads));
        assert_int_equal(atomic_load(&f->live_leases), 0);
    }
    larder_snapshot_free(s);
}

static void test_stress(void **state)
{
    struct world *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    pthread_mutex_init(&w->msg_lock, NULL);
    struct evlog *log = evlog_new();
    log->hook = on_event;
    log->hook_ud = w;
    struct larder_opts o;
    larder_opts_init(&o);
    o.admission_timeout_ms = 2000;
    o.loader_threads = 4;
    w->world.budget = BUDGET;
    w->m = open_manager(BUDGET, log, &o);
    define_all(w, 0x9e3779b97f4a7c15ULL);

    pthread_t mon, tid[THREADS];
    struct worker k[THREADS];
    const int per_thread = scaled(TOTAL_OPS, 2000) / THREADS;
    assert_int_equal(pthread_create(&mon, NULL, monitor, w), 0);
    for (int t = 0; t < THREADS; t++) {
        k[t] = (struct worker){.w = w, .seed = 0x1234567ULL * (uint64_t)(t + 1), .ops = per_thread};
        assert_int_equal(pthread_create(&tid[t], NULL, work, &k[t]), 0);
    }
    for (int t = 0; t < THREADS; t++)
        pthread_join(tid[t], NULL);
    bool settled = quiesce(w);
    printf("stress: %d ops/thread; %ld leases, %ld timeouts, %ld no-room, %ld draining, "
           "%ld unloads refused, %ld snapshot checks, %lu events\n", per_thread,
           atomic_load(&w->ok_acquires), atomic_load(&w->timeouts), atomic_load(&w->nospc),
           atomic_load(&w->draining), atomic_load(&w->busy_unloads), atomic_load(&w->checks),
           evlog_total(log));
    atomic_store(&w->stop, true);
    pthread_join(mon, NULL);

    if (atomic_load(&w->bad) || atomic_load(&w->unexpected))
        fail_msg("%d invariant break(s), %d unexpected error(s); first: %s",
                 atomic_load(&w->bad), atomic_load(&w->unexpected), w->msg);
    assert_true(settled);
    check_end(w);
    assert_true(atomic_load(&w->checks) > 0);
    assert_true(atomic_load(&w->ok_acquires) > per_thread); /* real traffic happened */
    /* 5x the budget cannot stay loaded: room was made by evicting idle components. */
    assert_true(evlog_count_reason(log, LARDER_EVENT_EVICT, NULL, LARDER_REASON_BUDGET) > 0);

    larder_close(w->m);
    for (int i = 0; i < NCOMP; i++) {
        assert_int_equal(atomic_load(&w->f[i]->loads), atomic_load(&w->f[i]->unloads));
        assert_int_equal(atomic_load(&w->f[i]->inst_new), atomic_load(&w->f[i]->inst_free));
        fake_assert_clean(w->f[i]);
        fake_free(w->f[i]);
    }
    evlog_free(log);
    pthread_mutex_destroy(&w->msg_lock);
    free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
