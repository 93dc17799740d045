/* larderd: the daemon as a library, shared by the `larderd` and `larder serve` commands.
 *
 * A daemon owns one manager (liblarder), the backend registry, the HTTP server, the
 * worker pools and the current config. Reload swaps the config and token sets while
 * requests run; readers take conf_lock for reading.
 */
#ifndef LARDER_DAEMON_DAEMON_H
#define LARDER_DAEMON_DAEMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "auth.h"
#include "children.h"
#include "config.h"
#include "events.h"
#include "larder/larder.h"
#include "plugin.h"
#include "pool.h"

struct larder__http;

struct larder__daemon {
    const char *prog;               /* the command that runs it: "larderd", "larder serve" */
    pthread_rwlock_t conf_lock;     /* conf, admin, infer */
    struct larder__config *conf;
    struct larder__tokens *admin;   /* NULL: admin routes refused */
    struct larder__tokens *infer;   /* NULL: infer routes open */
    pthread_mutex_t reload_lock;    /* one reload at a time; guards pending */
    json_t *pending;                /* models whose drop or change waits (see reload); NULL */
    atomic_bool retry_armed;        /* pending models are watched for the background retry */
    atomic_bool sample_queued;      /* the external models' memory sample is on the admin pool */
    pthread_rwlock_t mgr_lock;      /* mgr: readers use it, shutdown closes it */
    larder *mgr;                    /* NULL once closed; see larder__mgr_get */
    struct larder__backends *backends;
    struct larder__events *events;
    struct larder__pool *infer_pool; /* inference */
    struct larder__pool *admin_pool; /* unload, reload, cleanup: may wait for drains */
    struct larder__http *http;
    struct larder__children *children; /* worker and external model processes */
    atomic_bool stopping;
    atomic_uint inflight;           /* requests suspended on a lease or a job */
    atomic_uint stream_jobs;        /* streamed calls whose job has not ended: the request
                                     * may have completed before the job gives its lease
                                     * back */
    atomic_ullong reloads;
    double started;                 /* monotonic seconds */
    char *listen_override;          /* --listen, kept across reloads */
    char node_name[LARDER__NODE_NAME_MAX + 1]; /* X-Larder-Node; fixed at start-up */
    bool log_format_fixed;          /* --log-format given: reloads keep it */
    bool log_level_fixed;           /* --log-level given: reloads keep it */
    enum larder__log_format log_format;
    enum larder__log_level log_level;
};

/* Command-line entry of larderd (and `larder serve`): parses argv, runs until SIGTERM or
 * SIGINT, returns the process exit status. prog names the command in messages. */
int larder__daemon_main(const char *prog, int argc, char **argv);

/* Re-reads the config file: runs the config probe on it first (probe.h: the checks of
 * start-up; any error refuses the reload with -EINVAL, every error listed in err, and
 * nothing is changed; so does a file that cannot be read, or one that would leave no
 * model or no admin tokens without `allow_empty = yes`), then adds, drops (after
 * draining) and redefines changed models, applies the budget and logging, re-reads token
 * files. A model that cannot be dropped or changed (still in use after drain_timeout)
 * keeps its old definition, in the registry and in the active config alike (the new file
 * with its old section), and is listed in "pending"; the reload runs again once it has
 * no lease left (in the background), and any later reload applies or clears it. On
 * success *ret_summary (if not NULL) is a JSON object {"added":[...], "removed":[...],
 * "changed":[...], "failed":[...], "pending":[{"name", "action": "drop"|"change",
 * "error", "detail"}], "settings": {"applied":[...], "restart_required":[...]},
 * "warnings":[...]}: settings names each changed [server] or [memory] key as
 * "server.listen"; a key in restart_required keeps its old value until a restart (and a
 * warning is logged). On failure the running config is kept, err names the problem, and a
 * negative errno is returned. Any thread but an HTTP one (it may wait for drains). */
int larder__daemon_reload(struct larder__daemon *d, json_t **ret_summary, char *err,
                          size_t errlen);

/* Defines one model of config c in the manager. Errors: negative, message in err. */
int larder__daemon_define(struct larder__daemon *d, const struct larder__config *c,
                          const struct larder__model_conf *m, char *err, size_t errlen);

/* The manager, read-locked so that shutdown cannot close it meanwhile, or NULL (nothing
 * locked) once it is closed. Pair every non-NULL result with larder__mgr_put. Do not
 * wait for other requests while holding it. */
larder *larder__mgr_get(struct larder__daemon *d);
void larder__mgr_put(struct larder__daemon *d);

/* Seconds on the monotonic clock. */
double larder__now(void);

#endif
