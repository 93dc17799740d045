/* Pressure watcher: refusals on fake trees, triggers on the real kernel, and a real
 * pressure event: a child process squeezed in a child cgroup with a small memory limit
 * must wake the watcher. Where the kernel or the sandbox does not allow a step, the test
 * says why and skips. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "probe.h"

#define MIB (1024ull * 1024)

static const char *data(const char *rel)
{
    static char path[PATH_MAX];

    snprintf(path, sizeof(path), "%s/%s", LARDER_TEST_DATA, rel);
    return path;
}

static void ignore(void *ud, const struct larder__pressure *p)
{
}

static struct larder__pressure_opts opts(const char *root, const char *psi, const char *events)
{
    return (struct larder__pressure_opts){
        .root = root, .psi_path = psi, .events_path = events, .cb = ignore};
}

/* ---- summary ------------------------------------------------------------------------ */

static void summary(void **state)
{
    struct larder__pressure p = {.fired = LARDER__PRESSURE_EVENTS | LARDER__PRESSURE_PSI};
    char buf[256], small[16];
    int n;

    assert_int_equal(larder__pressure_summary(&p, buf, sizeof(buf)), 15);
    assert_string_equal(buf, "memory pressure");

    p.has_psi = true;
    p.psi.some.avg10 = 12.5;
    p.psi.full.avg10 = 3.1;
    p.has_cgroup = true;
    p.cgroup.current = 480 * MIB;
    p.cgroup.max = 512 * MIB;
    p.delta.high = 2;
    p.delta.oom_kill = 1;
    n = larder__pressure_summary(&p, buf, sizeof(buf));
    assert_string_equal(buf, "psi some avg10=12.50 full avg10=3.10; cgroup 480.0 MiB of 512.0 "
                             "MiB, +2 high, +1 oom_kill");
    assert_int_equal(n, (int)strlen(buf));

    p.has_psi = false;
    p.cgroup.max = LARDER__UNLIMITED;
    p.delta = (struct larder__cgroup_events){0};
    larder__pressure_summary(&p, buf, sizeof(buf));
    assert_string_equal(buf, "cgroup 480.0 MiB");

    /* cut to the buffer, always terminated, returns the length it wanted */
    p.has_psi = true;
    n = larder__pressure_summary(&p, small, sizeof(small));
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_true(n > (int)sizeof(small));
    assert_int_equal(larder__pressure_summary(&p, small, 0), -EINVAL);
    assert_int_equal(larder__pressure_summary(NULL, small, sizeof(small)), -EINVAL);
}

/* ---- refusals ------------------------------------------------------------------------ */

static char *slurp(const char *path)
{
    static char buf[4096];
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return strdup(buf);
}

