/* bench_cluster: three larderd nodes behind HAProxy, consistent hashing on the model name
 * against round-robin, on one Zipf trace over 30 synthetic models.
 *
 * The models take their sizes, load times and request times from the real engines'
 * measured figures (docs/backends.md, "Measured cost"): a third like Tesseract (21.6 MiB,
 * 58 ms load, 21 ms a request), a third like PocketSphinx (98.5 MiB, 256 ms, 383 ms), a
 * third like XGBoost (2.1 MiB, 1 ms, 0 ms). Sizes are divided by SIZE_DIVISOR (4) so the
 * three nodes fit a shared host; budgets are divided alike, so what fits is unchanged.
 * Each node's budget holds a third of the working set.
 *
 * Both runs replay the same trace (Poisson arrivals, RATE a second, open loop: a slow
 * reply delays no later request) through HAProxy with the configuration that
 * `larder cluster haproxy` prints, and its round-robin twin. The consistent-hashing run
 * then goes on: one node is killed and the trace continues for one more window.
 * Windows are a minute, as the targets count (BENCH_CLUSTER_WINDOW seconds to change it),
 * after half a window of warm-up; the steady window and the window after the kill have
 * the same length, on the same trace. The whole benchmark takes about four minutes.
 *
 * usage: bench_cluster LARDERD [HAPROXY]
 * Prints figures and ratios; never fails on them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "cluster.h"

#define NODES 3
#define MODELS 30
#define SIZE_DIVISOR 4
#define RATE 25.0
#define ZIPF_S 1.0
#define WORKERS 48
#define MIB (1024.0 * 1024.0)

struct engine {
    const char *like;
    double mib, load_ms, infer_ms;
};
static const struct engine engines[] = {
    {"tesseract", 21.6, 58, 21}, {"pocketsphinx", 98.5, 256, 383}, {"xgboost", 2.1, 1, 0}};

struct node {
    pid_t pid;
    char dir[64], host[32];
    unsigned port;
    struct larder__url url;
    double loads, load_s; /* the last figures read from it */
    double model_loads[MODELS];
    bool warm[MODELS];
};

static const char *larderd, *haproxy;
static struct node nodes[NODES];
static pid_t haproxy_pid;
static struct larder__url lb;
static char hadir[64];

struct request {
    double at;   /* seconds from the start of the trace */
    int model;
    double latency; /* seconds from `at` to the reply; < 0: failed */
};
static struct request *trace;
static size_t trace_n;
static atomic_size_t next_req;
static double t0;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    nanosleep(&ts, NULL);
}

/* ---- processes ---------------------------------------------------------------------- */

static pid_t spawn(const char *log, char *const argv[])
{
    pid_t pid = fork();
    if (pid)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    execv(argv[0], argv);
    _exit(127);
}

static unsigned logged_port(const char *log)
{
    FILE *f = fopen(log, "r");
    char line[2048];
    unsigned port = 0;
    while (f && !port && fgets(line, sizeof line, f)) {
        char *p = strstr(line, "listening");
        if (p && (p = strstr(p, "port=")))
            port = (unsigned)strtoul(p + 5, NULL, 10);
    }
    if (f)
        fclose(f);
    return port;
}

