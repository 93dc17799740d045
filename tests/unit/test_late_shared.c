/* A class that learns only at load time that its model is shared (instance_new answers
 * LARDER_INSTANCE_SHARED): from then on every lease shares the model, however many are
 * out, and none waits for an instance. */
#include <larder/larder.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

static atomic_int loads, inews;
static int model_word = 42;

static int s_load(void *ud, void **ret, char *err, size_t n)
{
    (void)ud, (void)err, (void)n;
    atomic_fetch_add(&loads, 1);
    *ret = &model_word;
    return 0;
}

static void s_unload(void *ud, void *model)
{
    (void)ud, (void)model;
}

static int s_inew(void *ud, void *model, void **ret, char *err, size_t n)
{
    (void)ud, (void)model, (void)ret, (void)err, (void)n;
    atomic_fetch_add(&inews, 1);
    return LARDER_INSTANCE_SHARED;
}

static void s_ifree(void *ud, void *model, void *inst)
{
    (void)ud, (void)model, (void)inst;
    fail_msg("a shared model has no instances to free");
}

static int s_measure(void *ud, void *model, uint64_t *ret)
{
    (void)ud, (void)model;
    *ret = 10;
    return 0;
}

static const struct larder_class sc = {.struct_size = sizeof sc, .name = "late-shared",
                                       .load = s_load, .unload = s_unload,
                                       .instance_new = s_inew, .instance_free = s_ifree,
                                       .measure = s_measure};

static void test_late_shared(void **state)
{
    (void)state;
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = 1000;
    o.watch_pressure = false;
    larder *m = NULL;
    assert_int_equal(larder_open(&o, &m), 0);
    struct larder_component_opts co;
    larder_component_opts_init(&co);
    co.cls = &sc;
    co.max_instances = 1;
    assert_int_equal(larder_define(m, "s", &co), 0);
    larder_lease *l[5];
    for (int k = 0; k < 5; k++) {
        /* with one instance, the second acquire would time out: shared, it does not */
        assert_int_equal(larder_acquire(m, "s", 200, &l[k]), 0);
        assert_ptr_equal(larder_lease_model(l[k]), &model_word);
        assert_null(larder_lease_instance(l[k]));
    }
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    assert_int_equal(s->components[0].leases, 5);
    assert_int_equal(s->components[0].instances_max, 0);
    assert_int_equal(s->components[0].hits, 5);
    larder_snapshot_free(s);
    for (int k = 0; k < 5; k++)
        larder_release(l[k]);
    assert_int_equal(larder_unload(m, "s", 1000), 0);
    assert_int_equal(larder_acquire(m, "s", 1000, &l[0]), 0); /* reload: still shared */
    larder_release(l[0]);
    assert_int_equal(atomic_load(&loads), 2);
    assert_int_equal(atomic_load(&inews), 1);
    larder_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_late_shared),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
