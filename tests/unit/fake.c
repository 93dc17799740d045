/* Test classes and helpers for the core library's unit tests (see fake.h). */
#include "fake.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define MODEL_MAGIC 0x6d6f64656cUL
#define INSTANCE_MAGIC 0x696e7374UL
#define DEAD_MAGIC 0xdeadUL
#define EVLOG_CAP 8192

struct fake_model {
    unsigned long magic;
    struct fake *owner;
    void *mem;
};

struct fake_instance {
    unsigned long magic;
    struct fake *owner;
    struct fake_model *model;
    int id;
    atomic_int busy; /* leases holding it: 0 or 1 */
    void *mem;
};

/* ---- time and scale --------------------------------------------------------------- */

double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void sleep_ms(int ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static bool sanitized(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
    return true;
#else
    return false;
#endif
#else
    return false;
#endif
}

double test_scale(void)
{
    const char *env = getenv("LARDER_TEST_SCALE");
    double scale = 1.0;
    if (env && *env) {
        char *end;
        double v = strtod(env, &end);
        if (end != env && v > 0)
            scale = v;
    }
    return sanitized() ? scale / 5 : scale;
}

int scaled(int n, int min)
{
    double v = (double)n * test_scale();
    return v < min ? min : (int)v;
}

int patience_ms(void)
{
    return sanitized() ? 60000 : 15000;
}

/* ---- violations ------------------------------------------------------------------- */

void fake_violation(struct fake *f, const char *fmt, ...)
{
    atomic_fetch_add(&f->violations, 1);
    bool expected = false;
    if (!atomic_compare_exchange_strong(&f->why_set, &expected, true))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->why, sizeof(f->why), fmt, ap);
    va_end(ap);
}

void fake_assert_clean(struct fake *f)
{
    int stray = atomic_load(&fake_stray_leases);
    if (stray != 0)
        fail_msg("%d lease(s) whose model was not a live fake model", stray);
    int v = atomic_load(&f->violations);
    if (v != 0)
        fail_msg("%s: %d violation(s); first: %s", f->name, v, f->why);
}

/* ---- the gate --------------------------------------------------------------------- */

void fake_gate(struct fake *f, bool open)
{
    pthread_mutex_lock(&f->gate_lock);
    f->gate_open = open;
    pthread_cond_broadcast(&f->gate_cond);
    pthread_mutex_unlock(&f->gate_lock);
}

/* Blocks while the gate is closed, at most patience_ms() so a broken test ends. */
static void pass_gate(struct fake *f)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += patience_ms() / 1000;
    pthread_mutex_lock(&f->gate_lock);
    atomic_fetch_add(&f->gate_waiting, 1);
    while (!f->gate_open) {
        if (pthread_cond_timedwait(&f->gate_cond, &f->gate_lock, &until) == ETIMEDOUT) {
            fake_violation(f, "load stayed blocked on the gate past the test's patience");
            break;
        }
    }
    atomic_fetch_sub(&f->gate_waiting, 1);
    pthread_mutex_unlock(&f->gate_lock);
}

bool fake_wait_gated(struct fake *f, int n, int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    while (atomic_load(&f->gate_waiting) < n) {
        if (now_ms() > end)
            return false;
        sleep_ms(1);
    }
    return true;
}

/* ---- class functions -------------------------------------------------------------- */

static void *alloc_bytes(uint64_t n, bool touch)
{
    if (n == 0)
        return NULL;
    char *p = malloc((size_t)n);
    if (p && touch)
        for (uint64_t i = 0; i < n; i += 4096)
            p[i] = (char)i;
    return p;
}

static bool should_fail(struct fake *f, int call)
{
    if (f->spec.fail_first == FAKE_FAIL_ALWAYS)
        return true;
    return call <= f->spec.fail_first;
}

void fake_join(struct fake *f, struct fake_world *w, uint64_t bytes)
{
    f->world = w;
    f->world_bytes = bytes;
}

static void world_charge(struct fake *f)
{
    struct fake_world *w = f->world;
    if (!w)
        return;
    unsigned long long now = atomic_fetch_add(&w->live, f->world_bytes) + f->world_bytes;
    unsigned long long peak = atomic_load(&w->peak);
    while (now > peak && !atomic_compare_exchange_weak(&w->peak, &peak, now))
        ;
    if (now > w->budget)
        fake_violation(f, "loading %s takes live model bytes to %llu, over the budget %llu",
                       f->name, now, (unsigned long long)w->budget);
}

static void world_credit(struct fake *f)
{
    if (f->world)
        atomic_fetch_sub(&f->world->live, f->world_bytes);
}