static int node_start(struct node *n, int i)
{
    char cfg[160], log[160], u[64];
    snprintf(n->dir, sizeof n->dir, "/tmp/larder-bench-cluster-XXXXXX");
    if (!mkdtemp(n->dir))
        return -1;
    snprintf(n->host, sizeof n->host, "127.0.0.%d", 21 + i);
    snprintf(cfg, sizeof cfg, "%s/larder.ini", n->dir);
    snprintf(log, sizeof log, "%s/larderd.log", n->dir);
    double set = 0;
    for (int m = 0; m < MODELS; m++)
        set += engines[m % 3].mib / SIZE_DIVISOR;
    FILE *f = fopen(cfg, "w");
    if (!f)
        return -1;
    fprintf(f, "[server]\nlisten = %s:0\nnode_name = n%d\nthreads = 64\nlog_format = text\n"
               "max_connections_per_client = 1024\n\n[memory]\nbudget = %.0f\nttl = never\n"
               "watch_pressure = no\n\n",
            n->host, i, set / NODES * MIB);
    for (int m = 0; m < MODELS; m++) {
        const struct engine *e = &engines[m % 3];
        double bytes = e->mib / SIZE_DIVISOR * MIB;
        fprintf(f, "[model.m%02d]\nbackend = synthetic\nsize = %.0f\nmemory = %.0f\n"
                   "load_ms = %.0f\ninfer_ms = %.0f\nlabel = %s\n\n",
                m, bytes, bytes, e->load_ms, e->infer_ms, e->like);
    }
    fclose(f);
    char *argv[] = {(char *)larderd, "--config", cfg, NULL};
    n->pid = spawn(log, argv);
    for (int k = 0; k < 6000 && !(n->port = logged_port(log)); k++)
        sleep_s(0.01);
    snprintf(u, sizeof u, "%s:%u", n->host, n->port);
    return n->port && larder__url_parse(u, &n->url) == 0 ? 0 : -1;
}

static void node_stop(struct node *n, int sig)
{
    char cmd[128];
    if (n->pid > 0) {
        kill(n->pid, sig);
        waitpid(n->pid, NULL, 0);
    }
    n->pid = 0;
    if (sig == SIGTERM && n->dir[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", n->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", n->dir);
        n->dir[0] = 0;
    }
}

static unsigned free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    unsigned port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int haproxy_start(bool round_robin)
{
    static struct larder__cluster c;
    char cfg[128], log[128], spec[128], err[256], bind[64];
    memset(&c, 0, sizeof c);
    unsigned port = free_port();
    snprintf(bind, sizeof bind, "127.0.0.1:%u", port);
    c.bind = bind;
    c.round_robin = round_robin;
    for (int i = 0; i < NODES; i++) {
        snprintf(spec, sizeof spec, "n%d=%s:%u", i, nodes[i].host, nodes[i].port);
        if (larder__cluster_add_node(&c, spec, err, sizeof err) < 0)
            return -1;
    }
    snprintf(cfg, sizeof cfg, "%s/haproxy.cfg", hadir);
    snprintf(log, sizeof log, "%s/haproxy.log", hadir);
    FILE *f = fopen(cfg, "w");
    if (!f || larder__cluster_haproxy(&c, f) < 0 || fclose(f) != 0)
        return -1;
    char *argv[] = {(char *)haproxy, "-db", "-f", cfg, NULL};
    haproxy_pid = spawn(log, argv);
    larder__url_parse(bind, &lb);
    for (int k = 0; k < 6000; k++) {
        struct larder__http_response r = {0};
        if (larder__http_request(&lb, "GET", "/health", NULL, NULL, NULL, 0, 2000, &r) == 0 &&
            r.status == 200) {
            larder__http_response_clear(&r);
            return 0;
        }
        larder__http_response_clear(&r);
        sleep_s(0.01);
    }
    return -1;
}

static void haproxy_stop(void)
{
    if (haproxy_pid > 0) {
        kill(haproxy_pid, SIGKILL);
        waitpid(haproxy_pid, NULL, 0);
    }
    haproxy_pid = 0;
}

/* ---- figures read from the nodes -------------------------------------------------- */

