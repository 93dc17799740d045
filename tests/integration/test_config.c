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
#include <sys/stat.h>
#include <time.h>
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
    expect_fail("[model.bad name]\nbackend = x\n", "t.ini:1: bad model name");
    expect_fail("[models]\nx = 1\n", "t.ini:1: unknown section [models]");
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
    static const char *const bad[] = {"",     "s",   "5x",   "-5s",   "1e999", " 5s",
                                      "never5", "0x10", "1e3s", "1.5.2s", "inf", "nan"};
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

/* ---- every error at once ------------------------------------------------------------ */

#define MAX_SEEN 128

struct seen {
    int n;
    unsigned line[MAX_SEEN];
    char text[MAX_SEEN][512];
    char key[MAX_SEEN][64];
    char section[MAX_SEEN][64];
    char message[MAX_SEEN][256];
};

static void collect(void *ud, const struct larder__config_error *e)
{
    struct seen *s = ud;
    assert_non_null(e->text);
    assert_non_null(e->message);
    assert_non_null(e->file);
    if (s->n >= MAX_SEEN)
        return;
    s->line[s->n] = e->line;
    snprintf(s->text[s->n], sizeof s->text[0], "%s", e->text);
    snprintf(s->key[s->n], sizeof s->key[0], "%s", e->key ? e->key : "");
    snprintf(s->section[s->n], sizeof s->section[0], "%s", e->section ? e->section : "");
    snprintf(s->message[s->n], sizeof s->message[0], "%s", e->message);
    s->n++;
}

/* Loads text with larder__config_load_all; *s gets every error. Returns its code. */
static int load_all(const char *text, struct seen *s, struct larder__config **ret)
{
    struct larder__config *c = (struct larder__config *)1;
    memset(s, 0, sizeof *s);
    int r = larder__config_load_all(write_tmp("t.ini", text), &c, collect, s);
    if (r < 0) {
        assert_null(c);
        assert_true(s->n > 0);
    } else {
        assert_int_equal(s->n, 0);
    }
    if (ret)
        *ret = c;
    else
        larder__config_free(c);
    return r;
}

static void assert_text(const struct seen *s, int i, const char *want)
{
    if (i >= s->n)
        fail_msg("error %d of %d missing: wanted '%s'", i, s->n, want);
    if (!strstr(s->text[i], want))
        fail_msg("error %d '%s' lacks '%s'", i, s->text[i], want);
}

static void test_every_error_reported(void **state)
{
    struct seen s;
    int r = load_all("[server]\n"                     /* 1 */
                     "lisen = 127.0.0.1:80\n"         /* 2 unknown key */
                     "threads = many\n"               /* 3 bad value */
                     "[memory\n"                      /* 4 no ']' */
                     "budget = 1GiB\n"                /* 5 ignored: its section is bad */
                     "[memory]\n"                     /* 6 */
                     "policy = random\n"              /* 7 */
                     "this is not a pair\n"           /* 8 */
                     "[model.a]\n"                    /* 9 */
                     "backend = synthetic\n"          /* 10 */
                     "instances = 0\n"                /* 11 */
                     "instances = 2\n"                /* 12 twice */
                     "[model.b]\n"                    /* 13 no backend */
                     "fallback = a\n",                /* 14 */
                     &s, NULL);
    assert_int_equal(r, -EINVAL);
    assert_int_equal(s.n, 8);
    assert_text(&s, 0, "t.ini:2: [server] lisen: unknown key (did you mean 'listen'?)");
    assert_text(&s, 1, "t.ini:3: [server] threads: bad value 'many'");
    assert_text(&s, 2, "t.ini:4: syntax error: section header without its closing ']'");
    assert_text(&s, 3, "t.ini:7: [memory] policy: bad value 'random'");
    assert_text(&s, 4, "t.ini:8: syntax error (expected [section] or key = value)");
    assert_text(&s, 5, "t.ini:11: [model.a] instances: value out of range '0'");
    assert_text(&s, 6, "t.ini:12: [model.a] instances: key given twice (first at line 11)");
    assert_text(&s, 7, "t.ini:13: [model.b] backend: missing (required)");
    /* the fields, beside the text */
    assert_int_equal(s.line[0], 2);
    assert_string_equal(s.key[0], "lisen");
    assert_string_equal(s.section[0], "server");
    assert_string_equal(s.message[0], "unknown key (did you mean 'listen'?)");
    assert_string_equal(s.key[2], "");
    assert_string_equal(s.section[2], "");
    /* model b has no backend: reported once the section ends, at its header */
    r = load_all("[model.b]\nfallback = a\n[model.a]\nbackend = x\n", &s, NULL);
    assert_int_equal(s.n, 1);
    assert_text(&s, 0, "t.ini:1: [model.b] backend: missing (required)");
}

