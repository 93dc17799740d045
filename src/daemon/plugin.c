/* larderd backend plugins (see plugin.h). */
#include "plugin.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "remote.h"
#include "selfpath.h"


#define PLUGIN_ERRLEN 512

struct larder__backend {
    char *name;
    char *path;
    pthread_mutex_t lock;  /* serializes opening */
    void *dl;
    _Atomic(const struct larder_backend_ops *) ops;
    struct larder_class cls;
    struct larder__backend *next;
};

struct larder__backends {
    char *dir;
    pthread_mutex_t lock;
    struct larder__backend *list;
    char **names;          /* the larder-*.so of dir, sorted; read once, on first need */
    bool scanned;
};

/* What larder_define() gets as userdata: a copy of the model's config. */
struct model_ud {
    struct larder__backend *be;
    char *name;
    char *file;
    size_t n_opts;
    struct larder_option *opts;
    unsigned *opt_lines;
    uint64_t probed;       /* the plugin's estimate as the probe computed it; 0 = none */
    enum larder__isolation isolation;
    int64_t worker_timeout_ms;
    struct larder__children *children; /* for worker models */
    larder__worker_fail_fn on_fail;
    void *fail_ctx;
};

/* What the class's load returns as the component's model. */
struct loaded {
    const struct larder_backend_ops *ops;
    struct larder__backend *be;
    void *model;
    struct model_ud *mu;
    struct larder__remote *remote; /* a worker model's worker; NULL in-process */
    /* a running worker's place in `workers`, and its device memory as last sampled */
    pid_t pid;
    bool gpu_known;
    struct larder__tree_gpu gpu;
    struct loaded *next;
};

/* The workers running now, in every daemon of the process (told apart by supervisor). */
static pthread_mutex_t workers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct loaded *workers;

static void workers_add(struct loaded *l)
{
    l->pid = larder__remote_pid(l->remote);
    pthread_mutex_lock(&workers_lock);
    l->next = workers;
    workers = l;
    pthread_mutex_unlock(&workers_lock);
}

/* Unlinks l; logs the device memory it held as last sampled, when known. */
static void workers_remove(struct loaded *l)
{
    bool known = false;
    uint64_t total = 0;
    pthread_mutex_lock(&workers_lock);
    for (struct loaded **pp = &workers; *pp; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            known = l->gpu_known;
            total = l->gpu.total;
            break;
        }
    pthread_mutex_unlock(&workers_lock);
    if (known)
        larder__log(LARDER__LOG_INFO, "worker unloading",
                    json_pack("{s:s,s:i,s:I}", "model", l->mu->name, "pid", (int)l->pid,
                              "gpu_process_bytes", (json_int_t)total));
}

#define WORKER_TIMEOUT_MS 60000
#define WORKER_GRACE_MS 5000


/* ---- host services -------------------------------------------------------------------- */

static void host_log(enum larder_log_level level, const char *backend, const char *msg)
{
    static const enum larder__log_level map[] = {LARDER__LOG_ERROR, LARDER__LOG_WARN,
                                                 LARDER__LOG_INFO, LARDER__LOG_DEBUG};
    enum larder__log_level l = (unsigned)level < 4 ? map[level] : LARDER__LOG_DEBUG;
    if (!larder__log_enabled(l))
        return;
    larder__log(l, "backend", json_pack("{s:s?,s:s?}", "backend", backend, "detail", msg));
}

