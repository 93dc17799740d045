/* Real engines through the library: 20 load/unload cycles of PocketSphinx (en-us) and
 * Tesseract (eng) in-process. RSS after the last cycle must stay within 5% of RSS after
 * the first: unload + malloc_trim really give the memory back, every time. */
#include <larder/larder.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pocketsphinx.h>
#include <tesseract/capi.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL_DIR "/usr/share/pocketsphinx/model/en-us"

/* Sanitizers keep freed memory in quarantine and map shadow memory: RSS says nothing
 * about what an unload returned there. The cycles still run; the figures are not
 * compared. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RSS_MEANINGFUL 0
#else
#define RSS_MEANINGFUL 1
#endif

static int ps_load(void *ud, void **ret, char *err, size_t n)
{
    (void)ud;
    cmd_ln_t *cfg = cmd_ln_init(NULL, ps_args(), TRUE, "-hmm", MODEL_DIR "/en-us", "-lm",
                                MODEL_DIR "/en-us.lm.bin", "-dict",
                                MODEL_DIR "/cmudict-en-us.dict", "-logfn", "/dev/null", NULL);
    ps_decoder_t *ps = cfg ? ps_init(cfg) : NULL;
    if (cfg)
        cmd_ln_free_r(cfg);
    if (!ps) {
        snprintf(err, n, "pocketsphinx: cannot load %s", MODEL_DIR);
        return -1;
    }
    *ret = ps;
    return 0;
}

static void ps_unload(void *ud, void *model)
{
    (void)ud;
    ps_free(model);
}

static int tess_load(void *ud, void **ret, char *err, size_t n)
{
    (void)ud;
    TessBaseAPI *api = TessBaseAPICreate();
    if (!api || TessBaseAPIInit3(api, NULL, "eng") != 0) {
        if (api)
            TessBaseAPIDelete(api);
        snprintf(err, n, "tesseract: cannot load eng");
        return -1;
    }
    *ret = api;
    return 0;
}

static void tess_unload(void *ud, void *model)
{
    (void)ud;
    TessBaseAPIEnd(model);
    TessBaseAPIDelete(model);
}

static const struct larder_class ps_class = {
    .struct_size = sizeof ps_class, .name = "pocketsphinx", .load = ps_load, .unload = ps_unload};
static const struct larder_class tess_class = {
    .struct_size = sizeof tess_class, .name = "tesseract", .load = tess_load,
    .unload = tess_unload};

static uint64_t rss_now(void)
{
    FILE *f = fopen("/proc/self/statm", "re");
    unsigned long long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%llu %llu", &size, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void cycles(const struct larder_class *cls, const char *name)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = 2ull << 30;
    o.watch_pressure = false;
    larder *m = NULL;
    assert_int_equal(larder_open(&o, &m), 0);
    struct larder_component_opts co;
    larder_component_opts_init(&co);
    co.cls = cls;
    co.ttl_ms = LARDER_TTL_NEVER;
    assert_int_equal(larder_define(m, name, &co), 0);
    int n = getenv("LARDER_TEST_CYCLES") ? atoi(getenv("LARDER_TEST_CYCLES")) : 20;
    uint64_t first = 0, last = 0, measured = 0;
    int64_t returned = 0;
    for (int i = 0; i < n; i++) {
        larder_lease *l = NULL;
        assert_int_equal(larder_acquire(m, name, 60000, &l), 0);
        assert_non_null(larder_lease_model(l));
        larder_release(l);
        struct larder_snapshot *s = NULL;
        assert_int_equal(larder_snapshot(m, &s), 0);
        measured = s->components[0].measured_bytes;
        larder_snapshot_free(s);
        assert_int_equal(larder_unload(m, name, 10000), 0);
        assert_int_equal(larder_snapshot(m, &s), 0);
        returned = s->components[0].last_returned_bytes;
        assert_int_equal(s->components[0].state, LARDER_STATE_UNLOADED);
        larder_snapshot_free(s);
        last = rss_now();
        if (i == 0)
            first = last;
    }
    printf("%s: %d cycles, measured %.1f MiB, last unload returned %.1f MiB, RSS after "
           "first %.1f MiB, after last %.1f MiB (%.3fx)\n", name, n, measured / 1048576.0,
           returned / 1048576.0, first / 1048576.0, last / 1048576.0,
           (double)last / (double)first);
    if (!RSS_MEANINGFUL) {
        printf("%s: sanitizer build, RSS figures not compared\n", name);
    } else {
        assert_true(measured > 1 << 20);
        assert_true((double)last <= 1.05 * (double)first);
    }
    larder_close(m);
}

static void test_pocketsphinx_cycles(void **state)
{
    (void)state;
    if (access(MODEL_DIR "/en-us.lm.bin", R_OK) != 0)
        skip();
    cycles(&ps_class, "asr");
}

static void test_tesseract_cycles(void **state)
{
    (void)state;
    cycles(&tess_class, "ocr");
}

int main(void)
{
    setenv("OMP_THREAD_LIMIT", "1", 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pocketsphinx_cycles),
        cmocka_unit_test(test_tesseract_cycles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
