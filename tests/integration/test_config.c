/* larderd's config parser, value parsers and token checks, without a server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "larder/larder.h"

static char dir[64];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/larder-cfg-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *write_tmp(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Loads text as a config; returns the error message ("" on success). */
static const char *load(const char *text, struct larder__config **ret)
{
    static char err[1024];
    err[0] = 0;
    struct larder__config *c = NULL;
    int r = larder__config_load(write_tmp("t.ini", text), &c, err, sizeof err);
    if (r == 0 && ret)
        *ret = c;
    else
        larder__config_free(c);
    if (r < 0)
        assert_true(err[0] != 0);
    return err;
}

static void test_full_config(void **state)
{
    struct larder__config *c = NULL;
    const char *e = load("; comment\n"
                         "[server]\n"
                         "listen = 0.0.0.0:9000\n"
                         "max_body = 2MiB\n"
                         "request_timeout = 90s\n"
                         "threads = 3\n"
                         "log_format = json\n"
                         "backend_dir = plugins\n"
                         "[memory]\n"
                         "budget = 60%\n"
                         "policy = lru\n"
                         "ttl = 10m\n"
                         "psi_trigger = off\n"
                         "watch_pressure = no\n"
                         "history = 10m\n"
                         "high_watermark = 85%\n"
                         "gpu_budget = 0=8GiB, 3=1GiB\n"
                         "[model.b]\n"
                         "backend = synthetic\n"
                         "path = models/b.bin\n"
                         "size = 4MiB\n"
                         "instances = 2\n"
                         "ttl = never\n"
                         "preload = yes\n"
                         "pin = true\n"
                         "priority = -3\n"
                         "memory = 1GiB\n"
                         "queue = 8\n"
                         "timeout = 250ms\n"
                         "fallback = a\n"
                         "gpu = 3\n"
                         "gpu_memory = 512MiB\n"
                         "[model.a]\n"
                         "backend = synthetic\n",
                         &c);
    assert_string_equal(e, "");
    assert_string_equal(c->listen_host, "0.0.0.0");
    assert_int_equal(c->listen_port, 9000);
    assert_int_equal(c->max_body, 2 << 20);
    assert_int_equal(c->request_timeout_ms, 90000);
    assert_int_equal(c->threads, 3);
    assert_int_equal(c->log_format, LARDER__LOG_JSON);
    assert_true(c->budget_fraction > 0.59 && c->budget_fraction < 0.61);
    assert_int_equal(c->budget_bytes, 0);
    assert_string_equal(c->policy, "lru");
    assert_int_equal(c->default_ttl_ms, 600000);
    assert_string_equal(c->psi_trigger, "");
    assert_false(c->watch_pressure);
    assert_int_equal(c->history_s, 600);
    assert_true(c->high_watermark > 0.84 && c->high_watermark < 0.86);
    assert_int_equal(c->gpu_budget[0], 8ull << 30);
    assert_int_equal(c->gpu_budget[1], 0);
    assert_int_equal(c->gpu_budget[3], 1ull << 30);
    assert_int_equal(c->n_models, 2);
    assert_string_equal(c->models[0].name, "a"); /* sorted */
    const struct larder__model_conf *b = larder__config_model(c, "b");
    assert_non_null(b);
    assert_null(larder__config_model(c, "c"));
    assert_int_equal(b->instances, 2);
    assert_int_equal(b->ttl_ms, -1);
    assert_true(b->preload && b->pin);
    assert_int_equal(b->priority, -3);
    assert_int_equal(b->memory_bytes, 1ull << 30);
    assert_int_equal(b->queue, 8);
    assert_int_equal(b->timeout_ms, 250);
    assert_string_equal(b->fallback, "a");
    assert_int_equal(b->gpu, 3);
    assert_int_equal(b->gpu_bytes, 512 << 20);
    assert_int_equal(larder__config_model(c, "a")->gpu, -1);
    /* relative paths resolve against the config's directory; path goes first to the backend */
    char want[160];
    snprintf(want, sizeof want, "%s/models/b.bin", dir);
    assert_string_equal(b->path, want);
    assert_int_equal(b->n_opts, 2);
    assert_string_equal(b->opts[0].key, "path");
    assert_string_equal(b->opts[0].value, want);
    assert_string_equal(b->opts[1].key, "size");
    assert_int_equal(b->opt_lines[1], 21);
    snprintf(want, sizeof want, "%s/plugins", dir);
    assert_string_equal(c->backend_dir, want);
    assert_true(larder__model_conf_equal(b, b));
    assert_false(larder__model_conf_equal(b, larder__config_model(c, "a")));
    larder__config_free(c);
}

