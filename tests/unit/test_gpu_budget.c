/* Per-GPU budgets: components declared on a GPU are admitted against its budget too,
 * and room there is made by evicting idle components of the same GPU only. */
#include <larder/larder.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdint.h>
#include <errno.h>
#include <string.h>

static atomic_int loads, unloads;

static int g_load(void *ud, void **ret, char *err, size_t n)
{
    (void)ud, (void)err, (void)n;
    atomic_fetch_add(&loads, 1);
    *ret = NULL;
    return 0;
}

static void g_unload(void *ud, void *model)
{
    (void)ud, (void)model;
    atomic_fetch_add(&unloads, 1);
}

static int g_measure(void *ud, void *model, uint64_t *ret)
{
    (void)model;
    *ret = (uint64_t)(uintptr_t)ud;
    return 0;
}

static const struct larder_class gpu_class = {.struct_size = sizeof gpu_class, .name = "g",
                                              .load = g_load, .unload = g_unload,
                                              .measure = g_measure};

static larder *open_mgr(void)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = 1000;
    o.watch_pressure = false;
    o.admission_timeout_ms = 200;
    larder *m = NULL;
    assert_int_equal(larder_open(&o, &m), 0);
    return m;
}

static void def(larder *m, const char *name, int gpu, uint64_t gpu_bytes)
{
    struct larder_component_opts co;
    larder_component_opts_init(&co);
    co.cls = &gpu_class;
    co.ud = (void *)(uintptr_t)10; /* 10 bytes of host memory each */
    co.memory_bytes = 10;
    co.gpu = gpu;
    co.gpu_bytes = gpu_bytes;
    co.ttl_ms = LARDER_TTL_NEVER;
    assert_int_equal(larder_define(m, name, &co), 0);
}

static enum larder_state state_of(larder *m, const char *name, uint64_t *ret_gpu_reserved)
{
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    enum larder_state st = LARDER_STATE_FAILED;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->components[i].name, name) == 0) {
            st = s->components[i].state;
            if (ret_gpu_reserved)
                *ret_gpu_reserved = s->components[i].gpu_reserved_bytes;
        }
    larder_snapshot_free(s);
    return st;
}

static void use(larder *m, const char *name)
{
    larder_lease *l = NULL;
    assert_int_equal(larder_acquire(m, name, 1000, &l), 0);
    larder_release(l);
}

static void test_gpu_eviction_stays_on_its_gpu(void **state)
{
    (void)state;
    larder *m = open_mgr();
    assert_int_equal(larder_set_gpu_budget(m, 0, 100), 0);
    def(m, "g0a", 0, 60);
    def(m, "g0b", 0, 60);
    def(m, "g1", 1, 500); /* GPU 1 has no budget: not enforced */
    def(m, "host", -1, 0);
    use(m, "host");
    use(m, "g1");
    use(m, "g0a");
    uint64_t r = 0;
    assert_int_equal(state_of(m, "g0a", &r), LARDER_STATE_READY);
    assert_int_equal(r, 60);
    use(m, "g0b"); /* 60 + 60 > 100 on GPU 0: g0a goes, nothing else does */
    assert_int_equal(state_of(m, "g0a", &r), LARDER_STATE_UNLOADED);
    assert_int_equal(r, 0);
    assert_int_equal(state_of(m, "g0b", NULL), LARDER_STATE_READY);
    assert_int_equal(state_of(m, "g1", NULL), LARDER_STATE_READY);
    assert_int_equal(state_of(m, "host", NULL), LARDER_STATE_READY);
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    assert_int_equal(s->gpu_budget_bytes[0], 100);
    assert_int_equal(s->gpu_reserved_bytes[0], 60);
    assert_int_equal(s->gpu_reserved_bytes[1], 500);
    larder_snapshot_free(s);
    larder_close(m);
}

static void test_gpu_leased_blocks_and_too_big(void **state)
{
    (void)state;
    larder *m = open_mgr();
    assert_int_equal(larder_set_gpu_budget(m, 2, 100), 0);
    def(m, "a", 2, 60);
    def(m, "b", 2, 60);
    def(m, "huge", 2, 101);
    larder_lease *l = NULL;
    assert_int_equal(larder_acquire(m, "a", 1000, &l), 0);
    larder_lease *l2 = NULL;
    assert_int_equal(larder_acquire(m, "b", 100, &l2), LARDER_ETIMEDOUT); /* a is leased */
    assert_int_equal(larder_acquire(m, "huge", 1000, &l2), LARDER_ETOOBIG);
    larder_release(l);
    use(m, "b"); /* a idle now: evicted for b */
    assert_int_equal(state_of(m, "a", NULL), LARDER_STATE_UNLOADED);
    /* Lowering the budget evicts idle components over it. */
    assert_int_equal(larder_set_gpu_budget(m, 2, 50), 0);
    assert_int_equal(state_of(m, "b", NULL), LARDER_STATE_UNLOADED);
    assert_int_equal(larder_set_gpu_budget(m, LARDER_MAX_GPUS, 1), -EINVAL);
    larder_close(m);
    assert_int_equal(atomic_load(&loads), atomic_load(&unloads));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_eviction_stays_on_its_gpu),
        cmocka_unit_test(test_gpu_leased_blocks_and_too_big),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
