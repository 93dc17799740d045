/* bench/acquire: the cost of a warm acquire + release, against a baseline measured in
 * the same run.
 *
 * larder:   larder_acquire() + larder_release() of a loaded component, by name.
 * baseline: what a hand-written registry does at least: pthread mutex lock, lookup of
 *           the name in a string hash table holding as many entries as larder has
 *           components, unlock.
 *
 * The ratio larder/baseline on 1 thread (target <= 1.5) is measured REPEATS times, each
 * repeat running the baseline and larder back to back, and reported as the median with
 * its min and max. The 2-thread over 1-thread throughput of larder (target >= 1.6, each
 * thread on its own component) is the best of RUNS runs.
 *
 * A control runs in the same process before and after: two threads, each looping on its
 * own private mutex and counter, against one such thread. On two idle cores it scales
 * to about 2x; below CONTROL_MIN the machine is busy (other processes take the cores,
 * and the figures say more about them than about larder): the ratios are then not
 * printed, a line starting "machine busy:" says why, and the exit status is 3. The last
 * line starts with "summary:" (bench/run-all.sh shows it).
 *
 * Usage: bench_acquire [PAIRS [COMPONENTS]]   (defaults 3000000 and 64)
 * Exit: 0 measured, 1 error, 2 usage, 3 machine busy.
 */
#include <larder/larder.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RUNS 3
#define REPEATS 9
#define CONTROL_MIN 1.75
#define EXIT_BUSY 3
#define NAME_LEN 32

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the baseline: a mutex and an open-addressing string hash table --------------- */

struct entry {
    const char *key;
    void *value;
};

struct table {
    pthread_mutex_t lock;
    struct entry *slots;
    size_t mask;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

static int table_init(struct table *t, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    t->slots = calloc(cap, sizeof(*t->slots));
    t->mask = cap - 1;
    pthread_mutex_init(&t->lock, NULL);
    return t->slots ? 0 : -ENOMEM;
}

static void table_put(struct table *t, const char *key, void *value)
{
    size_t i = (size_t)hash_str(key) & t->mask;
    while (t->slots[i].key)
        i = (i + 1) & t->mask;
    t->slots[i] = (struct entry){key, value};
}

static void *table_get(struct table *t, const char *key)
{
    for (size_t i = (size_t)hash_str(key) & t->mask; t->slots[i].key; i = (i + 1) & t->mask)
        if (strcmp(t->slots[i].key, key) == 0)
            return t->slots[i].value;
    return NULL;
}

static void table_free(struct table *t)
{
    pthread_mutex_destroy(&t->lock);
    free(t->slots);
}

/* ---- the component: loads a few bytes ---------------------------------------------- */

static int load_small(void *ud, void **ret_model, char *err, size_t errlen)
{
    void *p = malloc(64);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    *ret_model = p;
    return 0;
}

static void unload_small(void *ud, void *model)
{
    free(model);
}

static const struct larder_class small_class = {
    .struct_size = sizeof(struct larder_class),
    .name = "bench",
    .load = load_small,
    .unload = unload_small,
};

/* ---- measured loops ------------------------------------------------------------------ */

struct job {
    larder *m;
    struct table *t;
    const char *name;
    long pairs;
    pthread_barrier_t *start;
    double begin, end;
    int rc;
    uintptr_t sink;
};

static void *larder_loop(void *arg)
{
    struct job *j = arg;
    if (j->start)
        pthread_barrier_wait(j->start);
    /* Per-thread results are written once at the end: the two jobs sit side by side
     * on the caller's stack, and a write per iteration would bounce that cache line
     * between the cores. */
    uintptr_t sink = 0;
    j->begin = now_s();
    for (long i = 0; i < j->pairs; i++) {
        larder_lease *l;
        int rc = larder_acquire(j->m, j->name, LARDER_WAIT_FOREVER, &l);
        if (rc < 0) {
            j->rc = rc;
            break;
        }
        sink += (uintptr_t)larder_lease_model(l);
        larder_release(l);
    }
    j->end = now_s();
    j->sink = sink;
    return NULL;
}

static void *baseline_loop(void *arg)
{
    struct job *j = arg;
    if (j->start)
        pthread_barrier_wait(j->start);
    uintptr_t sink = 0;
    j->begin = now_s();
    for (long i = 0; i < j->pairs; i++) {
        pthread_mutex_lock(&j->t->lock);
        void *v = table_get(j->t, j->name);
        pthread_mutex_unlock(&j->t->lock);
        sink += (uintptr_t)v;
    }
    j->end = now_s();
    j->sink = sink;
    return NULL;
}

/* The control: a private mutex and counter per thread, on a cache line of its own, so
 * two threads share nothing and only the machine can keep them from scaling. */
struct private_lock {
    pthread_mutex_t lock;
    long counter;
} __attribute__((aligned(128)));

static void *control_loop(void *arg)
{
    struct job *j = arg;
    struct private_lock p = {.lock = PTHREAD_MUTEX_INITIALIZER};
    if (j->start)
        pthread_barrier_wait(j->start);
    j->begin = now_s();
    for (long i = 0; i < j->pairs; i++) {
        pthread_mutex_lock(&p.lock);
        p.counter++;
        pthread_mutex_unlock(&p.lock);
    }
    j->end = now_s();
    j->sink = (uintptr_t)p.counter;
    return NULL;
}

/* Runs `fn` once on `threads` threads (thread k on names[k]) and returns the wall time
 * in seconds from the common start to the last finish. */
static double one_run(void *(*fn)(void *), larder *m, struct table *t, char (*names)[NAME_LEN],
                      int threads, long pairs, int *ret_rc)
{
    struct job jobs[2];
    pthread_t tid[2];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int k = 0; k < threads; k++) {
        jobs[k] = (struct job){.m = m, .t = t, .name = names[k], .pairs = pairs,
                               .start = &start};
        pthread_create(&tid[k], NULL, fn, &jobs[k]);
    }
    double begin = 1e30, end = 0;
    for (int k = 0; k < threads; k++) {
        pthread_join(tid[k], NULL);
        begin = jobs[k].begin < begin ? jobs[k].begin : begin;
        end = jobs[k].end > end ? jobs[k].end : end;
        if (jobs[k].rc < 0)
            *ret_rc = jobs[k].rc;
    }
    pthread_barrier_destroy(&start);
    return end - begin;
}

