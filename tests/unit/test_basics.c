/* Core library basics: open/close, definitions and their errors, the lazy lifecycle of
 * one component step by step (checked through snapshots), lease accessors, preload,
 * estimate sources, and the name/strerror tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUDGET (1000ULL * 1000 * 1000)

static void test_opts_defaults(void **state)
{
    struct larder_opts o;
    memset(&o, 0xa5, sizeof(o));
    larder_opts_init(&o);
    assert_int_equal(o.struct_size, sizeof(o));
    assert_int_equal(o.budget_bytes, 0);
    assert_true(o.budget_fraction == 0.75);
    assert_int_equal(o.loader_threads, 4);
    assert_int_equal(o.default_ttl_ms, 300000);
    assert_int_equal(o.default_queue_max, 1024);
    assert_int_equal(o.admission_timeout_ms, 30000);
    assert_true(o.file_size_factor == 1.2);
    assert_int_equal(o.cooldown_min_ms, 1000);
    assert_int_equal(o.cooldown_max_ms, 300000);
    assert_true(o.trim_after_unload);
    assert_null(o.on_event);

    struct larder_component_opts c;
    memset(&c, 0xa5, sizeof(c));
    larder_component_opts_init(&c);
    assert_int_equal(c.struct_size, sizeof(c));
    assert_null(c.cls);
    assert_null(c.fallback);
    assert_null(c.path);
    assert_true(c.ttl_ms == LARDER_TTL_DEFAULT);
    assert_int_equal(c.max_instances, 1);
    assert_false(c.pin);
    assert_false(c.preload);
    assert_int_equal(c.priority, 0);
    assert_int_equal(c.memory_bytes, 0);
    assert_int_equal(c.queue_max, 0);
}

static void test_open_defaults(void **state)
{
    larder *m = NULL;
    assert_ok(larder_open(NULL, &m));
    assert_non_null(m);
    assert_true(larder_get_budget(m) > 0);
    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(m, &s));
    assert_int_equal(s->n, 0);
    assert_int_equal(s->reserved_bytes, 0);
    assert_int_equal(s->budget_bytes, larder_get_budget(m));
    assert_string_equal(s->policy, "cost");
    assert_true(s->rss_bytes > 0);
    assert_true(s->peak_rss_bytes >= s->rss_bytes);
    assert_null(larder_snapshot_free(s));
    assert_null(larder_close(m));

    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = 12345;
    o.policy = "lru";
    m = NULL;
    assert_ok(larder_open(&o, &m));
    assert_int_equal(larder_get_budget(m), 12345);
    assert_ok(larder_snapshot(m, &s));
    assert_string_equal(s->policy, "lru");
    larder_snapshot_free(s);
    assert_ok(larder_set_budget(m, 777));
    assert_int_equal(larder_get_budget(m), 777);
    assert_null(larder_close(m));

    assert_null(larder_close(NULL));
    assert_null(larder_release(NULL));
    assert_null(larder_snapshot_free(NULL));
}

static void test_open_errors(void **state)
{
    larder *m = (larder *)&m; /* must stay untouched */
    larder *const untouched = m;
    struct larder_opts o;
    larder_opts_init(&o);
    o.struct_size = 0;
    assert_err(larder_open(&o, &m), -EINVAL);
    o.struct_size = 8;
    assert_err(larder_open(&o, &m), -EINVAL);
    larder_opts_init(&o);
    o.policy = "no-such-policy";
    assert_err(larder_open(&o, &m), LARDER_EPOLICY);
    assert_ptr_equal(m, untouched);
    assert_err(larder_open(NULL, NULL), -EINVAL);
}

