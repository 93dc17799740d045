/* larder for Python: liblarder as a CPython extension module.
 *
 * Threads and the GIL. liblarder calls the Python callables of a component (load, unload,
 * new_instance, free_instance) and the on_event callable on its own threads, never with one
 * of its locks held; each call takes the GIL for as long as the callable runs. The other way
 * round, every call into liblarder that may wait on another thread (an acquire waiting for a
 * load, a drain, an all-or-nothing set, close) runs with the GIL released, so a loader thread
 * that needs the GIL always gets it. Calls that never wait (a warm grant, a release, a
 * preload) keep the GIL: liblarder only takes short mutexes there, and no thread holds one of
 * those while it waits for the GIL.
 *
 * Waits are interruptible: an acquire waits for liblarder's asynchronous answer on a
 * condition variable in slices, checking for signals between them on the main thread, so
 * Ctrl-C raises KeyboardInterrupt; the answer, when it comes, releases the lease it carries.
 * Sets and drains, which liblarder only offers as blocking calls, run on a helper thread for
 * the same reason.
 *
 * Shutdown. The module closes every open manager from an atexit handler, while the
 * interpreter can still run the unload callables; after that, a callback that still comes
 * (a load left running by a close that timed out) touches no Python object.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <larder/larder.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- interpreter liveness ------------------------------------------------------------- */

static atomic_bool py_alive = true;

static bool interp_alive(void)
{
    if (!atomic_load(&py_alive))
        return false;
#if PY_VERSION_HEX >= 0x030D0000
    return !Py_IsFinalizing();
#else
    return !_Py_IsFinalizing();
#endif
}

/* ---- exceptions ------------------------------------------------------------------------ */

