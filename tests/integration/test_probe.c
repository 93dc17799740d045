/* larderd's config probe: start-up and reload validate the config in a child process,
 * so that the daemon knows each model's backend estimate before its first load, refuses
 * a bad backend key with file, line, key and a suggestion, and never maps an engine
 * before a model needs it. Real engines where the point is real, synthetic otherwise.
 *
 * Built a second time with -DPROBE_PLUGIN as larder-probehang.so, a backend whose check
 * hangs, or crashes with `crash = yes`: what a probe must survive. */
#ifdef PROBE_PLUGIN
#include <larder/backend.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int hang_check(const struct larder_option *opts, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(opts[i].key, "crash") == 0)
            abort();
    for (;;)
        pause();
}

static int hang_load(const struct larder_option *opts, size_t n, void **ret_model, char *err,
                     size_t errlen)
{
    return LARDER_BACKEND_EINTERNAL;
}

static void hang_unload(void *model)
{
}

static int hang_infer(void *model, void *instance, const struct larder_infer_request *req,
                      struct larder_infer_result *res, char *err, size_t errlen)
{
    return LARDER_BACKEND_EINTERNAL;
}

static void hang_result_free(struct larder_infer_result *res)
{
}

static const char *const hang_keys[] = {"crash", NULL};

static const struct larder_backend_ops hang_ops = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .name = "probehang",
    .description = "a check that never returns, or crashes",
    .option_keys = hang_keys,
    .check = hang_check,
    .load = hang_load,
    .unload = hang_unload,
    .infer = hang_infer,
    .result_free = hang_result_free,
};

const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host);

__attribute__((visibility("default"))) const struct larder_backend_ops *
larder_backend_entry(const struct larder_host *host)
{
    return &hang_ops;
}
#else
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#ifndef EXAMPLES_DIR
#error "EXAMPLES_DIR must name the examples directory"
#endif

#define SERVER "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
#define POLL_MS 5
#define WAIT_MS 60000

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The JSON body of GET path (200 expected). */
static json_t *get_json(struct daemon *d, const char *path)
{
    struct larder__http_response r = {0};
    int st = http(d, "GET", path, NULL, NULL, 0, false, &r);
    json_t *o = st == 200 ? json_loads(r.body, 0, NULL) : NULL;
    if (!o)
        fail_msg("GET %s: HTTP %d: %s", path, st, r.body ? r.body : "");
    larder__http_response_clear(&r);
    return o;
}

static const char *model_str(json_t *o, const char *obj, const char *field)
{
    json_t *v = obj ? json_object_get(json_object_get(o, obj), field) : json_object_get(o, field);
    return json_string_value(v) ? json_string_value(v) : "";
}

/* The status of POST /v1/reload (admin); its body in *ret_body (malloc'd) if wanted. */
static int reload(struct daemon *d, char **ret_body)
{
    struct larder__http_response r = {0};
    int st = http(d, "POST", "/v1/reload", NULL, NULL, 0, true, &r);
    if (ret_body)
        *ret_body = strdup(r.body ? r.body : "");
    larder__http_response_clear(&r);
    return st;
}

static int infer(struct daemon *d, const char *model, const char *ct, const void *body,
                 size_t len, char **ret_body)
{
    char path[128];
    struct larder__http_response r = {0};
    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    int st = http(d, "POST", path, ct, body, len, false, &r);
    if (ret_body)
        *ret_body = strdup(r.body ? r.body : "");
    larder__http_response_clear(&r);
    return st;
}

/* True when /proc/PID/maps names one of the engines' libraries or plugins. */
static bool engine_mapped(pid_t pid, char *which, size_t len)
{
    static const char *const libs[] = {"libpocketsphinx", "libsphinxbase", "libtesseract",
                                       "libxgboost", "larder-pocketsphinx.so",
                                       "larder-tesseract.so", "larder-xgboost.so"};
    char path[64];
    size_t n = 0;
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    char *maps = read_file(path, &n);
    assert_non_null(maps);
    bool found = false;
    for (size_t i = 0; !found && i < sizeof libs / sizeof libs[0]; i++)
        if (strstr(maps, libs[i]) && (found = true))
            snprintf(which, len, "%s", libs[i]);
    free(maps);
    return found;
}

