/* The `larder` command: serve, ps, load, unload and check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static struct daemon d;

static int group_setup(void **state)
{
    harness_use_cli = true; /* `larder serve` runs the daemon */
    return daemon_start(&d, "[memory]\nbudget = 64MiB\n"
                            "[model.alpha]\nbackend = synthetic\nsize = 2MiB\n"
                            "[model.beta]\nbackend = synthetic-pooled\nsize = 1MiB\n"
                            "instances = 3\nttl = never\n");
}

static int group_teardown(void **state)
{
    return daemon_stop(&d) == 0 ? 0 : -1;
}

static void test_ps_load_unload(void **state)
{
    char out[4096];
    assert_int_equal(run_cli(&d, "ps", out, sizeof out), 0);
    assert_non_null(strstr(out, "NAME"));
    assert_non_null(strstr(out, "EXPIRES"));
    assert_null(strstr(out, "alpha")); /* nothing loaded yet */
    assert_int_equal(run_cli(&d, "ps --all", out, sizeof out), 0);
    assert_non_null(strstr(out, "alpha"));
    assert_non_null(strstr(out, "unloaded"));

    /* admin commands need the token */
    assert_int_equal(run_cli(&d, "load alpha 2>&1", out, sizeof out), 1);
    assert_non_null(strstr(out, "token"));
    assert_int_equal(run_cli(&d, "load alpha --token wrong 2>&1", out, sizeof out), 1);
    assert_non_null(strstr(out, "401"));
    assert_int_equal(run_cli(&d, "load alpha --token " ADMIN_TOKEN, out, sizeof out), 0);
    assert_non_null(strstr(out, "alpha: ready"));
    assert_int_equal(run_cli(&d, "load beta --token " ADMIN_TOKEN, out, sizeof out), 0);

    assert_int_equal(run_cli(&d, "ps", out, sizeof out), 0);
    assert_non_null(strstr(out, "alpha"));
    assert_non_null(strstr(out, "ready"));
    assert_non_null(strstr(out, "2.0 MiB"));
    assert_non_null(strstr(out, "minutes from now"));
    assert_non_null(strstr(out, "(max 3)"));
    assert_non_null(strstr(out, "never"));

    assert_int_equal(run_cli(&d, "unload alpha", out, sizeof out), 1);
    setenv("LARDER_TOKEN", ADMIN_TOKEN, 1);
    int rc = run_cli(&d, "unload alpha", out, sizeof out);
    unsetenv("LARDER_TOKEN");
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "alpha: unloaded"));
    assert_int_equal(run_cli(&d, "ps", out, sizeof out), 0);
    assert_null(strstr(out, "alpha"));
    assert_int_equal(run_cli(&d, "load nosuch --token " ADMIN_TOKEN " 2>&1", out, sizeof out), 1);
    assert_non_null(strstr(out, "404"));
}

/* How many times needle occurs in s. */
static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void test_usage_errors(void **state)
{
    /* each wrong command line: exit 2 and exactly this one line (all but the last two
     * end in "; try 'larder --help'") */
    static const struct {
        const char *args, *message;
        int status;
    } cases[] = {
        {"frobnicate", "unknown command 'frobnicate'", 2},
        {"--frobnicate", "unknown option '--frobnicate'", 2},
        {"ps -x", "unknown option '-x'", 2},
        {"ps --url", "option '--url' needs a value", 2},
        {"ps -au", "option '-u' needs a value", 2},
        {"ps extra", "ps: unexpected argument 'extra'", 2},
        {"load", "load needs one model NAME", 2},
        {"unload a b", "unload needs one model NAME", 2},
        {"load alpha --all", "load does not take --all", 2},
        {"check", "check needs one CONFIG file", 2},
        {"check a.ini --url http://x:1", "check does not take --url", 2},
        {"--config a.ini serve", "'serve' comes first, its options after it", 2},
        {"ps --url nonsense::", "bad URL 'nonsense::' (--url; expected http://HOST:PORT)", 2},
        {"ps --url http://127.0.0.1:1",
         "cannot reach larderd at http://127.0.0.1:1: Connection refused", 1},
    };
    char out[4096], args[256], want[512];
    assert_int_equal(run_cli(&d, "2>&1", out, sizeof out), 2);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(args, sizeof args, "%s 2>&1", cases[i].args);
        snprintf(want, sizeof want, "larder: %s%s\n", cases[i].message,
                 cases[i].status == 2 && i + 2 < sizeof cases / sizeof *cases
                     ? "; try 'larder --help'" : "");
        assert_int_equal(run_cli(&d, args, out, sizeof out), cases[i].status);
        assert_string_equal(out, want);
    }
    /* every error once */
    assert_int_equal(run_cli(&d, "check nothere.ini 2>&1", out, sizeof out), 1);
    assert_int_equal(count(out, "nothere.ini"), 1);
    assert_non_null(strstr(out, "No such file or directory"));
}

