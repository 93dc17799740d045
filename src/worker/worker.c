/* larder-worker: hosts one backend plugin for one model in a process of its own and
 * serves the backend ABI's calls that larderd sends over fd 3 (see proto.h).
 *
 *   larder-worker PLUGIN.so MODEL   (started by larderd, fd 3 a connected stream socket)
 *
 * Every request runs on a thread of its own, so that a long inference on one instance
 * never holds a call for another. The process ends at WP_EXIT, at the end of the stream
 * (larderd has gone), or by the signal the kernel sends when larderd dies (PDEATHSIG).
 * It exits with _exit(): an engine that cannot be unloaded leaves with the process.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "larder/backend.h"
#include "proto.h"

#define SOCK_FD 3
#define ERRLEN 1024

static const struct larder_backend_ops *ops;
static const char *model_name = "";
static pthread_mutex_t write_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* calls, instances, model */
static void *model;

/* One request in flight. */
struct call {
    struct call *next;
    uint64_t id;
    struct larder__wp_frame f;
    atomic_bool cancelled;
    bool stream;
    pthread_cond_t cv;
    bool acked;   /* a RESERVE_ACK / CHUNK_ACK came */
    int ack_rc;
};
static struct call *calls;

struct instance {
    struct instance *next;
    uint64_t id;
    void *ptr;
};
static struct instance *instances;
static uint64_t next_instance = 1;

static int send_frame(uint32_t type, uint64_t id, json_t *meta, const void *data, size_t len)
{
    pthread_mutex_lock(&write_mu);
    int r = larder__wp_send(SOCK_FD, type, id, meta, data, len);
    pthread_mutex_unlock(&write_mu);
    json_decref(meta);
    return r;
}

/* ---- host services ----------------------------------------------------------------- */

static void host_log(enum larder_log_level level, const char *backend, const char *msg)
{
    send_frame(LARDER__WP_LOG, 0,
               json_pack("{s:i,s:s?,s:s?}", "level", (int)level, "backend", backend, "msg", msg),
               NULL, 0);
}