static int fake_load(void *ud, void **ret_model, char *err, size_t errlen)
{
    struct fake *f = ud;
    int call = atomic_fetch_add(&f->load_calls, 1) + 1;
    if (atomic_fetch_add(&f->in_load, 1) != 0)
        fake_violation(f, "two loads of one component at once");
    if (atomic_load(&f->live_models) != 0)
        fake_violation(f, "load while the previous model is still loaded");
    if (f->spec.gated)
        pass_gate(f);
    world_charge(f);
    sleep_ms(f->spec.load_ms);
    int rc = 0;
    struct fake_model *model = NULL;
    if (should_fail(f, call)) {
        snprintf(err, errlen, "%s", FAKE_LOAD_MESSAGE);
        rc = FAKE_LOAD_ERROR;
        world_credit(f);
    } else if (!(model = calloc(1, sizeof(*model)))) {
        rc = -ENOMEM;
        world_credit(f);
    } else {
        model->magic = MODEL_MAGIC;
        model->owner = f;
        model->mem = alloc_bytes(f->spec.alloc, f->spec.touch);
        atomic_fetch_add(&f->live_models, 1);
        atomic_fetch_add(&f->loads, 1);
        *ret_model = model;
    }
    atomic_fetch_sub(&f->in_load, 1);
    return rc;
}

static void fake_unload(void *ud, void *model_ptr)
{
    struct fake *f = ud;
    struct fake_model *model = model_ptr;
    if (f->spec.gated_unload)
        pass_gate(f);
    atomic_fetch_add(&f->unloads, 1);
    if (!model || model->magic != MODEL_MAGIC || model->owner != f) {
        fake_violation(f, "unload of a model this component did not load");
        return;
    }
    int leases = atomic_load(&f->live_leases);
    if (leases != 0)
        fake_violation(f, "unload with %d lease(s) out", leases);
    int instances = atomic_load(&f->live_instances);
    if (instances != 0)
        fake_violation(f, "unload with %d instance(s) alive", instances);
    atomic_fetch_sub(&f->live_models, 1);
    model->magic = DEAD_MAGIC;
    free(model->mem);
    free(model);
    world_credit(f);
}

static int fake_instance_new(void *ud, void *model_ptr, void **ret_instance, char *err,
                             size_t errlen)
{
    struct fake *f = ud;
    struct fake_model *model = model_ptr;
    if (!model || model->magic != MODEL_MAGIC || model->owner != f)
        fake_violation(f, "instance_new on a model that is not live");
    sleep_ms(f->spec.instance_ms);
    struct fake_instance *in = calloc(1, sizeof(*in));
    if (!in) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    in->magic = INSTANCE_MAGIC;
    in->owner = f;
    in->model = model;
    in->id = atomic_fetch_add(&f->next_instance_id, 1) + 1;
    in->mem = alloc_bytes(f->spec.instance_alloc, true);
    atomic_fetch_add(&f->inst_new, 1);
    atomic_fetch_add(&f->live_instances, 1);
    *ret_instance = in;
    return 0;
}

static void fake_instance_free(void *ud, void *model_ptr, void *instance)
{
    struct fake *f = ud;
    struct fake_instance *in = instance;
    atomic_fetch_add(&f->inst_free, 1);
    if (!in || in->magic != INSTANCE_MAGIC || in->owner != f) {
        fake_violation(f, "instance_free of an instance this component did not create");
        return;
    }
    if (in->model != model_ptr)
        fake_violation(f, "instance_free with another model than the instance's");
    if (atomic_load(&in->busy) != 0)
        fake_violation(f, "instance %d freed while leased", in->id);
    atomic_fetch_sub(&f->live_instances, 1);
    in->magic = DEAD_MAGIC;
    free(in->mem);
    free(in);
}

static int fake_estimate(void *ud, uint64_t *ret_bytes)
{
    struct fake *f = ud;
    if (f->spec.estimate == 0)
        return -ENOENT;
    *ret_bytes = f->spec.estimate;
    return 0;
}

static int fake_measure(void *ud, void *model, uint64_t *ret_bytes)
{
    struct fake *f = ud;
    uint64_t v = f->spec.measured ? f->spec.measured : f->spec.estimate;
    if (!model || v == 0)
        return -ENOENT;
    *ret_bytes = v;
    return 0;
}

const struct larder_class fake_class = {
    .struct_size = sizeof(struct larder_class),
    .name = "fake",
    .load = fake_load,
    .unload = fake_unload,
    .estimate = fake_estimate,
    .measure = fake_measure,
};

const struct larder_class fake_pool_class = {
    .struct_size = sizeof(struct larder_class),
    .name = "fake-pool",
    .load = fake_load,
    .unload = fake_unload,
    .instance_new = fake_instance_new,
    .instance_free = fake_instance_free,
    .estimate = fake_estimate,
    .measure = fake_measure,
};

