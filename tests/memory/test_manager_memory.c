/* Memory truth through the manager: measured sizes, memory returned by unloads, leak
 * suspects, learned profiles across restarts, the pressure response, the report. */
#include <larder/larder.h>

#include "internal.h"
#include "probe.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MiB (1024u * 1024u)

/* ThreadSanitizer (and AddressSanitizer) map shadow memory for what a load touches, so
 * an RSS delta there is a multiple of the real size: the exact figures are compared only
 * in plain builds. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define EXACT_RSS 0
#else
#define EXACT_RSS 1
#endif

/* A class that allocates and touches `mib` MiB with mmap (so it is really given back on
 * unload), or keeps it when `leak` is set. */
struct hog {
    unsigned mib;
    bool leak;
    void *kept;
};

static int hog_load(void *ud, void **ret, char *err, size_t n)
{
    struct hog *h = ud;
    size_t len = (size_t)h->mib * MiB;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        snprintf(err, n, "mmap failed");
        return -1;
    }
    memset(p, 0x5a, len);
    *ret = p;
    return 0;
}

static void hog_unload(void *ud, void *model)
{
    struct hog *h = ud;
    if (h->leak) {
        h->kept = model; /* freed by the test at the end */
        return;
    }
    munmap(model, (size_t)h->mib * MiB);
}

static const struct larder_class hog_class = {
    .struct_size = sizeof hog_class, .name = "hog", .load = hog_load, .unload = hog_unload};

struct evcount {
    atomic_int pressure;
    atomic_int evict_pressure;
    atomic_int unloads;
};

static void count_events(void *ud, const struct larder_event *ev)
{
    struct evcount *c = ud;
    if (ev->type == LARDER_EVENT_PRESSURE)
        atomic_fetch_add(&c->pressure, 1);
    if (ev->type == LARDER_EVENT_EVICT && ev->reason == LARDER_REASON_PRESSURE)
        atomic_fetch_add(&c->evict_pressure, 1);
    if (ev->type == LARDER_EVENT_UNLOAD)
        atomic_fetch_add(&c->unloads, 1);
}

static larder *open_with(struct evcount *ec, const char *state_dir)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = 1024ull * MiB;
    o.on_event = ec ? count_events : NULL;
    o.event_ud = ec;
    o.state_dir = state_dir;
    o.watch_pressure = false; /* the tests drive the response themselves */
    larder *m = NULL;
    assert_int_equal(larder_open(&o, &m), 0);
    return m;
}

static void define_hog(larder *m, const char *name, struct hog *h)
{
    struct larder_component_opts co;
    larder_component_opts_init(&co);
    co.cls = &hog_class;
    co.ud = h;
    co.ttl_ms = LARDER_TTL_NEVER;
    assert_int_equal(larder_define(m, name, &co), 0);
}

static struct larder_component_info *find(struct larder_snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->components[i].name, name) == 0)
            return &s->components[i];
    fail_msg("no component %s", name);
    return NULL;
}

static void use(larder *m, const char *name)
{
    larder_lease *l = NULL;
    assert_int_equal(larder_acquire(m, name, 10000, &l), 0);
    larder_release(l);
}

/* A 64 MiB component: measured by RSS within 10%, and unloading gives >= 95% back. */
static void test_measured_and_returned(void **state)
{
    (void)state;
    larder *m = open_with(NULL, NULL);
    struct hog h = {.mib = 64};
    define_hog(m, "hog", &h);
    use(m, "hog");
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    struct larder_component_info *i = find(s, "hog");
    assert_int_equal(i->measure_method, LARDER_MEASURE_RSS);
    double ratio = (double)i->measured_bytes / (64.0 * MiB);
    printf("hog: measured %.1f MiB by %s\n", (double)i->measured_bytes / MiB,
           larder_measure_method_name(i->measure_method));
    assert_true(ratio > 0.9 && (ratio < 1.1 || !EXACT_RSS));
    assert_true(i->reserved_bytes >= i->measured_bytes);
    larder_snapshot_free(s);

    assert_int_equal(larder_unload(m, "hog", 1000), 0);
    assert_int_equal(larder_snapshot(m, &s), 0);
    i = find(s, "hog");
    printf("hog: returned %.1f MiB\n", (double)i->last_returned_bytes / MiB);
    assert_true(i->last_returned_bytes >= (int64_t)(0.95 * 64 * MiB) || !EXACT_RSS);
    assert_false(i->leak_suspect);
    assert_int_equal(s->reserved_bytes, 0);
    larder_snapshot_free(s);
    larder_close(m);
}

