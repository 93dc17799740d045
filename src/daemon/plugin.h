/* larderd backend plugins: a registry of `larder-NAME.so` files in one directory, and
 * the larder component class that bridges a model to its plugin's operations.
 *
 * A plugin is opened with dlopen() only when a model of its backend first loads. Option
 * checks and estimates before that run in another process (`larder check`, or the probe
 * child of larderd, see probe.h), which hands its figures over with
 * larder__model_ud_set_estimate; knowing that a backend exists costs one access(2).
 * An opened plugin stays open until the registry is freed. The host refuses a plugin
 * whose abi_major differs from LARDER_BACKEND_ABI_MAJOR.
 *
 * Threads: every function may be called from any thread, except larder__backends_free.
 */
#ifndef LARDER_DAEMON_PLUGIN_H
#define LARDER_DAEMON_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>

#include <sys/types.h>

#include "children.h"
#include "config.h"
#include "larder/backend.h"
#include "larder/larder.h"

struct larder__backends;
struct larder__backend;

/* The backend directory to use: the config's, else $LARDER_BACKEND_DIR, else the build
 * tree's backends/ for a program of the build tree, else the installed one (see
 * larder__default_backend_dir in selfpath.h). Never NULL. */
const char *larder__backend_dir(const struct larder__config *c);

/* Creates a registry for `dir` (copied). Errors: -ENOMEM. */
int larder__backends_new(const char *dir, struct larder__backends **ret_backends);

/* Frees the registry. Plugins that were opened stay mapped (engines often register
 * process-wide state that must not be unmapped). Call only once no model is defined.
 * Accepts NULL; returns NULL. */
struct larder__backends *larder__backends_free(struct larder__backends *b);

/* The backend named `name`, created on first use without opening it. Fails with -ENOENT
 * when `larder-NAME.so` is not a readable file of the directory; the message in err then
 * lists the backends the directory has. */
int larder__backend_get(struct larder__backends *b, const char *name,
                        struct larder__backend **ret_backend, char *err, size_t errlen);

/* The NAME of every larder-NAME.so of the registry's directory, sorted and
 * NULL-terminated, read once on the first call; NULL when it could not be read. Owned by
 * the registry. */
const char *const *larder__backends_names(struct larder__backends *b);

/* The backend's name and shared object path. */
const char *larder__backend_name(const struct larder__backend *be);
const char *larder__backend_path(const struct larder__backend *be);

/* Opens the plugin if it is not open yet (dlopen, entry point, ABI check). Errors:
 * -ENOENT, -ENOEXEC (no entry point, NULL ops), -EPROTO (ABI mismatch); message in err. */
int larder__backend_open(struct larder__backend *be, char *err, size_t errlen);

/* The plugin's operations, or NULL when it is not open. */
const struct larder_backend_ops *larder__backend_ops(struct larder__backend *be);

/* True when the open plugin accepts option `key` ("path" always is: it also serves the
 * host's file-size estimate). False when the plugin is not open. */
bool larder__backend_has_key(struct larder__backend *be, const char *key);

/* Runs the open plugin's check() on a model's options (0 when it has none). Errors: the
 * plugin's code, with the plugin's message (or a generic one) in msg. */
int larder__backend_check(struct larder__backend *be, const struct larder__model_conf *m,
                          char *msg, size_t msglen);

/* The plugin's estimate for a model (the plugin must be open). Errors: -ENOTSUP when the
 * plugin has no estimate, or the plugin's error. */
int larder__backend_estimate(struct larder__backend *be, const struct larder__model_conf *m,
                             uint64_t *ret_bytes);

/* The component class of a backend; lives as long as the registry. */
const struct larder_class *larder__backend_class(struct larder__backend *be);

/* Userdata of one model for larder_define(): a deep copy of what the class needs.
 * Free it with larder__model_ud_free (the component's ud_free). NULL on ENOMEM. */
void *larder__model_ud_new(struct larder__backend *be, const struct larder__config *c,
                           const struct larder__model_conf *m);
void larder__model_ud_free(void *ud);

/* Records the plugin's estimate for the model (from the probe): the class's estimate
 * returns it while the plugin is not open in this process. 0 = none. Call before
 * larder_define. */
void larder__model_ud_set_estimate(void *ud, uint64_t bytes);

