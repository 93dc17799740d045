/* larderd events: every library event becomes one log line, one server-sent event for
 * each `GET /v1/events` client, and counters for /metrics.
 *
 * Each SSE client has a bounded queue ([server] events_queue, 256 KiB by default); a
 * client that falls that far behind is dropped (its stream ends) rather than slowing
 * anyone else down. Streams of clients
 * waiting for events are suspended, so they hold no HTTP thread.
 *
 * Threads: larder__events_on_event runs on any thread (it is the manager's event
 * callback); the response functions run on HTTP threads; the others on any thread.
 */
#ifndef LARDER_DAEMON_EVENTS_H
#define LARDER_DAEMON_EVENTS_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdint.h>

#include "larder/larder.h"

#define LARDER__SSE_QUEUE_DEFAULT (256u << 10)

struct larder__events;

/* Load durations are counted in these buckets (seconds), plus +Inf. */
#define LARDER__LOAD_BUCKETS 12
extern const double larder__load_buckets[LARDER__LOAD_BUCKETS];

struct larder__event_counts {
    uint64_t by_type[LARDER_EVENT_FALLBACK + 1];   /* indexed by enum larder_event_type */
    uint64_t evict_by_reason[LARDER_REASON_OVERSIZE + 1];
    uint64_t load_buckets[LARDER__LOAD_BUCKETS + 1]; /* cumulative is computed on output */
    double load_seconds_sum;
    uint64_t sse_clients;
    uint64_t sse_dropped;
};

/* queue_bytes: the most bytes queued for one client. Errors: -ENOMEM. */
int larder__events_new(size_t queue_bytes, struct larder__events **ret_events);

/* Ends every stream (call larder__events_close first and let streams finish).
 * Accepts NULL; returns NULL. */
struct larder__events *larder__events_free(struct larder__events *h);

/* The manager's event callback; ud is the struct larder__events. */
void larder__events_on_event(void *ud, const struct larder_event *ev);

/* What the events taught for GET /v1/advice and the per-model load histograms. */
struct larder__advice *larder__events_advice(struct larder__events *h);

/* Publishes a daemon event (e.g. "reload") with a JSON object body (stolen). */
void larder__events_publish(struct larder__events *h, const char *type, json_t *data);

/* Sends an SSE comment to every client, to find dead connections. */
void larder__events_ping(struct larder__events *h);

/* Ends the streams of clients that have gone (their connection hung up while their stream
 * waited for events), so that they stop counting at once rather than at the next write
 * that fails. Any thread; cheap (one poll(2) of the waiting streams). */
void larder__events_reap(struct larder__events *h);

/* Ends every stream now and refuses new ones. Any thread. */
void larder__events_close(struct larder__events *h);

/* Live SSE clients. */
unsigned larder__events_clients(struct larder__events *h);

/* A streaming response for a new client of `conn`, or NULL (closing, ENOMEM). HTTP
 * thread, inside the access handler. */
struct MHD_Response *larder__events_response(struct larder__events *h,
                                             struct MHD_Connection *conn);

/* A copy of the counters. */
void larder__events_counts(struct larder__events *h, struct larder__event_counts *ret);

/* Names used in logs, SSE and metrics. */
const char *larder__event_type_name(enum larder_event_type t);
const char *larder__reason_name(enum larder_evict_reason r);

#endif