/* The best of RUNS runs. */
static double best_run(void *(*fn)(void *), larder *m, struct table *t, char (*names)[NAME_LEN],
                       int threads, long pairs, int *ret_rc)
{
    double best = 1e30;
    for (int r = 0; r < RUNS; r++) {
        double s = one_run(fn, m, t, names, threads, pairs, ret_rc);
        best = s < best ? s : best;
    }
    return best;
}

/* The control's 2-thread over 1-thread throughput. */
static double control_scaling(long pairs)
{
    int rc = 0;
    double one = best_run(control_loop, NULL, NULL, NULL, 1, pairs, &rc);
    double two = best_run(control_loop, NULL, NULL, NULL, 2, pairs, &rc);
    return (2.0 * (double)pairs / two) / ((double)pairs / one);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct ratios {
    double median, min, max;
    double base_ns, larder_ns; /* medians */
};

/* REPEATS repeats of baseline then larder on 1 thread: the ratio's median and range. */
static void measure_ratio(larder *m, struct table *t, char (*names)[NAME_LEN], long pairs,
                          int *ret_rc, struct ratios *ret)
{
    double r[REPEATS], b[REPEATS], l[REPEATS];
    for (int k = 0; k < REPEATS; k++) {
        b[k] = one_run(baseline_loop, m, t, names, 1, pairs, ret_rc) * 1e9 / (double)pairs;
        l[k] = one_run(larder_loop, m, t, names, 1, pairs, ret_rc) * 1e9 / (double)pairs;
        r[k] = l[k] / b[k];
    }
    qsort(r, REPEATS, sizeof r[0], cmp_double);
    qsort(b, REPEATS, sizeof b[0], cmp_double);
    qsort(l, REPEATS, sizeof l[0], cmp_double);
    *ret = (struct ratios){.median = r[REPEATS / 2], .min = r[0], .max = r[REPEATS - 1],
                           .base_ns = b[REPEATS / 2], .larder_ns = l[REPEATS / 2]};
}

static int setup(larder **ret_m, struct table *t, char (*names)[NAME_LEN], int n)
{
    struct larder_opts opts;
    larder_opts_init(&opts);
    opts.budget_bytes = 1ULL << 30;
    opts.default_ttl_ms = LARDER_TTL_NEVER;
    larder *m = NULL;
    int rc = larder_open(&opts, &m);
    if (rc < 0 || (rc = table_init(t, (size_t)n)) < 0)
        return rc;
    for (int i = 0; i < n && rc == 0; i++) {
        snprintf(names[i], NAME_LEN, "model-%04d", i);
        struct larder_component_opts def;
        larder_component_opts_init(&def);
        def.cls = &small_class;
        def.memory_bytes = 4096;
        rc = larder_define(m, names[i], &def);
        table_put(t, names[i], names[i]);
    }
    /* Warm the components the loops use. */
    for (int i = 0; i < 2 && rc == 0; i++) {
        larder_lease *l;
        rc = larder_acquire(m, names[i], LARDER_WAIT_FOREVER, &l);
        larder_release(rc == 0 ? l : NULL);
    }
    *ret_m = m;
    return rc;
}

/* The 2-thread figure needs two idle cores: say how busy the machine was before. */
static void print_machine(void)
{
    double load = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &load) != 1)
            load = -1;
        fclose(f);
    }
    printf("  machine: %ld cores online, load average %.2f\n", sysconf(_SC_NPROCESSORS_ONLN),
           load);
}

