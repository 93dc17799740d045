/* larderd inference: POST /v1/models/{name}/infer.
 *
 * The HTTP thread checks what is cheap (the model, the token, a Content-Type, a body),
 * suspends the request and asks the manager for a lease without waiting
 * (larder_acquire_async). A JSON body is first checked on the inference pool, never on
 * an HTTP thread, and an invalid one answers before any load. When the lease arrives (at
 * once for a warm model, after the load for a cold one) the job moves to the inference
 * pool, which runs the backend, builds the reply, returns the lease and resumes the
 * request.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>

#include "log.h"
#include "routes.h"

struct infer_job {
    struct larder__request *r;
    char *name;
    larder_lease *lease;
    int err;
    double t_lease;               /* the lease (or error) arrived */
    struct larder_option *params; /* query arguments */
    size_t n_params;
    char *content_type;           /* as the request gave it, parameters included */
    int64_t timeout_ms;           /* for the lease */
};

static void job_free(struct infer_job *j)
{
    for (size_t i = 0; i < j->n_params; i++) {
        free((char *)j->params[i].key);
        free((char *)j->params[i].value);
    }
    free(j->params);
    free(j->content_type);
    free(j->name);
    free(j);
}

static enum MHD_Result add_param(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    struct infer_job *j = cls;
    struct larder_option *p = realloc(j->params, (j->n_params + 1) * sizeof *p);
    if (!p)
        return MHD_NO;
    j->params = p;
    p[j->n_params].key = strdup(key);
    p[j->n_params].value = strdup(value ? value : "");
    j->n_params++;
    return MHD_YES;
}

/* True when the media type of ct (parameters and case aside) is type. */
static bool media_is(const char *ct, const char *type)
{
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    while (n && (*ct == ' ' || *ct == '\t')) {
        ct++;
        n--;
    }
    return n == strlen(type) && strncasecmp(ct, type, n) == 0;
}

static bool json_body(const char *ct)
{
    return media_is(ct, "application/json") || media_is(ct, "text/json");
}

/* ---- the reply ---------------------------------------------------------------------------- */

static void add_timing(json_t *o, struct infer_job *j, double infer_ms)
{
    struct larder__request *r = j->r;
    double load_ms = larder_lease_load_ms(j->lease);
    double queue_ms = (j->t_lease - r->t_body) * 1000.0 - load_ms;
    json_object_set_new(o, "model", json_string(j->name));
    json_object_set_new(o, "served_by", json_string(larder_lease_served_by(j->lease)));
    json_object_set_new(o, "cold_start", json_boolean(larder_lease_cold_start(j->lease)));
    json_object_set_new(o, "queue_ms", json_real(queue_ms > 0 ? queue_ms : 0));
    json_object_set_new(o, "load_ms", json_real(load_ms));
    json_object_set_new(o, "infer_ms", json_real(infer_ms));
}

static void reply_json_result(struct infer_job *j, const char *text, double infer_ms)
{
    json_error_t jerr;
    json_t *out = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!out) {
        larder__reply_error(j->r, 500, "backend_output", "the backend returned invalid JSON: %s",
                            jerr.text);
        return;
    }
    json_t *o = out;
    if (!json_is_object(out)) {
        o = json_object();
        json_object_set_new(o, "output", out);
    }
    add_timing(o, j, infer_ms);
    larder__reply_json(j->r, 200, o);
}

static void reply_bytes_result(struct infer_job *j, struct larder_infer_result *res,
                               double infer_ms)
{
    char buf[64];
    larder__reply_bytes(j->r, 200, res->content_type ? res->content_type
                                                     : "application/octet-stream",
                        res->bytes, res->bytes_len);
    res->bytes = NULL;
    larder__reply_header(j->r, "X-Larder-Served-By", larder_lease_served_by(j->lease));
    larder__reply_header(j->r, "X-Larder-Cold-Start",
                         larder_lease_cold_start(j->lease) ? "true" : "false");
    snprintf(buf, sizeof buf, "%.3f", infer_ms);
    larder__reply_header(j->r, "X-Larder-Infer-Ms", buf);
    snprintf(buf, sizeof buf, "%.3f", larder_lease_load_ms(j->lease));
    larder__reply_header(j->r, "X-Larder-Load-Ms", buf);
}

/* The model's infer_timeout in ms; 0 when none (or the model is gone from the config). */
static int64_t infer_timeout(struct larder__daemon *d, const char *name)
{
    pthread_rwlock_rdlock(&d->conf_lock);
    const struct larder__model_conf *m = larder__config_model(d->conf, name);
    int64_t t = m ? m->infer_timeout_ms : 0;
    pthread_rwlock_unlock(&d->conf_lock);
    return t;
}

