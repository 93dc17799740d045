/* Memory probes on fake trees (tests/memory/data) and on this machine's real files. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "probe.h"

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

static const char *data(const char *tree)
{
    static char path[PATH_MAX];

    snprintf(path, sizeof(path), "%s/%s", LARDER_TEST_DATA, tree);
    return path;
}

/* ---- the process, fake ------------------------------------------------------------ */

static void proc_fake(void **state)
{
    struct larder__proc_mem m;

    assert_int_equal(larder__probe_proc(data("v2"), &m), 0);
    assert_int_equal(m.rss, 204800 * KIB);
    assert_int_equal(m.hwm, 307200 * KIB);
    assert_true(m.has_rollup);
    assert_int_equal(m.rollup_rss, 204800 * KIB);
    assert_int_equal(m.pss, 190000 * KIB);
    assert_int_equal(m.anon, 180000 * KIB);

    memset(&m, 0xff, sizeof(m));
    assert_int_equal(larder__probe_proc(data("old-kernel"), &m), 0);
    assert_int_equal(m.rss, 4096 * KIB);
    assert_int_equal(m.hwm, 8192 * KIB);
    assert_false(m.has_rollup);
}

struct bad {
    const char *tree;
    int err;
};

static void proc_bad(void **state)
{
    static const struct bad cases[] = {
        {"malformed", -EBADMSG}, {"truncated", -EBADMSG}, {"empty", -EBADMSG},
        {"overflow", -ERANGE},   {"rollup-bad", -EBADMSG}, {"nul", -EBADMSG},
        {"v2-high", -ENOENT},    {"does-not-exist", -ENOENT},
    };
    struct larder__proc_mem m, orig;

    memset(&orig, 0x5a, sizeof(orig));
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        m = orig;
        int r = larder__probe_proc(data(cases[i].tree), &m);
        if (r != cases[i].err)
            print_error("%s: %d, want %d\n", cases[i].tree, r, cases[i].err);
        assert_int_equal(r, cases[i].err);
        assert_memory_equal(&m, &orig, sizeof(m)); /* untouched */
    }
    assert_int_equal(larder__probe_proc(data("v2"), NULL), -EINVAL);
}

static void root_too_long(void **state)
{
    char root[PATH_MAX + 16];
    struct larder__proc_mem m;
    struct larder__cgroup cg;
    char dir[64];
    int version;

    memset(root, 'a', sizeof(root) - 1);
    root[0] = '/';
    root[sizeof(root) - 1] = '\0';
    assert_int_equal(larder__probe_proc(root, &m), -ENAMETOOLONG);
    assert_int_equal(larder__probe_cgroup(root, &cg), -ENAMETOOLONG);
    /* a directory that does not fit the caller's buffer */
    assert_int_equal(larder__cgroup_find(data("v2"), dir, sizeof(dir), &version), -ENAMETOOLONG);
}

/* ---- the machine and the cgroup, fake --------------------------------------------- */

static void meminfo_fake(void **state)
{
    struct larder__meminfo mi;

    assert_int_equal(larder__probe_meminfo(data("v2"), &mi), 0);
    assert_int_equal(mi.total, 16384000 * KIB);
    assert_true(mi.has_available);
    assert_int_equal(mi.available, 12000000 * KIB);

    assert_int_equal(larder__probe_meminfo(data("old-kernel"), &mi), 0);
    assert_int_equal(mi.total, 2048000 * KIB);
    assert_false(mi.has_available);

    assert_int_equal(larder__probe_meminfo(data("malformed"), &mi), -EBADMSG);
    assert_int_equal(larder__probe_meminfo(data("truncated"), &mi), -EBADMSG);
    assert_int_equal(larder__probe_meminfo(data("empty"), &mi), -EBADMSG);
    assert_int_equal(larder__probe_meminfo(data("overflow"), &mi), -ERANGE);
    assert_int_equal(larder__probe_meminfo(data("nul"), &mi), -ENOENT);
}

static void cgroup_v2_fake(void **state)
{
    struct larder__cgroup cg;
    char dir[PATH_MAX], want[PATH_MAX + 128];
    int version = 0;

    assert_int_equal(larder__cgroup_find(data("v2"), dir, sizeof(dir), &version), 0);
    snprintf(want, sizeof(want), "%s/sys/fs/cgroup/system.slice/larderd.service", data("v2"));
    assert_string_equal(dir, want);
    assert_int_equal(version, 2);

    assert_int_equal(larder__probe_cgroup(data("v2"), &cg), 0);
    assert_int_equal(cg.version, 2);
    assert_int_equal(cg.current, 512 * MIB);
    assert_int_equal(cg.max, 2 * GIB);
    assert_int_equal(cg.high, 3 * GIB);
    assert_true(cg.has_events);
    assert_int_equal(cg.events.high, 7);
    assert_int_equal(cg.events.max, 3);
    assert_int_equal(cg.events.oom, 1);
    assert_int_equal(cg.events.oom_kill, 1);

    assert_int_equal(larder__probe_cgroup(data("v2-unlimited"), &cg), 0);
    assert_int_equal(cg.current, 10 * MIB);
    assert_int_equal(cg.max, LARDER__UNLIMITED);
    assert_int_equal(cg.high, LARDER__UNLIMITED);
}

