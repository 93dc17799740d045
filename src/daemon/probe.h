/* larderd's probe: the config validation of `larder check` (check.h), run in a child
 * process so that the daemon never maps a backend's engine to validate options or to ask
 * for an estimate.
 *
 * At start-up and at each reload the daemon validates the config in a child, which opens
 * each backend a model names once, runs larder__validate and writes one JSON document:
 *
 *   {"findings": [{"severity": "error"|"warning"|"note", "soft": bool, "file": ...,
 *                  "line": N, "section": ..., "key": ..., "message": ...}, ...],
 *    "models": {"NAME": {"bytes": N, "source": "backend"|"memory"|"file"}, ...}}
 *
 * Two ways to get the child: at start-up, before any thread exists, a plain fork() that
 * validates the config the daemon has already parsed (no exec, no second parse); at a
 * reload, when threads run and fork() without exec would be unsafe, the daemon runs itself
 * (`/proc/self/exe [SUBCOMMAND] --probe CONFIG`, posix_spawn, no shell; the hidden
 * option reaches larder__probe_main), signals unblocked and at their defaults. Either
 * child dies with the daemon (PR_SET_PDEATHSIG) and is named larderd-probe.
 *
 * The parent reads at most LARDER__PROBE_MAX_OUTPUT bytes within a deadline (60 s, or
 * $LARDER_PROBE_TIMEOUT as a duration such as "5s"); a probe that hangs, crashes, writes
 * too much or writes no JSON is killed and reported as an error naming the cause. Its
 * stderr is logged, one warning per line. A config without models is validated in the
 * daemon itself, with no child: nothing to open.
 *
 * Threads: any thread; the daemon runs one probe at a time (start-up, then reloads under
 * their lock).
 */
#ifndef LARDER_DAEMON_PROBE_H
#define LARDER_DAEMON_PROBE_H

#include <stdbool.h>
#include <stddef.h>

#include "check.h"
#include "config.h"

#define LARDER__PROBE_MAX_OUTPUT (64u << 20)

struct larder__probe;

/* The child's side of the exec'd probe: loads and validates `file` and writes the
 * document on stdout. Returns the process exit status: 0 when a document was written
 * (whatever it found), else 1. */
int larder__probe_main(const char *file);

/* Starts probing config c (loaded from c->file), so that the caller can work while the
 * child does. single_threaded: the calling process runs no other thread (the child is then
 * forked); else prog is the command that runs the daemon, as larder__daemon_main got it
 * ("larderd", or "larder serve": the words after the first are the subcommand to repeat
 * before --probe). *ret_probe is NULL when c has no models (no child needed). Errors:
 * negative errno, message in err. */
int larder__probe_start(const char *prog, const struct larder__config *c, bool single_threaded,
                        struct larder__probe **ret_probe, char *err, size_t errlen);

/* Waits for the probe p of c (NULL: validates c here) and frees it. On success
 * *ret_report has one estimate per model of c, matched by name (a model the probe did not
 * report has none). Errors: negative errno, the cause in err (-ECHILD: the probe crashed
 * or failed; -ETIMEDOUT: it hung and was killed; -EFBIG, -EBADMSG: its output). */
int larder__probe_finish(struct larder__probe *p, const struct larder__config *c,
                         struct larder__report **ret_report, char *err, size_t errlen);

/* Start and finish, the child run as `prog --probe` (safe with threads). */
int larder__probe_config(const char *prog, const struct larder__config *c,
                         struct larder__report **ret_report, char *err, size_t errlen);

#endif