static void test_help_and_version(void **state)
{
    char out[4096];
    static const char *const help[] = {"--help", "-h", "help"};
    for (size_t i = 0; i < sizeof help / sizeof *help; i++) {
        char args[32];
        snprintf(args, sizeof args, "%s 2>/dev/null", help[i]);
        assert_int_equal(run_cli(&d, args, out, sizeof out), 0);
        for (const char *const *cmd = (const char *const[]){"larder serve", "larder ps",
                 "larder load NAME", "larder unload NAME", "larder check CONFIG",
                 "larder --version", NULL}; *cmd; cmd++)
            assert_non_null(strstr(out, *cmd));
        assert_non_null(
            strstr(out, "--url URL, else [server] listen of --config FILE, else $LARDER_URL,\n"
                        "else http://127.0.0.1:8377"));
    }
    assert_int_equal(run_cli(&d, "ps --help", out, sizeof out), 0);
    assert_non_null(strstr(out, "larder ps"));
    assert_int_equal(run_cli(&d, "--version", out, sizeof out), 0);
    assert_string_equal(out, "larder " LARDER_VERSION "\n");
    assert_int_equal(run_cli(&d, "-V", out, sizeof out), 0);
    assert_string_equal(out, "larder " LARDER_VERSION "\n");
}

/* Runs the command with LARDER_URL set to url (unset when NULL); stdout and stderr go to
 * out. Returns the exit status. */
