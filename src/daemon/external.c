/* larderd external models (see external.h). */
#include "external.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "children.h"
#include "cmdline.h"
#include "daemon.h"
#include "log.h"
#include "proxy.h"

#define TAIL_LINES 8
#define TAIL_LINE_MAX 400
#define LOG_LINE_MAX 2048
#define CAUSE_MAX 1024
#define KEEP_MAX 16            /* idle kept-alive connections to one child */

extern char **environ;

/* One model's definition, and what outlives each run: a crash to report at the next load. */
struct ext_ud {
    struct larder__daemon *d;
    char *name;
    char **argv, **env;
    char *workdir, *health, *proxy;
    int64_t stop_timeout_ms;
    int64_t load_timeout_ms;
    pthread_mutex_t lock;
    bool crashed;              /* the last run died while loaded: its next load fails */
    char cause[CAUSE_MAX];
};

struct larder__ext_run {
    struct ext_ud *ud;
    struct larder__child *child;
    char *host, *prefix;
    unsigned port;
    int out_fd;                /* read end of the child's stdout and stderr */
    pthread_t reader;
    bool reader_running;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool ready;                /* its health answered: it serves */
    bool stopping;             /* its unload began: an exit is expected */
    bool exited, output_done;
    int status;
    char tail[TAIL_LINES][TAIL_LINE_MAX];
    unsigned n_tail;           /* lines written in all; the last TAIL_LINES are kept */
    pid_t pid;                 /* the child's, set before the reader starts; 0 when none */
    uint64_t start_ticks;      /* the child's start time, to tell it from a reused pid */
    int keep[KEEP_MAX];        /* idle connections to the child, the newest last */
    unsigned n_keep;
    bool keep_closed;          /* stopping: connections given back are closed */
    bool gpu_known;            /* gpu: the tree's device memory as last sampled */
    struct larder__tree_gpu gpu;
    struct larder__ext_run *next;
};

/* Running children, to tell an external model's lease from another's and to end them all. */
static pthread_mutex_t runs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct larder__ext_run *runs;

static void runs_add(struct larder__ext_run *x)
{
    pthread_mutex_lock(&runs_lock);
    x->next = runs;
    runs = x;
    pthread_mutex_unlock(&runs_lock);
}

/* Unlinks x; logs the device memory its tree held as last sampled, when known. */
static void runs_remove(struct larder__ext_run *x)
{
    bool known = false;
    pthread_mutex_lock(&runs_lock);
    for (struct larder__ext_run **pp = &runs; *pp; pp = &(*pp)->next) {
        if (*pp == x) {
            *pp = x->next;
            known = x->gpu_known;
            break;
        }
    }
    pthread_mutex_unlock(&runs_lock);
    if (known)
        larder__log(LARDER__LOG_INFO, "model server unloading",
                    json_pack("{s:s,s:i,s:I}", "model", x->ud->name, "pid", (int)x->pid,
                              "gpu_process_bytes", (json_int_t)x->gpu.total));
}

bool larder__ext_gpu(const struct larder__daemon *d, const char *name,
                     struct larder__tree_gpu *ret)
{
    bool known = false;
    pthread_mutex_lock(&runs_lock);
    for (struct larder__ext_run *x = runs; x; x = x->next)
        if (x->ud->d == d && strcmp(x->ud->name, name) == 0) {
            known = x->gpu_known;
            *ret = x->gpu;
            break;
        }
    pthread_mutex_unlock(&runs_lock);
    return known;
}

/* Stores a sample into the run that still has that child. */
static void store_gpu(const struct larder__daemon *d, pid_t pid, uint64_t start_ticks,
                      bool known, const struct larder__tree_gpu *g)
{
    pthread_mutex_lock(&runs_lock);
    for (struct larder__ext_run *x = runs; x; x = x->next)
        if (x->ud->d == d && x->child && larder__child_pid(x->child) == pid &&
            x->start_ticks == start_ticks) {
            x->gpu_known = known;
            x->gpu = *g;
        }
    pthread_mutex_unlock(&runs_lock);
}

struct larder__ext_run *larder__ext_of_lease(const larder_lease *lease)
{
    void *model = lease ? larder_lease_model(lease) : NULL;
    struct larder__ext_run *found = NULL;
    pthread_mutex_lock(&runs_lock);
    for (struct larder__ext_run *x = runs; x && !found; x = x->next)
        if (x == model)
            found = x;
    pthread_mutex_unlock(&runs_lock);
    return found;
}