/* The wrapper returns the error of the earliest line, whatever found it first. */
static void test_first_error_is_first_line(void **state)
{
    expect_fail("[server]\nthis line has no equals sign\nthreads = x\n", "t.ini:2: syntax error");
    expect_fail("[model.b]\nbackend = x\nfallback = nowhere\n[server]\nbogus = 1\n",
                "t.ini:3: [model.b] fallback: names no [model.*] section");
    expect_fail("[server]\nthreads = 2\n[memory]\nlow_watermark = 95%\n[server]\nbogus = 1\n",
                "t.ini:4: [memory] low_watermark");
}

static void test_syntax_errors_name_the_line(void **state)
{
    struct seen s;
    load_all("[server\nlisten = 127.0.0.1:80\nthreads = 2\n", &s, NULL);
    assert_int_equal(s.n, 1); /* its keys are not reported as outside any section */
    assert_text(&s, 0, "t.ini:1: syntax error: section header without its closing ']'");
    load_all("[model.a]\nbackend = x\n[model.b ; comment]\nbackend = y\n", &s, NULL);
    assert_int_equal(s.n, 1);
    assert_text(&s, 0, "t.ini:3: syntax error: section header without");
    load_all("[server] listen = 1\n", &s, NULL);
    assert_text(&s, 0, "t.ini:1: syntax error: text after the section header's ']'");
    load_all("[server]\n= 127.0.0.1:80\n", &s, NULL);
    assert_text(&s, 0, "t.ini:2: syntax error: no key before '='");
    load_all("[]\nk = 1\n", &s, NULL);
    assert_int_equal(s.n, 1);
    assert_text(&s, 0, "t.ini:1: empty section name []");
    load_all("x = 1\ny = 2\n[server]\nthreads = 2\n", &s, NULL);
    assert_int_equal(s.n, 1);
    assert_text(&s, 0, "t.ini:1: key outside of any section");
    /* a long line is reported at its own line, even a comment, and only once */
    char text[600];
    snprintf(text, sizeof text, "[server]\n# %0250d\nthreads = 2\nmax_body = %0250d\n", 0, 0);
    load_all(text, &s, NULL);
    assert_int_equal(s.n, 2);
    assert_text(&s, 0, "t.ini:2: line longer than 196 characters");
    assert_text(&s, 1, "t.ini:4: line longer than 196 characters");
}

/* Lines that inih would read as continuations, CRLF endings and a UTF-8 BOM. */
static void test_indented_crlf_bom(void **state)
{
    struct larder__config *c = NULL;
    struct seen s;
    assert_int_equal(load_all("\xef\xbb\xbf[model.m]\r\n"
                              "    backend = synthetic\r\n"
                              "    size = 4MiB   \r\n"
                              "\tinstances = 3\r\n",
                              &s, &c), 0);
    assert_int_equal(c->n_models, 1);
    assert_string_equal(c->models[0].backend, "synthetic");
    assert_int_equal(c->models[0].instances, 3);
    assert_int_equal(c->models[0].n_opts, 1);
    assert_string_equal(c->models[0].opts[0].key, "size");
    assert_string_equal(c->models[0].opts[0].value, "4MiB");
    assert_int_equal(c->models[0].opt_lines[0], 3);
    assert_int_equal(c->n_settings, 3);
    larder__config_free(c);
}

