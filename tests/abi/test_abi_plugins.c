/* Plugins against the host: larderd's plugin loader accepts a plugin built against this
 * header and refuses one of another abi_major or with an incomplete table; every backend
 * shipped with larder opens and exports nothing but its entry point. Inference through the
 * loader: a plugin of ABI 1.0 runs with a host of 1.1 (which fills fields it never reads),
 * and a plugin of 1.1 is told to stop by the host's cancel check when the deadline passes
 * or the client's socket hangs up.
 *
 * Environment (set by tests/abi/meson.build):
 *   LARDER_ABI_PLUGIN_DIR   where the larder-abi-*.so test plugins are built
 *   LARDER_BACKEND_DIR      where the real backends are built
 */
#include "plugin.h"

#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static const char *const shipped[] = {"tesseract", "pocketsphinx", "xgboost", "synthetic",
                                      "synthetic-pooled"};

static const char *env_dir(const char *name)
{
    const char *dir = getenv(name);

    if (!dir)
        fail_msg("%s is not set: run the test through meson test", name);
    return dir;
}

/* Opens backend `name` of `dir` with larderd's loader; returns its code, err filled. */
static int host_open(const char *dir, const char *name, const struct larder_backend_ops **ops,
                     char *err, size_t errlen)
{
    struct larder__backends *b = NULL;
    struct larder__backend *be = NULL;
    int rc;

    assert_int_equal(larder__backends_new(dir, &b), 0);
    rc = larder__backend_get(b, name, &be, err, errlen);
    if (rc == 0)
        rc = larder__backend_open(be, err, errlen);
    *ops = rc == 0 ? larder__backend_ops(be) : NULL;
    larder__backends_free(b);
    return rc;
}

static void test_good_plugin_accepted(void **state)
{
    const struct larder_backend_ops *ops;
    char err[512] = "";

    assert_int_equal(host_open(env_dir("LARDER_ABI_PLUGIN_DIR"), "abi-good", &ops, err,
                               sizeof(err)), 0);
    assert_non_null(ops);
    assert_int_equal(ops->abi_major, LARDER_BACKEND_ABI_MAJOR);
    assert_string_equal(ops->name, "abi-test");
}