static PyObject *Error, *NotFoundError, *TimeoutErr, *LoadError, *CooldownError, *BudgetError,
    *BusyError, *ClosedError, *DrainingError;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_in(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

static void cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

/* ---- state shared with liblarder's threads ------------------------------------------------
 *
 * What callbacks reach outlives the Manager object when it must (a load left running after a
 * close that timed out): it is freed only when no liblarder thread can call back any more. */

#define RING 1024

struct evrec {
    enum larder_event_type type;
    char name[128];
    enum larder_evict_reason reason;
    int error;
    char message[512];
    bool has_message;
    uint64_t bytes;
    int64_t bytes_returned;
    double load_ms;
    char detail[128];
    bool has_detail;
};

struct shared {
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* events, load results, busy going to zero */
    uint64_t seq;          /* events written so far */
    struct evrec ring[RING];
    unsigned busy;         /* liblarder calls in flight (close waits for them) */
    bool closed;
    PyObject *on_event;    /* strong; touched with the GIL only */
    PyObject *errors;      /* dict: component -> the exception of its last failed load */
};

static const char *const event_names[] = {
    [LARDER_EVENT_LOAD_START] = "load_start", [LARDER_EVENT_LOAD_DONE] = "load_done",
    [LARDER_EVENT_LOAD_FAIL] = "load_fail",   [LARDER_EVENT_EVICT] = "evict",
    [LARDER_EVENT_UNLOAD] = "unload",         [LARDER_EVENT_INSTANCE_NEW] = "instance_new",
    [LARDER_EVENT_INSTANCE_FREE] = "instance_free", [LARDER_EVENT_PRESSURE] = "pressure",
    [LARDER_EVENT_FALLBACK] = "fallback",
};

static const char *const reason_names[] = {
    [LARDER_REASON_NONE] = "none",     [LARDER_REASON_BUDGET] = "budget",
    [LARDER_REASON_TTL] = "ttl",       [LARDER_REASON_REQUEST] = "request",
    [LARDER_REASON_TRIM] = "trim",     [LARDER_REASON_PRESSURE] = "pressure",
    [LARDER_REASON_CLOSE] = "close",   [LARDER_REASON_OVERSIZE] = "oversize",
};

static const char *event_name(enum larder_event_type t)
{
    if ((unsigned)t < sizeof event_names / sizeof event_names[0] && event_names[t])
        return event_names[t];
    return "unknown";
}

static const char *reason_name(enum larder_evict_reason r)
{
    if ((unsigned)r < sizeof reason_names / sizeof reason_names[0] && reason_names[r])
        return reason_names[r];
    return "unknown";
}

/* Dict helpers: each steals the value; a NULL value (out of memory) is skipped and the
 * error left set, which the caller checks once with PyErr_Occurred. */
static void put(PyObject *d, const char *k, PyObject *v)
{
    if (!v)
        return;
    PyDict_SetItemString(d, k, v);
    Py_DECREF(v);
}

static PyObject *str_or_none(const char *s)
{
    return s ? PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace") : Py_NewRef(Py_None);
}

#define PUT_U(d, k, v) put(d, k, PyLong_FromUnsignedLongLong((unsigned long long)(v)))
#define PUT_I(d, k, v) put(d, k, PyLong_FromLongLong((long long)(v)))
#define PUT_F(d, k, v) put(d, k, PyFloat_FromDouble(v))
#define PUT_B(d, k, v) put(d, k, PyBool_FromLong(v))
#define PUT_S(d, k, v) put(d, k, str_or_none(v))

/* The event as larderd's /v1/events sends it. */
static PyObject *event_dict(const struct evrec *e)
{
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    PUT_S(d, "type", event_name(e->type));
    if (e->name[0])
        PUT_S(d, "name", e->name);
    if (e->type == LARDER_EVENT_EVICT || e->type == LARDER_EVENT_UNLOAD)
        PUT_S(d, "reason", reason_name(e->reason));
    if (e->type == LARDER_EVENT_LOAD_FAIL) {
        PUT_S(d, "error", larder_strerror(e->error));
        PUT_I(d, "error_code", e->error);
    }
    if (e->has_message)
        PUT_S(d, "message", e->message);
    if (e->bytes)
        PUT_U(d, "bytes", e->bytes);
    if (e->type == LARDER_EVENT_UNLOAD)
        PUT_I(d, "bytes_returned", e->bytes_returned);
    if (e->type == LARDER_EVENT_LOAD_DONE || e->type == LARDER_EVENT_LOAD_FAIL)
        PUT_F(d, "load_ms", e->load_ms);
    if (e->has_detail)
        PUT_S(d, e->type == LARDER_EVENT_FALLBACK ? "served_by" : "detail", e->detail);
    if (PyErr_Occurred()) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static void on_event(void *ud, const struct larder_event *ev)
{
    struct shared *sh = ud;
    struct evrec e = {.type = ev->type, .reason = ev->reason, .error = ev->error,
                      .bytes = ev->bytes, .bytes_returned = ev->bytes_returned,
                      .load_ms = ev->load_ms};
    snprintf(e.name, sizeof e.name, "%s", ev->name ? ev->name : "");
    if ((e.has_message = ev->message != NULL))
        snprintf(e.message, sizeof e.message, "%s", ev->message);
    if ((e.has_detail = ev->detail != NULL))
        snprintf(e.detail, sizeof e.detail, "%s", ev->detail);
    pthread_mutex_lock(&sh->mu);
    sh->ring[sh->seq % RING] = e;
    sh->seq++;
    pthread_cond_broadcast(&sh->cv);
    bool call = sh->on_event != NULL && !sh->closed;
    pthread_mutex_unlock(&sh->mu);
    if (!call || !interp_alive())
        return;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *fn = sh->on_event ? Py_NewRef(sh->on_event) : NULL;
    if (fn) {
        PyObject *d = event_dict(&e);
        PyObject *r = d ? PyObject_CallOneArg(fn, d) : NULL;
        if (!r)
            PyErr_WriteUnraisable(fn);
        Py_XDECREF(r);
        Py_XDECREF(d);
        Py_DECREF(fn);
    }
    PyGILState_Release(g);
}

static void busy_enter(struct shared *sh)
{
    pthread_mutex_lock(&sh->mu);
    sh->busy++;
    pthread_mutex_unlock(&sh->mu);
}

static void busy_leave(struct shared *sh)
{
    pthread_mutex_lock(&sh->mu);
    if (--sh->busy == 0)
        pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}

/* ---- component classes over Python callables ------------------------------------------ */

struct pycomp {
    PyObject *name;
    PyObject *load, *unload, *new_instance, *free_instance; /* strong; unload.. may be NULL */
    PyObject *errors;                                       /* the manager's errors dict */
};

/* Turns the raised exception into a class error: "Type: text" into err, the exception
 * itself kept for the acquirer, who raises LoadError from it. */
static void exception_to_err(struct pycomp *pc, char *err, size_t errlen)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    const char *tname = type ? ((PyTypeObject *)type)->tp_name : "Exception";
    PyObject *s = value ? PyObject_Str(value) : NULL;
    const char *text = s ? PyUnicode_AsUTF8(s) : NULL;
    if (!text)
        PyErr_Clear();
    if (text && *text)
        snprintf(err, errlen, "%s: %s", tname, text);
    else
        snprintf(err, errlen, "%s", tname);
    Py_XDECREF(s);
    if (value && PyDict_SetItem(pc->errors, pc->name, value) < 0)
        PyErr_Clear();
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

static int py_load(void *ud, void **ret_model, char *err, size_t errlen)
{
    struct pycomp *pc = ud;
    if (!interp_alive()) {
        snprintf(err, errlen, "the Python interpreter is shutting down");
        return LARDER_ECLOSED;
    }
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *model = PyObject_CallNoArgs(pc->load);
    int r = 0;
    if (!model) {
        exception_to_err(pc, err, errlen);
        r = LARDER_ELOAD;
    } else {
        if (PyDict_DelItem(pc->errors, pc->name) < 0)
            PyErr_Clear();
        *ret_model = model;
    }
    PyGILState_Release(g);
    return r;
}

/* A callable that cannot fail the operation (unload, free_instance): its exception goes to
 * sys.unraisablehook, and the object is dropped all the same. */
static void call_cleanup(PyObject *fn, PyObject *a, PyObject *b)
{
    if (!fn)
        return;
    PyObject *r = b ? PyObject_CallFunctionObjArgs(fn, a, b, NULL) : PyObject_CallOneArg(fn, a);
    if (!r)
        PyErr_WriteUnraisable(fn);
    Py_XDECREF(r);
}

static void py_unload(void *ud, void *model)
{
    struct pycomp *pc = ud;
    if (!interp_alive())
        return; /* nothing Python may be touched now: the model goes with the process */
    PyGILState_STATE g = PyGILState_Ensure();
    call_cleanup(pc->unload, model, NULL);
    Py_DECREF((PyObject *)model);
    PyGILState_Release(g);
}

static int py_instance_new(void *ud, void *model, void **ret_instance, char *err, size_t errlen)
{
    struct pycomp *pc = ud;
    if (!interp_alive()) {
        snprintf(err, errlen, "the Python interpreter is shutting down");
        return LARDER_ECLOSED;
    }
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *inst = PyObject_CallOneArg(pc->new_instance, model);
    int r = 0;
    if (!inst) {
        exception_to_err(pc, err, errlen);
        r = LARDER_ELOAD;
    } else {
        *ret_instance = inst;
    }
    PyGILState_Release(g);
    return r;
}

static void py_instance_free(void *ud, void *model, void *instance)
{
    struct pycomp *pc = ud;
    if (!interp_alive())
        return;
    PyGILState_STATE g = PyGILState_Ensure();
    call_cleanup(pc->free_instance, model, instance);
    Py_DECREF((PyObject *)instance);
    PyGILState_Release(g);
}

static void pycomp_free(void *ud)
{
    struct pycomp *pc = ud;
    if (!interp_alive())
        return;
    PyGILState_STATE g = PyGILState_Ensure();
    Py_XDECREF(pc->name);
    Py_XDECREF(pc->load);
    Py_XDECREF(pc->unload);
    Py_XDECREF(pc->new_instance);
    Py_XDECREF(pc->free_instance);
    Py_XDECREF(pc->errors);
    PyGILState_Release(g);
    free(pc);
}

static const struct larder_class shared_class = {
    .struct_size = sizeof(struct larder_class),
    .name = "python",
    .load = py_load,
    .unload = py_unload,
};

static const struct larder_class pooled_class = {
    .struct_size = sizeof(struct larder_class),
    .name = "python",
    .load = py_load,
    .unload = py_unload,
    .instance_new = py_instance_new,
    .instance_free = py_instance_free,
};

/* ---- argument parsing ------------------------------------------------------------------- */

/* A size: an int (bytes) or a string such as "512MiB". */
static int parse_size_obj(PyObject *o, const char *what, uint64_t *ret)
{
    if (PyLong_Check(o)) {
        unsigned long long v = PyLong_AsUnsignedLongLong(o);
        if (PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "%s: a size in bytes must be >= 0", what);
            return -1;
        }
        *ret = v;
        return 0;
    }
    const char *s = PyUnicode_Check(o) ? PyUnicode_AsUTF8(o) : NULL;
    if (!s) {
        PyErr_Format(PyExc_TypeError, "%s must be an int or a string such as '2GiB'", what);
        return -1;
    }
    if (larder_parse_size(s, ret) < 0) {
        PyErr_Format(PyExc_ValueError, "%s: '%s' is not a size (e.g. '512MiB', '2GiB')", what, s);
        return -1;
    }
    return 0;
}

/* A duration in milliseconds: a number of seconds, or "250ms", "30s", "5m", "2h", "1d";
 * None = def; "never" or a negative number = LARDER_TTL_NEVER. */
static int parse_duration_obj(PyObject *o, const char *what, int64_t def, int64_t *ret)
{
    if (!o || o == Py_None) {
        *ret = def;
        return 0;
    }
    if (PyLong_Check(o) || PyFloat_Check(o)) {
        double v = PyFloat_AsDouble(o);
        if (v != v || v > 1e12) {
            PyErr_Format(PyExc_ValueError, "%s: not a usable number of seconds", what);
            return -1;
        }
        *ret = v < 0 ? LARDER_TTL_NEVER : (int64_t)(v * 1000.0);
        return 0;
    }
    const char *s = PyUnicode_Check(o) ? PyUnicode_AsUTF8(o) : NULL;
    if (!s) {
        PyErr_Format(PyExc_TypeError, "%s must be seconds or a string such as '5m'", what);
        return -1;
    }
    if (strcmp(s, "never") == 0 || strcmp(s, "-1") == 0) {
        *ret = LARDER_TTL_NEVER;
        return 0;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double unit = 1000;
    if (end == s || errno || v < 0)
        goto bad;
    if (strcmp(end, "ms") == 0)
        unit = 1;
    else if (strcmp(end, "s") == 0 || *end == 0)
        unit = 1000;
    else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
        unit = 60000;
    else if (strcmp(end, "h") == 0)
        unit = 3600000;
    else if (strcmp(end, "d") == 0)
        unit = 86400000;
    else
        goto bad;
    if (v * unit > 1e15)
        goto bad;
    *ret = (int64_t)(v * unit);
    return 0;
bad:
    PyErr_Format(PyExc_ValueError, "%s: '%s' is not a duration (e.g. '250ms', '30s', '5m')", what,
                 s);
    return -1;
}

/* A timeout: None = forever, else seconds >= 0. */
static int parse_timeout(PyObject *o, int64_t *ret)
{
    if (!o || o == Py_None) {
        *ret = LARDER_WAIT_FOREVER;
        return 0;
    }
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    if (v != v || v < 0 || v > 1e9) {
        PyErr_SetString(PyExc_ValueError, "timeout must be None or seconds >= 0");
        return -1;
    }
    *ret = (int64_t)(v * 1000.0);
    return 0;
}

/* ---- the Manager type --------------------------------------------------------------------- */

typedef struct Manager {
    PyObject_HEAD
    larder *m;          /* NULL once closed */
    struct shared *sh;
    PyObject *weakrefs;
    struct Manager *next_open; /* the module's list of open managers, for atexit */
} Manager;

static PyTypeObject ManagerType, LeaseType, LeaseSetType, AsyncLeaseType, EventIterType,
    ComponentDecoratorType;
static Manager *open_managers; /* touched with the GIL */

static PyObject *error_class(int err)
{
    switch (err) {
    case LARDER_ENOTFOUND: return NotFoundError;
    case LARDER_ETIMEDOUT: return TimeoutErr;
    case LARDER_ELOAD: return LoadError;
    case LARDER_ECOOLDOWN: return CooldownError;
    case LARDER_ETOOBIG:
    case LARDER_ENOSPC: return BudgetError;
    case LARDER_EBUSY: return BusyError;
    case LARDER_ECLOSED: return ClosedError;
    case LARDER_EDRAINING: return DrainingError;
    case -EINVAL: return PyExc_ValueError;
    case -ENOMEM: return PyExc_MemoryError;
    default: return Error;
    }
}

/* Builds (does not raise) the exception for a liblarder error on component `name`. A failed
 * load carries the class's message and, as __cause__, the exception the load raised. */
static PyObject *make_error(struct shared *sh, int err, const char *name, const char *msg)
{
    PyObject *cls = error_class(err);
    PyObject *cause = NULL;
    if (name && sh && (err == LARDER_ELOAD || err == LARDER_ECOOLDOWN))
        cause = PyDict_GetItemString(sh->errors, name); /* borrowed */
    PyObject *text;
    if (cause) {
        PyObject *s = PyObject_Str(cause);
        text = PyUnicode_FromFormat("%s: %s (%s: %S)", name, larder_strerror(err),
                                    Py_TYPE(cause)->tp_name, s ? s : Py_None);
        Py_XDECREF(s);
    } else if (name) {
        text = PyUnicode_FromFormat("%s: %s", name, msg ? msg : larder_strerror(err));
    } else {
        text = PyUnicode_FromString(msg ? msg : larder_strerror(err));
    }
    if (!text)
        return NULL;
    PyObject *exc = PyObject_CallOneArg(cls, text);
    Py_DECREF(text);
    if (!exc)
        return NULL;
    if (PyObject_IsInstance(exc, Error) == 1) {
        PyObject *code = PyLong_FromLong(err);
        if (code)
            PyObject_SetAttrString(exc, "code", code);
        Py_XDECREF(code);
        PyObject *n = str_or_none(name);
        if (n)
            PyObject_SetAttrString(exc, "component", n);
        Py_XDECREF(n);
        if (cause) {
            PyObject *tn = PyUnicode_FromString(Py_TYPE(cause)->tp_name);
            if (tn)
                PyObject_SetAttrString(exc, "exc_type", tn);
            Py_XDECREF(tn);
            PyException_SetCause(exc, Py_NewRef(cause));
        }
    }
    PyErr_Clear();
    return exc;
}

static PyObject *raise_larder(struct shared *sh, int err, const char *name)
{
    PyObject *exc = make_error(sh, err, name, NULL);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static larder *mgr_open(Manager *self)
{
    if (!self->m)
        PyErr_SetString(ClosedError, "the manager is closed");
    return self->m;
}

static int Manager_init(Manager *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"budget", "policy", "ttl", "state_dir", "on_event",
                             "loader_threads", "close_timeout", NULL};
    PyObject *budget = NULL, *ttl = NULL, *ev = Py_None, *close_timeout = NULL;
    const char *policy = "cost", *state_dir = NULL;
    unsigned loaders = 4;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OsOzOIO:Manager", kwlist, &budget, &policy, &ttl,
                                     &state_dir, &ev, &loaders, &close_timeout))
        return -1;
    if (self->m) {
        PyErr_SetString(PyExc_RuntimeError, "Manager.__init__ called twice");
        return -1;
    }
    struct larder_opts o;
    larder_opts_init(&o);
    if (budget && budget != Py_None && parse_size_obj(budget, "budget", &o.budget_bytes) < 0)
        return -1;
    if (budget == NULL)
        o.budget_bytes = 4ull << 30;
    if (parse_duration_obj(ttl ? ttl : NULL, "ttl", 300000, &o.default_ttl_ms) < 0)
        return -1;
    if (close_timeout && parse_timeout(close_timeout, &o.close_timeout_ms) < 0)
        return -1;
    if (ev != Py_None && !PyCallable_Check(ev)) {
        PyErr_SetString(PyExc_TypeError, "on_event must be callable or None");
        return -1;
    }
    if (loaders == 0 || loaders > 64) {
        PyErr_SetString(PyExc_ValueError, "loader_threads must be 1..64");
        return -1;
    }
    o.policy = policy;
    o.state_dir = state_dir;
    o.loader_threads = loaders;
    struct shared *sh = calloc(1, sizeof *sh);
    if (!sh) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&sh->mu, NULL);
    cond_init_mono(&sh->cv);
    sh->errors = PyDict_New();
    if (!sh->errors) {
        free(sh);
        return -1;
    }
    sh->on_event = ev != Py_None ? Py_NewRef(ev) : NULL;
    o.on_event = on_event;
    o.event_ud = sh;
    larder *m = NULL;
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = larder_open(&o, &m);
    Py_END_ALLOW_THREADS
    if (r < 0) {
        Py_XDECREF(sh->on_event);
        Py_DECREF(sh->errors);
        free(sh);
        if (r == LARDER_EPOLICY)
            PyErr_Format(PyExc_ValueError, "unknown policy '%s' (use 'cost' or 'lru')", policy);
        else
            raise_larder(NULL, r, NULL);
        return -1;
    }
    self->m = m;
    self->sh = sh;
    self->next_open = open_managers;
    open_managers = self;
    return 0;
}

