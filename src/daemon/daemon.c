/* larderd: start-up, signals, reload and shutdown (see daemon.h). */
#include "daemon.h"
#include "children.h"
#include "external.h"
#include "proxy.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "probe.h"
#include "stream.h"

#define ERRLEN 1024

#ifndef LARDER_VERSION
#define LARDER_VERSION "unknown"
#endif

double larder__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

larder *larder__mgr_get(struct larder__daemon *d)
{
    pthread_rwlock_rdlock(&d->mgr_lock);
    if (d->mgr)
        return d->mgr;
    pthread_rwlock_unlock(&d->mgr_lock);
    return NULL;
}

void larder__mgr_put(struct larder__daemon *d)
{
    pthread_rwlock_unlock(&d->mgr_lock);
}

/* ---- models ------------------------------------------------------------------------------ */

/* Cheap checks of one model, no plugin opened: backend file present, model file readable. */
static int check_model(struct larder__daemon *d, const struct larder__config *c,
                       const struct larder__model_conf *m, char *err, size_t errlen)
{
    struct larder__backend *be;
    char msg[512];
    int r = larder__backend_get(d->backends, m->backend, &be, msg, sizeof msg);
    if (r < 0) {
        snprintf(err, errlen, "%s:%u: [model.%s] backend: %s", c->file, m->backend_line, m->name,
                 msg);
        return r;
    }
    if (m->path && access(m->path, R_OK) != 0) {
        r = -errno;
        snprintf(err, errlen, "%s:%u: [model.%s] path: %s: %s", c->file, m->path_line, m->name,
                 m->path, strerror(errno));
        return r;
    }
    return 0;
}

static bool regular_file(const char *path)
{
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- workers ------------------------------------------------------------------------------ */

struct worker_fail {
    struct larder__daemon *d;
    char *name;
    const void *model;
    char *why;
};

static void worker_fail_job(void *arg)
{
    struct worker_fail *f = arg;
    larder *mgr = larder__mgr_get(f->d);
    if (mgr) {
        pthread_rwlock_rdlock(&f->d->conf_lock);
        int64_t timeout = f->d->conf->drain_timeout_ms;
        pthread_rwlock_unlock(&f->d->conf_lock);
        int r = larder_fail(mgr, f->name, f->model, LARDER_ELOAD, f->why, timeout);
        if (r < 0)
            larder__log(LARDER__LOG_WARN, "failed worker not taken down",
                        json_pack("{s:s,s:s}", "model", f->name, "error", larder_strerror(r)));
        larder__mgr_put(f->d);
    }
    free(f->name);
    free(f->why);
    free(f);
}

/* A worker died: its component goes FAILED, on the admin pool (it waits for the leases
 * out, which fail fast now that their worker is gone). */
static void on_worker_fail(void *ctx, const char *name, const void *model, const char *why)
{
    struct larder__daemon *d = ctx;
    struct worker_fail *f = calloc(1, sizeof *f);
    if (!f || !(f->name = strdup(name)) || !(f->why = strdup(why))) {
        if (f)
            free(f->name);
        free(f);
        return;
    }
    f->d = d;
    f->model = model;
    if (atomic_load(&d->stopping) || larder__pool_submit(d->admin_pool, worker_fail_job, f) < 0) {
        free(f->name);
        free(f->why);
        free(f);
    }
}

/* Defines m; probed is the backend's estimate the probe got (0: none). */
static int define_model(struct larder__daemon *d, const struct larder__config *c,
                        const struct larder__model_conf *m, uint64_t probed, char *err,
                        size_t errlen)
{
    struct larder__backend *be;
    struct larder_component_opts o;
    larder_component_opts_init(&o);
    int r = 0;
    if (m->isolation == LARDER__ISOLATION_EXTERNAL) {
        o.cls = larder__ext_class();
        o.ud = larder__ext_ud_new(d, c, m);
        o.ud_free = larder__ext_ud_free;
    } else {
        r = check_model(d, c, m, err, errlen);
        if (r < 0 || (r = larder__backend_get(d->backends, m->backend, &be, err, errlen)) < 0)
            return r;
        o.cls = larder__backend_class(be);
        o.ud = larder__model_ud_new(be, c, m);
        o.ud_free = larder__model_ud_free;
    }
    o.path = regular_file(m->path) ? m->path : NULL;
    o.ttl_ms = m->ttl_ms;
    o.max_instances = m->instances;
    o.pin = m->pin;
    o.priority = m->priority;
    o.preload = m->preload;
    o.fallback = m->fallback;
    o.memory_bytes = m->memory_bytes;
    o.gpu = m->gpu;
    o.gpu_bytes = m->gpu_bytes;
    o.queue_max = m->queue;
    if (!o.ud) {
        r = -ENOMEM;
    } else if (m->isolation != LARDER__ISOLATION_EXTERNAL) {
        larder__model_ud_set_estimate(o.ud, probed);
        larder__model_ud_set_worker(o.ud, d->children, on_worker_fail, d);
    }
    larder *mgr = r == 0 ? larder__mgr_get(d) : NULL;
    if (r == 0)
        r = mgr ? larder_define(mgr, m->name, &o) : LARDER_ECLOSED;
    if (mgr)
        larder__mgr_put(d);
    if (r < 0) {
        if (o.ud)
            o.ud_free(o.ud);
        snprintf(err, errlen, "%s:%u: [model.%s]: %s", c->file, m->line, m->name,
                 larder_strerror(r));
    }
    return r;
}

int larder__daemon_define(struct larder__daemon *d, const struct larder__config *c,
                          const struct larder__model_conf *m, char *err, size_t errlen)
{
    return define_model(d, c, m, 0, err, errlen);
}

/* The backend's estimate of model i of a probe's report, or 0. */
static uint64_t probed_bytes(const struct larder__report *rep, size_t i)
{
    const struct larder__estimate *e = rep && i < rep->n_estimates ? &rep->estimates[i] : NULL;
    return e && e->source && strcmp(e->source, "backend") == 0 ? e->bytes : 0;
}

/* Defines the models `want` picks, each fallback before the models that name it. With
 * `failed`, errors are listed there and the others are still defined; without, the
 * first error stops. */
static int define_all(struct larder__daemon *d, const struct larder__config *c,
                      const struct larder__report *rep,
                      bool (*want)(const struct larder__model_conf *m, void *ud), void *ud,
                      json_t *done, json_t *failed, char *err, size_t errlen)
{
    bool *defined = calloc(c->n_models + 1, sizeof *defined);
    if (!defined)
        return -ENOMEM;
    int r = 0, first = 0;
    for (bool progress = true; progress && (r == 0 || failed);) {
        progress = false;
        for (size_t i = 0; i < c->n_models && (r == 0 || failed); i++) {
            const struct larder__model_conf *m = &c->models[i];
            const struct larder__model_conf *fb = m->fallback ? larder__config_model(c, m->fallback)
                                                              : NULL;
            if (defined[i] || !want(m, ud) ||
                (fb && want(fb, ud) && !defined[fb - c->models]))
                continue;
            r = define_model(d, c, m, probed_bytes(rep, i), err, errlen);
            defined[i] = progress = true;
            if (r == 0 && done)
                json_array_append_new(done, json_string(m->name));
            if (r < 0 && failed)
                json_array_append_new(failed, json_pack("{s:s,s:s}", "name", m->name, "error",
                                                        err));
            if (r < 0 && !first)
                first = r;
        }
    }
    free(defined);
    return first;
}

static bool want_all(const struct larder__model_conf *m, void *ud)
{
    return true;
}

/* ---- tokens ------------------------------------------------------------------------------ */

static int load_tokens(const struct larder__config *c, struct larder__tokens **ret_admin,
                       struct larder__tokens **ret_infer, char *err, size_t errlen)
{
    struct larder__tokens *admin = NULL, *infer = NULL;
    int r = 0;
    if (c->admin_tokens)
        r = larder__tokens_load(c->admin_tokens, &admin, err, errlen);
    if (r == 0 && c->infer_tokens)
        r = larder__tokens_load(c->infer_tokens, &infer, err, errlen);
    if (r < 0) {
        larder__tokens_free(admin);
        return r;
    }
    *ret_admin = admin;
    *ret_infer = infer;
    return 0;
}

/* ---- reload ------------------------------------------------------------------------------- */

struct diff {
    const struct larder__config *old, *new;
    json_t *pending; /* [{"name", "error"}]: models whose drop or change is not applied */
};

static bool listed(json_t *list, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) {
        if (strcmp(json_string_value(json_object_get(e, "name")), name) == 0)
            return true;
    }
    return false;
}

