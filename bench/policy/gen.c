/* Synthetic request traces (see gen.h). */
#include "gen.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB 1048576.0
#define MAX_STAGES 4
#define MAX_SET 3

const char *const gen_standard[] = {"zipf-0.8", "zipf-1.2", "sessions", "shift",
                                   "pipeline", "scan",     NULL};

/* ---- randomness: splitmix64 ----------------------------------------------------------- */

struct rng {
    uint64_t s;
};

static uint64_t next_u64(struct rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double uniform(struct rng *r)
{
    return (double)(next_u64(r) >> 11) * 0x1.0p-53;
}

static double between(struct rng *r, double lo, double hi)
{
    return lo + (hi - lo) * uniform(r);
}

static double exponential(struct rng *r, double mean)
{
    return -mean * log1p(-uniform(r));
}

/* Milliseconds are precise enough, and keep trace files short. */
static double ms(double seconds)
{
    return round(seconds * 1000.0) / 1000.0;
}

static void shuffle(struct rng *r, uint32_t *a, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(uniform(r) * (double)i);
        uint32_t tmp = a[i - 1];

        a[i - 1] = a[j];
        a[j] = tmp;
    }
}

/* ---- popularity ----------------------------------------------------------------------- */

struct zipf {
    double *cdf;
    uint32_t *perm; /* rank -> component */
    size_t n;
};

static int zipf_init(struct zipf *z, struct rng *r, size_t n, double s)
{
    double sum = 0;

    z->n = n;
    z->cdf = malloc(n * sizeof(*z->cdf));
    z->perm = malloc(n * sizeof(*z->perm));
    if (!z->cdf || !z->perm)
        return -ENOMEM;
    for (size_t k = 0; k < n; k++) {
        sum += pow((double)(k + 1), -s);
        z->cdf[k] = sum;
        z->perm[k] = (uint32_t)k;
    }
    for (size_t k = 0; k < n; k++)
        z->cdf[k] /= sum;
    shuffle(r, z->perm, n);
    return 0;
}