static void refusals(void **state)
{
    struct larder__pressure_watch *w = NULL;
    struct larder__pressure_opts o;
    char psi[PATH_MAX], events[PATH_MAX];
    char *before, *after;

    snprintf(psi, sizeof(psi), "%s", data("v2/proc/pressure/memory"));
    snprintf(events, sizeof(events), "%s",
             data("v2/sys/fs/cgroup/system.slice/larderd.service/memory.events"));

    o = opts(NULL, psi, "");
    o.cb = NULL;
    assert_int_equal(larder__pressure_watch_start(&o, &w), -EINVAL);
    assert_int_equal(larder__pressure_watch_start(NULL, &w), -EINVAL);
    o = opts(NULL, "", "");
    assert_int_equal(larder__pressure_watch_start(&o, &w), -EINVAL); /* nothing to watch */

    /* nothing there at all */
    o = opts(data("does-not-exist"), NULL, NULL);
    assert_int_equal(larder__pressure_watch_start(&o, &w), -ENOENT);
    o = opts(data("old-kernel"), NULL, NULL);
    assert_int_equal(larder__pressure_watch_start(&o, &w), -ENOENT);
    assert_null(w);

    /* a trigger is never written into an ordinary file */
    before = slurp(psi);
    o = opts(NULL, psi, "");
    assert_int_equal(larder__pressure_watch_start(&o, &w), -EOPNOTSUPP);
    after = slurp(psi);
    assert_string_equal(before, after);
    free(before);
    free(after);

    /* malformed triggers are refused before anything is opened */
    static const char *const bad[] = {"", "some", "sometimes 1 2", "some 1", "some 0 1000000",
                                      "some 2000 1000", "full -1 1000000", "some 1 2 3",
                                      "some 1000x 1000000"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o = opts(NULL, "/proc/pressure/memory", "");
        o.trigger = bad[i];
        assert_int_equal(larder__pressure_watch_start(&o, &w), -EINVAL);
    }
    assert_null(w);

    /* PSI refused, memory.events usable: runs with what it has */
    o = opts(NULL, psi, events);
    assert_int_equal(larder__pressure_watch_start(&o, &w), LARDER__PRESSURE_EVENTS);
    assert_int_equal(larder__pressure_watch_psi_error(w), -EOPNOTSUPP);
    assert_string_equal(larder__pressure_watch_trigger(w), "");
    assert_null(larder__pressure_watch_stop(w));
    assert_null(larder__pressure_watch_stop(NULL));

    /* a malformed memory.events is refused */
    o = opts(NULL, "", data("cg/trunc-events/memory.events"));
    w = NULL;
    assert_int_equal(larder__pressure_watch_start(&o, &w), -EBADMSG);
    assert_null(w);
}

static void start_stop_loop(void **state)
{
    struct larder__pressure_opts o;

    /* the wake-up path, many times: each stop must join a thread blocked in poll() */
    o = opts(NULL, "", data("v2/sys/fs/cgroup/system.slice/larderd.service/memory.events"));
    for (int i = 0; i < 50; i++) {
        struct larder__pressure_watch *w = NULL;
        assert_int_equal(larder__pressure_watch_start(&o, &w), LARDER__PRESSURE_EVENTS);
        if (i % 2)
            usleep(1000);
        assert_int_equal(larder__pressure_watch_fired(w), 0);
        larder__pressure_watch_stop(w);
    }
}

/* ---- the real kernel ---------------------------------------------------------------- */

static void real_triggers(void **state)
{
    struct larder__pressure_watch *w = NULL;
    struct larder__pressure_opts o = opts(NULL, NULL, "");
    const char *t;
    int r;

    r = larder__pressure_watch_start(&o, &w);
    if (r < 0) {
        print_message("the kernel refuses PSI triggers here (%s): skipped\n", strerror(-r));
        skip();
    }
    assert_int_equal(r, LARDER__PRESSURE_PSI);
    assert_int_equal(larder__pressure_watch_psi_error(w), 0);
    t = larder__pressure_watch_trigger(w);
    print_message("trigger accepted: \"%s\"\n", t);
    /* as asked, or (without CAP_SYS_RESOURCE) with the window rounded up to 2 s */
    assert_true(strcmp(t, "some 150000 1000000") == 0 || strcmp(t, "some 300000 2000000") == 0);
    larder__pressure_watch_stop(w);

    /* a window over 10 s: refused by the kernel itself, with or without privileges */
    o.trigger = "full 100000 20000000";
    w = NULL;
    assert_int_equal(larder__pressure_watch_start(&o, &w), -EINVAL);
    assert_null(w);

    /* the defaults: PSI plus this process's memory.events where it has cgroup v2 */
    o = opts(NULL, NULL, NULL);
    r = larder__pressure_watch_start(&o, &w);
    assert_true(r & LARDER__PRESSURE_PSI);
    print_message("default sources: %s%s\n", r & LARDER__PRESSURE_PSI ? "psi " : "",
                  r & LARDER__PRESSURE_EVENTS ? "memory.events" : "");
    larder__pressure_watch_stop(w);
}

/* A child cgroup with a small memory limit, and a child process inside that needs more. */
struct squeeze {
    int version;             /* of the memory controller: 2, or 1 (hybrid hosts) */
    char mem[PATH_MAX];      /* cgroup holding the limit */
    char psi[PATH_MAX];      /* v2 cgroup whose memory.pressure is watched; "" none */
    char file[PATH_MAX];     /* a file on disk the child keeps reading */
    char why[PATH_MAX + 128]; /* why the test cannot run here */
};