/* Models of `new` that `old` lacks or defines differently (and that are not pending: their
 * old definition stays). */
static bool want_new(const struct larder__model_conf *m, void *ud)
{
    struct diff *df = ud;
    const struct larder__model_conf *o = larder__config_model(df->old, m->name);
    return (!o || !larder__model_conf_equal(o, m)) && !listed(df->pending, m->name);
}

/* ---- the probe's verdict ------------------------------------------------------------------- */

/* Logs each warning of a probe's report (and lists it in warnings); with errors, logs
 * each, lists them all in err and returns -EINVAL. */
static int judge(const struct larder__report *rep, json_t *warnings, char *err, size_t errlen)
{
    char line[ERRLEN];
    size_t n = larder__report_errors(rep, false), at = 0;
    if (n)
        at = (size_t)snprintf(err, errlen, "%zu error%s in the config: ", n, n == 1 ? "" : "s");
    for (size_t i = 0, k = 0; i < rep->n_findings; i++) {
        const struct larder__finding *f = &rep->findings[i];
        enum larder__severity sev = larder__finding_severity(f, false);
        if (sev == LARDER__SEV_NOTE)
            continue;
        larder__finding_format(f, line, sizeof line);
        if (sev == LARDER__SEV_WARNING) {
            larder__log(LARDER__LOG_WARN, "config warning", json_pack("{s:s}", "warning", line));
            if (warnings)
                json_array_append_new(warnings, json_string(line));
            continue;
        }
        larder__log(LARDER__LOG_ERROR, "config error", json_pack("{s:s}", "error", line));
        if (at < errlen)
            at += (size_t)snprintf(err + at, errlen - at, "%s%s", k++ ? "; " : "", line);
    }
    return n ? -EINVAL : 0;
}

/* Loads a config file; every error in it is logged, and listed in err. */
static int load_config(const char *file, struct larder__config **ret_config, char *err,
                       size_t errlen)
{
    struct larder__report *rep = larder__report_new(0);
    if (!rep) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int r = larder__config_load_all(file, ret_config, larder__report_config_error, rep);
    if (r < 0 && judge(rep, NULL, err, errlen) == 0)
        snprintf(err, errlen, "%s: %s", file, strerror(-r));
    larder__report_free(rep);
    return r;
}

/* Waits for probe p of c (see larder__probe_finish) and judges what it found. On
 * success *ret_report has the estimates. */
static int probe_judge(struct larder__probe *p, const struct larder__config *c,
                       json_t *warnings, struct larder__report **ret_report, char *err,
                       size_t errlen)
{
    struct larder__report *rep = NULL;
    int r = larder__probe_finish(p, c, &rep, err, errlen);
    if (r == 0)
        r = judge(rep, warnings, err, errlen);
    if (r == 0)
        *ret_report = rep;
    else
        larder__report_free(rep);
    return r;
}

/* ---- settings a reload changes -------------------------------------------------------------- */

