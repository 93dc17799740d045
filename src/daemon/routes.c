/* larderd routes (see routes.h and docs/http-api.md). */
#include "routes.h"
#include "proxy.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "advice.h"
#include "api.h"
#include "external.h"
#include "log.h"
#include "plugin.h"

enum { GET = 1, POST = 2 };

struct route {
    const char *pattern; /* parts separated by '/', "*" matches one part (a model name) */
    unsigned methods;
    void (*fn)(struct larder__request *r, const char *name);
};

/* ---- tokens ------------------------------------------------------------------------------ */

bool larder__require_token(struct larder__request *r, bool admin)
{
    struct larder__daemon *d = r->d;
    const char *auth = larder__request_header(r, "Authorization");
    pthread_rwlock_rdlock(&d->conf_lock);
    const struct larder__tokens *t = admin ? d->admin : d->infer;
    bool ok = (!admin && !t) || larder__tokens_check(t, auth);
    bool none = admin && !t;
    pthread_rwlock_unlock(&d->conf_lock);
    if (ok)
        return true;
    if (none)
        larder__reply_error(r, 401, "unauthorized",
                            "admin routes are disabled: no [server] admin_tokens file");
    else
        larder__reply_error(r, 401, "unauthorized", "%s",
                            auth ? "invalid token" : "missing Authorization: Bearer <token>");
    larder__reply_header(r, "WWW-Authenticate", "Bearer realm=\"larder\"");
    return false;
}

/* ---- snapshot-based routes ------------------------------------------------------------- */

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* Written straight into the reply's text: a listing of 10,000 models is megabytes, and a
 * jansson tree of it costs far more time and memory than the text itself. */
#define LIT(t, s) larder__text_lit(t, s)
/* ,"key":value */
#define STR(t, k, v) (LIT(t, ",\"" k "\":"), larder__text_json_string(t, v))
#define INT(t, k, v) (LIT(t, ",\"" k "\":"), larder__text_json_int(t, v))
#define UINT(t, k, v) (LIT(t, ",\"" k "\":"), larder__text_json_uint(t, v))
#define REAL(t, k, v) (LIT(t, ",\"" k "\":"), larder__text_json_real(t, v))
#define BOOL(t, k, v) (LIT(t, ",\"" k "\":"), larder__text_json_bool(t, v))

static void last_error_text(struct larder__text *t, const struct larder_component_info *c)
{
    if (!c->last_error) {
        LIT(t, "null");
        return;
    }
    LIT(t, "{\"code\":");
    larder__text_json_int(t, c->last_error);
    STR(t, "name", larder_strerror(c->last_error));
    STR(t, "message", c->last_error_message);
    LIT(t, "}");
}

/* ,"gpu_process_bytes":N,"gpu_processes":[{"index":I,"bytes":N}...] (the GPUs it uses),
 * or null for both when unknown */
static void tree_gpu_text(struct larder__text *t, const struct larder__tree_gpu *g)
{
    if (!g->n_gpus) {
        LIT(t, ",\"gpu_process_bytes\":null,\"gpu_processes\":null");
        return;
    }
    UINT(t, "gpu_process_bytes", g->total);
    LIT(t, ",\"gpu_processes\":[");
    for (unsigned i = 0, k = 0; i < g->n_gpus; i++) {
        if (!g->bytes[i])
            continue;
        if (k++)
            LIT(t, ",");
        LIT(t, "{\"index\":");
        larder__text_json_uint(t, i);
        UINT(t, "bytes", g->bytes[i]);
        LIT(t, "}");
    }
    LIT(t, "]");
}

