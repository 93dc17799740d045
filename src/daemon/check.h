/* Validation of a config without loading any model: what `larder check CONFIG` prints
 * and what larderd's probe child (probe.h) reports to a starting or reloading daemon.
 * Both run larder__validate, so they agree by construction.
 *
 * Checks the token files, every model's backend (the plugin is opened, once per backend,
 * to match the model's backend option keys against the plugin's list, with a "did you
 * mean" for a near miss, and to run the plugin's own check), model files, and sizes
 * against the budget: a model larger than the whole budget, pinned and preloaded models
 * that do not fit together, and a budget larger than the machine's memory or the cgroup
 * limit are "soft" errors: errors for `larder check`, warnings for a daemon.
 *
 * Opening plugins maps their engines into the calling process: larderd itself never
 * calls larder__validate on a config with models (its probe child does).
 *
 * Threads: call from one thread.
 */
#ifndef LARDER_DAEMON_CHECK_H
#define LARDER_DAEMON_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

enum larder__severity {
    LARDER__SEV_NOTE = 0,
    LARDER__SEV_WARNING,
    LARDER__SEV_ERROR,
};

/* One finding. Any string may be NULL (line 0: none) except message. */
struct larder__finding {
    enum larder__severity severity;
    bool soft;     /* an error for `larder check`, a warning for a running daemon */
    char *file;
    unsigned line;
    char *section; /* "model.NAME", "memory", ... */
    char *key;
    char *message;
};

/* What a model is expected to take before it loads. */
struct larder__estimate {
    uint64_t bytes;
    const char *source; /* static: "memory", "backend", "file"; NULL = unknown */
};

struct larder__report {
    struct larder__finding *findings;
    size_t n_findings, cap;
    struct larder__estimate *estimates; /* one per model of the config, in its order */
    size_t n_estimates;
    uint64_t budget;
    const char *budget_basis;           /* static */
};

/* Validates a loaded config. On success *ret_report holds every finding (free it with
 * larder__report_free). Errors: -ENOMEM. */
int larder__validate(const struct larder__config *c, struct larder__report **ret_report);

/* An empty report for n estimates, or NULL on ENOMEM. */
struct larder__report *larder__report_new(size_t n_estimates);
struct larder__report *larder__report_free(struct larder__report *r);

/* A larder__config_report_fn that appends each config error to the larder__report
 * `report` as an error finding (file, line, section, key and message kept apart). */
void larder__report_config_error(void *report, const struct larder__config_error *e);

/* Appends a finding (strings copied; message printf-style). Errors: -ENOMEM. */
int larder__report_add(struct larder__report *r, enum larder__severity severity, bool soft,
                       const char *file, unsigned line, const char *section, const char *key,
                       const char *fmt, ...) __attribute__((format(printf, 8, 9)));

/* How a finding counts: as an error for `larder check` (strict), and as a warning only,
 * for a daemon, when it is soft. */
enum larder__severity larder__finding_severity(const struct larder__finding *f, bool strict);

/* The number of findings that are errors (strict: soft ones included). */
size_t larder__report_errors(const struct larder__report *r, bool strict);

/* Writes "FILE:LINE: [SECTION] KEY: MESSAGE", leaving out the parts a finding lacks. */
void larder__finding_format(const struct larder__finding *f, char *buf, size_t len);

/* `larder check`: writes findings to out, one per line, every error, then a summary.
 * Returns the number of errors (0: valid), or a negative errno when the file could not
 * be read at all. */
int larder__check_config(const char *file, FILE *out);

#endif