static bool str_same(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Lists a changed [server] or [memory] key as applied, or as waiting for a restart (and
 * says so in the log). */
static void changed(json_t *applied, json_t *restart, const char *key, bool differs, bool live)
{
    if (!differs)
        return;
    json_array_append_new(live ? applied : restart, json_string(key));
    if (!live)
        larder__log(LARDER__LOG_WARN, "reload: needs a restart",
                    json_pack("{s:s,s:s}", "key", key, "detail",
                              "changed in the file; the running daemon keeps its old value "
                              "until it restarts"));
}

static void diff_server(const struct larder__config *o, const struct larder__config *n,
                        json_t *ap, json_t *rs)
{
    changed(ap, rs, "server.listen",
            o->listen_port != n->listen_port || !str_same(o->listen_host, n->listen_host), false);
    changed(ap, rs, "server.admin_tokens", !str_same(o->admin_tokens, n->admin_tokens), true);
    changed(ap, rs, "server.infer_tokens", !str_same(o->infer_tokens, n->infer_tokens), true);
    changed(ap, rs, "server.backend_dir", !str_same(o->backend_dir, n->backend_dir), false);
    changed(ap, rs, "server.max_body", o->max_body != n->max_body, true);
    changed(ap, rs, "server.request_timeout", o->request_timeout_ms != n->request_timeout_ms,
            true);
    changed(ap, rs, "server.threads", o->threads != n->threads, false);
    changed(ap, rs, "server.http_threads", o->http_threads != n->http_threads, false);
    changed(ap, rs, "server.drain_timeout", o->drain_timeout_ms != n->drain_timeout_ms, true);
    changed(ap, rs, "server.log_format", o->log_format != n->log_format, true);
    changed(ap, rs, "server.log_level", o->log_level != n->log_level, true);
    changed(ap, rs, "server.state_dir", !str_same(o->state_dir, n->state_dir), false);
    changed(ap, rs, "server.events_queue", o->events_queue != n->events_queue, false);
    changed(ap, rs, "server.allow_empty", o->allow_empty != n->allow_empty, true);
    changed(ap, rs, "server.node_name", !str_same(o->node_name, n->node_name), false);
}

static void diff_memory(const struct larder__config *o, const struct larder__config *n,
                        json_t *ap, json_t *rs)
{
    changed(ap, rs, "memory.budget",
            o->budget_bytes != n->budget_bytes || o->budget_fraction != n->budget_fraction, true);
    changed(ap, rs, "memory.gpu_budget",
            memcmp(o->gpu_budget, n->gpu_budget, sizeof o->gpu_budget) != 0, true);
    changed(ap, rs, "memory.policy", !str_same(o->policy, n->policy), false);
    changed(ap, rs, "memory.ttl", o->default_ttl_ms != n->default_ttl_ms, false);
    changed(ap, rs, "memory.loader_threads", o->loader_threads != n->loader_threads, false);
    changed(ap, rs, "memory.admission_timeout",
            o->admission_timeout_ms != n->admission_timeout_ms, false);
    changed(ap, rs, "memory.high_watermark", o->high_watermark != n->high_watermark, false);
    changed(ap, rs, "memory.low_watermark", o->low_watermark != n->low_watermark, false);
    changed(ap, rs, "memory.psi_trigger", !str_same(o->psi_trigger, n->psi_trigger), false);
    changed(ap, rs, "memory.watch_pressure", o->watch_pressure != n->watch_pressure, false);
    changed(ap, rs, "memory.history", o->history_s != n->history_s, false);
    changed(ap, rs, "memory.cooldown", o->cooldown_ms != n->cooldown_ms, false);
}

/* {"applied": [...], "restart_required": [...]}: the [server] and [memory] keys a reload
 * changed, by whether the running daemon took them. */
static json_t *diff_settings(const struct larder__config *o, const struct larder__config *n)
{
    json_t *applied = json_array(), *restart = json_array();
    diff_server(o, n, applied, restart);
    diff_memory(o, n, applied, restart);
    return json_pack("{s:o,s:o}", "applied", applied, "restart_required", restart);
}

/* Why the drop or change of a model could not be applied (r from larder_undefine). */
static json_t *pending_entry(const char *name, bool dropped, int r, int64_t timeout)
{
    char why[256];
    if (r == LARDER_ETIMEDOUT)
        snprintf(why, sizeof why, "still in use after the drain timeout (%lld ms)",
                 (long long)timeout);
    else
        snprintf(why, sizeof why, "%s", larder_strerror(r));
    return json_pack("{s:s,s:s,s:s,s:s}", "name", name, "action", dropped ? "drop" : "change",
                     "error", why, "detail",
                     "its old definition stays active; applied when its leases come back "
                     "(retried in the background) or by a later reload");
}

/* Undefines models of old that new drops or changes; those that cannot be undefined now
 * go to df->pending. Returns how many. */
static int undefine_changed(struct larder__daemon *d, struct diff *df, int64_t timeout,
                            json_t *removed, json_t *changed)
{
    int nfail = 0;
    for (size_t i = 0; i < df->old->n_models; i++) {
        const struct larder__model_conf *o = &df->old->models[i];
        const struct larder__model_conf *n = larder__config_model(df->new, o->name);
        if (n && larder__model_conf_equal(o, n))
            continue;
        larder *mgr = larder__mgr_get(d);
        int r = mgr ? larder_undefine(mgr, o->name, timeout) : LARDER_ECLOSED;
        if (mgr)
            larder__mgr_put(d);
        if (r < 0 && r != LARDER_ENOTFOUND) {
            nfail++;
            json_array_append_new(df->pending, pending_entry(o->name, !n, r, timeout));
            continue;
        }
        json_array_append_new(n ? changed : removed, json_string(o->name));
    }
    return nfail;
}

/* The active config is the new file with the old sections of the pending models: each is
 * moved from old into c (a changed one's new section goes to old in exchange, a dropped
 * one leaves a section with its name only), so that the registry and the config agree.
 * old is freed afterwards; conf_lock must be held for writing (readers may hold old).
 * Returns -ENOMEM (nothing moved) or 0. */
static int keep_pending(struct larder__config *old, struct larder__config *c, json_t *pending)
{
    size_t np = json_array_size(pending), i;
    json_t *e;
    struct larder__model_conf *grown = realloc(c->models, (c->n_models + np + 1) * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    c->models = grown;
    json_array_foreach(pending, i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        struct larder__model_conf *o = (struct larder__model_conf *)larder__config_model(old, name);
        struct larder__model_conf *n = (struct larder__model_conf *)larder__config_model(c, name);
        char *placeholder = n ? NULL : strdup(name);
        if (!o || (!n && !placeholder))
            continue; /* never: pending models come from old; else it stays dropped */
        struct larder__model_conf keep = *o;
        if (n) {
            *o = *n;
            *n = keep;
            continue;
        }
        memset(o, 0, sizeof *o);
        o->name = placeholder;
        size_t at = 0;
        while (at < c->n_models && strcmp(c->models[at].name, name) < 0)
            at++;
        memmove(&c->models[at + 1], &c->models[at], (c->n_models - at) * sizeof *c->models);
        c->models[at] = keep;
        c->n_models++;
    }
    return 0;
}

/* Remembers the pending models for the background retry (reload_lock held). */
static void set_pending(struct larder__daemon *d, json_t *pending)
{
    json_decref(d->pending);
    d->pending = json_array_size(pending) ? json_deep_copy(pending) : NULL;
    atomic_store(&d->retry_armed, d->pending != NULL);
}

static void preload_new(struct larder__daemon *d, struct diff *df)
{
    larder *mgr = larder__mgr_get(d);
    for (size_t i = 0; mgr && i < df->new->n_models; i++)
        if (df->new->models[i].preload && want_new(&df->new->models[i], df))
            larder_preload(mgr, df->new->models[i].name);
    if (mgr)
        larder__mgr_put(d);
}

/* The bytes a budget given as a fraction stands for: of the cgroup limit, else of RAM,
 * as the manager computes its default. */
static uint64_t fraction_budget(larder *mgr, double fraction)
{
    struct larder_memory *mem = NULL;
    if (larder_memory(mgr, 0, &mem) < 0)
        return 0;
    uint64_t base = mem->ram_bytes;
    if (mem->cgroup_version && mem->cgroup_max < base)
        base = mem->cgroup_max;
    if (mem->cgroup_version && mem->cgroup_high < base)
        base = mem->cgroup_high;
    larder_memory_free(mem);
    return (uint64_t)((double)base * fraction);
}

static void apply_gpu_budgets(larder *mgr, const struct larder__config *old,
                              const struct larder__config *c)
{
    for (unsigned g = 0; g < LARDER_MAX_GPUS; g++)
        if (!old || old->gpu_budget[g] != c->gpu_budget[g])
            larder_set_gpu_budget(mgr, g, c->gpu_budget[g]);
}

static void apply_budget(struct larder__daemon *d, const struct larder__config *old,
                         const struct larder__config *c)
{
    larder *gm = larder__mgr_get(d);
    if (gm) {
        apply_gpu_budgets(gm, old, c);
        larder__mgr_put(d);
    }
    if (c->budget_bytes == old->budget_bytes && c->budget_fraction == old->budget_fraction)
        return;
    larder *mgr = larder__mgr_get(d);
    if (!mgr)
        return;
    double fraction = c->budget_fraction > 0 ? c->budget_fraction : 0.75;
    uint64_t bytes = c->budget_bytes ? c->budget_bytes : fraction_budget(mgr, fraction);
    if (bytes)
        larder_set_budget(mgr, bytes);
    larder__mgr_put(d);
}

/* Logging settings of the new config, unless the command line fixed them. */
static void apply_logging(struct larder__daemon *d, const struct larder__config *c)
{
    larder__log_setup(d->log_format_fixed ? d->log_format : c->log_format,
                      d->log_level_fixed ? d->log_level : c->log_level, 2);
}

/* A reload must not leave the daemon beyond repair over HTTP: a file that would drop every
 * model, or the admin tokens, is refused unless it says `allow_empty = yes`. -EINVAL with
 * the reason in err, else 0. */
static int refuse_emptying(const struct larder__config *old, const struct larder__config *c,
                           char *err, size_t errlen)
{
    static const char force[] = "; add `allow_empty = yes` to its [server] section to "
                                "reload it anyway";
    if (c->allow_empty)
        return 0;
    if (old->n_models && !c->n_models) {
        snprintf(err, errlen, "%s: %s: reloading it would drop all %zu models%s", c->file,
                 c->n_settings ? "defines no model" : "holds no setting at all (empty?)",
                 old->n_models, force);
        return -EINVAL;
    }
    if (old->admin_tokens && !c->admin_tokens) {
        snprintf(err, errlen,
                 "%s: has no [server] admin_tokens: reloading it would turn the admin routes "
                 "off, and with them reloads over HTTP%s",
                 c->file, force);
        return -EINVAL;
    }
    return 0;
}

static int reload_locked(struct larder__daemon *d, json_t *summary, char *err, size_t errlen)
{
    struct larder__config *c = NULL, *old;
    struct larder__tokens *admin = NULL, *infer = NULL;
    struct larder__report *rep = NULL;
    json_t *warnings = json_array();
    /* Nothing changes until the new file passed the same checks as at start-up. */
    int r = load_config(d->conf->file, &c, err, errlen);
    if (r < 0 && r != -ENOMEM)
        r = -EINVAL; /* the file is at fault (unreadable, a directory, bad lines): 400 */
    if (r == 0)
        r = refuse_emptying(d->conf, c, err, errlen);
    if (r == 0)
        r = larder__probe_config(d->prog, c, &rep, err, errlen);
    if (r == 0)
        r = judge(rep, warnings, err, errlen);
    if (r == 0 && (r = load_tokens(c, &admin, &infer, err, errlen)) < 0 && r != -ENOMEM)
        r = -EINVAL; /* a token file the config names cannot be read: 400 as well */
    if (r < 0) {
        json_decref(warnings);
        larder__report_free(rep);
        larder__config_free(c);
        return r;
    }
    old = d->conf; /* only reloads replace it, and they hold reload_lock */
    json_t *removed = json_array(), *changed = json_array(), *added = json_array();
    json_t *failed = json_array();
    struct diff df = {old, c, json_array()};
    undefine_changed(d, &df, c->drain_timeout_ms, removed, changed);
    define_all(d, c, rep, want_new, &df, added, failed, err, errlen);
    rep = larder__report_free(rep);
    json_object_set_new(summary, "settings", diff_settings(old, c));
    json_object_set_new(summary, "warnings", warnings);
    apply_budget(d, old, c);
    apply_logging(d, c);
    preload_new(d, &df);
    pthread_rwlock_wrlock(&d->conf_lock);
    if (keep_pending(old, c, df.pending) < 0)
        larder__log(LARDER__LOG_ERROR, "reload: out of memory keeping the pending models",
                    json_incref(df.pending));
    d->conf = c;
    struct larder__tokens *old_admin = d->admin, *old_infer = d->infer;
    d->admin = admin;
    d->infer = infer;
    pthread_rwlock_unlock(&d->conf_lock);
    set_pending(d, df.pending);
    json_object_set_new(summary, "pending", df.pending);
    larder__config_free(old);
    larder__tokens_free(old_admin);
    larder__tokens_free(old_infer);
    json_object_set_new(summary, "failed", failed);
    json_object_set_new(summary, "added", added);
    json_object_set_new(summary, "removed", removed);
    json_object_set_new(summary, "changed", changed);
    return 0;
}

/* A model both changed and added is reported as changed only. */
static void tidy_summary(json_t *summary)
{
    json_t *added = json_object_get(summary, "added");
    json_t *changed = json_object_get(summary, "changed");
    json_t *clean = json_array();
    size_t i, k;
    json_t *a, *c;
    json_array_foreach(added, i, a) {
        bool dup = false;
        json_array_foreach(changed, k, c) dup |= json_equal(a, c);
        if (!dup)
            json_array_append(clean, a);
    }
    json_object_set_new(summary, "added", clean);
}

int larder__daemon_reload(struct larder__daemon *d, json_t **ret_summary, char *err,
                          size_t errlen)
{
    json_t *summary = json_object();
    if (!summary)
        return -ENOMEM;
    pthread_mutex_lock(&d->reload_lock);
    int r = reload_locked(d, summary, err, errlen);
    pthread_mutex_unlock(&d->reload_lock);
    if (r < 0) {
        larder__log(LARDER__LOG_WARN, "reload failed", json_pack("{s:s}", "error", err));
        json_decref(summary);
        return r;
    }
    tidy_summary(summary);
    atomic_fetch_add(&d->reloads, 1);
    larder__log(LARDER__LOG_INFO, "reloaded", json_deep_copy(summary));
    larder__events_publish(d->events, "reload", json_deep_copy(summary));
    if (ret_summary)
        *ret_summary = summary;
    else
        json_decref(summary);
    return 0;
}

/* ---- start-up ---------------------------------------------------------------------------- */

/* The worker processes' memory, for the manager's history samples. */
static uint64_t children_bytes(void *ud)
{
    struct larder__daemon *d = ud;
    return larder__children_memory(d->children);
}

static int open_manager(struct larder__daemon *d, const struct larder__config *c)
{
    struct larder_opts o;
    larder_opts_init(&o);
    o.budget_bytes = c->budget_bytes;
    if (c->budget_fraction > 0)
        o.budget_fraction = c->budget_fraction;
    if (c->policy)
        o.policy = c->policy;
    if (c->loader_threads)
        o.loader_threads = c->loader_threads;
    if (c->default_ttl_ms != LARDER_TTL_DEFAULT)
        o.default_ttl_ms = c->default_ttl_ms;
    if (c->admission_timeout_ms)
        o.admission_timeout_ms = c->admission_timeout_ms;
    if (c->cooldown_ms) {
        o.cooldown_min_ms = c->cooldown_ms;
        if (o.cooldown_max_ms < o.cooldown_min_ms)
            o.cooldown_max_ms = o.cooldown_min_ms;
    }
    o.state_dir = c->state_dir;
    if (c->high_watermark > 0)
        o.high_watermark = c->high_watermark;
    if (c->low_watermark > 0)
        o.low_watermark = c->low_watermark;
    o.watch_pressure = c->watch_pressure;
    if (c->psi_trigger)
        o.psi_trigger = c->psi_trigger;
    if (c->history_s >= 0)
        o.history_seconds = (unsigned)c->history_s;
    /* A shutdown has already waited drain_timeout for requests (and the loads they wait
     * on): the loads still running then get as long again, at most 10 s. */
    o.close_timeout_ms = c->drain_timeout_ms < 10000 ? c->drain_timeout_ms : 10000;
    o.on_event = larder__events_on_event;
    o.event_ud = d->events;
    o.children_bytes = children_bytes;
    o.children_ud = d;
    int r = larder_open(&o, &d->mgr);
    if (r == 0)
        apply_gpu_budgets(d->mgr, NULL, c);
    return r;
}

static unsigned worker_threads(const struct larder__config *c)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (c->threads)
        return c->threads;
    /* A lease is granted before its job reaches a worker, so idle workers cost nothing
     * but a stack; a few more than the cores keep wake-ups off the critical path. */
    n *= 2;
    return n < 4 ? 4 : n > 32 ? 32 : (unsigned)n;
}

static int start_parts(struct larder__daemon *d, char *err, size_t errlen)
{
    const struct larder__config *c = d->conf;
    struct larder__report *rep = NULL;
    struct larder__probe *p = NULL;
    char msg[ERRLEN] = "";
    int r = larder__backends_new(larder__backend_dir(c), &d->backends);
    /* Forked before any thread starts; it validates while the daemon sets up. */
    if (r < 0 || (r = larder__probe_start(d->prog, c, true, &p, err, errlen)) < 0)
        return r;
    unsigned ended = 0;
    if ((r = larder__children_open(c->state_dir, &d->children, &ended, msg, sizeof msg)) < 0) {
        snprintf(err, errlen, "%s", msg);
        larder__probe_finish(p, c, &rep, msg, sizeof msg);
        larder__report_free(rep);
        return r;
    }
    if (ended)
        larder__log(LARDER__LOG_WARN, "ended the model processes of a larderd that died",
                    json_pack("{s:i,s:s?}", "processes", (int)ended, "state_dir", c->state_dir));
    if ((r = larder__events_new(c->events_queue, &d->events)) < 0 ||
        (r = larder__pool_new("larder-infer", worker_threads(c), &d->infer_pool)) < 0 ||
        (r = larder__pool_new("larder-admin", 2, &d->admin_pool)) < 0)
        snprintf(msg, sizeof msg, "cannot start threads: %s", strerror(-r));
    else if ((r = open_manager(d, c)) < 0)
        snprintf(msg, sizeof msg, "cannot open the manager: %s", larder_strerror(r));
    /* The config's verdict first: a bad config is what to report, not what it caused. */
    int pr = probe_judge(p, c, NULL, &rep, err, errlen);
    if (pr < 0)
        return pr;
    if (r < 0 || (r = load_tokens(c, &d->admin, &d->infer, err, errlen)) < 0) {
        if (*msg)
            snprintf(err, errlen, "%s", msg);
        larder__report_free(rep);
        return r;
    }
    r = define_all(d, c, rep, want_all, NULL, NULL, NULL, err, errlen);
    larder__report_free(rep);
    return r;
}

/* [server] node_name, else the host name (cut at its first dot, and "larder" when it has
 * a character a node name may not hold). */
static void set_node_name(struct larder__daemon *d, const struct larder__config *c)
{
    char host[256] = "";
    if (c->node_name) {
        snprintf(d->node_name, sizeof d->node_name, "%s", c->node_name);
        return;
    }
    if (gethostname(host, sizeof host - 1) < 0)
        host[0] = 0;
    host[strcspn(host, ".")] = 0;
    snprintf(d->node_name, sizeof d->node_name, "%s",
             larder__node_name_valid(host) ? host : "larder");
}

static int start_http(struct larder__daemon *d, char *err, size_t errlen)
{
    /* Read before the server starts: from then on a reload may replace the config. */
    const struct larder__config *c = d->conf;
    char *host = NULL;
    unsigned port = c->listen_port;
    int models = (int)c->n_models;
    bool admin = d->admin != NULL;
    if (d->listen_override && larder__parse_listen(d->listen_override, &host, &port) < 0) {
        snprintf(err, errlen, "--listen: bad address '%s' (HOST:PORT)", d->listen_override);
        return -EINVAL;
    }
    if (!host && !(host = strdup(c->listen_host))) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    set_node_name(d, c);
    char *backend_dir = strdup(larder__backend_dir(c));
    int r = larder__http_start(d, host, port, c->http_threads, &d->http, err, errlen);
    if (r == 0)
        larder__log(LARDER__LOG_INFO, "listening",
                    json_pack("{s:s,s:i,s:i,s:s?,s:b,s:s}", "host", host, "port",
                              (int)larder__http_port(d->http), "models", models, "backend_dir",
                              backend_dir, "admin_routes", admin, "node", d->node_name));
    free(backend_dir);
    free(host);
    return r;
}

/* ---- shutdown ---------------------------------------------------------------------------- */

/* Waits for the streamed calls' jobs to end, and unless streams_only for every request in
 * flight too, at most timeout_ms. */
static void wait_jobs(struct larder__daemon *d, int64_t timeout_ms, bool streams_only)
{
    double until = larder__now() + (double)timeout_ms / 1000.0;
    while (((!streams_only && atomic_load(&d->inflight)) || atomic_load(&d->stream_jobs)) &&
           larder__now() < until) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Returns how many loads the manager left running inside a plugin (larder_close_report). */
static unsigned close_manager(struct larder__daemon *d)
{
    pthread_rwlock_wrlock(&d->mgr_lock);
    larder *m = d->mgr;
    d->mgr = NULL;
    pthread_rwlock_unlock(&d->mgr_lock);
    int left = larder_close_report(m);
    return left > 0 ? (unsigned)left : 0;
}

/* Bounds of the shutdown after drain_timeout: for requests the closing manager failed to
 * be answered by their owners, for the replies answered by the shutdown to be written,
 * for the pools' threads to finish their jobs. */
#define SETTLE_MS 1000
#define WRITE_MS 5000
#define JOIN_MS 2000
#define CHILD_STOP_MS 5000 /* SIGTERM to SIGKILL for children left at the end */

/* Stops within drain_timeout plus the bounds above (and the manager's close_timeout):
 * requests still running then are answered 503 `shutting_down`, and threads still inside
 * a backend call are not waited for. Returns how many such threads were left running:
 * what they may touch when they return (plugins, the server, the manager) is then not
 * freed, and the process exits with them. */
static unsigned stop_all(struct larder__daemon *d)
{
    atomic_store(&d->stopping, true);
    if (d->http) {
        larder__http_quiesce(d->http);
        wait_jobs(d, d->conf->drain_timeout_ms, false);
    }
    /* Streams still running after the drain: their generations stop, and each client
     * gets an error saying so before its stream ends. */
    unsigned streams = larder__streams_stop();
    if (streams) {
        larder__log(LARDER__LOG_WARN, "stopping: streams still running were ended",
                    json_pack("{s:i,s:s}", "streams", (int)streams, "reply",
                              "503 shutting_down"));
        /* Each stops at its next piece; their leases come back before the manager closes. */
        wait_jobs(d, SETTLE_MS, true);
    }
    if (d->events)
        larder__events_close(d->events);
    unsigned streams_left = larder__proxy_close_all(WRITE_MS);
    /* Fails acquirers still waiting (their requests then answer 503), unloads the rest. */
    unsigned loads_left = close_manager(d);
    wait_jobs(d, streams ? WRITE_MS : SETTLE_MS, false);
    unsigned answered = larder__http_answer_all(d->http);
    if (answered) {
        larder__log(LARDER__LOG_WARN, "stopping: requests still running were answered",
                    json_pack("{s:i,s:s}", "requests", (int)answered, "reply",
                              "503 shutting_down"));
        wait_jobs(d, WRITE_MS, false);
    }
    unsigned stuck = larder__pool_stop(d->infer_pool, JOIN_MS);
    stuck += larder__pool_stop(d->admin_pool, JOIN_MS);
    stuck += loads_left;
    d->infer_pool = d->admin_pool = NULL;
    d->http = larder__http_stop(d->http);
    /* Children whose unload did not run (a lease still out) are ended here; with threads
     * left inside a call the supervisor stays, and the children die with the process. */
    if (stuck || streams_left)
        larder__ext_stop_all();
    else
        d->children = (larder__children_close(d->children, CHILD_STOP_MS), NULL);
    if (stuck) {
        larder__log(LARDER__LOG_WARN, "stopping: threads still inside a backend call",
                    json_pack("{s:i,s:i,s:s}", "threads", (int)stuck, "loads",
                              (int)loads_left, "detail",
                              "not waited for; the process exits with them"));
        return stuck;
    }
    d->events = larder__events_free(d->events);
    d->backends = larder__backends_free(d->backends);
    d->admin = larder__tokens_free(d->admin);
    d->infer = larder__tokens_free(d->infer);
    d->conf = larder__config_free(d->conf);
    return 0;
}

/* ---- the main loop ------------------------------------------------------------------------ */

/* Whether some pending model has no lease out any more. reload_lock held. */
static bool pending_drained(struct larder__daemon *d)
{
    struct larder_snapshot *s = NULL;
    bool drained = false;
    larder *m = larder__mgr_get(d);
    if (m && larder_snapshot(m, &s) == 0) {
        for (size_t i = 0; i < s->n && !drained; i++)
            drained = s->components[i].leases == 0 && listed(d->pending, s->components[i].name);
    }
    larder_snapshot_free(s);
    if (m)
        larder__mgr_put(d);
    return drained;
}

static void retry_job(void *arg)
{
    struct larder__daemon *d = arg;
    char err[ERRLEN];
    larder__log(LARDER__LOG_INFO, "reload: retrying the models it could not apply", NULL);
    if (larder__daemon_reload(d, NULL, err, sizeof err) < 0)
        larder__log(LARDER__LOG_WARN, "reload: the retry failed; the next reload tries again",
                    json_pack("{s:s}", "error", err));
}

/* The background retry: once a model a reload could not drop or change has no lease
 * left, the reload runs again (on the admin pool: it may wait for drains). One try per
 * reload that left models pending. */
static void check_pending(struct larder__daemon *d)
{
    if (!atomic_load(&d->retry_armed) || pthread_mutex_trylock(&d->reload_lock) != 0)
        return;
    bool go = d->pending && pending_drained(d);
    if (go)
        atomic_store(&d->retry_armed, false);
    pthread_mutex_unlock(&d->reload_lock);
    if (go && larder__pool_submit(d->admin_pool, retry_job, d) < 0)
        atomic_store(&d->retry_armed, true);
}

static void sample_job(void *arg)
{
    struct larder__daemon *d = arg;
    larder__ext_sample(d);
    larder *m = larder__mgr_get(d);
    if (m) {
        larder__workers_sample_gpu(d->children, m);
        larder__mgr_put(d);
    }
    atomic_store(&d->sample_queued, false);
}

/* Once a second while external models or workers run: their process trees' memory,
 * measured (host memory of external models, device memory of both). */
static void sample_external(struct larder__daemon *d, double *next)
{
    double now = larder__now();
    if (now < *next)
        return;
    *next = now + 1.0;
    if ((larder__ext_running(d) || larder__workers_running(d->children)) &&
        !atomic_exchange(&d->sample_queued, true) &&
        larder__pool_submit(d->admin_pool, sample_job, d) < 0)
        atomic_store(&d->sample_queued, false);
}

static void run_loop(struct larder__daemon *d, const sigset_t *set)
{
    double next_ping = larder__now() + 15, next_sample = 0;
    for (;;) {
        /* Every 15 s a ping to the event streams; every 250 ms a look at pending models;
         * every second, while external models or workers run, a sample of their memory. */
        struct timespec ts = {15, 0};
        if (atomic_load(&d->retry_armed))
            ts = (struct timespec){0, 250 * 1000 * 1000};
        else if (larder__ext_running(d) || larder__workers_running(d->children))
            ts = (struct timespec){1, 0};
        int sig = sigtimedwait(set, NULL, &ts);
        if (sig == SIGHUP) {
            char err[ERRLEN];
            larder__log(LARDER__LOG_INFO, "SIGHUP: reloading", NULL);
            larder__daemon_reload(d, NULL, err, sizeof err);
        } else if (sig == SIGTERM || sig == SIGINT) {
            larder__log(LARDER__LOG_INFO, "stopping",
                        json_pack("{s:s,s:i}", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                                  "inflight", (int)atomic_load(&d->inflight)));
            return;
        } else if (sig < 0 && errno == EAGAIN) {
            check_pending(d);
            sample_external(d, &next_sample);
            if (larder__now() >= next_ping) {
                larder__events_ping(d->events);
                next_ping = larder__now() + 15;
            }
        }
    }
}

static void usage(const char *prog, FILE *f)
{
    fprintf(f,
            "usage: %s --config FILE [--listen HOST:PORT] [--log-format text|json]\n"
            "          [--log-level error|warn|info|debug]\n"
            "       %s --version\n"
            "Serves the models of FILE over HTTP, loading each on first use.\n",
            prog, prog);
}

struct args {
    const char *config;
    const char *listen;
    const char *log_format;
    const char *log_level;
    const char *probe; /* hidden: the daemon's own config probe child (probe.h) */
    bool version;
};

static int parse_args(const char *prog, int argc, char **argv, struct args *a)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},  {"listen", required_argument, NULL, 'l'},
        {"log-format", required_argument, NULL, 'f'}, {"log-level", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},           {"version", no_argument, NULL, 'V'},
        {"probe", required_argument, NULL, 'P'},    {NULL, 0, NULL, 0},
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:l:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': a->config = optarg; break;
        case 'l': a->listen = optarg; break;
        case 'f': a->log_format = optarg; break;
        case 'L': a->log_level = optarg; break;
        case 'P': a->probe = optarg; break;
        case 'V': a->version = true; break;
        case 'h': usage(prog, stdout); return 1;
        default: usage(prog, stderr); return -1;
        }
    }
    if (a->version || a->probe)
        return optind == argc ? 0 : (usage(prog, stderr), -1);
    if (!a->config || optind != argc) {
        usage(prog, stderr);
        return -1;
    }
    return 0;
}

