/* Policy comparison: replays every trace under every policy at every budget, then prints
 * tables, checks the targets and draws the chart.
 *
 * Threads: report_run() replays on several threads of its own; the rest runs on the
 * caller's thread. Errors are negative errno values.
 */
#ifndef LARDER_BENCH_REPORT_H
#define LARDER_BENCH_REPORT_H

#include "replay.h"
#include "trace.h"

#include <stdio.h>

#define REPORT_MAX_BUDGETS 8
#define REPORT_MAX_POLICIES 16

/* A budget: pct percent of the trace's total size when pct > 0, else `bytes`. */
struct report_budget {
    double pct;
    uint64_t bytes;
};

struct report {
    struct trace **traces; /* owned: freed by report_free() */
    size_t ntraces;
    struct report_budget budgets[REPORT_MAX_BUDGETS];
    size_t nbudgets;
    const char *policies[REPORT_MAX_POLICIES]; /* names for bench_policy_find() */
    size_t npolicies;
    size_t ref;                  /* index of the reference policy; npolicies when absent */
    struct replay_result *res;   /* [trace][budget][policy], filled by report_run() */
    uint64_t *bytes;             /* [trace][budget]: the budget in bytes */
};

/* Fills what is unset: the budgets (pcts, n of them) and the policies (every one of
 * bench_policy_names), and finds the reference. */
void report_defaults(struct report *r, const double *pcts, size_t n);
/* Runs every replay. Errors: -EINVAL (unknown policy), -ENOMEM, a replay's error. */
int report_run(struct report *r);
/* Full markdown table: per trace and budget, each policy's figures and their ratio to
 * the reference. */
void report_markdown(const struct report *r, FILE *f);
/* Compact table: cold-load time of each policy relative to the reference. */
void report_summary(const struct report *r, FILE *f);
/* Checks the targets of the cost policy and prints each check; returns how many failed. */
int report_targets(const struct report *r, FILE *f);
/* One line, "summary: ...": cost against lru and the reference over every trace and
 * budget (geometric means and worst cases), and the number of targets missed. */
void report_headline(const struct report *r, int missed, FILE *f);
/* Writes dir/policy-TRACE.dat and dir/policy.gp, and runs gnuplot to draw dir/policy.png;
 * says on `log` what it did. Errors: -errno of a failed write; a missing gnuplot is only
 * reported. */
int report_chart(const struct report *r, const char *dir, FILE *log);
/* Frees the traces and results (not r itself). */
void report_free(struct report *r);

#endif