static void test_error_cap(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fputs("[server]\n", f);
    for (int i = 0; i < 300; i++)
        fprintf(f, "bogus%d = 1\n", i);
    fclose(f);
    struct seen s;
    assert_int_equal(load_all(text, &s, NULL), -EINVAL);
    free(text);
    assert_int_equal(s.n, 101);
    assert_text(&s, 99, "t.ini:101: [server] bogus99: unknown key");
    assert_text(&s, 100, "t.ini:102: too many errors: stopped here");
}

/* ---- did you mean ------------------------------------------------------------------- */

static void test_suggest(void **state)
{
    static const char *const keys[] = {"backend", "path", "instances", "ttl", "preload",
                                       "pin", "priority", "fallback", NULL};
    assert_string_equal(larder__config_suggest("instnaces", keys), "instances");
    assert_string_equal(larder__config_suggest("instance", keys), "instances");
    assert_string_equal(larder__config_suggest("Backend", keys), "backend");
    assert_string_equal(larder__config_suggest("bakcedn", keys), "backend");
    assert_string_equal(larder__config_suggest("fallbak", keys), "fallback");
    assert_string_equal(larder__config_suggest("tll", keys), "ttl");
    assert_string_equal(larder__config_suggest("preloads", keys), "preload");
    assert_null(larder__config_suggest("tl", keys));     /* 1 edit is half of 2 */
    assert_null(larder__config_suggest("pn", keys));
    assert_null(larder__config_suggest("language", keys));
    assert_null(larder__config_suggest("instancesxyz", keys)); /* 3 edits */
    assert_null(larder__config_suggest("", keys));
    assert_null(larder__config_suggest(NULL, keys));
    assert_null(larder__config_suggest("ttl", NULL));
    static const char *const none[] = {NULL};
    assert_null(larder__config_suggest("ttl", none));
    /* the first of equally near candidates */
    static const char *const ab[] = {"abcx", "abcy", NULL};
    assert_string_equal(larder__config_suggest("abcz", ab), "abcx");
    char big[100];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    const char *const longs[] = {big, NULL};
    assert_null(larder__config_suggest(big, longs));
}

static void test_unknown_keys_did_you_mean(void **state)
{
    expect_fail("[server]\nlisen = 80\n",
                "t.ini:2: [server] lisen: unknown key (did you mean 'listen'?)");
    expect_fail("[server]\nmax_bdy = 1MiB\n",
                "[server] max_bdy: unknown key (did you mean 'max_body'?)");
    expect_fail("[memory]\nbudgte = 1GiB\n",
                "t.ini:2: [memory] budgte: unknown key (did you mean 'budget'?)");
    expect_fail("[memory]\nlow_watermrak = 50%\n", "(did you mean 'low_watermark'?)");
    expect_fail("[server]\nbudget = 1GiB\n",
                "t.ini:2: [server] budget: unknown key (it belongs in [memory])");
    expect_fail("[memory]\nthreads = 2\n",
                "[memory] threads: unknown key (it belongs in [server])");
    expect_fail("[memory]\nbackend = x\n",
                "[memory] backend: unknown key (it belongs in a [model.NAME] section)");
    expect_fail("[server]\nzzzz = 1\n", "t.ini:2: [server] zzzz: unknown key");
    struct seen s;
    load_all("[sever]\nlisten = 80\n", &s, NULL);
    assert_int_equal(s.n, 1); /* its keys are skipped */
    assert_string_equal(s.section[0], "sever");
    assert_string_equal(s.key[0], "");
    const char *e = load("[server]\nzzzz = 1\n", NULL);
    assert_null(strstr(e, "did you mean"));
    expect_fail("[sever]\nlisten = 80\n",
                "t.ini:1: unknown section [sever] (did you mean [server]?)");
    expect_fail("[Memory]\n", "t.ini:1: unknown section [Memory] (did you mean [memory]?)");
    expect_fail("[modle.ocr]\nbackend = x\n",
                "t.ini:1: unknown section [modle.ocr] (did you mean [model.ocr]?)");
    expect_fail("[model]\nbackend = x\n",
                "t.ini:1: unknown section [model] (a model's section is [model.NAME])");
    expect_fail("[model.abc]\nbackend = x\n[model.b]\nbackend = x\nfallback = acb\n",
                "t.ini:5: [model.b] fallback: names no [model.*] section (did you mean 'abc'?)");
    expect_fail("[model.ocr-eng]\nbackend = x\n[model.b]\nbackend = x\nfallback = ocr-en\n",
                "fallback: names no [model.*] section (did you mean 'ocr-eng'?)");
}