void larder__component_text(struct larder__text *t, const struct larder_component_info *c,
                            const char *isolation, const struct larder__tree_gpu *gpu)
{
    LIT(t, "{\"name\":");
    larder__text_json_string(t, c->name);
    STR(t, "backend", c->class_name);
    STR(t, "isolation", isolation);
    STR(t, "state", larder_state_name(c->state));
    BOOL(t, "draining", c->draining);
    BOOL(t, "pin", c->pin);
    BOOL(t, "preload", c->preload);
    INT(t, "priority", c->priority);
    INT(t, "ttl_ms", c->ttl_ms);
    INT(t, "expires_in_ms", c->expires_in_ms);
    STR(t, "fallback", c->fallback);
    LIT(t, ",\"instances\":{\"created\":");
    larder__text_json_uint(t, c->instances);
    UINT(t, "busy", c->instances_busy);
    UINT(t, "max", c->instances_max);
    LIT(t, "}");
    UINT(t, "leases", c->leases);
    UINT(t, "waiters", c->waiters);
    LIT(t, ",\"memory\":{\"estimate_bytes\":");
    larder__text_json_uint(t, c->estimate_bytes);
    STR(t, "estimate_source", larder_estimate_source_name(c->estimate_source));
    UINT(t, "measured_bytes", c->measured_bytes);
    STR(t, "measure_method", larder_measure_method_name(c->measure_method));
    UINT(t, "instance_bytes", c->instance_bytes);
    UINT(t, "reserved_bytes", c->reserved_bytes);
    INT(t, "last_returned_bytes", c->last_returned_bytes);
    BOOL(t, "leak_suspect", c->leak_suspect);
    if (gpu)
        tree_gpu_text(t, gpu);
    LIT(t, "}");
    UINT(t, "loads", c->loads);
    LIT(t, ",\"load_ms\":{\"last\":");
    larder__text_json_real(t, c->load_ms_last);
    REAL(t, "avg", c->load_ms_avg);
    LIT(t, "}");
    UINT(t, "hits", c->hits);
    UINT(t, "cold_starts", c->cold_starts);
    UINT(t, "evictions", c->evictions);
    UINT(t, "failures", c->failures);
    UINT(t, "fallbacks_served", c->fallbacks_served);
    LIT(t, ",\"last_error\":");
    last_error_text(t, c);
    INT(t, "cooldown_ms", c->cooldown_ms);
    if (c->gpu < 0) {
        LIT(t, ",\"gpu\":null}");
        return;
    }
    LIT(t, ",\"gpu\":{\"index\":");
    larder__text_json_int(t, c->gpu);
    UINT(t, "bytes", c->gpu_bytes);
    UINT(t, "reserved_bytes", c->gpu_reserved_bytes);
    LIT(t, "}}");
}

struct larder_snapshot *larder__snapshot_or_reply(struct larder__request *r)
{
    struct larder_snapshot *s = NULL;
    larder *m = larder__mgr_get(r->d);
    int e = m ? larder_snapshot(m, &s) : LARDER_ECLOSED;
    if (m)
        larder__mgr_put(r->d);
    if (e < 0) {
        larder__reply_larder_error(r, e, "snapshot failed");
        return NULL;
    }
    return s;
}

static void route_health(struct larder__request *r, const char *name)
{
    larder__reply_json(r, 200,
                       json_pack("{s:s,s:s,s:f}", "status", "ok", "node", r->d->node_name,
                                 "uptime_s", larder__now() - r->d->started));
}

/* Readiness concerns the preload models only: each is loaded (or was, and is now
 * evicted or reloading), still pending (never loaded, no failure yet), or failed (its
 * last load failed and it is not loaded). */
enum preload_status { PRELOAD_DONE, PRELOAD_PENDING, PRELOAD_FAILED };

static enum preload_status preload_status(const struct larder_component_info *c)
{
    if (c->state == LARDER_STATE_READY)
        return PRELOAD_DONE;
    if (c->last_error)
        return PRELOAD_FAILED;
    return c->loads ? PRELOAD_DONE : PRELOAD_PENDING;
}

/* The preloads in that status: their names (pending), or objects with their error. */
static void preload_list(struct larder__text *t, const struct larder_snapshot *s,
                         enum preload_status status)
{
    for (size_t i = 0, k = 0; i < s->n; i++) {
        const struct larder_component_info *c = &s->components[i];
        if (!c->preload || preload_status(c) != status)
            continue;
        if (k++)
            LIT(t, ",");
        if (status == PRELOAD_PENDING) {
            larder__text_json_string(t, c->name);
            continue;
        }
        LIT(t, "{\"name\":");
        larder__text_json_string(t, c->name);
        STR(t, "state", larder_state_name(c->state));
        UINT(t, "failures", c->failures);
        INT(t, "cooldown_ms", c->cooldown_ms);
        LIT(t, ",\"last_error\":");
        last_error_text(t, c);
        LIT(t, "}");
    }
}

static void route_ready(struct larder__request *r, const char *name)
{
    struct larder_snapshot *s = larder__snapshot_or_reply(r);
    if (!s)
        return;
    size_t counts[3] = {0};
    for (size_t i = 0; i < s->n; i++)
        if (s->components[i].preload)
            counts[preload_status(&s->components[i])]++;
    struct larder__text t = {0};
    if (!counts[PRELOAD_PENDING] && !counts[PRELOAD_FAILED]) {
        larder_snapshot_free(s);
        LIT(&t, "{\"status\":\"ready\"}\n");
        larder__reply_text(r, 200, "application/json", &t);
        return;
    }
    if (counts[PRELOAD_PENDING])
        LIT(&t, "{\"status\":\"loading\",\"pending\":");
    else
        LIT(&t, "{\"status\":\"failed\",\"pending\":");
    larder__text_json_uint(&t, counts[PRELOAD_PENDING]);
    LIT(&t, ",\"models\":[");
    preload_list(&t, s, PRELOAD_PENDING);
    LIT(&t, "],\"failed\":[");
    preload_list(&t, s, PRELOAD_FAILED);
    LIT(&t, "]}\n");
    larder_snapshot_free(s);
    larder__reply_text(r, 503, "application/json", &t);
    r->error_code = "not_ready";
    larder__reply_header(r, "Retry-After", "1");
}