static void unlink_open(Manager *self)
{
    for (Manager **p = &open_managers; *p; p = &(*p)->next_open)
        if (*p == self) {
            *p = self->next_open;
            break;
        }
    self->next_open = NULL;
}

/* Closes: no new calls, then waits (GIL released) for the calls in flight on other threads
 * (bounded by their timeouts), then liblarder's close, which fails waiters, waits for loads
 * and unloads every idle component through its unload callable. */
static void mgr_close(Manager *self)
{
    larder *m = self->m;
    if (!m)
        return;
    self->m = NULL;
    unlink_open(self);
    struct shared *sh = self->sh;
    int left;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&sh->mu);
    while (sh->busy)
        pthread_cond_wait(&sh->cv, &sh->mu);
    pthread_mutex_unlock(&sh->mu);
    left = larder_close_report(m);
    pthread_mutex_lock(&sh->mu);
    sh->closed = true;
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    Py_END_ALLOW_THREADS
    if (left > 0) {
        /* A load never returned: its thread may still call back into sh. Keep it. */
        self->sh = NULL;
    }
}

static void shared_free(struct shared *sh)
{
    if (!sh)
        return;
    Py_CLEAR(sh->on_event);
    Py_CLEAR(sh->errors);
    pthread_cond_destroy(&sh->cv);
    pthread_mutex_destroy(&sh->mu);
    free(sh);
}

static void Manager_dealloc(Manager *self)
{
    if (self->weakrefs)
        PyObject_ClearWeakRefs((PyObject *)self);
    mgr_close(self);
    /* Leases hold the manager, so none is left: nothing calls back into sh now. */
    shared_free(self->sh);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Manager_close(Manager *self, PyObject *unused)
{
    mgr_close(self);
    Py_RETURN_NONE;
}

static PyObject *Manager_enter(Manager *self, PyObject *unused)
{
    if (!mgr_open(self))
        return NULL;
    return Py_NewRef(self);
}

static PyObject *Manager_exit(Manager *self, PyObject *args)
{
    mgr_close(self);
    Py_RETURN_FALSE;
}

static PyObject *Manager_get_closed(Manager *self, void *c)
{
    return PyBool_FromLong(self->m == NULL);
}

static PyObject *Manager_get_budget(Manager *self, void *c)
{
    if (!mgr_open(self))
        return NULL;
    return PyLong_FromUnsignedLongLong(larder_get_budget(self->m));
}

static int Manager_set_budget(Manager *self, PyObject *v, void *c)
{
    uint64_t b;
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "budget cannot be deleted");
        return -1;
    }
    if (!mgr_open(self) || parse_size_obj(v, "budget", &b) < 0)
        return -1;
    int r;
    larder *m = self->m;
    busy_enter(self->sh);
    Py_BEGIN_ALLOW_THREADS
    r = larder_set_budget(m, b);
    Py_END_ALLOW_THREADS
    busy_leave(self->sh);
    if (r < 0) {
        raise_larder(self->sh, r, NULL);
        return -1;
    }
    return 0;
}

/* ---- define ------------------------------------------------------------------------------- */

static PyObject *do_define(Manager *self, PyObject *name, PyObject *load, PyObject *kw)
{
    static char *kwlist[] = {"unload", "memory", "ttl", "instances", "new_instance",
                             "free_instance", "pin", "priority", "fallback", "preload",
                             "queue_max", NULL};
    PyObject *unload = Py_None, *memory = Py_None, *ttl = Py_None, *instances = Py_None,
             *new_inst = Py_None, *free_inst = Py_None;
    int pin = 0, priority = 0, preload = 0;
    unsigned queue_max = 0;
    const char *fallback = NULL;
    PyObject *noargs = PyTuple_New(0);
    if (!noargs)
        return NULL;
    int ok = PyArg_ParseTupleAndKeywords(noargs, kw, "|OOOOOOpizpI:define", kwlist, &unload,
                                         &memory, &ttl, &instances, &new_inst, &free_inst, &pin,
                                         &priority, &fallback, &preload, &queue_max);
    Py_DECREF(noargs);
    if (!ok || !mgr_open(self))
        return NULL;
    const char *cname = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (!cname || !*cname) {
        PyErr_SetString(PyExc_ValueError, "a component name must be a non-empty string");
        return NULL;
    }
    if (!PyCallable_Check(load)) {
        PyErr_SetString(PyExc_TypeError, "load must be callable");
        return NULL;
    }
    PyObject *fns[] = {unload, new_inst, free_inst};
    const char *fnames[] = {"unload", "new_instance", "free_instance"};
    for (int i = 0; i < 3; i++)
        if (fns[i] != Py_None && !PyCallable_Check(fns[i])) {
            PyErr_Format(PyExc_TypeError, "%s must be callable or None", fnames[i]);
            return NULL;
        }
    if ((new_inst == Py_None) != (free_inst == Py_None) && free_inst != Py_None) {
        PyErr_SetString(PyExc_ValueError, "free_instance needs new_instance");
        return NULL;
    }
    struct larder_component_opts c;
    larder_component_opts_init(&c);
    if (memory != Py_None && parse_size_obj(memory, "memory", &c.memory_bytes) < 0)
        return NULL;
    if (parse_duration_obj(ttl, "ttl", LARDER_TTL_DEFAULT, &c.ttl_ms) < 0)
        return NULL;
    if (instances != Py_None) {
        long n = PyLong_AsLong(instances);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (n < 1 || n > 65536) {
            PyErr_SetString(PyExc_ValueError, "instances must be 1..65536");
            return NULL;
        }
        if (new_inst == Py_None) {
            PyErr_SetString(PyExc_ValueError,
                            "instances needs new_instance (a pool of per-caller instances)");
            return NULL;
        }
        c.max_instances = (unsigned)n;
    }
    struct pycomp *pc = calloc(1, sizeof *pc);
    if (!pc)
        return PyErr_NoMemory();
    pc->name = Py_NewRef(name);
    pc->load = Py_NewRef(load);
    pc->unload = unload != Py_None ? Py_NewRef(unload) : NULL;
    pc->new_instance = new_inst != Py_None ? Py_NewRef(new_inst) : NULL;
    pc->free_instance = free_inst != Py_None ? Py_NewRef(free_inst) : NULL;
    pc->errors = Py_NewRef(self->sh->errors);
    c.cls = pc->new_instance ? &pooled_class : &shared_class;
    c.ud = pc;
    c.ud_free = pycomp_free;
    c.pin = pin;
    c.priority = priority;
    c.fallback = fallback;
    c.preload = preload;
    c.queue_max = queue_max;
    int r = larder_define(self->m, cname, &c);
    if (r < 0) {
        pycomp_free(pc);
        if (r == LARDER_EEXIST)
            return PyErr_Format(PyExc_ValueError, "a component named '%s' is already defined",
                                cname);
        return raise_larder(self->sh, r, cname);
    }
    Py_RETURN_NONE;
}

static PyObject *Manager_define(Manager *self, PyObject *args, PyObject *kw)
{
    PyObject *name, *load, *unload = NULL;
    if (!PyArg_ParseTuple(args, "UO|O:define", &name, &load, &unload))
        return NULL;
    if (!unload)
        return do_define(self, name, load, kw);
    /* unload may come third by position, as in define(name, load, unload). */
    PyObject *k = kw ? PyDict_Copy(kw) : PyDict_New();
    if (!k)
        return NULL;
    PyObject *r = NULL;
    if (PyDict_GetItemString(k, "unload"))
        PyErr_SetString(PyExc_TypeError, "define() got unload twice");
    else if (PyDict_SetItemString(k, "unload", unload) == 0)
        r = do_define(self, name, load, k);
    Py_DECREF(k);
    return r;
}

/* @m.component(...) */
typedef struct {
    PyObject_HEAD
    Manager *mgr;
    PyObject *name; /* NULL = the function's __name__ */
    PyObject *kw;
} ComponentDecorator;

static PyObject *Manager_component(Manager *self, PyObject *args, PyObject *kw)
{
    PyObject *name = NULL;
    if (!PyArg_ParseTuple(args, "|U:component", &name))
        return NULL;
    ComponentDecorator *d = PyObject_New(ComponentDecorator, &ComponentDecoratorType);
    if (!d)
        return NULL;
    d->mgr = (Manager *)Py_NewRef(self);
    d->name = Py_XNewRef(name);
    d->kw = kw ? PyDict_Copy(kw) : PyDict_New();
    if (!d->kw) {
        Py_DECREF(d);
        return NULL;
    }
    return (PyObject *)d;
}

static PyObject *ComponentDecorator_call(ComponentDecorator *d, PyObject *args, PyObject *kw)
{
    PyObject *fn;
    if (!PyArg_ParseTuple(args, "O:component", &fn))
        return NULL;
    PyObject *name = d->name ? Py_NewRef(d->name) : PyObject_GetAttrString(fn, "__name__");
    if (!name)
        return NULL;
    PyObject *r = do_define(d->mgr, name, fn, d->kw);
    Py_DECREF(name);
    if (!r)
        return NULL;
    Py_DECREF(r);
    return Py_NewRef(fn);
}

static void ComponentDecorator_dealloc(ComponentDecorator *d)
{
    Py_XDECREF(d->mgr);
    Py_XDECREF(d->name);
    Py_XDECREF(d->kw);
    PyObject_Free(d);
}

/* ---- leases -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Manager *mgr;        /* strong: a lease keeps its manager */
    larder_lease *l;     /* NULL once released */
    PyObject *value;     /* the instance, else the model (strong while held) */
    PyObject *served_by, *requested;
    bool cold;
    double wait_ms, load_ms;
} Lease;

/* `requested` may be the name object the caller passed (it is reused when the requested
 * component served, the common case: no string is made per lease). */