static uint64_t host_rss(void)
{
    unsigned long size, resident;
    FILE *f = fopen("/proc/self/statm", "re");
    if (!f)
        return 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return n == 2 ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

static int host_cancelled(void *ctx)
{
    struct call *c = ctx;
    return c && atomic_load(&c->cancelled);
}

/* Sends a frame of the call and waits for larderd's ack. */
static int ask(struct call *c, uint32_t type, json_t *meta, const void *data, size_t len)
{
    pthread_mutex_lock(&mu);
    c->acked = false;
    pthread_mutex_unlock(&mu);
    if (send_frame(type, c->id, meta, data, len) < 0)
        return -1;
    pthread_mutex_lock(&mu);
    while (!c->acked)
        pthread_cond_wait(&c->cv, &mu);
    int rc = c->ack_rc;
    pthread_mutex_unlock(&mu);
    return rc;
}

static int host_reserve(void *ctx, uint64_t bytes)
{
    struct call *c = ctx;
    if (!c)
        return 0;
    return ask(c, LARDER__WP_RESERVE, json_pack("{s:I}", "bytes", (json_int_t)bytes), NULL, 0);
}

static int host_emit(void *ctx, const char *json, size_t len)
{
    struct call *c = ctx;
    if (!c || !c->stream)
        return -1;
    if (atomic_load(&c->cancelled))
        return -1;
    return ask(c, LARDER__WP_CHUNK, NULL, json, len);
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

/* ---- the calls ----------------------------------------------------------------------- */

static bool key_listed(const char *key)
{
    for (size_t i = 0; ops->option_keys && ops->option_keys[i]; i++)
        if (strcmp(ops->option_keys[i], key) == 0)
            return true;
    return false;
}

/* The options as the plugin takes them, into *ret (strings borrowed; free the array):
 * "path" and "isolation" (the host's, always sent) only when the plugin lists them; any
 * other key the plugin does not list is an error. Returns the count, or -1 with err. */
static long options(const struct larder_option *o, size_t n, struct larder_option **ret,
                    char *err, size_t errlen)
{
    struct larder_option *out = calloc(n + 1, sizeof *out);
    size_t k = 0;
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        bool host_key = strcmp(o[i].key, "path") == 0 || strcmp(o[i].key, "isolation") == 0;
        if (key_listed(o[i].key))
            out[k++] = o[i];
        else if (!host_key) {
            snprintf(err, errlen, "[model.%s] %s: unknown key for backend '%s'", model_name,
                     o[i].key, ops->name);
            free(out);
            return -1;
        }
    }
    *ret = out;
    return (long)k;
}

static json_t *reply_rc(int rc, const char *err)
{
    json_t *m = json_pack("{s:i}", "rc", rc);
    if (rc < 0)
        json_object_set_new(m, "error", json_string(err && *err ? err : "the backend failed"));
    return m;
}

static int call_check(struct call *c, bool load, json_t **ret, char *err)
{
    struct larder_option *o = NULL;
    size_t n = 0;
    int r = larder__wp_opts_parse(json_object_get(c->f.meta, "opts"), &o, &n);
    if (r < 0) {
        snprintf(err, ERRLEN, "bad options in the request");
        return r;
    }
    struct larder_option *po = NULL;
    long k = options(o, n, &po, err, ERRLEN);
    if (k < 0)
        r = LARDER_BACKEND_EOPTION;
    else if (ops->check && (r = ops->check(po, (size_t)k, err, ERRLEN)) < 0 && !*err)
        snprintf(err, ERRLEN, "options refused by the backend (%d)", r);
    if (r == 0 && load) {
        pthread_mutex_lock(&mu);
        bool loaded = model != NULL;
        pthread_mutex_unlock(&mu);
        void *mdl = NULL;
        if (loaded) {
            snprintf(err, ERRLEN, "the model is loaded already");
            r = -EALREADY;
        } else if ((r = ops->load(po, (size_t)k, &mdl, err, ERRLEN)) < 0 && !*err) {
            snprintf(err, ERRLEN, "backend '%s' failed to load (%d)", ops->name, r);
        } else if (r == 0) {
            pthread_mutex_lock(&mu);
            model = mdl;
            pthread_mutex_unlock(&mu);
        }
    }
    free(po);
    larder__wp_opts_free(o, n);
    *ret = reply_rc(r, err);
    return r;
}

static void call_estimate(struct call *c, json_t **ret, char *err)
{
    struct larder_option *o = NULL;
    size_t n = 0;
    uint64_t bytes = 0;
    int r = larder__wp_opts_parse(json_object_get(c->f.meta, "opts"), &o, &n);
    struct larder_option *po = NULL;
    long k = r == 0 ? options(o, n, &po, err, ERRLEN) : -1;
    if (r == 0 && k < 0)
        r = LARDER_BACKEND_EOPTION;
    else if (r == 0)
        r = ops->estimate ? ops->estimate(po, (size_t)k, &bytes) : -ENOTSUP;
    free(po);
    larder__wp_opts_free(o, n);
    *ret = reply_rc(r, err);
    json_object_set_new(*ret, "bytes", json_integer((json_int_t)bytes));
}

static void *loaded_model(void)
{
    pthread_mutex_lock(&mu);
    void *m = model;
    pthread_mutex_unlock(&mu);
    return m;
}

static void call_instance_new(json_t **ret, char *err)
{
    void *m = loaded_model(), *inst = NULL;
    uint64_t id = 0;
    int r = 0;
    if (!m) {
        r = LARDER_BACKEND_EINTERNAL;
        snprintf(err, ERRLEN, "no model loaded");
    } else if (ops->instance_new) {
        r = ops->instance_new(m, &inst, err, ERRLEN);
        struct instance *i = r == 0 ? calloc(1, sizeof *i) : NULL;
        if (r == 0 && !i) {
            ops->instance_free(m, inst);
            r = LARDER_BACKEND_ENOMEM;
        } else if (i) {
            pthread_mutex_lock(&mu);
            i->id = id = next_instance++;
            i->ptr = inst;
            i->next = instances;
            instances = i;
            pthread_mutex_unlock(&mu);
        }
    }
    *ret = reply_rc(r, err);
    json_object_set_new(*ret, "instance", json_integer((json_int_t)id));
}

/* The instance of id (removed from the table when take), or NULL. */
static void *find_instance(uint64_t id, bool take)
{
    void *p = NULL;
    pthread_mutex_lock(&mu);
    for (struct instance **i = &instances; *i; i = &(*i)->next)
        if ((*i)->id == id) {
            struct instance *f = *i;
            p = f->ptr;
            if (take) {
                *i = f->next;
                free(f);
            }
            break;
        }
    pthread_mutex_unlock(&mu);
    return p;
}

static void call_instance_free(struct call *c, json_t **ret)
{
    uint64_t id = (uint64_t)larder__wp_int(c->f.meta, "instance", 0);
    void *m = loaded_model();
    void *inst = id ? find_instance(id, true) : NULL;
    if (inst && m && ops->instance_free)
        ops->instance_free(m, inst);
    *ret = reply_rc(0, NULL);
}

static void call_measure(json_t **ret, char *err)
{
    void *m = loaded_model();
    uint64_t bytes = 0;
    int r = !m ? LARDER_BACKEND_EINTERNAL : ops->measure ? ops->measure(m, &bytes) : -ENOTSUP;
    *ret = reply_rc(r, err);
    json_object_set_new(*ret, "bytes", json_integer((json_int_t)bytes));
}

/* Answers an infer call itself (the result's bytes go as the reply's data). */
static void call_infer(struct call *c)
{
    char err[ERRLEN] = "";
    json_t *meta = c->f.meta;
    void *m = loaded_model();
    uint64_t id = (uint64_t)larder__wp_int(meta, "instance", 0);
    void *inst = id ? find_instance(id, false) : NULL;
    struct larder_option *params = NULL;
    size_t n_params = 0;
    int r = larder__wp_opts_parse(json_object_get(meta, "params"), &params, &n_params);
    if (r < 0)
        snprintf(err, sizeof err, "bad parameters in the request");
    else if (!m || (id && !inst) || (!id && ops->instance_new)) {
        r = LARDER_BACKEND_EINTERNAL;
        snprintf(err, sizeof err, !m ? "no model loaded" : "no such instance");
    }
    struct larder_infer_result res = {0};
    if (r == 0) {
        c->stream = json_is_true(json_object_get(meta, "stream"));
        struct larder_infer_request req = {
            .body = c->f.data,
            .body_len = c->f.data_len,
            .content_type = larder__wp_str(meta, "content_type"),
            .params = params,
            .n_params = n_params,
            .host_ctx = c,
            .stream = c->stream,
        };
        r = ops->infer(m, inst, &req, &res, err, sizeof err);
    }
    json_t *out = reply_rc(r, err);
    const void *data = NULL;
    size_t len = 0;
    if (r == 0 && res.json) {
        json_object_set_new(out, "kind", json_string("json"));
        data = res.json;
        len = strlen(res.json);
    } else if (r == 0 && res.bytes) {
        json_object_set_new(out, "kind", json_string("bytes"));
        json_object_set_new(out, "content_type",
                            json_string(res.content_type ? res.content_type
                                                         : "application/octet-stream"));
        data = res.bytes;
        len = res.bytes_len;
    }
    if (send_frame(LARDER__WP_REPLY, c->id, out, data, len) == -EMSGSIZE)
        send_frame(LARDER__WP_REPLY, c->id,
                   reply_rc(LARDER_BACKEND_EINTERNAL, "the result is too large to send"),
                   NULL, 0);
    if (r == 0 || res.json || res.bytes)
        ops->result_free(&res);
    larder__wp_opts_free(params, n_params);
}

static void call_unload(json_t **ret)
{
    pthread_mutex_lock(&mu);
    void *m = model;
    model = NULL;
    struct instance *list = instances;
    instances = NULL;
    pthread_mutex_unlock(&mu);
    for (struct instance *i = list, *n; i; i = n) {
        n = i->next;
        if (m)
            ops->instance_free(m, i->ptr);
        free(i);
    }
    if (m)
        ops->unload(m);
    *ret = reply_rc(0, NULL);
}

static void call_done(struct call *c)
{
    pthread_mutex_lock(&mu);
    for (struct call **p = &calls; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&c->cv);
    larder__wp_frame_clear(&c->f);
    free(c);
}

static void *run_call(void *arg)
{
    struct call *c = arg;
    char err[ERRLEN] = "";
    json_t *reply = NULL;
    switch (c->f.type) {
    case LARDER__WP_CHECK: call_check(c, false, &reply, err); break;
    case LARDER__WP_LOAD: call_check(c, true, &reply, err); break;
    case LARDER__WP_ESTIMATE: call_estimate(c, &reply, err); break;
    case LARDER__WP_INSTANCE_NEW: call_instance_new(&reply, err); break;
    case LARDER__WP_INSTANCE_FREE: call_instance_free(c, &reply); break;
    case LARDER__WP_MEASURE: call_measure(&reply, err); break;
    case LARDER__WP_UNLOAD: call_unload(&reply); break;
    case LARDER__WP_INFER: call_infer(c); break;
    default: reply = reply_rc(-ENOSYS, "unknown request type"); break;
    }
    if (reply)
        send_frame(LARDER__WP_REPLY, c->id, reply, NULL, 0);
    call_done(c);
    return NULL;
}

static struct call *find_call(uint64_t id)
{
    for (struct call *c = calls; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

static void start_call(struct larder__wp_frame *f)
{
    struct call *c = calloc(1, sizeof *c);
    if (!c) {
        send_frame(LARDER__WP_REPLY, f->id, reply_rc(LARDER_BACKEND_ENOMEM, "out of memory"),
                   NULL, 0);
        larder__wp_frame_clear(f);
        return;
    }
    c->id = f->id;
    c->f = *f;
    memset(f, 0, sizeof *f);
    pthread_cond_init(&c->cv, NULL);
    pthread_mutex_lock(&mu);
    c->next = calls;
    calls = c;
    pthread_mutex_unlock(&mu);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 8u << 20);
    pthread_t t;
    if (pthread_create(&t, &a, run_call, c) != 0) {
        send_frame(LARDER__WP_REPLY, c->id,
                   reply_rc(LARDER_BACKEND_ENOMEM, "cannot start a thread"), NULL, 0);
        call_done(c);
    }
    pthread_attr_destroy(&a);
}

/* CANCEL, RESERVE_ACK, CHUNK_ACK: to the call they name (gone calls are ignored). */
static void to_call(struct larder__wp_frame *f)
{
    pthread_mutex_lock(&mu);
    struct call *c = find_call(f->id);
    if (c && f->type == LARDER__WP_CANCEL) {
        atomic_store(&c->cancelled, true);
    } else if (c) {
        c->ack_rc = (int)larder__wp_int(f->meta, "rc", -1);
        c->acked = true;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&mu);
}

static int open_plugin(const char *path, char *err, size_t errlen)
{
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        snprintf(err, errlen, "%s", dlerror());
        return -1;
    }
    larder_backend_entry_fn entry;
    *(void **)&entry = dlsym(dl, LARDER_BACKEND_ENTRY);
    ops = entry ? entry(&host) : NULL;
    if (!ops)
        snprintf(err, errlen, "%s: no %s or it returned NULL", path, LARDER_BACKEND_ENTRY);
    else if (ops->abi_major != LARDER_BACKEND_ABI_MAJOR)
        snprintf(err, errlen, "%s: ABI %u.%u, this worker speaks %d.%d", path, ops->abi_major,
                 ops->abi_minor, LARDER_BACKEND_ABI_MAJOR, LARDER_BACKEND_ABI_MINOR);
    else if (!ops->load || !ops->unload || !ops->infer || !ops->result_free ||
             (ops->instance_new && !ops->instance_free))
        snprintf(err, errlen, "%s: operations table lacks a required function", path);
    else
        return 0;
    ops = NULL;
    return -1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: larder-worker PLUGIN.so MODEL (started by larderd, fd 3 its "
                        "socket)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    model_name = argv[2];
    char err[ERRLEN] = "";
    if (open_plugin(argv[1], err, sizeof err) < 0) {
        send_frame(LARDER__WP_HELLO, 0, json_pack("{s:s}", "error", err), NULL, 0);
        return 1;
    }
    json_t *keys = json_array();
    for (size_t i = 0; ops->option_keys && ops->option_keys[i]; i++)
        json_array_append_new(keys, json_string(ops->option_keys[i]));
    send_frame(LARDER__WP_HELLO, 0,
               json_pack("{s:i,s:s?,s:i,s:i,s:b,s:o}", "pid", (int)getpid(), "backend",
                         ops->name, "abi_major", (int)ops->abi_major, "abi_minor",
                         (int)ops->abi_minor, "instances", ops->instance_new != NULL,
                         "option_keys", keys),
               NULL, 0);
    for (;;) {
        struct larder__wp_frame f;
        int r = larder__wp_recv(SOCK_FD, &f, err, sizeof err);
        if (r == 0)
            _exit(0); /* larderd closed the connection */
        if (r < 0) {
            fprintf(stderr, "larder-worker %s: %s\n", model_name,
                    r == -EPROTO ? err : strerror(-r));
            _exit(3);
        }
        switch (f.type) {
        case LARDER__WP_EXIT:
            _exit(0);
        case LARDER__WP_CANCEL:
        case LARDER__WP_RESERVE_ACK:
        case LARDER__WP_CHUNK_ACK:
            to_call(&f);
            larder__wp_frame_clear(&f);
            break;
        default:
            start_call(&f);
            break;
        }
    }
}