/* Loads and load seconds of node n so far, and the models it holds loaded (warm[m]). */
static int node_read(struct node *n, bool *warm)
{
    struct larder__http_response r = {0};
    if (!n->pid || larder__http_request(&n->url, "GET", "/v1/models", NULL, NULL, NULL, 0,
                                        10000, &r) < 0 || r.status != 200) {
        larder__http_response_clear(&r);
        return -1;
    }
    json_t *o = json_loads(r.body, 0, NULL), *m;
    size_t i;
    n->loads = n->load_s = 0;
    json_array_foreach(json_object_get(o, "models"), i, m) {
        double loads = (double)json_integer_value(json_object_get(m, "loads"));
        n->loads += loads;
        n->load_s += loads * json_number_value(json_object_get(json_object_get(m, "load_ms"),
                                                               "avg")) / 1000;
        int k = atoi(json_string_value(json_object_get(m, "name")) + 1);
        if (k >= 0 && k < MODELS) {
            n->model_loads[k] = loads;
            n->warm[k] = strcmp(json_string_value(json_object_get(m, "state")), "ready") == 0;
            if (warm)
                warm[k] |= n->warm[k];
        }
    }
    json_decref(o);
    larder__http_response_clear(&r);
    return 0;
}

struct tally {
    double loads, load_s;
    int warm_union, warm_per_node_sum, nodes_read;
    double model_loads[NODES][MODELS]; /* loads so far, per node and model */
};

static struct tally fleet(void)
{
    struct tally t = {0};
    bool all[MODELS] = {false};
    for (int i = 0; i < NODES; i++) {
        bool mine[MODELS] = {false};
        if (node_read(&nodes[i], mine) == 0) {
            t.nodes_read++;
            for (int m = 0; m < MODELS; m++) {
                t.warm_per_node_sum += mine[m];
                all[m] |= mine[m];
            }
        }
        t.loads += nodes[i].loads; /* a dead node keeps its last figures */
        t.load_s += nodes[i].load_s;
        memcpy(t.model_loads[i], nodes[i].model_loads, sizeof t.model_loads[i]);
    }
    for (int m = 0; m < MODELS; m++)
        t.warm_union += all[m];
    return t;
}

/* ---- the trace ------------------------------------------------------------------------- */

static void make_trace(double seconds, unsigned seed)
{
    double cdf[MODELS], sum = 0;
    int rank_of[MODELS];
    srand(seed);
    for (int m = 0; m < MODELS; m++)
        rank_of[m] = m;
    for (int m = MODELS - 1; m > 0; m--) { /* popularity independent of the engine */
        int k = rand() % (m + 1), x = rank_of[m];
        rank_of[m] = rank_of[k];
        rank_of[k] = x;
    }
    for (int r = 0; r < MODELS; r++)
        cdf[r] = (sum += 1 / pow(r + 1, ZIPF_S));
    size_t cap = (size_t)(seconds * RATE * 2 + 64);
    trace = calloc(cap, sizeof *trace);
    trace_n = 0;
    for (double t = 0; trace_n < cap;) {
        t += -log((rand() + 1.0) / (RAND_MAX + 2.0)) / RATE;
        if (t >= seconds)
            break;
        double u = (rand() + 0.5) / (RAND_MAX + 1.0) * sum;
        int r = 0;
        while (r < MODELS - 1 && cdf[r] < u)
            r++;
        trace[trace_n++] = (struct request){.at = t, .model = rank_of[r]};
    }
}

