/* The xgboost plugin, built, on examples/tabular.ubj and examples/rows.json. */
#include "harness.h"
#include "synth.h"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <math.h>
#include <pthread.h>

#define THREADS 4
#define ROUNDS 200

/* Predictions of examples/tabular.ubj for examples/rows.json. The model is trained
 * deterministically by larder-train-xgboost with its default arguments. */
static const double expected[] = {0.974396765, 0.0257300027, 0.000947458379,
                                  0.99726969,  0.952771187,  0.975247622};

struct fixture {
    const struct larder_backend_ops *ops;
    char model_path[4096];
    void *model;
    char *rows;
    size_t rows_len;
};

static int setup(void **state)
{
    static struct fixture f;

    f.ops = harness_open("LARDER_PLUGIN", NULL);
    f.rows = harness_read_example("rows.json", &f.rows_len);
    snprintf(f.model_path, sizeof(f.model_path), "%s/tabular.ubj", getenv("LARDER_EXAMPLES"));
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    f->ops->unload(f->model);
    free(f->rows);
    return 0;
}

static int infer_text(const struct fixture *f, void *model, const char *body, const char *type,
                      json_t **ret_reply)
{
    return harness_infer(f->ops, model, NULL, body, strlen(body), type, ret_reply);
}

static void test_abi(void **state)
{
    struct fixture *f = *state;

    assert_string_equal(f->ops->name, "xgboost");
    assert_null(f->ops->instance_new); /* shared booster, thread-safe prediction */
    assert_true(harness_has_option(f->ops, "path"));
    assert_true(harness_has_option(f->ops, "nthread"));
    assert_null(harness_entry_with_major("LARDER_PLUGIN", LARDER_BACKEND_ABI_MAJOR + 7));
}

static void test_check(void **state)
{
    struct fixture *f = *state;
    const struct larder_option good[] = {{"path", f->model_path}, {"nthread", "2"},
                                         {"max_rows", "10"}};
    const struct larder_option no_path[] = {{"nthread", "1"}};
    const struct larder_option missing[] = {{"path", "/nonexistent.ubj"}};
    const struct larder_option dir[] = {{"path", "/tmp"}};
    const struct larder_option threads[] = {{"path", f->model_path}, {"nthread", "0"}};
    const struct larder_option rows[] = {{"path", f->model_path}, {"max_rows", "-3"}};
    const struct larder_option unknown[] = {{"path", f->model_path}, {"booster", "gbtree"}};
    uint64_t bytes = 0;

    assert_int_equal(harness_check(f->ops, good, N_OPTS(good)), 0);
    assert_int_equal(harness_check(f->ops, no_path, 1), LARDER_BACKEND_EOPTION);
    assert_int_equal(harness_check(f->ops, missing, 1), LARDER_BACKEND_EMODEL);
    assert_int_equal(harness_check(f->ops, dir, 1), LARDER_BACKEND_EMODEL);
    assert_int_equal(harness_check(f->ops, threads, 2), LARDER_BACKEND_EOPTION);
    assert_int_equal(harness_check(f->ops, rows, 2), LARDER_BACKEND_EOPTION);
    assert_int_equal(harness_check(f->ops, unknown, 2), LARDER_BACKEND_EOPTION);
    assert_int_equal(f->ops->estimate(good, 1, &bytes), 0);
    assert_in_range(bytes, 1u << 20, 64u << 20);
}

/* A file that is not a model fails the load, not the check. */
static void test_load_garbage_model(void **state)
{
    struct fixture *f = *state;
    char path[] = "/tmp/larder-xgb-XXXXXX";
    int fd = mkstemp(path);
    unsigned char *noise = harness_noise(2048, 11);
    const struct larder_option opts[] = {{"path", path}};
    char err[512] = "";
    void *model = NULL;

    assert_true(fd >= 0);
    assert_int_equal(write(fd, noise, 2048), 2048);
    close(fd);
    assert_int_equal(harness_check(f->ops, opts, 1), 0);
    assert_int_equal(f->ops->load(opts, 1, &model, err, sizeof(err)), LARDER_BACKEND_EMODEL);
    assert_null(model);
    assert_true(strlen(err) > 0);
    unlink(path);
    free(noise);
}