void larder__ext_target(const struct larder__ext_run *x, const char **ret_host,
                        unsigned *ret_port, const char **ret_prefix)
{
    *ret_host = x->host;
    *ret_port = x->port;
    *ret_prefix = x->prefix;
}

int larder__ext_pid(const struct larder__ext_run *x)
{
    return x ? (int)x->pid : 0;
}

/* ---- kept-alive connections ----------------------------------------------------------- */

/* A connection the child may have closed since (its idle timeout, a restart of its
 * listener) reads as readable: end of file, or bytes nobody asked for. */
static bool conn_idle_ok(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 0;
}

int larder__ext_conn_take(struct larder__ext_run *x)
{
    for (;;) {
        pthread_mutex_lock(&x->lock);
        int fd = x->n_keep && !x->keep_closed ? x->keep[--x->n_keep] : -1;
        pthread_mutex_unlock(&x->lock);
        if (fd < 0 || conn_idle_ok(fd))
            return fd;
        close(fd);
    }
}

void larder__ext_conn_give(struct larder__ext_run *x, int fd)
{
    if (fd < 0)
        return;
    pthread_mutex_lock(&x->lock);
    bool kept = !x->keep_closed && !x->exited && x->n_keep < KEEP_MAX;
    if (kept)
        x->keep[x->n_keep++] = fd;
    pthread_mutex_unlock(&x->lock);
    if (!kept)
        close(fd);
}

/* Closes every idle connection; none is kept from now on. */
static void conns_close(struct larder__ext_run *x)
{
    pthread_mutex_lock(&x->lock);
    x->keep_closed = true;
    unsigned n = x->n_keep;
    int fds[KEEP_MAX];
    memcpy(fds, x->keep, n * sizeof *fds);
    x->n_keep = 0;
    pthread_mutex_unlock(&x->lock);
    for (unsigned i = 0; i < n; i++)
        close(fds[i]);
}

/* ---- the child's output ---------------------------------------------------------------- */

/* x->lock held: "; last output: a | b | c" (the kept lines) appended to buf. */
static void tail_text(struct larder__ext_run *x, char *buf, size_t len)
{
    unsigned n = x->n_tail < TAIL_LINES ? x->n_tail : TAIL_LINES;
    size_t at = strlen(buf);
    if (n && at < len)
        at += (size_t)snprintf(buf + at, len - at, "; last output: ");
    for (unsigned i = 0; i < n && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s%s", i ? " | " : "",
                               x->tail[(x->n_tail - n + i) % TAIL_LINES]);
}

static void output_line(struct larder__ext_run *x, char *line, size_t n)
{
    while (n && (line[n - 1] == '\r' || line[n - 1] == '\n'))
        line[--n] = 0;
    pthread_mutex_lock(&x->lock);
    snprintf(x->tail[x->n_tail % TAIL_LINES], TAIL_LINE_MAX, "%s", line);
    x->n_tail++;
    pthread_mutex_unlock(&x->lock);
    larder__log(LARDER__LOG_INFO, "model output",
                json_pack("{s:s,s:i,s:s?}", "model", x->ud->name, "pid",
                          larder__ext_pid(x), "line", line));
}

/* Reads the child's stdout and stderr line by line until every writer has closed it. */
static void *reader_main(void *arg)
{
    struct larder__ext_run *x = arg;
    char line[LOG_LINE_MAX + 1], buf[4096];
    size_t n = 0;
    for (;;) {
        ssize_t got = read(x->out_fd, buf, sizeof buf);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        for (ssize_t i = 0; i < got; i++) {
            if (buf[i] != '\n' && n < LOG_LINE_MAX) {
                line[n++] = buf[i];
                continue;
            }
            if (buf[i] != '\n') /* a line past the limit: cut, the rest dropped */
                continue;
            line[n] = 0;
            output_line(x, line, n);
            n = 0;
        }
    }
    if (n) {
        line[n] = 0;
        output_line(x, line, n);
    }
    pthread_mutex_lock(&x->lock);
    x->output_done = true;
    pthread_cond_broadcast(&x->cond);
    pthread_mutex_unlock(&x->lock);
    return NULL;
}

/* ---- a crash while loaded ---------------------------------------------------------------- */