static void test_defaults(void **state)
{
    struct larder__config *c = NULL;
    assert_string_equal(load("[model.m]\nbackend = x\n", &c), "");
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_int_equal(c->listen_port, LARDER__DEFAULT_PORT);
    assert_int_equal(c->models[0].instances, 1);
    assert_int_equal(c->models[0].ttl_ms, LARDER_TTL_DEFAULT);
    assert_null(c->admin_tokens);
    assert_true(c->watch_pressure);
    assert_null(c->psi_trigger);
    assert_int_equal(c->history_s, -1);
    larder__config_free(c);
}

/* Each bad config must fail with a message holding `want` (file:line: [section] key). */
static void expect_fail(const char *text, const char *want)
{
    const char *e = load(text, NULL);
    if (!strstr(e, want))
        fail_msg("error '%s' lacks '%s'", e, want);
    assert_non_null(strstr(e, "t.ini:"));
}

static void test_errors_name_file_line_key(void **state)
{
    expect_fail("[server]\nlisten = 127.0.0.1:80\nbogus = 1\n",
                "t.ini:3: [server] bogus: unknown key");
    expect_fail("[server]\nmax_body = lots\n", "t.ini:2: [server] max_body: bad value 'lots'");
    expect_fail("[server]\nthreads = 100000\n", "t.ini:2: [server] threads: value out of range");
    expect_fail("[server]\nlog_format = xml\n", "t.ini:2: [server] log_format: bad value");
    expect_fail("[server]\nlisten = nowhere:port\n", "[server] listen: bad value");
    expect_fail("[memory]\nbudget = 150%\n", "t.ini:2: [memory] budget: value out of range");
    expect_fail("[memory]\npolicy = random\n", "[memory] policy: bad value 'random'");
    expect_fail("[memory]\npsi_trigger = some 1 2\n", "[memory] psi_trigger: value out of range");
    expect_fail("[memory]\npsi_trigger = most 1 2\n", "[memory] psi_trigger: bad value");
    expect_fail("[memory]\nhistory = 30d\n", "[memory] history: value out of range");
    expect_fail("[memory]\nhigh_watermark = 50%\nlow_watermark = 60%\n",
                "[memory] low_watermark: must be below high_watermark");
    expect_fail("[model.m]\nbackend = x\nttl = soon\n", "t.ini:3: [model.m] ttl: bad value 'soon'");
    expect_fail("[model.m]\nbackend = x\ninstances = 0\n",
                "[model.m] instances: value out of range");
    expect_fail("[model.m]\nbackend = x\npin = maybe\n", "t.ini:3: [model.m] pin: bad value");
    expect_fail("[model.m]\nbackend = x\nbackend = y\n",
                "t.ini:3: [model.m] backend: key given twice");
    expect_fail("[model.m]\nbackend = x\nsize = 1\nsize = 2\n",
                "t.ini:4: [model.m] size: key given twice");
    expect_fail("[model.m]\npath = p\n", "[model.m] backend: missing");
    expect_fail("[model.m]\nbackend = x\nfallback = n\n", "[model.m] fallback: names no");
    expect_fail("[model.m]\nbackend = x\nfallback = m\n", "[model.m] fallback: a model cannot");
    expect_fail("[model.a]\nbackend = x\nfallback = b\n[model.b]\nbackend = x\nfallback = a\n",
                "loops back");
    expect_fail("[server]\nthreads = 2\n[model.m]\nbackend = x\n[server]\nthreads = 3\n",
                "t.ini:6: [server] threads: key given twice");
    expect_fail("[model.0123456789012345678901234567890123456789abcd]\nbackend = x\n",
                "t.ini:1: section name or key longer than 49");
    expect_fail("[model.m]\nbackend = x\nk0123456789012345678901234567890123456789012345678 = 1\n",
                "t.ini:3: section name or key longer than 49");
    expect_fail("[memory]\ngpu_budget = 16=1GiB\n", "[memory] gpu_budget: value out of range");
    expect_fail("[memory]\ngpu_budget = 0:1GiB\n", "[memory] gpu_budget: bad value");
    expect_fail("[model.m]\nbackend = x\ngpu_memory = 1GiB\n", "[model.m] gpu_memory: needs a gpu");
    expect_fail("[model.bad name]\nbackend = x\n", "t.ini:2: bad model name");
    expect_fail("[models]\nx = 1\n", "t.ini:2: unknown section [models]");
    expect_fail("x = 1\n", "t.ini:1: key outside of any section");
    expect_fail("[server]\nthis line has no equals sign\n", "t.ini:2: syntax error");
    expect_fail("[server]\nlisten =\n", "t.ini:2: [server] listen: empty value");
    char longline[400];
    snprintf(longline, sizeof longline, "[model.m]\nbackend = x\nopt = %0300d\n", 0);
    expect_fail(longline, "t.ini:3: line longer than");
}

