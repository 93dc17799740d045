/* Device memory per process, over HTTP against the built larderd: a worker model's
 * registry entry shows what NVML lists for its worker's pid, the unload logs it, an
 * in-process model has no such field, and an NVML without per-process figures leaves it
 * null. NVML is the stand-in library (tests/memory/fake_nvml.c) under its own file
 * name, found through LD_LIBRARY_PATH; its lists come from the file FAKE_NVML_PROCS. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

static char dir[64];  /* backends (links) and the fake's process list */
static char procs[128];

static void setup_dir(const char *nvml_dir)
{
    snprintf(dir, sizeof dir, "/tmp/larder-gpup-XXXXXX");
    assert_non_null(mkdtemp(dir));
    const char *build = getenv("LARDER_BACKEND_DIR");
    assert_non_null(build);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "ln -s %s/larder-*.so %s/larder-workertest.so %s/", build,
             TEST_PLUGIN_DIR, dir);
    assert_int_equal(system(cmd), 0);
    snprintf(procs, sizeof procs, "%s/procs", dir);
    setenv("FAKE_NVML_PROCS", procs, 1);
    setenv("LD_LIBRARY_PATH", nvml_dir, 1);
}

static void rm_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    unsetenv("LD_LIBRARY_PATH");
}

static int start(struct daemon *d)
{
    char text[1024];
    snprintf(text, sizeof text,
             "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\nbackend_dir = %s\n\n"
             "[memory]\nwatch_pressure = no\n\n"
             "[model.gpuworker]\nbackend = workertest\nisolation = worker\n\n"
             "[model.inproc]\nbackend = synthetic\n",
             dir);
    return daemon_start(d, text);
}

static json_t *model_memory(struct daemon *d, const char *name, json_t **ret_all)
{
    char path[128];
    struct larder__http_response r = {0};
    snprintf(path, sizeof path, "/v1/models/%s", name);
    *ret_all = NULL;
    if (http(d, "GET", path, NULL, NULL, 0, false, &r) == 200)
        *ret_all = json_loads(r.body, 0, NULL);
    larder__http_response_clear(&r);
    return json_object_get(*ret_all, "memory");
}

/* gpu_process_bytes of the model: its value, -1 for null, -2 when absent. */
static long long gpu_bytes(struct daemon *d, const char *name)
{
    json_t *all;
    json_t *m = model_memory(d, name, &all);
    json_t *v = json_object_get(m, "gpu_process_bytes");
    long long x = json_is_integer(v) ? (long long)json_integer_value(v) : v ? -1 : -2;
    json_decref(all);
    return x;
}

static pid_t worker_pid(struct daemon *d, const char *model)
{
    char path[128];
    struct larder__http_response r = {0};
    pid_t pid = -1;
    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    if (http(d, "POST", path, "text/plain", "hello", 5, false, &r) == 200) {
        json_t *j = json_loads(r.body, 0, NULL);
        json_t *p = json_object_get(j, "pid");
        if (json_is_integer(p))
            pid = (pid_t)json_integer_value(p);
        json_decref(j);
    }
    larder__http_response_clear(&r);
    return pid;
}

static void write_procs(const char *text)
{
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.new", procs);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, procs), 0); /* never half-written for the reader */
}

static void test_worker_gpu_bytes(void **state)
{
    (void)state;
    setup_dir(FAKE_NVML_DIR);
    struct daemon d;
    assert_int_equal(start(&d), 0);
    pid_t pid = worker_pid(&d, "gpuworker");
    assert_true(pid > 0 && pid != d.pid);

    /* the worker on GPU 0 and GPU 1; larderd itself listed too, which is not the model's */
    char text[256];
    snprintf(text, sizeof text, "%d 0 123456789\n%d 1 1000 graphics\n%d 0 555\n", (int)pid,
             (int)pid, (int)d.pid);
    write_procs(text);
    long long got = -2;
    WAIT_UNTIL((got = gpu_bytes(&d, "gpuworker")) == 123457789);
    assert_int_equal(got, 123457789);

    json_t *all;
    json_t *per = json_object_get(model_memory(&d, "gpuworker", &all), "gpu_processes");
    assert_int_equal(json_array_size(per), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(per, 0), "index")), 0);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(per, 0), "bytes")),
                     123456789);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(per, 1), "index")), 1);
    json_decref(all);

    /* an in-process model has no such field */
    struct larder__http_response r = {0};
    assert_int_equal(http(&d, "POST", "/v1/models/inproc/infer", "text/plain", "x", 1, false,
                          &r), 200);
    larder__http_response_clear(&r);
    assert_int_equal(gpu_bytes(&d, "inproc"), -2);

    /* the unload logs the last figure */
    assert_int_equal(http(&d, "POST", "/v1/models/gpuworker/unload", NULL, NULL, 0, true, &r),
                     200);
    larder__http_response_clear(&r);
    assert_int_equal(daemon_wait_log(&d, "123457789", 1), 1);
    WAIT_UNTIL(gpu_bytes(&d, "gpuworker") == -1);
    assert_int_equal(gpu_bytes(&d, "gpuworker"), -1);
    assert_int_equal(daemon_stop(&d), 0);
    rm_dir();
}

static void test_without_process_figures(void **state)
{
    (void)state;
    setup_dir(FAKE_NVML_NOPROCS_DIR);
    struct daemon d;
    assert_int_equal(start(&d), 0);
    pid_t pid = worker_pid(&d, "gpuworker");
    assert_true(pid > 0);
    char text[64];
    snprintf(text, sizeof text, "%d 0 4096\n", (int)pid);
    write_procs(text);
    /* the stand-in is the NVML in use: its two devices are there */
    struct larder__http_response r = {0};
    assert_int_equal(http(&d, "GET", "/v1/memory", NULL, NULL, 0, false, &r), 200);
    json_t *mem = json_loads(r.body, 0, NULL);
    larder__http_response_clear(&r);
    assert_int_equal(json_array_size(json_object_get(mem, "gpus")), 2);
    json_decref(mem);
    /* the worker serves on; the figure stays unknown */
    assert_true(worker_pid(&d, "gpuworker") == pid);
    assert_int_equal(gpu_bytes(&d, "gpuworker"), -1);
    assert_int_equal(http(&d, "POST", "/v1/models/gpuworker/unload", NULL, NULL, 0, true, &r),
                     200);
    larder__http_response_clear(&r);
    WAIT_UNTIL(daemon_log_has(&d, "unload"));
    assert_false(daemon_log_has(&d, "gpu_process_bytes"));
    assert_int_equal(daemon_stop(&d), 0);
    rm_dir();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_worker_gpu_bytes, daemon_teardown),
        cmocka_unit_test_teardown(test_without_process_figures, daemon_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
