/* nginx and wrk for the HTTP benchmarks: nginx serves files from a temporary directory
 * on a free loopback port as this program's child (daemon off); wrk measures either
 * server. Both come from Debian's nginx-light and wrk packages (make bench installs
 * them). */
#ifndef LARDER_BENCH_HTTP_NGINX_H
#define LARDER_BENCH_HTTP_NGINX_H

#include <stddef.h>
#include <sys/types.h>

#include "common.h"

#define BENCH_NGINX "/usr/sbin/nginx"

/* Writes len bytes of data to dir/name. Returns 0 or -1. */
int bench_write_file(const char *dir, const char *name, const void *data, size_t len);

/* True when wrk is on the PATH. */
int bench_have_wrk(void);

/* Runs wrk (threads, conns, secs) on url, with a Lua script when script is not NULL, and
 * returns its Requests/sec, or -1. */
double bench_wrk(const char *url, const char *script, int threads, int conns, int secs);

/* Starts nginx in a new temporary directory of d (see bench_prepare) serving the file
 * `name` holding len bytes of data; its URL goes to url (128 bytes). Returns nginx's pid
 * once it answers, or -1. Stop it with bench_nginx_down. */
pid_t bench_nginx_up(struct bench_daemon *d, const char *name, const void *data, size_t len,
                     char *url);

/* Stops nginx and removes d's directory. */
void bench_nginx_down(struct bench_daemon *d, pid_t pid);

#endif