static void test_missing_file(void **state)
{
    char err[256];
    struct larder__config *c = NULL;
    assert_int_equal(larder__config_load("/nonexistent/larder.ini", &c, err, sizeof err), -ENOENT);
    assert_null(c);
    assert_non_null(strstr(err, "/nonexistent/larder.ini"));
}

static void test_durations(void **state)
{
    int64_t ms;
    static const struct { const char *s; int64_t ms; } ok[] = {
        {"0", 0}, {"250ms", 250}, {"30s", 30000}, {"30", 30000}, {"1.5s", 1500},
        {"5m", 300000}, {"2h", 7200000}, {"1d", 86400000}, {"never", -1}, {"-1", -1},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        assert_int_equal(larder__parse_duration(ok[i].s, &ms), 0);
        assert_int_equal(ms, ok[i].ms);
    }
    static const char *const bad[] = {"", "s", "5x", "-5s", "1e999", " 5s", "never5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_true(larder__parse_duration(bad[i], &ms) < 0);
}

static void test_listen(void **state)
{
    char *host = NULL;
    unsigned port = 0;
    assert_int_equal(larder__parse_listen("10.1.2.3:81", &host, &port), 0);
    assert_string_equal(host, "10.1.2.3");
    assert_int_equal(port, 81);
    free(host);
    assert_int_equal(larder__parse_listen(":82", &host, &port), 0);
    assert_string_equal(host, "127.0.0.1");
    free(host);
    assert_int_equal(larder__parse_listen("83", &host, &port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 83);
    free(host);
    assert_int_equal(larder__parse_listen("[::1]:84", &host, &port), 0);
    assert_string_equal(host, "::1");
    free(host);
    assert_true(larder__parse_listen("host:70000", &host, &port) < 0);
    assert_true(larder__parse_listen("host:", &host, &port) < 0);
    assert_true(larder__parse_listen("[::1]84", &host, &port) < 0);
}

static void test_tokens(void **state)
{
    char err[256];
    struct larder__tokens *t = NULL;
    const char *p = write_tmp("tok", "# admin tokens\n\n  alpha-token  \nbeta\n");
    assert_int_equal(larder__tokens_load(p, &t, err, sizeof err), 0);
    assert_int_equal(larder__tokens_count(t), 2);
    assert_true(larder__tokens_check(t, "Bearer alpha-token"));
    assert_true(larder__tokens_check(t, "bearer beta"));
    assert_false(larder__tokens_check(t, "Bearer alpha"));
    assert_false(larder__tokens_check(t, "Bearer alpha-token2"));
    assert_false(larder__tokens_check(t, "Bearer "));
    assert_false(larder__tokens_check(t, "Basic beta"));
    assert_false(larder__tokens_check(t, NULL));
    assert_false(larder__tokens_check(NULL, "Bearer beta"));
    larder__tokens_free(t);
    t = NULL;
    p = write_tmp("empty", "# nothing\n");
    assert_int_equal(larder__tokens_load(p, &t, err, sizeof err), -ENOENT);
    assert_null(t);
    assert_non_null(strstr(err, "no token"));
    assert_true(larder__tokens_load("/nonexistent", &t, err, sizeof err) < 0);
}

static void test_consttime_equal(void **state)
{
    assert_true(larder__consttime_equal("abc", 3, "abc", 3));
    assert_false(larder__consttime_equal("abc", 3, "abd", 3));
    assert_false(larder__consttime_equal("abc", 3, "abcd", 4));
    assert_false(larder__consttime_equal("abcd", 4, "abc", 3));
    assert_false(larder__consttime_equal("a", 1, "", 0));
    assert_true(larder__consttime_equal("", 0, "", 0));
}

static void test_format_size(void **state)
{
    char b[32];
    larder__format_size(512, b, sizeof b);
    assert_string_equal(b, "512 B");
    larder__format_size(3 << 20, b, sizeof b);
    assert_string_equal(b, "3.0 MiB");
    larder__format_size(1536, b, sizeof b);
    assert_string_equal(b, "1.5 KiB");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_errors_name_file_line_key),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_listen),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_consttime_equal),
        cmocka_unit_test(test_format_size),
    };
    return cmocka_run_group_tests_name("larderd config", tests, setup, teardown);
}
