/* Worker processes against in-process models, in the same run: the same Tesseract model
 * (English, examples/ocr.png) declared twice in one larderd, once with isolation =
 * worker and once in-process, so that every ratio compares like with like.
 *
 *   warm_1:  the median latency of sequential warm requests, worker over in-process;
 *   warm_8:  the mean latency of 8 connections at once (8 instances each);
 *   cold:    the first request of a fresh larderd (start the worker or map the plugin,
 *            load, recognize), median of RUNS fresh daemons each;
 *   rss:     larderd's own RSS after 20 worker load/unload cycles over its RSS after
 *            the first one.
 *
 * usage: bench_isolation [LARDERD]. Prints figures and ratios; passes or fails on nothing
 * but errors. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define RUNS 5
#define WARM 30
#define CONNS 8
#define PER_CONN 4
#define CYCLES 20
#define TOKEN "bench-isolation-token-0123456789"

static const char *larderd;
static char *png;
static size_t png_len;

static const char config[] =
    "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
    "[memory]\nbudget = 4GiB\nwatch_pressure = no\n"
    "[model.ocr-worker]\nbackend = tesseract\nlanguage = eng\nisolation = worker\n"
    "instances = " "8" "\nttl = -1\n"
    "[model.ocr-inproc]\nbackend = tesseract\nlanguage = eng\ninstances = 8\nttl = -1\n";

static int start(struct bench_daemon *d)
{
    if (bench_prepare(d, config) < 0)
        return -1;
    char path[256];
    snprintf(path, sizeof path, "%s/admin.tokens", d->dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "%s\n", TOKEN);
    fclose(f);
    chmod(path, 0600);
    return bench_start(d, larderd) < 0 ? -1 : 0;
}

/* One OCR request; its seconds, or -1. */
static double ocr(struct bench_daemon *d, const char *model)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    struct larder__http_response r = {0};
    double t0 = bench_now();
    int e = larder__http_request(&d->url, "POST", path, NULL, "image/png", png, png_len,
                                 120000, &r);
    double t = bench_now() - t0;
    bool ok = e == 0 && r.status == 200 && r.body && strstr(r.body, "lazy dog");
    if (!ok)
        fprintf(stderr, "bench_isolation: %s answered %d: %s\n", model, e ? e : r.status,
                r.body ? r.body : "");
    larder__http_response_clear(&r);
    return ok ? t : -1;
}

static int unload(struct bench_daemon *d, const char *model)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/unload", model);
    const char *headers[] = {"Authorization: Bearer " TOKEN, NULL};
    struct larder__http_response r = {0};
    int e = larder__http_request(&d->url, "POST", path, headers, NULL, NULL, 0, 120000, &r);
    int st = e ? e : r.status;
    larder__http_response_clear(&r);
    return st == 200 ? 0 : -1;
}

struct conn {
    struct bench_daemon *d;
    const char *model;
    double total;
    bool failed;
};

static void *conn_main(void *p)
{
    struct conn *c = p;
    for (int i = 0; i < PER_CONN; i++) {
        double t = ocr(c->d, c->model);
        if (t < 0)
            c->failed = true;
        else
            c->total += t;
    }
    return NULL;
}

/* Mean latency of CONNS connections at once, PER_CONN requests each; -1 on error. */
static double parallel(struct bench_daemon *d, const char *model)
{
    struct conn c[CONNS];
    pthread_t t[CONNS];
    for (int i = 0; i < CONNS; i++) {
        c[i] = (struct conn){.d = d, .model = model};
        pthread_create(&t[i], NULL, conn_main, &c[i]);
    }
    double sum = 0;
    bool failed = false;
    for (int i = 0; i < CONNS; i++) {
        pthread_join(t[i], NULL);
        sum += c[i].total;
        failed |= c[i].failed;
    }
    return failed ? -1 : sum / (CONNS * PER_CONN);
}

static double cold(const char *model)
{
    struct bench_daemon d;
    double t = start(&d) < 0 ? -1 : ocr(&d, model);
    if (t < 0)
        fprintf(stderr, "bench_isolation: a cold run of %s failed\n", model);
    bench_stop(&d);
    return t;
}