static int put_file(const char *dir, const char *name, const char *text)
{
    char path[PATH_MAX + 64];
    int fd, r = 0;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (write(fd, text, strlen(text)) < 0)
        r = -errno;
    close(fd);
    return r;
}

static bool has_file(const char *dir, const char *name)
{
    char path[PATH_MAX + 64];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static int make_child_cgroup(char *dir, const char *parent, struct squeeze *s)
{
    snprintf(dir, PATH_MAX, "%s/larder-test-%d", parent, (int)getpid());
    if (mkdir(dir, 0755) == 0)
        return 0;
    snprintf(s->why, sizeof(s->why), "cannot create a cgroup under %s: %s", parent,
             strerror(errno));
    dir[0] = '\0';
    return -1;
}

static int setup_v2(struct squeeze *s, const char *own)
{
    if (make_child_cgroup(s->mem, own, s) < 0)
        return -1;
    if (!has_file(s->mem, "memory.max"))
        put_file(own, "cgroup.subtree_control", "+memory");
    if (!has_file(s->mem, "memory.max") || put_file(s->mem, "memory.max", "33554432") < 0) {
        snprintf(s->why, sizeof(s->why), "the memory controller is not delegated to %s", own);
        return -1;
    }
    put_file(s->mem, "memory.swap.max", "0"); /* absent without swap accounting */
    if (has_file(s->mem, "memory.pressure"))
        snprintf(s->psi, sizeof(s->psi), "%s", s->mem);
    return 0;
}

/* Our cgroup v2 directory: under /sys/fs/cgroup, or its unified/ on hybrid hosts. */
static int own_v2_dir(char *buf, size_t len)
{
    static const char *const mounts[] = {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"};
    char line[PATH_MAX + 16], probe[PATH_MAX];
    FILE *f = fopen("/proc/self/cgroup", "re");
    int r = -1;

    while (f && r < 0 && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "0::/", 4) != 0)
            continue;
        line[strcspn(line, "\n")] = '\0';
        for (int i = 0; i < 2 && r < 0; i++) {
            snprintf(probe, sizeof(probe), "%s/cgroup.controllers", mounts[i]);
            if (access(probe, F_OK) == 0)
                r = snprintf(buf, len, "%s%s", mounts[i], line + 3) < (int)len ? 0 : -1;
        }
    }
    if (f)
        fclose(f);
    return r;
}

static int setup_v1(struct squeeze *s, const char *own)
{
    char v2[PATH_MAX];

    if (make_child_cgroup(s->mem, own, s) < 0)
        return -1;
    if (put_file(s->mem, "memory.limit_in_bytes", "67108864") < 0) {
        snprintf(s->why, sizeof(s->why), "cannot set memory.limit_in_bytes in %s", s->mem);
        return -1;
    }
    /* stalls are measured by PSI in the cgroup v2 tree */
    if (own_v2_dir(v2, sizeof(v2)) < 0 || make_child_cgroup(s->psi, v2, s) < 0) {
        snprintf(s->why, sizeof(s->why), "no cgroup v2 tree to measure the stalls in");
        return -1;
    }
    if (!has_file(s->psi, "memory.pressure")) {
        snprintf(s->why, sizeof(s->why), "%s has no memory.pressure (PSI disabled?)", s->psi);
        return -1;
    }
    return 0;
}

/* A 48 MiB file on disk, not in the page cache, for the child to read again and again. */
static int make_file(struct squeeze *s)
{
    static char block[1 << 16];
    struct statfs sf;
    int fd;

    snprintf(s->file, sizeof(s->file), "%s/pressure-%d.bin", LARDER_TEST_SCRATCH, (int)getpid());
    fd = open(s->file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || fstatfs(fd, &sf) < 0 || sf.f_type == TMPFS_MAGIC) {
        snprintf(s->why, sizeof(s->why), "no disk-backed scratch directory for a page-cache load");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    memset(block, 'x', sizeof(block));
    for (int i = 0; i < 48 * 16; i++)
        if (write(fd, block, sizeof(block)) != (ssize_t)sizeof(block))
            break;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); /* the child's reads charge the child */
    close(fd);
    return 0;
}

