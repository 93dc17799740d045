/* larderd: plugin checks, JSON logs, timeouts, readiness with preloads, infer tokens and
 * learned profiles across a restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#ifndef TEST_PLUGIN_DIR
#error "TEST_PLUGIN_DIR must name the directory of the test plugins"
#endif

static int infer(struct daemon *d, const char *model, const char *const *headers,
                 struct larder__http_response *r)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    struct larder__http_response tmp = {0};
    int e = larder__http_request(&d->url, "POST", path, headers, "text/plain", "x", 1, 60000,
                                 r ? r : &tmp);
    int st = e < 0 ? e : r ? r->status : tmp.status;
    larder__http_response_clear(&tmp);
    return st;
}

static void test_refused_plugins(void **state)
{
    struct daemon d;
    /* the probe opens each plugin (in its own process): start-up refuses every one of
     * them, each with its line and reason, and the daemon itself opened none */
    assert_int_equal(daemon_start(&d, "[server]\nlisten = 127.0.0.1:0\n"
                                      "backend_dir = " TEST_PLUGIN_DIR "\n"
                                      "[model.a]\nbackend = badabi\n"
                                      "[model.b]\nbackend = nullops\n"
                                      "[model.c]\nbackend = noentry\n"),
                     -1);
    assert_false(daemon_log_has(&d, "backend opened"));
    static const char *const expect[] = {
        "larder.ini:5: [model.a] backend: backend 'badabi': ABI 2.0, this larderd speaks 1.",
        "larder.ini:7: [model.b] backend: ",
        "returned NULL",
        "larder.ini:9: [model.c] backend: ",
        "no larder_backend_entry",
        "3 errors in the config",
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
        if (!daemon_log_has(&d, expect[i]))
            fail_msg("start-up log lacks '%s'", expect[i]);
    assert_int_equal(daemon_stop(&d), 1);
}

static void test_json_logs(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[server]\nlisten = 127.0.0.1:0\nlog_format = json\n"
                                      "[model.m]\nbackend = synthetic\n"),
                     0);
    assert_int_equal(infer(&d, "m", NULL, NULL), 200);
    /* The request's line is written once the reply has gone out, the load's event line
     * when the event is delivered: two threads, either order, each in its own time. */
    assert_int_equal(daemon_wait_log(&d, "\"path\":\"/v1/models/m/infer\"", 1), 1);
    assert_int_equal(daemon_wait_log(&d, "\"msg\":\"event load_done\"", 1), 1);
    char *log = daemon_read_log(&d);
    assert_non_null(log);
    int requests = 0, events = 0;
    for (char *save = NULL, *line = strtok_r(log, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        json_t *o = json_loads(line, 0, NULL);
        if (!o)
            fail_msg("not a JSON line: %s", line);
        assert_non_null(json_string_value(json_object_get(o, "ts")));
        assert_non_null(json_string_value(json_object_get(o, "level")));
        const char *msg = json_string_value(json_object_get(o, "msg"));
        assert_non_null(msg);
        if (strcmp(msg, "request") == 0 &&
            strcmp(json_string_value(json_object_get(o, "path")), "/v1/models/m/infer") == 0) {
            assert_int_equal(json_integer_value(json_object_get(o, "status")), 200);
            requests++;
        }
        events += strcmp(msg, "event load_done") == 0;
        json_decref(o);
    }
    free(log);
    assert_int_equal(requests, 1);
    assert_int_equal(events, 1);
    assert_int_equal(daemon_stop(&d), 0);
}

/* A load that outlasts the model's timeout: 503 "timeout". The load takes 15 times the
 * timeout, so the waiter's deadline comes first however the threads are scheduled. */
static void test_timeout(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.slow]\nbackend = synthetic\nload_ms = 3000\n"
                                      "timeout = 200ms\n"),
                     0);
    struct larder__http_response r = {0};
    assert_int_equal(infer(&d, "slow", NULL, &r), 503);
    assert_string_equal(error_code(&r), "timeout");
    char v[16];
    assert_non_null(larder__http_header(&r, "Retry-After", v, sizeof v));
    larder__http_response_clear(&r);
    assert_int_equal(daemon_stop(&d), 0);
}

/* /ready answers 503, naming the pending preload and no other model, until the preload
 * is loaded; then 200. How many 503s come first depends on how busy the host is, so the
 * test asserts what every answer says against the model's own state, until the 200. */
