/* Start-up of larderd with 1,000 models declared: time from fork to the first
 * GET /health 200, and resident memory at that point (nothing loaded). Compared with the
 * targets (50 ms, 10 MiB) and with fork + exec + exit of `true` measured in the same run.
 *
 * usage: bench_startup [LARDERD] [MODELS] */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define RUNS 7
#define TARGET_MS 50.0
#define TARGET_RSS (10.0 * 1024 * 1024)

static char *make_config(int models)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
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

int main(int argc, char **argv)
{
    const char *larderd = argc > 1 ? argv[1] : LARDERD_PATH;
    int models = argc > 2 ? atoi(argv[2]) : 1000;
    char *config = make_config(models);
    double ms[RUNS], rss[RUNS], base[RUNS];
    for (int i = 0; i < RUNS; i++) {
        struct bench_daemon d;
        if (bench_prepare(&d, config) < 0 || write_side_files(&d) < 0) {
            fprintf(stderr, "bench_startup: cannot prepare a config\n");
            return 1;
        }
        double s = bench_start(&d, larderd);
        rss[i] = (double)bench_rss(&d);
        bench_stop(&d);
        if (s < 0) {
            fprintf(stderr, "bench_startup: larderd did not start\n");
            return 1;
        }
        ms[i] = s * 1000;
        base[i] = time_true() * 1000;
    }
    free(config);
    double m = bench_median(ms, RUNS), r = bench_median(rss, RUNS), b = bench_median(base, RUNS);
    printf("start-up with %d models declared (median of %d runs)\n", models, RUNS);
    printf("  larderd fork to /health 200: %.1f ms   (fork+exec+exit of true: %.2f ms)\n", m, b);
    printf("  larderd RSS before any load: %.1f MiB\n", r / (1024 * 1024));
    printf("ratio startup_ms/target(50ms): %.2f\n", m / TARGET_MS);
    printf("ratio startup_rss/target(10MiB): %.2f\n", r / TARGET_RSS);
    printf("ratio startup_ms/true_exec: %.1f\n", m / b);
    return 0;
}
