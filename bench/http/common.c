/* Helpers shared by the HTTP benchmarks (see common.h). */
#include "common.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

char *bench_read_file(const char *path, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (ret_len)
            *ret_len = (size_t)n;
    }
    return buf;
}

int bench_prepare(struct bench_daemon *d, const char *config)
{
    memset(d, 0, sizeof *d);
    snprintf(d->dir, sizeof d->dir, "/tmp/larder-bench-XXXXXX");
    if (!mkdtemp(d->dir))
        return -1;
    snprintf(d->config, sizeof d->config, "%s/larder.ini", d->dir);
    snprintf(d->log, sizeof d->log, "%s/larderd.log", d->dir);
    FILE *f = fopen(d->config, "w");
    if (!f)
        return -1;
    fputs(config, f);
    return fclose(f) == 0 ? 0 : -1;
}

static unsigned logged_port(const struct bench_daemon *d)
{
    char *log = bench_read_file(d->log, NULL);
    char *p = log ? strstr(log, " listening ") : NULL;
    unsigned port = 0;
    if (p && (p = strstr(p, "port=")))
        port = (unsigned)strtoul(p + 5, NULL, 10);
    free(log);
    return port;
}

double bench_start(struct bench_daemon *d, const char *larderd)
{
    double t0 = bench_now();
    pid_t parent = getpid();
    d->pid = fork();
    if (d->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        dup2(fd, 1);
        execl(larderd, "larderd", "--config", d->config, (char *)NULL);
        _exit(127);
    }
    while (bench_now() - t0 < 60) {
        if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
            d->pid = 0;
            return -1;
        }
        if (!d->port && (d->port = logged_port(d))) {
            char u[64];
            snprintf(u, sizeof u, "127.0.0.1:%u", d->port);
            larder__url_parse(u, &d->url);
        }
        struct larder__http_response r = {0};
        if (d->port && larder__http_request(&d->url, "GET", "/health", NULL, NULL, NULL, 0, 5000,
                                            &r) == 0 && r.status == 200) {
            larder__http_response_clear(&r);
            return bench_now() - t0;
        }
        larder__http_response_clear(&r);
        usleep(200);
    }
    return -1;
}

unsigned long long bench_rss(const struct bench_daemon *d)
{
    char path[64], line[256];
    unsigned long long kb = 0;
    snprintf(path, sizeof path, "/proc/%d/status", (int)d->pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

void bench_stop(struct bench_daemon *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
    }
    if (strncmp(d->dir, "/tmp/larder-bench-", 18) == 0) {
        char cmd[192];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", d->dir);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