/* A backend stopped on the host's word: 504 past the deadline; for a client that went
 * away a reply nobody reads, and a log line. */
static void reply_cancelled(struct infer_job *j, const struct larder__infer_ctl *ctl,
                            double infer_ms)
{
    if (ctl->why == LARDER__CANCEL_DEADLINE) {
        larder__reply_error(j->r, 504, "infer_timeout",
                            "model '%s': the inference ran past its infer_timeout (%lld ms)",
                            j->name, (long long)ctl->timeout_ms);
        return;
    }
    larder__log(LARDER__LOG_INFO, "inference cancelled",
                json_pack("{s:s,s:s,s:f}", "model", j->name, "reason", "client gone",
                          "infer_ms", infer_ms));
    larder__reply_error(j->r, 499, "client_closed", "the client closed the connection");
}

static void reply_backend_error(struct infer_job *j, int e, const char *err,
                                const struct larder__infer_ctl *ctl, double infer_ms)
{
    if (e == LARDER_BACKEND_ECANCELED) {
        reply_cancelled(j, ctl, infer_ms);
    } else if (e == LARDER_BACKEND_ETOOBIG && ctl->reserve_refused) {
        larder__reply_error(j->r, 503, "request_memory",
                            "model '%s': decoding the input needs more request memory than "
                            "is free now; %s", j->name, *err ? err : "try again");
        larder__reply_header(j->r, "Retry-After", "1");
    } else if (e == LARDER_BACKEND_ETOOBIG) {
        larder__reply_error(j->r, 413, "input_too_large", "%s",
                            *err ? err : "the input decodes past the model's limit");
    } else {
        larder__reply_larder_error(j->r, e, err);
    }
}

static bool reserve_request_memory(void *ud, uint64_t bytes)
{
    return larder__request_memory_take(ud, bytes);
}

static void run_backend(struct infer_job *j)
{
    struct larder__request *r = j->r;
    struct larder_infer_request req = {
        .body = r->body ? r->body : "",
        .body_len = r->body_len,
        .content_type = j->content_type,
        .params = j->params,
        .n_params = j->n_params,
    };
    bool answered = false;
    int client_fd = larder__request_socket_dup(r, &answered);
    if (answered)
        return; /* by the shutdown: the work is not wanted any more */
    struct larder__infer_ctl ctl = {
        .timeout_ms = infer_timeout(r->d, j->name),
        .client_fd = client_fd,
        .reserve = reserve_request_memory,
        .reserve_ud = r,
    };
    struct larder_infer_result res = {0};
    char err[1024] = "";
    double t0 = larder__now();
    int e = larder__lease_infer(j->lease, &req, &ctl, &res, err, sizeof err);
    double infer_ms = (larder__now() - t0) * 1000.0;
    if (client_fd >= 0)
        close(client_fd);
    if (e < 0) {
        reply_backend_error(j, e, err, &ctl, infer_ms);
        return;
    }
    if (res.json)
        reply_json_result(j, res.json, infer_ms);
    else if (res.bytes)
        reply_bytes_result(j, &res, infer_ms);
    else
        larder__reply_error(r, 500, "backend_output", "the backend returned nothing");
    larder__lease_result_free(j->lease, &res);
}

/* The message of the model's last failed load, copied into buf ("" when none), and the
 * time left of its cooldown (0 when none; ret_cooldown_ms may be NULL). */
static void last_error(struct larder__daemon *d, const char *name, char *buf, size_t len,
                       int64_t *ret_cooldown_ms)
{
    struct larder_snapshot *s = NULL;
    larder *m = larder__mgr_get(d);
    int64_t cooldown = 0;
    if (buf)
        buf[0] = 0;
    if (m && larder_snapshot(m, &s) == 0) {
        for (size_t i = 0; i < s->n; i++) {
            const struct larder_component_info *c = &s->components[i];
            if (strcmp(c->name, name) != 0)
                continue;
            if (buf && c->last_error_message)
                snprintf(buf, len, "%s", c->last_error_message);
            cooldown = c->cooldown_ms > 0 ? c->cooldown_ms : 0;
        }
    }
    larder_snapshot_free(s);
    if (m)
        larder__mgr_put(d);
    if (ret_cooldown_ms)
        *ret_cooldown_ms = cooldown;
}

int64_t larder__cooldown_left_ms(struct larder__daemon *d, const char *name)
{
    int64_t ms;
    last_error(d, name, NULL, 0, &ms);
    return ms;
}