static void test_predict_examples(void **state)
{
    struct fixture *f = *state;
    const struct larder_option opts[] = {{"path", f->model_path}};
    json_t *doc = json_loadb(f->rows, f->rows_len, 0, NULL);
    json_t *rows = json_object_get(doc, "rows");
    json_t *reply, *preds;

    f->model = harness_load(f->ops, opts, 1);
    assert_int_equal(harness_infer(f->ops, f->model, NULL, f->rows, f->rows_len,
                                   "application/json", &reply), 0);
    preds = json_object_get(reply, "predictions");
    assert_int_equal(json_array_size(preds), N_OPTS(expected));
    assert_int_equal(json_array_size(rows), N_OPTS(expected));
    for (size_t i = 0; i < N_OPTS(expected); i++) {
        double p = json_number_value(json_array_get(preds, i));
        json_t *row = json_array_get(rows, i);
        float x[SYNTH_FEATURES];

        if (fabs(p - expected[i]) > 1e-6)
            fail_msg("row %zu: predicted %.9g, expected %.9g", i, p, expected[i]);
        for (int c = 0; c < SYNTH_FEATURES; c++)
            x[c] = (float)json_number_value(json_array_get(row, (size_t)c));
        /* Rows without missing values are far from the boundary: the model is right. */
        if (!json_is_null(json_array_get(row, 2)))
            assert_int_equal(p > 0.5, synth_label(x));
    }
    json_decref(reply);
    json_decref(doc);
}

static void test_request_forms(void **state)
{
    struct fixture *f = *state;
    json_t *reply;

    /* A bare array of rows, integers, and no content type. */
    assert_int_equal(infer_text(f, f->model, "[[0, 0, 0, 0], [1, 1, 1, 1]]", NULL, &reply), 0);
    assert_int_equal(json_array_size(json_object_get(reply, "predictions")), 2);
    assert_true(fabs(json_number_value(json_array_get(json_object_get(reply, "predictions"),
                                                      0)) - expected[0]) < 1e-6);
    json_decref(reply);
    assert_int_equal(infer_text(f, f->model, "{\"rows\": [[null, null, null, null]]}",
                                "application/json; charset=utf-8", &reply), 0);
    json_decref(reply);
}

static void test_bad_requests(void **state)
{
    struct fixture *f = *state;
    static const char *const bodies[] = {
        "[[1, 2, 3]]", "[[1, 2, 3, 4, 5]]", "[[1, 2, 3, 4]", "{\"x\": 1}", "[]",
        "{\"rows\": []}", "[[1, 2, \"3\", 4]]", "[1, 2, 3, 4]", "[[1, 2, 3, 1e300]]", "null",
        "\xff\xfe garbage",
    };
    json_t *reply = NULL;
    char err[512] = "";
    struct larder_infer_request req = {.body = "[[1,2,3]]", .body_len = 9};
    struct larder_infer_result res;

    for (size_t i = 0; i < N_OPTS(bodies); i++) {
        int rc = infer_text(f, f->model, bodies[i], "application/json", &reply);

        if (rc != LARDER_BACKEND_EINPUT)
            fail_msg("body %s: got %d, expected LARDER_BACKEND_EINPUT", bodies[i], rc);
    }
    assert_int_equal(infer_text(f, f->model, "", "application/json", &reply),
                     LARDER_BACKEND_EINPUT);
    assert_int_equal(infer_text(f, f->model, "[[0,0,0,0]]", "text/csv", &reply),
                     LARDER_BACKEND_EMEDIA);
    assert_null(reply);
    /* The feature count message names both counts. */
    assert_int_equal(f->ops->infer(f->model, NULL, &req, &res, err, sizeof(err)),
                     LARDER_BACKEND_EINPUT);
    assert_non_null(strstr(err, "3 values"));
    assert_non_null(strstr(err, "4 features"));
}