static void test_define_errors(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 100});
    struct larder_component_opts o;
    fake_opts(f, false, &o);

    assert_err(larder_define(NULL, "a", &o), -EINVAL);
    assert_err(larder_define(m, NULL, &o), -EINVAL);
    assert_err(larder_define(m, "", &o), -EINVAL);
    assert_err(larder_define(m, "a", NULL), -EINVAL);
    o.struct_size = 0;
    assert_err(larder_define(m, "a", &o), -EINVAL);
    o.struct_size = 4;
    assert_err(larder_define(m, "a", &o), -EINVAL);
    fake_opts(f, false, &o);
    o.cls = NULL;
    assert_err(larder_define(m, "a", &o), -EINVAL);

    struct larder_class no_load = fake_class;
    no_load.load = NULL;
    fake_opts(f, false, &o);
    o.cls = &no_load;
    assert_err(larder_define(m, "a", &o), -EINVAL);
    struct larder_class no_unload = fake_class;
    no_unload.unload = NULL;
    o.cls = &no_unload;
    assert_err(larder_define(m, "a", &o), -EINVAL);
    struct larder_class half_pool = fake_pool_class;
    half_pool.instance_free = NULL;
    o.cls = &half_pool;
    assert_err(larder_define(m, "a", &o), -EINVAL);
    struct larder_class bad_size = fake_class;
    bad_size.struct_size = 0;
    o.cls = &bad_size;
    assert_err(larder_define(m, "a", &o), -EINVAL);

    assert_ok(fake_define(m, f, false));
    assert_err(fake_define(m, f, false), LARDER_EEXIST);
    fake_opts(f, true, &o);
    assert_err(larder_define(m, "a", &o), LARDER_EEXIST);
    /* Failed defines never took ownership of ud. */
    assert_int_equal(atomic_load(&f->ud_frees), 0);

    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(m, &s));
    assert_int_equal(s->n, 1);
    larder_snapshot_free(s);
    assert_int_equal(atomic_load(&f->load_calls), 0);
    larder_close(m);
    assert_int_equal(atomic_load(&f->ud_frees), 1);
    fake_free(f);
}

/* Defining a name that is taken changes nothing, even while it is loaded and leased. */
static void test_define_taken_while_loaded(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 100});
    struct fake *g = fake_new("a", &(struct fake_spec){.estimate = 100});
    assert_ok(fake_define(m, f, false));
    larder_lease *l1 = NULL, *l2 = NULL;
    assert_ok(fake_acquire(m, "a", 1000, &l1));
    assert_err(fake_define(m, g, false), LARDER_EEXIST);
    struct larder_component_info i;
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.state, LARDER_STATE_READY);
    assert_int_equal(i.leases, 1);
    assert_ok(fake_acquire(m, "a", 1000, &l2));
    assert_false(larder_lease_cold_start(l2));
    assert_ptr_equal(fake_of(l2), f);
    fake_release(l1);
    fake_release(l2);
    assert_err(fake_define(m, g, false), LARDER_EEXIST);
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.state, LARDER_STATE_READY);
    assert_int_equal(i.reserved_bytes, 100);
    larder_close(m);
    assert_int_equal(atomic_load(&f->load_calls), 1);
    assert_int_equal(atomic_load(&f->unloads), 1);
    assert_int_equal(atomic_load(&g->load_calls), 0);
    assert_int_equal(atomic_load(&g->ud_frees), 0);
    fake_assert_clean(f);
    fake_free(f);
    fake_free(g);
}

static void test_acquire_errors(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 100});
    assert_ok(fake_define(m, f, false));
    larder_lease *l = (larder_lease *)&l;
    larder_lease *const untouched = l;
    assert_err(larder_acquire(m, "nope", 1000, &l), LARDER_ENOTFOUND);
    assert_err(larder_acquire(m, "", 1000, &l), LARDER_ENOTFOUND);
    assert_err(larder_acquire(m, NULL, 1000, &l), -EINVAL);
    assert_err(larder_acquire(NULL, "a", 1000, &l), -EINVAL);
    assert_err(larder_acquire(m, "a", 1000, NULL), -EINVAL);
    assert_ptr_equal(l, untouched);
    assert_err(larder_preload(m, "nope"), LARDER_ENOTFOUND);
    assert_err(larder_unload(m, "nope", 0), LARDER_ENOTFOUND);
    assert_err(larder_undefine(m, "nope", 0), LARDER_ENOTFOUND);
    /* Nothing of that was a reason to load. */
    assert_int_equal(atomic_load(&f->load_calls), 0);
    larder_close(m);
    fake_free(f);
}

static void check_idle_info(larder *m, const char *name)
{
    struct larder_component_info i;
    assert_true(comp_info(m, name, &i));
    assert_int_equal(i.state, LARDER_STATE_UNLOADED);
    assert_int_equal(i.loads, 0);
    assert_int_equal(i.hits, 0);
    assert_int_equal(i.cold_starts, 0);
    assert_int_equal(i.leases, 0);
    assert_int_equal(i.instances, 0);
    assert_int_equal(i.reserved_bytes, 0);
    assert_int_equal(i.measured_bytes, 0);
    assert_int_equal(i.measure_method, LARDER_MEASURE_NONE);
    assert_int_equal(i.expires_in_ms, -1);
    assert_int_equal(i.last_error, 0);
    assert_int_equal(i.failures, 0);
    assert_false(i.draining);
}

