/* Start-up of larderd with 1,000 and with 10,000 models declared, measured in the same
 * run: time from fork to the first GET /health 200, and resident memory at that point
 * (nothing loaded). Start-up reads and checks the whole config and defines every model,
 * so its growth from 1,000 to 10,000 models shows whether any of that is worse than
 * linear. Compared with the targets (50 ms and 10 MiB at 1,000 models; at 10,000 models
 * at most 12 times the 1,000-model figure, and 150 ms) and with fork + exec + exit of
 * `true` measured in the same run. The two sizes alternate run by run, so that a busy
 * host slows both alike, and the CPU time larderd spent until /health answered (all its
 * threads, from /proc/PID/task/TID/schedstat) is printed beside the wall time: a host
 * shared with other work stretches the wall time, hardly the CPU time. Prints figures
 * and ratios; never passes or fails on time.
 *
 * usage: bench_startup [LARDERD] [MODELS] [MORE_MODELS]   (defaults 1000 and 10000) */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define RUNS 7
#define TARGET_MS 50.0
#define TARGET_RSS (10.0 * 1024 * 1024)
#define TARGET_GROWTH 12.0
#define TARGET_LARGE_MS 150.0

static char *make_config(int models)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    fprintf(f, "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
               "[memory]\nbudget = 4GiB\n");
    for (int i = 0; i < models; i++)
        fprintf(f, "\n[model.m%04d]\nbackend = %s\npath = weights.bin\nsize = %dMiB\n"
                   "load_ms = 50\nttl = %dm\npriority = %d\n",
                i, i % 2 ? "synthetic" : "synthetic-pooled", 1 + i % 64, 1 + i % 10, i % 3);
    fclose(f);
    return text;
}

static double time_true(void)
{
    double t0 = bench_now();
    pid_t pid = fork();
    if (pid == 0) {
        execlp("true", "true", (char *)NULL);
        _exit(127);
    }
    waitpid(pid, NULL, 0);
    return bench_now() - t0;
}

static int write_side_files(const struct bench_daemon *d)
{
    char path[256];
    snprintf(path, sizeof path, "%s/admin.tokens", d->dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("bench-token\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/weights.bin", d->dir);
    f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("not really weights\n", f);
    return fclose(f);
}

struct size_run {
    int models;
    char *config;
    double ms[RUNS], cpu_ms[RUNS], rss[RUNS];
};

/* CPU time of every thread of pid so far, in ms (0 if unknown). */
static double cpu_ms(pid_t pid)
{
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *dir = opendir(path);
    double ns = 0;
    for (struct dirent *e; dir && (e = readdir(dir));) {
        if (e->d_name[0] == '.')
            continue;
        char stat[320];
        unsigned long long run = 0;
        snprintf(stat, sizeof stat, "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
        FILE *f = fopen(stat, "r");
        if (f && fscanf(f, "%llu", &run) == 1)
            ns += (double)run;
        if (f)
            fclose(f);
    }
    if (dir)
        closedir(dir);
    return ns / 1e6;
}

/* One start-up of larderd on s's config: run i of s. */
static int run_once(struct size_run *s, int i, const char *larderd)
{
    struct bench_daemon d;
    if (bench_prepare(&d, s->config) < 0 || write_side_files(&d) < 0) {
        fprintf(stderr, "bench_startup: cannot prepare a config\n");
        bench_stop(&d);
        return -1;
    }
    double t = bench_start(&d, larderd);
    s->cpu_ms[i] = t < 0 ? 0 : cpu_ms(d.pid);
    s->rss[i] = (double)bench_rss(&d);
    bench_stop(&d);
    if (t < 0) {
        fprintf(stderr, "bench_startup: larderd did not start with %d models\n", s->models);
        return -1;
    }
    s->ms[i] = t * 1000;
    return 0;
}

int main(int argc, char **argv)
{
    const char *larderd = argc > 1 ? argv[1] : LARDERD_PATH;
    struct size_run sizes[2] = {{.models = argc > 2 ? atoi(argv[2]) : 1000},
                                {.models = argc > 3 ? atoi(argv[3]) : 10000}};
    double base[RUNS];
    for (int k = 0; k < 2; k++) {
        if (sizes[k].models <= 0 || !(sizes[k].config = make_config(sizes[k].models))) {
            fprintf(stderr, "usage: bench_startup [LARDERD] [MODELS] [MORE_MODELS]\n");
            return 2;
        }
    }
    for (int i = 0; i < RUNS; i++) {
        for (int k = 0; k < 2; k++)
            if (run_once(&sizes[(i + k) % 2], i, larderd) < 0)
                return 1;
        base[i] = time_true() * 1000;
    }
    double b = bench_median(base, RUNS), m[2], c[2], r[2];
    for (int k = 0; k < 2; k++) {
        m[k] = bench_median(sizes[k].ms, RUNS);
        c[k] = bench_median(sizes[k].cpu_ms, RUNS);
        r[k] = bench_median(sizes[k].rss, RUNS);
        free(sizes[k].config);
        printf("start-up with %d models declared (median of %d runs)\n", sizes[k].models, RUNS);
        printf("  larderd fork to /health 200: %.1f ms   (fork+exec+exit of true: %.2f ms)\n",
               m[k], b);
        printf("  larderd CPU time until then: %.1f ms\n", c[k]);
        printf("  larderd RSS before any load: %.1f MiB\n", r[k] / (1024 * 1024));
    }
    printf("ratio startup_ms/target(50ms): %.2f\n", m[0] / TARGET_MS);
    printf("ratio startup_rss/target(10MiB): %.2f\n", r[0] / TARGET_RSS);
    printf("ratio startup_ms/true_exec: %.1f\n", m[0] / b);
    printf("ratio startup_%d/%d: %.2f (target <= %.0f: linear growth is %.0f)\n",
           sizes[1].models, sizes[0].models, m[1] / m[0], TARGET_GROWTH,
           (double)sizes[1].models / sizes[0].models);
    printf("ratio startup_%d_ms/target(%.0fms): %.2f\n", sizes[1].models, TARGET_LARGE_MS,
           m[1] / TARGET_LARGE_MS);
    if (c[0] > 0)
        printf("ratio startup_cpu_%d/%d: %.2f\n", sizes[1].models, sizes[0].models, c[1] / c[0]);
    printf("ratio startup_rss_%d/%d: %.2f\n", sizes[1].models, sizes[0].models, r[1] / r[0]);
    return 0;
}