static void cgroup_namespace_fake(void **state)
{
    struct larder__cgroup cg;
    char dir[PATH_MAX], want[PATH_MAX + 128];
    int version;

    /* the path names the host's cgroup; the mount is the container's own */
    assert_int_equal(larder__cgroup_find(data("v2-namespace"), dir, sizeof(dir), &version), 0);
    snprintf(want, sizeof(want), "%s/sys/fs/cgroup", data("v2-namespace"));
    assert_string_equal(dir, want);
    assert_int_equal(larder__probe_cgroup(data("v2-namespace"), &cg), 0);
    assert_int_equal(cg.max, GIB);
    assert_int_equal(cg.events.max, 5);
}

static void cgroup_v1_fake(void **state)
{
    struct larder__cgroup cg;
    char dir[PATH_MAX], want[PATH_MAX + 128];
    int version = 0;

    /* hybrid: v2 is mounted but has no memory controller, v1 has it */
    assert_int_equal(larder__cgroup_find(data("hybrid-v1"), dir, sizeof(dir), &version), 0);
    snprintf(want, sizeof(want), "%s/sys/fs/cgroup/memory/docker/abc", data("hybrid-v1"));
    assert_string_equal(dir, want);
    assert_int_equal(version, 1);
    assert_int_equal(larder__probe_cgroup(data("hybrid-v1"), &cg), 0);
    assert_int_equal(cg.version, 1);
    assert_int_equal(cg.current, 187039744);
    assert_int_equal(cg.max, LARDER__UNLIMITED);
    assert_int_equal(cg.high, LARDER__UNLIMITED);
    assert_true(cg.has_events);
    assert_int_equal(cg.events.oom_kill, 0);

    /* a limit, and a memory.oom_control without oom_kill, on a shared hierarchy */
    assert_int_equal(larder__probe_cgroup(data("v1-limited"), &cg), 0);
    assert_int_equal(cg.version, 1);
    assert_int_equal(cg.current, 100 * MIB);
    assert_int_equal(cg.max, 512 * MIB);
    assert_false(cg.has_events);
}

static void cgroup_bad(void **state)
{
    static const struct bad trees[] = {
        {"old-kernel", -ENOENT}, {"malformed", -EBADMSG}, {"truncated", -EBADMSG},
        {"empty", -EBADMSG},     {"does-not-exist", -ENOENT},
    };
    static const struct bad dirs[] = {
        {"cg/bad-max", -EBADMSG},        {"cg/neg-current", -EBADMSG},
        {"cg/empty-current", -EBADMSG},  {"cg/overflow-current", -ERANGE},
        {"cg/two-values", -EBADMSG},     {"cg/bad-events", -EBADMSG},
        {"cg/trunc-events", -EBADMSG},   {"cg/short-events", -EBADMSG},
        {"cg/missing-events", -ENOENT},  {"cg/nothing-here", -ENOENT},
    };
    struct larder__cgroup cg, orig;

    memset(&orig, 0x5a, sizeof(orig));
    for (size_t i = 0; i < sizeof(trees) / sizeof(trees[0]); i++) {
        cg = orig;
        int r = larder__probe_cgroup(data(trees[i].tree), &cg);
        if (r != trees[i].err)
            print_error("%s: %d, want %d\n", trees[i].tree, r, trees[i].err);
        assert_int_equal(r, trees[i].err);
        assert_memory_equal(&cg, &orig, sizeof(cg));
    }
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        cg = orig;
        int r = larder__cgroup_read(data(dirs[i].tree), 2, &cg);
        if (r != dirs[i].err)
            print_error("%s: %d, want %d\n", dirs[i].tree, r, dirs[i].err);
        assert_int_equal(r, dirs[i].err);
        assert_memory_equal(&cg, &orig, sizeof(cg));
    }
    assert_int_equal(larder__cgroup_read(data("cg/v1-bad-limit"), 1, &cg), -EBADMSG);
    assert_int_equal(larder__cgroup_read(data("cg/good"), 3, &cg), -EINVAL);
    assert_int_equal(larder__cgroup_read(data("cg/good"), 2, &cg), 0);
    assert_int_equal(cg.current, MIB);
}

