/* A backend in a worker process: larderd's end of the worker protocol (src/worker/proto.h).
 *
 * larder__remote_start runs `larder-worker PLUGIN MODEL` through the child supervisor
 * (children.h) with one end of a socketpair as its fd 3, and waits for its hello. The
 * remote then serves the plugin's calls over that socket: check, estimate and load here,
 * and the rest through an operations table of the backend ABI's own shape
 * (larder__remote_ops), whose `model` is the remote itself, so that the code that runs a
 * plugin's operations runs a worker's unchanged.
 *
 * Calls are multiplexed: each has an id, any number run at once, and one reader thread
 * hands every reply to its caller. An infer call runs the request's host services on the
 * caller's own thread, as the ABI wants: the worker's cancel check follows the host's
 * (a WP_CANCEL once the host's cancelled() turns true), its request memory goes to the
 * host's reserve_request_bytes, and each streamed piece to the host's emit, in order.
 *
 * Failure: a worker that dies (a signal, an exit), sends a frame that does not validate,
 * or misses a call's deadline (call_timeout_ms for every call; for infer, counted from
 * the moment the host said cancel) is dead: it is SIGKILLed, every call in flight and
 * every later one fails with LARDER__EWORKER_CRASHED or LARDER__EWORKER_TIMEOUT and a
 * message naming the cause, and on_dead is called once, on the reader thread.
 *
 * Threads: every function may be called from any thread; larder__remote_stop must not
 * race with other calls on the same remote, nor be called from on_dead.
 */
#ifndef LARDER_DAEMON_REMOTE_H
#define LARDER_DAEMON_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "children.h"
#include "larder/backend.h"

/* Errors of a call to a dead worker (beside the backend's own codes). */
enum {
    LARDER__EWORKER_CRASHED = -30101, /* died, exited, or broke the protocol: 502 */
    LARDER__EWORKER_TIMEOUT = -30102, /* missed a call's deadline: 504 */
};

struct larder__remote;

typedef void (*larder__remote_dead_fn)(void *ctx, struct larder__remote *r, int code,
                                       const char *why);

struct larder__remote_spec {
    struct larder__children *children;
    const char *worker;        /* the larder-worker executable */
    const char *plugin;        /* the backend's shared object */
    const char *model;         /* the model's name, for messages */
    const char *backend;       /* the backend's name, for messages */
    const struct larder_host *host; /* whose services a request's host_ctx belongs to */
    int64_t call_timeout_ms;   /* > 0 */
    larder__remote_dead_fn on_dead; /* may be NULL */
    void *on_dead_ctx;
};

/* Starts a worker and waits (call_timeout_ms at most) for its hello. Errors:
 * LARDER__EWORKER_CRASHED (it died first, or the plugin did not open there: message in
 * err), LARDER__EWORKER_TIMEOUT, negative errno. */
int larder__remote_start(const struct larder__remote_spec *spec, struct larder__remote **ret,
                         char *err, size_t errlen);

/* The backend's check and load in the worker, options as in the config (the worker
 * drops "path" and "isolation" for a plugin that does not list them, and refuses keys the
 * plugin does not know). Errors: the backend's code, or the worker's, message in err. */
int larder__remote_check(struct larder__remote *r, const struct larder_option *opts, size_t n,
                         char *err, size_t errlen);
int larder__remote_load(struct larder__remote *r, const struct larder_option *opts, size_t n,
                        char *err, size_t errlen);

/* The operations on a loaded remote (model = the remote): instance_new, instance_free,
 * infer, result_free; measure gives the worker's whole process tree (PSS where readable,
 * else RSS); unload stops it (larder__remote_stop, the figure dropped). instance_new is
 * NULL when the backend shares its model. */
const struct larder_backend_ops *larder__remote_ops(const struct larder__remote *r);

/* Measures the worker's tree (PSS where readable, else RSS) into *ret_returned (0 when
 * it is dead already), asks it to exit, SIGKILLs its group after grace_ms, reaps it and
 * frees the remote. Accepts NULL. */
void larder__remote_stop(struct larder__remote *r, int grace_ms, int64_t *ret_returned);

pid_t larder__remote_pid(const struct larder__remote *r);
/* True once the worker is dead (see above). */
bool larder__remote_dead(struct larder__remote *r);

#endif
