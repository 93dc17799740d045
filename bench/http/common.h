/* Helpers shared by the HTTP benchmarks: start larderd on a free port with a generated
 * config, wait for /health, stop it. Benchmarks print figures and ratios; they never
 * pass or fail on time. */
#ifndef LARDER_BENCH_HTTP_COMMON_H
#define LARDER_BENCH_HTTP_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "client.h"

struct bench_daemon {
    pid_t pid;
    char dir[128];
    char config[192];
    char log[192];
    unsigned port;
    struct larder__url url;
};

/* Monotonic seconds. */
double bench_now(void);

/* Creates a temporary directory with config text `config` (which must listen on
 * 127.0.0.1:0) in dir/larder.ini. Returns 0 or -1. */
int bench_prepare(struct bench_daemon *d, const char *config);

/* Starts larderd on the prepared config; returns the seconds from fork to the first
 * /health 200, or a negative value on failure. */
double bench_start(struct bench_daemon *d, const char *larderd);

/* Resident set size of the daemon in bytes (VmRSS), 0 if unknown. */
unsigned long long bench_rss(const struct bench_daemon *d);

/* SIGTERM, wait, remove the directory. */
void bench_stop(struct bench_daemon *d);

/* Median of n values (sorts them). */
double bench_median(double *v, size_t n);

/* Reads a file; NULL on error. */
char *bench_read_file(const char *path, size_t *ret_len);

#endif
