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

#include "api.h"
#include "external.h"
#include "log.h"
#include "proxy.h"
#include "routes.h"
#include "stream.h"

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
    /* An API call (api.h); NULL: larder's own infer, answered whole. */
    const struct larder__api *api;
    void *api_ud;
    char *body;                   /* the backend's request the API made; NULL: r's body */
    size_t body_len;
    bool stream;                  /* the client takes pieces */
    bool no_infer;                /* only the lease */
    /* while the backend runs */
    struct larder__infer_ctl *ctl;
    struct larder__stream *s;     /* once the stream's headers went out; r is given back */
    struct larder__daemon *d;     /* set once r was given back: counted in d->stream_jobs */
    struct larder__timing timing;
    /* an external model's request, sent to its infer_path when the lease holds it */
    struct larder__proxy_request *proxy;
    int64_t proxy_timeout_ms;
};

static void job_free(struct infer_job *j)
{
    for (size_t i = 0; i < j->n_params; i++) {
        free((char *)j->params[i].key);
        free((char *)j->params[i].value);
    }
    free(j->params);
    larder__proxy_request_free(j->proxy);
    free(j->content_type);
    free(j->name);
    free(j->body);
    if (j->api && j->api->ud_free)
        j->api->ud_free(j->api_ud);
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

static void set_timing(struct infer_job *j)
{
    struct larder__request *r = j->r;
    double load_ms = larder_lease_load_ms(j->lease);
    double queue_ms = (j->t_lease - r->t_body) * 1000.0 - load_ms;
    j->timing = (struct larder__timing){
        .model = j->name,
        .served_by = larder_lease_served_by(j->lease),
        .cold_start = larder_lease_cold_start(j->lease),
        .queue_ms = queue_ms > 0 ? queue_ms : 0,
        .load_ms = load_ms,
    };
}

static void add_timing(json_t *o, struct infer_job *j, double infer_ms)
{
    const struct larder__timing *t = &j->timing;
    json_object_set_new(o, "model", json_string(t->model));
    json_object_set_new(o, "served_by", json_string(t->served_by));
    json_object_set_new(o, "cold_start", json_boolean(t->cold_start));
    json_object_set_new(o, "queue_ms", json_real(t->queue_ms));
    json_object_set_new(o, "load_ms", json_real(t->load_ms));
    json_object_set_new(o, "infer_ms", json_real(infer_ms));
}

/* X-Larder-* headers: who served, and how long the load, the wait and the inference took
 * (a stream's headers go out before its inference ends: no X-Larder-Infer-Ms there). */
static void timing_headers(struct MHD_Response *resp, struct larder__request *r,
                           const struct larder__timing *t)
{
    char ms[3][32];
    const char *names[3] = {"X-Larder-Load-Ms", "X-Larder-Queue-Ms", "X-Larder-Infer-Ms"};
    snprintf(ms[0], sizeof ms[0], "%.3f", t->load_ms);
    snprintf(ms[1], sizeof ms[1], "%.3f", t->queue_ms);
    snprintf(ms[2], sizeof ms[2], "%.3f", t->infer_ms);
    const char *served = t->served_by ? t->served_by : "";
    const char *cold = t->cold_start ? "true" : "false";
    if (resp) {
        MHD_add_response_header(resp, "X-Larder-Served-By", served);
        MHD_add_response_header(resp, "X-Larder-Cold-Start", cold);
        for (int i = 0; i < 2; i++)
            MHD_add_response_header(resp, names[i], ms[i]);
        return;
    }
    larder__reply_header(r, "X-Larder-Served-By", served);
    larder__reply_header(r, "X-Larder-Cold-Start", cold);
    for (int i = 0; i < 3; i++)
        larder__reply_header(r, names[i], ms[i]);
}

static void reply_json_result(struct infer_job *j, const char *text, double infer_ms)
{
    json_error_t jerr;
    json_t *out = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
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
    if (j->api && e == LARDER_BACKEND_EINPUT) {
        larder__reply_error(j->r, 400, "bad_input", "%s",
                            *err ? err : "the backend refused the input");
    } else if (j->api && e == LARDER_BACKEND_ETOOBIG && !ctl->reserve_refused) {
        /* An input longer than the model's context: OpenAI's code for it (on /infer it
         * stays 413 input_too_large, as for every input past a backend's limit). */
        larder__reply_error(j->r, 400, "context_length_exceeded", "%s",
                            *err ? err : "the input is longer than the model's context");
    } else if (e == LARDER_BACKEND_ECANCELED && atomic_load(&j->r->d->stopping) &&
               ctl->why == LARDER__CANCEL_GONE) {
        /* A streaming call refused its stream: the server stops. */
        larder__reply_error(j->r, 503, "shutting_down", "the server is stopping");
    } else if (e == LARDER_BACKEND_ECANCELED) {
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

/* Request memory a backend reports once the stream has started: r is not the job's any
 * more, and a streamed generation has nothing to decode. */
static bool refuse_request_memory(void *ud, uint64_t bytes)
{
    return false;
}

static bool job_alive(void *ud)
{
    struct infer_job *j = ud;
    return !larder__infer_cancelled(j->ctl);
}

/* The stream's headers go out and r is given back: from here on the job writes only to
 * the stream. -1 when no stream can be made (r is then still the job's). */
static int start_stream(struct infer_job *j)
{
    struct MHD_Response *resp;
    j->s = larder__stream_new(j->r->conn, j->api->stream_type, &resp);
    if (!j->s)
        return -1;
    timing_headers(resp, NULL, &j->timing);
    larder__reply_response(j->r, 200, resp);
    j->ctl->reserve = refuse_request_memory;
    /* The job counts as in flight until it has given its lease back (run_infer): the
     * client may have read the whole stream before that, and a stopping server must not
     * close the manager under the release. */
    j->d = j->r->d;
    atomic_fetch_add(&j->d->stream_jobs, 1);
    larder__request_resume(j->r);
    j->r = NULL;
    return 0;
}

static int push_text(struct infer_job *j, struct larder__text *t)
{
    int rc = t->failed ? -1 : 0;
    if (rc == 0 && t->len)
        rc = larder__stream_push(j->s, t->buf, t->len, job_alive, j);
    larder__text_free(t);
    return rc;
}

/* The host's emit for a streaming call: one piece, framed by the API. */
static int job_emit(void *ud, const char *json, size_t len)
{
    struct infer_job *j = ud;
    json_error_t jerr;
    json_t *piece = json_loadb(json, len, JSON_ALLOW_NUL, &jerr);
    if (!piece)
        return 0; /* not JSON: nothing a client could read, and no reason to stop */
    struct larder__text t = {0};
    j->api->piece(j->api_ud, piece, &t);
    json_decref(piece);
    if (!j->s && start_stream(j) < 0) {
        larder__text_free(&t);
        return -1;
    }
    return push_text(j, &t);
}

/* The end of a stream: the API's last bytes from the result, or its error. */
static void end_stream(struct infer_job *j, int e, const char *err,
                       const struct larder_infer_result *res, bool pieces)
{
    struct larder__text t = {0};
    json_error_t jerr;
    json_t *result = e == 0 && res->json ? json_loads(res->json, JSON_ALLOW_NUL, &jerr) : NULL;
    if (result) {
        j->api->end(j->api_ud, result, &j->timing, pieces, &t);
    } else if (larder__stream_stopping(j->s)) {
        j->api->fail(j->api_ud, 503, "shutting_down",
                     "the server is stopping: the generation was ended", &t);
    } else {
        unsigned status;
        const char *code;
        if (e == 0)
            e = LARDER_BACKEND_EINTERNAL;
        larder__error_status(e, &status, &code);
        j->api->fail(j->api_ud, status, code,
                     *err ? err : e == LARDER_BACKEND_EINTERNAL
                                      ? "the backend returned no JSON result"
                                      : larder_strerror(e),
                     &t);
    }
    json_decref(result);
    bool ok = !t.failed;
    larder__stream_end(j->s, ok ? t.buf : NULL, ok ? t.len : 0);
    larder__text_free(&t);
    j->s = NULL;
}

static void reply_api_result(struct infer_job *j, const char *text)
{
    json_error_t jerr;
    json_t *result = text ? json_loads(text, JSON_ALLOW_NUL, &jerr) : NULL;
    if (!result || !json_is_object(result)) {
        json_decref(result);
        larder__reply_error(j->r, 500, "backend_output", "the backend returned no JSON object");
        return;
    }
    j->api->reply(j->r, j->api_ud, result, &j->timing);
    timing_headers(NULL, j->r, &j->timing);
}

static void run_backend(struct infer_job *j)
{
    struct larder__request *r = j->r;
    struct larder_infer_request req = {
        .body = j->body ? j->body : r->body ? r->body : "",
        .body_len = j->body ? j->body_len : r->body_len,
        .content_type = j->content_type,
        .params = j->params,
        .n_params = j->n_params,
    };
    set_timing(j);
    if (j->no_infer) {
        j->api->reply(r, j->api_ud, NULL, &j->timing);
        timing_headers(NULL, r, &j->timing);
        return;
    }
    bool answered = false;
    int client_fd = larder__request_socket_dup(r, &answered);
    if (answered)
        return; /* by the shutdown: the work is not wanted any more */
    struct larder__infer_ctl ctl = {
        .timeout_ms = infer_timeout(r->d, j->name),
        .client_fd = client_fd,
        .reserve = reserve_request_memory,
        .reserve_ud = r,
        .emit = j->stream ? job_emit : NULL,
        .emit_ud = j,
    };
    j->ctl = &ctl;
    struct larder_infer_result res = {0};
    char err[1024] = "";
    double t0 = larder__now();
    int e = larder__lease_infer(j->lease, &req, &ctl, &res, err, sizeof err);
    double infer_ms = (larder__now() - t0) * 1000.0;
    j->timing.infer_ms = infer_ms;
    if (client_fd >= 0)
        close(client_fd);
    bool pieces = j->s != NULL;
    /* A streaming call whose backend sent its result whole still answers as a stream. */
    if (!j->s && j->stream && e == 0 && start_stream(j) < 0) {
        larder__lease_result_free(j->lease, &res);
        e = LARDER_BACKEND_ENOMEM;
    }
    if (j->s)
        end_stream(j, e, err, &res, pieces);
    else if (e < 0)
        reply_backend_error(j, e, err, &ctl, infer_ms);
    else if (j->api)
        reply_api_result(j, res.json);
    else if (res.json)
        reply_json_result(j, res.json, infer_ms);
    else if (res.bytes)
        reply_bytes_result(j, &res, infer_ms);
    else
        larder__reply_error(r, 500, "backend_output", "the backend returned nothing");
    if (e == 0)
        larder__lease_result_free(j->lease, &res);
    j->ctl = NULL;
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

void larder__reply_acquire_error(struct larder__request *r, const char *name, int err)
{
    char msg[1024], why[700] = "";
    int64_t cooldown = -1;
    if (err == LARDER_ETOOBIG) {
        larder__reply_too_big(r, name, false);
        return;
    }
    if (err == LARDER_ELOAD || err == LARDER_ECOOLDOWN)
        last_error(r->d, name, why, sizeof why, &cooldown);
    snprintf(msg, sizeof msg, "model '%s': %s%s%s", name, larder_strerror(err),
             *why ? ": " : "", why);
    /* Retry-After: the cooldown's real remainder, not a guess. */
    larder__reply_larder_error_retry(r, err, msg,
                                     err == LARDER_ECOOLDOWN && cooldown > 0 ? cooldown : -1);
}

/* A request for an external model that a fallback running in-process serves: the checks
 * the route skipped for the external model. */
static bool backend_can_take(struct infer_job *j)
{
    if (!j->content_type || !*j->content_type)
        larder__reply_error(j->r, 415, "unsupported_media_type",
                            "the request needs a Content-Type for the fallback '%s'",
                            larder_lease_served_by(j->lease));
    else if (j->r->body_len == 0)
        larder__reply_error(j->r, 400, "empty_body", "the request has no body");
    else
        return true;
    return false;
}

/* The external model a lease of j holds (j->proxy set) takes j's request: any external
 * model for larder's own infer; for an API route, one that speaks OpenAI's API (a fallback
 * may be a server that does not). */
static bool proxy_reaches(struct infer_job *j)
{
    if (!j->api)
        return true;
    const char *served = larder_lease_served_by(j->lease);
    struct larder__daemon *d = j->r->d;
    pthread_rwlock_rdlock(&d->conf_lock);
    const struct larder__model_conf *m = served ? larder__config_model(d->conf, served) : NULL;
    bool ok = m && m->isolation == LARDER__ISOLATION_EXTERNAL &&
              m->ext.api == LARDER__EXT_API_OPENAI;
    pthread_rwlock_unlock(&d->conf_lock);
    return ok;
}

static bool take_call(struct infer_job *j, struct larder__call *call);

/* An API call meant for an external server that an in-process fallback serves: its body
 * is translated for the backend now. False: r has the error reply. */
static bool prepare_for_fallback(struct infer_job *j)
{
    struct larder__call call = {0};
    bool ok = j->api->prepare(j->r, &call, &j->api_ud);
    free(call.model); /* the asked model's name stays the job's */
    call.model = NULL;
    if (ok)
        ok = take_call(j, &call);
    free(call.body);
    return ok;
}

static void run_infer(void *arg)
{
    struct infer_job *j = arg;
    struct larder__daemon *d = j->r->d;
    if (j->err < 0) {
        larder__reply_acquire_error(j->r, j->name, j->err);
    } else if (j->proxy && larder__ext_of_lease(j->lease) && proxy_reaches(j)) {
        /* The proxy answers, resumes and releases. */
        larder__proxy_run(j->r, j->lease, j->proxy, j->proxy_timeout_ms);
        j->proxy = NULL;
        job_free(j);
        return;
    } else if (larder__ext_of_lease(j->lease)) {
        /* An external server behind a route that cannot reach it (a fallback, say). */
        larder__reply_error(j->r, 502, "not_reachable",
                            "model '%s' was served by '%s', an external server that this "
                            "route cannot reach (it takes %s)", j->name,
                            larder_lease_served_by(j->lease),
                            j->api ? "api = openai servers only" : "external models only");
        larder_release(j->lease);
    } else {
        if (!j->proxy || (j->api ? prepare_for_fallback(j) : backend_can_take(j))) {
            run_backend(j);
            if (j->api && j->api->before_release)
                j->api->before_release(d, j->api_ud, j->name);
        }
        larder_release(j->lease);
    }
    struct larder__request *r = j->r; /* NULL once a stream gave it back */
    struct larder__daemon *counted = j->d;
    job_free(j);
    if (r)
        larder__request_resume(r);
    if (counted)
        atomic_fetch_sub(&counted->stream_jobs, 1);
}

static void on_lease(void *ud, int err, larder_lease *lease)
{
    struct infer_job *j = ud;
    j->err = err;
    j->lease = lease;
    j->t_lease = larder__now();
    if (err >= 0 && j->proxy && larder__ext_of_lease(lease) && proxy_reaches(j)) {
        /* An external model's request goes to the proxy's threads at once (it does not
         * block here): no stop on the inference pool on the way. */
        double queue_ms = (j->t_lease - j->r->t_body) * 1000.0 - larder_lease_load_ms(lease);
        larder__proxy_request_set_queue_ms(j->proxy, queue_ms);
        larder__proxy_run(j->r, lease, j->proxy, j->proxy_timeout_ms);
        j->proxy = NULL;
        job_free(j);
        return;
    }
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
    j->content_type = strdup(r->content_type ? r->content_type : "");
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

/* An external model's infer: its body goes to the child's infer_path as it is (the child
 * judges it), with the query. True when the model is external (r is then handled). */
static bool external_infer(struct larder__request *r, const char *name, int64_t timeout)
{
    struct larder__daemon *d = r->d;
    char *target = NULL;
    pthread_rwlock_rdlock(&d->conf_lock);
    const struct larder__model_conf *m = larder__config_model(d->conf, name);
    bool external = m && m->isolation == LARDER__ISOLATION_EXTERNAL;
    const char *q = r->target ? strchr(r->target, '?') : NULL;
    if (external && asprintf(&target, "%s%s", m->ext.infer_path, q ? q : "") < 0)
        target = NULL;
    int64_t head_timeout = m && m->infer_timeout_ms ? m->infer_timeout_ms : timeout;
    bool drop_auth = d->infer != NULL;
    pthread_rwlock_unlock(&d->conf_lock);
    if (!external)
        return false;
    struct infer_job *j = target ? job_new(r, name, timeout) : NULL;
    if (j && !(j->proxy = larder__proxy_request_new(r, "POST", target, drop_auth))) {
        job_free(j);
        j = NULL;
    }
    free(target);
    if (!j) {
        larder__reply_error(r, 500, "internal", "out of memory");
        return true;
    }
    j->proxy_timeout_ms = head_timeout;
    larder__request_suspend(r);
    acquire(j);
    return true;
}

void larder__route_infer(struct larder__request *r, const char *name)
{
    if (!larder__require_token(r, false))
        return;
    int64_t timeout = model_timeout(r, name);
    if (timeout < 0 || external_infer(r, name, timeout))
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
    bool stream = false;
    if (!larder__request_arg_parse(r, "stream", LARDER__ARG_BOOL, 0, &stream))
        return;
    /* The backend gets the Content-Type whole ("audio/L16; rate=8000"): its parameters
     * say how to read the body, and it refuses what it cannot take. */
    struct infer_job *j = job_new(r, name, timeout);
    if (!j) {
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    if (stream) {
        j->api = &larder__native_stream;
        j->stream = true;
    }
    larder__request_suspend(r);
    if (!json_body(r->content_type))
        acquire(j);
    else if (larder__pool_submit(r->d->infer_pool, check_json_then_acquire, j) < 0) {
        j->err = LARDER_ECLOSED; /* only while shutting down, with no pool left */
        run_infer(j);
    }
}

/* ---- the APIs clients already speak (api.h) ------------------------------------------- */

/* The backend's request of call into j (call's body is taken; call->body NULL after).
 * It is held for the call as the client's body is: both count against request_memory
 * until the reply has gone out. False: r has a 503 reply. */
static bool take_call(struct infer_job *j, struct larder__call *call)
{
    struct larder__request *r = j->r;
    if (call->body_len && !larder__request_memory_take(r, call->body_len)) {
        larder__reply_error(r, 503, "request_memory",
                            "this request and the backend's copy of it (%zu bytes) do not fit "
                            "the server's request memory now: try again shortly",
                            call->body_len);
        larder__reply_header(r, "Retry-After", "1");
        return false;
    }
    free(j->body);
    j->body = call->body;
    j->body_len = call->body_len;
    j->stream = call->stream;
    j->no_infer = call->no_infer;
    call->body = NULL;
    return true;
}

/* The name in the "model" field of r's body when it is an external model that speaks
 * OpenAI's API (malloc'd), else NULL: the API's prepare then reads the body as usual and
 * reports what is wrong with it. */
static char *proxied_model(struct larder__request *r)
{
    json_t *o = json_loadb(r->body ? r->body : "", r->body_len, 0, NULL);
    const char *name = json_string_value(json_object_get(o, "model"));
    char *found = NULL;
    pthread_rwlock_rdlock(&r->d->conf_lock);
    const struct larder__model_conf *m = name ? larder__config_model(r->d->conf, name) : NULL;
    if (m && m->isolation == LARDER__ISOLATION_EXTERNAL && m->ext.api == LARDER__EXT_API_OPENAI)
        found = strdup(name);
    pthread_rwlock_unlock(&r->d->conf_lock);
    json_decref(o);
    return found;
}

/* A model that prepare accepted but the route cannot serve: an external server whose API
 * is not the route's. False with a 400 reply. */
static bool route_serves(struct infer_job *j, const char *name)
{
    struct larder__daemon *d = j->r->d;
    pthread_rwlock_rdlock(&d->conf_lock);
    const struct larder__model_conf *m = larder__config_model(d->conf, name);
    enum larder__ext_api api = m ? m->ext.api : LARDER__EXT_API_NONE;
    bool external = m && m->isolation == LARDER__ISOLATION_EXTERNAL;
    pthread_rwlock_unlock(&d->conf_lock);
    if (!external)
        return true;
    if (api == LARDER__EXT_API_OPENAI)
        larder__reply_error(j->r, 400, "model_not_supported",
                            "model '%s' is an external server that speaks OpenAI's API: reach "
                            "it through /v1/chat/completions, /v1/completions or "
                            "/v1/embeddings", name);
    else
        larder__reply_error(j->r, 400, "model_not_supported",
                            "model '%s' is an external server that declares no api: reach it "
                            "through /v1/models/%s/infer, or declare api = openai", name, name);
    return false;
}

/* On the inference pool: the API reads the client's body, then the model is asked for.
 * A model that is an external server speaking OpenAI's API gets the client's body as it
 * is, proxied (j->proxy, made on the HTTP thread); any other, the API's translation. */
static void prepare_then_acquire(void *arg)
{
    struct infer_job *j = arg;
    struct larder__request *r = j->r;
    char *proxied = j->proxy ? proxied_model(r) : NULL;
    if (proxied) {
        free(r->model);
        r->model = strdup(proxied);
        free(j->name);
        j->name = proxied;
        j->timeout_ms = model_timeout(r, proxied);
        if (j->timeout_ms < 0) { /* gone from the config meanwhile */
            job_free(j);
            larder__request_resume(r);
            return;
        }
        int64_t head = infer_timeout(r->d, proxied);
        j->proxy_timeout_ms = head ? head : j->timeout_ms;
        acquire(j);
        return;
    }
    larder__proxy_request_free(j->proxy);
    j->proxy = NULL;
    struct larder__call call = {0};
    bool ok = j->api->prepare(r, &call, &j->api_ud);
    int64_t timeout = -1;
    if (ok && call.model) {
        free(r->model);
        r->model = strdup(call.model);
        timeout = model_timeout(r, call.model);
    }
    if (timeout >= 0 && !(route_serves(j, call.model) && take_call(j, &call)))
        timeout = -1;
    if (!ok || timeout < 0) {
        free(call.model);
        free(call.body);
        job_free(j);
        larder__request_resume(r);
        return;
    }
    free(j->name);
    j->name = call.model;
    j->timeout_ms = timeout;
    acquire(j);
}

/* Whether d's config has an external model that speaks OpenAI's API; *ret_drop_auth:
 * whether larderd consumes the client's Authorization itself (infer tokens). */
static bool has_proxied_models(struct larder__daemon *d, bool *ret_drop_auth)
{
    bool any = false;
    pthread_rwlock_rdlock(&d->conf_lock);
    *ret_drop_auth = d->infer != NULL;
    for (size_t i = 0; i < d->conf->n_models && !any; i++)
        any = d->conf->models[i].isolation == LARDER__ISOLATION_EXTERNAL &&
              d->conf->models[i].ext.api == LARDER__EXT_API_OPENAI;
    pthread_rwlock_unlock(&d->conf_lock);
    return any;
}

void larder__infer_api(struct larder__request *r, const struct larder__api *api)
{
    if (!larder__require_token(r, false))
        return;
    if (r->body_len == 0) {
        larder__reply_error(r, 400, "empty_body", "the request has no body");
        return;
    }
    struct infer_job *j = job_new(r, "", 0);
    if (!j) {
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    free(j->content_type);
    j->content_type = strdup("application/json");
    j->api = api;
    /* The client's headers for an external server, copied here (the HTTP thread) when the
     * body may name one: which model it names is known only once the pool has read it. */
    bool drop_auth = false;
    if (api->proxy_path && has_proxied_models(r->d, &drop_auth) &&
        !(j->proxy = larder__proxy_request_new(r, "POST", api->proxy_path, drop_auth))) {
        job_free(j);
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    larder__request_suspend(r);
    if (!j->content_type) {
        j->err = -ENOMEM;
        run_infer(j);
    } else if (larder__pool_submit(r->d->infer_pool, prepare_then_acquire, j) < 0) {
        j->err = LARDER_ECLOSED; /* only while shutting down, with no pool left */
        run_infer(j);
    }
}