/* ---- fakes ------------------------------------------------------------------------ */

struct fake *fake_new(const char *name, const struct fake_spec *spec)
{
    struct fake *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->name, sizeof(f->name), "%s", name);
    if (spec)
        f->spec = *spec;
    pthread_mutex_init(&f->gate_lock, NULL);
    pthread_cond_init(&f->gate_cond, NULL);
    f->gate_open = !f->spec.gated && !f->spec.gated_unload;
    return f;
}

struct fake *fake_free(struct fake *f)
{
    if (!f)
        return NULL;
    pthread_mutex_destroy(&f->gate_lock);
    pthread_cond_destroy(&f->gate_cond);
    free(f);
    return NULL;
}

static void fake_ud_free(void *ud)
{
    struct fake *f = ud;
    atomic_fetch_add(&f->ud_frees, 1);
}

void fake_opts(struct fake *f, bool pool, struct larder_component_opts *opts)
{
    larder_component_opts_init(opts);
    opts->cls = pool ? &fake_pool_class : &fake_class;
    opts->ud = f;
    opts->ud_free = fake_ud_free;
}

int fake_define(larder *m, struct fake *f, bool pool)
{
    struct larder_component_opts opts;
    fake_opts(f, pool, &opts);
    return larder_define(m, f->name, &opts);
}

/* ---- leases ----------------------------------------------------------------------- */

struct fake *fake_of(const larder_lease *lease)
{
    const struct fake_model *model = larder_lease_model(lease);
    if (!model || model->magic != MODEL_MAGIC)
        return NULL;
    return model->owner;
}

atomic_int fake_stray_leases;

void fake_lease_take(larder_lease *lease)
{
    struct fake *f = fake_of(lease);
    if (!f) {
        atomic_fetch_add(&fake_stray_leases, 1);
        return;
    }
    atomic_fetch_add(&f->live_leases, 1);
    struct fake_instance *in = larder_lease_instance(lease);
    if (!in)
        return;
    if (in->magic != INSTANCE_MAGIC || in->owner != f)
        fake_violation(f, "lease with an instance that is not live");
    else if (atomic_fetch_add(&in->busy, 1) != 0)
        fake_violation(f, "instance %d handed to two leases at once", in->id);
    if (in->model != larder_lease_model(lease))
        fake_violation(f, "lease whose instance belongs to another model");
}

int fake_acquire(larder *m, const char *name, int64_t timeout_ms, larder_lease **ret_lease)
{
    larder_lease *lease = NULL;
    int rc = larder_acquire(m, name, timeout_ms, &lease);
    if (rc < 0)
        return rc;
    fake_lease_take(lease);
    *ret_lease = lease;
    return rc;
}

larder_lease *fake_release(larder_lease *lease)
{
    if (!lease)
        return NULL;
    struct fake *f = fake_of(lease);
    if (f) {
        struct fake_instance *in = larder_lease_instance(lease);
        if (in && in->magic == INSTANCE_MAGIC)
            atomic_fetch_sub(&in->busy, 1);
        atomic_fetch_sub(&f->live_leases, 1);
    }
    return larder_release(lease);
}

int fake_instance_id(const larder_lease *lease)
{
    const struct fake_instance *in = larder_lease_instance(lease);
    return in && in->magic == INSTANCE_MAGIC ? in->id : 0;
}

/* ---- events ----------------------------------------------------------------------- */

struct evlog *evlog_new(void)
{
    struct evlog *log = calloc(1, sizeof(*log));
    assert_non_null(log);
    pthread_mutex_init(&log->lock, NULL);
    pthread_cond_init(&log->cond, NULL);
    log->cap = EVLOG_CAP;
    log->recs = calloc(log->cap, sizeof(*log->recs));
    assert_non_null(log->recs);
    return log;
}

struct evlog *evlog_free(struct evlog *log)
{
    if (!log)
        return NULL;
    pthread_mutex_destroy(&log->lock);
    pthread_cond_destroy(&log->cond);
    free(log->recs);
    free(log);
    return NULL;
}

void evlog_fn(void *ud, const struct larder_event *ev)
{
    struct evlog *log = ud;
    struct evrec rec = {.type = ev->type, .reason = ev->reason, .error = ev->error,
                        .bytes = ev->bytes};
    snprintf(rec.name, sizeof(rec.name), "%s", ev->name ? ev->name : "");
    snprintf(rec.detail, sizeof(rec.detail), "%s", ev->detail ? ev->detail : "");
    pthread_mutex_lock(&log->lock);
    if (log->n < log->cap)
        log->recs[log->n++] = rec;
    log->total++;
    pthread_cond_broadcast(&log->cond);
    pthread_mutex_unlock(&log->lock);
    if (log->hook)
        log->hook(log->hook_ud, ev);
}