static PyObject *lease_new_named(Manager *mgr, larder_lease *l, PyObject *requested)
{
    Lease *o = PyObject_New(Lease, &LeaseType);
    if (!o) {
        larder_release(l);
        return NULL;
    }
    o->mgr = (Manager *)Py_NewRef(mgr);
    o->l = l;
    PyObject *v = larder_lease_instance(l);
    if (!v)
        v = larder_lease_model(l);
    o->value = Py_NewRef(v);
    const char *req = larder_lease_requested(l), *by = larder_lease_served_by(l);
    o->requested = requested ? Py_NewRef(requested) : PyUnicode_FromString(req);
    o->served_by = strcmp(req, by) == 0 ? Py_XNewRef(o->requested) : PyUnicode_FromString(by);
    o->cold = larder_lease_cold_start(l);
    o->wait_ms = larder_lease_wait_ms(l);
    o->load_ms = larder_lease_load_ms(l);
    if (!o->served_by || !o->requested) {
        Py_DECREF(o);
        return NULL;
    }
    return (PyObject *)o;
}

static PyObject *lease_new(Manager *mgr, larder_lease *l)
{
    return lease_new_named(mgr, l, NULL);
}

static void lease_release(Lease *o)
{
    larder_lease *l = o->l;
    if (!l)
        return;
    o->l = NULL;
    /* The value goes first: the release may unload the model (ttl 0, close). */
    Py_CLEAR(o->value);
    larder_release(l);
}

static void Lease_dealloc(Lease *o)
{
    lease_release(o);
    Py_XDECREF(o->served_by);
    Py_XDECREF(o->requested);
    Py_XDECREF(o->mgr);
    PyObject_Free(o);
}

static PyObject *Lease_enter(Lease *o, PyObject *unused)
{
    if (!o->l) {
        PyErr_SetString(PyExc_RuntimeError, "the lease was already released");
        return NULL;
    }
    return Py_NewRef(o->value);
}

static PyObject *Lease_exit(Lease *o, PyObject *const *args, Py_ssize_t nargs)
{
    lease_release(o);
    Py_RETURN_FALSE;
}

static PyObject *Lease_release(Lease *o, PyObject *unused)
{
    lease_release(o);
    Py_RETURN_NONE;
}

static PyObject *Lease_get_value(Lease *o, void *c)
{
    if (!o->l) {
        PyErr_SetString(PyExc_RuntimeError, "the lease was already released");
        return NULL;
    }
    return Py_NewRef(o->value);
}

static PyObject *Lease_get_released(Lease *o, void *c)
{
    return PyBool_FromLong(o->l == NULL);
}

/* ---- waiting for liblarder's asynchronous answer ------------------------------------------ */

enum { W_PENDING, W_DONE, W_ABANDONED };

struct syncw {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state;
    int err;
    larder_lease *lease;
};

static void syncw_cb(void *ud, int err, larder_lease *lease)
{
    struct syncw *w = ud;
    pthread_mutex_lock(&w->mu);
    if (w->state == W_ABANDONED) {
        pthread_mutex_unlock(&w->mu);
        larder_release(lease);
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return;
    }
    w->err = err;
    w->lease = lease;
    w->state = W_DONE;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Waits on cv under mu until *done, in slices of 100 ms on the main thread so that signal
 * handlers run between them. Called with the GIL; releases it while waiting. Returns 0, or
 * -1 with the handler's exception set (mu unlocked either way). */
static int wait_interruptible(pthread_mutex_t *mu, pthread_cond_t *cv, const int *state,
                              int64_t deadline_ms)
{
    bool main_thread = _PyOS_IsMainThread();
    for (;;) {
        bool done;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(mu);
        if (*state == W_PENDING) {
            if (main_thread || deadline_ms >= 0) {
                int64_t slice = 100;
                if (deadline_ms >= 0 && deadline_ms - now_ms() < slice)
                    slice = deadline_ms - now_ms() > 0 ? deadline_ms - now_ms() : 0;
                struct timespec ts;
                deadline_in(&ts, slice);
                pthread_cond_timedwait(cv, mu, &ts);
            } else {
                pthread_cond_wait(cv, mu);
            }
        }
        done = *state != W_PENDING;
        pthread_mutex_unlock(mu);
        Py_END_ALLOW_THREADS
        if (done)
            return 0;
        if (main_thread && PyErr_CheckSignals() < 0)
            return -1;
        if (deadline_ms >= 0 && now_ms() >= deadline_ms)
            return 1;
    }
}

static PyObject *acquire_lease(Manager *self, PyObject *name_obj, int64_t timeout,
                               unsigned flags)
{
    if (!mgr_open(self))
        return NULL;
    const char *name = PyUnicode_AsUTF8(name_obj);
    if (!name)
        return NULL;
    /* The warm path: a grant that waits for nothing (lock-free for shared classes). A cold
     * component starts loading here, and the wait below joins that load. */
    larder_lease *l = NULL;
    int r = larder_acquire_flags(self->m, name, LARDER_NO_WAIT, LARDER_ACQUIRE_NO_FALLBACK, &l);
    if (r == 0)
        return lease_new_named(self, l, name_obj);
    if (r == LARDER_ENOTFOUND || r == -EINVAL || r == LARDER_ECLOSED)
        return raise_larder(self->sh, r, name);
    struct syncw *w = calloc(1, sizeof *w);
    if (!w)
        return PyErr_NoMemory();
    pthread_mutex_init(&w->mu, NULL);
    cond_init_mono(&w->cv);
    /* Never waits on a load: an answer that is ready comes at once, on this thread. */
    r = larder_acquire_async_flags(self->m, name, timeout, flags, syncw_cb, w);
    if (r < 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return raise_larder(self->sh, r, name);
    }
    pthread_mutex_lock(&w->mu);
    bool done = w->state == W_DONE;
    pthread_mutex_unlock(&w->mu);
    if (!done && wait_interruptible(&w->mu, &w->cv, &w->state, -1) < 0) {
        pthread_mutex_lock(&w->mu);
        if (w->state == W_PENDING) {
            w->state = W_ABANDONED; /* the answer releases its lease and frees w */
            pthread_mutex_unlock(&w->mu);
            return NULL;
        }
        pthread_mutex_unlock(&w->mu);
        larder_release(w->lease); /* answered meanwhile; the interrupt wins */
        w->lease = NULL;
    }
    int err = w->err;
    l = w->lease;
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    if (PyErr_Occurred())
        return NULL;
    if (err < 0)
        return raise_larder(self->sh, err, name);
    return lease_new_named(self, l, name_obj);
}

/* acquire(name, timeout=30, *, fallback=True): parsed by hand, it is the hot path. */
static PyObject *Manager_acquire(Manager *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PyObject *name = NULL, *timeout = NULL, *fallback = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 - (nkw > 0) || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "acquire(name, timeout=30, *, fallback=True)");
        return NULL;
    }
    name = nargs > 0 ? args[0] : NULL;
    timeout = nargs > 1 ? args[1] : NULL;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        const char *k = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, i));
        PyObject **slot = !k                            ? NULL
                          : strcmp(k, "name") == 0     ? &name
                          : strcmp(k, "timeout") == 0  ? &timeout
                          : strcmp(k, "fallback") == 0 ? &fallback
                                                       : NULL;
        if (!slot || *slot) {
            PyErr_Format(PyExc_TypeError, "acquire() got an unexpected or repeated argument '%s'",
                         k ? k : "?");
            return NULL;
        }
        *slot = args[nargs + i];
    }
    if (!name || !PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "acquire() needs a component name (str)");
        return NULL;
    }
    int64_t t = 30000;
    if (timeout && parse_timeout(timeout, &t) < 0)
        return NULL;
    int fb = fallback ? PyObject_IsTrue(fallback) : 1;
    if (fb < 0)
        return NULL;
    return acquire_lease(self, name, t, fb ? 0 : LARDER_ACQUIRE_NO_FALLBACK);
}

/* ---- asyncio ----------------------------------------------------------------------------------
 *
 * liblarder's async acquire calls back on whichever thread answers; the callback takes the
 * GIL only to hand the result to the event loop with call_soon_threadsafe, and the loop's
 * own thread resolves the future. The loop is never blocked. */

typedef struct {
    PyObject_HEAD
    Manager *mgr;
    PyObject *name;
    int64_t timeout;
    unsigned flags;
    PyObject *lease; /* Lease, once resolved */
    bool entered;
} AsyncLease;

struct areq {
    Manager *mgr;        /* strong */
    PyObject *loop, *fut; /* strong */
    AsyncLease *owner;   /* strong */
};

static PyObject *resolve_fn; /* module function _resolve(owner, fut, result) */

static void areq_free(struct areq *q)
{
    Py_XDECREF(q->mgr);
    Py_XDECREF(q->loop);
    Py_XDECREF(q->fut);
    Py_XDECREF(q->owner);
    free(q);
}

static void async_cb(void *ud, int err, larder_lease *lease)
{
    struct areq *q = ud;
    if (!interp_alive()) {
        larder_release(lease); /* q and its objects go with the process */
        return;
    }
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *res;
    if (err == 0) {
        res = lease_new(q->mgr, lease);
    } else {
        const char *name = PyUnicode_AsUTF8(q->owner->name);
        res = make_error(q->mgr->sh, err, name, NULL);
    }
    PyObject *ok = NULL;
    if (res)
        ok = PyObject_CallMethod(q->loop, "call_soon_threadsafe", "OOOO", resolve_fn, q->owner,
                                 q->fut, res);
    if (!ok) {
        /* The loop is closed (or out of memory): nobody will take the lease. */
        PyErr_Clear();
        if (res && Py_IS_TYPE(res, &LeaseType))
            lease_release((Lease *)res);
    }
    Py_XDECREF(ok);
    Py_XDECREF(res);
    areq_free(q);
    PyGILState_Release(g);
}

/* On the loop's thread. */
static PyObject *module_resolve(PyObject *mod, PyObject *args)
{
    AsyncLease *owner;
    PyObject *fut, *res;
    if (!PyArg_ParseTuple(args, "O!OO", &AsyncLeaseType, &owner, &fut, &res))
        return NULL;
    bool is_lease = Py_IS_TYPE(res, &LeaseType);
    PyObject *cancelled = PyObject_CallMethod(fut, "done", NULL);
    if (!cancelled)
        return NULL;
    int done = PyObject_IsTrue(cancelled);
    Py_DECREF(cancelled);
    if (done) {
        /* The awaiting task was canceled: the lease goes straight back. */
        if (is_lease)
            lease_release((Lease *)res);
        Py_RETURN_NONE;
    }
    PyObject *r;
    if (is_lease) {
        Py_XSETREF(owner->lease, Py_NewRef(res));
        r = PyObject_CallMethod(fut, "set_result", "O", ((Lease *)res)->value);
    } else {
        r = PyObject_CallMethod(fut, "set_exception", "O", res);
    }
    Py_XDECREF(r);
    return r ? Py_NewRef(Py_None) : NULL;
}