static uint64_t host_rss(void)
{
    unsigned long size, resident;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return n == 2 ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

#define CLIENT_POLL_S 0.05

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* True when the client's socket says it hung up. Never blocks. */
static bool client_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static int host_cancelled(void *host_ctx)
{
    struct larder__infer_ctl *ctl = host_ctx;
    if (!ctl)
        return 0;
    if (ctl->why != LARDER__CANCEL_NONE)
        return 1;
    double now = mono_now();
    if (ctl->deadline > 0 && now >= ctl->deadline)
        ctl->why = LARDER__CANCEL_DEADLINE;
    else if (ctl->client_fd >= 0 && now >= ctl->next_poll) {
        ctl->next_poll = now + CLIENT_POLL_S;
        if (client_gone(ctl->client_fd))
            ctl->why = LARDER__CANCEL_GONE;
    }
    return ctl->why != LARDER__CANCEL_NONE;
}

int larder__infer_cancelled(struct larder__infer_ctl *ctl)
{
    return host_cancelled(ctl);
}

/* Request memory a backend is about to decode into, charged to the request through the
 * ctl's reserve (the daemon's request_memory); refused when it does not fit. */
static int host_reserve(void *host_ctx, uint64_t bytes)
{
    struct larder__infer_ctl *ctl = host_ctx;
    if (!ctl)
        return 0;
    if (ctl->reserve && !ctl->reserve(ctl->reserve_ud, bytes)) {
        ctl->reserve_refused = true;
        return -1;
    }
    ctl->reserved_bytes += bytes;
    return 0;
}

/* One piece of a streamed reply, handed to the caller's emit; refused once the request
 * is cancelled, and a refusal from the receiver cancels it. */
static int host_emit(void *host_ctx, const char *json, size_t len)
{
    struct larder__infer_ctl *ctl = host_ctx;
    if (!ctl || !ctl->emit || !json)
        return -1;
    if (host_cancelled(ctl))
        return -1;
    int r = ctl->emit(ctl->emit_ud, json, len);
    if (r < 0 && ctl->why == LARDER__CANCEL_NONE)
        ctl->why = LARDER__CANCEL_GONE;
    return r < 0 ? -1 : 0;
}

static const struct larder_host host;

const struct larder_host *larder__host(void)
{
    return &host;
}

static const struct larder_host host = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .log = host_log,
    .rss_bytes = host_rss,
    .cancelled = host_cancelled,
    .reserve_request_bytes = host_reserve,
    .emit = host_emit,
};

/* ---- registry ------------------------------------------------------------------------- */

const char *larder__backend_dir(const struct larder__config *c)
{
    const char *env = getenv("LARDER_BACKEND_DIR");
    if (c && c->backend_dir)
        return c->backend_dir;
    if (env && *env)
        return env;
    /* The build tree's plugins for a program of the build tree, else the installed ones. */
    return larder__default_backend_dir();
}

int larder__backends_new(const char *dir, struct larder__backends **ret_backends)
{
    struct larder__backends *b = calloc(1, sizeof *b);
    if (!b || !(b->dir = strdup(dir))) {
        free(b);
        return -ENOMEM;
    }
    pthread_mutex_init(&b->lock, NULL);
    *ret_backends = b;
    return 0;
}

struct larder__backends *larder__backends_free(struct larder__backends *b)
{
    if (!b)
        return NULL;
    for (struct larder__backend *be = b->list, *next; be; be = next) {
        next = be->next;
        pthread_mutex_destroy(&be->lock);
        free(be->name);
        free(be->path);
        free(be);
    }
    for (size_t i = 0; b->names && b->names[i]; i++)
        free(b->names[i]);
    free(b->names);
    pthread_mutex_destroy(&b->lock);
    free(b->dir);
    free(b);
    return NULL;
}

static void init_class(struct larder__backend *be);

