/* The child supervisor of larderd (children.h): spawn into a group, passed fds, exec
 * errors, stop of a whole process tree, tree memory, records in state_dir and the ending
 * of children that a dead daemon left recorded. Real processes (sh, sleep). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "children.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* True when pid is gone or a zombie, waiting up to 60 s. */
static bool wait_gone(pid_t pid)
{
    for (int i = 0; i < 6000; i++) {
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (!f)
            return true;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *p = strrchr(buf, ')');
        if (p && p[1] == ' ' && p[2] == 'Z')
            return true;
        sleep_ms(10);
    }
    return false;
}

/* Reads the pid a shell child wrote into a pipe. */
static pid_t read_pid(int fd)
{
    char buf[32] = "";
    size_t n = 0;
    while (n < sizeof buf - 1) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0 || buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
    return (pid_t)atoi(buf);
}

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/larder-children-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
}

static void rm_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
}

static int count_records(void)
{
    char cmd[160], out[32] = "";
    snprintf(cmd, sizeof cmd, "ls %s/children | wc -l", tmpdir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(out, sizeof out, p));
    pclose(p);
    return atoi(out);
}

static void test_tree_stop_and_record(void **state)
{
    (void)state;
    make_tmpdir();
    char err[256] = "";
    struct larder__children *s = NULL;
    unsigned reaped = 99;
    assert_int_equal(larder__children_open(tmpdir, &s, &reaped, err, sizeof err), 0);
    assert_int_equal(reaped, 0);

    int pfd[2];
    assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
    /* the grandchild (sleep) reports its pid on fd 3 */
    const char *argv[] = {"sh", "-c", "sleep 300 & echo $! >&3; exec 3>&-; wait", NULL};
    struct larder__child_spec sp = {.argv = argv, .stdio = {-1, -1, -1},
                                    .pass_fds = &pfd[1], .n_pass_fds = 1,
                                    .label = "test tree"};
    struct larder__child *c = NULL;
    assert_int_equal(larder__child_spawn(s, &sp, &c, err, sizeof err), 0);
    close(pfd[1]);
    pid_t grandchild = read_pid(pfd[0]);
    close(pfd[0]);
    assert_true(grandchild > 0);
    assert_int_equal(getpgid(larder__child_pid(c)), larder__child_pid(c));
    assert_int_equal(getpgid(grandchild), larder__child_pid(c));
    assert_int_equal(count_records(), 1);

    struct larder__child_mem m;
    assert_int_equal(larder__child_memory(c, &m), 0);
    assert_true(m.procs >= 2);
    assert_true(m.rss > 0);

    assert_false(larder__child_wait(c, 0, NULL));
    int status = larder__child_stop(c, 10000);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGTERM);
    assert_true(wait_gone(grandchild));
    assert_int_equal(count_records(), 0);
    assert_int_equal(larder__child_memory(c, &m), -ESRCH);
    larder__child_free(c);
    larder__children_close(s, 1000);
    rm_tmpdir();
}

static void test_exec_error(void **state)
{
    (void)state;
    char err[256] = "";
    struct larder__children *s = NULL;
    assert_int_equal(larder__children_open(NULL, &s, NULL, err, sizeof err), 0);
    const char *argv[] = {"/nonexistent/larder-no-such-program", NULL};
    struct larder__child_spec sp = {.argv = argv, .stdio = {-1, -1, -1}};
    struct larder__child *c = NULL;
    assert_int_equal(larder__child_spawn(s, &sp, &c, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "larder-no-such-program"));
    const char *argv2[] = {"larder-no-such-program-in-path", NULL};
    sp.argv = argv2;
    assert_int_equal(larder__child_spawn(s, &sp, &c, err, sizeof err), -ENOENT);
    larder__children_close(s, 1000);
}

static int exit_seen;
static void on_exit_cb(void *ctx, struct larder__child *c, int status)
{
    (void)c;
    *(int *)ctx = status;
    __atomic_store_n(&exit_seen, 1, __ATOMIC_SEQ_CST);
}

