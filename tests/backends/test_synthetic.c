/* The synthetic plugins, built: larder-synthetic.so (shared model) and
 * larder-synthetic-pooled.so (one instance per request). */
#include "harness.h"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#define MiB (1024ULL * 1024ULL)

struct fixture {
    const struct larder_backend_ops *shared;
    const struct larder_backend_ops *pooled;
};

static int setup(void **state)
{
    static struct fixture f;

    f.shared = harness_open("LARDER_PLUGIN", NULL);
    f.pooled = harness_open("LARDER_PLUGIN_POOLED", NULL);
    *state = &f;
    return 0;
}

static int load_rc(const struct larder_backend_ops *ops, const struct larder_option *opts,
                   size_t n, void **ret_model)
{
    char err[256] = "";
    int rc = ops->load(opts, n, ret_model, err, sizeof(err));

    if (rc < 0)
        assert_true(strlen(err) > 0);
    return rc;
}

static void test_abi(void **state)
{
    struct fixture *f = *state;

    assert_string_equal(f->shared->name, "synthetic");
    assert_string_equal(f->pooled->name, "synthetic-pooled");
    assert_null(f->shared->instance_new);
    assert_non_null(f->pooled->instance_new);
    assert_non_null(f->shared->measure);
    assert_true(harness_has_option(f->shared, "size"));
    assert_true(harness_has_option(f->shared, "fail"));
    assert_null(harness_entry_with_major("LARDER_PLUGIN", LARDER_BACKEND_ABI_MAJOR + 1));
}

static void test_check(void **state)
{
    struct fixture *f = *state;
    const struct larder_option good[] = {{"size", "1.5M"}, {"load_ms", "0"},
                                         {"infer_ms", "5"}, {"fail", "first-3"},
                                         {"pooled", "no"},  {"label", "a"}};
    const struct larder_option pooled_good[] = {{"pooled", "yes"}, {"instance_size", "2KiB"},
                                                {"instance_ms", "1"}};
    static const struct larder_option bad[] = {
        {"size", "12XB"},    {"size", "-1"},          {"size", "2TiB"}, {"load_ms", "soon"},
        {"fail", "first-"},  {"fail", "sometimes"},   {"pooled", "yes"}, {"pooled", "maybe"},
        {"instance_size", "1M"}, {"colour", "blue"},
    };

    assert_int_equal(harness_check(f->shared, NULL, 0), 0);
    assert_int_equal(harness_check(f->shared, good, N_OPTS(good)), 0);
    assert_int_equal(harness_check(f->pooled, pooled_good, N_OPTS(pooled_good)), 0);
    for (size_t i = 0; i < N_OPTS(bad); i++) {
        int rc = harness_check(f->shared, &bad[i], 1);

        if (rc != LARDER_BACKEND_EOPTION)
            fail_msg("%s = %s: got %d", bad[i].key, bad[i].value, rc);
    }
    assert_int_equal(harness_check(f->pooled, &(struct larder_option){"pooled", "no"}, 1),
                     LARDER_BACKEND_EOPTION);
}

static void test_estimate_units(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *size;
        uint64_t bytes;
    } cases[] = {
        {"123", 123},     {"100kB", 100000},      {"64MiB", 64 * MiB}, {"1.5G", 1536 * MiB},
        {"2 MB", 2000000}, {"1k", 1024},          {"7B", 7},
    };

    for (size_t i = 0; i < N_OPTS(cases); i++) {
        const struct larder_option opt = {"size", cases[i].size};
        uint64_t bytes = 0;

        assert_int_equal(f->shared->estimate(&opt, 1, &bytes), 0);
        if (bytes != cases[i].bytes)
            fail_msg("size %s: %llu bytes, expected %llu", cases[i].size,
                     (unsigned long long)bytes, (unsigned long long)cases[i].bytes);
    }
    {
        const struct larder_option opts[] = {{"size", "8MiB"}, {"instance_size", "1MiB"}};
        uint64_t bytes = 0;

        assert_int_equal(f->pooled->estimate(opts, 2, &bytes), 0);
        assert_int_equal(bytes, 9 * MiB);
    }
}

/* The model's bytes are really resident: RSS grows by at least its size. */
/* path: the file is the model's weights and its size the default size. */
static void test_path(void **state)
{
    struct fixture *f = *state;
    char file[4096];
    const struct larder_option opts[] = {{"path", file}};
    const struct larder_option sized[] = {{"path", file}, {"size", "1KiB"}};
    const struct larder_option missing[] = {{"path", "/nonexistent"}};
    const struct larder_option dir[] = {{"path", "/tmp"}};
    uint64_t bytes = 0, measured = 0;
    size_t len;
    void *model;

    free(harness_read_example("ocr.png", &len));
    snprintf(file, sizeof(file), "%s/ocr.png", getenv("LARDER_EXAMPLES"));
    assert_int_equal(f->shared->estimate(opts, 1, &bytes), 0);
    assert_int_equal(bytes, len);
    assert_int_equal(f->shared->estimate(sized, 2, &bytes), 0);
    assert_int_equal(bytes, 1024);
    model = harness_load(f->shared, opts, 1);
    assert_int_equal(f->shared->measure(model, &measured), 0);
    assert_int_equal(measured, len);
    f->shared->unload(model);
    assert_int_equal(harness_check(f->shared, missing, 1), LARDER_BACKEND_EMODEL);
    assert_int_equal(harness_check(f->shared, dir, 1), LARDER_BACKEND_EMODEL);
}