static bool rec_matches(const struct evrec *r, enum larder_event_type type, const char *name)
{
    return r->type == type && (!name || strcmp(r->name, name) == 0);
}

static unsigned count_locked(struct evlog *log, enum larder_event_type type, const char *name,
                             int reason)
{
    unsigned n = 0;
    for (size_t i = 0; i < log->n; i++)
        if (rec_matches(&log->recs[i], type, name) &&
            (reason < 0 || (int)log->recs[i].reason == reason))
            n++;
    return n;
}

unsigned evlog_count(struct evlog *log, enum larder_event_type type, const char *name)
{
    pthread_mutex_lock(&log->lock);
    unsigned n = count_locked(log, type, name, -1);
    pthread_mutex_unlock(&log->lock);
    return n;
}

unsigned evlog_count_reason(struct evlog *log, enum larder_event_type type, const char *name,
                            enum larder_evict_reason reason)
{
    pthread_mutex_lock(&log->lock);
    unsigned n = count_locked(log, type, name, (int)reason);
    pthread_mutex_unlock(&log->lock);
    return n;
}

bool evlog_wait(struct evlog *log, enum larder_event_type type, const char *name, unsigned n,
                int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&log->lock);
    bool ok = true;
    while (count_locked(log, type, name, -1) < n) {
        if (pthread_cond_timedwait(&log->cond, &log->lock, &until) == ETIMEDOUT) {
            ok = count_locked(log, type, name, -1) >= n;
            break;
        }
    }
    pthread_mutex_unlock(&log->lock);
    return ok;
}

bool evlog_get(struct evlog *log, size_t i, struct evrec *ret)
{
    pthread_mutex_lock(&log->lock);
    bool ok = i < log->n;
    if (ok)
        *ret = log->recs[i];
    pthread_mutex_unlock(&log->lock);
    return ok;
}

unsigned long evlog_total(struct evlog *log)
{
    pthread_mutex_lock(&log->lock);
    unsigned long n = log->total;
    pthread_mutex_unlock(&log->lock);
    return n;
}

void evlog_clear(struct evlog *log)
{
    pthread_mutex_lock(&log->lock);
    log->n = 0;
    pthread_mutex_unlock(&log->lock);
}

/* ---- managers and snapshots ------------------------------------------------------- */

larder *open_manager(uint64_t budget, struct evlog *log, const struct larder_opts *opts)
{
    struct larder_opts o;
    if (opts)
        o = *opts;
    else
        larder_opts_init(&o);
    o.budget_bytes = budget;
    if (log) {
        o.on_event = evlog_fn;
        o.event_ud = log;
    }
    larder *m = NULL;
    int rc = larder_open(&o, &m);
    if (rc != 0)
        fail_msg("larder_open: %s", larder_strerror(rc));
    assert_non_null(m);
    return m;
}

bool comp_info(larder *m, const char *name, struct larder_component_info *ret)
{
    struct larder_snapshot *s = NULL;
    if (larder_snapshot(m, &s) != 0)
        return false;
    bool found = false;
    for (size_t i = 0; i < s->n && !found; i++) {
        if (strcmp(s->components[i].name, name) != 0)
            continue;
        *ret = s->components[i];
        ret->name = ret->class_name = ret->fallback = ret->last_error_message = NULL;
        found = true;
    }
    larder_snapshot_free(s);
    return found;
}

bool wait_state(larder *m, const char *name, enum larder_state state, int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    struct larder_component_info info;
    for (;;) {
        if (comp_info(m, name, &info) && info.state == state)
            return true;
        if (now_ms() > end)
            return false;
        sleep_ms(1);
    }
}

bool wait_waiters(larder *m, const char *name, unsigned n, int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    struct larder_component_info info;
    for (;;) {
        if (comp_info(m, name, &info) && info.waiters >= n)
            return true;
        if (now_ms() > end)
            return false;
        sleep_ms(1);
    }
}

const char *check_snapshot(const struct larder_snapshot *s)
{
    static _Thread_local char msg[200];
    uint64_t sum = 0;
    for (size_t i = 0; i < s->n; i++)
        sum += s->components[i].reserved_bytes;
    if (s->reserved_bytes > s->budget_bytes) {
        snprintf(msg, sizeof(msg), "reserved %llu > budget %llu",
                 (unsigned long long)s->reserved_bytes, (unsigned long long)s->budget_bytes);
        return msg;
    }
    if (sum != s->reserved_bytes) {
        snprintf(msg, sizeof(msg), "components' reservations add up to %llu, reserved %llu",
                 (unsigned long long)sum, (unsigned long long)s->reserved_bytes);
        return msg;
    }
    return NULL;
}
