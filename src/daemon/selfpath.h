/* Where the running program lies, and so which backend plugins go with it: a program of
 * the build tree uses the build tree's plugins, an installed one the installed plugins.
 *
 * Threads: both functions may be called from any thread.
 */
#ifndef LARDER_DAEMON_SELFPATH_H
#define LARDER_DAEMON_SELFPATH_H

#include <stdbool.h>

/* True when the running executable (/proc/self/exe, links resolved) lies below `dir`
 * (links resolved too). False when either cannot be resolved. */
bool larder__self_under(const char *dir);

/* The backend directory that goes with the running program, never NULL:
 * - LARDER_BUILD_BACKEND_DIR when the program lies in the build tree (LARDER_BUILD_ROOT);
 * - else LARDER_BACKEND_DIR_FROM_BINDIR taken from the program's own directory, when that
 *   directory exists (an installed program, also under a DESTDIR or a moved prefix);
 * - else LARDER_INSTALL_BACKEND_DIR, the configured prefix's.
 * Computed once. */
const char *larder__default_backend_dir(void);

/* The larder-worker executable that goes with the running program, never NULL:
 * $LARDER_WORKER when set; the build tree's for a program of the build tree; else the
 * one beside the program (both are installed in bindir); else the configured prefix's.
 * Computed once. */
const char *larder__worker_path(void);

#endif