static void *worker(void *arg)
{
    (void)arg;
    for (size_t i; (i = atomic_fetch_add(&next_req, 1)) < trace_n;) {
        struct request *q = &trace[i];
        char path[64];
        sleep_s(t0 + q->at - now());
        snprintf(path, sizeof path, "/v1/models/m%02d/infer", q->model);
        struct larder__http_response r = {0};
        int e = larder__http_request(&lb, "POST", path, NULL, "text/plain", "x", 1, 600000, &r);
        q->latency = e == 0 && r.status == 200 ? now() - t0 - q->at : -1;
        larder__http_response_clear(&r);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct run {
    const char *name;
    struct tally steady_start, steady_end, after_kill;
    double p50, p99;
    size_t failed, answered;
};

/* Replays the trace; marks (seconds from the start) at which to read the fleet: the end
 * of warm-up, the end of the steady window (where the node is killed when kill), the
 * end of the window after the kill. */
static void replay(struct run *run, double warm_s, double steady_s, double after_s, bool kill_one)
{
    pthread_t th[WORKERS];
    atomic_store(&next_req, 0);
    t0 = now();
    for (int i = 0; i < WORKERS; i++)
        pthread_create(&th[i], NULL, worker, NULL);
    sleep_s(t0 + warm_s - now());
    run->steady_start = fleet();
    sleep_s(t0 + warm_s + steady_s - now());
    run->steady_end = fleet();
    if (kill_one) {
        node_stop(&nodes[1], SIGKILL);
        sleep_s(t0 + warm_s + steady_s + after_s - now());
        run->after_kill = fleet();
    }
    for (int i = 0; i < WORKERS; i++)
        pthread_join(th[i], NULL);
    double *lat = calloc(trace_n, sizeof *lat);
    size_t n = 0;
    for (size_t i = 0; i < trace_n; i++) {
        if (trace[i].latency >= 0)
            lat[n++] = trace[i].latency;
        else
            run->failed++;
    }
    qsort(lat, n, sizeof *lat, cmp_double);
    run->answered = n;
    run->p50 = n ? lat[n / 2] * 1000 : 0;
    run->p99 = n ? lat[(size_t)(n * 0.99)] * 1000 : 0;
    free(lat);
}

static int cluster_up(bool round_robin)
{
    for (int i = 0; i < NODES; i++)
        if (node_start(&nodes[i], i) < 0)
            return -1;
    return haproxy_start(round_robin);
}

static void cluster_down(void)
{
    haproxy_stop();
    for (int i = 0; i < NODES; i++)
        node_stop(&nodes[i], SIGTERM);
}

static void print_run(const struct run *r)
{
    double loads = r->steady_end.loads, secs = r->steady_end.load_s;
    printf("%-12s cold loads %5.0f  cold-load s %7.2f  p50 %7.1f ms  p99 %8.1f ms  "
           "distinct warm %2d (per node %.1f)  failed %zu\n",
           r->name, loads, secs, r->p50, r->p99, r->steady_end.warm_union,
           r->steady_end.nodes_read ? (double)r->steady_end.warm_per_node_sum /
                                          r->steady_end.nodes_read
                                    : 0,
           r->failed);
}

/* Where a window's cold loads went (tallies a and b at its ends). A load is either a
 * model's first on its node (it moved there, spilled there past the balance factor, or
 * had not been asked for yet) or a reload after its node evicted it for room. Also: how
 * many of the models node `dead` had served (none: dead < 0) were loaded by more than
 * one survivor. */
static void print_breakdown(const char *what, const struct tally *a, const struct tally *b,
                            int dead)
{
    double loads = 0, firsts = 0;
    int moved = 0, moved_twice = 0;
    for (int m = 0; m < MODELS; m++) {
        int on = 0;
        for (int i = 0; i < NODES; i++) {
            double before = a->model_loads[i][m], d = b->model_loads[i][m] - before;
            loads += d;
            firsts += before == 0 && d > 0;
            on += d > 0;
        }
        if (dead >= 0 && a->model_loads[dead][m] > 0) {
            moved++;
            moved_twice += on > 1;
        }
    }
    printf("  %s: %.0f cold loads: %.0f first loads of a model on its node, %.0f reloads "
           "after an eviction",
           what, loads, firsts, loads - firsts);
    if (dead >= 0)
        printf("; of the %d models n%d had served, %d were loaded by both survivors", moved,
               dead, moved_twice);
    printf("\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_cluster LARDERD [HAPROXY]\n");
        return 2;
    }
    larderd = argv[1];
    haproxy = argc > 2 ? argv[2] : "/usr/sbin/haproxy";
    if (access(haproxy, X_OK) != 0) {
        printf("summary: skipped: no HAProxy at %s (Debian's haproxy package)\n", haproxy);
        return 0;
    }
    const char *w = getenv("BENCH_CLUSTER_WINDOW");
    double window = w && atof(w) > 0 ? atof(w) : 60, warm = window / 2;
    snprintf(hadir, sizeof hadir, "/tmp/larder-bench-lb-XXXXXX");
    if (!mkdtemp(hadir))
        return 1;
    make_trace(warm + 2 * window, 1);
    printf("trace: %zu requests over %.0f s (Zipf %.1f over %d models, %.0f/s); windows of "
           "%.0f s after %.0f s of warm-up\n",
           trace_n, warm + 2 * window, ZIPF_S, MODELS, RATE, window, warm);

    struct run rr = {.name = "round-robin"}, ch = {.name = "consistent"};
    size_t steady_n = 0;
    for (size_t i = 0; i < trace_n; i++)
        steady_n += trace[i].at < warm + window;
    size_t full_n = trace_n;
    trace_n = steady_n; /* round-robin: warm-up and one window */
    if (cluster_up(true) < 0)
        return fprintf(stderr, "round-robin cluster did not start\n"), 1;
    replay(&rr, warm, window, 0, false);
    cluster_down();
    trace_n = full_n;
    for (size_t i = 0; i < trace_n; i++)
        trace[i].latency = 0;
    if (cluster_up(false) < 0)
        return fprintf(stderr, "consistent-hashing cluster did not start\n"), 1;
    replay(&ch, warm, window, window, true);
    cluster_down();

    /* figures of the steady window: its end minus its start */
    struct run *runs[] = {&rr, &ch};
    for (int k = 0; k < 2; k++) {
        runs[k]->steady_end.loads -= runs[k]->steady_start.loads;
        runs[k]->steady_end.load_s -= runs[k]->steady_start.load_s;
    }
    double after = ch.after_kill.loads - (ch.steady_end.loads + ch.steady_start.loads);
    print_run(&rr);
    print_run(&ch);
    double per_node = ch.steady_end.nodes_read
                          ? (double)ch.steady_end.warm_per_node_sum / ch.steady_end.nodes_read
                          : 1;
    double r_cold = rr.steady_end.load_s > 0 ? ch.steady_end.load_s / rr.steady_end.load_s : 0;
    double r_warm = per_node > 0 ? ch.steady_end.warm_union / per_node : 0;
    double r_kill = ch.steady_end.loads > 0 ? after / ch.steady_end.loads : after ? INFINITY : 0;
    printf("after killing n1: %.0f cold loads in the next window against %.0f in the steady "
           "one; %zu of %zu requests unanswered in the whole run\n",
           after, ch.steady_end.loads, ch.failed, trace_n);
    print_breakdown("steady window", &ch.steady_start, &ch.steady_end, -1);
    print_breakdown("window after the kill", &ch.steady_end, &ch.after_kill, 1);
    printf("ratio cold_load_seconds: %.2f (consistent / round-robin, target <= 0.4)\n", r_cold);
    printf("ratio distinct_warm: %.2f (fleet / one node, target >= 2.5; round-robin %.2f)\n",
           r_warm,
           rr.steady_end.nodes_read && rr.steady_end.warm_per_node_sum
               ? rr.steady_end.warm_union /
                     ((double)rr.steady_end.warm_per_node_sum / rr.steady_end.nodes_read)
               : 0);
    printf("ratio cold_loads_after_kill: %.2f (next window / steady, target <= 1.5)\n", r_kill);
    printf("summary: cold-load s %.2fx round-robin (<= 0.4); distinct warm %.2fx one node "
           "(>= 2.5); cold loads after a kill %.2fx steady (<= 1.5); p99 %.0f vs %.0f ms\n",
           r_cold, r_warm, r_kill, ch.p99, rr.p99);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", hadir);
    return system(cmd) == 0 ? 0 : 1;
}
