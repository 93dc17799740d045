/* Policy comparison: runs, tables, targets, chart (see report.h). */
#include "report.h"

#include "baselines.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 8

/* Targets: on these traces at these budgets, cost <= TARGET_REF x the reference, and
 * <= TARGET_LRU x lru wherever lru > LRU_BAD x the reference. Everywhere: cost <= lru. */
static const char *const target_traces[] = {"zipf-0.8", "zipf-1.2", "pipeline", NULL};
static const double target_pcts[] = {25, 50};
#define TARGET_REF 1.25
#define TARGET_LRU 0.8
#define LRU_BAD 1.5

void report_defaults(struct report *r, const double *pcts, size_t n)
{
    if (r->nbudgets == 0)
        for (size_t i = 0; i < n && i < REPORT_MAX_BUDGETS; i++)
            r->budgets[r->nbudgets++] = (struct report_budget){.pct = pcts[i]};
    if (r->npolicies == 0)
        for (size_t i = 0; bench_policy_names[i] && i < REPORT_MAX_POLICIES; i++)
            r->policies[r->npolicies++] = bench_policy_names[i];
    for (r->ref = 0; r->ref < r->npolicies; r->ref++)
        if (strcmp(r->policies[r->ref], bench_reference) == 0)
            break;
}

static const struct replay_result *result(const struct report *r, size_t t, size_t b, size_t p)
{
    return &r->res[(t * r->nbudgets + b) * r->npolicies + p];
}

static uint64_t budget_bytes(const struct report_budget *b, const struct trace *t)
{
    if (b->pct > 0)
        return (uint64_t)((double)trace_total_bytes(t) * b->pct / 100.0);
    return b->bytes;
}

/* ---- running -------------------------------------------------------------------------- */

struct job_queue {
    struct report *r;
    atomic_size_t next;
    atomic_int error;
};

static int run_one(struct report *r, size_t job)
{
    size_t p = job % r->npolicies, b = job / r->npolicies % r->nbudgets;
    size_t t = job / r->npolicies / r->nbudgets;
    struct bench_policy bp;

    if (!bench_policy_find(r->policies[p], &bp))
        return -EINVAL;
    struct replay_opts o = {.budget = r->bytes[t * r->nbudgets + b], .policy = bp.policy,
                            .oracle = bp.oracle};
    return replay_run(r->traces[t], &o, &r->res[job]);
}

static void *worker(void *arg)
{
    struct job_queue *q = arg;
    size_t total = q->r->ntraces * q->r->nbudgets * q->r->npolicies, job;
    int expected = 0;

    while ((job = atomic_fetch_add(&q->next, 1)) < total) {
        int rc = run_one(q->r, job);

        if (rc < 0)
            atomic_compare_exchange_strong(&q->error, &expected, rc);
    }
    return NULL;
}

