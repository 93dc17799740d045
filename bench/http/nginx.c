/* nginx and wrk for the HTTP benchmarks (see nginx.h). */
#include "nginx.h"

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

int bench_write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    size_t n = fwrite(data, 1, len, f);
    return fclose(f) == 0 && n == len ? 0 : -1;
}

int bench_have_wrk(void)
{
    return system("command -v wrk > /dev/null 2>&1") == 0;
}

double bench_wrk(const char *url, const char *script, int threads, int conns, int secs)
{
    char cmd[1024], line[512];
    double rps = -1;
    snprintf(cmd, sizeof cmd, "wrk -t%d -c%d -d%ds %s%s %s 2>&1", threads, conns, secs,
             script ? "-s " : "", script ? script : "", url);
    FILE *p = popen(cmd, "r");
    while (p && fgets(line, sizeof line, p)) {
        sscanf(line, "Requests/sec: %lf", &rps);
        if (strstr(line, "Non-2xx") || strstr(line, "Socket errors"))
            fprintf(stderr, "  wrk: %s", line);
    }
    if (p)
        pclose(p);
    return rps;
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
    if (bench_write_file(dir, "nginx.conf", conf, strlen(conf)) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/nginx.conf", dir);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        execl(BENCH_NGINX, "nginx", "-p", dir, "-c", path, (char *)NULL);
        _exit(127);
    }
    return pid;
}

void bench_nginx_down(struct bench_daemon *d, pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    bench_stop(d);
}

pid_t bench_nginx_up(struct bench_daemon *d, const char *name, const void *data, size_t len,
                     char *url)
{
    unsigned port = free_port();
    if (access(BENCH_NGINX, X_OK) != 0 || bench_prepare(d, "") < 0 || !port ||
        bench_write_file(d->dir, name, data, len) < 0)
        return -1;
    pid_t pid = start_nginx(d->dir, port);
    char hp[64], path[160];
    snprintf(hp, sizeof hp, "127.0.0.1:%u", port);
    snprintf(path, sizeof path, "/%s", name);
    struct larder__url u;
    larder__url_parse(hp, &u);
    for (int i = 0; pid > 0 && i < 5000; i++) {
        struct larder__http_response r = {0};
        int ready = larder__http_request(&u, "GET", path, NULL, NULL, NULL, 0, 1000, &r) == 0 &&
                    r.status == 200;
        larder__http_response_clear(&r);
        if (ready) {
            snprintf(url, 128, "http://127.0.0.1:%u/%s", port, name);
            return pid;
        }
        usleep(1000);
    }
    bench_nginx_down(d, pid);
    return -1;
}
