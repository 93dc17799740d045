/* Warm requests per second on a no-op synthetic model through larderd, under wrk,
 * against nginx serving a small static file on the same machine, in the same run.
 * nginx and wrk: see nginx.h.
 *
 * usage: bench_warm [LARDERD] [SECONDS] [CONNECTIONS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nginx.h"

#define ROUNDS 5
#define POST_LUA                                                                            \
    "wrk.method = \"POST\"\nwrk.body = \"ping\"\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n"
#define BODY "{\"echo\":1,\"model\":\"synthetic\",\"served_by\":\"noop\"}"

/* Starts larderd with a warm no-op model; fills url and script. */
static int start_larderd(struct bench_daemon *d, const char *larderd, char *url, char *script)
{
    if (bench_prepare(d, "[server]\nlisten = 127.0.0.1:0\n"
                         "[model.noop]\nbackend = synthetic\nsize = 64KiB\ninstances = 64\n"
                         "ttl = never\n[memory]\nwatch_pressure = no\n") < 0 ||
        bench_write_file(d->dir, "post.lua", POST_LUA, sizeof POST_LUA - 1) < 0 ||
        bench_start(d, larderd) < 0)
        return -1;
    snprintf(url, 128, "http://127.0.0.1:%u/v1/models/noop/infer", d->port);
    snprintf(script, 256, "%s/post.lua", d->dir);
    struct larder__http_response r = {0};
    larder__http_request(&d->url, "POST", "/v1/models/noop/infer", NULL, "text/plain", "ping", 4,
                         30000, &r); /* load it: the benchmark is about warm requests */
    int ok = r.status == 200;
    larder__http_response_clear(&r);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *larderd = argc > 1 ? argv[1] : LARDERD_PATH;
    int secs = argc > 2 ? atoi(argv[2]) : 2;
    int conns = argc > 3 ? atoi(argv[3]) : 32;
    if (!bench_have_wrk()) {
        printf("warm: skipped, wrk is not installed (apt-get install wrk)\n");
        return 0;
    }
    struct bench_daemon ng, ld;
    char ng_url[128], ld_url[128], script[256];
    pid_t ng_pid = bench_nginx_up(&ng, "small.json", BODY "\n", sizeof BODY, ng_url);
    int ld_ok = start_larderd(&ld, larderd, ld_url, script);
    double n[ROUNDS], l[ROUNDS], ratio[ROUNDS];
    int failed = ng_pid < 0 || ld_ok < 0;
    /* Alternate short runs, so that whatever else the machine does hits both alike. */
    for (int i = 0; i < ROUNDS && !failed; i++) {
        n[i] = bench_wrk(ng_url, NULL, 2, conns, secs);
        l[i] = bench_wrk(ld_url, script, 2, conns, secs);
        failed = n[i] <= 0 || l[i] <= 0;
        ratio[i] = failed ? 0 : l[i] / n[i];
    }
    bench_nginx_down(&ng, ng_pid);
    bench_stop(&ld);
    if (failed) {
        fprintf(stderr, "bench_warm: a run failed\n");
        return 1;
    }
    double nm = bench_median(n, ROUNDS), lm = bench_median(l, ROUNDS);
    double rm = bench_median(ratio, ROUNDS);
    printf("warm requests: wrk -t2 -c%d, %d alternating rounds of %d s on this machine\n", conns,
           ROUNDS, secs);
    printf("  larderd POST /v1/models/noop/infer: %.0f req/s   nginx static file: %.0f req/s "
           "(medians)\n", lm, nm);
    printf("ratio warm_rps_larderd/nginx: %.2f   (median of per-round ratios; target >= 0.5)\n",
           rm);
    return 0;
}