static void test_load_allocates(void **state)
{
    struct fixture *f = *state;
    const struct larder_option opts[] = {{"size", "32MiB"}, {"load_ms", "20"}};
    uint64_t before = harness_rss(), measured = 0;
    void *model = harness_load(f->shared, opts, 2);

    /* What load_ms costs is time, and no test asserts on time: larderd's tests see it
     * as a load that outlasts a timeout, or a preload that /ready waits for. */
    assert_true(harness_rss() >= before + 31 * MiB);
    assert_int_equal(f->shared->measure(model, &measured), 0);
    assert_int_equal(measured, 32 * MiB);
    f->shared->unload(model);
}

static void test_fail_modes(void **state)
{
    struct fixture *f = *state;
    const struct larder_option first2[] = {{"fail", "first-2"}, {"label", "flaky"}};
    const struct larder_option other[] = {{"fail", "first-1"}, {"label", "other"}};
    const struct larder_option always[] = {{"fail", "always"}, {"label", "broken"}};
    void *model = (void *)1;

    assert_int_equal(load_rc(f->shared, first2, 2, &model), LARDER_BACKEND_EMODEL);
    assert_int_equal(load_rc(f->shared, other, 2, &model), LARDER_BACKEND_EMODEL);
    assert_int_equal(load_rc(f->shared, first2, 2, &model), LARDER_BACKEND_EMODEL);
    assert_ptr_equal(model, (void *)1);
    assert_int_equal(load_rc(f->shared, first2, 2, &model), 0);
    f->shared->unload(model);
    assert_int_equal(load_rc(f->shared, other, 2, &model), 0);
    f->shared->unload(model);
    for (int i = 0; i < 3; i++)
        assert_int_equal(load_rc(f->shared, always, 2, &model), LARDER_BACKEND_EMODEL);
}

static void test_infer_echo_and_errors(void **state)
{
    struct fixture *f = *state;
    const struct larder_option opts[] = {{"label", "echoer"}, {"size", "4KiB"}};
    void *model = harness_load(f->shared, opts, 2);
    static const struct {
        const char *error;
        int code;
    } errors[] = {{"input", LARDER_BACKEND_EINPUT},
                  {"media", LARDER_BACKEND_EMEDIA},
                  {"internal", LARDER_BACKEND_EINTERNAL}};
    json_t *reply;

    assert_int_equal(harness_infer(f->shared, model, NULL, "hello", 5, "text/plain", &reply),
                     0);
    assert_int_equal(json_integer_value(json_object_get(reply, "echo")), 5);
    assert_string_equal(json_string_value(json_object_get(reply, "model")), "echoer");
    assert_null(json_object_get(reply, "instance"));
    json_decref(reply);
    assert_int_equal(harness_infer(f->shared, model, NULL, NULL, 0, NULL, &reply), 0);
    assert_int_equal(json_integer_value(json_object_get(reply, "echo")), 0);
    json_decref(reply);
    for (size_t i = 0; i < N_OPTS(errors); i++) {
        const struct larder_option p = {"error", errors[i].error};

        assert_int_equal(harness_infer_params(f->shared, model, NULL, "x", 1, NULL, &p, 1,
                                              &reply),
                         errors[i].code);
    }
    f->shared->unload(model);
}

static void test_pooled_instances(void **state)
{
    struct fixture *f = *state;
    const struct larder_option opts[] = {{"pooled", "yes"}, {"instance_size", "1MiB"}};
    void *model = harness_load(f->pooled, opts, 2);
    void *a = NULL, *b = NULL;
    json_t *reply;

    assert_int_equal(f->pooled->instance_new(model, &a, NULL, 0), 0);
    assert_int_equal(f->pooled->instance_new(model, &b, NULL, 0), 0);
    assert_ptr_not_equal(a, b);
    assert_int_equal(harness_infer(f->pooled, model, b, "ab", 2, NULL, &reply), 0);
    assert_int_equal(json_integer_value(json_object_get(reply, "instance")), 1);
    json_decref(reply);
    assert_int_equal(harness_infer(f->pooled, model, NULL, "ab", 2, NULL, &reply),
                     LARDER_BACKEND_EINTERNAL);
    f->pooled->instance_free(model, a);
    f->pooled->instance_free(model, b);
    f->pooled->instance_free(model, NULL);
    f->pooled->unload(model);
}

struct slow_call {
    const struct larder_backend_ops *ops;
    void *model;
    void *instance;
    atomic_bool done;
    int rc;
};

