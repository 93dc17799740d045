/* GPUs through NVML: the real library where there is one, and a stand-in library
 * (fake_nvml.c) that checks the calls and the layouts. */
#include <dlfcn.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "probe.h"

static const char *fake_lib(void)
{
    const char *p = getenv("LARDER_TEST_FAKE_NVML");

    return p && *p ? p : NULL;
}

static void real_nvml(void **state)
{
    struct larder__gpus *g = NULL;
    unsigned n;

    assert_int_equal(larder__gpu_open(NULL, &g), 0);
    n = larder__gpu_count(g);
    if (n == 0) {
        larder__gpu_close(g);
        print_message("no NVIDIA driver or GPU here (libnvidia-ml.so.1): skipped\n");
        skip();
    }
    for (unsigned i = 0; i < n; i++) {
        struct larder__gpu_info info;
        assert_int_equal(larder__gpu_read(g, i, &info), 0);
        print_message("GPU %u: %s, %llu MiB used of %llu MiB\n", i, info.name,
                      (unsigned long long)(info.used >> 20),
                      (unsigned long long)(info.total >> 20));
        assert_int_equal(info.index, i);
        assert_true(info.total > 0);
        assert_true(info.used <= info.total && info.free <= info.total);
        assert_true(info.name[0] != '\0');
    }
    assert_null(larder__gpu_close(g));
}

static void absent_library(void **state)
{
    struct larder__gpus *g = NULL;
    struct larder__gpu_info info;

    assert_int_equal(larder__gpu_open("libnvidia-ml-does-not-exist.so.1", &g), 0);
    assert_non_null(g);
    assert_int_equal(larder__gpu_count(g), 0);
    assert_int_equal(larder__gpu_read(g, 0, &info), -EINVAL);
    larder__gpu_close(g);

    /* a library without the NVML symbols */
    assert_int_equal(larder__gpu_open("libm.so.6", &g), 0);
    assert_int_equal(larder__gpu_count(g), 0);
    larder__gpu_close(g);

    assert_int_equal(larder__gpu_count(NULL), 0);
    assert_null(larder__gpu_close(NULL));
    assert_int_equal(larder__gpu_open(NULL, NULL), -EINVAL);
}

static int inits(void)
{
    void *h = dlopen(fake_lib(), RTLD_NOW | RTLD_NOLOAD);
    int (*fn)(void) = NULL;
    void *sym = h ? dlsym(h, "fake_nvml_inits") : NULL;
    int n;

    if (!sym)
        return -1;
    memcpy(&fn, &sym, sizeof(fn));
    n = fn();
    dlclose(h);
    return n;
}

static void fake_devices(void **state)
{
    struct larder__gpus *g = NULL;
    struct larder__gpu_info info, orig;

    if (!fake_lib()) {
        print_message("LARDER_TEST_FAKE_NVML not set (run through meson test): skipped\n");
        skip();
    }
    assert_int_equal(larder__gpu_open(fake_lib(), &g), 0);
    assert_int_equal(inits(), 1);
    assert_int_equal(larder__gpu_count(g), 2);
    assert_int_equal(larder__gpu_read(g, 0, &info), 0);
    assert_string_equal(info.name, "Fake H100 80GB HBM3");
    assert_int_equal(info.total, 85520809984ull);
    assert_int_equal(info.used, 1048576000ull);
    assert_int_equal(info.free, 85520809984ull - 1048576000ull);
    assert_int_equal(larder__gpu_read(g, 1, &info), 0);
    assert_int_equal(info.index, 1);
    assert_string_equal(info.name, "Fake L4");
    assert_int_equal(info.used, 0);

    memset(&orig, 0x5a, sizeof(orig));
    info = orig;
    assert_int_equal(larder__gpu_read(g, 2, &info), -EINVAL);
    setenv("FAKE_NVML_MEMORY_FAIL", "1", 1);
    assert_int_equal(larder__gpu_read(g, 0, &info), -EIO);
    unsetenv("FAKE_NVML_MEMORY_FAIL");
    assert_memory_equal(&info, &orig, sizeof(info));
    larder__gpu_close(g);
    assert_true(inits() <= 0); /* shut down (or already unloaded) */
}

static void fake_driver_not_loaded(void **state)
{
    struct larder__gpus *g = NULL;

    if (!fake_lib())
        skip();
    setenv("FAKE_NVML_INIT_FAIL", "1", 1);
    assert_int_equal(larder__gpu_open(fake_lib(), &g), 0);
    unsetenv("FAKE_NVML_INIT_FAIL");
    assert_int_equal(larder__gpu_count(g), 0);
    larder__gpu_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(real_nvml),
        cmocka_unit_test(absent_library),
        cmocka_unit_test(fake_devices),
        cmocka_unit_test(fake_driver_not_loaded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