int main(int argc, char **argv)
{
    long pairs = argc > 1 ? atol(argv[1]) : 3000000;
    int n = argc > 2 ? atoi(argv[2]) : 64;
    if (pairs <= 0 || n < 2) {
        fprintf(stderr, "usage: %s [PAIRS >= 1 [COMPONENTS >= 2]]\n", argv[0]);
        return 2;
    }
    char (*names)[NAME_LEN] = calloc((size_t)n, NAME_LEN);
    struct table t;
    larder *m = NULL;
    int rc = names ? setup(&m, &t, names, n) : -ENOMEM;
    if (rc < 0) {
        fprintf(stderr, "bench_acquire: setup: %s\n", larder_strerror(rc));
        return 1;
    }
    printf("acquire: %d components, %ld pairs per thread, ratio over %d repeats\n", n, pairs,
           REPEATS);
    print_machine();
    fflush(stdout);
    double control0 = control_scaling(pairs);
    struct ratios q;
    measure_ratio(m, &t, names, pairs, &rc, &q);
    double lard1 = best_run(larder_loop, m, &t, names, 1, pairs, &rc);
    double lard2 = best_run(larder_loop, m, &t, names, 2, pairs, &rc);
    double control1 = control_scaling(pairs);
    if (rc < 0) {
        fprintf(stderr, "bench_acquire: acquire: %s\n", larder_strerror(rc));
        return 1;
    }
    double control = control0 < control1 ? control0 : control1;
    double scaling = (2.0 * (double)pairs / lard2) / ((double)pairs / lard1);

    printf("  control, private mutex loops, 2 threads / 1 thread: %.2f x before, %.2f x after"
           " (quiet >= %.2f)\n", control0, control1, CONTROL_MIN);
    printf("  baseline mutex+lookup+unlock, 1 thread:  %8.1f ns/pair (median)\n", q.base_ns);
    printf("  larder acquire+release, 1 thread:        %8.1f ns/pair (median)\n", q.larder_ns);
    printf("  larder acquire+release, 2 threads:       %8.1f ns/pair (aggregate, best)\n",
           lard2 * 1e9 / (2.0 * (double)pairs));
    if (control < CONTROL_MIN) {
        printf("machine busy: the control scaled %.2f x on 2 threads (needs >= %.2f); "
               "no ratio printed\n", control, CONTROL_MIN);
        printf("summary: machine busy (control %.2f x < %.2f x), no ratio\n", control,
               CONTROL_MIN);
        larder_close(m);
        table_free(&t);
        free(names);
        return EXIT_BUSY;
    }
    printf("  ratio larder/baseline, 1 thread:         %8.2f x median, %.2f-%.2f min-max "
           "(target <= 1.5)\n", q.median, q.min, q.max);
    printf("  throughput 2 threads / 1 thread:         %8.2f x (target >= 1.6)\n", scaling);
    printf("summary: larder/baseline %.2f x median (%.2f-%.2f over %d repeats, target <= 1.5),"
           " 2 threads %.2f x (target >= 1.6)\n", q.median, q.min, q.max, REPEATS, scaling);
    larder_close(m);
    table_free(&t);
    free(names);
    return 0;
}