static uint32_t zipf_draw(const struct zipf *z, struct rng *r)
{
    double u = uniform(r);
    size_t lo = 0, hi = z->n - 1;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;

        if (z->cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return z->perm[lo];
}

static void zipf_free(struct zipf *z)
{
    free(z->cdf);
    free(z->perm);
}

/* ---- catalog and requests ------------------------------------------------------------- */

/* Component i of n: the first is 1 MiB / 5 ms, the last 2 GiB / 20 s, the others between. */
static int add_catalog(struct trace *t, struct rng *r, unsigned n)
{
    /* load = 5 ms x (MiB)^b reaches 20 s at 2048 MiB */
    const double b = log(20.0 / 0.005) / log(2048.0);
    char name[16];

    for (unsigned i = 0; i < n; i++) {
        double lg = i == 0 ? 0 : i == n - 1 ? 11 : between(r, 0, 11);
        double mib = exp2(lg), load = 0.005 * pow(mib, b) * exp2(between(r, -2, 2));
        int rc;

        if (i == 0 || i == n - 1 || load < 0.005 || load > 20)
            load = fmin(fmax(load, 0.005), 20.0);
        if (i == 0)
            load = 0.005;
        if (i == n - 1)
            load = 20.0;
        snprintf(name, sizeof(name), "m%02u", i);
        rc = trace_add_comp(t, &(struct trace_comp){.name = name, .bytes = (uint64_t)(mib * MIB),
                                                    .load_s = ms(load), .ttl_ms = 300000});
        if (rc < 0)
            return rc;
    }
    return 0;
}

static double hold_time(const struct trace *t, struct rng *r, uint32_t comp)
{
    return ms(exponential(r, 0.05 + 0.05 * t->comps[comp].load_s));
}

/* One session: a geometric number of requests (mean p->burst) for component c, spaced
 * by exponential think times (mean p->think), from `time` on, cut at `end`. */
static int add_session(struct trace *t, struct rng *r, const struct gen_params *p, double time,
                       double end, uint32_t c)
{
    double more = p->burst > 1 ? 1.0 - 1.0 / p->burst : 0;
    int rc = 0;

    do {
        rc = trace_add_req(t, ms(time), c, hold_time(t, r, c));
        time += exponential(r, p->think);
    } while (rc == 0 && time < end && uniform(r) < more);
    return rc;
}

/* Zipf traffic over [start, end): sessions start as a Poisson process so that requests
 * average `rate` per second; with shift_min > 0 the ranks are reshuffled that often. */
static int add_zipf(struct trace *t, struct rng *r, const struct gen_params *p, double start,
                    double end, double rate)
{
    struct zipf z;
    double time = start, next_shift = p->shift_min > 0 ? start + 60 * p->shift_min : INFINITY;
    double sessions = rate / (p->burst > 1 ? p->burst : 1);
    int rc = zipf_init(&z, r, t->ncomps, p->zipf_s);

    while (rc == 0) {
        time += exponential(r, 1.0 / sessions);
        if (time >= end)
            break;
        while (time >= next_shift) {
            shuffle(r, z.perm, z.n);
            next_shift += 60 * p->shift_min;
        }
        rc = add_session(t, r, p, time, end, zipf_draw(&z, r));
    }
    zipf_free(&z);
    return rc;
}

/* ---- pipelines ------------------------------------------------------------------------ */

struct stage {
    uint32_t set[MAX_SET];
    unsigned n;
    double dur;
};

/* A stage of 2..MAX_SET distinct components that fit in a fifth of the catalog together. */
static void draw_stage(const struct trace *t, struct rng *r, struct stage *st)
{
    uint64_t cap = trace_total_bytes(t) / 5, bytes;

    do {
        st->n = 2 + (unsigned)(uniform(r) * (MAX_SET - 1));
        bytes = 0;
        for (unsigned k = 0; k < st->n; k++) {
            bool dup;

            do {
                st->set[k] = (uint32_t)(uniform(r) * (double)t->ncomps);
                dup = false;
                for (unsigned j = 0; j < k; j++)
                    dup |= st->set[j] == st->set[k];
            } while (dup);
            bytes += t->comps[st->set[k]].bytes;
        }
    } while (bytes > cap);
    st->dur = ms(between(r, 20, 120));
}

/* One periodic job: its stages run back to back every period, from a random phase. */
static int add_pipeline(struct trace *t, struct rng *r, double end)
{
    struct stage st[MAX_STAGES];
    unsigned nst = 2 + (unsigned)(uniform(r) * (MAX_STAGES - 1));
    double period = 60 * between(r, 15, 60), run = between(r, 0, period);
    int rc = 0;

    for (unsigned k = 0; k < nst; k++)
        draw_stage(t, r, &st[k]);
    for (; run < end && rc == 0; run += period) {
        double at = run;

        for (unsigned k = 0; k < nst && at < end && rc == 0; k++) {
            for (unsigned j = 0; j < st[k].n && rc == 0; j++)
                rc = trace_add_req(t, ms(at), st[k].set[j], st[k].dur);
            at += st[k].dur + 5;
        }
    }
    return rc;
}

/* ---- kinds ---------------------------------------------------------------------------- */

static int add_scan(struct trace *t, struct rng *r, double at)
{
    uint32_t *order = malloc(t->ncomps * sizeof(*order));
    int rc = 0;

    if (!order)
        return -ENOMEM;
    for (size_t i = 0; i < t->ncomps; i++)
        order[i] = (uint32_t)i;
    shuffle(r, order, t->ncomps);
    for (size_t i = 0; i < t->ncomps && rc == 0; i++)
        rc = trace_add_req(t, ms(at + 10.0 * (double)i), order[i], hold_time(t, r, order[i]));
    free(order);
    return rc;
}

static int add_requests(struct trace *t, struct rng *r, const struct gen_params *p)
{
    double end = 3600 * p->hours;
    int rc;

    if (strcmp(p->kind, "zipf") == 0 || strcmp(p->kind, "shift") == 0)
        return add_zipf(t, r, p, 0, end, p->rate);
    if (strcmp(p->kind, "scan") == 0) {
        rc = add_zipf(t, r, p, 0, end, p->rate);
        return rc < 0 ? rc : add_scan(t, r, end / 2);
    }
    if (strcmp(p->kind, "pipeline") != 0)
        return -EINVAL;
    rc = add_zipf(t, r, p, 0, end, p->rate);
    for (unsigned k = 0; k < p->pipelines && rc == 0; k++)
        rc = add_pipeline(t, r, end);
    return rc;
}

int gen_trace(const struct gen_params *p, const char *name, struct trace **ret_trace)
{
    struct rng r = {p->seed};
    struct trace *t;
    int rc;

    if (!p->kind || p->ncomps == 0 || !(p->hours > 0) || !(p->rate > 0) ||
        !(p->think >= 0) || !(p->zipf_s >= 0))
        return -EINVAL;
    if (strcmp(p->kind, "shift") == 0 && !(p->shift_min > 0))
        return -EINVAL;
    if ((rc = trace_new(name, &t)) < 0)
        return rc;
    rc = add_catalog(t, &r, p->ncomps);
    if (rc == 0)
        rc = add_requests(t, &r, p);
    if (rc == 0)
        rc = trace_sort(t);
    if (rc < 0) {
        trace_free(t);
        return rc;
    }
    *ret_trace = t;
    return 0;
}

int gen_defaults(const char *name, struct gen_params *ret_params)
{
    struct gen_params p = {.zipf_s = 0.8, .hours = 24, .rate = 0.5, .burst = 1, .think = 10,
                           .ncomps = 50, .seed = 1};

    if (strcmp(name, "zipf-0.8") == 0) {
        p.kind = "zipf";
    } else if (strcmp(name, "zipf-1.2") == 0) {
        p.kind = "zipf";
        p.zipf_s = 1.2;
    } else if (strcmp(name, "sessions") == 0) {
        p.kind = "zipf";
        p.burst = 4;
        p.think = 15;
    } else if (strcmp(name, "shift") == 0) {
        p.kind = "shift";
        p.zipf_s = 1.0;
        p.shift_min = 30;
    } else if (strcmp(name, "pipeline") == 0) {
        p.kind = "pipeline";
        p.rate = 0.1;
        p.pipelines = 5;
    } else if (strcmp(name, "scan") == 0) {
        p.kind = "scan";
        p.hours = 6;
    } else {
        return -EINVAL;
    }
    *ret_params = p;
    return 0;
}