/* (a) The backend's estimate is known before any load, and no engine is mapped. */
static void test_estimate_before_load(void **state)
{
    struct daemon d;
    char which[64];
    assert_int_equal(daemon_start(&d, SERVER "[memory]\nbudget = 2GiB\n"
                                             "[model.asr]\nbackend = pocketsphinx\n"
                                             "[model.ocr]\nbackend = tesseract\nlanguage = eng\n"
                                             "[model.tabular]\nbackend = xgboost\n"
                                             "path = " EXAMPLES_DIR "/tabular.ubj\n"),
                     0);
    static const char *const names[] = {"asr", "ocr", "tabular"};
    for (int i = 0; i < 3; i++) {
        char path[64];
        snprintf(path, sizeof path, "/v1/models/%s", names[i]);
        json_t *o = get_json(&d, path);
        assert_string_equal(model_str(o, NULL, "state"), "unloaded");
        assert_string_equal(model_str(o, "memory", "estimate_source"), "class");
        json_t *est = json_object_get(json_object_get(o, "memory"), "estimate_bytes");
        if (json_integer_value(est) <= 0)
            fail_msg("%s: estimate_bytes %lld", names[i], (long long)json_integer_value(est));
        json_decref(o);
    }
    if (engine_mapped(d.pid, which, sizeof which))
        fail_msg("the daemon mapped %s before any load", which);
    assert_false(daemon_log_has(&d, "backend opened"));
    assert_int_equal(daemon_stop(&d), 0);
}

#define TYPO_LINE "larder.ini:9: [model.m] instnaces: unknown key for backend 'synthetic'"
#define TYPO_HINT "did you mean 'instances'?"

/* (b) A typo in a backend key stops the start-up, naming file, line, key and the key
 * meant; the same file at a reload is refused and the old models keep serving. */
static void test_typo_refused(void **state)
{
    struct daemon d;
    char *body = NULL;
    assert_int_equal(daemon_start(&d, SERVER "[model.other]\nbackend = synthetic\n"
                                             "size = 1MiB\n"
                                             "[model.m]\nbackend = synthetic\ninstnaces = 2\n"),
                     -1);
    assert_true(daemon_log_has(&d, TYPO_LINE));
    assert_true(daemon_log_has(&d, TYPO_HINT));
    assert_int_equal(daemon_stop(&d), 1);

    assert_int_equal(daemon_start(&d, SERVER "[model.other]\nbackend = synthetic\n"
                                             "size = 1MiB\n"
                                             "[model.m]\nbackend = synthetic\ninstances = 2\n"),
                     0);
    assert_int_equal(infer(&d, "m", "text/plain", "x", 1, NULL), 200);
    assert_int_equal(daemon_write_config(&d, SERVER "[model.other]\nbackend = synthetic\n"
                                                    "size = 1MiB\n"
                                                    "[model.m]\nbackend = synthetic\n"
                                                    "instnaces = 2\n"
                                                    "[model.new]\nbackend = synthetic\n"),
                     0);
    assert_int_equal(reload(&d, &body), 400);
    if (!strstr(body, TYPO_LINE) || !strstr(body, TYPO_HINT))
        fail_msg("reload reply lacks the error: %s", body);
    free(body);
    /* larder check says the same of the same file */
    char out[8192], args[256];
    snprintf(args, sizeof args, "check %s", d.config);
    assert_int_equal(run_cli(&d, args, out, sizeof out), 1);
    if (!strstr(out, TYPO_LINE) || !strstr(out, TYPO_HINT) || !strstr(out, "1 error"))
        fail_msg("larder check: %s", out);
    /* nothing was applied: the old models serve, the new one does not exist */
    assert_int_equal(infer(&d, "m", "text/plain", "x", 1, NULL), 200);
    assert_int_equal(infer(&d, "other", "text/plain", "x", 1, NULL), 200);
    assert_int_equal(http_get(&d, "/v1/models/new"), 404);
    /* m was not redefined (that would have reset its counters) */
    assert_int_equal(json_field(&d, "/v1/models/m", "loads"), 1);
    assert_int_equal(json_field(&d, "/v1/models/m", "hits"), 2);
    assert_int_equal(daemon_stop(&d), 0);
}

/* Every error of a start-up is listed, each with its line; an unknown backend lists the
 * backends there are; a plugin's own check names the line of the key it complains of. */
