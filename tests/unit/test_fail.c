/* larder_fail (a loaded component that broke outside a load) and a class's
 * unload_report (an unload that measures what it gave back in another process). */
#include <larder/larder.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

static int loads, unloads;

static int t_load(void *ud, void **ret_model, char *err, size_t errlen)
{
    (void)ud;
    (void)err;
    (void)errlen;
    *ret_model = malloc(64);
    __atomic_add_fetch(&loads, 1, __ATOMIC_SEQ_CST);
    return *ret_model ? 0 : -ENOMEM;
}

static void t_unload(void *ud, void *model)
{
    (void)ud;
    free(model);
    __atomic_add_fetch(&unloads, 1, __ATOMIC_SEQ_CST);
}

static int t_estimate(void *ud, uint64_t *ret)
{
    (void)ud;
    *ret = 1 << 20;
    return 0;
}

#define CHILD_BYTES (100ll << 20)

static int t_unload_report(void *ud, void *model, int64_t *ret_bytes)
{
    t_unload(ud, model);
    *ret_bytes = CHILD_BYTES;
    return 0;
}

static const struct larder_class plain = {
    .struct_size = sizeof plain, .name = "plain", .load = t_load, .unload = t_unload,
    .estimate = t_estimate};
static const struct larder_class reporting = {
    .struct_size = sizeof reporting, .name = "reporting", .load = t_load, .unload = t_unload,
    .estimate = t_estimate, .unload_report = t_unload_report};

static int64_t unload_event_bytes = -1;

static void on_event(void *ud, const struct larder_event *ev)
{
    (void)ud;
    if (ev->type == LARDER_EVENT_UNLOAD)
        __atomic_store_n(&unload_event_bytes, ev->bytes_returned, __ATOMIC_SEQ_CST);
}

static larder *open_with(int64_t cooldown_ms, const struct larder_class *cls)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = 1ull << 30;
    o.cooldown_min_ms = cooldown_ms;
    o.cooldown_max_ms = cooldown_ms * 4;
    o.watch_pressure = false;
    o.on_event = on_event;
    larder *m = NULL;
    assert_int_equal(larder_open(&o, &m), 0);
    struct larder_component_opts c;
    larder_component_opts_init(&c);
    c.cls = cls;
    assert_int_equal(larder_define(m, "w", &c), 0);
    return m;
}

static struct larder_component_info info(larder *m)
{
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    assert_int_equal(s->n, 1);
    struct larder_component_info i = s->components[0];
    static char msg[256];
    snprintf(msg, sizeof msg, "%s", i.last_error_message ? i.last_error_message : "");
    i.last_error_message = msg;
    i.name = i.class_name = i.fallback = NULL;
    larder_snapshot_free(s);
    return i;
}

static void *warm(larder *m)
{
    larder_lease *l = NULL;
    assert_int_equal(larder_acquire(m, "w", 10000, &l), 0);
    void *model = larder_lease_model(l);
    larder_release(l);
    return model;
}

static void test_fail_takes_down(void **state)
{
    (void)state;
    larder *m = open_with(60000, &plain);
    void *model = warm(m);
    int u0 = __atomic_load_n(&unloads, __ATOMIC_SEQ_CST);
    /* another model than the loaded one: left alone */
    char other;
    assert_int_equal(larder_fail(m, "w", &other, LARDER_ELOAD, "stale", 1000), 0);
    assert_int_equal(info(m).state, LARDER_STATE_READY);
    assert_int_equal(larder_fail(m, "w", model, LARDER_ELOAD,
                                 "the worker was killed by signal 11 (SIGSEGV)", 1000),
                     0);
    struct larder_component_info i = info(m);
    assert_int_equal(i.state, LARDER_STATE_FAILED);
    assert_non_null(strstr(i.last_error_message, "SIGSEGV"));
    assert_int_equal(i.last_error, LARDER_ELOAD);
    assert_true(i.cooldown_ms > 0);
    assert_int_equal(i.failures, 1);
    assert_int_equal(i.leases, 0);
    assert_int_equal(__atomic_load_n(&unloads, __ATOMIC_SEQ_CST), u0 + 1);
    larder_lease *l = NULL;
    assert_int_equal(larder_acquire(m, "w", 1000, &l), LARDER_ECOOLDOWN);
    assert_int_equal(larder_fail(m, "nope", NULL, LARDER_ELOAD, "x", 0), LARDER_ENOTFOUND);
    larder_close(m);
}

static void test_fail_waits_for_leases(void **state)
{
    (void)state;
    larder *m = open_with(20, &plain);
    larder_lease *l = NULL;
    assert_int_equal(larder_acquire(m, "w", 10000, &l), 0);
    assert_int_equal(larder_fail(m, "w", NULL, LARDER_ELOAD, "gone", 50), LARDER_ETIMEDOUT);
    assert_int_equal(info(m).state, LARDER_STATE_READY); /* it keeps serving */
    larder_release(l);
    assert_int_equal(larder_fail(m, "w", NULL, LARDER_ELOAD, "gone", 1000), 0);
    assert_int_equal(info(m).state, LARDER_STATE_FAILED);
    /* the first acquire after the cooldown loads it anew */
    int loads0 = __atomic_load_n(&loads, __ATOMIC_SEQ_CST);
    int r = LARDER_ECOOLDOWN;
    for (int i = 0; i < 6000 && r == LARDER_ECOOLDOWN; i++) {
        r = larder_acquire(m, "w", 10000, &l);
        if (r == LARDER_ECOOLDOWN) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    assert_int_equal(r, 0);
    larder_release(l);
    assert_int_equal(__atomic_load_n(&loads, __ATOMIC_SEQ_CST), loads0 + 1);
    assert_int_equal(info(m).state, LARDER_STATE_READY);
    larder_close(m);
}

static void test_unload_report(void **state)
{
    (void)state;
    larder *m = open_with(1000, &reporting);
    warm(m);
    __atomic_store_n(&unload_event_bytes, -1, __ATOMIC_SEQ_CST);
    assert_int_equal(larder_unload(m, "w", 1000), 0);
    struct larder_component_info i = info(m);
    /* the child's figure, plus this process's own delta (a few pages either way) */
    assert_true(i.last_returned_bytes > CHILD_BYTES - (8 << 20));
    assert_true(i.last_returned_bytes < CHILD_BYTES + (8 << 20));
    assert_int_equal(__atomic_load_n(&unload_event_bytes, __ATOMIC_SEQ_CST),
                     i.last_returned_bytes);
    larder_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_takes_down),
        cmocka_unit_test(test_fail_waits_for_leases),
        cmocka_unit_test(test_unload_report),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
