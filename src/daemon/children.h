/* Child processes of larderd: one supervisor that starts, watches, stops and measures
 * the processes larderd runs models in (workers, external model servers), so that none is
 * ever orphaned.
 *
 * Every child:
 *  - runs in its own process group (pgid = its pid), so that a stop reaches everything it
 *    started itself;
 *  - gets PR_SET_PDEATHSIG(SIGKILL). The kernel sends that signal when the *thread* that
 *    forked the child ends, not the process; so every fork happens on the supervisor's own
 *    thread, which lives from larder__children_open to larder__children_close and is
 *    joined only after every child has been stopped and reaped. A child that finds its
 *    parent already gone right after the prctl (the daemon died during the fork) exits;
 *  - has a record `<state_dir>/children/<pid>` (pid, pgid, the child's start time from
 *    /proc/PID/stat, larderd's pid and start time, a label) written before the spawn
 *    returns and removed when the child is reaped. larder__children_open reads the records
 *    that a larderd no longer running left behind and SIGKILLs the process group of each
 *    child that still is that child (same start time: a reused pid is left alone). Without
 *    a state_dir no record is kept and PDEATHSIG alone ends the children of a daemon that
 *    died;
 *  - is reaped by the supervisor (pidfd + waitid on the child's pid only: other children
 *    of the process are never reaped here). When the group leader exits, whatever is left
 *    of its process group is SIGKILLed before the leader is reaped, so nothing it started
 *    outlives it.
 *
 * Threads: every function may be called from any thread, except that one child's
 * larder__child_free must not race with other calls on that child.
 */
#ifndef LARDER_DAEMON_CHILDREN_H
#define LARDER_DAEMON_CHILDREN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "larder/larder.h"

struct larder__children;
struct larder__child;

/* Starts the supervisor. state_dir: where records live (<state_dir>/children, created
 * mode 0700); NULL or "" keeps none. Ends the children that a dead larderd left recorded
 * there (see above) before it returns; ret_reaped (may be NULL) gets how many it ended.
 * Errors: negative errno, message in err. */
int larder__children_open(const char *state_dir, struct larder__children **ret,
                          unsigned *ret_reaped, char *err, size_t errlen);

/* Stops every child still running (SIGTERM to each group, SIGKILL after stop_timeout_ms),
 * reaps them, joins the supervisor thread and frees it. Children not freed by their owner
 * stay valid as objects only until this returns: free them before. Accepts NULL. */
void larder__children_close(struct larder__children *s, int stop_timeout_ms);

/* Called once on the supervisor thread when the child has exited (status as waitpid's),
 * with no lock of this module held; it must not call larder__child_free on this child. */
typedef void (*larder__child_exit_fn)(void *ctx, struct larder__child *c, int status);

struct larder__child_spec {
    const char *const *argv;  /* argv[0]: a path, or a name looked up in PATH */
    const char *const *envp;  /* NULL: larderd's environment */
    const char *workdir;      /* NULL: larderd's */
    /* stdin, stdout, stderr of the child: an fd to dup2 there, or -1 for /dev/null
     * (stdin) / larderd's own (stdout, stderr). */
    int stdio[3];
    /* fds passed on as 3, 4, ... in this order (any fd number, CLOEXEC or not); every
     * other fd is closed in the child. */
    const int *pass_fds;
    size_t n_pass_fds;
    const char *label;        /* written into the record, e.g. "worker ocr"; may be NULL */
    larder__child_exit_fn on_exit; /* may be NULL */
    void *on_exit_ctx;
};

/* Starts a child. Fails with -ENOENT when argv[0] cannot be found or executed (the exec
 * error comes back through a CLOEXEC pipe, so a failed exec is an error here and never a
 * child that exits 127), other negative errno; message in err. */
int larder__child_spawn(struct larder__children *s, const struct larder__child_spec *spec,
                        struct larder__child **ret, char *err, size_t errlen);

pid_t larder__child_pid(const struct larder__child *c);

/* Sends sig to the child's whole process group (nothing once it was reaped). 0 or
 * negative errno. */
int larder__child_signal(struct larder__child *c, int sig);

/* Waits up to timeout_ms (0: no wait, -1: forever) for the child to exit. True when it
 * has exited; then *status (may be NULL) gets its waitpid status. */
bool larder__child_wait(struct larder__child *c, int timeout_ms, int *status);

/* SIGTERM to the group, then SIGKILL to the group if it has not exited after
 * timeout_ms; returns once it is reaped, with its waitpid status. */
int larder__child_stop(struct larder__child *c, int timeout_ms);

/* Stops the child if it still runs (SIGKILL to the group at once), waits until it is
 * reaped and its on_exit has returned, and frees it. Accepts NULL; returns NULL. */
struct larder__child *larder__child_free(struct larder__child *c);

/* Memory of the child's whole process tree (the child and every descendant). */
struct larder__child_mem {
    uint64_t rss;     /* bytes, sum of VmRSS */
    uint64_t pss;     /* bytes, sum of Pss from smaps_rollup; 0 when not readable */
    unsigned procs;   /* processes counted */
};

/* Fills m; -ESRCH once the child has exited. */
int larder__child_memory(const struct larder__child *c, struct larder__child_mem *m);

/* The memory of every child still running, each one's tree: PSS where readable, else
 * RSS, summed (bytes). */
uint64_t larder__children_memory(struct larder__children *s);

/* Same, for any process id (its tree). */
int larder__proc_tree_memory(pid_t pid, struct larder__child_mem *m);

/* The pids of a process's tree: root first, then its descendants, into *ret_pids
 * (malloc'ed; free it), their number into *ret_n. -ESRCH when root is gone. */
int larder__proc_tree(pid_t root, pid_t **ret_pids, size_t *ret_n);

/* Device memory of a process tree on each GPU, through the manager's NVML
 * (larder_gpu_process_bytes): bytes[i] for the first n_gpus GPUs, total their sum. */
struct larder__tree_gpu {
    unsigned n_gpus;
    uint64_t total;
    uint64_t bytes[LARDER_MAX_GPUS];
};

/* Fills g. Errors: -ESRCH (root gone), -ENOTSUP (no GPU, or NVML without per-process
 * figures: the figure is unknown), and those of larder_gpu_process_bytes. */
int larder__proc_tree_gpu(larder *mgr, pid_t root, struct larder__tree_gpu *g);

/* A process's start time (clock ticks since boot, field 22 of /proc/PID/stat), or 0. */
uint64_t larder__proc_start_time(pid_t pid);

/* A human text for a waitpid status: "exited with status 3", "killed by signal 11
 * (SIGSEGV)". */
void larder__child_status_text(int status, char *buf, size_t len);

#endif