static struct larder__backend *backend_new(const char *dir, const char *name)
{
    struct larder__backend *be = calloc(1, sizeof *be);
    if (!be)
        return NULL;
    be->name = strdup(name);
    if (!be->name || asprintf(&be->path, "%s/larder-%s.so", dir, name) < 0) {
        free(be->name);
        free(be);
        return NULL;
    }
    pthread_mutex_init(&be->lock, NULL);
    init_class(be);
    return be;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The NAME of each larder-NAME.so of dir, sorted, NULL-terminated; NULL on ENOMEM. */
static char **scan_dir(const char *dir)
{
    size_t n = 0, cap = 8;
    char **names = calloc(cap, sizeof *names);
    DIR *dp = names ? opendir(dir) : NULL;
    for (struct dirent *e; dp && names && (e = readdir(dp));) {
        size_t len = strlen(e->d_name);
        if (len <= 10 || strncmp(e->d_name, "larder-", 7) != 0 ||
            strcmp(e->d_name + len - 3, ".so") != 0)
            continue;
        if (n + 2 > cap) {
            char **more = realloc(names, (cap *= 2) * sizeof *names);
            if (!more)
                break;
            names = more;
        }
        if ((names[n] = strndup(e->d_name + 7, len - 10)))
            names[++n] = NULL;
    }
    if (dp)
        closedir(dp);
    if (names)
        qsort(names, n, sizeof *names, cmp_name);
    return names;
}

/* b->lock held. */
static const char *const *names_locked(struct larder__backends *b)
{
    if (!b->scanned) {
        b->names = scan_dir(b->dir);
        b->scanned = true;
    }
    return (const char *const *)b->names;
}

const char *const *larder__backends_names(struct larder__backends *b)
{
    pthread_mutex_lock(&b->lock);
    const char *const *names = names_locked(b);
    pthread_mutex_unlock(&b->lock);
    return names;
}

/* "available: a, b, c" or "no larder-*.so there", for an unknown backend's message. */
static void say_available(const char *const *names, char *buf, size_t len)
{
    size_t at = (size_t)snprintf(buf, len, "%s",
                                 names && names[0] ? "available:" : "no larder-*.so there");
    for (size_t i = 0; names && names[i] && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s %s", i ? "," : "", names[i]);
}

static struct larder__backend *find_backend(struct larder__backends *b, const char *name)
{
    for (struct larder__backend *be = b->list; be; be = be->next)
        if (strcmp(be->name, name) == 0)
            return be;
    return NULL;
}

int larder__backend_get(struct larder__backends *b, const char *name,
                        struct larder__backend **ret_backend, char *err, size_t errlen)
{
    int r = 0;
    pthread_mutex_lock(&b->lock);
    struct larder__backend *be = find_backend(b, name);
    if (!be) {
        be = backend_new(b->dir, name);
        if (!be)
            r = -ENOMEM;
        else if (access(be->path, R_OK) != 0) {
            char avail[512];
            int e = errno;
            r = -ENOENT;
            say_available(names_locked(b), avail, sizeof avail);
            snprintf(err, errlen, "unknown backend '%s': %s: %s (%s in %s)", name, be->path,
                     strerror(e), avail, b->dir);
            pthread_mutex_destroy(&be->lock);
            free(be->name);
            free(be->path);
            free(be);
        } else {
            be->next = b->list;
            b->list = be;
        }
    }
    pthread_mutex_unlock(&b->lock);
    if (r == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    if (r == 0)
        *ret_backend = be;
    return r;
}

const char *larder__backend_name(const struct larder__backend *be)
{
    return be->name;
}

const char *larder__backend_path(const struct larder__backend *be)
{
    return be->path;
}

const struct larder_backend_ops *larder__backend_ops(struct larder__backend *be)
{
    return atomic_load(&be->ops);
}

/* ---- opening ------------------------------------------------------------------------- */

static int open_locked(struct larder__backend *be, char *err, size_t errlen)
{
    void *dl = dlopen(be->path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        snprintf(err, errlen, "backend '%s': %s", be->name, dlerror());
        return -ENOENT;
    }
    larder_backend_entry_fn entry;
    *(void **)&entry = dlsym(dl, LARDER_BACKEND_ENTRY);
    const struct larder_backend_ops *ops = entry ? entry(&host) : NULL;
    int r = 0;
    if (!ops) {
        snprintf(err, errlen, "backend '%s': %s: no %s or it returned NULL", be->name, be->path,
                 LARDER_BACKEND_ENTRY);
        r = -ENOEXEC;
    } else if (ops->abi_major != LARDER_BACKEND_ABI_MAJOR) {
        snprintf(err, errlen, "backend '%s': ABI %u.%u, this larderd speaks %d.%d", be->name,
                 ops->abi_major, ops->abi_minor, LARDER_BACKEND_ABI_MAJOR,
                 LARDER_BACKEND_ABI_MINOR);
        r = -EPROTO;
    } else if (!ops->load || !ops->unload || !ops->infer || !ops->result_free ||
               (ops->instance_new && !ops->instance_free)) {
        snprintf(err, errlen, "backend '%s': operations table lacks a required function",
                 be->name);
        r = -ENOEXEC;
    }
    if (r < 0) {
        dlclose(dl);
        return r;
    }
    be->dl = dl;
    atomic_store(&be->ops, ops);
    larder__log(LARDER__LOG_INFO, "backend opened",
                json_pack("{s:s,s:s,s:I,s:I}", "backend", be->name, "path", be->path,
                          "abi_major", (json_int_t)ops->abi_major, "abi_minor",
                          (json_int_t)ops->abi_minor));
    return 0;
}

int larder__backend_open(struct larder__backend *be, char *err, size_t errlen)
{
    if (atomic_load(&be->ops))
        return 0;
    pthread_mutex_lock(&be->lock);
    int r = atomic_load(&be->ops) ? 0 : open_locked(be, err, errlen);
    pthread_mutex_unlock(&be->lock);
    return r;
}

/* ---- option checks ------------------------------------------------------------------- */

static bool key_listed(const char *const *keys, const char *key)
{
    for (size_t i = 0; keys && keys[i]; i++)
        if (strcmp(keys[i], key) == 0)
            return true;
    return false;
}

/* Options passed to the plugin: "path" (always first when set) only when the plugin
 * lists it; otherwise it only serves the host (file-size estimates). */
static size_t first_option(const struct larder_backend_ops *ops,
                           const struct larder_option *opts, size_t n)
{
    return n && strcmp(opts[0].key, "path") == 0 && !key_listed(ops->option_keys, "path");
}

/* The options a plugin gets: those of the config, "path" only when the plugin lists it
 * (first_option), and "isolation" (the model's mode) appended when the plugin lists
 * that key. The strings are borrowed; free the array. NULL on ENOMEM. */
static struct larder_option *plugin_opts(const struct larder_backend_ops *ops,
                                         const struct larder_option *opts, size_t n,
                                         enum larder__isolation iso, size_t *ret_n)
{
    size_t skip = first_option(ops, opts, n), k = 0;
    struct larder_option *o = calloc(n + 2, sizeof *o);
    if (!o)
        return NULL;
    for (size_t i = skip; i < n; i++)
        o[k++] = opts[i];
    if (key_listed(ops->option_keys, "isolation"))
        o[k++] = (struct larder_option){"isolation", larder__isolation_name(iso)};
    *ret_n = k;
    return o;
}

static int check_options(struct larder__backend *be, const char *file, const char *model,
                         const struct larder_option *opts, const unsigned *lines, size_t n,
                         enum larder__isolation iso, char *err, size_t errlen)
{
    char msg[PLUGIN_ERRLEN] = "";
    int r = larder__backend_open(be, err, errlen);
    if (r < 0)
        return r;
    const struct larder_backend_ops *ops = atomic_load(&be->ops);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(opts[i].key, "path") == 0 || key_listed(ops->option_keys, opts[i].key))
            continue;
        snprintf(err, errlen, "%s:%u: [model.%s] %s: unknown key for backend '%s'", file,
                 lines[i], model, opts[i].key, be->name);
        return LARDER_BACKEND_EOPTION;
    }
    size_t k = 0;
    struct larder_option *o = plugin_opts(ops, opts, n, iso, &k);
    if (!o)
        return -ENOMEM;
    r = ops->check ? ops->check(o, k, msg, sizeof msg) : 0;
    free(o);
    if (r < 0) {
        snprintf(err, errlen, "%s: [model.%s]: %s", file, model,
                 *msg ? msg : "options refused by the backend");
        return r;
    }
    return 0;
}

bool larder__backend_has_key(struct larder__backend *be, const char *key)
{
    const struct larder_backend_ops *ops = atomic_load(&be->ops);
    return strcmp(key, "path") == 0 || (ops && key_listed(ops->option_keys, key));
}

int larder__backend_check(struct larder__backend *be, const struct larder__model_conf *m,
                          char *msg, size_t msglen)
{
    const struct larder_backend_ops *ops = atomic_load(&be->ops);
    if (!ops || !ops->check)
        return 0;
    size_t k = 0;
    struct larder_option *o = plugin_opts(ops, m->opts, m->n_opts, m->isolation, &k);
    if (!o)
        return -ENOMEM;
    *msg = 0;
    int r = ops->check(o, k, msg, msglen);
    free(o);
    if (r < 0 && !*msg)
        snprintf(msg, msglen, "options refused by the backend (%d)", r);
    return r < 0 ? r : 0;
}

int larder__backend_estimate(struct larder__backend *be, const struct larder__model_conf *m,
                             uint64_t *ret_bytes)
{
    const struct larder_backend_ops *ops = atomic_load(&be->ops);
    if (!ops || !ops->estimate)
        return -ENOTSUP;
    size_t k = 0;
    struct larder_option *o = plugin_opts(ops, m->opts, m->n_opts, m->isolation, &k);
    if (!o)
        return -ENOMEM;
    int r = ops->estimate(o, k, ret_bytes);
    free(o);
    return r;
}

/* ---- the class -------------------------------------------------------------------------- */

/* The worker of a loaded model died: its component goes FAILED (the daemon's hook). */
static void worker_dead(void *ctx, struct larder__remote *r, int code, const char *why)
{
    struct loaded *l = ctx;
    (void)r;
    larder__log(LARDER__LOG_ERROR, "worker failed",
                json_pack("{s:s,s:s,s:s}", "model", l->mu->name, "cause",
                          code == LARDER__EWORKER_TIMEOUT ? "timeout" : "crash", "detail", why));
    if (l->mu->on_fail)
        l->mu->on_fail(l->mu->fail_ctx, l->mu->name, l, why);
}

/* A worker model's load: a worker starts, checks and loads the model in its process. */
static int load_worker(struct model_ud *mu, struct loaded *l, char *msg, size_t msglen)
{
    if (!mu->children) {
        snprintf(msg, msglen, "model '%s': worker processes are not available here", mu->name);
        return -ENOTSUP;
    }
    struct larder__remote_spec spec = {
        .children = mu->children,
        .worker = larder__worker_path(),
        .plugin = mu->be->path,
        .model = mu->name,
        .backend = mu->be->name,
        .host = &host,
        .call_timeout_ms = mu->worker_timeout_ms > 0 ? mu->worker_timeout_ms : WORKER_TIMEOUT_MS,
        .on_dead = worker_dead,
        .on_dead_ctx = l,
    };
    int r = larder__remote_start(&spec, &l->remote, msg, msglen);
    if (r < 0)
        return r;
    /* the worker drops "isolation" and "path" for a plugin that does not list them */
    struct larder_option *o = calloc(mu->n_opts + 1, sizeof *o);
    if (!o) {
        larder__remote_stop(l->remote, 0, NULL);
        return -ENOMEM;
    }
    memcpy(o, mu->opts, mu->n_opts * sizeof *o);
    o[mu->n_opts] = (struct larder_option){"isolation", larder__isolation_name(mu->isolation)};
    r = larder__remote_load(l->remote, o, mu->n_opts + 1, msg, msglen);
    free(o);
    if (r < 0) {
        larder__remote_stop(l->remote, 0, NULL);
        l->remote = NULL;
        return r;
    }
    l->ops = larder__remote_ops(l->remote);
    l->model = l->remote;
    workers_add(l);
    return 0;
}

static int cls_load(void *ud, void **ret_model, char *err, size_t errlen)
{
    struct model_ud *mu = ud;
    char msg[PLUGIN_ERRLEN] = "";
    struct loaded *l = calloc(1, sizeof *l);
    int r = l ? 0 : -ENOMEM;
    if (r == 0) {
        l->be = mu->be;
        l->mu = mu;
    }
    if (r == 0 && mu->isolation == LARDER__ISOLATION_WORKER) {
        r = load_worker(mu, l, msg, sizeof msg);
    } else if (r == 0 &&
               (r = check_options(mu->be, mu->file, mu->name, mu->opts, mu->opt_lines,
                                  mu->n_opts, mu->isolation, msg, sizeof msg)) == 0) {
        const struct larder_backend_ops *ops = atomic_load(&mu->be->ops);
        size_t k = 0;
        struct larder_option *o = plugin_opts(ops, mu->opts, mu->n_opts, mu->isolation, &k);
        if (!o)
            r = -ENOMEM;
        else if ((r = ops->load(o, k, &l->model, msg, sizeof msg)) < 0 && !*msg)
            snprintf(msg, sizeof msg, "backend '%s' failed to load (%d)", mu->be->name, r);
        free(o);
        l->ops = ops;
    }
    if (r < 0) {
        free(l);
        snprintf(err, errlen, "%s", *msg ? msg : strerror(-r));
        return r;
    }
    *ret_model = l;
    return 0;
}

static void cls_unload(void *ud, void *model)
{
    struct loaded *l = model;
    if (!l)
        return;
    if (l->remote) {
        workers_remove(l);
        larder__remote_stop(l->remote, WORKER_GRACE_MS, NULL);
    } else
        l->ops->unload(l->model);
    free(l);
}

/* A worker's unload is the exit of its process: what it gave back is what it held. */
static int cls_unload_report(void *ud, void *model, int64_t *ret_bytes)
{
    struct loaded *l = model;
    if (!l || !l->remote) {
        cls_unload(ud, model);
        return -ENOTSUP;
    }
    workers_remove(l);
    larder__remote_stop(l->remote, WORKER_GRACE_MS, ret_bytes);
    free(l);
    return 0;
}

static int cls_instance_new(void *ud, void *model, void **ret_instance, char *err,
                            size_t errlen)
{
    struct loaded *l = model;
    char msg[PLUGIN_ERRLEN] = "";
    if (!l->ops->instance_new)
        return LARDER_INSTANCE_SHARED; /* thread-safe model: leases share it */
    void *inst = NULL;
    int r = l->ops->instance_new(l->model, &inst, msg, sizeof msg);
    if (r < 0) {
        snprintf(err, errlen, "%s", *msg ? msg : "the backend could not create an instance");
        return r;
    }
    *ret_instance = inst;
    return 0;
}

static void cls_instance_free(void *ud, void *model, void *instance)
{
    struct loaded *l = model;
    if (l->ops->instance_new)
        l->ops->instance_free(l->model, instance);
}

static int cls_estimate(void *ud, uint64_t *ret_bytes)
{
    struct model_ud *mu = ud;
    const struct larder_backend_ops *ops = atomic_load(&mu->be->ops);
    /* Before the plugin is open in this process, the figure the probe got from it. */
    if (!ops && mu->probed) {
        *ret_bytes = mu->probed;
        return 0;
    }
    if (!ops || !ops->estimate)
        return -ENOTSUP;
    size_t k = 0;
    struct larder_option *o = plugin_opts(ops, mu->opts, mu->n_opts, mu->isolation, &k);
    if (!o)
        return -ENOMEM;
    int r = ops->estimate(o, k, ret_bytes);
    free(o);
    return r;
}

static int cls_measure(void *ud, void *model, uint64_t *ret_bytes)
{
    struct loaded *l = model;
    if (!l || !l->ops->measure)
        return -ENOTSUP;
    return l->ops->measure(l->model, ret_bytes);
}

static void init_class(struct larder__backend *be)
{
    be->cls = (struct larder_class){
        .struct_size = sizeof be->cls,
        .name = be->name,
        .load = cls_load,
        .unload = cls_unload,
        .instance_new = cls_instance_new,
        .instance_free = cls_instance_free,
        .estimate = cls_estimate,
        .measure = cls_measure,
        .unload_report = cls_unload_report,
    };
}

const struct larder_class *larder__backend_class(struct larder__backend *be)
{
    return &be->cls;
}

/* ---- model userdata ------------------------------------------------------------------- */

void larder__model_ud_free(void *ud)
{
    struct model_ud *mu = ud;
    if (!mu)
        return;
    for (size_t i = 0; i < mu->n_opts; i++) {
        free((char *)mu->opts[i].key);
        free((char *)mu->opts[i].value);
    }
    free(mu->opts);
    free(mu->opt_lines);
    free(mu->name);
    free(mu->file);
    free(mu);
}

void *larder__model_ud_new(struct larder__backend *be, const struct larder__config *c,
                           const struct larder__model_conf *m)
{
    struct model_ud *mu = calloc(1, sizeof *mu);
    if (!mu)
        return NULL;
    mu->be = be;
    mu->isolation = m->isolation;
    mu->worker_timeout_ms = m->worker_timeout_ms;
    mu->name = strdup(m->name);
    mu->file = strdup(c->file);
    mu->opts = calloc(m->n_opts + 1, sizeof *mu->opts);
    mu->opt_lines = calloc(m->n_opts + 1, sizeof *mu->opt_lines);
    bool ok = mu->name && mu->file && mu->opts && mu->opt_lines;
    for (size_t i = 0; ok && i < m->n_opts; i++, mu->n_opts++) {
        mu->opts[i].key = strdup(m->opts[i].key);
        mu->opts[i].value = strdup(m->opts[i].value);
        mu->opt_lines[i] = m->opt_lines[i];
        ok = mu->opts[i].key && mu->opts[i].value;
        if (!ok)
            mu->n_opts++; /* free the half-copied pair too */
    }
    if (!ok) {
        larder__model_ud_free(mu);
        return NULL;
    }
    return mu;
}

void larder__model_ud_set_estimate(void *ud, uint64_t bytes)
{
    ((struct model_ud *)ud)->probed = bytes;
}

void larder__model_ud_set_worker(void *ud, struct larder__children *children,
                                 larder__worker_fail_fn on_fail, void *ctx)
{
    struct model_ud *mu = ud;
    mu->children = children;
    mu->on_fail = on_fail;
    mu->fail_ctx = ctx;
}

bool larder__workers_running(const struct larder__children *children)
{
    bool any = false;
    pthread_mutex_lock(&workers_lock);
    for (struct loaded *l = workers; l && !any; l = l->next)
        any = l->mu->children == children;
    pthread_mutex_unlock(&workers_lock);
    return any;
}

void larder__workers_sample_gpu(const struct larder__children *children, larder *m)
{
    size_t n = 0;
    pid_t pids[64];
    pthread_mutex_lock(&workers_lock);
    for (struct loaded *l = workers; l && n < 64; l = l->next)
        if (l->mu->children == children)
            pids[n++] = l->pid;
    pthread_mutex_unlock(&workers_lock);
    /* NVML and /proc are read with no lock held; the figure goes to the worker that still
     * has that pid (an unloaded one is no longer listed) */
    for (size_t i = 0; i < n; i++) {
        struct larder__tree_gpu g;
        bool known = larder__proc_tree_gpu(m, pids[i], &g) == 0;
        pthread_mutex_lock(&workers_lock);
        for (struct loaded *l = workers; l; l = l->next)
            if (l->mu->children == children && l->pid == pids[i]) {
                l->gpu_known = known;
                l->gpu = g;
            }
        pthread_mutex_unlock(&workers_lock);
    }
}

bool larder__worker_gpu(const struct larder__children *children, const char *name,
                        struct larder__tree_gpu *ret)
{
    bool known = false;
    pthread_mutex_lock(&workers_lock);
    for (struct loaded *l = workers; l; l = l->next)
        if (l->mu->children == children && strcmp(l->mu->name, name) == 0) {
            known = l->gpu_known;
            *ret = l->gpu;
            break;
        }
    pthread_mutex_unlock(&workers_lock);
    return known;
}

pid_t larder__lease_worker_pid(const larder_lease *lease)
{
    struct loaded *l = larder_lease_model(lease);
    return l && l->remote ? larder__remote_pid(l->remote) : 0;
}

/* ---- inference ------------------------------------------------------------------------ */

static atomic_ullong cancels_deadline, cancels_gone;

void larder__infer_cancel_counts(uint64_t *ret_deadline, uint64_t *ret_gone)
{
    *ret_deadline = atomic_load(&cancels_deadline);
    *ret_gone = atomic_load(&cancels_gone);
}

static void ctl_start(struct larder__infer_ctl *ctl)
{
    double now = mono_now();
    ctl->deadline = ctl->timeout_ms > 0 ? now + (double)ctl->timeout_ms / 1000.0 : 0;
    ctl->next_poll = now;
    ctl->why = LARDER__CANCEL_NONE;
    ctl->reserved_bytes = 0;
}

/* A backend's ECANCELED stands only when the host asked for it. */
static int cancel_outcome(const struct larder__infer_ctl *ctl, char *msg, size_t len)
{
    if (!ctl || ctl->why == LARDER__CANCEL_NONE) {
        snprintf(msg, len, "the backend cancelled a request nobody cancelled");
        return LARDER_BACKEND_EINTERNAL;
    }
    atomic_fetch_add(ctl->why == LARDER__CANCEL_DEADLINE ? &cancels_deadline : &cancels_gone,
                     1);
    return LARDER_BACKEND_ECANCELED;
}

int larder__lease_infer(larder_lease *lease, const struct larder_infer_request *req,
                        struct larder__infer_ctl *ctl, struct larder_infer_result *res,
                        char *err, size_t errlen)
{
    struct loaded *l = larder_lease_model(lease);
    char msg[PLUGIN_ERRLEN] = "";
    if (!l) {
        snprintf(err, errlen, "the lease holds no model");
        return LARDER_BACKEND_EINTERNAL;
    }
    void *inst = l->ops->instance_new ? larder_lease_instance(lease) : NULL;
    struct larder_infer_request rq = *req;
    rq.host_ctx = ctl;
    rq.stream = ctl && ctl->emit;
    if (ctl)
        ctl_start(ctl);
    memset(res, 0, sizeof *res);
    int r = l->ops->infer(l->model, inst, &rq, res, msg, sizeof msg);
    if (r == LARDER_BACKEND_ECANCELED)
        r = cancel_outcome(ctl, msg, sizeof msg);
    if (r < 0) {
        l->ops->result_free(res);
        snprintf(err, errlen, "%s", *msg ? msg : "the backend failed");
    }
    return r;
}

void larder__lease_result_free(larder_lease *lease, struct larder_infer_result *res)
{
    struct loaded *l = larder_lease_model(lease);
    if (l)
        l->ops->result_free(res);
}

const char *larder__lease_backend(const larder_lease *lease)
{
    struct loaded *l = larder_lease_model(lease);
    return l ? l->be->name : NULL;
}
