/* GET /v1/advice on scripted workloads: each kind of advice provoked by a workload of
 * synthetic models made for it, and a workload that provokes none gives none. Every wait
 * polls for a condition (the events reach the advice recorder on the manager's threads).
 *
 * With the argument "cgroup" it runs the cgroup_limit tests instead: larderd in a memory
 * cgroup the test creates, with a limit close to its budget and one far above it. They
 * need a memory cgroup this process may create children in (cgroup v2 with the memory
 * controller delegated, or v1); elsewhere the program exits 77 and says why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "cgroup_util.h"

/* The advice list, or NULL. */
static json_t *advice(struct daemon *d)
{
    struct larder__http_response resp = {0};
    json_t *list = NULL;
    if (http(d, "GET", "/v1/advice", NULL, NULL, 0, false, &resp) == 200) {
        json_t *o = json_loadb(resp.body, resp.body_len, 0, NULL);
        list = json_incref(json_object_get(o, "advice"));
        json_decref(o);
    }
    larder__http_response_clear(&resp);
    return list;
}

/* The item of that kind about that model (NULL: manager-wide), a new reference, or NULL. */
static json_t *advice_item(struct daemon *d, const char *kind, const char *model)
{
    json_t *list = advice(d), *found = NULL, *it;
    size_t i;
    json_array_foreach(list, i, it) {
        const char *m = json_string_value(json_object_get(it, "model"));
        if (strcmp(json_string_value(json_object_get(it, "kind")), kind) == 0 &&
            (model ? m && strcmp(m, model) == 0 : !m)) {
            found = json_incref(it);
            break;
        }
    }
    json_decref(list);
    return found;
}

static double evidence(json_t *item, const char *key)
{
    return json_number_value(json_object_get(json_object_get(item, "evidence"), key));
}

static int post(struct daemon *d, const char *path)
{
    return http(d, "POST", path, NULL, NULL, 0, true, NULL);
}

static int infer(struct daemon *d, const char *model)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    return http(d, "POST", path, "application/octet-stream", "x", 1, false, NULL);
}

static bool state_is(struct daemon *d, const char *model, const char *state)
{
    char path[128];
    struct larder__http_response resp = {0};
    snprintf(path, sizeof path, "/v1/models/%s", model);
    bool yes = http(d, "GET", path, NULL, NULL, 0, false, &resp) == 200 && resp.body &&
               strstr(resp.body, state) != NULL;
    larder__http_response_clear(&resp);
    return yes;
}

static void test_none(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[memory]\nbudget = 256MiB\n"
                                      "[model.a]\nbackend = synthetic\nsize = 8MiB\n"
                                      "[model.b]\nbackend = synthetic-pooled\nsize = 8MiB\n"), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(infer(&d, "a"), 200);
        assert_int_equal(infer(&d, "b"), 200);
        assert_int_equal(post(&d, "/v1/models/a/unload"), 200);
        assert_int_equal(post(&d, "/v1/models/b/unload"), 200);
    }
    assert_int_equal(infer(&d, "a"), 200);
    json_t *list = advice(&d);
    assert_non_null(list);
    if (json_array_size(list))
        fprintf(stderr, "unexpected advice: %s\n", json_dumps(list, 0));
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    daemon_stop(&d);
}

/* Two models that cannot share the budget, used in turn: each load evicts the other. */
static void test_thrashing(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[memory]\nbudget = 40MiB\n"
                                      "[model.x]\nbackend = synthetic\nsize = 24MiB\nload_ms = 20\n"
                                      "[model.y]\nbackend = synthetic\nsize = 24MiB\nload_ms = 20\n"),
                     0);
    json_t *item = NULL;
    struct wait_bound w = wait_start();
    do {
        assert_int_equal(infer(&d, "x"), 200);
        assert_int_equal(infer(&d, "y"), 200);
    } while (!(item = advice_item(&d, "thrashing", "x")) && wait_again(&w));
    assert_non_null(item);
    assert_true(evidence(item, "reloads_last_hour") >= 3);
    assert_true(evidence(item, "cold_load_seconds") > 0);
    assert_true(evidence(item, "budget_to_keep_warm_bytes") > 40.0 * (1 << 20));
    json_decref(item);
    /* and each fits only alone */
    assert_non_null(item = advice_item(&d, "fits_only_alone", "y"));
    json_decref(item);
    daemon_stop(&d);
}