static PyObject *Manager_acquire_async(Manager *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"name", "timeout", "fallback", NULL};
    PyObject *name, *timeout = NULL;
    int fallback = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|O$p:acquire_async", kwlist, &name, &timeout,
                                     &fallback))
        return NULL;
    int64_t t = 30000;
    if (timeout && parse_timeout(timeout, &t) < 0)
        return NULL;
    AsyncLease *a = PyObject_New(AsyncLease, &AsyncLeaseType);
    if (!a)
        return NULL;
    a->mgr = (Manager *)Py_NewRef(self);
    a->name = Py_NewRef(name);
    a->timeout = t;
    a->flags = fallback ? 0 : LARDER_ACQUIRE_NO_FALLBACK;
    a->lease = NULL;
    a->entered = false;
    return (PyObject *)a;
}

static PyObject *asyncio_mod;

static PyObject *running_loop(void)
{
    return PyObject_CallMethod(asyncio_mod, "get_running_loop", NULL);
}

static PyObject *AsyncLease_aenter(AsyncLease *a, PyObject *unused)
{
    if (a->entered) {
        PyErr_SetString(PyExc_RuntimeError, "acquire_async() can be entered once");
        return NULL;
    }
    if (!mgr_open(a->mgr))
        return NULL;
    const char *name = PyUnicode_AsUTF8(a->name);
    if (!name)
        return NULL;
    PyObject *loop = running_loop();
    if (!loop)
        return NULL;
    PyObject *fut = PyObject_CallMethod(loop, "create_future", NULL);
    if (!fut) {
        Py_DECREF(loop);
        return NULL;
    }
    struct areq *q = calloc(1, sizeof *q);
    if (!q) {
        Py_DECREF(loop);
        Py_DECREF(fut);
        return PyErr_NoMemory();
    }
    q->mgr = (Manager *)Py_NewRef(a->mgr);
    q->loop = loop;
    q->fut = Py_NewRef(fut);
    q->owner = (AsyncLease *)Py_NewRef(a);
    a->entered = true;
    int r = larder_acquire_async_flags(a->mgr->m, name, a->timeout, a->flags, async_cb, q);
    if (r < 0) {
        areq_free(q);
        Py_DECREF(fut);
        return raise_larder(a->mgr->sh, r, name);
    }
    return fut;
}

static PyObject *AsyncLease_aexit(AsyncLease *a, PyObject *args)
{
    if (a->lease)
        lease_release((Lease *)a->lease);
    Py_CLEAR(a->lease);
    PyObject *loop = running_loop();
    if (!loop)
        return NULL;
    PyObject *fut = PyObject_CallMethod(loop, "create_future", NULL);
    Py_DECREF(loop);
    if (!fut)
        return NULL;
    PyObject *r = PyObject_CallMethod(fut, "set_result", "O", Py_False);
    if (!r) {
        Py_DECREF(fut);
        return NULL;
    }
    Py_DECREF(r);
    return fut;
}

static PyObject *AsyncLease_get_lease(AsyncLease *a, void *c)
{
    return Py_NewRef(a->lease ? a->lease : Py_None);
}

static void AsyncLease_dealloc(AsyncLease *a)
{
    if (a->lease)
        lease_release((Lease *)a->lease);
    Py_XDECREF(a->lease);
    Py_XDECREF(a->name);
    Py_XDECREF(a->mgr);
    PyObject_Free(a);
}

/* ---- blocking calls on a helper thread --------------------------------------------------------
 *
 * liblarder's set acquire and drain block; a helper thread runs them while the caller waits
 * interruptibly. Interrupted, the caller abandons the job, and the job cleans up after itself
 * (releases the leases it got). */

struct job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state;
    struct shared *sh;
    larder *m;
    int kind; /* JOB_SET, JOB_UNLOAD, JOB_UNDEFINE */
    char **names;
    size_t n;
    int64_t timeout;
    larder_lease **leases;
    int rc;
};

enum { JOB_SET, JOB_UNLOAD, JOB_UNDEFINE };

static void job_free(struct job *j)
{
    for (size_t i = 0; i < j->n; i++)
        free(j->names[i]);
    free(j->names);
    free(j->leases);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

static void *job_main(void *arg)
{
    struct job *j = arg;
    if (j->kind == JOB_SET)
        j->rc = larder_acquire_set(j->m, (const char *const *)j->names, j->n, j->timeout,
                                   j->leases);
    else if (j->kind == JOB_UNLOAD)
        j->rc = larder_unload(j->m, j->names[0], j->timeout);
    else
        j->rc = larder_undefine(j->m, j->names[0], j->timeout);
    struct shared *sh = j->sh;
    pthread_mutex_lock(&j->mu);
    bool abandoned = j->state == W_ABANDONED;
    j->state = W_DONE;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (abandoned) {
        if (j->kind == JOB_SET && j->rc == 0)
            for (size_t i = 0; i < j->n; i++)
                larder_release(j->leases[i]);
        job_free(j);
    }
    busy_leave(sh);
    return NULL;
}

static struct job *job_new(Manager *self, int kind, size_t n, int64_t timeout)
{
    struct job *j = calloc(1, sizeof *j);
    if (j) {
        j->names = calloc(n, sizeof *j->names);
        j->leases = calloc(n, sizeof *j->leases);
    }
    if (!j || !j->names || !j->leases) {
        if (j) {
            free(j->names);
            free(j->leases);
        }
        free(j);
        PyErr_NoMemory();
        return NULL;
    }
    pthread_mutex_init(&j->mu, NULL);
    cond_init_mono(&j->cv);
    j->kind = kind;
    j->n = n;
    j->timeout = timeout;
    j->sh = self->sh;
    j->m = self->m;
    return j;
}

/* Runs j; 0 when it finished (j->rc says how), -1 with an exception set. */
static int job_run(struct job *j)
{
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    busy_enter(j->sh);
    int e = pthread_create(&t, &at, job_main, j);
    pthread_attr_destroy(&at);
    if (e) {
        busy_leave(j->sh);
        job_free(j);
        errno = e;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (wait_interruptible(&j->mu, &j->cv, &j->state, -1) < 0) {
        pthread_mutex_lock(&j->mu);
        if (j->state == W_PENDING) {
            j->state = W_ABANDONED;
            pthread_mutex_unlock(&j->mu);
            return -1;
        }
        pthread_mutex_unlock(&j->mu);
        if (j->kind == JOB_SET && j->rc == 0)
            for (size_t i = 0; i < j->n; i++)
                larder_release(j->leases[i]);
        job_free(j);
        return -1;
    }
    return 0;
}

typedef struct {
    PyObject_HEAD
    PyObject *leases; /* tuple of Lease */
} LeaseSet;

static PyObject *Manager_acquire_set(Manager *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"names", "timeout", NULL};
    PyObject *names, *timeout = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:acquire_set", kwlist, &names, &timeout))
        return NULL;
    int64_t t = 30000;
    if (timeout && parse_timeout(timeout, &t) < 0)
        return NULL;
    if (PyUnicode_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "acquire_set takes a list of names, not one string");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(names, "acquire_set takes a list of names");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > 4096) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "acquire_set takes 1..4096 names");
        return NULL;
    }
    if (!mgr_open(self)) {
        Py_DECREF(seq);
        return NULL;
    }
    struct job *j = job_new(self, JOB_SET, (size_t)n, t);
    if (!j) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        const char *s = PyUnicode_Check(it) ? PyUnicode_AsUTF8(it) : NULL;
        if (!s || !(j->names[i] = strdup(s))) {
            Py_DECREF(seq);
            job_free(j);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "component names must be strings");
            return NULL;
        }
    }
    Py_DECREF(seq);
    if (job_run(j) < 0)
        return NULL;
    if (j->rc < 0) {
        /* Which member failed is not reported by a set; a failed load names itself. */
        const char *who = NULL;
        for (size_t i = 0; i < j->n && !who; i++)
            if (PyDict_GetItemString(self->sh->errors, j->names[i]))
                who = j->names[i];
        if (j->rc == LARDER_ENOTFOUND || !who)
            who = j->n == 1 ? j->names[0] : NULL;
        char joined[256] = "";
        if (!who) {
            size_t off = 0;
            for (size_t i = 0; i < j->n && off < sizeof joined - 1; i++)
                off += (size_t)snprintf(joined + off, sizeof joined - off, "%s%s", i ? "," : "",
                                        j->names[i]);
            who = joined;
        }
        raise_larder(self->sh, j->rc, who);
        job_free(j);
        return NULL;
    }
    LeaseSet *ls = PyObject_New(LeaseSet, &LeaseSetType);
    PyObject *tup = ls ? PyTuple_New(n) : NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *l = tup ? lease_new(self, j->leases[i]) : NULL;
        if (!l) {
            for (Py_ssize_t k = tup ? i + 1 : i; k < n; k++)
                larder_release(j->leases[k]);
            if (!tup)
                break;
            Py_DECREF(tup);
            tup = NULL;
            continue;
        }
        PyTuple_SET_ITEM(tup, i, l);
    }
    job_free(j);
    if (!tup) {
        Py_XDECREF(ls);
        return NULL;
    }
    ls->leases = tup;
    return (PyObject *)ls;
}

static void LeaseSet_dealloc(LeaseSet *s)
{
    Py_XDECREF(s->leases); /* each Lease releases itself */
    PyObject_Free(s);
}

static PyObject *LeaseSet_release(LeaseSet *s, PyObject *unused)
{
    for (Py_ssize_t i = 0; s->leases && i < PyTuple_GET_SIZE(s->leases); i++)
        lease_release((Lease *)PyTuple_GET_ITEM(s->leases, i));
    Py_RETURN_NONE;
}

static PyObject *LeaseSet_enter(LeaseSet *s, PyObject *unused)
{
    Py_ssize_t n = PyTuple_GET_SIZE(s->leases);
    PyObject *vals = PyTuple_New(n);
    for (Py_ssize_t i = 0; vals && i < n; i++) {
        PyObject *v = Lease_get_value((Lease *)PyTuple_GET_ITEM(s->leases, i), NULL);
        if (!v) {
            Py_CLEAR(vals);
            break;
        }
        PyTuple_SET_ITEM(vals, i, v);
    }
    return vals;
}