/* A class that keeps its memory after unload is flagged. */
static void test_leak_suspect(void **state)
{
    (void)state;
    larder *m = open_with(NULL, NULL);
    struct hog h = {.mib = 32, .leak = true};
    define_hog(m, "leaky", &h);
    use(m, "leaky");
    assert_int_equal(larder_unload(m, "leaky", 1000), 0);
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    struct larder_component_info *i = find(s, "leaky");
    assert_true(i->leak_suspect);
    assert_true(i->last_returned_bytes < (int64_t)(16 * MiB));
    larder_snapshot_free(s);
    larder_close(m);
    munmap(h.kept, (size_t)h.mib * MiB);
}

/* What one run measured is the next run's estimate. */
static void test_learned_across_restarts(void **state)
{
    (void)state;
    char dir[] = "/tmp/larder-state-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct hog h = {.mib = 16};
    larder *m = open_with(NULL, dir);
    define_hog(m, "hog", &h);
    use(m, "hog");
    larder_close(m);

    m = open_with(NULL, dir);
    define_hog(m, "hog", &h);
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    struct larder_component_info *i = find(s, "hog");
    assert_int_equal(i->estimate_source, LARDER_ESTIMATE_LEARNED);
    assert_true(i->estimate_bytes > 14 * MiB && (i->estimate_bytes < 18 * MiB || !EXACT_RSS));
    assert_int_equal(i->state, LARDER_STATE_UNLOADED);
    larder_snapshot_free(s);
    larder_close(m);
    char path[128];
    snprintf(path, sizeof path, "%s/profiles.sqlite", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/profiles.sqlite-wal", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/profiles.sqlite-shm", dir);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
}

static void remove_state(const char *dir)
{
    static const char *const files[] = {"profiles.sqlite", "profiles.sqlite-wal",
                                        "profiles.sqlite-shm"};
    char path[128];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    assert_int_equal(rmdir(dir), 0);
}

/* An engine the class maps on its first load and keeps for the life of the process, as
 * a shared library opened by the first model of a backend stays mapped: later loads of
 * its models, even after their unload, cost only the model. */
static void *engine;
#define ENGINE_MIB 12u

static int engine_load(void *ud, void **ret, char *err, size_t n)
{
    if (!engine) {
        size_t len = (size_t)ENGINE_MIB * MiB;
        engine = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (engine == MAP_FAILED) {
            engine = NULL;
            snprintf(err, n, "mmap failed");
            return -1;
        }
        memset(engine, 0x5a, len);
    }
    return hog_load(ud, ret, err, n);
}

static const struct larder_class engine_class = {
    .struct_size = sizeof engine_class, .name = "engine", .load = engine_load,
    .unload = hog_unload};

static uint64_t measured_of(larder *m, const char *name)
{
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    struct larder_component_info *i = find(s, name);
    assert_int_equal(i->measure_method, LARDER_MEASURE_RSS);
    uint64_t b = i->measured_bytes;
    larder_snapshot_free(s);
    return b;
}

/* A reload that finds the engine mapped measures less than the first load of a fresh
 * process; the size learned for the next start stays at the first load's. */
static void test_first_load_floor_across_restarts(void **state)
{
    (void)state;
    char dir[] = "/tmp/larder-state-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct hog h = {.mib = 4};
    struct larder_component_opts co;
    larder_component_opts_init(&co);
    co.cls = &engine_class;
    co.ud = &h;
    larder *m = open_with(NULL, dir);
    assert_int_equal(larder_define(m, "ocr", &co), 0);
    use(m, "ocr");
    uint64_t first = measured_of(m, "ocr");
    assert_true(first > (ENGINE_MIB + 2) * MiB);
    assert_int_equal(larder_unload(m, "ocr", 1000), 0);
    use(m, "ocr");
    uint64_t reload = measured_of(m, "ocr");
    assert_true(reload < first - 8 * MiB);
    larder_close(m);

    /* The next start: the estimate is the first load's figure, not the reload's. */
    m = open_with(NULL, dir);
    assert_int_equal(larder_define(m, "ocr", &co), 0);
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    struct larder_component_info *i = find(s, "ocr");
    assert_int_equal(i->estimate_source, LARDER_ESTIMATE_LEARNED);
    assert_int_equal(i->estimate_bytes, first);
    larder_snapshot_free(s);
    /* Loads in this process (the engine still mapped) do not lower it either. */
    use(m, "ocr");
    assert_int_equal(larder_unload(m, "ocr", 1000), 0);
    larder_close(m);
    m = open_with(NULL, dir);
    assert_int_equal(larder_define(m, "ocr", &co), 0);
    assert_int_equal(larder_snapshot(m, &s), 0);
    assert_int_equal(find(s, "ocr")->estimate_bytes, first);
    larder_snapshot_free(s);
    larder_close(m);
    munmap(engine, (size_t)ENGINE_MIB * MiB);
    remove_state(dir);
}