static void test_exit_status_and_callback(void **state)
{
    (void)state;
    char err[256] = "";
    struct larder__children *s = NULL;
    assert_int_equal(larder__children_open(NULL, &s, NULL, err, sizeof err), 0);
    const char *argv[] = {"sh", "-c", "exit 7", NULL};
    int got = -1;
    struct larder__child_spec sp = {.argv = argv, .stdio = {-1, -1, -1},
                                    .on_exit = on_exit_cb, .on_exit_ctx = &got};
    struct larder__child *c = NULL;
    assert_int_equal(larder__child_spawn(s, &sp, &c, err, sizeof err), 0);
    int status = 0;
    assert_true(larder__child_wait(c, 60000, &status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 7);
    larder__child_free(c); /* waits for the callback */
    assert_int_equal(__atomic_load_n(&exit_seen, __ATOMIC_SEQ_CST), 1);
    assert_int_equal(WEXITSTATUS(got), 7);
    char text[96];
    larder__child_status_text(status, text, sizeof text);
    assert_string_equal(text, "exited with status 7");
    larder__child_status_text(SIGSEGV, text, sizeof text);
    assert_non_null(strstr(text, "SIGSEGV"));
    larder__children_close(s, 1000);
}

/* A record whose daemon is dead: the next supervisor on that state_dir ends the child's
 * whole group. A record whose child's start time differs (a reused pid) is left alone. */
static void test_stale_records(void **state)
{
    (void)state;
    make_tmpdir();
    char err[256] = "";
    struct larder__children *a = NULL;
    assert_int_equal(larder__children_open(tmpdir, &a, NULL, err, sizeof err), 0);
    int pfd[2];
    assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
    const char *argv[] = {"sh", "-c", "sleep 300 & echo $! >&3; exec 3>&-; wait", NULL};
    struct larder__child_spec sp = {.argv = argv, .stdio = {-1, -1, -1},
                                    .pass_fds = &pfd[1], .n_pass_fds = 1};
    struct larder__child *c = NULL;
    assert_int_equal(larder__child_spawn(a, &sp, &c, err, sizeof err), 0);
    close(pfd[1]);
    pid_t grandchild = read_pid(pfd[0]);
    close(pfd[0]);
    pid_t pid = larder__child_pid(c);

    /* a daemon that died: a process that has exited and been reaped */
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    waitpid(dead, NULL, 0);
    char path[256], text[512];
    snprintf(path, sizeof path, "%s/children/%d", tmpdir, (int)pid);
    snprintf(text, sizeof text,
             "pid %d\npgid %d\nstart %llu\nlarderd %d\nlarderd_start 1\nlabel stale\n",
             (int)pid, (int)pid, (unsigned long long)larder__proc_start_time(pid),
             (int)dead);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    /* and a record naming a live process with another start time: left alone */
    pid_t other = fork();
    if (other == 0) {
        pause();
        _exit(0);
    }
    snprintf(path, sizeof path, "%s/children/%d", tmpdir, (int)other);
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "pid %d\npgid %d\nstart 1\nlarderd %d\nlarderd_start 1\nlabel reused\n",
            (int)other, (int)other, (int)dead);
    fclose(f);

    struct larder__children *b = NULL;
    unsigned reaped = 0;
    assert_int_equal(larder__children_open(tmpdir, &b, &reaped, err, sizeof err), 0);
    assert_int_equal(reaped, 1);
    assert_true(wait_gone(grandchild));
    int status = 0;
    assert_true(larder__child_wait(c, 60000, &status));
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    assert_int_equal(kill(other, 0), 0); /* the unrelated process lives */
    kill(other, SIGKILL);
    waitpid(other, NULL, 0);
    assert_int_equal(count_records(), 0);
    larder__child_free(c);
    larder__children_close(b, 1000);
    larder__children_close(a, 1000);
    rm_tmpdir();
}

/* Closing the supervisor stops what still runs, even a child that ignores SIGTERM. */
static void test_close_stops_all(void **state)
{
    (void)state;
    char err[256] = "";
    struct larder__children *s = NULL;
    assert_int_equal(larder__children_open(NULL, &s, NULL, err, sizeof err), 0);
    const char *argv[] = {"sh", "-c", "trap '' TERM; while :; do sleep 1; done", NULL};
    struct larder__child_spec sp = {.argv = argv, .stdio = {-1, -1, -1}};
    struct larder__child *c1 = NULL, *c2 = NULL;
    assert_int_equal(larder__child_spawn(s, &sp, &c1, err, sizeof err), 0);
    assert_int_equal(larder__child_spawn(s, &sp, &c2, err, sizeof err), 0);
    pid_t p1 = larder__child_pid(c1), p2 = larder__child_pid(c2);
    larder__child_free(c1);
    assert_true(wait_gone(p1));
    larder__children_close(s, 200);
    assert_true(wait_gone(p2));
    larder__child_free(c2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tree_stop_and_record),
        cmocka_unit_test(test_exec_error),
        cmocka_unit_test(test_exit_status_and_callback),
        cmocka_unit_test(test_stale_records),
        cmocka_unit_test(test_close_stops_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
