/* larderd routes: the HTTP API of DESIGN.md section 6 (see docs/http-api.md).
 *
 * Threads: route handlers run on HTTP threads; the async parts of infer, load, unload,
 * cleanup and reload run on the daemon's pools or the manager's threads.
 */
#ifndef LARDER_DAEMON_ROUTES_H
#define LARDER_DAEMON_ROUTES_H

#include <jansson.h>

#include "children.h"
#include "http.h"

/* POST /v1/models/{name}/infer (infer.c). */
void larder__route_infer(struct larder__request *r, const char *name);

/* Answers r for a failed acquire of model `name` (err: the library's code): its message,
 * the cause of a failed load, Retry-After from the cooldown's remainder. */
void larder__reply_acquire_error(struct larder__request *r, const char *name, int err);

/* What is left of the cooldown of model `name` after a failed load, in ms; 0 when none.
 * Any thread, no manager lock held (infer.c). */
int64_t larder__cooldown_left_ms(struct larder__daemon *d, const char *name);

/* GET /ui (the dashboard's page) and /ui/FILE (its scripts and styles), compiled in
 * (ui.c). */
void larder__route_ui(struct larder__request *r, const char *name);

/* One component of a snapshot as the JSON object of GET /v1/models, appended to t. */
/* The registry now, or NULL after answering the request with the error. */
struct larder_snapshot *larder__snapshot_or_reply(struct larder__request *r);

/* One model's registry entry; isolation: its `isolation` from the config (NULL: null);
 * gpu: the device memory of its process tree (worker and external models; n_gpus == 0
 * when unknown: null), NULL for a model in larderd's own process (no field). */
void larder__component_text(struct larder__text *t, const struct larder_component_info *c,
                            const char *isolation, const struct larder__tree_gpu *gpu);

/* Appends the Prometheus text of GET /metrics to t (metrics.c). Errors: negative, as
 * larder_snapshot. */
int larder__metrics_text(struct larder__daemon *d, struct larder__text *t);

/* Sets a 503 too_big reply for model `name`: its size, the budget it exceeds, and its
 * fallback: the one that would serve its requests when the model was asked for `alone`
 * (an admin load), else the one that could not serve either. Any thread that owns r, no
 * manager lock held. */
void larder__reply_too_big(struct larder__request *r, const char *name, bool alone);

/* True when r carries an admin token (admin) or an infer token (!admin; infer routes
 * are open when no infer token file is configured). Otherwise sets a 401 reply. */
bool larder__require_token(struct larder__request *r, bool admin);

/* When the daemon started, in seconds of the wall clock (OpenAI's "created"). */
double larder__wall_started(struct larder__daemon *d);

#endif
