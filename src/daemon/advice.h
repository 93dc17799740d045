/* larderd advice: what the daemon sees in its events, registry and memory history, and
 * what it would change (GET /v1/advice, see docs/http-api.md for the kinds and their
 * thresholds).
 *
 * A recorder keeps, per model, what the advice needs from the events: evictions and the
 * reloads that followed them, ttl expiries and the next load after each, the bytes
 * returned by unloads, and the load durations (as a histogram, also for /metrics); plus
 * the pressure events. It keeps a bounded amount per model, whatever the traffic.
 *
 * Threads: larder__advice_record runs on any thread (the manager's event callback, no
 * manager lock held); the others on any thread.
 */
#ifndef LARDER_DAEMON_ADVICE_H
#define LARDER_DAEMON_ADVICE_H

#include <jansson.h>

#include "events.h"
#include "larder/larder.h"

struct larder__advice;
struct larder__text;

/* Thresholds (documented in docs/http-api.md, GET /v1/advice). */
#define LARDER__ADVICE_WINDOW_S 3600.0     /* "the last hour" */
#define LARDER__ADVICE_THRASH_MIN 3        /* reloads after an eviction within the window */
#define LARDER__ADVICE_TTL_REUSE_MIN 3     /* ttl expiries followed by a load within one ttl */
#define LARDER__ADVICE_LEAK_MIN 3          /* unloads that returned under half their bytes */
#define LARDER__ADVICE_LEAK_MIN_BYTES (4u << 20) /* smaller models are not judged */
#define LARDER__ADVICE_ESTIMATE_RATIO 1.5  /* measured/estimate above this (or below 1/2) */
#define LARDER__ADVICE_ESTIMATE_MIN_BYTES (4u << 20) /* and at least this far apart */
#define LARDER__ADVICE_PRESSURE_MIN 3      /* pressure events within the window */
#define LARDER__ADVICE_CGROUP_RATIO 0.9    /* budget above this share of the cgroup limit */

/* Errors: -ENOMEM. */
int larder__advice_new(struct larder__advice **ret);
/* Accepts NULL; returns NULL. */
struct larder__advice *larder__advice_free(struct larder__advice *a);

/* Takes note of one library event. */
void larder__advice_record(struct larder__advice *a, const struct larder_event *ev);

/* The advice items, as the JSON array of GET /v1/advice: judged on the registry s, the
 * memory report mem (may be NULL) and what was recorded. New reference. */
json_t *larder__advice_items(struct larder__advice *a, const struct larder_snapshot *s,
                             const struct larder_memory *mem);

/* Appends the per-model load duration histogram
 * (larder_component_load_duration_seconds) in Prometheus text to t. */
void larder__advice_load_histograms(struct larder__advice *a, struct larder__text *t);

#endif
