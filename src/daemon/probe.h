/* larderd's probe: the config validation of `larder check` (check.h), run in a child
 * process so that the daemon never maps a backend's engine to validate options or to ask
 * for an estimate.
 *
 * At start-up and at each reload the daemon runs itself as a child (`/proc/self/exe
 * [SUBCOMMAND] --probe CONFIG`, posix_spawn, no shell). The child loads the config, opens
 * each backend a model names once, runs larder__validate and writes one JSON document on
 * stdout:
 *
 *   {"findings": [{"severity": "error"|"warning"|"note", "soft": bool, "file": ...,
 *                  "line": N, "section": ..., "key": ..., "message": ...}, ...],
 *    "models": {"NAME": {"bytes": N, "source": "backend"|"memory"|"file"}, ...}}
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

#include <stddef.h>

#include "check.h"
#include "config.h"

#define LARDER__PROBE_MAX_OUTPUT (64u << 20)

/* The child's side: validates `file` and writes the document on stdout. Returns the
 * process exit status: 0 when a document was written (whatever it found), else 1. */
int larder__probe_main(const char *file);

/* The parent's side: probes config c (already loaded from c->file). prog is the command
 * that runs the daemon, as larder__daemon_main got it ("larderd", or "larder serve": the
 * words after the first are the subcommand to repeat before --probe). On success
 * *ret_report has one estimate per model of c, matched by name (a model the probe did
 * not report has none). Errors: negative errno, the cause in err (-ECHILD: the probe
 * failed; -ETIMEDOUT: it hung). */
int larder__probe_config(const char *prog, const struct larder__config *c,
                         struct larder__report **ret_report, char *err, size_t errlen);

#endif
