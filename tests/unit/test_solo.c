/* Loads with no estimate at all: they are admitted alone, on a reservation that is
 * never zero, and what they measure becomes their reservation.
 *
 * Two components whose class gives no figure (no estimate, no measure: only the RSS
 * delta of the load tells their size) really map and touch SIZE bytes each. The budget
 * fits one of them. Both are acquired at the same moment from two threads, on a fresh
 * manager each round. At every event and inside every load the test checks that
 * reservations stay within the budget, that no loading or loaded component holds a
 * reservation of zero, that the two are never loaded at once, and that neither is
 * refused. A second test checks the order: a load with no estimate waits for the load
 * in flight, and loads requested while it runs wait until it is measured. */
#include "fake.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#define SIZE (8u << 20)

struct blob {
    const char *name;
    atomic_int loads;
};

static struct blob blobs[2] = {{.name = "left"}, {.name = "right"}};

/* What the checks see: the manager of the round, and what is wrong so far. */
static struct {
    _Atomic(larder *) m;
    atomic_int live;          /* blobs mapped right now */
    atomic_int problems;
    atomic_bool why_set;
    char why[256];
} watch;

static void problem(const char *fmt, ...)
{
    atomic_fetch_add(&watch.problems, 1);
    bool expected = false;
    if (!atomic_compare_exchange_strong(&watch.why_set, &expected, true))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(watch.why, sizeof watch.why, fmt, ap);
    va_end(ap);
}

/* Reserved within the budget, and no component that is loading past admission or
 * loaded holds zero. `loading`: the component whose load is running now. */
static void check_now(const char *loading)
{
    larder *m = atomic_load(&watch.m);
    struct larder_snapshot *s = NULL;
    if (!m || larder_snapshot(m, &s) != 0)
        return;
    const char *bad = check_snapshot(s);
    if (bad)
        problem("%s", bad);
    for (size_t i = 0; i < s->n; i++) {
        const struct larder_component_info *c = &s->components[i];
        bool held = c->state == LARDER_STATE_READY ||
                    (loading && strcmp(c->name, loading) == 0);
        if (held && c->reserved_bytes == 0)
            problem("%s is %s on a reservation of zero", c->name, larder_state_name(c->state));
    }
    larder_snapshot_free(s);
}

static int blob_load(void *ud, void **ret_model, char *err, size_t errlen)
{
    struct blob *b = ud;
    (void)err;
    (void)errlen;
    if (atomic_fetch_add(&watch.live, 1) != 0)
        problem("%s loads while the other is loaded", b->name);
    check_now(b->name);
    void *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        atomic_fetch_sub(&watch.live, 1);
        return -12;
    }
    for (size_t i = 0; i < SIZE; i += 4096)
        ((volatile char *)p)[i] = 1;
    atomic_fetch_add(&b->loads, 1);
    *ret_model = p;
    return 0;
}

static void blob_unload(void *ud, void *model)
{
    (void)ud;
    munmap(model, SIZE);
    atomic_fetch_sub(&watch.live, 1);
}

static const struct larder_class blob_class = {
    .struct_size = sizeof(struct larder_class),
    .name = "blob",
    .load = blob_load,
    .unload = blob_unload,
};

static void on_event(void *ud, const struct larder_event *ev)
{
    (void)ud;
    if (ev->type == LARDER_EVENT_LOAD_FAIL)
        problem("%s failed to load: %s", ev->name, larder_strerror(ev->error));
    check_now(NULL);
}

static void define_blob(larder *m, struct blob *b)
{
    struct larder_component_opts c;
    larder_component_opts_init(&c);
    c.cls = &blob_class;
    c.ud = b;
    assert_ok(larder_define(m, b->name, &c));
}

static larder *open_round(uint64_t budget)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = budget;
    o.on_event = on_event;
    o.watch_pressure = false;
    o.history_seconds = 0;
    larder *m = NULL;
    assert_ok(larder_open(&o, &m));
    for (int i = 0; i < 2; i++)
        define_blob(m, &blobs[i]);
    atomic_store(&watch.m, m);
    return m;
}

static void close_round(larder *m)
{
    atomic_store(&watch.m, NULL);
    larder_close(m);
}

/* What one load of a blob measures here (RSS delta, sanitizer shadow included). */
static uint64_t calibrate(void)
{
    larder *m = open_round(UINT64_C(1) << 34);
    uint64_t most = 0;
    for (int i = 0; i < 2; i++) {
        larder_lease *l = NULL;
        assert_ok(larder_acquire(m, blobs[i].name, patience_ms(), &l));
        larder_release(l);
        struct larder_component_info info;
        assert_true(comp_info(m, blobs[i].name, &info));
        assert_int_equal(info.measure_method, LARDER_MEASURE_RSS);
        most = info.measured_bytes > most ? info.measured_bytes : most;
        assert_ok(larder_unload(m, blobs[i].name, patience_ms()));
    }
    close_round(m);
    return most;
}

struct taker {
    larder *m;
    const char *name;
    pthread_barrier_t *start;
    int rc;
};

static void *take(void *arg)
{
    struct taker *t = arg;
    pthread_barrier_wait(t->start);
    larder_lease *l = NULL;
    t->rc = larder_acquire(t->m, t->name, patience_ms(), &l);
    if (t->rc == 0)
        check_now(NULL);
    larder_release(l);
    return NULL;
}

