/* GPUs through NVML: the real library where there is one, and a stand-in library
 * (fake_nvml.c) that checks the calls and the layouts. */
#include <dlfcn.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
        /* this process has no CUDA context: it holds nothing there, or NVML cannot say */
        int self = (int)getpid();
        uint64_t b = 0;
        int r = larder__gpu_process_bytes(g, i, &self, 1, &b);
        assert_true(r == 0 || r == -ENOTSUP || r == -ENODATA);
        if (r == 0)
            assert_int_equal(b, 0);
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

/* Writes the fake's per-process lists (FAKE_NVML_PROCS) */
static void set_procs(const char *text)
{
    static char path[256];
    FILE *f;

    snprintf(path, sizeof(path), "%s/fake-nvml-procs-%d", LARDER_TEST_SCRATCH, (int)getpid());
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    setenv("FAKE_NVML_PROCS", path, 1);
}

static void fake_processes(void **state)
{
    struct larder__gpus *g = NULL;
    const int mine[] = {4242, 4343};
    const int other[] = {99};
    uint64_t b = 7;

    if (!fake_lib())
        skip();
    assert_int_equal(larder__gpu_open(fake_lib(), &g), 0);
    /* no processes at all */
    set_procs("");
    assert_int_equal(larder__gpu_process_bytes(g, 0, mine, 2, &b), 0);
    assert_int_equal(b, 0);
    /* two of ours on GPU 0 (one on both lists, counted once), one on GPU 1, a stranger */
    set_procs("4242 0 1000000 both\n4343 0 2000 graphics\n4242 1 5000\n99 0 777\n");
    assert_int_equal(larder__gpu_process_bytes(g, 0, mine, 2, &b), 0);
    assert_int_equal(b, 1002000);
    assert_int_equal(larder__gpu_process_bytes(g, 1, mine, 2, &b), 0);
    assert_int_equal(b, 5000);
    assert_int_equal(larder__gpu_process_bytes(g, 0, other, 1, &b), 0);
    assert_int_equal(b, 777);
    assert_int_equal(larder__gpu_process_bytes(g, 0, NULL, 0, &b), 0);
    assert_int_equal(b, 0);
    /* more processes than the first guess of room: the list is read again */
    {
        char text[4096] = "";
        for (int i = 0; i < 40; i++)
            snprintf(text + strlen(text), sizeof(text) - strlen(text), "%d 1 10\n", 5000 + i);
        strcat(text, "4343 1 3\n");
        set_procs(text);
        assert_int_equal(larder__gpu_process_bytes(g, 1, mine, 2, &b), 0);
        assert_int_equal(b, 3);
    }
    /* a figure the driver withholds, and bad arguments: errors, b untouched */
    set_procs("4242 0 na\n");
    b = 11;
    assert_int_equal(larder__gpu_process_bytes(g, 0, mine, 2, &b), -ENODATA);
    assert_int_equal(larder__gpu_process_bytes(g, 2, mine, 2, &b), -EINVAL);
    assert_int_equal(larder__gpu_process_bytes(g, 0, NULL, 2, &b), -EINVAL);
    assert_int_equal(larder__gpu_process_bytes(g, 0, mine, 2, NULL), -EINVAL);
    assert_int_equal(larder__gpu_process_bytes(NULL, 0, mine, 2, &b), -EINVAL);
    assert_int_equal(b, 11);
    unsetenv("FAKE_NVML_PROCS");
    larder__gpu_close(g);
}

/* An NVML without the per-process entry points: devices still read, figures unknown. */
static void fake_without_processes(void **state)
{
    const char *lib = getenv("LARDER_TEST_FAKE_NVML_NOPROCS");
    struct larder__gpus *g = NULL;
    struct larder__gpu_info info;
    const int mine[] = {4242};
    uint64_t b = 7;

    if (!lib || !*lib)
        skip();
    set_procs("4242 0 1000\n");
    assert_int_equal(larder__gpu_open(lib, &g), 0);
    assert_int_equal(larder__gpu_count(g), 2);
    assert_int_equal(larder__gpu_read(g, 0, &info), 0);
    assert_int_equal(larder__gpu_process_bytes(g, 0, mine, 1, &b), -ENOTSUP);
    assert_int_equal(b, 7);
    unsetenv("FAKE_NVML_PROCS");
    larder__gpu_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(real_nvml),
        cmocka_unit_test(absent_library),
        cmocka_unit_test(fake_devices),
        cmocka_unit_test(fake_driver_not_loaded),
        cmocka_unit_test(fake_processes),
        cmocka_unit_test(fake_without_processes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
