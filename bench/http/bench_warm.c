/* Warm requests per second on a no-op synthetic model through larderd, under wrk,
 * against nginx serving a small static file on the same machine, in the same run.
 * nginx runs as this program's child (daemon off) with a temporary config on a loopback
 * port; wrk and nginx come from Debian's wrk and nginx-light packages.
 *
 * usage: bench_warm [LARDERD] [SECONDS] [CONNECTIONS] */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define NGINX "/usr/sbin/nginx"
#define ROUNDS 5
#define BODY "{\"echo\":1,\"model\":\"synthetic\",\"served_by\":\"noop\"}"

static unsigned free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static int write_file(const char *dir, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* Runs wrk and returns its Requests/sec, or -1. */
static double run_wrk(const char *url, const char *script, int secs, int conns)
{
    char cmd[1024], line[512];
    double rps = -1;
    snprintf(cmd, sizeof cmd, "wrk -t2 -c%d -d%ds %s%s %s 2>&1", conns, secs,
             script ? "-s " : "", script ? script : "", url);
    FILE *p = popen(cmd, "r");
    while (p && fgets(line, sizeof line, p)) {
        sscanf(line, "Requests/sec: %lf", &rps);
        if (strstr(line, "Non-2xx"))
            fprintf(stderr, "  wrk: %s", line);
    }
    if (p)
        pclose(p);
    return rps;
}

/* Starts larderd with a warm no-op model; fills url and script. */
static int start_larderd(struct bench_daemon *d, const char *larderd, char *url, char *script)
{
    if (bench_prepare(d, "[server]\nlisten = 127.0.0.1:0\n"
                         "[model.noop]\nbackend = synthetic\nsize = 64KiB\ninstances = 64\n"
                         "ttl = never\n[memory]\nwatch_pressure = no\n") < 0 ||
        write_file(d->dir, "post.lua", "wrk.method = \"POST\"\nwrk.body = \"ping\"\n"
                                       "wrk.headers[\"Content-Type\"] = \"text/plain\"\n") < 0 ||
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

static pid_t start_nginx(const char *dir, unsigned port)
{
    char conf[2048], path[256];
    snprintf(conf, sizeof conf,
             "worker_processes 2;\ndaemon off;\npid %s/nginx.pid;\nerror_log %s/error.log;\n"
             "events { worker_connections 1024; }\n"
             "http {\n  access_log %s/access.log;\n  client_body_temp_path %s;\n"
             "  proxy_temp_path %s;\n  fastcgi_temp_path %s;\n  uwsgi_temp_path %s;\n"
             "  scgi_temp_path %s;\n  default_type application/json;\n"
             "  server { listen 127.0.0.1:%u; root %s; }\n}\n",
             dir, dir, dir, dir, dir, dir, dir, dir, port, dir);
    if (write_file(dir, "nginx.conf", conf) < 0 || write_file(dir, "small.json", BODY "\n") < 0)
        return -1;
    snprintf(path, sizeof path, "%s/nginx.conf", dir);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        execl(NGINX, "nginx", "-p", dir, "-c", path, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Starts nginx in d's directory; fills url. Returns its pid or -1. */
static pid_t nginx_up(struct bench_daemon *d, char *url)
{
    unsigned port = free_port();
    if (access(NGINX, X_OK) != 0 || bench_prepare(d, "") < 0 || !port)
        return -1;
    pid_t pid = start_nginx(d->dir, port);
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%u", port);
    struct larder__url u;
    larder__url_parse(hp, &u);
    for (int i = 0; pid > 0 && i < 5000; i++) {
        struct larder__http_response r = {0};
        bool ready = larder__http_request(&u, "GET", "/small.json", NULL, NULL, NULL, 0, 1000,
                                          &r) == 0 && r.status == 200;
        larder__http_response_clear(&r);
        if (ready) {
            snprintf(url, 128, "http://127.0.0.1:%u/small.json", port);
            return pid;
        }
        usleep(1000);
    }
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    return -1;
}

int main(int argc, char **argv)
{
    const char *larderd = argc > 1 ? argv[1] : LARDERD_PATH;
    int secs = argc > 2 ? atoi(argv[2]) : 2;
    int conns = argc > 3 ? atoi(argv[3]) : 32;
    if (system("command -v wrk > /dev/null 2>&1") != 0) {
        printf("warm: skipped, wrk is not installed (apt-get install wrk)\n");
        return 0;
    }
    struct bench_daemon ng, ld;
    char ng_url[128], ld_url[128], script[256];
    pid_t ng_pid = nginx_up(&ng, ng_url);
    int ld_ok = start_larderd(&ld, larderd, ld_url, script);
    double n[ROUNDS], l[ROUNDS], ratio[ROUNDS];
    int failed = ng_pid < 0 || ld_ok < 0;
    /* Alternate short runs, so that whatever else the machine does hits both alike. */
    for (int i = 0; i < ROUNDS && !failed; i++) {
        n[i] = run_wrk(ng_url, NULL, secs, conns);
        l[i] = run_wrk(ld_url, script, secs, conns);
        failed = n[i] <= 0 || l[i] <= 0;
        ratio[i] = failed ? 0 : l[i] / n[i];
    }
    if (ng_pid > 0) {
        kill(ng_pid, SIGTERM);
        waitpid(ng_pid, NULL, 0);
    }
    bench_stop(&ng);
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