int main(int argc, char **argv)
{
    larderd = argc > 1 ? argv[1] : LARDERD_PATH;
    png = bench_read_file(EXAMPLES_DIR "/ocr.png", &png_len);
    if (!png) {
        fprintf(stderr, "bench_isolation: cannot read %s/ocr.png\n", EXAMPLES_DIR);
        return 1;
    }
    setenv("OMP_THREAD_LIMIT", "1", 0);

    /* cold: fresh daemons, alternating */
    double cw[RUNS], cp[RUNS];
    if (cold("ocr-worker") < 0 || cold("ocr-inproc") < 0)
        return 1;
    for (int i = 0; i < RUNS; i++)
        if ((cw[i] = cold("ocr-worker")) < 0 || (cp[i] = cold("ocr-inproc")) < 0)
            return 1;

    /* warm, one daemon serving both */
    struct bench_daemon d;
    if (start(&d) < 0)
        return 1;
    double w1[WARM], p1[WARM];
    for (int i = 0; i < 3; i++)
        if (ocr(&d, "ocr-worker") < 0 || ocr(&d, "ocr-inproc") < 0)
            return 1;
    for (int i = 0; i < WARM; i++)
        if ((w1[i] = ocr(&d, "ocr-worker")) < 0 || (p1[i] = ocr(&d, "ocr-inproc")) < 0)
            return 1;
    /* 8 connections: one round each first, so every instance exists */
    if (parallel(&d, "ocr-worker") < 0 || parallel(&d, "ocr-inproc") < 0)
        return 1;
    double w8 = parallel(&d, "ocr-worker"), p8 = parallel(&d, "ocr-inproc");
    double w8b = parallel(&d, "ocr-worker"), p8b = parallel(&d, "ocr-inproc");
    bench_stop(&d);
    if (w8 < 0 || p8 < 0 || w8b < 0 || p8b < 0)
        return 1;
    w8 = (w8 + w8b) / 2;
    p8 = (p8 + p8b) / 2;

    /* larderd's RSS over worker load/unload cycles */
    if (start(&d) < 0)
        return 1;
    unsigned long long rss0 = 0, rss1 = 0;
    for (int i = 0; i < CYCLES; i++) {
        if (ocr(&d, "ocr-worker") < 0 || unload(&d, "ocr-worker") < 0)
            return 1;
        if (i == 0)
            rss0 = bench_rss(&d);
    }
    rss1 = bench_rss(&d);
    /* as many again: growth that is warm-up (arenas, stacks) stops, a leak would not */
    for (int i = 0; i < CYCLES; i++)
        if (ocr(&d, "ocr-worker") < 0 || unload(&d, "ocr-worker") < 0)
            return 1;
    unsigned long long rss2 = bench_rss(&d);
    bench_stop(&d);
    free(png);

    double mw1 = bench_median(w1, WARM), mp1 = bench_median(p1, WARM);
    double mcw = bench_median(cw, RUNS), mcp = bench_median(cp, RUNS);
    printf("isolation: Tesseract OCR through a worker process vs in-process, same run\n");
    printf("  warm, 1 connection (median of %d): worker %.1f ms, in-process %.1f ms\n", WARM,
           mw1 * 1000, mp1 * 1000);
    printf("  warm, %d connections (mean of %d): worker %.1f ms, in-process %.1f ms\n", CONNS,
           2 * CONNS * PER_CONN, w8 * 1000, p8 * 1000);
    printf("  cold first request (median of %d fresh daemons): worker %.1f ms, in-process "
           "%.1f ms\n", RUNS, mcw * 1000, mcp * 1000);
    printf("  larderd RSS: %.2f MiB after the first worker load/unload, %.2f MiB after %d, "
           "%.2f MiB after %d\n",
           rss0 / 1048576.0, rss1 / 1048576.0, CYCLES, rss2 / 1048576.0, 2 * CYCLES);
    printf("ratio warm_1_worker/inproc: %.3f   (target <= 1.15)\n", mw1 / mp1);
    printf("ratio warm_8_worker/inproc: %.3f   (target <= 1.15)\n", w8 / p8);
    printf("ratio cold_worker/inproc: %.3f   (target <= 1.25)\n", mcw / mcp);
    printf("ratio rss_after_%d_cycles/after_1: %.3f   (target <= 1.02)\n", CYCLES,
           (double)rss1 / (double)rss0);
    printf("summary: warm %.2fx (1 conn), %.2fx (8 conns), cold %.2fx in-process; "
           "larderd RSS %.3fx after %d worker cycles\n",
           mw1 / mp1, w8 / p8, mcw / mcp, (double)rss1 / (double)rss0, CYCLES);
    return 0;
}