/* Serialising a large listing leaves the snapshot's many small blocks free in this
 * thread's arena, where glibc would keep them; listings this large trim the heap. */
#define TRIM_COMPONENTS 1000

static void reply_listing(struct larder__request *r, struct larder_snapshot *s,
                          struct larder__text *t)
{
    size_t n = s->n;
    larder_snapshot_free(s);
    if (n >= TRIM_COMPONENTS)
        malloc_trim(0);
    larder__reply_text(r, 200, "application/json", t);
}

/* Where the model runs, from the config (conf_lock held); NULL for a model the config no
 * longer has (one a reload is removing). */
static const char *isolation_of(struct larder__daemon *d, const char *name)
{
    const struct larder__model_conf *m = larder__config_model(d->conf, name);
    return m ? larder__isolation_name(m->isolation) : NULL;
}

/* The device memory of a worker or external model's processes (conf_lock held): into
 * *buf, with n_gpus 0 when unknown; NULL for an in-process model. */
static const struct larder__tree_gpu *gpu_of(struct larder__daemon *d, const char *name,
                                             struct larder__tree_gpu *buf)
{
    const struct larder__model_conf *m = larder__config_model(d->conf, name);
    bool known = false;
    if (!m || m->isolation == LARDER__ISOLATION_IN_PROCESS)
        return NULL;
    if (m->isolation == LARDER__ISOLATION_EXTERNAL)
        known = larder__ext_gpu(d, name, buf);
    else
        known = larder__worker_gpu(d->children, name, buf);
    if (!known)
        memset(buf, 0, sizeof *buf);
    return buf;
}

static void route_models(struct larder__request *r, const char *name)
{
    struct larder_snapshot *s = larder__snapshot_or_reply(r);
    if (!s)
        return;
    struct larder__text t = {0};
    larder__text_reserve(&t, 64 + s->n * 800);
    /* OpenAI's list (object, data[].id) beside larder's registry (models[]). */
    LIT(&t, "{");
    larder__openai_models_text(&t, r->d, s, larder__wall_started(r->d));
    LIT(&t, "\"models\":[");
    pthread_rwlock_rdlock(&r->d->conf_lock);
    for (size_t i = 0; i < s->n; i++) {
        if (i)
            LIT(&t, ",");
        struct larder__tree_gpu g;
        const char *n = s->components[i].name;
        larder__component_text(&t, &s->components[i], isolation_of(r->d, n),
                               gpu_of(r->d, n, &g));
    }
    pthread_rwlock_unlock(&r->d->conf_lock);
    LIT(&t, "]}\n");
    reply_listing(r, s, &t);
}

static void route_model(struct larder__request *r, const char *name)
{
    struct larder_snapshot *s = larder__snapshot_or_reply(r);
    if (!s)
        return;
    struct larder__text t = {0};
    pthread_rwlock_rdlock(&r->d->conf_lock);
    for (size_t i = 0; i < s->n && !t.len; i++)
        if (strcmp(s->components[i].name, name) == 0) {
            struct larder__tree_gpu g;
            larder__component_text(&t, &s->components[i], isolation_of(r->d, name),
                                   gpu_of(r->d, name, &g));
            LIT(&t, "\n");
        }
    pthread_rwlock_unlock(&r->d->conf_lock);
    if (t.len || t.failed)
        reply_listing(r, s, &t);
    else {
        larder_snapshot_free(s);
        larder__reply_error(r, 404, "model_not_found", "no model named '%s'", name);
    }
}

static json_t *limit_or_null(uint64_t v)
{
    return v == UINT64_MAX ? json_null() : json_integer((json_int_t)v);
}

static json_t *cgroup_json(const struct larder_memory *mem)
{
    if (!mem->cgroup_version)
        return json_null();
    return json_pack("{s:i,s:I,s:o,s:o,s:{s:I,s:I,s:I,s:I}}", "version", mem->cgroup_version,
                     "current_bytes", (json_int_t)mem->cgroup_current, "max_bytes",
                     limit_or_null(mem->cgroup_max), "high_bytes", limit_or_null(mem->cgroup_high),
                     "events", "high", (json_int_t)mem->cgroup_high_events, "max",
                     (json_int_t)mem->cgroup_max_events, "oom", (json_int_t)mem->cgroup_oom,
                     "oom_kill", (json_int_t)mem->cgroup_oom_kill);
}