static void test_bad_plugins_refused(void **state)
{
    static const struct {
        const char *name;
        int code;
        const char *says;
    } cases[] = {
        {"abi-bad-major", -EPROTO, "ABI"},
        {"abi-null-ops", -ENOEXEC, "larder_backend_entry"},
        {"abi-no-entry", -ENOEXEC, "larder_backend_entry"},
        {"abi-incomplete", -ENOEXEC, "required"},
        {"abi-half-pool", -ENOEXEC, "required"},
        {"abi-not-built", -ENOENT, "abi-not-built"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct larder_backend_ops *ops = (const void *)1;
        char err[512] = "";
        int rc = host_open(env_dir("LARDER_ABI_PLUGIN_DIR"), cases[i].name, &ops, err,
                           sizeof(err));

        if (rc != cases[i].code)
            fail_msg("%s: got %d (%s), expected %d", cases[i].name, rc, err, cases[i].code);
        assert_null(ops);
        if (!strstr(err, cases[i].says))
            fail_msg("%s: message '%s' does not mention '%s'", cases[i].name, err,
                     cases[i].says);
    }
}

static void test_shipped_backends_open(void **state)
{
    for (size_t i = 0; i < sizeof(shipped) / sizeof(shipped[0]); i++) {
        const struct larder_backend_ops *ops;
        char err[512] = "";

        if (host_open(env_dir("LARDER_BACKEND_DIR"), shipped[i], &ops, err, sizeof(err)) != 0)
            fail_msg("%s: %s", shipped[i], err);
        assert_string_equal(ops->name, shipped[i]);
        assert_int_equal(ops->abi_minor, LARDER_BACKEND_ABI_MINOR);
    }
}

/* ---- exported symbols ------------------------------------------------------------------ */

static unsigned char *read_file(const char *path, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long len;

    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    rewind(f);
    buf = malloc((size_t)len);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *ret_len = (size_t)len;
    return buf;
}

/* Symbols every linker may define in a shared object, not part of its interface. */
static bool linker_symbol(const char *name)
{
    return strcmp(name, "_edata") == 0 || strcmp(name, "_end") == 0 ||
           strcmp(name, "__bss_start") == 0 || strcmp(name, "_init") == 0 ||
           strcmp(name, "_fini") == 0;
}

/* Writes the names of the global symbols the ELF64 object defines into out, one per
 * line, and returns how many there are. */
static int exported_symbols(const unsigned char *elf, size_t len, char *out, size_t outlen)
{
    const Elf64_Ehdr *eh = (const void *)elf;
    const Elf64_Shdr *sh;
    int count = 0;

    assert_true(len > sizeof(*eh) && memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0);
    assert_int_equal(eh->e_ident[EI_CLASS], ELFCLASS64);
    assert_true(eh->e_shoff + (size_t)eh->e_shnum * sizeof(*sh) <= len);
    sh = (const void *)(elf + eh->e_shoff);
    out[0] = '\0';
    for (unsigned s = 0; s < eh->e_shnum; s++) {
        const Elf64_Sym *sym = (const void *)(elf + sh[s].sh_offset);
        const char *names = (const char *)elf + sh[sh[s].sh_link].sh_offset;

        if (sh[s].sh_type != SHT_DYNSYM)
            continue;
        for (size_t i = 0; i < sh[s].sh_size / sizeof(*sym); i++) {
            unsigned bind = ELF64_ST_BIND(sym[i].st_info);
            const char *name = names + sym[i].st_name;

            if (sym[i].st_shndx == SHN_UNDEF || (bind != STB_GLOBAL && bind != STB_WEAK) ||
                linker_symbol(name))
                continue;
            count++;
            strncat(out, name, outlen - strlen(out) - 2);
            strcat(out, "\n");
        }
    }
    return count;
}

static void test_only_the_entry_is_exported(void **state)
{
    for (size_t i = 0; i < sizeof(shipped) / sizeof(shipped[0]); i++) {
        char path[4096], names[4096];
        size_t len;
        unsigned char *elf;
        int n;

        snprintf(path, sizeof(path), "%s/larder-%s.so", env_dir("LARDER_BACKEND_DIR"),
                 shipped[i]);
        elf = read_file(path, &len);
        n = exported_symbols(elf, len, names, sizeof(names));
        if (n != 1 || strcmp(names, LARDER_BACKEND_ENTRY "\n") != 0)
            fail_msg("%s exports %d symbols:\n%s", path, n, names);
        free(elf);
    }
}

/* ---- inference through the loader ------------------------------------------------------ */

/* One abi plugin's model defined in a manager, and a lease on it. */
struct rig {
    struct larder__backends *b;
    struct larder__backend *be;
    larder *m;
    larder_lease *lease;
};

static void rig_open(struct rig *r, const char *plugin)
{
    struct larder__backend *be = NULL;
    struct larder__config c = {.file = "abi-test.conf"};
    struct larder__model_conf mc = {.name = "m", .backend = (char *)plugin, .instances = 1};
    struct larder_component_opts o;
    char err[512] = "";

    memset(r, 0, sizeof(*r));
    assert_int_equal(larder__backends_new(env_dir("LARDER_ABI_PLUGIN_DIR"), &r->b), 0);
    if (larder__backend_get(r->b, plugin, &be, err, sizeof(err)) != 0 ||
        larder__backend_open(be, err, sizeof(err)) != 0)
        fail_msg("%s: %s", plugin, err);
    r->be = be;
    assert_int_equal(larder_open(NULL, &r->m), 0);
    larder_component_opts_init(&o);
    o.cls = larder__backend_class(be);
    o.ud = larder__model_ud_new(be, &c, &mc);
    o.ud_free = larder__model_ud_free;
    o.memory_bytes = 4096;
    assert_non_null(o.ud);
    assert_int_equal(larder_define(r->m, "m", &o), 0);
    assert_int_equal(larder_acquire(r->m, "m", 10000, &r->lease), 0);
}

static void rig_close(struct rig *r)
{
    larder_release(r->lease);
    larder_close(r->m);
    larder__backends_free(r->b);
}

static int rig_infer(struct rig *r, struct larder__infer_ctl *ctl, const char *param)
{
    const struct larder_option params[] = {{param, ""}};
    const struct larder_infer_request req = {.body = "x", .body_len = 1,
                                             .params = params, .n_params = param ? 1 : 0};
    struct larder_infer_result res;
    char err[512] = "";
    int rc = larder__lease_infer(r->lease, &req, ctl, &res, err, sizeof(err));

    if (rc == 0) {
        assert_string_equal(res.json, "{}");
        larder__lease_result_free(r->lease, &res);
    } else {
        assert_true(err[0] != '\0');
    }
    return rc;
}

/* A 1.0 plugin never sees a cancel check: its request runs to its end and is answered,
 * a deadline that passed meanwhile or not. */
static void test_minor0_plugin_infers(void **state)
{
    const struct timespec ms5 = {.tv_nsec = 5000000};
    struct larder__infer_ctl ctl = {.timeout_ms = 1, .client_fd = -1};
    struct rig r;

    rig_open(&r, "abi-minor0");
    assert_int_equal(larder__backend_ops(r.be)->abi_minor, 0);
    assert_int_equal(rig_infer(&r, NULL, NULL), 0);
    nanosleep(&ms5, NULL);
    assert_int_equal(rig_infer(&r, &ctl, NULL), 0);
    assert_int_equal(ctl.why, LARDER__CANCEL_NONE);
    rig_close(&r);
}

static void test_deadline_cancels(void **state)
{
    struct larder__infer_ctl ctl = {.timeout_ms = 50, .client_fd = -1};
    uint64_t deadline0, gone0, deadline1, gone1;
    struct rig r;

    rig_open(&r, "abi-canceller");
    larder__infer_cancel_counts(&deadline0, &gone0);
    assert_int_equal(rig_infer(&r, &ctl, NULL), LARDER_BACKEND_ECANCELED);
    assert_int_equal(ctl.why, LARDER__CANCEL_DEADLINE);
    larder__infer_cancel_counts(&deadline1, &gone1);
    assert_int_equal(deadline1, deadline0 + 1);
    assert_int_equal(gone1, gone0);
    /* a plugin's ECANCELED that the host never asked for is a backend failure */
    assert_int_equal(rig_infer(&r, &ctl, "lie"), LARDER_BACKEND_EINTERNAL);
    rig_close(&r);
}

static void test_client_hangup_cancels(void **state)
{
    int sv[2];
    struct larder__infer_ctl ctl = {.client_fd = -1};
    struct rig r;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ctl.client_fd = sv[0];
    rig_open(&r, "abi-canceller");
    /* a client still connected, with unread bytes waiting, is not gone */
    assert_int_equal(write(sv[1], "GET", 3), 3);
    ctl.timeout_ms = 200;
    assert_int_equal(rig_infer(&r, &ctl, NULL), LARDER_BACKEND_ECANCELED);
    assert_int_equal(ctl.why, LARDER__CANCEL_DEADLINE);
    ctl.timeout_ms = 0;
    close(sv[1]);
    assert_int_equal(rig_infer(&r, &ctl, NULL), LARDER_BACKEND_ECANCELED);
    assert_int_equal(ctl.why, LARDER__CANCEL_GONE);
    rig_close(&r);
    close(sv[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_plugin_accepted),
        cmocka_unit_test(test_bad_plugins_refused),
        cmocka_unit_test(test_shipped_backends_open),
        cmocka_unit_test(test_only_the_entry_is_exported),
        cmocka_unit_test(test_minor0_plugin_infers),
        cmocka_unit_test(test_deadline_cancels),
        cmocka_unit_test(test_client_hangup_cancels),
    };

    return cmocka_run_group_tests_name("abi-plugins", tests, NULL, NULL);
}
