/* bench_policy: compares eviction policies by replaying request traces.
 *
 *   bench_policy [--out DIR] [--seed N] [--hours H] [--check] [--no-chart]
 *       Generates the standard traces (written to DIR/traces), replays each under every
 *       policy at several budgets, prints the comparison and the targets, and writes
 *       DIR/policy.md (full table), DIR/policy-*.dat, DIR/policy.gp and DIR/policy.png.
 *       --check: exit status 1 when a target is missed.
 *   bench_policy gen NAME|KIND [--seed N] [--hours H] [--rate R] [--s S] [--burst N]
 *                    [--think S] [--shift-min M] [--comps N] [--pipelines N]
 *       Writes one trace to standard output.
 *   bench_policy replay [--budget SIZE|PCT%]... [--policy NAME]... TRACE...
 *       Replays trace files and prints the markdown table.
 */
#include "baselines.h"
#include "gen.h"
#include "replay.h"
#include "report.h"
#include "trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const double standard_budgets[] = {25, 35, 50, 75};

static int usage(void)
{
    fputs("usage: bench_policy [--out DIR] [--seed N] [--hours H] [--check] [--no-chart]\n"
          "       bench_policy gen NAME|KIND [--seed N] [--hours H] [--rate R] [--s S]\n"
          "                    [--burst N] [--think S] [--shift-min M] [--comps N]\n"
          "                    [--pipelines N]\n"
          "       bench_policy replay [--budget SIZE|PCT%]... [--policy NAME]... TRACE...\n",
          stderr);
    return 2;
}

static int parse_double(const char *s, double *ret)
{
    char *end;

    if (!s)
        return -EINVAL;
    errno = 0;
    *ret = strtod(s, &end);
    return end == s || *end || errno ? -EINVAL : 0;
}

/* ---- gen ------------------------------------------------------------------------------ */

/* Applies one "--option value" pair to p; returns -EINVAL when unknown or malformed. */
static int gen_option(struct gen_params *p, const char *opt, const char *val)
{
    static const char *const names[] = {"--hours", "--rate", "--s", "--shift-min", "--burst",
                                        "--think"};
    double *fields[] = {&p->hours, &p->rate, &p->zipf_s, &p->shift_min, &p->burst, &p->think};
    double v;

    if (parse_double(val, &v) < 0)
        return -EINVAL;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(opt, names[i]) == 0) {
            *fields[i] = v;
            return 0;
        }
    }
    if (v < 0 || v > 1e9 || v != (double)(uint64_t)v)
        return -EINVAL;
    if (strcmp(opt, "--seed") == 0)
        p->seed = (uint64_t)v;
    else if (strcmp(opt, "--comps") == 0 && v >= 1 && v <= 10000)
        p->ncomps = (unsigned)v;
    else if (strcmp(opt, "--pipelines") == 0)
        p->pipelines = (unsigned)v;
    else
        return -EINVAL;
    return 0;
}

static int cmd_gen(int argc, char **argv)
{
    struct gen_params p;
    struct trace *t;
    int rc;

    if (argc < 1)
        return usage();
    if (gen_defaults(argv[0], &p) < 0) {
        gen_defaults("zipf-0.8", &p);
        p.kind = argv[0];
    }
    for (int i = 1; i < argc; i += 2)
        if (i + 1 >= argc || gen_option(&p, argv[i], argv[i + 1]) < 0)
            return usage();
    if ((rc = gen_trace(&p, argv[0], &t)) < 0) {
        fprintf(stderr, "gen: %s\n", strerror(-rc));
        return 1;
    }
    rc = trace_write(t, stdout);
    trace_free(t);
    return rc < 0 ? 1 : 0;
}

/* ---- replay --------------------------------------------------------------------------- */

/* "25%" -> a fraction of the trace's total size; anything else is a size in bytes. */
static int parse_budget(const char *s, struct report_budget *ret)
{
    size_t n = strlen(s);
    char buf[32];
    double pct;

    if (n > 1 && n < sizeof(buf) && s[n - 1] == '%') {
        memcpy(buf, s, n - 1);
        buf[n - 1] = '\0';
        if (parse_double(buf, &pct) < 0 || !(pct > 0))
            return -EINVAL;
        *ret = (struct report_budget){.pct = pct};
        return 0;
    }
    *ret = (struct report_budget){0};
    if (trace_parse_size(s, &ret->bytes) < 0 || ret->bytes == 0)
        return -EINVAL;
    return 0;
}

static int load_traces(char **paths, int n, struct trace **traces)
{
    char err[256];

    for (int i = 0; i < n; i++) {
        if (trace_load(paths[i], &traces[i], err, sizeof(err)) < 0) {
            fprintf(stderr, "%s: %s\n", paths[i], err);
            return -EINVAL;
        }
    }
    return 0;
}