static void limits_fake(void **state)
{
    enum larder__limit_source src;
    uint64_t limit, budget;

    assert_int_equal(larder__memory_limit(data("v2"), &limit, &src), 0);
    assert_int_equal(limit, 2 * GIB); /* memory.max under memory.high and RAM */
    assert_int_equal(src, LARDER__LIMIT_CGROUP);
    assert_int_equal(larder__memory_limit(data("v2-high"), &limit, &src), 0);
    assert_int_equal(limit, GIB); /* memory.high only */
    assert_int_equal(src, LARDER__LIMIT_CGROUP);
    assert_int_equal(larder__memory_limit(data("v2-unlimited"), &limit, &src), 0);
    assert_int_equal(limit, 8000000 * KIB);
    assert_int_equal(src, LARDER__LIMIT_RAM);
    assert_int_equal(larder__memory_limit(data("v2-above-ram"), &limit, &src), 0);
    assert_int_equal(limit, 1000000 * KIB);
    assert_int_equal(src, LARDER__LIMIT_RAM);
    assert_int_equal(larder__memory_limit(data("v1-limited"), &limit, &src), 0);
    assert_int_equal(limit, 512 * MIB);
    assert_int_equal(src, LARDER__LIMIT_CGROUP);
    /* an unreadable cgroup falls back to RAM; an unreadable meminfo is an error */
    assert_int_equal(larder__memory_limit(data("old-kernel"), &limit, NULL), 0);
    assert_int_equal(limit, 2048000 * KIB);
    assert_int_equal(larder__memory_limit(data("malformed"), &limit, NULL), -EBADMSG);

    assert_int_equal(larder__default_budget(data("v2"), 0.75, &budget), 0);
    assert_int_equal(budget, 3 * GIB / 2);
    assert_int_equal(larder__default_budget(data("v2-unlimited"), 0.5, &budget), 0);
    assert_int_equal(budget, 4000000 * KIB);
    assert_int_equal(larder__default_budget(data("v2"), 1.0, &budget), 0);
    assert_int_equal(budget, 2 * GIB);
    budget = 9;
    assert_int_equal(larder__default_budget(data("v2"), 0.0, &budget), -EINVAL);
    assert_int_equal(larder__default_budget(data("v2"), 1.5, &budget), -EINVAL);
    assert_int_equal(larder__default_budget(data("v2"), -0.5, &budget), -EINVAL);
    assert_int_equal(larder__default_budget(data("empty"), 0.5, &budget), -EBADMSG);
    assert_int_equal(budget, 9);
}

static void psi_fake(void **state)
{
    struct larder__psi psi, orig;
    char path[PATH_MAX + 128];

    assert_int_equal(larder__probe_psi(data("v2"), &psi), 0);
    assert_true(psi.some.avg10 > 1.49 && psi.some.avg10 < 1.51);
    assert_true(psi.some.avg60 > 0.74 && psi.some.avg60 < 0.76);
    assert_true(psi.some.avg300 > 0.19 && psi.some.avg300 < 0.21);
    assert_int_equal(psi.some.total_us, 123456);
    assert_true(psi.full.avg10 > 0.49 && psi.full.avg10 < 0.51);
    assert_int_equal(psi.full.total_us, 45678);

    snprintf(path, sizeof(path), "%s/sys/fs/cgroup/system.slice/larderd.service/memory.pressure",
             data("v2"));
    assert_int_equal(larder__psi_read(path, &psi), 0);
    assert_true(psi.some.avg10 > 12.49 && psi.some.avg10 < 12.51);
    assert_int_equal(psi.full.total_us, 333333);

    memset(&orig, 0x5a, sizeof(orig));
    psi = orig;
    assert_int_equal(larder__probe_psi(data("malformed"), &psi), -EBADMSG);
    assert_int_equal(larder__probe_psi(data("truncated"), &psi), -EBADMSG);
    assert_int_equal(larder__probe_psi(data("empty"), &psi), -EBADMSG);
    assert_int_equal(larder__probe_psi(data("overflow"), &psi), -ERANGE);
    assert_int_equal(larder__probe_psi(data("old-kernel"), &psi), -ENOENT);
    assert_memory_equal(&psi, &orig, sizeof(psi));
}

/* ---- this machine --------------------------------------------------------------------- */