static void test_fit_and_estimate(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[memory]\nbudget = 64MiB\n"
                                      "[model.big]\nbackend = synthetic\nmemory = 128MiB\n"
                                      "[model.half]\nbackend = synthetic\nsize = 62MiB\n"
                                      "[model.small]\nbackend = synthetic\nsize = 4MiB\n"
                                      "[model.over]\nbackend = synthetic\nsize = 2MiB\n"
                                      "memory = 40MiB\n"), 0);
    json_t *item = advice_item(&d, "never_fits", "big");
    assert_non_null(item);
    assert_int_equal((long long)evidence(item, "model_bytes"), 128LL << 20);
    json_decref(item);
    assert_non_null(item = advice_item(&d, "fits_only_alone", "half"));
    assert_int_equal((long long)evidence(item, "smallest_other_bytes"), 4LL << 20);
    json_decref(item);
    /* small fits beside others: no advice on it */
    assert_null(item = advice_item(&d, "fits_only_alone", "small"));
    /* declared 40 MiB, measured 2 MiB once loaded */
    assert_null(item = advice_item(&d, "estimate_off", "over"));
    assert_int_equal(infer(&d, "over"), 200);
    WAIT_UNTIL((item = advice_item(&d, "estimate_off", "over")) != NULL);
    assert_non_null(item);
    assert_true(evidence(item, "ratio") < 0.5);
    assert_non_null(strstr(json_string_value(json_object_get(item, "suggestion")), "memory = 2MiB"));
    json_decref(item);
    daemon_stop(&d);
}

/* A ttl of one second, and the next request right after each expiry. */
static void test_ttl(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.t]\nbackend = synthetic\nsize = 1MiB\nttl = 1s\n"), 0);
    json_t *item = NULL;
    struct wait_bound w = wait_start();
    do {
        assert_int_equal(infer(&d, "t"), 200);
        WAIT_UNTIL(state_is(&d, "t", "\"state\":\"unloaded\""));
    } while (!(item = advice_item(&d, "ttl_too_short", "t")) && wait_again(&w));
    assert_non_null(item);
    assert_true(evidence(item, "reused_after_expiry") >= 3);
    assert_true(evidence(item, "max_gap_s") <= 1.0);
    json_decref(item);
    daemon_stop(&d);
}

/* A backend that keeps its memory after unloading. */
static void test_leak(void **state)
{
#ifdef __SANITIZE_ADDRESS__
    /* ASan's quarantine keeps freed memory resident, so that every model would look like
     * it leaks: the daemon of this test frees at once, as a plain build does. */
    char opts[1024];
    const char *old = getenv("ASAN_OPTIONS");
    snprintf(opts, sizeof opts, "%s%squarantine_size_mb=0:thread_local_quarantine_size_kb=0",
             old ? old : "", old && *old ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
#endif
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.l]\nbackend = synthetic\nsize = 16MiB\nleak = yes\n"
                                      "[model.ok]\nbackend = synthetic\nsize = 16MiB\n"), 0);
    json_t *item = NULL;
    struct wait_bound w = wait_start();
    do {
        assert_int_equal(post(&d, "/v1/models/l/load"), 200);
        assert_int_equal(post(&d, "/v1/models/l/unload"), 200);
        assert_int_equal(post(&d, "/v1/models/ok/load"), 200);
        assert_int_equal(post(&d, "/v1/models/ok/unload"), 200);
    } while (!(item = advice_item(&d, "leak_suspect", "l")) && wait_again(&w));
    assert_non_null(item);
    assert_true(evidence(item, "unloads_under_half") >= 3);
    assert_true(evidence(item, "returned_bytes") < evidence(item, "loaded_bytes") / 2);
    assert_non_null(strstr(json_string_value(json_object_get(item, "suggestion")),
                           "isolation = worker"));
    json_decref(item);
    /* the model that gives its memory back is no suspect */
    assert_null(item = advice_item(&d, "leak_suspect", "ok"));
    daemon_stop(&d);
}

/* A high watermark below what the process takes: pressure, again and again. */
static void test_pressure(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[memory]\nhigh_watermark = 0.000001\n"
                                      "low_watermark = 0.0000005\n"
                                      "[model.p]\nbackend = synthetic\nsize = 8MiB\n"), 0);
    json_t *item = NULL;
    struct wait_bound w = wait_start();
    do /* loads wait for room under pressure: the requests may fail */
        infer(&d, "p");
    while (!(item = advice_item(&d, "pressure", NULL)) && wait_again(&w));
    assert_non_null(item);
    assert_true(evidence(item, "events_last_hour") >= 3);
    json_decref(item);
    daemon_stop(&d);
}

/* ---- larderd in a memory cgroup ------------------------------------------------------ */

