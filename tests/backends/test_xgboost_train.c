/* larder-train-xgboost: trains into a temporary directory; the model it writes loads in
 * the xgboost plugin and predicts held-out synthetic rows well. Training is repeatable. */
#include "harness.h"
#include "synth.h"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define HELD_OUT 500
#define MIN_ACCURACY 0.90

struct fixture {
    const struct larder_backend_ops *ops;
    char dir[64];
    char model[128];
};

/* Runs the trainer with argv (NULL-terminated, argv[0] filled in); returns its exit code. */
static int run_trainer(char **argv)
{
    const char *trainer = getenv("LARDER_TRAINER");
    int status = 0;
    pid_t pid;

    if (!trainer)
        fail_msg("LARDER_TRAINER is not set: run the test through meson test");
    argv[0] = (char *)trainer;
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout))
            _exit(126);
        execv(trainer, argv);
        _exit(127);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static int setup(void **state)
{
    static struct fixture f;

    f.ops = harness_open("LARDER_PLUGIN", NULL);
    snprintf(f.dir, sizeof(f.dir), "/tmp/larder-train-XXXXXX");
    assert_non_null(mkdtemp(f.dir));
    snprintf(f.model, sizeof(f.model), "%s/model.ubj", f.dir);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char again[160];

    snprintf(again, sizeof(again), "%s/again.ubj", f->dir);
    unlink(f->model);
    unlink(again);
    rmdir(f->dir);
    return 0;
}

static void test_usage(void **state)
{
    char *no_output[] = {NULL, NULL};
    char *bad_rounds[] = {NULL, "-n", "0", "/tmp/never-written.ubj", NULL};

    assert_int_equal(run_trainer(no_output), 2);
    assert_int_equal(run_trainer(bad_rounds), 2);
    assert_int_equal(access("/tmp/never-written.ubj", F_OK), -1);
}

static void test_train_and_repeat(void **state)
{
    struct fixture *f = *state;
    char again[160];
    char *first[] = {NULL, f->model, NULL};
    char *second[] = {NULL, again, NULL};
    size_t len1, len2;
    void *a, *b;

    snprintf(again, sizeof(again), "%s/again.ubj", f->dir);
    assert_int_equal(run_trainer(first), 0);
    assert_int_equal(run_trainer(second), 0);
    a = harness_read_example(f->model, &len1);
    b = harness_read_example(again, &len2);
    assert_int_equal(len1, len2);
    assert_memory_equal(a, b, len1);
    free(a);
    free(b);
}

/* {"rows": [...]} of n rows from seed, with their labels in labels[]. */
static char *held_out_rows(uint64_t seed, size_t n, int *labels)
{
    size_t cap = n * 80 + 32, len = 0;
    char *body = malloc(cap);

    assert_non_null(body);
    len += (size_t)snprintf(body, cap, "{\"rows\": [");
    for (size_t i = 0; i < n; i++) {
        float x[SYNTH_FEATURES];

        synth_row(&seed, x);
        labels[i] = synth_label(x);
        len += (size_t)snprintf(body + len, cap - len, "%s[%.7g,%.7g,%.7g,%.7g]",
                                i ? "," : "", x[0], x[1], x[2], x[3]);
    }
    snprintf(body + len, cap - len, "]}");
    return body;
}

static void test_model_predicts_held_out_rows(void **state)
{
    struct fixture *f = *state;
    const struct larder_option opts[] = {{"path", f->model}};
    int labels[HELD_OUT];
    char *body = held_out_rows(777, HELD_OUT, labels);
    void *model = harness_load(f->ops, opts, 1);
    json_t *reply, *preds;
    unsigned right = 0;

    assert_int_equal(harness_infer(f->ops, model, NULL, body, strlen(body), "application/json",
                                   &reply), 0);
    preds = json_object_get(reply, "predictions");
    assert_int_equal(json_array_size(preds), HELD_OUT);
    for (size_t i = 0; i < HELD_OUT; i++)
        right += (json_number_value(json_array_get(preds, i)) > 0.5) == labels[i];
    if ((double)right / HELD_OUT < MIN_ACCURACY)
        fail_msg("held-out accuracy %u/%d is below %.2f", right, HELD_OUT, MIN_ACCURACY);
    json_decref(reply);
    f->ops->unload(model);
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage),
        cmocka_unit_test(test_train_and_repeat),
        cmocka_unit_test(test_model_predicts_held_out_rows),
    };

    return cmocka_run_group_tests_name("backend-xgboost-train", tests, setup, teardown);
}