static int cmd_replay(int argc, char **argv)
{
    struct report rep = {0};
    struct bench_policy bp;
    int i, rc;

    for (i = 0; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (strcmp(argv[i], "--budget") == 0 && rep.nbudgets < REPORT_MAX_BUDGETS &&
            parse_budget(argv[i + 1], &rep.budgets[rep.nbudgets]) == 0)
            rep.nbudgets++;
        else if (strcmp(argv[i], "--policy") == 0 && rep.npolicies < REPORT_MAX_POLICIES &&
                 bench_policy_find(argv[i + 1], &bp))
            rep.policies[rep.npolicies++] = argv[i + 1];
        else
            return usage();
    }
    if (i >= argc)
        return usage();
    report_defaults(&rep, standard_budgets, sizeof(standard_budgets) / sizeof(double));
    rep.ntraces = (size_t)(argc - i);
    rep.traces = calloc(rep.ntraces, sizeof(*rep.traces));
    if (!rep.traces || load_traces(argv + i, argc - i, rep.traces) < 0) {
        rc = -ENOMEM;
    } else if ((rc = report_run(&rep)) < 0) {
        fprintf(stderr, "replay: %s\n", strerror(-rc));
    } else {
        report_markdown(&rep, stdout);
        report_targets(&rep, stdout);
    }
    report_free(&rep);
    return rc < 0 ? 1 : 0;
}

/* ---- standard run --------------------------------------------------------------------- */

struct standard {
    const char *out;
    uint64_t seed;
    double hours; /* 0 = each trace's own length */
    bool check;
    bool chart;
};

/* Generates the standard trace `name`, writes it under dir, and reads it back: what is
 * replayed is exactly what the file says. */
static int standard_trace(const struct standard *o, const char *dir, const char *name,
                          struct trace **ret)
{
    struct gen_params p;
    struct trace *t;
    char path[4096], err[256];
    FILE *f;
    int rc;

    gen_defaults(name, &p);
    p.seed = o->seed;
    if (o->hours > 0)
        p.hours = o->hours;
    if ((rc = gen_trace(&p, name, &t)) < 0)
        return rc;
    if (snprintf(path, sizeof(path), "%s/%s.trace", dir, name) >= (int)sizeof(path)) {
        trace_free(t);
        return -ENAMETOOLONG;
    }
    f = fopen(path, "w");
    rc = f ? trace_write(t, f) : -errno;
    if (f && fclose(f) != 0 && rc == 0)
        rc = -EIO;
    trace_free(t);
    if (rc == 0 && (rc = trace_load(path, ret, err, sizeof(err))) < 0)
        fprintf(stderr, "%s: %s\n", path, err);
    return rc;
}

static int make_dirs(const char *out, char *traces, size_t len)
{
    if (snprintf(traces, len, "%s/traces", out) >= (int)len)
        return -ENAMETOOLONG;
    if (mkdir(out, 0777) < 0 && errno != EEXIST)
        return -errno;
    if (mkdir(traces, 0777) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int standard_write(const struct standard *o, const struct report *rep)
{
    char path[4096];
    FILE *f;

    if (snprintf(path, sizeof(path), "%s/policy.md", o->out) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    if (!(f = fopen(path, "w")))
        return -errno;
    report_markdown(rep, f);
    report_targets(rep, f);
    fclose(f);
    printf("full table: %s\n", path);
    if (o->chart)
        report_chart(rep, o->out, stdout);
    return 0;
}

static int standard_parse(int argc, char **argv, struct standard *o)
{
    double v;

    *o = (struct standard){.out = "bench/out", .seed = 1, .chart = true};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--check") == 0)
            o->check = true;
        else if (strcmp(argv[i], "--no-chart") == 0)
            o->chart = false;
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            o->out = argv[++i];
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc &&
                 parse_double(argv[++i], &v) == 0 && v >= 0)
            o->seed = (uint64_t)v;
        else if (strcmp(argv[i], "--hours") == 0 && i + 1 < argc &&
                 parse_double(argv[++i], &v) == 0 && v > 0)
            o->hours = v;
        else
            return -EINVAL;
    }
    return 0;
}

static int cmd_standard(int argc, char **argv)
{
    struct standard o;
    struct report rep = {0};
    char dir[4096];
    int rc, missed = 0;

    if (standard_parse(argc, argv, &o) < 0)
        return usage();
    if ((rc = make_dirs(o.out, dir, sizeof(dir))) < 0) {
        fprintf(stderr, "%s: %s\n", o.out, strerror(-rc));
        return 1;
    }
    report_defaults(&rep, standard_budgets, sizeof(standard_budgets) / sizeof(double));
    while (gen_standard[rep.ntraces])
        rep.ntraces++;
    rep.traces = calloc(rep.ntraces, sizeof(*rep.traces));
    rc = rep.traces ? 0 : -ENOMEM;
    for (size_t i = 0; i < rep.ntraces && rc == 0; i++)
        rc = standard_trace(&o, dir, gen_standard[i], &rep.traces[i]);
    if (rc == 0 && (rc = report_run(&rep)) == 0) {
        report_summary(&rep, stdout);
        missed = report_targets(&rep, stdout);
        rc = standard_write(&o, &rep);
        report_headline(&rep, missed, stdout);
    }
    if (rc < 0)
        fprintf(stderr, "bench_policy: %s\n", strerror(-rc));
    report_free(&rep);
    return rc < 0 ? 1 : o.check && missed ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "gen") == 0)
        return cmd_gen(argc - 2, argv + 2);
    if (argc > 1 && strcmp(argv[1], "replay") == 0)
        return cmd_replay(argc - 2, argv + 2);
    if (argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0))
        return usage() - 2;
    return cmd_standard(argc - 1, argv + 1);
}