static int run_env(const char *url, const char *args, char *out, size_t len)
{
    char cmd[1024];
    if (url)
        snprintf(cmd, sizeof cmd, "LARDER_URL='%s' %s %s 2>&1", url, LARDER_CLI_PATH, args);
    else
        snprintf(cmd, sizeof cmd, "env -u LARDER_URL %s %s 2>&1", LARDER_CLI_PATH, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, len - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static const char *write_conf(const char *name, const char *text);

/* The daemon is found from --url, then --config's [server] listen, then $LARDER_URL, then
 * the default; every connection error names the URL it tried. */
static void test_url_sources(void **state)
{
    char out[4096], args[512], text[256];
    const char *dead = "http://127.0.0.1:1";

    /* $LARDER_URL, named in the error */
    assert_int_equal(run_env(dead, "ps", out, sizeof out), 1);
    assert_string_equal(out,
                        "larder: cannot reach larderd at http://127.0.0.1:1: Connection refused\n");
    assert_int_equal(run_env(dead, "load alpha --token x", out, sizeof out), 1);
    assert_string_equal(out,
                        "larder: cannot reach larderd at http://127.0.0.1:1: Connection refused\n");
    assert_int_equal(run_env("nonsense::", "ps", out, sizeof out), 2);
    assert_string_equal(out,
                        "larder: bad URL 'nonsense::' ($LARDER_URL; expected http://HOST:PORT)\n");

    /* the default (a daemon another user runs there may answer) */
    if (run_env(NULL, "ps", out, sizeof out) != 0)
        assert_non_null(strstr(out, "larder: cannot reach larderd at http://127.0.0.1:8377: "));
    if (run_env("", "ps", out, sizeof out) != 0)
        assert_non_null(strstr(out, "larder: cannot reach larderd at http://127.0.0.1:8377: "));

    /* --config beats $LARDER_URL; a wildcard listen address is reached on loopback */
    static const char *const hosts[] = {"127.0.0.1", "0.0.0.0", "localhost", ""};
    for (size_t i = 0; i < sizeof hosts / sizeof *hosts; i++) {
        snprintf(text, sizeof text, "[server]\nlisten = %s:%u\n", hosts[i], d.port);
        const char *conf = write_conf("url.ini", text);
        snprintf(args, sizeof args, "ps --all --config %s", conf);
        assert_int_equal(run_env(dead, args, out, sizeof out), 0);
        assert_non_null(strstr(out, "alpha"));
        snprintf(args, sizeof args, "--config=%s ps", conf);
        assert_int_equal(run_env(dead, args, out, sizeof out), 0);
    }
    const char *conf = write_conf("v6.ini", "[server]\nlisten = [::]:1\n");
    snprintf(args, sizeof args, "unload alpha --token x --config %s", conf);
    assert_int_equal(run_env(NULL, args, out, sizeof out), 1);
    assert_non_null(strstr(out, "larder: cannot reach larderd at http://[::1]:1: "));
    conf = write_conf("v6b.ini", "[server]\nlisten = [::1]:1\n");
    snprintf(args, sizeof args, "ps --config %s", conf);
    assert_int_equal(run_env(NULL, args, out, sizeof out), 1);
    assert_non_null(strstr(out, "larder: cannot reach larderd at http://[::1]:1: "));
    /* no listen key: the default address */
    conf = write_conf("nolisten.ini", "[memory]\nbudget = 1MiB\n");
    snprintf(args, sizeof args, "ps --config %s", conf);
    if (run_env(dead, args, out, sizeof out) != 0)
        assert_non_null(strstr(out, "larder: cannot reach larderd at http://127.0.0.1:8377: "));

    /* --url beats --config */
    snprintf(text, sizeof text, "[server]\nlisten = 127.0.0.1:%u\n", d.port);
    conf = write_conf("url.ini", text);
    snprintf(args, sizeof args, "ps --config %s --url %s", conf, dead);
    assert_int_equal(run_env(NULL, args, out, sizeof out), 1);
    assert_non_null(strstr(out, "at http://127.0.0.1:1: Connection refused"));

    /* a config that cannot be read or parsed: one message */
    assert_int_equal(run_env(NULL, "ps --config nothere.ini", out, sizeof out), 1);
    assert_int_equal(count(out, "nothere.ini"), 1);
    assert_non_null(strstr(out, "larder: "));
    conf = write_conf("broken.ini", "[server]\nlisten = 127.0.0.1:99999\n");
    snprintf(args, sizeof args, "ps --config %s", conf);
    assert_int_equal(run_env(NULL, args, out, sizeof out), 1);
    assert_int_equal(count(out, "broken.ini:2"), 1);
}

static const char *write_conf(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", d.dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_check(void **state)
{
    char out[8192], args[512];
    snprintf(args, sizeof args, "check %s", d.config);
    assert_int_equal(run_cli(&d, args, out, sizeof out), 0);
    assert_non_null(strstr(out, "2 models, 0 errors"));
    assert_non_null(strstr(out, "budget: 64.0 MiB"));

    const char *bad = write_conf("bad.ini", "[memory]\nbudget = 8MiB\n"
                                            "[model.big]\nbackend = synthetic\nmemory = 16MiB\n"
                                            "[model.typo]\nbackend = synthetic\nsizee = 1\n"
                                            "[model.ghost]\nbackend = nosuch\n"
                                            "[model.gone]\nbackend = synthetic\npath = nofile\n");
    snprintf(args, sizeof args, "check %s", bad);
    assert_int_equal(run_cli(&d, args, out, sizeof out), 1);
    assert_non_null(
        strstr(out, "bad.ini:3: [model.big] needs 16.0 MiB, more than the whole budget"));
    assert_non_null(strstr(out, "bad.ini:8: [model.typo] sizee: unknown key for backend"));
    assert_non_null(strstr(out, "bad.ini:10: [model.ghost] backend: unknown backend 'nosuch'"));
    assert_non_null(strstr(out, "bad.ini:13: [model.gone] path:"));
    assert_non_null(strstr(out, "4 errors"));

    const char *pinned = write_conf("pinned.ini",
                                    "[memory]\nbudget = 10MiB\n"
                                    "[model.a]\nbackend = synthetic\nmemory = 6MiB\npin = yes\n"
                                    "[model.b]\nbackend = synthetic\nmemory = 6MiB\n"
                                    "preload = yes\n");
    snprintf(args, sizeof args, "check %s", pinned);
    assert_int_equal(run_cli(&d, args, out, sizeof out), 1);
    assert_non_null(strstr(out, "pinned and preloaded models need 12.0 MiB"));

    const char *gpu = write_conf("gpu.ini", "[memory]\nbudget = 1GiB\ngpu_budget = 0=1GiB\n"
                                            "[model.g]\nbackend = synthetic\ngpu = 0\n"
                                            "gpu_memory = 2GiB\n");
    snprintf(args, sizeof args, "check %s", gpu);
    assert_int_equal(run_cli(&d, args, out, sizeof out), 1);
    assert_non_null(strstr(out, "gpu.ini:4: [model.g] needs 2.0 GiB of GPU 0, more than its"));
    assert_non_null(strstr(out, "1 model, 1 error"));

    const char *syntax = write_conf("syntax.ini", "[server]\nlisten = 127.0.0.1:99999\n");
    snprintf(args, sizeof args, "check %s", syntax);
    assert_int_equal(run_cli(&d, args, out, sizeof out), 1);
    assert_non_null(strstr(out, "syntax.ini:2: [server] listen"));
    assert_int_equal(run_cli(&d, "check /nonexistent.ini 2>&1", out, sizeof out), 1);
    assert_int_equal(count(out, "/nonexistent.ini"), 1);
    snprintf(args, sizeof args, "check --config %s", d.config);
    assert_int_equal(run_cli(&d, args, out, sizeof out), 0);
    assert_non_null(strstr(out, "2 models, 0 errors"));
    /* the quick start's config is valid */
    assert_int_equal(run_cli(&d, "check " EXAMPLES_DIR "/larder.ini", out, sizeof out), 0);
    assert_non_null(strstr(out, "10 models, 0 errors"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ps_load_unload),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_url_sources),
        cmocka_unit_test(test_check),
    };
    return cmocka_run_group_tests_name("larder command", tests, group_setup, group_teardown);
}
