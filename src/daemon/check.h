/* `larder check CONFIG`: validates a config without loading any model.
 *
 * Checks the file (syntax, keys, values), the token files, every model's backend (the
 * plugin is opened to validate the model's backend options with the plugin's own
 * check), model files, and sizes against the budget: a model larger than the whole
 * budget, or pinned and preloaded models that do not fit together, are errors.
 *
 * Threads: call from one thread.
 */
#ifndef LARDER_DAEMON_CHECK_H
#define LARDER_DAEMON_CHECK_H

#include <stdio.h>

/* Writes findings to out, one per line. Returns the number of errors (0: valid), or a
 * negative errno when the file could not be read at all. */
int larder__check_config(const char *file, FILE *out);

#endif