/* The registry shows what a component will cost before anything loads it: that is what
 * admission, set checks and `larder check` go by. */
static void test_estimate_before_load(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 1000});
    struct fake *o = fake_new("o", &(struct fake_spec){.estimate = 1000});
    assert_ok(fake_define(m, f, false));
    struct larder_component_opts opts;
    fake_opts(o, false, &opts);
    opts.memory_bytes = 777;
    assert_ok(larder_define(m, "o", &opts));
    struct larder_component_info i;
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.estimate_bytes, 1000);
    assert_int_equal(i.estimate_source, LARDER_ESTIMATE_CLASS);
    assert_true(comp_info(m, "o", &i));
    assert_int_equal(i.estimate_bytes, 777);
    assert_int_equal(i.estimate_source, LARDER_ESTIMATE_OVERRIDE);
    assert_int_equal(atomic_load(&f->load_calls), 0);
    larder_close(m);
    fake_free(f);
    fake_free(o);
}

static void test_lazy_lifecycle(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_manager(BUDGET, log, NULL);
    struct fake *f = fake_new("a", &(struct fake_spec){.estimate = 1000, .measured = 1500,
                                                       .load_ms = 5});
    assert_ok(fake_define(m, f, false));
    /* Lazy: defining loads nothing. */
    assert_int_equal(atomic_load(&f->load_calls), 0);
    check_idle_info(m, "a");

    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(m, &s));
    assert_int_equal(s->n, 1);
    assert_string_equal(s->components[0].name, "a");
    assert_string_equal(s->components[0].class_name, "fake");
    assert_null(s->components[0].fallback);
    assert_null(s->components[0].last_error_message);
    larder_snapshot_free(s);

    larder_lease *l1 = NULL;
    assert_ok(fake_acquire(m, "a", LARDER_WAIT_FOREVER, &l1));
    assert_non_null(l1);
    assert_true(larder_lease_cold_start(l1));
    assert_string_equal(larder_lease_served_by(l1), "a");
    assert_string_equal(larder_lease_requested(l1), "a");
    assert_ptr_equal(fake_of(l1), f);
    assert_null(larder_lease_instance(l1));
    assert_true(larder_lease_load_ms(l1) > 0);
    assert_true(larder_lease_wait_ms(l1) >= larder_lease_load_ms(l1));
    assert_int_equal(atomic_load(&f->loads), 1);

    struct larder_component_info i;
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.state, LARDER_STATE_READY);
    assert_int_equal(i.loads, 1);
    assert_int_equal(i.cold_starts, 1);
    assert_int_equal(i.hits, 1); /* every lease served counts, cold ones too */
    assert_int_equal(i.leases, 1);
    assert_int_equal(i.estimate_bytes, 1000);
    assert_int_equal(i.measured_bytes, 1500);
    assert_int_equal(i.measure_method, LARDER_MEASURE_CLASS);
    assert_int_equal(i.reserved_bytes, 1500); /* max(estimate, measured) */
    assert_int_equal(i.instances_max, 0);      /* a shared class */
    assert_int_equal(i.expires_in_ms, -1);     /* leased, not idle */
    assert_true(i.load_ms_last > 0);
    assert_ok(larder_snapshot(m, &s));
    assert_int_equal(s->reserved_bytes, 1500);
    assert_null(check_snapshot(s));
    larder_snapshot_free(s);

    /* A second acquire is a hit on the same model. */
    larder_lease *l2 = NULL;
    assert_ok(fake_acquire(m, "a", LARDER_NO_WAIT, &l2));
    assert_false(larder_lease_cold_start(l2));
    assert_true(larder_lease_load_ms(l2) == 0);
    assert_ptr_equal(larder_lease_model(l2), larder_lease_model(l1));
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.loads, 1);
    assert_int_equal(i.hits, 2);
    assert_int_equal(i.cold_starts, 1);
    assert_int_equal(i.leases, 2);

    assert_null(fake_release(l1));
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.leases, 1);
    assert_null(fake_release(l2));
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.leases, 0);
    assert_int_equal(i.state, LARDER_STATE_READY); /* kept warm by the default ttl */
    assert_true(i.expires_in_ms > 0 && i.expires_in_ms <= 300000);
    assert_int_equal(i.reserved_bytes, 1500);
    assert_int_equal(atomic_load(&f->unloads), 0);

    /* LOAD_DONE may trail the leases it made. */
    assert_true(evlog_wait(log, LARDER_EVENT_LOAD_DONE, "a", 1, patience_ms()));
    assert_int_equal(evlog_count(log, LARDER_EVENT_LOAD_START, "a"), 1);
    assert_int_equal(evlog_count(log, LARDER_EVENT_LOAD_DONE, "a"), 1);
    assert_int_equal(evlog_count(log, LARDER_EVENT_LOAD_FAIL, "a"), 0);

    larder_close(m);
    assert_int_equal(atomic_load(&f->unloads), 1);
    assert_int_equal(atomic_load(&f->live_models), 0);
    assert_int_equal(atomic_load(&f->ud_frees), 1);
    fake_assert_clean(f);
    fake_free(f);
    evlog_free(log);
}

