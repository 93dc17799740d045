/* Recency counts the release, not only the acquire: a component held for a long time and
 * just given back was used more recently than one acquired and released in between. */
#include <larder/larder.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

static int r_load(void *ud, void **ret, char *err, size_t n)
{
    (void)ud, (void)err, (void)n;
    *ret = NULL;
    return 0;
}

static void r_unload(void *ud, void *model)
{
    (void)ud, (void)model;
}

/* Reports its size itself: an RSS delta would measure the test's own noise. */
static int r_measure(void *ud, void *model, uint64_t *ret)
{
    (void)ud, (void)model;
    *ret = 50;
    return 0;
}

static const struct larder_class rc = {.struct_size = sizeof rc, .name = "r", .load = r_load,
                                       .unload = r_unload, .measure = r_measure};

static void nap(void)
{
    struct timespec ts = {0, 30 * 1000000}; /* well past the coarse clock's tick */
    nanosleep(&ts, NULL);
}

static enum larder_state state_of(larder *m, const char *name)
{
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    enum larder_state st = LARDER_STATE_FAILED;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->components[i].name, name) == 0)
            st = s->components[i].state;
    larder_snapshot_free(s);
    return st;
}

static void test_long_lease_counts_as_recent(void **state)
{
    (void)state;
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = 100;
    o.policy = "lru";
    o.watch_pressure = false;
    larder *m = NULL;
    assert_int_equal(larder_open(&o, &m), 0);
    const char *names[] = {"held", "brief", "new"};
    for (int k = 0; k < 3; k++) {
        struct larder_component_opts co;
        larder_component_opts_init(&co);
        co.cls = &rc;
        co.memory_bytes = 50;
        co.ttl_ms = LARDER_TTL_NEVER;
        assert_int_equal(larder_define(m, names[k], &co), 0);
    }
    larder_lease *held = NULL, *brief = NULL, *fresh = NULL;
    assert_int_equal(larder_acquire(m, "held", 1000, &held), 0); /* acquired first */
    nap();
    assert_int_equal(larder_acquire(m, "brief", 1000, &brief), 0);
    nap();
    larder_release(brief);
    nap();
    larder_release(held); /* released last: the most recent use */
    assert_int_equal(larder_acquire(m, "new", 1000, &fresh), 0);
    assert_int_equal(state_of(m, "brief"), LARDER_STATE_UNLOADED);
    assert_int_equal(state_of(m, "held"), LARDER_STATE_READY);
    larder_release(fresh);
    larder_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_long_lease_counts_as_recent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
