/* larder-backend-run: runs one backend plugin outside larderd, and measures it.
 *
 *   larder-backend-run [-o KEY=VALUE]... [-t TYPE] [-n N] [-j THREADS] [-l LOADS] [-q] [-v]
 *                      PLUGIN [INPUT]
 *
 * Opens PLUGIN (a larder-NAME.so), checks the options, estimates, loads, creates THREADS
 * instances (when the backend has instances), runs N requests per thread on the bytes of
 * INPUT ("-" = standard input) with content type TYPE, prints the last result on standard
 * output, unloads, and reports on standard error: the time and resident memory (from
 * /proc/self/statm) of each step, and the request latency (min, median, mean, max), with
 * the CPU time of the calling thread, which stays true on a busy host.
 * Without INPUT it stops after the load (a load-only measurement). -l repeats the whole
 * cycle LOADS times in the same process (memory returned by unload, warm reloads).
 *
 * Exit status: 0 on success, 1 when a step fails (its message is printed), 2 on bad usage.
 */
#include <larder/backend.h>

#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_OPTIONS 64
#define MAX_THREADS 64
#define ERRLEN 512

struct args {
    struct larder_option opts[MAX_OPTIONS];
    size_t n_opts;
    const char *content_type;
    unsigned requests;
    unsigned threads;
    unsigned loads;
    bool quiet;
    bool verbose;
    const char *plugin;
    const char *input;
};

struct worker {
    const struct larder_backend_ops *ops;
    void *model;
    void *instance;
    const struct larder_infer_request *req;
    unsigned requests;
    double *latency_ms;  /* requests entries */
    double *cpu_ms;      /* CPU time of this thread per request */
    char *last_json;     /* result of the last request (malloc'd copy) */
    int rc;
    char err[ERRLEN];
};

static bool g_verbose;

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* CPU time of the calling thread: unlike wall time, it does not grow when other
 * processes compete for the cores. */
static double thread_cpu_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static uint64_t rss_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void host_log(enum larder_log_level level, const char *backend, const char *msg)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};

    if (level <= LARDER_LOG_WARN || g_verbose)
        fprintf(stderr, "[%s] %s: %s\n", names[level & 3], backend ? backend : "?", msg);
}

static const struct larder_host host = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .log = host_log,
    .rss_bytes = rss_bytes,
};

static void usage(void)
{
    fprintf(stderr, "usage: larder-backend-run [-o KEY=VALUE]... [-t TYPE] [-n N] [-j THREADS]"
                    " [-l LOADS] [-q] [-v] PLUGIN [INPUT]\n");
}

static int parse_args(int argc, char **argv, struct args *a)
{
    int c;

    memset(a, 0, sizeof(*a));
    a->requests = 1;
    a->threads = 1;
    a->loads = 1;
    while ((c = getopt(argc, argv, "o:t:n:j:l:qv")) != -1) {
        char *eq;

        switch (c) {
        case 'o':
            eq = strchr(optarg, '=');
            if (!eq || a->n_opts == MAX_OPTIONS)
                return -1;
            *eq = '\0';
            a->opts[a->n_opts++] = (struct larder_option){optarg, eq + 1};
            break;
        case 't': a->content_type = optarg; break;
        case 'n': a->requests = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'j': a->threads = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'l': a->loads = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'q': a->quiet = true; break;
        case 'v': a->verbose = true; break;
        default: return -1;
        }
    }
    if (optind >= argc || a->requests == 0 || a->threads == 0 || a->threads > MAX_THREADS ||
        a->loads == 0)
        return -1;
    a->plugin = argv[optind];
    a->input = optind + 1 < argc ? argv[optind + 1] : NULL;
    return 0;
}