static int setup_logging(struct larder__daemon *d, const char *prog, const struct args *a)
{
    d->log_format = d->conf->log_format;
    d->log_level = d->conf->log_level;
    if (a->log_format && larder__log_parse_format(a->log_format, &d->log_format) < 0) {
        fprintf(stderr, "%s: --log-format: expected text or json\n", prog);
        return -1;
    }
    if (a->log_level && larder__log_parse_level(a->log_level, &d->log_level) < 0) {
        fprintf(stderr, "%s: --log-level: expected error, warn, info or debug\n", prog);
        return -1;
    }
    d->log_format_fixed = a->log_format != NULL;
    d->log_level_fixed = a->log_level != NULL;
    larder__log_setup(d->log_format, d->log_level, 2);
    return 0;
}

static void daemon_init(struct larder__daemon *d, const struct args *a)
{
    pthread_rwlock_init(&d->conf_lock, NULL);
    pthread_rwlock_init(&d->mgr_lock, NULL);
    pthread_mutex_init(&d->reload_lock, NULL);
    d->started = larder__now();
    d->listen_override = a->listen ? strdup(a->listen) : NULL;
}

static void daemon_destroy(struct larder__daemon *d)
{
    json_decref(d->pending);
    pthread_rwlock_destroy(&d->conf_lock);
    pthread_rwlock_destroy(&d->mgr_lock);
    pthread_mutex_destroy(&d->reload_lock);
    free(d->listen_override);
}