static void reply_acquire_error(struct infer_job *j)
{
    char msg[1024], why[700] = "";
    int64_t cooldown = -1;
    if (j->err == LARDER_ETOOBIG) {
        larder__reply_too_big(j->r, j->name, false);
        return;
    }
    if (j->err == LARDER_ELOAD || j->err == LARDER_ECOOLDOWN)
        last_error(j->r->d, j->name, why, sizeof why, &cooldown);
    snprintf(msg, sizeof msg, "model '%s': %s%s%s", j->name, larder_strerror(j->err),
             *why ? ": " : "", why);
    /* Retry-After: the cooldown's real remainder, not a guess. */
    larder__reply_larder_error_retry(j->r, j->err, msg,
                                     j->err == LARDER_ECOOLDOWN && cooldown > 0 ? cooldown : -1);
}

static void run_infer(void *arg)
{
    struct infer_job *j = arg;
    struct larder__request *r = j->r;
    if (j->err < 0) {
        reply_acquire_error(j);
    } else {
        run_backend(j);
        larder_release(j->lease);
    }
    job_free(j);
    larder__request_resume(r);
}

static void on_lease(void *ud, int err, larder_lease *lease)
{
    struct infer_job *j = ud;
    j->err = err;
    j->lease = lease;
    j->t_lease = larder__now();
    if (larder__pool_submit(j->r->d->infer_pool, run_infer, j) < 0) {
        /* Only while shutting down with no pool left: answer from here. */
        j->err = err < 0 ? err : LARDER_ECLOSED;
        larder_release(j->lease);
        j->lease = NULL;
        run_infer(j);
    }
}

/* ---- admission: cheap checks on the HTTP thread, the body's on the pool ---------------- */

/* From a pool thread the request may be answered, and freed, before
 * larder_acquire_async returns: nothing of j or of its request is read after it. */
static void acquire(struct infer_job *j)
{
    struct larder__daemon *d = j->r->d;
    larder *m = larder__mgr_get(d);
    int e = m ? larder_acquire_async(m, j->name, j->timeout_ms, on_lease, j) : LARDER_ECLOSED;
    if (m)
        larder__mgr_put(d);
    if (e < 0) { /* on_lease is not called: j is still ours */
        j->err = e;
        run_infer(j);
    }
}

/* On the inference pool: a JSON body must parse before its model is asked for (a
 * validity scan, no tree: the backend parses it once, for real). */
static void check_json_then_acquire(void *arg)
{
    struct infer_job *j = arg;
    struct larder__request *r = j->r;
    char why[256];
    if (!larder__json_check(r->body, r->body_len, why, sizeof why)) {
        larder__reply_error(r, 400, "invalid_json", "%s", why);
        job_free(j);
        larder__request_resume(r);
        return;
    }
    acquire(j);
}

/* The model's timeout, or -1 with a 404 reply when the config has no such model. */
static int64_t model_timeout(struct larder__request *r, const char *name)
{
    struct larder__daemon *d = r->d;
    pthread_rwlock_rdlock(&d->conf_lock);
    const struct larder__model_conf *m = larder__config_model(d->conf, name);
    int64_t t = !m ? -1 : m->timeout_ms ? m->timeout_ms : d->conf->request_timeout_ms;
    pthread_rwlock_unlock(&d->conf_lock);
    if (t < 0)
        larder__reply_error(r, 404, "model_not_found", "no model named '%s'", name);
    return t;
}

static struct infer_job *job_new(struct larder__request *r, const char *name, int64_t timeout)
{
    struct infer_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->r = r;
    j->timeout_ms = timeout;
    j->content_type = strdup(r->content_type);
    j->name = strdup(name);
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, add_param, j);
    bool ok = j->name && j->content_type;
    for (size_t i = 0; i < j->n_params; i++)
        ok = ok && j->params[i].key && j->params[i].value;
    if (!ok) {
        job_free(j);
        return NULL;
    }
    return j;
}

void larder__route_infer(struct larder__request *r, const char *name)
{
    if (!larder__require_token(r, false))
        return;
    int64_t timeout = model_timeout(r, name);
    if (timeout < 0)
        return;
    if (!r->content_type || !*r->content_type) {
        larder__reply_error(r, 415, "unsupported_media_type",
                            "the request needs a Content-Type (image/png, audio/wav, "
                            "application/json, ...)");
        return;
    }
    if (r->body_len == 0) {
        larder__reply_error(r, 400, "empty_body", "the request has no body");
        return;
    }
    /* The backend gets the Content-Type whole ("audio/L16; rate=8000"): its parameters
     * say how to read the body, and it refuses what it cannot take. */
    struct infer_job *j = job_new(r, name, timeout);
    if (!j) {
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    larder__request_suspend(r);
    if (!json_body(r->content_type))
        acquire(j);
    else if (larder__pool_submit(r->d->infer_pool, check_json_then_acquire, j) < 0) {
        j->err = LARDER_ECLOSED; /* only while shutting down, with no pool left */
        run_infer(j);
    }
}
