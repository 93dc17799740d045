/* A backend in a worker process (see remote.h). */
#include "remote.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../worker/proto.h"

#define WHYLEN 512
#define POLL_MS 20
#define STOP_GRACE_MS 5000

/* A frame that came for a call while it runs (RESERVE, CHUNK). */
struct inframe {
    struct inframe *next;
    struct larder__wp_frame f;
};

struct rcall {
    struct rcall *next;
    uint64_t id;
    bool done;
    struct larder__wp_frame reply;
    struct inframe *in_head, *in_tail;
};

struct larder__remote {
    struct larder__remote_spec spec;
    char *model, *backend;
    pthread_mutex_t mu;
    pthread_cond_t cv;           /* replies, inbox frames, hello, death */
    pthread_mutex_t write_mu;
    int fd;
    struct larder__child *child;
    pthread_t reader;
    bool reader_started;
    uint64_t next_id;
    struct rcall *calls;
    json_t *hello;
    bool dead;
    bool stopping;               /* an ordered stop: not a failure */
    int dead_code;
    char why[WHYLEN];
    bool instances;
    struct larder_backend_ops ops;
};

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void wait_ms(struct larder__remote *r, int64_t ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&r->cv, &r->mu, &t);
}

static int send_frame(struct larder__remote *r, uint32_t type, uint64_t id, json_t *meta,
                      const void *data, size_t len)
{
    pthread_mutex_lock(&r->write_mu);
    int e = larder__wp_send(r->fd, type, id, meta, data, len);
    pthread_mutex_unlock(&r->write_mu);
    json_decref(meta);
    return e;
}

