/* Plugins against the host: larderd's plugin loader accepts a plugin built against this
 * header and refuses one of another abi_major or with an incomplete table; every backend
 * shipped with larder opens and exports nothing but its entry point.
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_plugin_accepted),
        cmocka_unit_test(test_bad_plugins_refused),
        cmocka_unit_test(test_shipped_backends_open),
        cmocka_unit_test(test_only_the_entry_is_exported),
    };

    return cmocka_run_group_tests_name("abi-plugins", tests, NULL, NULL);
}