static json_t *psi_json(const struct larder_memory *mem)
{
    if (!mem->has_psi)
        return json_null();
    return json_pack("{s:{s:f,s:f,s:f},s:{s:f,s:f,s:f}}", "some", "avg10", mem->psi_some_avg10,
                     "avg60", mem->psi_some_avg60, "avg300", mem->psi_some_avg300, "full",
                     "avg10", mem->psi_full_avg10, "avg60", mem->psi_full_avg60, "avg300",
                     mem->psi_full_avg300);
}

static json_t *history_json(const struct larder_memory *mem)
{
    json_t *a = json_array();
    for (size_t i = 0; i < mem->n_history; i++) {
        const struct larder_history_entry *e = &mem->history[i];
        json_t *o = json_pack("{s:I,s:s}", "time_ms", (json_int_t)e->time_ms, "kind",
                              larder_history_kind_name(e->kind));
        if (e->kind == LARDER_HISTORY_SAMPLE) {
            json_object_set_new(o, "rss_bytes", json_integer((json_int_t)e->rss_bytes));
            json_object_set_new(o, "reserved_bytes", json_integer((json_int_t)e->reserved_bytes));
            json_object_set_new(o, "cgroup_bytes", json_integer((json_int_t)e->cgroup_bytes));
            json_object_set_new(o, "psi_some_avg10", json_real(e->psi_some_avg10));
            json_object_set_new(o, "children_bytes", json_integer((json_int_t)e->children_bytes));
        } else {
            if (e->name[0])
                json_object_set_new(o, "name", json_string(e->name));
            json_object_set_new(o, "bytes", json_integer(e->bytes));
        }
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *gpus_json(const struct larder_memory *mem)
{
    json_t *a = json_array();
    for (unsigned i = 0; i < mem->n_gpus; i++)
        json_array_append_new(a, json_pack("{s:i,s:s,s:I,s:I,s:I}", "index", (int)i, "name",
                                           mem->gpus[i].name, "total_bytes",
                                           (json_int_t)mem->gpus[i].total_bytes, "used_bytes",
                                           (json_int_t)mem->gpus[i].used_bytes, "free_bytes",
                                           (json_int_t)mem->gpus[i].free_bytes));
    return a;
}

static json_t *memory_json(const struct larder_memory *mem)
{
    json_t *o = json_pack(
        "{s:I,s:I,s:I,s:s?,s:{s:I,s:I,s:I,s:b,s:I,s:I,s:o?}}", "budget_bytes",
        (json_int_t)mem->budget_bytes, "reserved_bytes", (json_int_t)mem->reserved_bytes,
        "limit_bytes", (json_int_t)mem->limit_bytes, "limit_source", mem->limit_source,
        "watermarks", "high_bytes", (json_int_t)mem->high_bytes, "low_bytes",
        (json_int_t)mem->low_bytes, "usage_bytes", (json_int_t)mem->usage_bytes,
        "under_pressure", mem->under_pressure, "pressure_events",
        (json_int_t)mem->pressure_events, "pressure_evictions",
        (json_int_t)mem->pressure_evictions, "pressure_watch_error",
        mem->pressure_watch_error ? json_integer(mem->pressure_watch_error) : NULL);
    json_t *proc = json_pack("{s:I,s:I,s:I,s:I}", "rss_bytes", (json_int_t)mem->rss_bytes,
                             "peak_rss_bytes", (json_int_t)mem->peak_rss_bytes, "ram_bytes",
                             (json_int_t)mem->ram_bytes, "available_bytes",
                             (json_int_t)mem->available_bytes);
    if (mem->has_rollup) {
        json_object_set_new(proc, "pss_bytes", json_integer((json_int_t)mem->pss_bytes));
        json_object_set_new(proc, "anon_bytes", json_integer((json_int_t)mem->anon_bytes));
    }
    json_object_set_new(o, "process", proc);
    json_object_set_new(o, "cgroup", cgroup_json(mem));
    json_object_set_new(o, "psi", psi_json(mem));
    json_object_set_new(o, "psi_trigger", str_or_null(mem->pressure_watch));
    json_object_set_new(o, "gpus", gpus_json(mem));
    json_object_set_new(o, "history", history_json(mem));
    return o;
}

static json_t *components_memory(const struct larder_snapshot *s)
{
    json_t *comps = json_array();
    for (size_t i = 0; i < s->n; i++) {
        const struct larder_component_info *c = &s->components[i];
        if (c->state == LARDER_STATE_UNLOADED && !c->reserved_bytes)
            continue;
        json_array_append_new(
            comps, json_pack("{s:s,s:s,s:I,s:I,s:I,s:I}", "name", c->name, "state",
                             larder_state_name(c->state), "reserved_bytes",
                             (json_int_t)c->reserved_bytes, "estimate_bytes",
                             (json_int_t)c->estimate_bytes, "measured_bytes",
                             (json_int_t)c->measured_bytes, "last_returned_bytes",
                             (json_int_t)c->last_returned_bytes));
    }
    return comps;
}

/* The most history entries one report holds: a day of samples. */
#define HISTORY_MAX 86400

static void route_memory(struct larder__request *r, const char *name)
{
    uint64_t n = 60;
    if (!larder__request_arg_parse(r, "history", LARDER__ARG_COUNT, HISTORY_MAX, &n))
        return;
    struct larder_memory *mem = NULL;
    struct larder_snapshot *s = NULL;
    larder *m = larder__mgr_get(r->d);
    int e = m ? larder_memory(m, (size_t)n, &mem) : LARDER_ECLOSED;
    if (e == 0)
        e = larder_snapshot(m, &s);
    if (m)
        larder__mgr_put(r->d);
    if (e < 0) {
        larder_memory_free(mem);
        larder__reply_larder_error(r, e, "memory report failed");
        return;
    }
    json_t *o = memory_json(mem);
    json_t *budgets = json_array();
    for (unsigned g = 0; g < LARDER_MAX_GPUS; g++)
        if (s->gpu_budget_bytes[g] || s->gpu_reserved_bytes[g])
            json_array_append_new(budgets, json_pack("{s:i,s:I,s:I}", "index", (int)g,
                                                     "budget_bytes",
                                                     (json_int_t)s->gpu_budget_bytes[g],
                                                     "reserved_bytes",
                                                     (json_int_t)s->gpu_reserved_bytes[g]));
    json_object_set_new(o, "gpu_budgets", budgets);
    json_object_set_new(o, "policy", json_string(s->policy));
    json_object_set_new(o, "components", components_memory(s));
    struct larder__request_memory req;
    larder__http_request_memory(r->http, &req);
    json_object_set_new(o, "requests",
                        json_pack("{s:I,s:I,s:I}", "in_flight_bytes",
                                  (json_int_t)req.in_flight_bytes, "limit_bytes",
                                  (json_int_t)req.limit_bytes, "refused", (json_int_t)req.refused));
    larder_memory_free(mem);
    larder_snapshot_free(s);
    larder__reply_json(r, 200, o);
}

static void route_advice(struct larder__request *r, const char *name)
{
    struct larder_memory *mem = NULL;
    struct larder_snapshot *s = NULL;
    larder *m = larder__mgr_get(r->d);
    int e = m ? larder_memory(m, 0, &mem) : LARDER_ECLOSED;
    if (e == 0)
        e = larder_snapshot(m, &s);
    if (m)
        larder__mgr_put(r->d);
    if (e < 0) {
        larder_memory_free(mem);
        larder__reply_larder_error(r, e, "advice failed");
        return;
    }
    json_t *items = larder__advice_items(larder__events_advice(r->d->events), s, mem);
    larder_memory_free(mem);
    larder_snapshot_free(s);
    larder__reply_json(r, 200, json_pack("{s:o,s:f}", "advice", items, "window_s",
                                         LARDER__ADVICE_WINDOW_S));
}

static void route_metrics(struct larder__request *r, const char *name)
{
    struct larder__text t = {0};
    int e = larder__metrics_text(r->d, &t);
    if (e == 0)
        larder__http_metrics_text(r->http, &t);
    if (e < 0) {
        larder__text_free(&t);
        larder__reply_larder_error(r, e, "metrics failed");
        return;
    }
    larder__reply_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", &t);
}

static void route_events(struct larder__request *r, const char *name)
{
    if (strcmp(r->method, "HEAD") == 0) { /* the headers of a stream, and no client */
        larder__reply_bytes(r, 200, "text/event-stream", NULL, 0);
        larder__reply_header(r, "Cache-Control", "no-cache");
        return;
    }
    struct MHD_Response *resp = larder__events_response(r->d->events, r->conn);
    if (!resp)
        larder__reply_error(r, 503, "shutting_down", "the server is stopping");
    else
        larder__reply_response(r, 200, resp);
}

/* ---- admin routes: the waiting happens off the HTTP threads ------------------------------ */

struct admin_job {
    struct larder__request *r;
    char *name;
    int64_t timeout_ms;
};

/* The request's ?timeout=, else the config's drain_timeout; false (with a 400 reply)
 * when the parameter is bad. */
static bool request_timeout(struct larder__request *r, int64_t *ret_ms)
{
    pthread_rwlock_rdlock(&r->d->conf_lock);
    *ret_ms = r->d->conf->drain_timeout_ms;
    pthread_rwlock_unlock(&r->d->conf_lock);
    return larder__request_arg_parse(r, "timeout", LARDER__ARG_DURATION, INT64_MAX / 2, ret_ms);
}

/* Suspends r and runs fn on the admin pool (timeout: for fn); replies 503 if the pool
 * refuses. */
static void run_admin(struct larder__request *r, const char *name, int64_t timeout,
                      larder__job_fn fn)
{
    struct admin_job *j = calloc(1, sizeof *j);
    if (!j || (name && !(j->name = strdup(name)))) {
        free(j);
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    j->r = r;
    j->timeout_ms = timeout;
    larder__request_suspend(r);
    if (larder__pool_submit(r->d->admin_pool, fn, j) < 0) {
        free(j->name);
        free(j);
        larder__reply_error(r, 503, "shutting_down", "the server is stopping");
        larder__request_resume(r);
    }
}

static void admin_done(struct admin_job *j)
{
    struct larder__request *r = j->r;
    free(j->name);
    free(j);
    larder__request_resume(r);
}

static void job_unload(void *arg)
{
    struct admin_job *j = arg;
    larder *m = larder__mgr_get(j->r->d);
    int e = m ? larder_unload(m, j->name, j->timeout_ms) : LARDER_ECLOSED;
    if (m)
        larder__mgr_put(j->r->d);
    if (e < 0)
        larder__reply_larder_error(j->r, e, NULL);
    else
        larder__reply_json(j->r, 200, json_pack("{s:s,s:s}", "name", j->name, "state", "unloaded"));
    admin_done(j);
}

static void job_cleanup(void *arg)
{
    struct admin_job *j = arg;
    struct larder_trim_result t = {.struct_size = sizeof t};
    larder *m = larder__mgr_get(j->r->d);
    int e = m ? larder_trim(m, &t) : LARDER_ECLOSED;
    if (m)
        larder__mgr_put(j->r->d);
    if (e < 0)
        larder__reply_larder_error(j->r, e, NULL);
    else
        larder__reply_json(j->r, 200,
                           json_pack("{s:i,s:i,s:I,s:I}", "components", (int)t.components,
                                     "instances", (int)t.instances, "reserved_freed_bytes",
                                     (json_int_t)t.reserved_freed, "rss_freed_bytes",
                                     (json_int_t)t.rss_freed));
    admin_done(j);
}

static void job_reload(void *arg)
{
    struct admin_job *j = arg;
    char err[1024] = "";
    json_t *summary = NULL;
    int e = larder__daemon_reload(j->r->d, &summary, err, sizeof err);
    if (e < 0)
        larder__reply_error(j->r, e == -EINVAL ? 400 : 500, "reload_failed", "%s", err);
    else
        larder__reply_json(j->r, 200, summary);
    admin_done(j);
}

static void route_unload(struct larder__request *r, const char *name)
{
    int64_t timeout;
    if (larder__require_token(r, true) && request_timeout(r, &timeout))
        run_admin(r, name, timeout, job_unload);
}

static void route_cleanup(struct larder__request *r, const char *name)
{
    if (larder__require_token(r, true))
        run_admin(r, NULL, 0, job_cleanup);
}

static void route_reload(struct larder__request *r, const char *name)
{
    if (larder__require_token(r, true))
        run_admin(r, NULL, 0, job_reload);
}

/* ---- too big for the budget ------------------------------------------------------------ */

static const struct larder_component_info *find_component(const struct larder_snapshot *s,
                                                          const char *name)
{
    for (size_t i = 0; s && i < s->n; i++)
        if (strcmp(s->components[i].name, name) == 0)
            return &s->components[i];
    return NULL;
}

/* "2.0 GiB (2147483648 bytes)" */
static void size_text(uint64_t bytes, char *buf, size_t len)
{
    char h[32];
    larder__format_size(bytes, h, sizeof h);
    snprintf(buf, len, "%s (%llu bytes)", h, (unsigned long long)bytes);
}

/* alone: the model was asked for by itself (an admin load), so its fallback was not
 * tried and would serve its requests; else the whole chain failed. */
static void too_big_message(const struct larder_snapshot *s, const char *name, bool alone,
                            char *buf, size_t len)
{
    const struct larder_component_info *c = find_component(s, name);
    if (!c) {
        snprintf(buf, len, "model '%s' is larger than the whole memory budget", name);
        return;
    }
    char need[64], budget[64];
    uint64_t gpu_budget = c->gpu >= 0 && c->gpu < LARDER_MAX_GPUS ? s->gpu_budget_bytes[c->gpu]
                                                                   : 0;
    int n;
    if (gpu_budget && c->gpu_bytes > gpu_budget) {
        size_text(c->gpu_bytes, need, sizeof need);
        size_text(gpu_budget, budget, sizeof budget);
        n = snprintf(buf, len, "model '%s' needs %s of GPU %d memory, more than that GPU's "
                     "whole budget of %s", name, need, c->gpu, budget);
    } else {
        size_text(c->measured_bytes > c->estimate_bytes ? c->measured_bytes : c->estimate_bytes,
                  need, sizeof need);
        size_text(s->budget_bytes, budget, sizeof budget);
        n = snprintf(buf, len, "model '%s' needs %s, more than the whole memory budget of %s",
                     name, need, budget);
    }
    if (n < 0 || (size_t)n >= len)
        return;
    if (c->fallback && alone)
        snprintf(buf + n, len - (size_t)n, "; its fallback '%s' would serve its requests",
                 c->fallback);
    else if (c->fallback)
        snprintf(buf + n, len - (size_t)n, "; its fallback '%s' could not serve either",
                 c->fallback);
    else
        snprintf(buf + n, len - (size_t)n, "; it has no fallback");
}

void larder__reply_too_big(struct larder__request *r, const char *name, bool alone)
{
    char msg[768];
    struct larder_snapshot *s = NULL;
    larder *m = larder__mgr_get(r->d);
    if (m && larder_snapshot(m, &s) < 0)
        s = NULL;
    if (m)
        larder__mgr_put(r->d);
    too_big_message(s, name, alone, msg, sizeof msg);
    larder_snapshot_free(s);
    larder__reply_error(r, 503, "too_big", "%s", msg);
}

/* POST load: waits for the load through an async acquire, so no thread blocks. The
 * model itself must load: no fallback serves (nor is a fallback event sent), and a model
 * larger than the budget answers 503 too_big, naming the fallback that would serve it. */
static void on_load_lease(void *ud, int err, larder_lease *lease)
{
    struct admin_job *j = ud;
    if (err == LARDER_ETOOBIG)
        larder__reply_too_big(j->r, j->name, true);
    else if (err == LARDER_ECOOLDOWN)
        larder__reply_larder_error_retry(j->r, err, NULL,
                                         larder__cooldown_left_ms(j->r->d, j->name));
    else if (err < 0)
        larder__reply_larder_error(j->r, err, NULL);
    else
        larder__reply_json(j->r, 200,
                           json_pack("{s:s,s:s,s:b,s:f}", "name", j->name, "state", "ready",
                                     "cold_start", larder_lease_cold_start(lease), "load_ms",
                                     larder_lease_load_ms(lease)));
    larder_release(lease);
    admin_done(j);
}

static void route_load(struct larder__request *r, const char *name)
{
    if (!larder__require_token(r, true))
        return;
    bool wait = true;
    int64_t timeout;
    if (!larder__request_arg_parse(r, "wait", LARDER__ARG_BOOL, 0, &wait) ||
        !request_timeout(r, &timeout))
        return;
    if (!wait) {
        larder *m = larder__mgr_get(r->d);
        int e = m ? larder_preload(m, name) : LARDER_ECLOSED;
        if (m)
            larder__mgr_put(r->d);
        if (e < 0)
            larder__reply_larder_error_retry(
                r, e, NULL, e == LARDER_ECOOLDOWN ? larder__cooldown_left_ms(r->d, name) : -1);
        else
            larder__reply_json(r, 202, json_pack("{s:s,s:s}", "name", name, "state", "loading"));
        return;
    }
    struct admin_job *j = calloc(1, sizeof *j);
    if (!j || !(j->name = strdup(name))) {
        free(j);
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    j->r = r;
    larder__request_suspend(r);
    larder *m = larder__mgr_get(r->d);
    int e = m ? larder_acquire_async_flags(m, name, timeout, LARDER_ACQUIRE_NO_FALLBACK,
                                               on_load_lease, j) : LARDER_ECLOSED;
    if (m)
        larder__mgr_put(r->d);
    if (e < 0) {
        larder__reply_larder_error(r, e, NULL);
        admin_done(j);
    }
}

/* ---- dispatch -------------------------------------------------------------------------- */

static const struct route routes[] = {
    {"health", GET, route_health},
    {"ready", GET, route_ready},
    {"metrics", GET, route_metrics},
    {"v1/models", GET, route_models},
    {"v1/models/*", GET, route_model},
    {"v1/models/*/infer", POST, larder__route_infer},
    {"v1/models/*/load", POST, route_load},
    {"v1/models/*/unload", POST, route_unload},
    {"v1/memory", GET, route_memory},
    {"v1/memory/cleanup", POST, route_cleanup},
    {"v1/events", GET, route_events},
    {"v1/reload", POST, route_reload},
    {"v1/advice", GET, route_advice},
    {"ui", GET, larder__route_ui},
    {"ui/*", GET, larder__route_ui},
    /* OpenAI's API (api.c) */
    {"v1/chat/completions", POST, larder__route_openai_chat},
    {"v1/completions", POST, larder__route_openai_completions},
    {"v1/embeddings", POST, larder__route_openai_embeddings},
    {"v1/rerank", POST, larder__route_openai_rerank},
    {"rerank", POST, larder__route_openai_rerank},
    /* Ollama's */
    {"api/chat", POST, larder__route_ollama_chat},
    {"api/generate", POST, larder__route_ollama_generate},
    {"api/embed", POST, larder__route_ollama_embed},
    {"api/embeddings", POST, larder__route_ollama_embeddings},
    {"api/tags", GET, larder__route_ollama_tags},
    {"api/ps", GET, larder__route_ollama_ps},
    {"api/version", GET, larder__route_ollama_version},
    /* llama.cpp's router */
    {"models", GET, larder__route_router_models},
    {"models/load", POST, larder__route_router_load},
    {"models/unload", POST, larder__route_router_unload},
};

/* Matches path (no leading '/', no query) against pattern; the "*" part is copied to
 * name (at most namelen bytes). */
static bool match(const char *pattern, const char *path, char *name, size_t namelen)
{
    while (*pattern && *path) {
        if (*pattern == '*') {
            size_t n = strcspn(path, "/");
            if (n == 0 || n >= namelen)
                return false;
            memcpy(name, path, n);
            name[n] = 0;
            pattern++;
            path += n;
            continue;
        }
        if (*pattern++ != *path++)
            return false;
    }
    return !*pattern && !*path;
}

/* "v1/models/NAME/proxy" alone or followed by "/...": NAME into name. */
static bool proxy_path(const char *path, char *name, size_t namelen)
{
    if (strncmp(path, "v1/models/", 10) != 0)
        return false;
    const char *p = path + 10;
    size_t n = strcspn(p, "/");
    if (n == 0 || n >= namelen || strncmp(p + n, "/proxy", 6) != 0 ||
        (p[n + 6] && p[n + 6] != '/'))
        return false;
    memcpy(name, p, n);
    name[n] = 0;
    return true;
}

static unsigned method_bit(const char *m)
{
    if (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0)
        return GET;
    if (strcmp(m, "POST") == 0)
        return POST;
    return 0;
}

void larder__route(struct larder__request *r)
{
    char name[256];
    if (atomic_load(&r->d->stopping) && strcmp(r->url, "/health") != 0) {
        larder__reply_error(r, 503, "shutting_down", "the server is stopping");
        larder__reply_header(r, "Connection", "close");
        return;
    }
    if (strcmp(r->url, "/") == 0) { /* the dashboard */
        larder__reply_bytes(r, 302, "text/plain; charset=utf-8", NULL, 0);
        larder__reply_header(r, "Location", "/ui");
        return;
    }
    const char *path = r->url;
    while (*path == '/')
        path++;
    size_t plen = strlen(path);
    if (proxy_path(path, name, sizeof name)) { /* any method: the child's routes */
        r->route = "v1/models/*/proxy/...";
        r->model = strdup(name);
        larder__route_proxy(r, name);
        return;
    }
    unsigned allowed = 0;
    unsigned m = method_bit(r->method);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (!match(routes[i].pattern, plen && path[plen - 1] == '/' ? "" : path, name,
                   sizeof name))
            continue;
        allowed |= routes[i].methods;
        if (!(routes[i].methods & m))
            continue;
        r->route = routes[i].pattern;
        if (strchr(routes[i].pattern, '*'))
            r->model = strdup(name);
        routes[i].fn(r, name);
        return;
    }
    if (allowed) {
        larder__reply_error(r, 405, "method_not_allowed", "%s is not allowed on %s", r->method,
                            r->url);
        larder__reply_header(r, "Allow", allowed & POST ? "POST" : "GET, HEAD");
        return;
    }
    larder__reply_error(r, 404, "not_found", "no route %s", r->url);
}

double larder__wall_started(struct larder__daemon *d)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 - (larder__now() - d->started);
}