static void remove_cgroup(const char *dir)
{
    /* a killed child leaves its cgroup a moment after waitpid() */
    for (int i = 0; dir[0] && i < 200; i++) {
        if (rmdir(dir) == 0 || errno != EBUSY)
            return;
        usleep(10000);
    }
}

static void teardown_squeeze(struct squeeze *s)
{
    remove_cgroup(s->mem);
    if (strcmp(s->psi, s->mem) != 0)
        remove_cgroup(s->psi);
    if (s->file[0])
        unlink(s->file);
}

static int setup_squeeze(struct squeeze *s)
{
    char own[PATH_MAX];
    int r;

    r = larder__cgroup_find(NULL, own, sizeof(own), &s->version);
    if (r < 0) {
        snprintf(s->why, sizeof(s->why), "no memory cgroup here: %s", strerror(-r));
        return -1;
    }
    r = s->version == 2 ? setup_v2(s, own) : setup_v1(s, own);
    if (r == 0 && s->version == 1)
        r = make_file(s);
    return r;
}

/* The child: waits for "go", then takes more anonymous memory than the limit leaves
 * room for next to the file, and reads the file over and over. Not instrumented by
 * sanitizers, so that their shadow memory does not add to what it charges. */
__attribute__((noreturn, no_sanitize("address", "thread", "undefined")))
static void child_main(int go_fd, size_t anon, const char *file)
{
    static char buf[1 << 16];
    volatile char *p;
    char c;

    if (read(go_fd, &c, 1) != 1)
        _exit(2);
    p = mmap(NULL, anon, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        _exit(3);
    for (size_t i = 0; i < anon; i += 4096)
        p[i] = 1;
    for (;;) {
        int fd = file[0] ? open(file, O_RDONLY) : -1;
        while (fd >= 0 && read(fd, buf, sizeof(buf)) > 0)
            ;
        if (fd >= 0)
            close(fd);
        else
            pause();
    }
}

struct seen {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int calls;
    struct larder__pressure first;
};

static void on_pressure(void *ud, const struct larder__pressure *p)
{
    struct seen *s = ud;

    pthread_mutex_lock(&s->lock);
    if (s->calls++ == 0)
        s->first = *p;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static int wait_seen(struct seen *s, int seconds)
{
    struct timespec until;
    int calls;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += seconds;
    pthread_mutex_lock(&s->lock);
    while (s->calls == 0 && pthread_cond_timedwait(&s->cond, &s->lock, &until) == 0)
        ;
    calls = s->calls;
    pthread_mutex_unlock(&s->lock);
    return calls;
}

static pid_t spawn(struct squeeze *sq, int *ret_go)
{
    char pid[32];
    int go[2];
    pid_t child;

    assert_int_equal(pipe(go), 0);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(go[1]);
        child_main(go[0], sq->version == 2 ? 64 * MIB : 40 * MIB, sq->file);
    }
    close(go[0]);
    snprintf(pid, sizeof(pid), "%d", (int)child);
    assert_int_equal(put_file(sq->mem, "cgroup.procs", pid), 0);
    if (sq->psi[0] && strcmp(sq->psi, sq->mem) != 0)
        assert_int_equal(put_file(sq->psi, "cgroup.procs", pid), 0);
    *ret_go = go[1];
    return child;
}

static void check_first(const struct squeeze *sq, const struct larder__pressure *p)
{
    const struct larder__cgroup_events *d = &p->delta;

    print_message("pressure seen: fired=%u, psi some total %llu us, events +%llu high +%llu max "
                  "+%llu oom +%llu oom_kill\n", p->fired,
                  (unsigned long long)p->psi.some.total_us, (unsigned long long)d->high,
                  (unsigned long long)d->max, (unsigned long long)d->oom,
                  (unsigned long long)d->oom_kill);
    assert_true(p->fired != 0);
    if (p->fired & LARDER__PRESSURE_PSI) {
        assert_true(p->has_psi);
        assert_true(p->psi.some.total_us > 0);
    }
    if (p->fired & LARDER__PRESSURE_EVENTS) {
        assert_true(d->high + d->max + d->oom + d->oom_kill > 0);
        assert_true(p->has_cgroup);
        assert_int_equal(p->cgroup.max, 32 * MIB);
    }
}

static void real_pressure_fires(void **state)
{
    struct squeeze sq = {0};
    struct seen seen = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, {0}};
    struct larder__pressure_watch *w = NULL;
    struct larder__pressure_opts o = {.cb = on_pressure, .ud = &seen,
                                      .trigger = "some 20000 2000000"};
    char psi[PATH_MAX + 32], events[PATH_MAX + 32];
    int go = -1, r, calls;
    pid_t child;

    if (setup_squeeze(&sq) < 0) {
        teardown_squeeze(&sq);
        print_message("%s: skipped\n", sq.why);
        skip();
    }
    snprintf(psi, sizeof(psi), "%s/memory.pressure", sq.psi);
    snprintf(events, sizeof(events), "%s/memory.events", sq.mem);
    o.psi_path = sq.psi[0] ? psi : "";
    o.events_path = sq.version == 2 ? events : "";
    child = spawn(&sq, &go);
    r = larder__pressure_watch_start(&o, &w);
    if (r < 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        teardown_squeeze(&sq);
        print_message("cannot watch %s (%s): skipped\n", sq.psi, strerror(-r));
        skip();
    }
    print_message("squeezing a child in %s (cgroup v%d), watching%s%s\n", sq.mem, sq.version,
                  r & LARDER__PRESSURE_PSI ? " psi" : "",
                  r & LARDER__PRESSURE_EVENTS ? " memory.events" : "");
    assert_int_equal(write(go, "g", 1), 1);
    calls = wait_seen(&seen, 20);

    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    close(go);
    larder__pressure_watch_stop(w);
    teardown_squeeze(&sq);
    assert_true(calls > 0);
    check_first(&sq, &seen.first);
}