static void rss_real(void **state)
{
    const size_t size = 64 * MIB;
    uint64_t before, during, after;
    struct larder__proc_mem m;
    volatile char *p;

    before = larder__rss_bytes();
    assert_true(before > 0);
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    for (size_t i = 0; i < size; i += 4096)
        p[i] = 1;
    during = larder__rss_bytes();
    assert_int_equal(larder__probe_proc(NULL, &m), 0);
    munmap((void *)p, size);
    after = larder__rss_bytes();

    assert_true(during >= before + size - 4 * MIB);
    assert_true(after + size - 4 * MIB <= during);
    /* status agrees with statm while the 64 MiB were resident */
    assert_true(m.rss >= size && m.rss <= during + 32 * MIB && m.rss + 32 * MIB >= during);
    assert_true(m.hwm >= m.rss);
    if (!m.has_rollup) {
        print_message("smaps_rollup: not present on this kernel; rollup checks left out\n");
        return;
    }
    assert_true(m.rollup_rss >= size);
    assert_true(m.pss <= m.rollup_rss);
    assert_true(m.anon >= size && m.anon <= m.rollup_rss);
}

static void peak_reset_real(void **state)
{
    const size_t size = 64 * MIB;
    struct larder__proc_mem m0, m1;
    volatile char *p;
    int r;

    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    for (size_t i = 0; i < size; i += 4096)
        p[i] = 1;
    munmap((void *)p, size);
    assert_int_equal(larder__probe_proc("", &m0), 0);
    assert_true(m0.hwm >= m0.rss + size - 4 * MIB); /* the peak remembers the 64 MiB */

    r = larder__peak_reset(NULL);
    if (r < 0) {
        print_message("peak reset refused here (%s): skipped\n", strerror(-r));
        skip();
    }
    assert_int_equal(larder__probe_proc(NULL, &m1), 0);
    assert_true(m1.hwm + size - 4 * MIB <= m0.hwm);
    assert_true(m1.hwm >= m1.rss);
    assert_int_equal(larder__peak_reset(data("does-not-exist")), -ENOENT);
}

static void meminfo_real(void **state)
{
    struct larder__meminfo mi;

    assert_int_equal(larder__probe_meminfo(NULL, &mi), 0);
    assert_true(mi.total >= 64 * MIB);
    if (mi.has_available)
        assert_true(mi.available <= mi.total);
}

static void cgroup_real(void **state)
{
    struct larder__cgroup cg;
    char dir[PATH_MAX];
    int version, r;

    r = larder__cgroup_find("/", dir, sizeof(dir), &version);
    if (r < 0) {
        print_message("no memory cgroup reachable here (%s): skipped\n", strerror(-r));
        skip();
    }
    print_message("memory cgroup v%d at %s\n", version, dir);
    assert_int_equal(larder__cgroup_read(dir, version, &cg), 0);
    assert_int_equal(cg.version, version);
    assert_true(cg.current > 0);
    assert_true(cg.max == LARDER__UNLIMITED || cg.max >= cg.current / 2);
    if (version == 2)
        assert_true(cg.has_events);
}

static void limits_real(void **state)
{
    struct larder__meminfo mi;
    enum larder__limit_source src;
    uint64_t limit, budget;

    assert_int_equal(larder__probe_meminfo(NULL, &mi), 0);
    assert_int_equal(larder__memory_limit(NULL, &limit, &src), 0);
    assert_true(limit > 0 && limit <= mi.total);
    assert_true(src == LARDER__LIMIT_RAM || src == LARDER__LIMIT_CGROUP);
    if (src == LARDER__LIMIT_RAM)
        assert_int_equal(limit, mi.total);
    assert_int_equal(larder__default_budget(NULL, 0.5, &budget), 0);
    assert_true(budget <= limit / 2 && budget + MIB >= limit / 2);
}

static void psi_real(void **state)
{
    struct larder__psi psi;
    int r = larder__probe_psi(NULL, &psi);

    if (r == -ENOENT || r == -EOPNOTSUPP) {
        print_message("no PSI on this kernel (%s): skipped\n", strerror(-r));
        skip();
    }
    assert_int_equal(r, 0);
    assert_true(psi.some.avg10 >= 0 && psi.some.avg10 <= 100);
    assert_true(psi.full.avg300 >= 0 && psi.full.avg300 <= 100);
    assert_true(psi.full.total_us <= psi.some.total_us); /* all stalled implies some */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(proc_fake),      cmocka_unit_test(proc_bad),
        cmocka_unit_test(root_too_long),  cmocka_unit_test(meminfo_fake),
        cmocka_unit_test(cgroup_v2_fake), cmocka_unit_test(cgroup_namespace_fake),
        cmocka_unit_test(cgroup_v1_fake), cmocka_unit_test(cgroup_bad),
        cmocka_unit_test(limits_fake),    cmocka_unit_test(psi_fake),
        cmocka_unit_test(rss_real),       cmocka_unit_test(peak_reset_real),
        cmocka_unit_test(meminfo_real),   cmocka_unit_test(cgroup_real),
        cmocka_unit_test(limits_real),    cmocka_unit_test(psi_real),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
