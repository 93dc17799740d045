/* Components that together overfill a real cgroup: a child process in a memory cgroup
 * limited to 128 MiB loads eight 24 MiB components one after the other (192 MiB in all)
 * under a budget that would allow them all. Idle ones must be evicted for pressure
 * before each load, and the child must never be OOM-killed. Needs a memory cgroup this
 * process may create children in (cgroup v2 with the memory controller delegated, or
 * v1); elsewhere it skips and says why. */
#include <larder/larder.h>

#include "cgroup_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MiB (1024u * 1024u)
#define LIMIT (128u * MiB)
#define HOG (24u * MiB)
#define HOGS 8

static int hog_load(void *ud, void **ret, char *err, size_t n)
{
    void *p = mmap(NULL, HOG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        snprintf(err, n, "mmap failed");
        return -1;
    }
    memset(p, 0x5a, HOG);
    *ret = p;
    return 0;
}

static void hog_unload(void *ud, void *model)
{
    munmap(model, HOG);
}

static const struct larder_class hog_class = {
    .struct_size = sizeof hog_class, .name = "hog", .load = hog_load, .unload = hog_unload};

static int pressure_evictions;

static void on_event(void *ud, const struct larder_event *ev)
{
    if (ev->type == LARDER_EVENT_EVICT && ev->reason == LARDER_REASON_PRESSURE)
        __atomic_add_fetch(&pressure_evictions, 1, __ATOMIC_RELAXED);
}

/* The child: loads every hog in turn; exit status = evictions for pressure (0..HOGS),
 * or 100 + k when hog k could not be served. */
static void child_main(int go)
{
    char c;
    if (read(go, &c, 1) != 1)
        _exit(99);
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = 1ull << 30; /* the budget alone would admit them all */
    o.watch_pressure = false;    /* only the check before each load acts */
    o.on_event = on_event;
    larder *m = NULL;
    if (larder_open(&o, &m) < 0)
        _exit(98);
    for (int k = 0; k < HOGS; k++) {
        char name[16];
        snprintf(name, sizeof name, "hog%d", k);
        struct larder_component_opts co;
        larder_component_opts_init(&co);
        co.cls = &hog_class;
        co.memory_bytes = HOG;
        co.ttl_ms = LARDER_TTL_NEVER;
        larder_lease *l = NULL;
        if (larder_define(m, name, &co) < 0 || larder_acquire(m, name, 30000, &l) < 0)
            _exit(100 + k);
        larder_release(l);
    }
    larder_close(m);
    _exit(pressure_evictions > HOGS ? HOGS : pressure_evictions);
}

static void test_overfill_evicts_instead_of_oom(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    printf("sanitizer build: shadow memory would be charged to the cgroup; skipped\n");
    skip();
#endif
    char dir[PATH_MAX], why[PATH_MAX + 128];
    if (cgroup_util_make("larder-overfill", LIMIT, dir, sizeof dir, why, sizeof why) < 0) {
        printf("skipped: %s\n", why);
        skip();
    }
    int go[2];
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(go[1]);
        child_main(go[0]);
    }
    close(go[0]);
    char spid[32];
    snprintf(spid, sizeof spid, "%d", (int)pid);
    int moved = cgroup_util_put(dir, "cgroup.procs", spid);
    if (moved == 0)
        assert_int_equal(write(go[1], "g", 1), 1);
    close(go[1]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    cgroup_util_remove(dir);
    assert_int_equal(moved, 0);
    if (WIFSIGNALED(status))
        fail_msg("the child was killed by signal %d (OOM killer?)", WTERMSIG(status));
    assert_true(WIFEXITED(status));
    int code = WEXITSTATUS(status);
    if (code >= 100)
        fail_msg("hog%d could not be served", code - 100);
    printf("overfill: %d x %u MiB in a %u MiB cgroup: %d evicted for pressure, no OOM kill\n",
           HOGS, HOG / MiB, LIMIT / MiB, code);
    assert_true(code >= 1 && code <= HOGS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_overfill_evicts_instead_of_oom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