static void test_ready_waits_for_preloads(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.early]\nbackend = synthetic\npreload = yes\n"
                                      "load_ms = 1000\n"
                                      "[model.lazy]\nbackend = synthetic\n"),
                     0);
    int st = 0;
    struct wait_bound p = wait_start();
    do {
        struct larder__http_response r = {0};
        st = http(&d, "GET", "/ready", NULL, NULL, 0, false, &r);
        /* the load is counted before the preload stops being pending */
        long long loads = json_field(&d, "/v1/models/early", "loads");
        if (st == 200) {
            assert_int_equal(loads, 1);
        } else {
            assert_int_equal(st, 503);
            /* /ready reads the pending count and the models' states one after the other:
             * a load that ends in between leaves "early" out of its list */
            if (loads == 0)
                assert_non_null(strstr(r.body, "\"early\""));
            assert_null(strstr(r.body, "\"lazy\""));
        }
        larder__http_response_clear(&r);
    } while (st != 200 && wait_again(&p));
    assert_int_equal(st, 200);
    assert_int_equal(json_field(&d, "/v1/models/early", "loads"), 1);
    assert_int_equal(json_field(&d, "/v1/models/lazy", "loads"), 0);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_infer_tokens(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[server]\nlisten = 127.0.0.1:0\n"
                                      "admin_tokens = admin.tokens\ninfer_tokens = infer.tokens\n"
                                      "[model.m]\nbackend = synthetic\n"),
                     -1); /* infer.tokens does not exist yet: start-up refuses */
    assert_true(daemon_log_has(&d, "infer.tokens"));
    daemon_stop(&d);

    assert_int_equal(daemon_start(&d, "[server]\nlisten = 127.0.0.1:0\n"
                                      "admin_tokens = admin.tokens\ninfer_tokens = admin.tokens\n"
                                      "[model.m]\nbackend = synthetic\n"),
                     0);
    const char *good[] = {AUTH_HEADER, NULL};
    const char *bad[] = {"Authorization: Bearer nope", NULL};
    assert_int_equal(infer(&d, "m", NULL, NULL), 401);
    assert_int_equal(infer(&d, "m", bad, NULL), 401);
    assert_int_equal(infer(&d, "m", good, NULL), 200);
    /* the other routes stay open */
    assert_int_equal(http_get(&d, "/v1/models"), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_learned_profiles(void **state)
{
    char state_dir[] = "/tmp/larder-state-XXXXXX";
    assert_non_null(mkdtemp(state_dir));
    char config[512];
    snprintf(config, sizeof config,
             "[server]\nlisten = 127.0.0.1:0\nstate_dir = %s\n"
             "[model.m]\nbackend = synthetic\nsize = 3MiB\n", state_dir);
    struct daemon d;
    assert_int_equal(daemon_start(&d, config), 0);
    /* before its first load: the backend's estimate, known without opening the plugin */
    assert_int_equal(json_field(&d, "/v1/models/m", "memory.estimate_bytes"), 3 << 20);
    assert_int_equal(infer(&d, "m", NULL, NULL), 200);
    long long measured = json_field(&d, "/v1/models/m", "memory.measured_bytes");
    assert_true(measured >= 3 << 20);
    char db[128];
    snprintf(db, sizeof db, "%s/profiles.sqlite", state_dir);
    assert_int_equal(access(db, R_OK), 0);
    assert_int_equal(daemon_stop(&d), 0); /* records what is pending */

    /* after a restart: what was measured, where it is more than the backend's guess */
    assert_int_equal(daemon_start(&d, config), 0);
    assert_int_equal(json_field(&d, "/v1/models/m", "memory.estimate_bytes"),
                     measured > 3 << 20 ? measured : 3 << 20);
    assert_int_equal(daemon_stop(&d), 0);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", state_dir);
    assert_int_equal(system(cmd), 0);
}

/* Models declared on a GPU are admitted against that GPU's budget: the second one
 * evicts the first, though the host budget has room for both. */
static void test_gpu_budget(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[server]\nlisten = 127.0.0.1:0\n"
                                      "[memory]\nbudget = 256MiB\ngpu_budget = 1=1GiB\n"
                                      "[model.a]\nbackend = synthetic\ngpu = 1\n"
                                      "gpu_memory = 700MiB\n"
                                      "[model.b]\nbackend = synthetic\ngpu = 1\n"
                                      "gpu_memory = 700MiB\n"
                                      "[model.c]\nbackend = synthetic\n"),
                     0);
    assert_int_equal(infer(&d, "a", NULL, NULL), 200);
    assert_int_equal(infer(&d, "c", NULL, NULL), 200);
    assert_int_equal(json_field(&d, "/v1/models/a", "gpu.reserved_bytes"), 700 << 20);
    assert_int_equal(infer(&d, "b", NULL, NULL), 200);
    assert_int_equal(json_field(&d, "/v1/models/a", "evictions"), 1);
    assert_int_equal(json_field(&d, "/v1/models/a", "gpu.reserved_bytes"), 0);
    assert_int_equal(json_field(&d, "/v1/models/b", "gpu.reserved_bytes"), 700 << 20);
    assert_int_equal(json_field(&d, "/v1/models/c", "evictions"), 0);
    struct larder__http_response r = {0};
    assert_int_equal(http(&d, "GET", "/v1/memory", NULL, NULL, 0, false, &r), 200);
    assert_non_null(strstr(r.body, "\"gpu_budgets\":[{\"index\":1,\"budget_bytes\":1073741824,"
                                   "\"reserved_bytes\":734003200}]"));
    larder__http_response_clear(&r);
    assert_int_equal(daemon_stop(&d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_refused_plugins, daemon_teardown),
        cmocka_unit_test_teardown(test_json_logs, daemon_teardown),
        cmocka_unit_test_teardown(test_timeout, daemon_teardown),
        cmocka_unit_test_teardown(test_ready_waits_for_preloads, daemon_teardown),
        cmocka_unit_test_teardown(test_infer_tokens, daemon_teardown),
        cmocka_unit_test_teardown(test_learned_profiles, daemon_teardown),
        cmocka_unit_test_teardown(test_gpu_budget, daemon_teardown),
    };
    return cmocka_run_group_tests_name("larderd more", tests, NULL, NULL);
}
