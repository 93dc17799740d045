/* GET /v1/models with 10,000 models declared: the time of one listing through larderd
 * against nginx sending a file with the same bytes (wrk, one connection, alternating
 * rounds in the same run), and larderd's resident memory before and after 100 listings.
 * nginx and wrk: see nginx.h.
 *
 * usage: bench_listing [LARDERD] [MODELS] [SECONDS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nginx.h"

#define ROUNDS 5
#define LISTINGS 100
#define TARGET_TIME 10.0
#define TARGET_RSS 1.1

static char *make_config(int models)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    fprintf(f, "[server]\nlisten = 127.0.0.1:0\n[memory]\nbudget = 4GiB\nwatch_pressure = no\n");
    for (int i = 0; i < models; i++) {
        fprintf(f, "\n[model.m%05d]\nbackend = %s\nsize = %dMiB\nttl = %dm\npriority = %d\n", i,
                i % 2 ? "synthetic" : "synthetic-pooled", 1 + i % 64, 1 + i % 10, i % 3);
        if (i % 5 == 1)
            fprintf(f, "fallback = m00000\n");
    }
    fclose(f);
    return text;
}

/* The daemon's RSS once it has settled: the client has its last byte a moment before
 * larderd lets go of the reply, so wait (up to 2 s) for four equal readings 50 ms
 * apart. */
static unsigned long long settled_rss(const struct bench_daemon *d)
{
    unsigned long long v = bench_rss(d);
    for (int i = 0, same = 0; i < 40 && same < 4; i++) {
        usleep(50000);
        unsigned long long now = bench_rss(d);
        same = now == v ? same + 1 : 0;
        v = now;
    }
    return v;
}

/* LISTINGS sequential listings; the first body goes to *ret_body. Returns 0 or -1. */
static int listings(struct bench_daemon *d, char **ret_body, size_t *ret_len)
{
    for (int i = 0; i < LISTINGS; i++) {
        struct larder__http_response r = {0};
        int e = larder__http_request(&d->url, "GET", "/v1/models", NULL, NULL, NULL, 0, 60000,
                                     &r);
        if (e < 0 || r.status != 200) {
            fprintf(stderr, "bench_listing: GET /v1/models: %d %d\n", e, r.status);
            larder__http_response_clear(&r);
            return -1;
        }
        if (i == 0) {
            *ret_body = r.body;
            *ret_len = r.body_len;
            r.body = NULL;
        }
        larder__http_response_clear(&r);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *larderd = argc > 1 ? argv[1] : LARDERD_PATH;
    int models = argc > 2 ? atoi(argv[2]) : 10000;
    int secs = argc > 3 ? atoi(argv[3]) : 2;
    char *config = make_config(models);
    struct bench_daemon ld, ng;
    if (!config || bench_prepare(&ld, config) < 0 || bench_start(&ld, larderd) < 0) {
        fprintf(stderr, "bench_listing: larderd did not start\n");
        bench_stop(&ld);
        return 1;
    }
    free(config);
    char *body = NULL;
    size_t len = 0;
    unsigned long long before = settled_rss(&ld);
    if (listings(&ld, &body, &len) < 0) {
        bench_stop(&ld);
        return 1;
    }
    unsigned long long after = settled_rss(&ld);
    printf("listing: %d models, GET /v1/models = %zu bytes\n", models, len);
    printf("  larderd RSS before %.1f MiB, after %d listings %.1f MiB\n",
           (double)before / 1048576, LISTINGS, (double)after / 1048576);
    printf("ratio listing_rss_after/before: %.2f   (target <= %.1f)\n",
           before ? (double)after / (double)before : 0, TARGET_RSS);
    if (!bench_have_wrk()) {
        printf("listing: timing skipped, wrk is not installed (apt-get install wrk)\n");
        bench_stop(&ld);
        free(body);
        return 0;
    }
    char ng_url[128], ld_url[128];
    pid_t ng_pid = bench_nginx_up(&ng, "models.json", body, len, ng_url);
    free(body);
    snprintf(ld_url, sizeof ld_url, "http://127.0.0.1:%u/v1/models", ld.port);
    double n[ROUNDS], l[ROUNDS], ratio[ROUNDS];
    int failed = ng_pid < 0;
    /* Alternate short runs, so that whatever else the machine does hits both alike. */
    for (int i = 0; i < ROUNDS && !failed; i++) {
        n[i] = bench_wrk(ng_url, NULL, 1, 1, secs);
        l[i] = bench_wrk(ld_url, NULL, 1, 1, secs);
        failed = n[i] <= 0 || l[i] <= 0;
        ratio[i] = failed ? 0 : n[i] / l[i];
    }
    unsigned long long end = settled_rss(&ld);
    bench_nginx_down(&ng, ng_pid);
    bench_stop(&ld);
    if (failed) {
        fprintf(stderr, "bench_listing: a run failed\n");
        return 1;
    }
    double nm = bench_median(n, ROUNDS), lm = bench_median(l, ROUNDS);
    printf("  wrk -t1 -c1, %d alternating rounds of %d s: larderd %.2f ms a listing, nginx "
           "%.2f ms (medians); larderd RSS after the rounds %.1f MiB\n",
           ROUNDS, secs, 1000 / lm, 1000 / nm, (double)end / 1048576);
    printf("ratio listing_time/nginx: %.1f   (median of per-round ratios; target <= %.0f)\n",
           bench_median(ratio, ROUNDS), TARGET_TIME);
    return 0;
}