static void test_all_errors_listed(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, SERVER "[model.a]\nbackend = synthetic\nsizee = 1\n"
                                             "[model.b]\nbackend = synthtic\n"
                                             "[model.c]\nbackend = synthetic\nlabel = x\n"
                                             "size = lots\n"),
                     -1);
    assert_true(daemon_log_has(&d, "larder.ini:6: [model.a] sizee: unknown key for backend "
                                   "'synthetic' (did you mean 'size'?)"));
    assert_true(daemon_log_has(&d, "larder.ini:8: [model.b] backend: unknown backend 'synthtic'"));
    assert_true(daemon_log_has(&d, "synthetic, synthetic-pooled"));
    assert_true(daemon_log_has(&d, "did you mean 'synthetic'?"));
    assert_true(daemon_log_has(&d, "larder.ini:12: [model.c] size: size 'lots': not a size"));
    assert_true(daemon_log_has(&d, "3 errors in the config"));
    assert_int_equal(daemon_stop(&d), 1);
}

/* Errors of the file itself (syntax, larderd's own keys, key combinations) are listed
 * all at once too: at start-up, by a refused reload, and by larder check. */
static void test_all_file_errors_listed(void **state)
{
    static const char *const bad = SERVER "lisen = 1\n"
                                          "[memory]\nlow_watermark = 95%\n"
                                          "[model.m]\nbackend = synthetic\ninstnaces = 2\n"
                                          "[modle.x]\n";
    static const char *const want[] = {
        "[server] lisen: unknown key (did you mean 'listen'?)",
        "[memory] low_watermark: must be below high_watermark",
        "unknown section [modle.x]",
    };
    struct daemon d;
    assert_int_equal(daemon_start(&d, bad), -1);
    for (size_t i = 0; i < 3; i++)
        if (!daemon_log_has(&d, want[i]))
            fail_msg("start-up does not list '%s'", want[i]);
    assert_true(daemon_log_has(&d, "3 errors in the config"));
    assert_int_equal(daemon_stop(&d), 1);

    assert_int_equal(daemon_start(&d, SERVER "[model.m]\nbackend = synthetic\n"), 0);
    assert_int_equal(daemon_write_config(&d, bad), 0);
    char *body = NULL;
    assert_int_equal(reload(&d, &body), 400);
    for (size_t i = 0; i < 3; i++)
        if (!strstr(body, want[i]))
            fail_msg("reload reply lacks '%s': %s", want[i], body);
    free(body);
    char out[8192], args[256];
    snprintf(args, sizeof args, "check %s", d.config);
    assert_int_equal(run_cli(&d, args, out, sizeof out), 1);
    for (size_t i = 0; i < 3; i++)
        if (!strstr(out, want[i]))
            fail_msg("larder check lacks '%s': %s", want[i], out);
    if (!strstr(out, "3 errors"))
        fail_msg("larder check does not count 3 errors: %s", out);
    assert_int_equal(infer(&d, "m", "text/plain", "x", 1, NULL), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

struct asr_call {
    struct daemon *d;
    const char *model;
    const char *wav;
    size_t len;
    int status;
    char *body;
};

static void *asr_one(void *arg)
{
    struct asr_call *c = arg;
    c->status = infer(c->d, c->model, "audio/wav", c->wav, c->len, &c->body);
    return NULL;
}

/* One snapshot of /v1/models: how many hold memory (ready, or loading once admitted: a
 * load waiting for room is LOADING on no reservation yet), and the loads of each. */
struct snap {
    int busy;
    long long loads[2];
    bool ready[2];
};

static struct snap snapshot(struct daemon *d, long long budget)
{
    struct snap s = {0};
    json_t *o = get_json(d, "/v1/models"), *m;
    size_t i;
    json_array_foreach(json_object_get(o, "models"), i, m) {
        const char *name = model_str(m, NULL, "name"), *st = model_str(m, NULL, "state");
        int k = strcmp(name, "asr1") == 0 ? 0 : 1;
        json_t *mem = json_object_get(m, "memory");
        long long reserved = json_integer_value(json_object_get(mem, "reserved_bytes"));
        s.ready[k] = strcmp(st, "ready") == 0;
        s.busy += s.ready[k] || (strcmp(st, "loading") == 0 && reserved > 0);
        s.loads[k] = json_integer_value(json_object_get(m, "loads"));
        if (s.ready[k] && reserved <= 0)
            fail_msg("%s is ready on a reservation of %lld", name, reserved);
        if (reserved > budget)
            fail_msg("%s reserves %lld, over the budget %lld", name, reserved, budget);
    }
    json_decref(o);
    return s;
}

/* (c) Two models with no memory key, each ~96 MiB, a 150 MiB budget, both requested at
 * once on a fresh daemon: they load one at a time, never on a zero reservation, and
 * both are served. */
static void test_two_asr_one_budget(void **state)
{
#if defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer maps shadow memory for what a load touches: the daemon's RSS delta
     * for one model is then several times the model, more than this whole budget. */
    printf("ThreadSanitizer build: RSS deltas count shadow memory; skipped\n");
    skip();
#endif
    struct daemon d;
    size_t len = 0;
    char *wav = read_file(EXAMPLES_DIR "/speech.wav", &len);
    assert_non_null(wav);
    assert_int_equal(daemon_start(&d, SERVER "[memory]\nbudget = 150MiB\n"
                                             "[model.asr1]\nbackend = pocketsphinx\n"
                                             "[model.asr2]\nbackend = pocketsphinx\n"),
                     0);
    long long budget = json_field(&d, "/v1/memory", "budget_bytes");
    assert_int_equal(budget, 150ll << 20);
    struct asr_call calls[2] = {{&d, "asr1", wav, len, 0, NULL}, {&d, "asr2", wav, len, 0, NULL}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, asr_one, &calls[i]), 0);
    long long ll = 0;
    for (int waited = 0; ll < 2 && waited < WAIT_MS; waited += POLL_MS) {
        struct snap a = snapshot(&d, budget);
        long long reserved = json_field(&d, "/v1/memory", "reserved_bytes");
        struct snap b = snapshot(&d, budget);
        if (a.busy > 1 || b.busy > 1)
            fail_msg("both models loaded at once");
        assert_true(reserved <= budget);
        for (int k = 0; k < 2; k++)
            if (a.ready[k] && b.ready[k] && a.loads[k] == b.loads[k] && reserved <= 0)
                fail_msg("asr%d stayed ready while /v1/memory reserved %lld", k + 1, reserved);
        ll = b.loads[0] + b.loads[1];
        sleep_ms(POLL_MS);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        if (calls[i].status != 200)
            fail_msg("%s: HTTP %d: %s", calls[i].model, calls[i].status, calls[i].body);
        assert_non_null(strstr(calls[i].body, "what is the weather like today"));
        free(calls[i].body);
    }
    assert_int_equal(json_field(&d, "/v1/models/asr1", "loads"), 1);
    assert_int_equal(json_field(&d, "/v1/models/asr2", "loads"), 1);
    free(wav);
    assert_int_equal(daemon_stop(&d), 0);
}

/* (d) A budget larger than the machine: a warning at start-up, an error for check. */
static void test_budget_over_ram(void **state)
{
    struct daemon d;
    char out[8192], args[256];
    assert_int_equal(daemon_start(&d, SERVER "[memory]\nbudget = 64TiB\n"
                                             "[model.m]\nbackend = synthetic\n"),
                     0);
    assert_true(daemon_log_has(&d, "config warning"));
    assert_true(daemon_log_has(&d, "[memory] budget: 64.0 TiB is more than this machine's memory"));
    snprintf(args, sizeof args, "check %s", d.config);
    assert_int_equal(run_cli(&d, args, out, sizeof out), 1);
    if (!strstr(out, "error: ") || !strstr(out, "64.0 TiB is more than this machine's memory"))
        fail_msg("larder check: %s", out);
    assert_non_null(strstr(out, "1 model, 1 error"));
    assert_int_equal(daemon_stop(&d), 0);
}

/* (e) A reload reports the [server] and [memory] keys it applied and those that wait for
 * a restart. */
static void test_reload_settings(void **state)
{
    struct daemon d;
    char *body = NULL;
    assert_int_equal(daemon_start(&d, SERVER "[memory]\nbudget = 64MiB\n"
                                             "[model.m]\nbackend = synthetic\n"),
                     0);
    assert_int_equal(daemon_write_config(&d, "[server]\nlisten = 127.0.0.1:1\n"
                                             "admin_tokens = admin.tokens\nmax_body = 1MiB\n"
                                             "[memory]\nbudget = 128MiB\n"
                                             "[model.m]\nbackend = synthetic\n"),
                     0);
    assert_int_equal(reload(&d, &body), 200);
    json_t *o = json_loads(body, 0, NULL);
    assert_non_null(o);
    json_t *applied = json_object_get(json_object_get(o, "settings"), "applied");
    json_t *restart = json_object_get(json_object_get(o, "settings"), "restart_required");
    char *a = json_dumps(applied, JSON_COMPACT), *r = json_dumps(restart, JSON_COMPACT);
    if (!strstr(a, "\"memory.budget\"") || !strstr(a, "\"server.max_body\"") ||
        !strstr(r, "\"server.listen\"") || strstr(a, "listen") || strstr(r, "budget"))
        fail_msg("reload summary: %s", body);
    free(a);
    free(r);
    json_decref(o);
    free(body);
    assert_true(daemon_log_has(&d, "needs a restart"));
    /* the budget took effect; the daemon still listens where it did */
    assert_int_equal(json_field(&d, "/v1/memory", "budget_bytes"), 128ll << 20);
    assert_int_equal(infer(&d, "m", "text/plain", "x", 1, NULL), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

/* A corrupt XGBoost file: the load fails with a message a user can act on. */
static void test_corrupt_xgboost(void **state)
{
    struct daemon d;
    char *body = NULL, path[256], config[1024];
    assert_int_equal(daemon_start(&d, SERVER), 0);
    snprintf(path, sizeof path, "%s/broken.ubj", d.dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"learner\": this is not a booster", f);
    fclose(f);
    snprintf(config, sizeof config, SERVER "[model.t]\nbackend = xgboost\npath = %s\n", path);
    assert_int_equal(daemon_write_config(&d, config), 0);
    assert_int_equal(reload(&d, NULL), 200);
    assert_int_equal(infer(&d, "t", "application/json", "[[1]]", 5, &body), 500);
    if (!strstr(body, "is not a valid XGBoost model") || strstr(body, "basic_string"))
        fail_msg("reply: %s", body);
    free(body);
    assert_int_equal(daemon_stop(&d), 0);
}

/* A probe that hangs is killed at its deadline, one that crashes is named by its
 * signal; either stops a start-up, and a reload keeps the running config. */
static void test_probe_hangs_or_crashes(void **state)
{
    struct daemon d;
    char *body = NULL;
#define HANG_SERVER SERVER "backend_dir = " TEST_PLUGIN_DIR "\n"
    setenv("LARDER_PROBE_TIMEOUT", "2s", 1);
    int r = daemon_start(&d, HANG_SERVER "[model.h]\nbackend = probehang\n");
    unsetenv("LARDER_PROBE_TIMEOUT");
    assert_int_equal(r, -1);
    assert_true(daemon_log_has(&d, "the config probe did not finish within 2.0 s: killed"));
    assert_int_equal(daemon_stop(&d), 1);

    assert_int_equal(daemon_start(&d, HANG_SERVER "[model.h]\nbackend = probehang\n"
                                                  "crash = yes\n"),
                     -1);
    assert_true(daemon_log_has(&d, "the config probe was killed by signal 6"));
    assert_int_equal(daemon_stop(&d), 1);

    assert_int_equal(daemon_start(&d, SERVER "[model.ok]\nbackend = synthetic\n"), 0);
    assert_int_equal(daemon_write_config(&d, HANG_SERVER "[model.h]\nbackend = probehang\n"
                                                         "crash = yes\n"),
                     0);
    assert_int_equal(reload(&d, &body), 500);
    if (!strstr(body, "the config probe was killed by signal 6"))
        fail_msg("reload reply: %s", body);
    free(body);
    assert_int_equal(infer(&d, "ok", "text/plain", "x", 1, NULL), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_estimate_before_load, daemon_teardown),
        cmocka_unit_test_teardown(test_typo_refused, daemon_teardown),
        cmocka_unit_test_teardown(test_all_errors_listed, daemon_teardown),
        cmocka_unit_test_teardown(test_all_file_errors_listed, daemon_teardown),
        cmocka_unit_test_teardown(test_two_asr_one_budget, daemon_teardown),
        cmocka_unit_test_teardown(test_budget_over_ram, daemon_teardown),
        cmocka_unit_test_teardown(test_reload_settings, daemon_teardown),
        cmocka_unit_test_teardown(test_corrupt_xgboost, daemon_teardown),
        cmocka_unit_test_teardown(test_probe_hangs_or_crashes, daemon_teardown),
    };
    return cmocka_run_group_tests_name("config probe", tests, NULL, NULL);
}
#endif