/* Reads a whole file ("-" = stdin) into a malloc'd buffer. */
static int read_all(const char *path, void **ret_buf, size_t *ret_len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    size_t cap = 65536, len = 0, got;
    char *buf = malloc(cap);

    if (!f || !buf) {
        free(buf);
        return -errno;
    }
    while ((got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            char *bigger = realloc(buf, cap * 2);

            if (!bigger)
                break;
            buf = bigger;
            cap *= 2;
        }
    }
    if (f != stdin)
        fclose(f);
    *ret_buf = buf;
    *ret_len = len;
    return 0;
}

static const struct larder_backend_ops *open_plugin(const char *path)
{
    larder_backend_entry_fn entry;
    const struct larder_backend_ops *ops;
    void *so = dlopen(path, RTLD_NOW | RTLD_LOCAL);

    if (!so) {
        fprintf(stderr, "cannot open %s: %s\n", path, dlerror());
        return NULL;
    }
    *(void **)&entry = dlsym(so, LARDER_BACKEND_ENTRY);
    ops = entry ? entry(&host) : NULL;
    if (!ops || ops->abi_major != LARDER_BACKEND_ABI_MAJOR) {
        fprintf(stderr, "%s: no usable %s (ABI %d expected)\n", path, LARDER_BACKEND_ENTRY,
                LARDER_BACKEND_ABI_MAJOR);
        return NULL;
    }
    return ops;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    for (unsigned i = 0; i < w->requests; i++) {
        struct larder_infer_result res = {0};
        double t0 = now_ms(), c0 = thread_cpu_ms();

        w->rc = w->ops->infer(w->model, w->instance, w->req, &res, w->err, sizeof(w->err));
        w->latency_ms[i] = now_ms() - t0;
        w->cpu_ms[i] = thread_cpu_ms() - c0;
        if (w->rc < 0)
            break;
        free(w->last_json);
        w->last_json = res.json ? strdup(res.json) : NULL;
        w->ops->result_free(&res);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static void report_latency(double *ms, double *cpu, size_t n, double wall_ms)
{
    double sum = 0;

    qsort(ms, n, sizeof(*ms), cmp_double);
    qsort(cpu, n, sizeof(*cpu), cmp_double);
    for (size_t i = 0; i < n; i++)
        sum += ms[i];
    fprintf(stderr, "infer: %zu requests, min %.2f ms, median %.2f ms, mean %.2f ms, "
                    "max %.2f ms, %.1f requests/s; thread CPU median %.2f ms\n",
            n, ms[0], ms[n / 2], sum / (double)n, ms[n - 1], (double)n * 1e3 / wall_ms,
            cpu[n / 2]);
}

/* Creates one instance per worker (when the backend has instances). Returns how many
 * workers are ready, reporting the first failure. */
static unsigned make_workers(const struct args *a, const struct larder_backend_ops *ops,
                             void *model, const struct larder_infer_request *req,
                             struct worker *w, double *lat, double *cpu)
{
    for (unsigned i = 0; i < a->threads; i++) {
        uint64_t rss0 = rss_bytes();
        double t0 = now_ms();
        int rc;

        w[i] = (struct worker){.ops = ops, .model = model, .req = req,
                               .requests = a->requests, .latency_ms = lat + i * a->requests,
                               .cpu_ms = cpu + i * a->requests};
        if (!ops->instance_new)
            continue;
        if ((rc = ops->instance_new(model, &w[i].instance, w[i].err, ERRLEN)) < 0) {
            fprintf(stderr, "instance_new: %d: %s\n", rc, w[i].err);
            return i;
        }
        fprintf(stderr, "instance %u: %.1f ms, rss +%.1f MiB\n", i, now_ms() - t0,
                ((double)rss_bytes() - (double)rss0) / 1048576.0);
    }
    return a->threads;
}

/* Runs the workers, prints the result, the latencies and the resident memory then. */
static int run_requests(const struct args *a, const struct larder_backend_ops *ops,
                        void *model, const struct larder_infer_request *req, uint64_t start)
{
    struct worker w[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    size_t n = (size_t)a->threads * a->requests;
    double *lat = calloc(n, sizeof(double)), *cpu = calloc(n, sizeof(double));
    unsigned ready;
    double t0;
    int rc = 0;

    if (!lat || !cpu) {
        free(lat);
        free(cpu);
        return 1;
    }
    memset(w, 0, sizeof(w));
    ready = make_workers(a, ops, model, req, w, lat, cpu);
    if (ready < a->threads)
        rc = -1;
    t0 = now_ms();
    for (unsigned i = 0; rc == 0 && i < ready; i++)
        pthread_create(&tid[i], NULL, worker_main, &w[i]);
    for (unsigned i = 0; rc == 0 && i < ready; i++)
        pthread_join(tid[i], NULL);
    for (unsigned i = 0; rc == 0 && i < ready; i++)
        if (w[i].rc < 0) {
            fprintf(stderr, "infer: %d: %s\n", w[i].rc, w[i].err);
            rc = w[i].rc;
        }
    if (rc == 0) {
        if (!a->quiet && w[0].last_json)
            printf("%s\n", w[0].last_json);
        report_latency(lat, cpu, n, now_ms() - t0);
        fprintf(stderr, "after requests: rss +%.1f MiB over the start\n",
                ((double)rss_bytes() - (double)start) / 1048576.0);
    }
    for (unsigned i = 0; i < ready; i++) {
        if (w[i].instance)
            ops->instance_free(model, w[i].instance);
        free(w[i].last_json);
    }
    free(lat);
    free(cpu);
    return rc < 0 ? 1 : 0;
}

static int run(const struct args *a, const struct larder_backend_ops *ops,
               const struct larder_infer_request *req)
{
    char err[ERRLEN] = "";
    uint64_t est = 0, rss0, start;
    void *model = NULL;
    double t0, c0;
    int rc = 0;

    if (ops->check && (rc = ops->check(a->opts, a->n_opts, err, ERRLEN)) < 0) {
        fprintf(stderr, "check: %d: %s\n", rc, err);
        return 1;
    }
    if (ops->estimate && ops->estimate(a->opts, a->n_opts, &est) == 0)
        fprintf(stderr, "estimate: %.1f MiB\n", (double)est / 1048576.0);
    start = rss0 = rss_bytes();
    t0 = now_ms();
    c0 = thread_cpu_ms();
    if ((rc = ops->load(a->opts, a->n_opts, &model, err, ERRLEN)) < 0) {
        fprintf(stderr, "load: %d: %s\n", rc, err);
        return 1;
    }
    fprintf(stderr, "load: %.1f ms (thread CPU %.1f ms), rss +%.1f MiB\n", now_ms() - t0,
            thread_cpu_ms() - c0, ((double)rss_bytes() - (double)rss0) / 1048576.0);
    if (req)
        rc = run_requests(a, ops, model, req, start);
    rss0 = rss_bytes();
    ops->unload(model);
    malloc_trim(0);
    fprintf(stderr, "unload: rss -%.1f MiB (%.1f MiB over the start remain)\n",
            ((double)rss0 - (double)rss_bytes()) / 1048576.0,
            ((double)rss_bytes() - (double)start) / 1048576.0);
    return rc;
}

int main(int argc, char **argv)
{
    struct args a;
    struct larder_infer_request req = {0};
    const struct larder_backend_ops *ops;
    void *body = NULL;
    size_t len = 0;
    int rc;

    if (parse_args(argc, argv, &a) < 0) {
        usage();
        return 2;
    }
    g_verbose = a.verbose;
    if (!(ops = open_plugin(a.plugin)))
        return 1;
    if (a.input && read_all(a.input, &body, &len) < 0) {
        fprintf(stderr, "cannot read %s: %s\n", a.input, strerror(errno));
        return 1;
    }
    req = (struct larder_infer_request){.body = body, .body_len = len,
                                        .content_type = a.content_type};
    rc = 0;
    for (unsigned i = 0; rc == 0 && i < a.loads; i++)
        rc = run(&a, ops, a.input ? &req : NULL);
    free(body);
    return rc;
}