static int count_calls(struct seen *s)
{
    int n;

    pthread_mutex_lock(&s->lock);
    n = s->calls;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* The watched cgroup goes away: the kernel then reports an error on the descriptors for
 * good; the watcher must drop them, not spin on them or call back for them. */
static void watched_cgroup_removed(void **state)
{
    struct squeeze sq = {0};
    struct seen seen = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, {0}};
    struct larder__pressure_watch *w = NULL;
    struct larder__pressure_opts o = {.cb = on_pressure, .ud = &seen,
                                      .trigger = "some 20000 2000000", .events_path = ""};
    char own[PATH_MAX], psi[PATH_MAX + 32];
    int r;

    if (own_v2_dir(own, sizeof(own)) < 0 || make_child_cgroup(sq.psi, own, &sq) < 0) {
        print_message("%s: skipped\n", sq.why[0] ? sq.why : "no cgroup v2 tree here");
        skip();
    }
    snprintf(psi, sizeof(psi), "%s/memory.pressure", sq.psi);
    o.psi_path = psi;
    r = larder__pressure_watch_start(&o, &w);
    if (r < 0) {
        remove_cgroup(sq.psi);
        print_message("cannot watch %s (%s): skipped\n", psi, strerror(-r));
        skip();
    }
    assert_int_equal(rmdir(sq.psi), 0);
    usleep(200 * 1000); /* room for a spinning watcher to show itself */
    assert_int_equal(count_calls(&seen), 0);
    larder__pressure_watch_stop(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(summary),
        cmocka_unit_test(refusals),
        cmocka_unit_test(start_stop_loop),
        cmocka_unit_test(real_triggers),
        cmocka_unit_test(real_pressure_fires),
        cmocka_unit_test(watched_cgroup_removed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
