/* larderd external models: a command that serves HTTP, started on demand, health-checked,
 * reverse-proxied (proxy.h), stopped when idle (DESIGN.md section 5).
 *
 * An external model is a larder component like any other, with a class of its own rather
 * than a plugin's: its load starts the command on a free loopback port (or the port its
 * proxy URL names) and polls its health path until it answers 200, bounded by the model's
 * load timeout; an early exit fails the load with the child's last output lines. Its
 * measure is the child's process-tree RSS, sampled again while it runs; its unload stops
 * the child's process group (SIGTERM, SIGKILL after stop_timeout). The child's stdout and
 * stderr go to larderd's log line by line (each line cut at 2 KiB), and the last lines are
 * kept for error messages.
 *
 * A child that dies while loaded is reported: requests in flight on it get 502, the
 * component is unloaded and its next load fails with the cause (so it is FAILED, with the
 * usual cooldown), and the load after the cooldown starts it again.
 *
 * Threads: every function may be called from any thread.
 */
#ifndef LARDER_DAEMON_EXTERNAL_H
#define LARDER_DAEMON_EXTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "children.h"
#include "config.h"
#include "larder/larder.h"

struct larder__daemon;
struct larder__ext_run;

/* The class of every external model. */
const struct larder_class *larder__ext_class(void);

/* Userdata of one external model for larder_define(): a copy of what the class needs
 * (m must be external). Free it with larder__ext_ud_free. NULL on ENOMEM. */
void *larder__ext_ud_new(struct larder__daemon *d, const struct larder__config *c,
                         const struct larder__model_conf *m);
void larder__ext_ud_free(void *ud);

/* The running external model a lease holds, or NULL when the lease's model is not an
 * external one (a fallback that runs in-process, say). Valid while the lease is held. */
struct larder__ext_run *larder__ext_of_lease(const larder_lease *lease);

/* Where the proxy connects: host (numeric or a name), port, and the base URL's path
 * ("" or "/prefix", no trailing '/'). Strings owned by x. */
void larder__ext_target(const struct larder__ext_run *x, const char **ret_host,
                        unsigned *ret_port, const char **ret_prefix);

/* True when the child has exited; its cause ("killed by signal 9 (Killed)", "exited with
 * status 1", with its last output lines) into buf. */
bool larder__ext_dead(struct larder__ext_run *x, char *buf, size_t len);

/* Kept-alive connections to the child (at most 16 idle, closed when the model stops):
 * take returns an idle one that the child has not closed meanwhile, or -1 when there is
 * none; give hands back one whose last exchange ended cleanly (a complete response that
 * allowed keep-alive), or closes it when the pool is full or the model is stopping.
 * The caller holds a lease on the model meanwhile. */
int larder__ext_conn_take(struct larder__ext_run *x);
void larder__ext_conn_give(struct larder__ext_run *x, int fd);

/* The child's pid (0 when none). */
int larder__ext_pid(const struct larder__ext_run *x);

/* Whether d has an external model running now. */
bool larder__ext_running(const struct larder__daemon *d);

/* Samples the process-tree RSS of each of d's running children into its component's
 * measured size (larder_update_measured: the reservation grows with it; past the budget
 * a warning is logged and the manager sheds). Any thread but a child's own (it may
 * run an eviction's unload); larderd runs it on its admin pool once a second. */
void larder__ext_sample(struct larder__daemon *d);

/* The last sample of the device memory of model `name`'s process tree (taken by
 * larder__ext_sample), into *ret: true when known. */
bool larder__ext_gpu(const struct larder__daemon *d, const char *name,
                     struct larder__tree_gpu *ret);

/* Ends every running child (larderd's shutdown, after the manager has closed: a safety
 * net for children whose unload did not run). */
void larder__ext_stop_all(void);

#endif