struct crash_job {
    struct larder__daemon *d;
    char *name;
};

/* On the admin pool: the dead child's component goes (its leases end as their requests
 * fail), and a load starts at once that fails with the cause: the component is FAILED,
 * with the cooldown, until a request after it starts the child again. */
static void crash_job(void *arg)
{
    struct crash_job *j = arg;
    larder *m = larder__mgr_get(j->d);
    if (m) {
        int64_t drain;
        pthread_rwlock_rdlock(&j->d->conf_lock);
        drain = j->d->conf->drain_timeout_ms;
        pthread_rwlock_unlock(&j->d->conf_lock);
        if (larder_unload(m, j->name, drain) == 0)
            larder_preload(m, j->name);
        larder__mgr_put(j->d);
    }
    free(j->name);
    free(j);
}

static void on_child_exit(void *ctx, struct larder__child *c, int status)
{
    struct larder__ext_run *x = ctx;
    char what[128];
    larder__child_status_text(status, what, sizeof what);
    pthread_mutex_lock(&x->lock);
    x->exited = true;
    x->status = status;
    bool crashed = x->ready && !x->stopping;
    pthread_cond_broadcast(&x->cond);
    pthread_mutex_unlock(&x->lock);
    if (!crashed)
        return;
    struct ext_ud *ud = x->ud;
    pthread_mutex_lock(&ud->lock);
    ud->crashed = true;
    snprintf(ud->cause, sizeof ud->cause, "its server (pid %d) %s while loaded",
             (int)larder__child_pid(c), what);
    pthread_mutex_unlock(&ud->lock);
    larder__log(LARDER__LOG_ERROR, "model server died",
                json_pack("{s:s,s:i,s:s}", "model", ud->name, "pid", (int)larder__child_pid(c),
                          "cause", what));
    struct crash_job *j = calloc(1, sizeof *j);
    if (j && (j->name = strdup(ud->name))) {
        j->d = ud->d;
        if (larder__pool_submit(ud->d->admin_pool, crash_job, j) == 0)
            return;
        free(j->name);
    }
    free(j);
}

bool larder__ext_dead(struct larder__ext_run *x, char *buf, size_t len)
{
    pthread_mutex_lock(&x->lock);
    bool dead = x->exited;
    if (dead) {
        larder__child_status_text(x->status, buf, len);
        tail_text(x, buf, len);
    }
    pthread_mutex_unlock(&x->lock);
    return dead;
}

/* ---- the class ----------------------------------------------------------------------------- */

/* A free loopback TCP port, for ${PORT}. */
static int free_port(unsigned *ret)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int r = fd < 0 ? -errno : 0;
    if (r == 0 && (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
                   getsockname(fd, (struct sockaddr *)&a, &len) < 0))
        r = -errno;
    if (fd >= 0)
        close(fd);
    if (r == 0)
        *ret = ntohs(a.sin_port);
    return r;
}

/* http://HOST[:PORT][/PREFIX] (macros expanded) into x. */
static int parse_base(struct larder__ext_run *x, const char *url, char *err, size_t errlen)
{
    const char *h = url + 7, *end = h + strcspn(h, "/");
    const char *colon = NULL;
    if (*h == '[') {
        const char *rb = memchr(h, ']', (size_t)(end - h));
        colon = rb && rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
    }
    const char *hend = colon ? colon : end;
    if (*h == '[' && hend > h + 1 && hend[-1] == ']') {
        h++;
        hend--;
    }
    unsigned long port = 80;
    if (colon) {
        char *e;
        port = strtoul(colon + 1, &e, 10);
        if (e != end || port == 0 || port > 65535) {
            snprintf(err, errlen, "proxy '%s': bad port", url);
            return -EINVAL;
        }
    }
    x->host = strndup(h, (size_t)(hend - h));
    size_t plen = strlen(end);
    while (plen && end[plen - 1] == '/')
        plen--;
    x->prefix = strndup(end, plen);
    x->port = (unsigned)port;
    return x->host && x->prefix ? 0 : -ENOMEM;
}