static PyObject *LeaseSet_exit(LeaseSet *s, PyObject *args)
{
    PyObject *r = LeaseSet_release(s, NULL);
    Py_XDECREF(r);
    Py_RETURN_FALSE;
}

/* ---- explicit control ----------------------------------------------------------------------- */

/* unload(name, timeout=30) and undefine(name, timeout=30): drains, on a helper thread. */
static PyObject *drain_call(Manager *self, PyObject *args, PyObject *kw, int kind,
                            const char *format)
{
    static char *kwlist[] = {"name", "timeout", NULL};
    const char *name;
    PyObject *timeout = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, format, kwlist, &name, &timeout))
        return NULL;
    int64_t t = 30000;
    if ((timeout && parse_timeout(timeout, &t) < 0) || !mgr_open(self))
        return NULL;
    struct job *j = job_new(self, kind, 1, t);
    if (!j)
        return NULL;
    if (!(j->names[0] = strdup(name))) {
        job_free(j);
        return PyErr_NoMemory();
    }
    if (job_run(j) < 0)
        return NULL;
    int rc = j->rc;
    job_free(j);
    if (rc < 0)
        return raise_larder(self->sh, rc, name);
    Py_RETURN_NONE;
}

static PyObject *Manager_unload(Manager *self, PyObject *args, PyObject *kw)
{
    return drain_call(self, args, kw, JOB_UNLOAD, "s|O:unload");
}

static PyObject *Manager_undefine(Manager *self, PyObject *args, PyObject *kw)
{
    return drain_call(self, args, kw, JOB_UNDEFINE, "s|O:undefine");
}

static PyObject *Manager_trim(Manager *self, PyObject *unused)
{
    if (!mgr_open(self))
        return NULL;
    struct larder_trim_result tr = {.struct_size = sizeof tr};
    int r;
    larder *m = self->m;
    busy_enter(self->sh);
    Py_BEGIN_ALLOW_THREADS
    r = larder_trim(m, &tr);
    Py_END_ALLOW_THREADS
    busy_leave(self->sh);
    if (r < 0)
        return raise_larder(self->sh, r, NULL);
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    PUT_U(d, "components", tr.components);
    PUT_U(d, "instances", tr.instances);
    PUT_U(d, "reserved_freed", tr.reserved_freed);
    PUT_I(d, "rss_freed", tr.rss_freed);
    if (PyErr_Occurred())
        Py_CLEAR(d);
    return d;
}

static PyObject *Manager_preload(Manager *self, PyObject *args)
{
    PyObject *names = NULL;
    if (!PyArg_ParseTuple(args, "|O:preload", &names) || !mgr_open(self))
        return NULL;
    if (!names || names == Py_None) {
        int n = larder_preload_all(self->m);
        if (n < 0)
            return raise_larder(self->sh, n, NULL);
        return PyLong_FromLong(n);
    }
    if (PyUnicode_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "preload takes a list of names, not one string");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(names, "preload takes a list of names");
    if (!seq)
        return NULL;
    /* Every name is checked before any load starts. */
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyUnicode_Check(PySequence_Fast_GET_ITEM(seq, i))) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "component names must be strings");
            return NULL;
        }
    long started = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *s = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
        int r = s ? larder_preload(self->m, s) : -EINVAL;
        if (r < 0) {
            Py_DECREF(seq);
            return s ? raise_larder(self->sh, r, s) : NULL;
        }
        started++;
    }
    Py_DECREF(seq);
    return PyLong_FromLong(started);
}

/* Waits until no preload is pending; True, or False when the timeout ran out. */
static PyObject *Manager_wait_ready(Manager *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait_ready", kwlist, &timeout))
        return NULL;
    int64_t t;
    if (parse_timeout(timeout, &t) < 0 || !mgr_open(self))
        return NULL;
    int64_t deadline = t < 0 ? -1 : now_ms() + t;
    struct shared *sh = self->sh;
    larder *m = self->m;
    bool main_thread = _PyOS_IsMainThread();
    for (;;) {
        unsigned pending;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&sh->mu);
        uint64_t seq = sh->seq;
        pending = larder_preload_pending(m);
        if (pending) {
            /* Each load's end is an event: wake on the next one (or after a slice). */
            struct timespec ts;
            deadline_in(&ts, 100);
            while (sh->seq == seq && pthread_cond_timedwait(&sh->cv, &sh->mu, &ts) == 0)
                ;
        }
        pthread_mutex_unlock(&sh->mu);
        Py_END_ALLOW_THREADS
        if (!pending)
            Py_RETURN_TRUE;
        if (main_thread && PyErr_CheckSignals() < 0)
            return NULL;
        if (deadline >= 0 && now_ms() >= deadline)
            Py_RETURN_FALSE;
    }
}

/* ---- registry and memory, with larderd's fields ----------------------------------------------- */