#define MiB (1ull << 20)
#define CG_BUDGET (480 * MiB)
#define CG_NEAR (512 * MiB)          /* the budget is 94% of it */
#define CG_FAR (16ull * 1024 * MiB)  /* the budget is 3% of it */

static char cg_dir[PATH_MAX]; /* the cgroup made for the daemon; "" = none */

/* Removes the cgroup once its last process (the daemon, reaped by now) has left it. */
static void cg_remove(void)
{
    int r = cg_dir[0] ? cgroup_util_remove(cg_dir) : 0;
    if (r < 0)
        fprintf(stderr, "could not remove the cgroup %s: %s\n", cg_dir, strerror(-r));
    harness_cgroup = NULL;
    cg_dir[0] = 0;
}

/* Makes the cgroup, limited to `limit` bytes, for the next daemon_start. Returns 0, or -1
 * with the reason in why. */
static int cg_make(unsigned long long limit, char *why, size_t n)
{
    if (cgroup_util_make("larder-advice", limit, cg_dir, sizeof cg_dir, why, n) < 0) {
        cg_dir[0] = 0;
        return -1;
    }
    harness_cgroup = cg_dir;
    return 0;
}

/* cmocka teardown: the daemon first, then its cgroup. */
static int cg_teardown(void **state)
{
    daemon_teardown(state);
    cg_remove();
    return 0;
}

/* Starts larderd with a budget of CG_BUDGET in a cgroup limited to `limit`, and returns
 * its cgroup_limit advice item (NULL: none). */
static json_t *cgroup_advice(struct daemon *d, unsigned long long limit)
{
    char why[PATH_MAX + 128];
    if (cg_make(limit, why, sizeof why) < 0)
        fail_msg("%s", why);
    assert_int_equal(daemon_start(d, "[memory]\nbudget = 480MiB\n"
                                     "[model.a]\nbackend = synthetic\nsize = 8MiB\n"), 0);
    /* the daemon reads the figures of the cgroup it runs in */
    assert_int_equal(json_field(d, "/v1/memory", "cgroup.max_bytes"), (long long)limit);
    assert_int_equal(infer(d, "a"), 200);
    json_t *item = advice_item(d, "cgroup_limit", NULL);
    printf("larderd in a %llu MiB cgroup: %lld KiB charged to it\n", limit / MiB,
           json_field(d, "/v1/memory", "cgroup.current_bytes") / 1024);
    assert_int_equal(daemon_stop(d), 0);
    cg_remove();
    return item;
}

static void test_cgroup_near_budget(void **state)
{
    struct daemon d;
    json_t *item = cgroup_advice(&d, CG_NEAR);
    assert_non_null(item);
    assert_int_equal((long long)evidence(item, "budget_bytes"), (long long)CG_BUDGET);
    assert_int_equal((long long)evidence(item, "cgroup_limit_bytes"), (long long)CG_NEAR);
    assert_true(fabs(evidence(item, "ratio") - (double)CG_BUDGET / CG_NEAR) < 1e-9);
    const char *text = json_string_value(json_object_get(item, "suggestion"));
    assert_non_null(text);
    assert_non_null(strstr(text, "budget = 384MiB")); /* three quarters of the limit */
    json_decref(item);
}

static void test_cgroup_far_above_budget(void **state)
{
    struct daemon d;
    json_t *item = cgroup_advice(&d, CG_FAR);
    if (item)
        fprintf(stderr, "unexpected advice: %s\n", json_dumps(item, 0));
    assert_null(item);
}

/* Whether a memory cgroup can be made here (and removed again); why says why not. */
static bool cgroup_possible(char *why, size_t n)
{
    if (cg_make(CG_FAR, why, n) < 0)
        return false;
    cg_remove();
    return true;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "cgroup") == 0) {
        char why[PATH_MAX + 128];
        if (!cgroup_possible(why, sizeof why)) {
            printf("skipped: %s\n", why);
            return 77;
        }
        const struct CMUnitTest cg_tests[] = {
            cmocka_unit_test_teardown(test_cgroup_near_budget, cg_teardown),
            cmocka_unit_test_teardown(test_cgroup_far_above_budget, cg_teardown),
        };
        return cmocka_run_group_tests(cg_tests, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_none, daemon_teardown),
        cmocka_unit_test_teardown(test_thrashing, daemon_teardown),
        cmocka_unit_test_teardown(test_fit_and_estimate, daemon_teardown),
        cmocka_unit_test_teardown(test_ttl, daemon_teardown),
        cmocka_unit_test_teardown(test_leak, daemon_teardown),
        cmocka_unit_test_teardown(test_pressure, daemon_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