/* The environment of the child: larderd's, with the model's KEY=VALUE words over it. */
static char **child_env(struct ext_ud *ud, unsigned port)
{
    size_t n = 0, k = 0;
    while (environ[n])
        n++;
    size_t extra = 0;
    while (ud->env && ud->env[extra])
        extra++;
    char **env = calloc(n + extra + 1, sizeof *env);
    if (!env)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        bool over = false;
        size_t kl = strcspn(environ[i], "=");
        for (size_t j = 0; j < extra && !over; j++)
            over = strncmp(ud->env[j], environ[i], kl + 1) == 0;
        if (!over && !(env[k++] = strdup(environ[i])))
            goto fail;
    }
    for (size_t j = 0; j < extra; j++)
        if (!(env[k++] = larder__cmdline_expand(ud->env[j], port, ud->name)))
            goto fail;
    return env;
fail:
    larder__cmdline_free(env);
    return NULL;
}

static char **expand_all(char *const *words, unsigned port, const char *model)
{
    size_t n = 0;
    while (words[n])
        n++;
    char **out = calloc(n + 1, sizeof *out);
    for (size_t i = 0; out && i < n; i++) {
        if (!(out[i] = larder__cmdline_expand(words[i], port, model))) {
            larder__cmdline_free(out);
            return NULL;
        }
    }
    return out;
}

static void run_free(struct larder__ext_run *x)
{
    if (!x)
        return;
    runs_remove(x);
    conns_close(x);
    if (x->child) {
        pthread_mutex_lock(&x->lock);
        x->stopping = true;
        pthread_mutex_unlock(&x->lock);
        larder__child_stop(x->child, (int)x->ud->stop_timeout_ms);
        x->child = larder__child_free(x->child);
    }
    if (x->reader_running)
        pthread_join(x->reader, NULL);
    if (x->out_fd >= 0)
        close(x->out_fd);
    pthread_mutex_destroy(&x->lock);
    pthread_cond_destroy(&x->cond);
    free(x->host);
    free(x->prefix);
    free(x);
}

/* After an early exit: waits (bounded) for the reader to see the end of the output, so that
 * the last lines are in the message. */
static void wait_output(struct larder__ext_run *x)
{
    double until = larder__now() + 2.0;
    pthread_mutex_lock(&x->lock);
    while (!x->output_done && larder__now() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&x->cond, &x->lock, &ts);
    }
    pthread_mutex_unlock(&x->lock);
}

/* Polls the health path until 200, an exit, or the load timeout. */
static int wait_healthy(struct larder__ext_run *x, char *err, size_t errlen)
{
    struct ext_ud *ud = x->ud;
    double start = larder__now(), deadline = start + (double)ud->load_timeout_ms / 1000.0;
    int interval = 10, last_status = 0;
    char last[256] = "no answer yet";
    for (;;) {
        int status;
        if (larder__child_wait(x->child, 0, &status)) {
            char what[128];
            larder__child_status_text(status, what, sizeof what);
            wait_output(x);
            snprintf(err, errlen, "its command %s before it answered on %s", what, ud->health);
            pthread_mutex_lock(&x->lock);
            tail_text(x, err, errlen);
            pthread_mutex_unlock(&x->lock);
            return -ECHILD;
        }
        double now = larder__now();
        if (now >= deadline)
            break;
        double probe_until = now + 2.0 < deadline ? now + 2.0 : deadline;
        int code = 0;
        if (larder__upstream_get_status(x->host, x->port, ud->health, probe_until, &code, last,
                                        sizeof last) == 0) {
            if (code == 200)
                return 0;
            last_status = code;
            snprintf(last, sizeof last, "%s answered %d", ud->health, code);
        }
        /* Sleeps until the next probe, waking at once if the child exits. */
        int left = (int)((deadline - larder__now()) * 1000.0);
        larder__child_wait(x->child, interval < left ? interval : left > 0 ? left : 0, NULL);
        interval = interval < 200 ? interval * 2 : 200;
    }
    (void)last_status;
    snprintf(err, errlen, "its server did not answer 200 on %s within the load timeout "
             "(%lld ms): %s", ud->health, (long long)ud->load_timeout_ms, last);
    pthread_mutex_lock(&x->lock);
    tail_text(x, err, errlen);
    pthread_mutex_unlock(&x->lock);
    return -ETIMEDOUT;
}