static PyObject *component_dict(const struct larder_component_info *c)
{
    PyObject *d = PyDict_New(), *inst = PyDict_New(), *mem = PyDict_New(), *lm = PyDict_New();
    if (!d || !inst || !mem || !lm) {
        Py_XDECREF(d);
        Py_XDECREF(inst);
        Py_XDECREF(mem);
        Py_XDECREF(lm);
        return NULL;
    }
    PUT_S(d, "name", c->name);
    PUT_S(d, "backend", c->class_name);
    PUT_S(d, "state", larder_state_name(c->state));
    PUT_B(d, "draining", c->draining);
    PUT_B(d, "pin", c->pin);
    PUT_B(d, "preload", c->preload);
    PUT_I(d, "priority", c->priority);
    PUT_I(d, "ttl_ms", c->ttl_ms);
    PUT_I(d, "expires_in_ms", c->expires_in_ms);
    PUT_S(d, "fallback", c->fallback);
    PUT_U(inst, "created", c->instances);
    PUT_U(inst, "busy", c->instances_busy);
    PUT_U(inst, "max", c->instances_max);
    put(d, "instances", inst);
    PUT_U(d, "leases", c->leases);
    PUT_U(d, "waiters", c->waiters);
    PUT_U(mem, "estimate_bytes", c->estimate_bytes);
    PUT_S(mem, "estimate_source", larder_estimate_source_name(c->estimate_source));
    PUT_U(mem, "measured_bytes", c->measured_bytes);
    PUT_S(mem, "measure_method", larder_measure_method_name(c->measure_method));
    PUT_U(mem, "instance_bytes", c->instance_bytes);
    PUT_U(mem, "reserved_bytes", c->reserved_bytes);
    PUT_I(mem, "last_returned_bytes", c->last_returned_bytes);
    PUT_B(mem, "leak_suspect", c->leak_suspect);
    put(d, "memory", mem);
    PUT_U(d, "loads", c->loads);
    PUT_F(lm, "last", c->load_ms_last);
    PUT_F(lm, "avg", c->load_ms_avg);
    put(d, "load_ms", lm);
    PUT_U(d, "hits", c->hits);
    PUT_U(d, "cold_starts", c->cold_starts);
    PUT_U(d, "evictions", c->evictions);
    PUT_U(d, "failures", c->failures);
    PUT_U(d, "fallbacks_served", c->fallbacks_served);
    if (c->last_error) {
        PyObject *e = PyDict_New();
        if (e) {
            PUT_I(e, "code", c->last_error);
            PUT_S(e, "name", larder_strerror(c->last_error));
            PUT_S(e, "message", c->last_error_message);
        }
        put(d, "last_error", e);
    } else {
        put(d, "last_error", Py_NewRef(Py_None));
    }
    PUT_I(d, "cooldown_ms", c->cooldown_ms);
    if (c->gpu < 0) {
        put(d, "gpu", Py_NewRef(Py_None));
    } else {
        PyObject *g = PyDict_New();
        if (g) {
            PUT_I(g, "index", c->gpu);
            PUT_U(g, "bytes", c->gpu_bytes);
            PUT_U(g, "reserved_bytes", c->gpu_reserved_bytes);
        }
        put(d, "gpu", g);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static int take_snapshot(Manager *self, struct larder_snapshot **s)
{
    if (!mgr_open(self))
        return -1;
    int r = larder_snapshot(self->m, s);
    if (r < 0) {
        raise_larder(self->sh, r, NULL);
        return -1;
    }
    return 0;
}

/* {name: component} in name order, each with the fields of larderd's /v1/models entries. */
static PyObject *Manager_registry(Manager *self, PyObject *unused)
{
    struct larder_snapshot *s;
    if (take_snapshot(self, &s) < 0)
        return NULL;
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < s->n; i++) {
        PyObject *c = component_dict(&s->components[i]);
        if (!c || PyDict_SetItemString(d, s->components[i].name, c) < 0)
            Py_CLEAR(d);
        Py_XDECREF(c);
    }
    larder_snapshot_free(s);
    return d;
}

static PyObject *limit_or_none(uint64_t v)
{
    return v == UINT64_MAX ? Py_NewRef(Py_None) : PyLong_FromUnsignedLongLong(v);
}

static PyObject *memory_process(const struct larder_memory *mem)
{
    PyObject *p = PyDict_New();
    if (!p)
        return NULL;
    PUT_U(p, "rss_bytes", mem->rss_bytes);
    PUT_U(p, "peak_rss_bytes", mem->peak_rss_bytes);
    PUT_U(p, "ram_bytes", mem->ram_bytes);
    PUT_U(p, "available_bytes", mem->available_bytes);
    if (mem->has_rollup) {
        PUT_U(p, "pss_bytes", mem->pss_bytes);
        PUT_U(p, "anon_bytes", mem->anon_bytes);
    }
    return p;
}

static PyObject *memory_cgroup(const struct larder_memory *mem)
{
    if (!mem->cgroup_version)
        return Py_NewRef(Py_None);
    PyObject *c = PyDict_New(), *ev = PyDict_New();
    if (!c || !ev) {
        Py_XDECREF(c);
        Py_XDECREF(ev);
        return NULL;
    }
    PUT_I(c, "version", mem->cgroup_version);
    PUT_U(c, "current_bytes", mem->cgroup_current);
    put(c, "max_bytes", limit_or_none(mem->cgroup_max));
    put(c, "high_bytes", limit_or_none(mem->cgroup_high));
    PUT_U(ev, "high", mem->cgroup_high_events);
    PUT_U(ev, "max", mem->cgroup_max_events);
    PUT_U(ev, "oom", mem->cgroup_oom);
    PUT_U(ev, "oom_kill", mem->cgroup_oom_kill);
    put(c, "events", ev);
    return c;
}

static PyObject *memory_psi(const struct larder_memory *mem)
{
    if (!mem->has_psi)
        return Py_NewRef(Py_None);
    return Py_BuildValue("{s:{s:d,s:d,s:d},s:{s:d,s:d,s:d}}", "some", "avg10",
                         mem->psi_some_avg10, "avg60", mem->psi_some_avg60, "avg300",
                         mem->psi_some_avg300, "full", "avg10", mem->psi_full_avg10, "avg60",
                         mem->psi_full_avg60, "avg300", mem->psi_full_avg300);
}

static PyObject *memory_history(const struct larder_memory *mem)
{
    PyObject *a = PyList_New(0);
    for (size_t i = 0; a && i < mem->n_history; i++) {
        const struct larder_history_entry *e = &mem->history[i];
        PyObject *o = PyDict_New();
        if (!o) {
            Py_CLEAR(a);
            break;
        }
        PUT_I(o, "time_ms", e->time_ms);
        PUT_S(o, "kind", larder_history_kind_name(e->kind));
        if (e->kind == LARDER_HISTORY_SAMPLE) {
            PUT_U(o, "rss_bytes", e->rss_bytes);
            PUT_U(o, "reserved_bytes", e->reserved_bytes);
            PUT_U(o, "cgroup_bytes", e->cgroup_bytes);
            PUT_F(o, "psi_some_avg10", e->psi_some_avg10);
        } else {
            if (e->name[0])
                PUT_S(o, "name", e->name);
            PUT_I(o, "bytes", e->bytes);
        }
        if (PyList_Append(a, o) < 0)
            Py_CLEAR(a);
        Py_DECREF(o);
    }
    return a;
}

static PyObject *memory_gpus(const struct larder_memory *mem, const struct larder_snapshot *s,
                             PyObject **ret_budgets)
{
    PyObject *a = PyList_New(0), *b = PyList_New(0);
    for (unsigned i = 0; a && i < mem->n_gpus; i++) {
        PyObject *g = Py_BuildValue("{s:I,s:s,s:K,s:K,s:K}", "index", i, "name",
                                    mem->gpus[i].name, "total_bytes",
                                    (unsigned long long)mem->gpus[i].total_bytes, "used_bytes",
                                    (unsigned long long)mem->gpus[i].used_bytes, "free_bytes",
                                    (unsigned long long)mem->gpus[i].free_bytes);
        if (!g || PyList_Append(a, g) < 0)
            Py_CLEAR(a);
        Py_XDECREF(g);
    }
    for (unsigned g = 0; b && g < LARDER_MAX_GPUS; g++) {
        if (!s->gpu_budget_bytes[g] && !s->gpu_reserved_bytes[g])
            continue;
        PyObject *o = Py_BuildValue("{s:I,s:K,s:K}", "index", g, "budget_bytes",
                                    (unsigned long long)s->gpu_budget_bytes[g], "reserved_bytes",
                                    (unsigned long long)s->gpu_reserved_bytes[g]);
        if (!o || PyList_Append(b, o) < 0)
            Py_CLEAR(b);
        Py_XDECREF(o);
    }
    *ret_budgets = b;
    return a;
}

static PyObject *memory_components(const struct larder_snapshot *s)
{
    PyObject *a = PyList_New(0);
    for (size_t i = 0; a && i < s->n; i++) {
        const struct larder_component_info *c = &s->components[i];
        if (c->state == LARDER_STATE_UNLOADED && !c->reserved_bytes)
            continue;
        PyObject *o = Py_BuildValue("{s:s,s:s,s:K,s:K,s:K,s:L}", "name", c->name, "state",
                                    larder_state_name(c->state), "reserved_bytes",
                                    (unsigned long long)c->reserved_bytes, "estimate_bytes",
                                    (unsigned long long)c->estimate_bytes, "measured_bytes",
                                    (unsigned long long)c->measured_bytes, "last_returned_bytes",
                                    (long long)c->last_returned_bytes);
        if (!o || PyList_Append(a, o) < 0)
            Py_CLEAR(a);
        Py_XDECREF(o);
    }
    return a;
}

/* The fields of larderd's /v1/memory (less its HTTP request accounting). */
static PyObject *Manager_memory(Manager *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"history", NULL};
    Py_ssize_t hist = 60;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|n:memory", kwlist, &hist))
        return NULL;
    if (hist < 0 || hist > 86400) {
        PyErr_SetString(PyExc_ValueError, "history must be 0..86400");
        return NULL;
    }
    struct larder_snapshot *s;
    if (take_snapshot(self, &s) < 0)
        return NULL;
    struct larder_memory *mem = NULL;
    int r;
    larder *m = self->m;
    busy_enter(self->sh);
    Py_BEGIN_ALLOW_THREADS
    r = larder_memory(m, (size_t)hist, &mem);
    Py_END_ALLOW_THREADS
    busy_leave(self->sh);
    if (r < 0) {
        larder_snapshot_free(s);
        return raise_larder(self->sh, r, NULL);
    }
    PyObject *d = PyDict_New(), *w = PyDict_New();
    if (d && w) {
        PUT_U(d, "budget_bytes", mem->budget_bytes);
        PUT_U(d, "reserved_bytes", mem->reserved_bytes);
        PUT_U(d, "limit_bytes", mem->limit_bytes);
        PUT_S(d, "limit_source", mem->limit_source);
        PUT_U(w, "high_bytes", mem->high_bytes);
        PUT_U(w, "low_bytes", mem->low_bytes);
        PUT_U(w, "usage_bytes", mem->usage_bytes);
        PUT_B(w, "under_pressure", mem->under_pressure);
        PUT_U(w, "pressure_events", mem->pressure_events);
        PUT_U(w, "pressure_evictions", mem->pressure_evictions);
        if (mem->pressure_watch_error)
            PUT_I(w, "pressure_watch_error", mem->pressure_watch_error);
        put(d, "watermarks", Py_NewRef(w));
        put(d, "process", memory_process(mem));
        put(d, "cgroup", memory_cgroup(mem));
        put(d, "psi", memory_psi(mem));
        PUT_S(d, "psi_trigger", mem->pressure_watch);
        PyObject *budgets = NULL;
        put(d, "gpus", memory_gpus(mem, s, &budgets));
        put(d, "gpu_budgets", budgets);
        put(d, "history", memory_history(mem));
        PUT_S(d, "policy", s->policy);
        put(d, "components", memory_components(s));
    }
    Py_XDECREF(w);
    larder_memory_free(mem);
    larder_snapshot_free(s);
    if (d && PyErr_Occurred())
        Py_CLEAR(d);
    return d;
}

/* ---- events ------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Manager *mgr;
    uint64_t seq;
    int64_t timeout; /* per event; -1 = none */
    uint64_t lost;
} EventIter;

static PyObject *Manager_events(Manager *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout", "past", NULL};
    PyObject *timeout = NULL;
    int past = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O$p:events", kwlist, &timeout, &past))
        return NULL;
    int64_t t;
    if (parse_timeout(timeout, &t) < 0 || !mgr_open(self))
        return NULL;
    EventIter *it = PyObject_New(EventIter, &EventIterType);
    if (!it)
        return NULL;
    it->mgr = (Manager *)Py_NewRef(self);
    pthread_mutex_lock(&self->sh->mu);
    uint64_t head = self->sh->seq;
    pthread_mutex_unlock(&self->sh->mu);
    it->seq = past ? (head > RING ? head - RING : 0) : head;
    it->timeout = t;
    it->lost = 0;
    return (PyObject *)it;
}

static PyObject *EventIter_next(EventIter *it)
{
    struct shared *sh = it->mgr->sh;
    if (!sh)
        return NULL;
    int64_t deadline = it->timeout < 0 ? -1 : now_ms() + it->timeout;
    bool main_thread = _PyOS_IsMainThread();
    for (;;) {
        struct evrec e;
        bool have = false, closed;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&sh->mu);
        if (sh->seq == it->seq && !sh->closed) {
            struct timespec ts;
            int64_t slice = 100;
            if (deadline >= 0 && deadline - now_ms() < slice)
                slice = deadline - now_ms() > 0 ? deadline - now_ms() : 0;
            deadline_in(&ts, slice);
            pthread_cond_timedwait(&sh->cv, &sh->mu, &ts);
        }
        if (sh->seq > it->seq) {
            if (sh->seq - it->seq > RING) {
                it->lost += sh->seq - it->seq - RING;
                it->seq = sh->seq - RING;
            }
            e = sh->ring[it->seq % RING];
            it->seq++;
            have = true;
        }
        closed = sh->closed;
        pthread_mutex_unlock(&sh->mu);
        Py_END_ALLOW_THREADS
        if (have)
            return event_dict(&e);
        if (closed)
            return NULL; /* StopIteration: the manager closed */
        if (main_thread && PyErr_CheckSignals() < 0)
            return NULL;
        if (deadline >= 0 && now_ms() >= deadline)
            return NULL;
    }
}

static PyObject *EventIter_get_lost(EventIter *it, void *c)
{
    return PyLong_FromUnsignedLongLong(it->lost);
}

static void EventIter_dealloc(EventIter *it)
{
    Py_XDECREF(it->mgr);
    PyObject_Free(it);
}

/* ---- type tables ------------------------------------------------------------------------------- */

