/* The `larder` command: serve, ps, load, unload and check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static void test_usage_errors(void **state)
{
    char out[4096];
    assert_int_equal(run_cli(&d, "2>&1", out, sizeof out), 2);
    assert_int_equal(run_cli(&d, "frobnicate 2>&1", out, sizeof out), 2);
    assert_int_equal(run_cli(&d, "ps --url nonsense:: 2>&1", out, sizeof out), 2);
    assert_int_equal(run_cli(&d, "ps --url http://127.0.0.1:1 2>&1", out, sizeof out), 1);
    assert_non_null(strstr(out, "refused"));
    assert_int_equal(run_cli(&d, "--help", out, sizeof out), 0);
    assert_non_null(strstr(out, "larder check CONFIG"));
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
    assert_int_equal(run_cli(&d, "check /nonexistent.ini", out, sizeof out), 1);
    /* the quick start's config is valid */
    assert_int_equal(run_cli(&d, "check " EXAMPLES_DIR "/larder.ini", out, sizeof out), 0);
    assert_non_null(strstr(out, "4 models, 0 errors"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ps_load_unload),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_check),
    };
    return cmocka_run_group_tests_name("larder command", tests, group_setup, group_teardown);
}