/* Called (on a thread of the worker's connection) when the worker of a loaded model
 * died: `model` is the component's model, for larder_fail; why names the cause. */
typedef void (*larder__worker_fail_fn)(void *ctx, const char *name, const void *model,
                                       const char *why);

/* For a model with isolation = worker: the supervisor its workers run under and the
 * hook told of a worker's death. Call before larder_define. */
void larder__model_ud_set_worker(void *ud, struct larder__children *children,
                                 larder__worker_fail_fn on_fail, void *ctx);

/* The host services larderd gives its backends (and forwards a worker's calls to). */
const struct larder_host *larder__host(void);

/* True while a worker model of supervisor `children` has its worker running. */
bool larder__workers_running(const struct larder__children *children);

/* Samples the device memory (NVML, through m) of every running worker of `children`:
 * each worker's process tree, per GPU. Called once a second by the daemon. */
void larder__workers_sample_gpu(const struct larder__children *children, larder *m);

/* The last sample of model `name`'s worker into *ret: true when known (a worker runs, a
 * GPU and NVML's per-process figures are there, and a sample was taken). */
bool larder__worker_gpu(const struct larder__children *children, const char *name,
                        struct larder__tree_gpu *ret);

/* The pid of the worker that serves a lease, or 0 for an in-process model. */
pid_t larder__lease_worker_pid(const larder_lease *lease);

/* Why the host's cancel check told a backend to stop. */
enum larder__cancel {
    LARDER__CANCEL_NONE = 0,
    LARDER__CANCEL_DEADLINE, /* the model's infer_timeout passed */
    LARDER__CANCEL_GONE,     /* the client closed its connection */
};

/* The controls of one infer call, read by the host services a backend of ABI minor 1
 * calls (struct larder_host.cancelled, reserve_request_bytes). The caller sets the first
 * fields; larder__lease_infer sets the rest. */
struct larder__infer_ctl {
    int64_t timeout_ms;          /* the call's deadline from its start; 0 = none */
    int client_fd;               /* the client's socket, polled for a hang-up; -1 = none */
    /* set by larder__lease_infer and the checks */
    double deadline;             /* monotonic seconds; 0 = none */
    double next_poll;            /* the next time the socket is polled */
    enum larder__cancel why;     /* the first reason a check saw; kept once set */
    uint64_t reserved_bytes;     /* request memory the backend reported */
    /* Charges reported request memory to the request (NULL: every reservation is granted);
     * true when granted. */
    bool (*reserve)(void *reserve_ud, uint64_t bytes);
    void *reserve_ud;
    bool reserve_refused;        /* a reservation was refused */
    /* A streamed reply (ABI minor 2): each piece the backend emits goes to
     * emit(emit_ud, json, len); negative means the receiver has gone and the backend is
     * told to stop. NULL: the request does not stream (its stream flag stays 0). */
    int (*emit)(void *emit_ud, const char *json, size_t len);
    void *emit_ud;
};

/* Runs the plugin's infer on the model and instance of a lease. ctl (may be NULL: no
 * deadline, no client to watch, no stream) is handed to the backend as the request's host_ctx; the
 * host's cancel check says stop once ctl's deadline passes or its client_fd hangs up,
 * polling the socket at most every 50 ms. On success the caller frees res with
 * larder__lease_result_free. Errors: the plugin's negative code, message in err;
 * LARDER_BACKEND_ECANCELED only when a check said stop (ctl->why tells why; a backend that
 * returns it unasked gets LARDER_BACKEND_EINTERNAL). Infer thread; ctl belongs to the
 * caller and is used only during the call. */
int larder__lease_infer(larder_lease *lease, const struct larder_infer_request *req,
                        struct larder__infer_ctl *ctl, struct larder_infer_result *res,
                        char *err, size_t errlen);

/* The host's cancel check on ctl (non-zero: stop), as a backend sees it. The infer thread,
 * during the call. */
int larder__infer_cancelled(struct larder__infer_ctl *ctl);

/* Requests cancelled since the process started: by their deadline, by their client going
 * away. Any thread. */
void larder__infer_cancel_counts(uint64_t *ret_deadline, uint64_t *ret_gone);
void larder__lease_result_free(larder_lease *lease, struct larder_infer_result *res);

/* The backend name of the component that served a lease. */
const char *larder__lease_backend(const larder_lease *lease);

#endif