static PyMethodDef Manager_methods[] = {
    {"close", (PyCFunction)Manager_close, METH_NOARGS,
     "Close: fail waiters, wait for loads, unload what is idle."},
    {"__enter__", (PyCFunction)Manager_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Manager_exit, METH_VARARGS, NULL},
    {"define", (PyCFunction)(void (*)(void))Manager_define, METH_VARARGS | METH_KEYWORDS,
     "define(name, load, unload=None, *, memory=None, ttl=None, instances=None, "
     "new_instance=None, free_instance=None, pin=False, priority=0, fallback=None, "
     "preload=False)"},
    {"component", (PyCFunction)(void (*)(void))Manager_component, METH_VARARGS | METH_KEYWORDS,
     "Decorator form of define(): @m.component(memory='1GiB') on the load function."},
    {"undefine", (PyCFunction)(void (*)(void))Manager_undefine, METH_VARARGS | METH_KEYWORDS,
     "undefine(name, timeout=30): drain, unload and drop a definition."},
    {"acquire", (PyCFunction)(void (*)(void))Manager_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(name, timeout=30, *, fallback=True) -> Lease (a context manager)."},
    {"acquire_async", (PyCFunction)(void (*)(void))Manager_acquire_async,
     METH_VARARGS | METH_KEYWORDS,
     "acquire_async(name, timeout=30, *, fallback=True): `async with` it."},
    {"acquire_set", (PyCFunction)(void (*)(void))Manager_acquire_set,
     METH_VARARGS | METH_KEYWORDS, "acquire_set(names, timeout=30) -> LeaseSet: all or none."},
    {"unload", (PyCFunction)(void (*)(void))Manager_unload, METH_VARARGS | METH_KEYWORDS,
     "unload(name, timeout=30): drain its leases, then unload."},
    {"trim", (PyCFunction)Manager_trim, METH_NOARGS,
     "Evict everything idle and unpinned, malloc_trim, report what was freed."},
    {"preload", (PyCFunction)Manager_preload, METH_VARARGS,
     "preload(names=None): start loads in parallel within the budget."},
    {"wait_ready", (PyCFunction)(void (*)(void))Manager_wait_ready, METH_VARARGS | METH_KEYWORDS,
     "wait_ready(timeout=None) -> bool: wait until no preload is pending."},
    {"registry", (PyCFunction)Manager_registry, METH_NOARGS,
     "{name: component} with the fields of larderd's /v1/models."},
    {"memory", (PyCFunction)(void (*)(void))Manager_memory, METH_VARARGS | METH_KEYWORDS,
     "memory(history=60): the fields of larderd's /v1/memory."},
    {"events", (PyCFunction)(void (*)(void))Manager_events, METH_VARARGS | METH_KEYWORDS,
     "events(timeout=None, *, past=False): iterator of event dicts."},
    {NULL},
};

static PyGetSetDef Manager_getset[] = {
    {"closed", (getter)Manager_get_closed, NULL, "True once closed", NULL},
    {"budget", (getter)Manager_get_budget, (setter)Manager_set_budget, "budget in bytes", NULL},
    {NULL},
};

static PyTypeObject ManagerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "larder.Manager",
    .tp_basicsize = sizeof(Manager),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Manager(budget='4GiB', policy='cost', ttl='5m', state_dir=None, on_event=None)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Manager_init,
    .tp_dealloc = (destructor)Manager_dealloc,
    .tp_methods = Manager_methods,
    .tp_getset = Manager_getset,
    .tp_weaklistoffset = offsetof(Manager, weakrefs),
};

static PyMethodDef Lease_methods[] = {
    {"__enter__", (PyCFunction)Lease_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Lease_exit, METH_FASTCALL, NULL},
    {"release", (PyCFunction)Lease_release, METH_NOARGS, "Return the lease (idempotent)."},
    {NULL},
};

static PyMemberDef Lease_members[] = {
    {"served_by", T_OBJECT, offsetof(Lease, served_by), READONLY, "component that served"},
    {"requested", T_OBJECT, offsetof(Lease, requested), READONLY, "component asked for"},
    {"cold_start", T_BOOL, offsetof(Lease, cold), READONLY, "waited for a load"},
    {"wait_ms", T_DOUBLE, offsetof(Lease, wait_ms), READONLY, "ms spent waiting"},
    {"load_ms", T_DOUBLE, offsetof(Lease, load_ms), READONLY, "ms of that spent loading"},
    {NULL},
};

static PyGetSetDef Lease_getset[] = {
    {"value", (getter)Lease_get_value, NULL, "the instance, else the model", NULL},
    {"released", (getter)Lease_get_released, NULL, "True once released", NULL},
    {NULL},
};

static PyTypeObject LeaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "larder.Lease",
    .tp_basicsize = sizeof(Lease),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A lease on a component; `with` it, or release() it.",
    .tp_dealloc = (destructor)Lease_dealloc,
    .tp_methods = Lease_methods,
    .tp_members = Lease_members,
    .tp_getset = Lease_getset,
};

static PyMethodDef LeaseSet_methods[] = {
    {"__enter__", (PyCFunction)LeaseSet_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)LeaseSet_exit, METH_VARARGS, NULL},
    {"release", (PyCFunction)LeaseSet_release, METH_NOARGS, "Return every lease."},
    {NULL},
};

static PyMemberDef LeaseSet_members[] = {
    {"leases", T_OBJECT, offsetof(LeaseSet, leases), READONLY, "the leases, in order"},
    {NULL},
};

static PyTypeObject LeaseSetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "larder.LeaseSet",
    .tp_basicsize = sizeof(LeaseSet),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Leases of acquire_set(); `with` gives their values as a tuple.",
    .tp_dealloc = (destructor)LeaseSet_dealloc,
    .tp_methods = LeaseSet_methods,
    .tp_members = LeaseSet_members,
};

static PyMethodDef AsyncLease_methods[] = {
    {"__aenter__", (PyCFunction)AsyncLease_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)AsyncLease_aexit, METH_VARARGS, NULL},
    {NULL},
};

static PyGetSetDef AsyncLease_getset[] = {
    {"lease", (getter)AsyncLease_get_lease, NULL, "the Lease once granted", NULL},
    {NULL},
};

static PyTypeObject AsyncLeaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "larder.AsyncLease",
    .tp_basicsize = sizeof(AsyncLease),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "`async with m.acquire_async(name) as model:`",
    .tp_dealloc = (destructor)AsyncLease_dealloc,
    .tp_methods = AsyncLease_methods,
    .tp_getset = AsyncLease_getset,
};

static PyGetSetDef EventIter_getset[] = {
    {"lost", (getter)EventIter_get_lost, NULL, "events overwritten before they were read", NULL},
    {NULL},
};

static PyTypeObject EventIterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "larder.EventIterator",
    .tp_basicsize = sizeof(EventIter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)EventIter_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)EventIter_next,
    .tp_getset = EventIter_getset,
};

static PyTypeObject ComponentDecoratorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "larder.ComponentDecorator",
    .tp_basicsize = sizeof(ComponentDecorator),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)ComponentDecorator_dealloc,
    .tp_call = (ternaryfunc)ComponentDecorator_call,
};

/* ---- module ---------------------------------------------------------------------------------- */

/* atexit: close every open manager while the unload callables can still run. */
static PyObject *module_shutdown(PyObject *mod, PyObject *unused)
{
    while (open_managers) {
        Manager *m = open_managers;
        Py_INCREF(m);
        mgr_close(m);
        Py_DECREF(m);
    }
    atomic_store(&py_alive, false);
    Py_RETURN_NONE;
}

static PyObject *module_parse_size(PyObject *mod, PyObject *arg)
{
    uint64_t b;
    if (parse_size_obj(arg, "size", &b) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(b);
}

static PyObject *module_strerror(PyObject *mod, PyObject *arg)
{
    long e = PyLong_AsLong(arg);
    if (e == -1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(larder_strerror((int)e));
}

static PyMethodDef module_methods[] = {
    {"_resolve", module_resolve, METH_VARARGS, NULL},
    {"_shutdown", module_shutdown, METH_NOARGS, NULL},
    {"parse_size", module_parse_size, METH_O, "parse_size('2GiB') -> bytes"},
    {"strerror", module_strerror, METH_O, "strerror(code) -> text"},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "larder",
    .m_doc = "Lazy, single-flight, budgeted loading of heavy components (liblarder).",
    .m_size = -1,
    .m_methods = module_methods,
};

static PyObject *new_error(PyObject *mod, const char *name, PyObject *base, PyObject *base2)
{
    char full[64];
    snprintf(full, sizeof full, "larder.%s", name);
    PyObject *bases = base2 ? PyTuple_Pack(2, base, base2) : Py_NewRef(base);
    if (!bases)
        return NULL;
    PyObject *e = PyErr_NewException(full, bases, NULL);
    Py_DECREF(bases);
    if (e && PyModule_AddObjectRef(mod, name, e) < 0)
        Py_CLEAR(e);
    return e;
}

PyMODINIT_FUNC PyInit_larder(void);
PyMODINIT_FUNC PyInit_larder(void)
{
    PyTypeObject *types[] = {&ManagerType, &LeaseType, &LeaseSetType, &AsyncLeaseType,
                             &EventIterType, &ComponentDecoratorType};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    PyObject *mod = PyModule_Create(&module_def);
    if (!mod)
        return NULL;
    if (!(Error = new_error(mod, "Error", PyExc_Exception, NULL)) ||
        !(NotFoundError = new_error(mod, "NotFoundError", Error, PyExc_KeyError)) ||
        !(TimeoutErr = new_error(mod, "TimeoutError", Error, PyExc_TimeoutError)) ||
        !(LoadError = new_error(mod, "LoadError", Error, NULL)) ||
        !(CooldownError = new_error(mod, "CooldownError", LoadError, NULL)) ||
        !(BudgetError = new_error(mod, "BudgetError", Error, PyExc_MemoryError)) ||
        !(BusyError = new_error(mod, "BusyError", Error, NULL)) ||
        !(ClosedError = new_error(mod, "ClosedError", Error, NULL)) ||
        !(DrainingError = new_error(mod, "DrainingError", Error, NULL)))
        goto fail;
    if (PyModule_AddObjectRef(mod, "Manager", (PyObject *)&ManagerType) < 0 ||
        PyModule_AddObjectRef(mod, "Lease", (PyObject *)&LeaseType) < 0 ||
        PyModule_AddObjectRef(mod, "LeaseSet", (PyObject *)&LeaseSetType) < 0 ||
        PyModule_AddObjectRef(mod, "AsyncLease", (PyObject *)&AsyncLeaseType) < 0 ||
        PyModule_AddObjectRef(mod, "EventIterator", (PyObject *)&EventIterType) < 0 ||
        PyModule_AddObjectRef(mod, "ComponentDecorator", (PyObject *)&ComponentDecoratorType) < 0)
        goto fail;
    PyModule_AddStringConstant(mod, "__version__", "0.1.0");
    if (!(asyncio_mod = PyImport_ImportModule("asyncio")))
        goto fail;
    if (!(resolve_fn = PyObject_GetAttrString(mod, "_resolve")))
        goto fail;
    PyObject *atexit = PyImport_ImportModule("atexit");
    PyObject *sd = PyObject_GetAttrString(mod, "_shutdown");
    PyObject *r = atexit && sd ? PyObject_CallMethod(atexit, "register", "O", sd) : NULL;
    Py_XDECREF(atexit);
    Py_XDECREF(sd);
    if (!r)
        goto fail;
    Py_DECREF(r);
    return mod;
fail:
    Py_DECREF(mod);
    return NULL;
}