static void *slow_main(void *arg)
{
    struct slow_call *c = arg;
    const struct larder_option p = {"sleep_ms", "400"};
    json_t *reply = NULL;

    /* Refused while a quick request of the main thread holds the instance: try again. */
    do {
        json_decref(reply);
        c->rc = harness_infer_params(c->ops, c->model, c->instance, "s", 1, NULL, &p, 1,
                                     &reply);
    } while (c->rc == LARDER_BACKEND_EINTERNAL);
    json_decref(reply);
    atomic_store(&c->done, true);
    return NULL;
}

/* A host that hands one instance to two requests at once gets an error, not a silent
 * race: the pooled variant checks the ABI's contract. A quick request of the main thread
 * meets the slow one of another thread only when the threads run at the same time; a
 * round in which they did not (a busy host) proves nothing, so there is another. */
static void test_pooled_detects_shared_instance(void **state)
{
    struct fixture *f = *state;
    const struct larder_option opts[] = {{"pooled", "yes"}};
    struct slow_call c = {.ops = f->pooled};
    const struct timespec pause = {.tv_nsec = 5 * 1000000};
    int refused = 0;

    c.model = harness_load(f->pooled, opts, 1);
    assert_int_equal(f->pooled->instance_new(c.model, &c.instance, NULL, 0), 0);
    for (int round = 0; round < 100 && refused == 0; round++) {
        pthread_t tid;

        atomic_init(&c.done, false);
        assert_int_equal(pthread_create(&tid, NULL, slow_main, &c), 0);
        while (!atomic_load(&c.done)) {
            json_t *reply = NULL;
            int rc = harness_infer(f->pooled, c.model, c.instance, "x", 1, NULL, &reply);

            if (rc == LARDER_BACKEND_EINTERNAL)
                refused++;
            else
                assert_int_equal(rc, 0); /* ran before or after the slow request */
            json_decref(reply);
            nanosleep(&pause, NULL);
        }
        pthread_join(tid, NULL);
        assert_int_equal(c.rc, 0);
    }
    assert_true(refused > 0);
    f->pooled->instance_free(c.model, c.instance);
    f->pooled->unload(c.model);
}

struct shared_call {
    const struct larder_backend_ops *ops;
    void *model;
    int failures;
};

static void *shared_main(void *arg)
{
    struct shared_call *c = arg;

    for (int i = 0; i < 100; i++) {
        json_t *reply = NULL;

        if (harness_infer(c->ops, c->model, NULL, "abc", 3, NULL, &reply) != 0 ||
            json_integer_value(json_object_get(reply, "echo")) != 3)
            c->failures++;
        json_decref(reply);
    }
    return NULL;
}

static void test_shared_concurrent(void **state)
{
    struct fixture *f = *state;
    struct shared_call c[4];
    pthread_t tid[4];
    void *model = harness_load(f->shared, NULL, 0);

    for (int i = 0; i < 4; i++) {
        c[i] = (struct shared_call){.ops = f->shared, .model = model};
        assert_int_equal(pthread_create(&tid[i], NULL, shared_main, &c[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(tid[i], NULL);
        assert_int_equal(c[i].failures, 0);
    }
    f->shared->unload(model);
    f->shared->unload(NULL);
    f->shared->result_free(NULL);
}

/* A minute-long wait stops at the host's cancel check, and the same instance serves the
 * next request. */
static void test_cancelled_wait(void **state)
{
    struct fixture *f = *state;
    const struct larder_option opts[] = {{"pooled", "yes"}, {"infer_ms", "60000"}};
    const struct larder_option fast[] = {{"sleep_ms", "0"}};
    void *model = harness_load(f->pooled, opts, 2);
    void *in = NULL;
    json_t *reply = NULL;

    assert_int_equal(f->pooled->instance_new(model, &in, NULL, 0), 0);
    harness_cancel_at(3);
    assert_int_equal(harness_infer(f->pooled, model, in, "ab", 2, NULL, &reply),
                     LARDER_BACKEND_ECANCELED);
    harness_cancel_at(0);
    assert_int_equal(harness_infer_params(f->pooled, model, in, "ab", 2, NULL, fast, 1, &reply),
                     0);
    assert_int_equal(json_integer_value(json_object_get(reply, "instance")), 0);
    json_decref(reply);
    f->pooled->instance_free(model, in);
    f->pooled->unload(model);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_abi),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_estimate_units),
        cmocka_unit_test(test_path),
        cmocka_unit_test(test_load_allocates),
        cmocka_unit_test(test_fail_modes),
        cmocka_unit_test(test_infer_echo_and_errors),
        cmocka_unit_test(test_pooled_instances),
        cmocka_unit_test(test_pooled_detects_shared_instance),
        cmocka_unit_test(test_shared_concurrent),
        cmocka_unit_test(test_cancelled_wait),
    };

    return cmocka_run_group_tests_name("backend-synthetic", tests, setup, NULL);
}