static bool preloads_done(larder *m)
{
    double end = now_ms() + patience_ms();
    while (larder_preload_pending(m) != 0) {
        if (now_ms() > end)
            return false;
        sleep_ms(1);
    }
    return true;
}

static void test_preload(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    const char *names[] = {"a", "b", "c", "d"};
    struct fake *f[4];
    for (int k = 0; k < 4; k++) {
        f[k] = fake_new(names[k], &(struct fake_spec){.estimate = 100, .load_ms = 2});
        struct larder_component_opts o;
        fake_opts(f[k], false, &o);
        o.preload = k == 1 || k == 2;
        assert_ok(larder_define(m, names[k], &o));
    }
    assert_int_equal(larder_preload_pending(m), 0);
    assert_ok(larder_preload(m, "a"));
    assert_true(preloads_done(m));
    assert_true(wait_state(m, "a", LARDER_STATE_READY, patience_ms()));
    assert_int_equal(atomic_load(&f[0]->loads), 1);
    assert_ok(larder_preload(m, "a")); /* already loaded: nothing more */
    assert_true(preloads_done(m));
    assert_int_equal(atomic_load(&f[0]->load_calls), 1);

    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, "a", 1000, &l));
    assert_false(larder_lease_cold_start(l));
    fake_release(l);

    assert_int_equal(larder_preload_all(m), 2);
    assert_true(preloads_done(m));
    assert_true(wait_state(m, "b", LARDER_STATE_READY, patience_ms()));
    assert_true(wait_state(m, "c", LARDER_STATE_READY, patience_ms()));
    struct larder_component_info i;
    assert_true(comp_info(m, "d", &i));
    assert_int_equal(i.state, LARDER_STATE_UNLOADED);
    assert_true(comp_info(m, "b", &i));
    assert_true(i.preload);
    assert_int_equal(i.cold_starts, 0); /* no caller waited for a preload */
    assert_int_equal(atomic_load(&f[3]->load_calls), 0);
    larder_close(m);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(atomic_load(&f[k]->loads), atomic_load(&f[k]->unloads));
        fake_assert_clean(f[k]);
        fake_free(f[k]);
    }
}

static void test_estimate_sources(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    /* Override beats the class. */
    struct fake *ov = fake_new("ov", &(struct fake_spec){.estimate = 100});
    struct larder_component_opts o;
    fake_opts(ov, false, &o);
    o.memory_bytes = 777;
    assert_ok(larder_define(m, "ov", &o));
    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, "ov", 1000, &l));
    fake_release(l);
    struct larder_component_info i;
    assert_true(comp_info(m, "ov", &i));
    assert_int_equal(i.estimate_bytes, 777);
    assert_int_equal(i.estimate_source, LARDER_ESTIMATE_OVERRIDE);

    /* No class figure: file size x factor (1.2 by default). */
    char path[] = "/tmp/larder-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char buf[1000] = {0};
    for (int k = 0; k < 10; k++)
        assert_int_equal(write(fd, buf, sizeof(buf)), sizeof(buf));
    close(fd);
    struct fake *fi = fake_new("file", &(struct fake_spec){.measured = 5000});
    fake_opts(fi, false, &o);
    o.path = path;
    assert_ok(larder_define(m, "file", &o));
    assert_ok(fake_acquire(m, "file", 1000, &l));
    fake_release(l);
    assert_true(comp_info(m, "file", &i));
    assert_int_equal(i.estimate_source, LARDER_ESTIMATE_FILE);
    assert_int_equal(i.estimate_bytes, 12000);
    unlink(path);

    /* Neither: after one load, the measured size is remembered as the estimate. */
    struct fake *le = fake_new("learn", &(struct fake_spec){.measured = 2000});
    assert_ok(fake_define(m, le, false));
    assert_ok(fake_acquire(m, "learn", 1000, &l));
    fake_release(l);
    assert_true(comp_info(m, "learn", &i));
    assert_int_equal(i.measured_bytes, 2000);
    assert_int_equal(i.measure_method, LARDER_MEASURE_CLASS);
    assert_ok(larder_unload(m, "learn", 1000));
    assert_true(comp_info(m, "learn", &i));
    assert_int_equal(i.state, LARDER_STATE_UNLOADED);
    assert_int_equal(i.reserved_bytes, 0);
    assert_int_equal(atomic_load(&le->unloads), 1);
    /* Loaded again: admitted on the size it was measured at. */
    assert_ok(fake_acquire(m, "learn", 1000, &l));
    fake_release(l);
    assert_true(comp_info(m, "learn", &i));
    assert_int_equal(i.estimate_source, LARDER_ESTIMATE_LEARNED);
    assert_int_equal(i.estimate_bytes, 2000);
    larder_close(m);
    fake_free(ov);
    fake_free(fi);
    fake_free(le);
}