int larder__daemon_main(const char *prog, int argc, char **argv)
{
    struct args a = {0};
    char err[ERRLEN] = "";
    int pr = parse_args(prog, argc, argv, &a);
    if (pr)
        return pr > 0 ? 0 : 2;
    if (a.version) {
        printf("larderd %s\n", LARDER_VERSION);
        return 0;
    }
    if (a.probe)
        return larder__probe_main(a.probe);
    /* OpenMP engines (Tesseract) run many times slower on a busy host with a thread team
     * per request; one thread each, unless the user says otherwise. Set before any
     * plugin maps the OpenMP runtime, and before the probe child inherits the
     * environment. */
    setenv("OMP_THREAD_LIMIT", "1", 0);
    struct larder__daemon d = {.prog = prog};
    if (load_config(a.config, &d.conf, err, sizeof err) < 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return 1;
    }
    if (setup_logging(&d, prog, &a) < 0) {
        larder__config_free(d.conf);
        return 2;
    }
    /* Before any thread starts, so that every thread inherits the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    daemon_init(&d, &a);
    int r = start_parts(&d, err, sizeof err);
    if (r == 0)
        r = start_http(&d, err, sizeof err);
    if (r == 0) {
        larder *m = larder__mgr_get(&d);
        int n = larder_preload_all(m);
        larder__mgr_put(&d);
        if (n > 0)
            larder__log(LARDER__LOG_INFO, "preloading", json_pack("{s:i}", "models", n));
        run_loop(&d, &set);
    } else {
        larder__log(LARDER__LOG_ERROR, "start-up failed", json_pack("{s:s}", "error", err));
    }
    unsigned stuck = stop_all(&d);
    if (r == 0)
        larder__log(LARDER__LOG_INFO, "stopped", NULL);
    if (stuck) {
        /* Threads inside a backend call still use the plugins, the locks and the memory
         * kept above: exit now, with them, without running exit handlers or destructors
         * that would pull those from under them. */
        fflush(NULL);
        _exit(r == 0 ? 0 : 1);
    }
    daemon_destroy(&d);
    return r == 0 ? 0 : 1;
}