static void test_model_keys_against_backend(void **state)
{
    struct larder__config *c = NULL;
    struct seen s;
    assert_int_equal(load_all("[model.m]\n"
                              "backend = synthetic\n"
                              "path = w.bin\n"
                              "instnaces = 2\n"
                              "size = 1MiB\n"
                              "langauge = eng\n"
                              "colour = blue\n",
                              &s, &c), 0);
    const struct larder__model_conf *m = larder__config_model(c, "m");
    static const char *const backend_keys[] = {"size", "language", "load_ms", NULL};
    assert_int_equal(larder__config_check_model_keys(c, m, backend_keys, collect, &s), 3);
    assert_int_equal(s.n, 3);
    assert_text(&s, 0, "t.ini:4: [model.m] instnaces: unknown key for backend 'synthetic' "
                       "(did you mean 'instances'?)");
    assert_text(&s, 1, "t.ini:6: [model.m] langauge: unknown key for backend 'synthetic' "
                       "(did you mean 'language'?)");
    assert_text(&s, 2, "t.ini:7: [model.m] colour: unknown key for backend 'synthetic'");
    assert_null(strstr(s.text[2], "did you mean"));
    assert_int_equal(s.line[0], 4);
    assert_string_equal(s.key[0], "instnaces");
    assert_string_equal(s.section[0], "model.m");
    assert_string_equal(s.message[2], "unknown key for backend 'synthetic'");
    /* every key known: nothing; no list: every backend option but path is unknown */
    static const char *const all[] = {"size", "language", "instnaces", "langauge", "colour", NULL};
    memset(&s, 0, sizeof s);
    assert_int_equal(larder__config_check_model_keys(c, m, all, collect, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(larder__config_check_model_keys(c, m, NULL, NULL, NULL), 4);
    /* larderd's model keys are never reported */
    const char *const *own = larder__config_model_keys();
    assert_string_equal(own[0], "backend");
    bool has_path = false;
    for (size_t i = 0; own[i]; i++)
        has_path |= strcmp(own[i], "path") == 0;
    assert_true(has_path);
    larder__config_free(c);
}

/* ---- what larder_open would refuse ------------------------------------------------- */

/* Opens a manager with the config's [memory] settings, as larderd does. */
static int open_with(const struct larder__config *c)
{
    struct larder_opts o;
    larder_opts_init(&o);
    if (c->high_watermark > 0)
        o.high_watermark = c->high_watermark;
    if (c->low_watermark > 0)
        o.low_watermark = c->low_watermark;
    if (c->budget_fraction > 0)
        o.budget_fraction = c->budget_fraction;
    o.budget_bytes = c->budget_bytes;
    if (c->history_s >= 0)
        o.history_seconds = (unsigned)c->history_s;
    if (c->loader_threads)
        o.loader_threads = c->loader_threads;
    if (c->policy)
        o.policy = c->policy;
    o.watch_pressure = false;
    larder *m = NULL;
    int r = larder_open(&o, &m);
    larder_close(m);
    return r;
}

static void test_watermarks_with_defaults(void **state)
{
    expect_fail("[memory]\nlow_watermark = 95%\n",
                "t.ini:2: [memory] low_watermark: must be below high_watermark (90% when not set)");
    expect_fail("[memory]\nhigh_watermark = 50%\n",
                "t.ini:2: [memory] high_watermark: must be above low_watermark (80% when not set)");
    expect_fail("[memory]\nhigh_watermark = 70%\nlow_watermark = 70%\n",
                "t.ini:3: [memory] low_watermark: must be below high_watermark (70%, line 2)");
    /* a bad value is reported once, not again as a bad combination */
    struct seen s;
    load_all("[memory]\nhigh_watermark = 150%\nlow_watermark = 85%\n", &s, NULL);
    assert_int_equal(s.n, 1);
    assert_text(&s, 0, "t.ini:2: [memory] high_watermark: value out of range");
    /* what the config accepts, the library opens */
    static const char *const ok[] = {
        "[memory]\nlow_watermark = 85%\n",
        "[memory]\nhigh_watermark = 95%\n",
        "[memory]\nhigh_watermark = 100%\nlow_watermark = 0.99\n",
        "[memory]\nhigh_watermark = 30%\nlow_watermark = 10%\nhistory = 7d\nloader_threads = 64\n",
        "[memory]\nbudget = 0.5\npolicy = lru\n",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct larder__config *c = NULL;
        assert_int_equal(load_all(ok[i], &s, &c), 0);
        assert_int_equal(open_with(c), 0);
        larder__config_free(c);
    }
}

static void test_budget_forms(void **state)
{
    static const struct { const char *v; double fraction; uint64_t bytes; } ok[] = {
        {"0.75", 0.75, 0}, {"75%", 0.75, 0}, {"1.0", 1.0, 0}, {"100%", 1.0, 0}, {".5", 0.5, 0},
        {"150MiB", 0, 150ull << 20}, {"2GiB", 0, 2ull << 30}, {"1048576", 0, 1048576},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char text[64];
        struct larder__config *c = NULL;
        snprintf(text, sizeof text, "[memory]\nbudget = %s\n", ok[i].v);
        const char *e = load(text, &c);
        if (*e)
            fail_msg("budget = %s: %s", ok[i].v, e);
        assert_true(c->budget_fraction > ok[i].fraction - 1e-9 &&
                    c->budget_fraction < ok[i].fraction + 1e-9);
        assert_int_equal(c->budget_bytes, ok[i].bytes);
        larder__config_free(c);
    }
    expect_fail("[memory]\nbudget = 0\n", "t.ini:2: [memory] budget: value out of range '0'");
    expect_fail("[memory]\nbudget = 0.0\n", "t.ini:2: [memory] budget: value out of range '0.0'");
    expect_fail("[memory]\nbudget = 0%\n", "t.ini:2: [memory] budget: value out of range");
    expect_fail("[memory]\nbudget = -0.5\n", "t.ini:2: [memory] budget: value out of range");
    expect_fail("[memory]\nbudget = -1\n", "t.ini:2: [memory] budget: value out of range");
    expect_fail("[memory]\nbudget = -1GiB\n", "t.ini:2: [memory] budget: bad value");
    expect_fail("[memory]\nbudget = 1.5\n", "t.ini:2: [memory] budget: value out of range '1.5'");
    expect_fail("[memory]\nbudget = 1\n", "t.ini:2: [memory] budget: bad value '1' (write 100%");
    expect_fail("[memory]\nbudget = 0B\n", "t.ini:2: [memory] budget: value out of range");
    expect_fail("[memory]\nbudget = lots\n", "t.ini:2: [memory] budget: bad value 'lots'");
    /* the last budget given wins its form: a size after a fraction clears the fraction */
    expect_fail("[memory]\nbudget = 50%\nbudget = 1GiB\n",
                "t.ini:3: [memory] budget: key given twice");
}

/* ---- unreadable and empty files ---------------------------------------------------- */

static const char *write_bytes(const char *name, const void *data, size_t len)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

static void test_unreadable_files(void **state)
{
    char err[512], sub[128];
    struct larder__config *c = (struct larder__config *)1;
    struct seen s;
    snprintf(sub, sizeof sub, "%s/conf.d", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_equal(larder__config_load(sub, &c, err, sizeof err), -EISDIR);
    assert_null(c);
    assert_non_null(strstr(err, sub));
    assert_non_null(strstr(err, "is a directory"));
    memset(&s, 0, sizeof s);
    assert_int_equal(larder__config_load_all(sub, &c, collect, &s), -EISDIR);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.line[0], 0);
    rmdir(sub);
    /* NUL bytes: the line is named, and reading stops there */
    static const char nul_first[] = "\0[server]\nlisten = 1\n";
    const char *p = write_bytes("nul.ini", nul_first, sizeof nul_first - 1);
    memset(&s, 0, sizeof s);
    assert_int_equal(larder__config_load_all(p, &c, collect, &s), -EINVAL);
    assert_int_equal(s.n, 1);
    assert_text(&s, 0, "nul.ini:1: NUL byte: not a text file");
    static const char nul_later[] = "[server]\nthreads = 2\nlis\0ten = 1\n[bogus]\n";
    p = write_bytes("nul.ini", nul_later, sizeof nul_later - 1);
    memset(&s, 0, sizeof s);
    assert_int_equal(larder__config_load_all(p, &c, collect, &s), -EINVAL);
    assert_int_equal(s.n, 1);
    assert_text(&s, 0, "nul.ini:3: NUL byte");
    /* not a file of lines: it stops at once rather than reading all of it */
    memset(&s, 0, sizeof s);
    assert_int_equal(larder__config_load_all("/dev/zero", &c, collect, &s), -EINVAL);
    assert_int_equal(s.n, 1);
    assert_text(&s, 0, "/dev/zero:1: NUL byte");
    size_t huge = 8u << 20;
    char *line = malloc(huge + 32);
    assert_non_null(line);
    strcpy(line, "[server]\nbogus = ");
    memset(line + strlen(line), 'x', huge);
    strcpy(line + huge, "\nthreads = 2\n");
    memset(&s, 0, sizeof s);
    assert_int_equal(load_all(line, &s, NULL), -EINVAL);
    free(line);
    assert_int_equal(s.n, 1);
    assert_text(&s, 0, "t.ini:2: line longer than 196 characters");
    /* an empty config is loaded, and says so */
    static const char *const empty[] = {"", "\n\n   \n\t\n", "; nothing\n# here\n",
                                        "[server]\n[memory]\n"};
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
        c = NULL;
        assert_int_equal(load_all(empty[i], &s, &c), 0);
        assert_int_equal(c->n_models, 0);
        assert_int_equal(c->n_settings, 0);
        assert_int_equal(c->listen_port, LARDER__DEFAULT_PORT);
        larder__config_free(c);
    }
    c = NULL;
    assert_int_equal(load_all("[server]\nthreads = 2\n", &s, &c), 0);
    assert_int_equal(c->n_models, 0);
    assert_int_equal(c->n_settings, 1);
    larder__config_free(c);
}

/* CPU seconds this thread has used: the scale tests below bound what loading costs in
 * CPU time (far above today's cost, far below a quadratic one), never wall-clock time. */
static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- many models -------------------------------------------------------------------- */

/* 40,000 models, each falling back on the next: duplicate and fallback checks must stay
 * near linear (sorting, not comparing every pair; each chain walked once). */
static void test_many_models(void **state)
{
    enum { N = 40000 };
    char path[128];
    snprintf(path, sizeof path, "%s/many.ini", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < N; i++) {
        fprintf(f, "[model.m%05d]\nbackend = synthetic\nsize = 1MiB\n", i);
        if (i + 1 < N)
            fprintf(f, "fallback = m%05d\n", i + 1);
    }
    fclose(f);
    struct larder__config *c = NULL;
    char err[256];
    double t0 = cpu_seconds();
    assert_int_equal(larder__config_load(path, &c, err, sizeof err), 0);
    double t1 = cpu_seconds();
    assert_int_equal(c->n_models, N);
    assert_string_equal(larder__config_model(c, "m12345")->fallback, "m12346");
    larder__config_free(c);
    double s = t1 - t0;
    /* CPU time, about 0.1 s here; checking pairs took 10 s for a chain of 5,000 */
    if (s > 5)
        fail_msg("loading %d models took %.1f s", N, s);
    /* a duplicate among them names both lines; a loop names each model on it */
    f = fopen(path, "a");
    fprintf(f, "[model.m00007]\nbackend = synthetic\n[model.m%05d]\nbackend = x\n"
               "fallback = m%05d\n", N, N - 3);
    fclose(f);
    struct seen seen = {0};
    assert_int_equal(larder__config_load_all(path, &c, collect, &seen), -EINVAL);
    assert_int_equal(seen.n, 1);
    assert_text(&seen, 0, "section [model.m00007] given twice (first at line 29)");
    unsigned dup_line = 4 * N;
    char want[64];
    snprintf(want, sizeof want, "many.ini:%u:", dup_line);
    assert_text(&seen, 0, want);
}

/* Every fallback naming no model: the errors stop at 100, and so do the searches for
 * a name to suggest (each reads every model's name). */
static void test_many_bad_fallbacks(void **state)
{
    enum { N = 20000 };
    char path[128];
    snprintf(path, sizeof path, "%s/bad.ini", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < N; i++)
        fprintf(f, "[model.m%05d]\nbackend = x\nfallback = n%05d\n", i, i);
    fclose(f);
    struct seen s = {0};
    struct larder__config *c = NULL;
    double t0 = cpu_seconds();
    assert_int_equal(larder__config_load_all(path, &c, collect, &s), -EINVAL);
    double t1 = cpu_seconds();
    assert_int_equal(s.n, 101);
    assert_text(&s, 0, "bad.ini:3: [model.m00000] fallback: names no [model.*] section "
                       "(did you mean 'm00000'?)");
    double secs = t1 - t0;
    if (secs > 5)
        fail_msg("%d bad fallbacks took %.1f s", N, secs);
}

/* One model with 60,000 backend options: keys given twice are still found, by sorting. */
static void test_many_options(void **state)
{
    enum { N = 60000 };
    char path[128];
    snprintf(path, sizeof path, "%s/opts.ini", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[model.m]\nbackend = synthetic\n", f);
    for (int i = 0; i < N; i++)
        fprintf(f, "k%05d = %d\n", i, i);
    fclose(f);
    struct larder__config *c = NULL;
    char err[256];
    double t0 = cpu_seconds();
    assert_int_equal(larder__config_load(path, &c, err, sizeof err), 0);
    double t1 = cpu_seconds();
    assert_int_equal(c->models[0].n_opts, N);
    assert_string_equal(c->models[0].opts[N - 1].key, "k59999");
    assert_int_equal(c->models[0].opt_lines[N - 1], N + 2);
    larder__config_free(c);
    double secs = t1 - t0;
    if (secs > 3)
        fail_msg("%d options took %.1f s", N, secs);
    f = fopen(path, "a");
    fputs("k00005 = again\nk31337 = again\nk00005 = thrice\n", f);
    fclose(f);
    struct seen s = {0};
    assert_int_equal(larder__config_load_all(path, &c, collect, &s), -EINVAL);
    assert_int_equal(s.n, 3);
    char want[128];
    snprintf(want, sizeof want, "opts.ini:%d: [model.m] k00005: key given twice (first at line 8)",
             N + 3);
    assert_text(&s, 0, want);
    snprintf(want, sizeof want, "opts.ini:%d: [model.m] k31337: key given twice", N + 4);
    assert_text(&s, 1, want);
    snprintf(want, sizeof want, "opts.ini:%d: [model.m] k00005: key given twice (first at line 8)",
             N + 5);
    assert_text(&s, 2, want);
}

/* 100,000 sections of one model: each later one is an error naming the first. */
static void test_many_duplicates(void **state)
{
    enum { N = 100000 };
    char path[128];
    snprintf(path, sizeof path, "%s/dups.ini", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < N; i++)
        fputs("[model.same]\nbackend = x\n", f);
    fclose(f);
    struct seen s = {0};
    struct larder__config *c = NULL;
    double t0 = cpu_seconds();
    assert_int_equal(larder__config_load_all(path, &c, collect, &s), -EINVAL);
    double t1 = cpu_seconds();
    assert_int_equal(s.n, 101);
    assert_text(&s, 0, "dups.ini:3: section [model.same] given twice (first at line 1)");
    assert_text(&s, 99, "dups.ini:201: section [model.same] given twice (first at line 1)");
    double secs = t1 - t0;
    if (secs > 3)
        fail_msg("%d duplicate sections took %.1f s", N, secs);
}

static void test_fallback_loops(void **state)
{
    struct seen s;
    load_all("[model.a]\nbackend = x\nfallback = b\n"
             "[model.b]\nbackend = x\nfallback = c\n"
             "[model.c]\nbackend = x\nfallback = b\n"
             "[model.d]\nbackend = x\nfallback = d\n",
             &s, NULL);
    assert_int_equal(s.n, 3); /* b and c are on the loop; a only leads to it; d is itself */
    assert_text(&s, 0, "t.ini:6: [model.b] fallback: the fallback chain loops back on itself");
    assert_text(&s, 1, "t.ini:9: [model.c] fallback: the fallback chain loops back on itself");
    assert_text(&s, 2, "t.ini:12: [model.d] fallback: a model cannot be its own fallback");
}

static void test_report_print(void **state)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    int r = larder__config_load_all(write_tmp("t.ini", "[server]\nbogus = 1\n[x]\n"), NULL,
                                    larder__config_report_print, f);
    fclose(f);
    assert_int_equal(r, -EINVAL);
    char want[512];
    snprintf(want, sizeof want, "%s/t.ini:2: [server] bogus: unknown key\n%s/t.ini:3: "
             "unknown section [x]\n", dir, dir);
    assert_string_equal(out, want);
    free(out);
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
        cmocka_unit_test(test_every_error_reported),
        cmocka_unit_test(test_first_error_is_first_line),
        cmocka_unit_test(test_syntax_errors_name_the_line),
        cmocka_unit_test(test_indented_crlf_bom),
        cmocka_unit_test(test_error_cap),
        cmocka_unit_test(test_suggest),
        cmocka_unit_test(test_unknown_keys_did_you_mean),
        cmocka_unit_test(test_model_keys_against_backend),
        cmocka_unit_test(test_watermarks_with_defaults),
        cmocka_unit_test(test_budget_forms),
        cmocka_unit_test(test_unreadable_files),
        cmocka_unit_test(test_many_models),
        cmocka_unit_test(test_many_bad_fallbacks),
        cmocka_unit_test(test_many_options),
        cmocka_unit_test(test_many_duplicates),
        cmocka_unit_test(test_fallback_loops),
        cmocka_unit_test(test_report_print),
    };
    return cmocka_run_group_tests_name("larderd config", tests, setup, teardown);
}