int report_run(struct report *r)
{
    size_t njobs = r->ntraces * r->nbudgets * r->npolicies;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    size_t nthreads = ncpu < 1 ? 1 : ncpu > MAX_THREADS ? MAX_THREADS : (size_t)ncpu;
    struct job_queue q = {.r = r};
    pthread_t th[MAX_THREADS];
    size_t started = 0;

    atomic_init(&q.next, 0);
    atomic_init(&q.error, 0);
    r->res = calloc(njobs ? njobs : 1, sizeof(*r->res));
    r->bytes = calloc(r->ntraces * r->nbudgets + 1, sizeof(*r->bytes));
    if (!r->res || !r->bytes)
        return -ENOMEM;
    for (size_t t = 0; t < r->ntraces; t++)
        for (size_t b = 0; b < r->nbudgets; b++)
            r->bytes[t * r->nbudgets + b] = budget_bytes(&r->budgets[b], r->traces[t]);
    for (; started < nthreads; started++)
        if (pthread_create(&th[started], NULL, worker, &q) != 0)
            break;
    if (started == 0)
        worker(&q);
    for (size_t i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    return atomic_load(&q.error);
}

void report_free(struct report *r)
{
    for (size_t i = 0; r->traces && i < r->ntraces; i++)
        trace_free(r->traces[i]);
    free(r->traces);
    free(r->res);
    free(r->bytes);
    r->traces = NULL;
    r->res = NULL;
    r->bytes = NULL;
}

/* ---- tables --------------------------------------------------------------------------- */

static double hit_ratio(const struct replay_result *x)
{
    return x->requests ? (double)x->hits / (double)x->requests : 0;
}

/* Writes "a / b" with two decimals into buf, or "-" when there is no reference. */
static const char *ratio(char buf[32], double a, double b, bool have_ref)
{
    if (!have_ref || !(b > 0))
        snprintf(buf, 32, "-");
    else
        snprintf(buf, 32, "%.2f", a / b);
    return buf;
}

static void budget_label(char buf[48], const struct report *r, size_t t, size_t b)
{
    double gib = (double)r->bytes[t * r->nbudgets + b] / 1073741824.0;

    if (r->budgets[b].pct > 0)
        snprintf(buf, 48, "%g%% (%.2f GiB)", r->budgets[b].pct, gib);
    else
        snprintf(buf, 48, "%.2f GiB", gib);
}

static void markdown_row(const struct report *r, size_t t, size_t b, size_t p, FILE *f)
{
    const struct replay_result *x = result(r, t, b, p);
    const struct replay_result *ref = r->ref < r->npolicies ? result(r, t, b, r->ref) : x;
    bool have = r->ref < r->npolicies;
    char lab[48], c1[32], c2[32], c3[32];

    budget_label(lab, r, t, b);
    fprintf(f, "| %s | %s | %.1f | %s | %.4f | %s | %llu | %s | %.1f |%s\n", lab,
            r->policies[p], x->cold_s, ratio(c1, x->cold_s, ref->cold_s, have), hit_ratio(x),
            ratio(c2, hit_ratio(x), hit_ratio(ref), have), (unsigned long long)x->evictions,
            ratio(c3, (double)x->evictions, (double)ref->evictions, have), x->wait_s,
            x->rejected ? " rejected" : "");
}

void report_markdown(const struct report *r, FILE *f)
{
    for (size_t t = 0; t < r->ntraces; t++) {
        const struct trace *tr = r->traces[t];

        fprintf(f, "\n### %s: %zu components, %.2f GiB in all, %zu requests\n\n", tr->name,
                tr->ncomps, (double)trace_total_bytes(tr) / 1073741824.0, tr->nreqs);
        fprintf(f, "| budget | policy | cold-load s | x ref | hit ratio | x ref | evictions "
                   "| x ref | wait s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for (size_t b = 0; b < r->nbudgets; b++)
            for (size_t p = 0; p < r->npolicies; p++)
                markdown_row(r, t, b, p, f);
    }
    if (r->ref < r->npolicies)
        fprintf(f, "\nx ref: the figure divided by the same figure of `%s`.\n",
                r->policies[r->ref]);
}

void report_summary(const struct report *r, FILE *f)
{
    bool have = r->ref < r->npolicies;
    char buf[32];

    fprintf(f, "cold-load seconds %s (lower is better)\n\n%-10s %6s %11s", have ?
            "relative to the reference" : "", "trace", "budget", have ? "ref s" : "");
    for (size_t p = 0; p < r->npolicies; p++)
        fprintf(f, " %12s", r->policies[p]);
    fputc('\n', f);
    for (size_t t = 0; t < r->ntraces; t++) {
        for (size_t b = 0; b < r->nbudgets; b++) {
            const struct replay_result *ref = have ? result(r, t, b, r->ref) : NULL;

            fprintf(f, "%-10s %5g%% ", r->traces[t]->name, r->budgets[b].pct);
            if (ref)
                fprintf(f, "%11.0f", ref->cold_s);
            else
                fprintf(f, "%11s", "");
            for (size_t p = 0; p < r->npolicies; p++) {
                double v = result(r, t, b, p)->cold_s;

                if (ref)
                    fprintf(f, " %12s", ratio(buf, v, ref->cold_s, true));
                else
                    fprintf(f, " %12.0f", v);
            }
            fputc('\n', f);
        }
    }
}

/* ---- targets -------------------------------------------------------------------------- */

static size_t policy_index(const struct report *r, const char *name)
{
    for (size_t p = 0; p < r->npolicies; p++)
        if (strcmp(r->policies[p], name) == 0)
            return p;
    return r->npolicies;
}

static bool is_target(const struct report *r, size_t t, size_t b)
{
    bool trace = false, pct = false;

    for (size_t i = 0; target_traces[i]; i++)
        trace |= strcmp(r->traces[t]->name, target_traces[i]) == 0;
    for (size_t i = 0; i < sizeof(target_pcts) / sizeof(target_pcts[0]); i++)
        pct |= r->budgets[b].pct == target_pcts[i];
    return trace && pct;
}

/* Prints one check; returns 1 when it failed. */
static int check(FILE *f, bool ok, const char *trace, double pct, const char *what, double v,
                 double limit)
{
    fprintf(f, "  %-4s %-10s %3g%%  %-38s %.3f (limit %.2f)\n", ok ? "ok" : "MISS", trace, pct,
            what, v, limit);
    return ok ? 0 : 1;
}

static int targets_at(const struct report *r, size_t t, size_t b, size_t cost, size_t lru,
                      FILE *f)
{
    double c = result(r, t, b, cost)->cold_s, l = result(r, t, b, lru)->cold_s;
    const char *name = r->traces[t]->name;
    double pct = r->budgets[b].pct, ref = result(r, t, b, r->ref)->cold_s;
    int missed = check(f, c <= l, name, pct, "cost / lru (every trace)", l > 0 ? c / l : 1, 1);

    if (!is_target(r, t, b))
        return missed;
    if (check(f, c <= TARGET_REF * ref, name, pct, "cost / reference", c / ref, TARGET_REF)) {
        size_t oracle = policy_index(r, "oracle-rate");

        missed++;
        if (oracle < r->npolicies)
            fprintf(f, "       (oracle-rate, which knows every component's rate: %.3f)\n",
                    result(r, t, b, oracle)->cold_s / ref);
    }
    if (l > LRU_BAD * ref)
        missed += check(f, c <= TARGET_LRU * l, name, pct, "cost / lru (lru > 1.5 x reference)",
                        c / l, TARGET_LRU);
    return missed;
}

/* Says whether some policy needed less cold-load time than the reference. */
static int reference_beaten(const struct report *r, size_t t, size_t b, FILE *f)
{
    double ref = result(r, t, b, r->ref)->cold_s;
    int beaten = 0;

    for (size_t p = 0; p < r->npolicies; p++) {
        if (result(r, t, b, p)->cold_s < ref) {
            fprintf(f, "  note %-10s %3g%%  %s beats the reference (%.3f)\n", r->traces[t]->name,
                    r->budgets[b].pct, r->policies[p], result(r, t, b, p)->cold_s / ref);
            beaten = 1;
        }
    }
    return beaten;
}

int report_targets(const struct report *r, FILE *f)
{
    size_t cost = policy_index(r, "cost"), lru = policy_index(r, "lru");
    int missed = 0, beaten = 0;

    if (cost == r->npolicies || lru == r->npolicies || r->ref == r->npolicies) {
        fprintf(f, "\ntargets: not checked (needs cost, lru and %s)\n", bench_reference);
        return 0;
    }
    fprintf(f, "\ntargets (cold-load seconds):\n");
    for (size_t t = 0; t < r->ntraces; t++) {
        for (size_t b = 0; b < r->nbudgets; b++) {
            missed += targets_at(r, t, b, cost, lru, f);
            beaten += reference_beaten(r, t, b, f);
        }
    }
    fprintf(f, "targets: %s (%d missed); reference %s\n", missed ? "MISSED" : "all met", missed,
            beaten ? "beaten somewhere: too weak" : "never beaten");
    return missed;
}

void report_headline(const struct report *r, int missed, FILE *f)
{
    size_t cost = policy_index(r, "cost"), lru = policy_index(r, "lru"), n = 0;
    double log_lru = 0, log_ref = 0, worst_lru = 0, worst_ref = 0;

    if (cost == r->npolicies || lru == r->npolicies || r->ref == r->npolicies)
        return;
    for (size_t t = 0; t < r->ntraces; t++) {
        for (size_t b = 0; b < r->nbudgets; b++, n++) {
            double c = result(r, t, b, cost)->cold_s;
            double vs_lru = c / result(r, t, b, lru)->cold_s;
            double vs_ref = c / result(r, t, b, r->ref)->cold_s;

            log_lru += log(vs_lru);
            log_ref += log(vs_ref);
            worst_lru = fmax(worst_lru, vs_lru);
            worst_ref = fmax(worst_ref, vs_ref);
        }
    }
    fprintf(f, "summary: cost cold-load time x%.2f of lru (worst x%.2f), x%.2f of %s (worst "
               "x%.2f) over %zu runs; targets missed: %d\n", exp(log_lru / (double)n), worst_lru,
            exp(log_ref / (double)n), r->policies[r->ref], worst_ref, n, missed);
}

/* ---- chart ---------------------------------------------------------------------------- */

static int write_dat(const struct report *r, size_t t, const char *dir)
{
    char path[4096];
    FILE *f;

    if (snprintf(path, sizeof(path), "%s/policy-%s.dat", dir, r->traces[t]->name) >=
        (int)sizeof(path))
        return -ENAMETOOLONG;
    if (!(f = fopen(path, "w")))
        return -errno;
    fprintf(f, "budget_pct");
    for (size_t p = 0; p < r->npolicies; p++)
        fprintf(f, " %s", r->policies[p]);
    fputc('\n', f);
    for (size_t b = 0; b < r->nbudgets; b++) {
        fprintf(f, "%g", r->budgets[b].pct);
        for (size_t p = 0; p < r->npolicies; p++)
            fprintf(f, " %.3f", result(r, t, b, p)->cold_s);
        fputc('\n', f);
    }
    return fclose(f) == 0 ? 0 : -EIO;
}

/* Line style of a policy in the chart: references dashed, lru and cost thick. */
static void line_style(FILE *f, size_t i, const char *name)
{
    static const struct {
        const char *name, *color;
        int dash;
        double width;
    } known[] = {
        {"lru", "#7b1fa2", 1, 3},        {"cost", "#1b9e3e", 1, 3},
        {"gdsf", "#4fc3f7", 1, 1.5},     {"keepalive", "#ef6c00", 1, 1.5},
        {"largest", "#c9a400", 1, 1.5},  {"idle-load", "#1565c0", 1, 1.5},
        {"oracle-rate", "#e53935", 2, 2}, {"offline-load", "#757575", 3, 2},
        {"offline", "#000000", 2, 2},
    };
    static const char *const spare[] = {"#8d6e63", "#ec407a", "#26a69a", "#9e9d24"};

    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
        if (strcmp(known[k].name, name) == 0) {
            fprintf(f, "set style line %zu lc rgb '%s' dt %d lw %g pt 7 ps 0.8\n", i + 1,
                    known[k].color, known[k].dash, known[k].width);
            return;
        }
    }
    fprintf(f, "set style line %zu lc rgb '%s' dt 1 lw 1.5 pt 7 ps 0.8\n", i + 1, spare[i % 4]);
}

/* The chart: one panel per trace, policies as lines, and one legend for all below. */
static void write_gp(const struct report *r, FILE *f)
{
    size_t cols = r->ntraces < 3 ? r->ntraces : 3, rows = (r->ntraces + cols - 1) / cols;
    double h = 1.0 - 0.1, ph = h / (double)rows;

    fprintf(f, "set terminal pngcairo size %zu,%zu font 'sans,10'\nset output 'policy.png'\n",
            500 * cols, 380 * rows + 80);
    for (size_t p = 0; p < r->npolicies; p++)
        line_style(f, p, r->policies[p]);
    fprintf(f, "set multiplot title 'larder eviction policies: total cold-load time by budget "
               "(lower is better)' font ',13'\nset yrange [0:*]\nset format y '%%gk'\n"
               "set grid\nset key off\nset xlabel 'budget (%% of total size)'\n"
               "set ylabel 'cold-load seconds'\nset xtics (");
    for (size_t b = 0; b < r->nbudgets; b++)
        fprintf(f, "%s%g", b ? ", " : "", r->budgets[b].pct);
    fprintf(f, ")\nset size %.4f,%.4f\n", 1.0 / (double)cols, ph);
    for (size_t t = 0; t < r->ntraces; t++) {
        fprintf(f, "set origin %.4f,%.4f\nset title '%s' font ',12'\n"
                   "plot for [i=2:%zu] 'policy-%s.dat' using 1:(column(i)/1000) "
                   "with linespoints ls (i-1)\n",
                (double)(t % cols) / (double)cols, 0.07 + ph * (double)(rows - 1 - t / cols),
                r->traces[t]->name, r->npolicies + 1, r->traces[t]->name);
    }
    fprintf(f, "set origin 0,0\nset size 1,0.07\nunset border\nunset tics\nunset grid\n"
               "unset xlabel\nunset ylabel\nunset title\nset yrange [0:1]\n"
               "set key center center horizontal maxrows 1 samplen 3 width 2 font ',11'\n"
               "plot");
    for (size_t p = 0; p < r->npolicies; p++)
        fprintf(f, "%s NaN with linespoints ls %zu title '%s'", p ? "," : "", p + 1,
                r->policies[p]);
    fprintf(f, "\nunset multiplot\n");
}

int report_chart(const struct report *r, const char *dir, FILE *log)
{
    char path[4096], cmd[4200];
    FILE *f;
    int rc, status;

    for (size_t t = 0; t < r->ntraces; t++)
        if ((rc = write_dat(r, t, dir)) < 0)
            return rc;
    if (snprintf(path, sizeof(path), "%s/policy.gp", dir) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    if (!(f = fopen(path, "w")))
        return -errno;
    write_gp(r, f);
    if (fclose(f) != 0)
        return -EIO;
    if (snprintf(cmd, sizeof(cmd), "cd '%s' && gnuplot policy.gp 2>&1", dir) >= (int)sizeof(cmd))
        return -ENAMETOOLONG;
    status = system(cmd);
    if (status == 0)
        fprintf(log, "chart: %s/policy.png\n", dir);
    else
        fprintf(log, "chart: skipped (gnuplot failed or is not installed; script %s)\n", path);
    return 0;
}