/* Usage over the high watermark (here: a cgroup near its memory.max, as the watcher
 * reports it) evicts idle components (not leased or pinned ones) and publishes a
 * pressure event; the history records it. */
static void test_pressure_response(void **state)
{
    (void)state;
    struct evcount ec = {0};
    larder *m = open_with(&ec, NULL);
    struct hog a = {.mib = 4}, b = {.mib = 4}, p = {.mib = 4};
    define_hog(m, "idle", &a);
    define_hog(m, "busy", &b);
    struct larder_component_opts co;
    larder_component_opts_init(&co);
    co.cls = &hog_class;
    co.ud = &p;
    co.pin = true;
    assert_int_equal(larder_define(m, "pinned", &co), 0);
    use(m, "idle");
    use(m, "pinned");
    larder_lease *l = NULL;
    assert_int_equal(larder_acquire(m, "busy", 10000, &l), 0);

    struct larder__pressure pr = {.fired = LARDER__PRESSURE_EVENTS, .has_cgroup = true,
                                  .cgroup = {.version = 2, .current = 95 * MiB,
                                             .max = 100 * MiB, .high = LARDER__UNLIMITED}};
    larder__memory_pressure(m, &pr);
    assert_int_equal(atomic_load(&ec.pressure), 1);
    assert_true(atomic_load(&ec.evict_pressure) >= 1);
    struct larder_snapshot *s = NULL;
    assert_int_equal(larder_snapshot(m, &s), 0);
    assert_int_equal(find(s, "idle")->state, LARDER_STATE_UNLOADED);
    assert_int_equal(find(s, "busy")->state, LARDER_STATE_READY);
    assert_int_equal(find(s, "pinned")->state, LARDER_STATE_READY);
    larder_snapshot_free(s);
    larder_release(l);

    struct larder_memory *mem = NULL;
    assert_int_equal(larder_memory(m, 100, &mem), 0);
    assert_true(mem->rss_bytes > 0 && mem->ram_bytes > 0 && mem->limit_bytes > 0);
    assert_true(mem->high_bytes > mem->low_bytes);
    assert_int_equal(mem->pressure_events, 1);
    bool saw_load = false, saw_pressure = false;
    for (size_t i = 0; i < mem->n_history; i++) {
        saw_load |= mem->history[i].kind == LARDER_HISTORY_LOAD;
        saw_pressure |= mem->history[i].kind == LARDER_HISTORY_PRESSURE;
    }
    assert_true(saw_load && saw_pressure);
    larder_memory_free(mem);
    larder_close(m);
}

/* Quiet figures cause no response at all. */
static void test_no_pressure_no_eviction(void **state)
{
    (void)state;
    struct evcount ec = {0};
    larder *m = open_with(&ec, NULL);
    struct hog a = {.mib = 2};
    define_hog(m, "idle", &a);
    use(m, "idle");
    struct larder__pressure pr = {.has_cgroup = true,
                                  .cgroup = {.version = 2, .current = 10 * MiB,
                                             .max = 1000ull * MiB, .high = LARDER__UNLIMITED}};
    larder__memory_pressure(m, &pr);
    assert_int_equal(atomic_load(&ec.pressure), 0);
    assert_int_equal(atomic_load(&ec.evict_pressure), 0);
    /* A PSI trigger with usage far under the low watermark: still nothing. */
    pr.fired = LARDER__PRESSURE_PSI;
    larder__memory_pressure(m, &pr);
    assert_int_equal(atomic_load(&ec.pressure), 0);
    /* The same cgroup over its high watermark: a response. */
    pr.cgroup.current = 950ull * MiB;
    larder__memory_pressure(m, &pr);
    assert_int_equal(atomic_load(&ec.pressure), 1);
    larder_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_measured_and_returned),
        cmocka_unit_test(test_leak_suspect),
        cmocka_unit_test(test_learned_across_restarts),
        cmocka_unit_test(test_first_load_floor_across_restarts),
        cmocka_unit_test(test_pressure_response),
        cmocka_unit_test(test_no_pressure_no_eviction),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