static int spawn(struct larder__ext_run *x, char *err, size_t errlen)
{
    struct ext_ud *ud = x->ud;
    unsigned port = 0;
    int fds[2] = {-1, -1}, r = free_port(&port);
    if (r < 0) {
        snprintf(err, errlen, "no free loopback port: %s", strerror(-r));
        return r;
    }
    char *base = larder__cmdline_expand(ud->proxy, port, ud->name);
    char **argv = expand_all(ud->argv, port, ud->name);
    char **envp = child_env(ud, port);
    char label[320];
    snprintf(label, sizeof label, "external %s", ud->name);
    r = base && argv && envp ? parse_base(x, base, err, errlen) : -ENOMEM;
    if (r == 0 && pipe2(fds, O_CLOEXEC) < 0)
        r = -errno;
    if (r == 0) {
        struct larder__child_spec spec = {
            .argv = (const char *const *)argv,
            .envp = (const char *const *)envp,
            .workdir = ud->workdir,
            .stdio = {-1, fds[1], fds[1]},
            .label = label,
            .on_exit = on_child_exit,
            .on_exit_ctx = x,
        };
        r = larder__child_spawn(ud->d->children, &spec, &x->child, err, errlen);
        if (r == 0)
            x->pid = larder__child_pid(x->child);
        close(fds[1]);
        x->out_fd = fds[0];
    }
    if (r == 0 && pthread_create(&x->reader, NULL, reader_main, x) == 0)
        x->reader_running = true;
    if (r == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    if (r == 0)
        larder__log(LARDER__LOG_INFO, "model server started",
                    json_pack("{s:s,s:i,s:s,s:i}", "model", ud->name, "pid",
                              larder__ext_pid(x), "command", argv[0], "port", (int)x->port));
    free(base);
    larder__cmdline_free(argv);
    larder__cmdline_free(envp);
    return r;
}

static int cls_load(void *arg, void **ret_model, char *err, size_t errlen)
{
    struct ext_ud *ud = arg;
    pthread_mutex_lock(&ud->lock);
    bool crashed = ud->crashed;
    ud->crashed = false;
    if (crashed)
        snprintf(err, errlen, "%s", ud->cause);
    pthread_mutex_unlock(&ud->lock);
    if (crashed)
        return -EPIPE;
    if (!ud->d->children) {
        snprintf(err, errlen, "larderd has no child supervisor");
        return -ENOTSUP;
    }
    struct larder__ext_run *x = calloc(1, sizeof *x);
    if (!x) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    x->ud = ud;
    x->out_fd = -1;
    pthread_mutex_init(&x->lock, NULL);
    pthread_cond_init(&x->cond, NULL);
    int r = spawn(x, err, errlen);
    if (r == 0)
        r = wait_healthy(x, err, errlen);
    if (r < 0) {
        run_free(x);
        return r;
    }
    pthread_mutex_lock(&x->lock);
    x->ready = true;
    bool exited = x->exited;
    pthread_mutex_unlock(&x->lock);
    if (exited) { /* died between its answer and now */
        snprintf(err, errlen, "its server exited right after it answered on %s", ud->health);
        run_free(x);
        return -ECHILD;
    }
    x->start_ticks = larder__proc_start_time((pid_t)larder__ext_pid(x));
    runs_add(x);
    larder__log(LARDER__LOG_INFO, "model server ready",
                json_pack("{s:s,s:i,s:i}", "model", ud->name, "pid", larder__ext_pid(x), "port",
                          (int)x->port));
    *ret_model = x;
    return 0;
}

static void cls_unload(void *arg, void *model)
{
    struct larder__ext_run *x = model;
    int pid = larder__ext_pid(x);
    run_free(x);
    larder__log(LARDER__LOG_INFO, "model server stopped",
                json_pack("{s:s,s:i}", "model", ((struct ext_ud *)arg)->name, "pid", pid));
}

static int cls_measure(void *arg, void *model, uint64_t *ret_bytes)
{
    struct larder__ext_run *x = model;
    struct larder__child_mem m;
    if (!x || !x->child || larder__child_memory(x->child, &m) < 0 || !m.rss)
        return -ESRCH;
    *ret_bytes = m.rss;
    return 0;
}

static const struct larder_class ext_class = {
    .struct_size = sizeof ext_class,
    .name = "external",
    .load = cls_load,
    .unload = cls_unload,
    .measure = cls_measure,
};

const struct larder_class *larder__ext_class(void)
{
    return &ext_class;
}

static char **copy_words(char *const *w)
{
    size_t n = 0;
    while (w && w[n])
        n++;
    char **out = calloc(n + 1, sizeof *out);
    for (size_t i = 0; out && i < n; i++) {
        if (!(out[i] = strdup(w[i]))) {
            larder__cmdline_free(out);
            return NULL;
        }
    }
    return out;
}

void larder__ext_ud_free(void *arg)
{
    struct ext_ud *ud = arg;
    if (!ud)
        return;
    larder__cmdline_free(ud->argv);
    larder__cmdline_free(ud->env);
    free(ud->workdir);
    free(ud->health);
    free(ud->proxy);
    free(ud->name);
    pthread_mutex_destroy(&ud->lock);
    free(ud);
}

void *larder__ext_ud_new(struct larder__daemon *d, const struct larder__config *c,
                         const struct larder__model_conf *m)
{
    struct ext_ud *ud = calloc(1, sizeof *ud);
    if (!ud)
        return NULL;
    pthread_mutex_init(&ud->lock, NULL);
    ud->d = d;
    ud->name = strdup(m->name);
    ud->argv = copy_words(m->ext.argv);
    ud->env = copy_words(m->ext.env);
    ud->workdir = strdup(m->ext.workdir ? m->ext.workdir : c->dir);
    ud->health = strdup(m->ext.health);
    ud->proxy = strdup(m->ext.proxy);
    ud->stop_timeout_ms = m->ext.stop_timeout_ms;
    ud->load_timeout_ms = m->timeout_ms ? m->timeout_ms : c->request_timeout_ms;
    if (!ud->name || !ud->argv || !ud->env || !ud->workdir || !ud->health || !ud->proxy) {
        larder__ext_ud_free(ud);
        return NULL;
    }
    return ud;
}

/* ---- sampling ---------------------------------------------------------------------------- */

bool larder__ext_running(const struct larder__daemon *d)
{
    bool any = false;
    pthread_mutex_lock(&runs_lock);
    for (struct larder__ext_run *x = runs; x && !any; x = x->next)
        any = x->ud->d == d;
    pthread_mutex_unlock(&runs_lock);
    return any;
}

struct sample {
    char *name;
    pid_t pid;
    uint64_t start_ticks;
};

void larder__ext_sample(struct larder__daemon *d)
{
    size_t n = 0, cap = 0;
    struct sample *v = NULL;
    pthread_mutex_lock(&runs_lock);
    for (struct larder__ext_run *x = runs; x; x = x->next) {
        if (x->ud->d != d || !x->child)
            continue;
        if (n == cap) {
            struct sample *more = realloc(v, (cap = cap ? cap * 2 : 8) * sizeof *more);
            if (!more)
                break;
            v = more;
        }
        v[n] = (struct sample){strdup(x->ud->name), larder__child_pid(x->child),
                               x->start_ticks};
        n += v[n].name != NULL;
    }
    pthread_mutex_unlock(&runs_lock);
    /* /proc is read with no lock held; a pid whose start time changed is another process. */
    larder *m = n ? larder__mgr_get(d) : NULL;
    for (size_t i = 0; i < n; i++) {
        struct larder__child_mem mem;
        if (m && larder__proc_tree_memory(v[i].pid, &mem) == 0 && mem.rss &&
            larder__proc_start_time(v[i].pid) == v[i].start_ticks) {
            int r = larder_update_measured(m, v[i].name, mem.rss);
            if (r == LARDER_ENOSPC)
                larder__log(LARDER__LOG_WARN, "model server grew past the budget",
                            json_pack("{s:s,s:i,s:I,s:s}", "model", v[i].name, "pid",
                                      (int)v[i].pid, "rss_bytes", (json_int_t)mem.rss,
                                      "action", "evicted once idle; no load until under"));
        }
        struct larder__tree_gpu g;
        if (m) {
            bool known = larder__proc_tree_gpu(m, v[i].pid, &g) == 0;
            store_gpu(d, v[i].pid, v[i].start_ticks, known, &g);
        }
        free(v[i].name);
    }
    if (m)
        larder__mgr_put(d);
    free(v);
}

void larder__ext_stop_all(void)
{
    pthread_mutex_lock(&runs_lock);
    for (struct larder__ext_run *x = runs; x; x = x->next)
        if (x->child)
            larder__child_signal(x->child, SIGKILL);
    pthread_mutex_unlock(&runs_lock);
}