static void test_max_rows(void **state)
{
    struct fixture *f = *state;
    const struct larder_option opts[] = {{"path", f->model_path}, {"max_rows", "2"}};
    void *model = harness_load(f->ops, opts, 2);
    json_t *reply;

    assert_int_equal(infer_text(f, model, "[[0,0,0,0],[0,0,0,0]]", NULL, &reply), 0);
    json_decref(reply);
    assert_int_equal(infer_text(f, model, "[[0,0,0,0],[0,0,0,0],[0,0,0,0]]", NULL, &reply),
                     LARDER_BACKEND_EINPUT);
    f->ops->unload(model);
}

struct worker {
    const struct fixture *f;
    float x[ROUNDS][SYNTH_FEATURES];
    double alone[ROUNDS]; /* each row predicted alone, before the threads start */
    int mismatches;
};

static double predict_one(const struct fixture *f, const float *x)
{
    char body[256];
    json_t *reply = NULL;
    double p;

    snprintf(body, sizeof(body), "[[%.9g, %.9g, %.9g, %.9g]]", x[0], x[1], x[2], x[3]);
    if (harness_infer(f->ops, f->model, NULL, body, strlen(body), NULL, &reply) != 0)
        return -1.0;
    p = json_number_value(json_array_get(json_object_get(reply, "predictions"), 0));
    json_decref(reply);
    return p;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    for (int i = 0; i < ROUNDS; i++)
        if (predict_one(w->f, w->x[i]) != w->alone[i])
            w->mismatches++;
    return NULL;
}

/* Threads predicting on the shared booster at once get exactly what each row gets alone. */
static void test_concurrent_predictions(void **state)
{
    struct fixture *f = *state;
    static struct worker w[THREADS];
    pthread_t tid[THREADS];

    for (int i = 0; i < THREADS; i++) {
        uint64_t seed = 100u + (unsigned)i;

        w[i] = (struct worker){.f = f};
        for (int r = 0; r < ROUNDS; r++) {
            synth_row(&seed, w[i].x[r]);
            w[i].alone[r] = predict_one(f, w[i].x[r]);
            assert_true(w[i].alone[r] >= 0.0 && w[i].alone[r] <= 1.0);
        }
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    for (int i = 0; i < THREADS; i++) {
        pthread_join(tid[i], NULL);
        assert_int_equal(w[i].mismatches, 0);
    }
}

/* A prediction is checked before it starts and after it ends: a cancelled request gets
 * no predictions, the next one all of them. */
static void test_cancelled_prediction(void **state)
{
    struct fixture *f = *state;
    json_t *reply = NULL;

    for (unsigned at = 1; at <= 2; at++) {
        harness_cancel_at(at);
        assert_int_equal(harness_infer(f->ops, f->model, NULL, f->rows, f->rows_len,
                                       "application/json", &reply), LARDER_BACKEND_ECANCELED);
    }
    harness_cancel_at(0);
    assert_int_equal(harness_infer(f->ops, f->model, NULL, f->rows, f->rows_len,
                                   "application/json", &reply), 0);
    assert_int_equal(json_array_size(json_object_get(reply, "predictions")), N_OPTS(expected));
    json_decref(reply);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_abi),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_load_garbage_model),
        cmocka_unit_test(test_predict_examples),
        cmocka_unit_test(test_request_forms),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_max_rows),
        cmocka_unit_test(test_concurrent_predictions),
        cmocka_unit_test(test_cancelled_prediction),
    };

    return cmocka_run_group_tests_name("backend-xgboost", tests, setup, teardown);
}