static void one_round(uint64_t budget)
{
    larder *m = open_round(budget);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    struct taker t[2];
    pthread_t tid[2];
    for (int i = 0; i < 2; i++) {
        t[i] = (struct taker){.m = m, .name = blobs[i].name, .start = &start};
        assert_int_equal(pthread_create(&tid[i], NULL, take, &t[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < 2; i++) {
        if (t[i].rc != 0)
            fail_msg("%s refused: %s", t[i].name, larder_strerror(t[i].rc));
        struct larder_component_info info;
        assert_true(comp_info(m, blobs[i].name, &info));
        assert_int_equal(info.failures, 0);
        assert_int_equal(info.loads, 1);
        if (info.state == LARDER_STATE_READY)
            assert_true(info.reserved_bytes >= info.measured_bytes);
    }
    close_round(m);
}

static void test_two_unknown_loads_one_budget(void **state)
{
    (void)state;
    uint64_t one = calibrate();
    assert_true(one >= SIZE / 2);
    /* Fits one of them with room to spare, never both. */
    uint64_t budget = one + one / 2;
    int rounds = scaled(40, 8);
    for (int r = 0; r < rounds && atomic_load(&watch.problems) == 0; r++)
        one_round(budget);
    if (atomic_load(&watch.problems))
        fail_msg("%d problem(s); first: %s", atomic_load(&watch.problems), watch.why);
}

/* Index of the first event of that type and name in the log; -1 when none. */
static long first_event(struct evlog *log, enum larder_event_type type, const char *name)
{
    struct evrec r;
    for (size_t k = 0; evlog_get(log, k, &r); k++)
        if (r.type == type && strcmp(r.name, name) == 0)
            return (long)k;
    return -1;
}

/* A load with no estimate waits for the load in flight, then runs with every other
 * admission held until it is measured. */
static void test_solo_load_runs_alone(void **state)
{
    (void)state;
    struct evlog *log = evlog_new();
    larder *m = open_manager(UINT64_C(1) << 30, log, NULL);
    struct fake *known = fake_new("known", &(struct fake_spec){.estimate = 1 << 20,
                                                               .gated = true});
    struct fake *unknown = fake_new("unknown", &(struct fake_spec){.gated = true});
    struct fake *later = fake_new("later", &(struct fake_spec){.estimate = 1 << 20});
    assert_ok(fake_define(m, known, false));
    assert_ok(fake_define(m, unknown, false));
    assert_ok(fake_define(m, later, false));
    assert_ok(larder_preload(m, "known"));
    assert_true(fake_wait_gated(known, 1, patience_ms()));
    assert_ok(larder_preload(m, "unknown"));
    fake_gate(known, true);
    assert_true(fake_wait_gated(unknown, 1, patience_ms()));
    /* unknown is loading, alone, on the whole free budget */
    struct larder_component_info i;
    assert_true(comp_info(m, "unknown", &i));
    assert_int_equal(i.reserved_bytes, (UINT64_C(1) << 30) - (1 << 20));
    assert_ok(larder_preload(m, "later"));
    fake_gate(unknown, true);
    assert_true(evlog_wait(log, LARDER_EVENT_LOAD_DONE, "later", 1, patience_ms()));
    long k = first_event(log, LARDER_EVENT_LOAD_DONE, "known");
    long u = first_event(log, LARDER_EVENT_LOAD_DONE, "unknown");
    long l = first_event(log, LARDER_EVENT_LOAD_DONE, "later");
    assert_true(k >= 0 && u > k && l > u);
    /* measured: its reservation is what it took, at least a page */
    assert_true(comp_info(m, "unknown", &i));
    assert_int_equal(i.measure_method, LARDER_MEASURE_RSS);
    assert_true(i.reserved_bytes >= 4096 && i.reserved_bytes < (UINT64_C(1) << 30) / 2);
    assert_int_equal(i.reserved_bytes, i.measured_bytes > 4096 ? i.measured_bytes : 4096);
    larder_close(m);
    struct fake *all[] = {known, unknown, later};
    for (int n = 0; n < 3; n++) {
        fake_assert_clean(all[n]);
        fake_free(all[n]);
    }
    evlog_free(log);
}

/* An RSS delta larger than the whole budget refuses the load but is not kept as a
 * verdict: after the cooldown the component is loaded and measured again. */
static void test_rss_too_big_is_measured_again(void **state)
{
    (void)state;
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = SIZE / 2;
    o.cooldown_min_ms = 1;
    o.cooldown_max_ms = 1;
    o.watch_pressure = false;
    larder *m = NULL;
    assert_ok(larder_open(&o, &m));
    struct blob b = {.name = "heavy"};
    define_blob(m, &b);
    larder_lease *l = NULL;
    assert_err(larder_acquire(m, "heavy", patience_ms(), &l), LARDER_ETOOBIG);
    /* refused, cooling down, nothing learned, nothing reserved */
    struct larder_component_info i;
    assert_true(comp_info(m, "heavy", &i));
    assert_true(i.state == LARDER_STATE_FAILED && i.failures == 1);
    assert_true(i.measured_bytes == 0 && i.reserved_bytes == 0);
    int rc;
    double end = now_ms() + patience_ms();
    while ((rc = larder_acquire(m, "heavy", patience_ms(), &l)) == LARDER_ECOOLDOWN &&
           now_ms() < end)
        sleep_ms(1);
    assert_err(rc, LARDER_ETOOBIG);
    assert_int_equal(atomic_load(&b.loads), 2);
    larder_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_unknown_loads_one_budget),
        cmocka_unit_test(test_solo_load_runs_alone),
        cmocka_unit_test(test_rss_too_big_is_measured_again),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