/* r->mu held: the worker is dead from now on (the first cause stays). */
static void mark_dead(struct larder__remote *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void mark_dead(struct larder__remote *r, int code, const char *fmt, ...)
{
    if (r->dead)
        return;
    r->dead = true;
    r->dead_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    pthread_cond_broadcast(&r->cv);
}

static struct rcall *find_call(struct larder__remote *r, uint64_t id)
{
    for (struct rcall *c = r->calls; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

static void log_line(struct larder__remote *r, json_t *meta)
{
    int level = (int)larder__wp_int(meta, "level", LARDER_LOG_INFO);
    const char *msg = larder__wp_str(meta, "msg");
    if (r->spec.host && r->spec.host->log && msg)
        r->spec.host->log(level < 0 || level > 3 ? LARDER_LOG_DEBUG : level,
                          larder__wp_str(meta, "backend"), msg);
}

/* The reader: every frame from the worker to whom it is for, until the stream ends. */
static void *read_loop(void *arg)
{
    struct larder__remote *r = arg;
    char err[256] = "";
    for (;;) {
        struct larder__wp_frame f;
        int e = larder__wp_recv(r->fd, &f, err, sizeof err);
        if (e <= 0) {
            pthread_mutex_lock(&r->mu);
            bool stopping = r->stopping, was_dead = r->dead;
            pthread_mutex_unlock(&r->mu);
            if (e < 0 && !stopping) /* garbage: it goes, whatever it does next */
                larder__child_signal(r->child, SIGKILL);
            int status = 0;
            bool exited = larder__child_wait(r->child, stopping || e < 0 || was_dead ? -1
                                                                                     : 5000,
                                             &status);
            if (!exited) {
                larder__child_signal(r->child, SIGKILL);
                larder__child_wait(r->child, -1, &status);
            }
            char how[96];
            larder__child_status_text(status, how, sizeof how);
            pthread_mutex_lock(&r->mu);
            if (e < 0)
                mark_dead(r, LARDER__EWORKER_CRASHED,
                          "the worker of model '%s' broke the protocol (%s) and was killed",
                          r->model, e == -EPROTO ? err : strerror(-e));
            else
                mark_dead(r, LARDER__EWORKER_CRASHED, "the worker of model '%s' (pid %d) %s",
                          r->model, (int)larder__child_pid(r->child), how);
            stopping = r->stopping;
            int code = r->dead_code;
            char why[WHYLEN];
            memcpy(why, r->why, sizeof why);
            pthread_mutex_unlock(&r->mu);
            if (!stopping && r->spec.on_dead)
                r->spec.on_dead(r->spec.on_dead_ctx, r, code, why);
            return NULL;
        }
        switch (f.type) {
        case LARDER__WP_HELLO:
            pthread_mutex_lock(&r->mu);
            if (!r->hello) {
                r->hello = f.meta;
                f.meta = NULL;
                pthread_cond_broadcast(&r->cv);
            }
            pthread_mutex_unlock(&r->mu);
            break;
        case LARDER__WP_LOG:
            log_line(r, f.meta);
            break;
        case LARDER__WP_REPLY:
        case LARDER__WP_RESERVE:
        case LARDER__WP_CHUNK: {
            pthread_mutex_lock(&r->mu);
            struct rcall *c = find_call(r, f.id);
            struct inframe *in = NULL;
            if (c && f.type == LARDER__WP_REPLY && !c->done) {
                c->reply = f;
                memset(&f, 0, sizeof f);
                c->done = true;
                pthread_cond_broadcast(&r->cv);
            } else if (c && f.type != LARDER__WP_REPLY && (in = calloc(1, sizeof *in))) {
                in->f = f;
                memset(&f, 0, sizeof f);
                if (c->in_tail)
                    c->in_tail->next = in;
                else
                    c->in_head = in;
                c->in_tail = in;
                pthread_cond_broadcast(&r->cv);
            }
            pthread_mutex_unlock(&r->mu);
            /* nobody to ask: answer no, so that the worker does not wait */
            if (f.type == LARDER__WP_RESERVE || f.type == LARDER__WP_CHUNK)
                send_frame(r, f.type == LARDER__WP_RESERVE ? LARDER__WP_RESERVE_ACK
                                                           : LARDER__WP_CHUNK_ACK,
                           f.id, json_pack("{s:i}", "rc", -1), NULL, 0);
            break;
        }
        default: /* a frame of a later protocol: not for us */
            break;
        }
        larder__wp_frame_clear(&f);
    }
}

/* ---- calls ----------------------------------------------------------------------------- */

/* Handles one frame of the call's inbox on the caller's thread, with the host. */
static void handle_in(struct larder__remote *r, struct larder__wp_frame *f, void *host_ctx)
{
    const struct larder_host *h = r->spec.host;
    int rc;
    if (f->type == LARDER__WP_RESERVE) {
        int64_t bytes = larder__wp_int(f->meta, "bytes", -1);
        rc = bytes < 0 ? -1
             : h && h->reserve_request_bytes ? h->reserve_request_bytes(host_ctx, (uint64_t)bytes)
                                             : 0;
        send_frame(r, LARDER__WP_RESERVE_ACK, f->id, json_pack("{s:i}", "rc", rc), NULL, 0);
    } else {
        rc = h && h->abi_minor >= 2 && h->emit
                 ? h->emit(host_ctx, (const char *)f->data, f->data_len)
                 : -1;
        send_frame(r, LARDER__WP_CHUNK_ACK, f->id, json_pack("{s:i}", "rc", rc), NULL, 0);
    }
}

static const char *call_name(uint32_t type)
{
    switch (type) {
    case LARDER__WP_CHECK: return "check";
    case LARDER__WP_ESTIMATE: return "estimate";
    case LARDER__WP_LOAD: return "load";
    case LARDER__WP_INSTANCE_NEW: return "instance_new";
    case LARDER__WP_INSTANCE_FREE: return "instance_free";
    case LARDER__WP_MEASURE: return "measure";
    case LARDER__WP_INFER: return "infer";
    case LARDER__WP_UNLOAD: return "unload";
    default: return "call";
    }
}

/* Runs one call. infer: host_ctx is the request's (its cancel check is followed, its
 * frames handled here). On success *reply holds the worker's reply frame (its "rc" may
 * still be an error: the caller reads it). Returns 0, or the dead worker's code with
 * the cause in err. */
static int call(struct larder__remote *r, uint32_t type, json_t *meta, const void *data,
                size_t len, void *host_ctx, struct larder__wp_frame *reply, char *err,
                size_t errlen)
{
    bool infer = type == LARDER__WP_INFER;
    const struct larder_host *h = r->spec.host;
    struct rcall c = {0};
    pthread_mutex_lock(&r->mu);
    if (r->dead) {
        snprintf(err, errlen, "%s", r->why);
        int code = r->dead_code;
        pthread_mutex_unlock(&r->mu);
        json_decref(meta);
        return code;
    }
    c.id = ++r->next_id;
    c.next = r->calls;
    r->calls = &c;
    pthread_mutex_unlock(&r->mu);

    send_frame(r, type, c.id, meta, data, len); /* a failed write shows as the death */
    int64_t t0 = now_ms();
    int64_t deadline = infer ? -1 : t0 + r->spec.call_timeout_ms;
    bool cancel_sent = false;
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (c.in_head) {
            struct inframe *in = c.in_head;
            c.in_head = in->next;
            if (!c.in_head)
                c.in_tail = NULL;
            pthread_mutex_unlock(&r->mu);
            handle_in(r, &in->f, host_ctx);
            larder__wp_frame_clear(&in->f);
            free(in);
            pthread_mutex_lock(&r->mu);
        }
        if (c.done || r->dead)
            break;
        if (infer && !cancel_sent && h && h->abi_minor >= 1 && h->cancelled) {
            pthread_mutex_unlock(&r->mu);
            bool stop = h->cancelled(host_ctx) != 0;
            if (stop) {
                send_frame(r, LARDER__WP_CANCEL, c.id, NULL, NULL, 0);
                cancel_sent = true;
                deadline = now_ms() + r->spec.call_timeout_ms;
            }
            pthread_mutex_lock(&r->mu);
            if (c.done || r->dead || c.in_head)
                continue;
        }
        int64_t now = now_ms();
        if (deadline >= 0 && now >= deadline) {
            if (infer)
                mark_dead(r, LARDER__EWORKER_TIMEOUT,
                          "the worker of model '%s' did not stop the inference within %lld ms "
                          "of its cancel and was killed",
                          r->model, (long long)r->spec.call_timeout_ms);
            else
                mark_dead(r, LARDER__EWORKER_TIMEOUT,
                          "the worker of model '%s' did not answer %s within %lld ms and was "
                          "killed",
                          r->model, call_name(type), (long long)r->spec.call_timeout_ms);
            pthread_mutex_unlock(&r->mu);
            larder__child_signal(r->child, SIGKILL);
            pthread_mutex_lock(&r->mu);
            break;
        }
        int64_t slice = deadline >= 0 ? deadline - now : POLL_MS;
        if (infer && !cancel_sent && slice > POLL_MS)
            slice = POLL_MS;
        wait_ms(r, slice > 0 ? slice : 1);
    }
    for (struct rcall **p = &r->calls; *p; p = &(*p)->next)
        if (*p == &c) {
            *p = c.next;
            break;
        }
    if (c.done) {
        *reply = c.reply;
    } else {
        rc = r->dead_code;
        snprintf(err, errlen, "%s", r->why);
    }
    struct inframe *left = c.in_head;
    pthread_mutex_unlock(&r->mu);
    for (struct inframe *n; left; left = n) {
        n = left->next;
        larder__wp_frame_clear(&left->f);
        free(left);
    }
    return rc;
}

/* A call whose reply carries only rc and error. */
static int simple_call(struct larder__remote *r, uint32_t type, json_t *meta, char *err,
                       size_t errlen, json_t **ret_meta)
{
    struct larder__wp_frame f = {0};
    int rc = call(r, type, meta, NULL, 0, NULL, &f, err, errlen);
    if (rc < 0)
        return rc;
    rc = (int)larder__wp_int(f.meta, "rc", LARDER_BACKEND_EINTERNAL);
    if (rc < 0 && err && errlen)
        snprintf(err, errlen, "%s", larder__wp_str(f.meta, "error") ? larder__wp_str(f.meta, "error")
                                                                   : "the worker failed");
    if (ret_meta) {
        *ret_meta = f.meta;
        f.meta = NULL;
    }
    larder__wp_frame_clear(&f);
    return rc > 0 ? 0 : rc;
}

static json_t *opts_meta(const struct larder_option *opts, size_t n)
{
    json_t *m = json_object();
    json_object_set_new(m, "opts", larder__wp_opts_json(opts, n));
    return m;
}

int larder__remote_check(struct larder__remote *r, const struct larder_option *opts, size_t n,
                         char *err, size_t errlen)
{
    return simple_call(r, LARDER__WP_CHECK, opts_meta(opts, n), err, errlen, NULL);
}

int larder__remote_load(struct larder__remote *r, const struct larder_option *opts, size_t n,
                        char *err, size_t errlen)
{
    return simple_call(r, LARDER__WP_LOAD, opts_meta(opts, n), err, errlen, NULL);
}

/* ---- the operations ------------------------------------------------------------------- */

static int op_instance_new(void *model, void **ret_instance, char *err, size_t errlen)
{
    struct larder__remote *r = model;
    json_t *m = NULL;
    int rc = simple_call(r, LARDER__WP_INSTANCE_NEW, NULL, err, errlen, &m);
    int64_t id = rc == 0 ? larder__wp_int(m, "instance", 0) : 0;
    json_decref(m);
    if (rc == 0 && id <= 0) {
        snprintf(err, errlen, "the worker of model '%s' gave no instance", r->model);
        rc = LARDER_BACKEND_EINTERNAL;
    }
    if (rc == 0)
        *ret_instance = (void *)(uintptr_t)id;
    return rc;
}

static void op_instance_free(void *model, void *instance)
{
    struct larder__remote *r = model;
    char err[64];
    simple_call(r, LARDER__WP_INSTANCE_FREE,
                json_pack("{s:I}", "instance", (json_int_t)(uintptr_t)instance), err,
                sizeof err, NULL);
}

static int op_measure(void *model, uint64_t *ret_bytes)
{
    struct larder__remote *r = model;
    struct larder__child_mem m;
    if (larder__child_memory(r->child, &m) < 0)
        return -ESRCH;
    *ret_bytes = m.pss ? m.pss : m.rss;
    return *ret_bytes ? 0 : -ENODATA;
}

static int op_infer(void *model, void *instance, const struct larder_infer_request *req,
                    struct larder_infer_result *res, char *err, size_t errlen)
{
    struct larder__remote *r = model;
    const struct larder_host *h = r->spec.host;
    json_t *meta = json_pack("{s:I,s:s?,s:b}", "instance", (json_int_t)(uintptr_t)instance,
                             "content_type", req->content_type, "stream",
                             h && h->abi_minor >= 2 && req->stream);
    json_object_set_new(meta, "params", larder__wp_opts_json(req->params, req->n_params));
    struct larder__wp_frame f = {0};
    void *host_ctx = h && h->abi_minor >= 1 ? req->host_ctx : NULL;
    int rc = call(r, LARDER__WP_INFER, meta, req->body, req->body_len, host_ctx, &f, err,
                  errlen);
    if (rc < 0)
        return rc;
    rc = (int)larder__wp_int(f.meta, "rc", LARDER_BACKEND_EINTERNAL);
    const char *kind = larder__wp_str(f.meta, "kind");
    if (rc < 0) {
        const char *e = larder__wp_str(f.meta, "error");
        snprintf(err, errlen, "%s", e ? e : "the backend failed");
    } else if (kind && strcmp(kind, "json") == 0) {
        res->json = strndup((const char *)f.data, f.data_len);
        rc = res->json ? 0 : LARDER_BACKEND_ENOMEM;
    } else if (kind && strcmp(kind, "bytes") == 0) {
        const char *ct = larder__wp_str(f.meta, "content_type");
        res->bytes = malloc(f.data_len ? f.data_len : 1);
        res->content_type = strdup(ct ? ct : "application/octet-stream");
        if (res->bytes)
            memcpy(res->bytes, f.data, f.data_len);
        res->bytes_len = f.data_len;
        rc = res->bytes && res->content_type ? 0 : LARDER_BACKEND_ENOMEM;
    }
    larder__wp_frame_clear(&f);
    return rc > 0 ? 0 : rc;
}

static void op_result_free(struct larder_infer_result *res)
{
    free(res->json);
    free(res->bytes);
    free(res->content_type);
    memset(res, 0, sizeof *res);
}

static void op_unload(void *model)
{
    larder__remote_stop(model, STOP_GRACE_MS, NULL);
}

const struct larder_backend_ops *larder__remote_ops(const struct larder__remote *r)
{
    return &r->ops;
}

/* ---- start, stop ------------------------------------------------------------------------ */

static void remote_free(struct larder__remote *r)
{
    json_decref(r->hello);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->write_mu);
    free(r->model);
    free(r->backend);
    free(r);
}

int larder__remote_start(const struct larder__remote_spec *spec, struct larder__remote **ret,
                         char *err, size_t errlen)
{
    struct larder__remote *r = calloc(1, sizeof *r);
    if (!r || !(r->model = strdup(spec->model)) ||
        !(r->backend = strdup(spec->backend ? spec->backend : ""))) {
        if (r)
            free(r->model);
        free(r);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->spec = *spec;
    r->spec.model = r->model;
    r->spec.backend = r->backend;
    r->fd = -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->write_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        int e = -errno;
        snprintf(err, errlen, "socketpair: %s", strerror(errno));
        remote_free(r);
        return e;
    }
    char label[160];
    snprintf(label, sizeof label, "worker %s", r->model);
    const char *argv[] = {spec->worker, spec->plugin, r->model, NULL};
    struct larder__child_spec cs = {.argv = argv, .stdio = {-1, -1, -1}, .pass_fds = &sv[1],
                                    .n_pass_fds = 1, .label = label};
    int e = larder__child_spawn(spec->children, &cs, &r->child, err, errlen);
    close(sv[1]);
    if (e < 0) {
        close(sv[0]);
        remote_free(r);
        return e;
    }
    r->fd = sv[0];
    if ((e = pthread_create(&r->reader, NULL, read_loop, r)) != 0) {
        snprintf(err, errlen, "cannot start a thread: %s", strerror(e));
        close(r->fd);
        larder__child_free(r->child);
        remote_free(r);
        return -e;
    }
    r->reader_started = true;
    int64_t deadline = now_ms() + spec->call_timeout_ms;
    pthread_mutex_lock(&r->mu);
    while (!r->hello && !r->dead && now_ms() < deadline)
        wait_ms(r, deadline - now_ms());
    int rc = 0;
    const char *perr = r->hello ? larder__wp_str(r->hello, "error") : NULL;
    if (perr) {
        rc = LARDER__EWORKER_CRASHED;
        snprintf(err, errlen, "backend '%s' did not open in the worker: %s", r->backend, perr);
    } else if (!r->hello) {
        rc = r->dead ? r->dead_code : LARDER__EWORKER_TIMEOUT;
        if (r->dead)
            snprintf(err, errlen, "%s", r->why);
        else
            snprintf(err, errlen, "the worker of model '%s' did not start within %lld ms",
                     r->model, (long long)spec->call_timeout_ms);
    } else {
        r->instances = json_is_true(json_object_get(r->hello, "instances"));
    }
    pthread_mutex_unlock(&r->mu);
    r->ops = (struct larder_backend_ops){
        .abi_major = LARDER_BACKEND_ABI_MAJOR,
        .abi_minor = LARDER_BACKEND_ABI_MINOR,
        .name = r->backend,
        .description = "a backend in a worker process",
        .unload = op_unload,
        .instance_new = r->instances ? op_instance_new : NULL,
        .instance_free = r->instances ? op_instance_free : NULL,
        .measure = op_measure,
        .infer = op_infer,
        .result_free = op_result_free,
    };
    if (rc < 0) {
        larder__remote_stop(r, 0, NULL);
        return rc;
    }
    *ret = r;
    return 0;
}

void larder__remote_stop(struct larder__remote *r, int grace_ms, int64_t *ret_returned)
{
    if (!r)
        return;
    int64_t returned = 0;
    pthread_mutex_lock(&r->mu);
    bool dead = r->dead;
    r->stopping = true;
    pthread_mutex_unlock(&r->mu);
    struct larder__child_mem m;
    if (!dead && larder__child_memory(r->child, &m) == 0)
        returned = (int64_t)(m.pss ? m.pss : m.rss);
    if (!dead)
        send_frame(r, LARDER__WP_EXIT, 0, NULL, NULL, 0);
    if (!larder__child_wait(r->child, grace_ms, NULL)) {
        larder__child_signal(r->child, SIGKILL);
        larder__child_wait(r->child, -1, NULL);
    }
    if (r->reader_started)
        pthread_join(r->reader, NULL);
    if (r->fd >= 0)
        close(r->fd);
    larder__child_free(r->child);
    remote_free(r);
    if (ret_returned)
        *ret_returned = returned;
}

pid_t larder__remote_pid(const struct larder__remote *r)
{
    return larder__child_pid(r->child);
}

bool larder__remote_dead(struct larder__remote *r)
{
    pthread_mutex_lock(&r->mu);
    bool d = r->dead;
    pthread_mutex_unlock(&r->mu);
    return d;
}