static void test_snapshot_sorted(void **state)
{
    larder *m = open_manager(BUDGET, NULL, NULL);
    const char *names[] = {"m", "c", "x", "a"};
    struct fake *f[4];
    for (int k = 0; k < 4; k++) {
        f[k] = fake_new(names[k], &(struct fake_spec){.estimate = 10});
        assert_ok(fake_define(m, f[k], false));
    }
    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(m, &s));
    assert_int_equal(s->n, 4);
    for (size_t k = 1; k < s->n; k++)
        assert_true(strcmp(s->components[k - 1].name, s->components[k].name) < 0);
    larder_snapshot_free(s);
    larder_close(m);
    for (int k = 0; k < 4; k++)
        fake_free(f[k]);
}

static void test_strerror(void **state)
{
    const int codes[] = {
        LARDER_ENOTFOUND, LARDER_EEXIST,   LARDER_ETIMEDOUT, LARDER_EBUSY,  LARDER_ETOOBIG,
        LARDER_ENOSPC,    LARDER_ELOAD,    LARDER_ECOOLDOWN, LARDER_EDRAINING,
        LARDER_ECLOSED,   LARDER_ECANCELED, LARDER_EINUSE,  LARDER_EPOLICY, LARDER_ECYCLE,
        -EINVAL,          -ENOMEM,         -ENOENT,
    };
    const size_t n = sizeof(codes) / sizeof(codes[0]);
    for (size_t a = 0; a < n; a++) {
        const char *sa = larder_strerror(codes[a]);
        assert_non_null(sa);
        assert_true(strlen(sa) > 0);
        for (size_t b = 0; b < a; b++)
            if (strcmp(sa, larder_strerror(codes[b])) == 0)
                fail_msg("codes %d and %d share the message \"%s\"", codes[a], codes[b], sa);
    }
    assert_non_null(larder_strerror(0));
    assert_non_null(larder_strerror(-29999));
    assert_non_null(larder_strerror(12345));
    assert_non_null(larder_strerror(-2147483647 - 1));
}

static void check_names(const char *(*fn)(int), int lo, int hi)
{
    for (int a = lo; a <= hi; a++) {
        const char *sa = fn(a);
        assert_non_null(sa);
        for (int b = lo; b < a; b++)
            assert_string_not_equal(sa, fn(b));
    }
    assert_non_null(fn(hi + 100));
    assert_non_null(fn(-1));
}

static const char *state_name(int v)
{
    return larder_state_name((enum larder_state)v);
}

static const char *method_name(int v)
{
    return larder_measure_method_name((enum larder_measure_method)v);
}

static const char *source_name(int v)
{
    return larder_estimate_source_name((enum larder_estimate_source)v);
}

static void test_names(void **state)
{
    check_names(state_name, LARDER_STATE_UNLOADED, LARDER_STATE_FAILED);
    check_names(method_name, LARDER_MEASURE_NONE, LARDER_MEASURE_ESTIMATE);
    check_names(source_name, LARDER_ESTIMATE_NONE, LARDER_ESTIMATE_FILE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opts_defaults),   cmocka_unit_test(test_open_defaults),
        cmocka_unit_test(test_define_taken_while_loaded),
        cmocka_unit_test(test_open_errors),     cmocka_unit_test(test_define_errors),
        cmocka_unit_test(test_acquire_errors),  cmocka_unit_test(test_estimate_before_load),
        cmocka_unit_test(test_lazy_lifecycle),
        cmocka_unit_test(test_preload),         cmocka_unit_test(test_estimate_sources),
        cmocka_unit_test(test_snapshot_sorted), cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
