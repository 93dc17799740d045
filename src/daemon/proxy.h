/* larderd reverse proxy to external models, and the small HTTP/1.1 client under it.
 *
 * A proxied request takes one of the model's kept-alive connections to the child when
 * there is one (external.h) and sends its head and body at once from the thread that
 * got the lease; then one of the proxy's threads (elastic: idle ones are reused, a new
 * one starts only when none is idle, up to 512; 30 s idle and it ends) connects when
 * needed, sends the rest, reads the response head (bounded by the request's timeout: past
 * it 504 `upstream_timeout`; a refused or broken connection is 502 `upstream_error`, or
 * 502 `model_crashed` when the child has died), and answers the client with the child's
 * status and end-to-end headers. The body then flows as it comes: a bounded buffer
 * (64 KiB) between the child's socket and the client's, Content-Length passed through,
 * a chunked or close-delimited body re-sent chunked, so server-sent events reach the
 * client one by one. Hop-by-hop headers (Connection, Keep-Alive, Transfer-Encoding, TE,
 * Trailer, Upgrade, Proxy-*) are dropped both ways.
 *
 * A connection whose exchange ended cleanly (the whole body read, keep-alive allowed,
 * nothing past the body) goes back to the model's pool; any other is closed.
 *
 * The lease is held for the whole exchange and released when the last byte has been
 * handed to the client, or when the client goes away (the connection to the child is
 * then closed, which a child notices as a broken pipe).
 *
 * Threads: larder__proxy_request_new on an HTTP thread (it reads the request's headers);
 * the rest from any thread.
 */
#ifndef LARDER_DAEMON_PROXY_H
#define LARDER_DAEMON_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "larder/larder.h"

/* What to send to the child, copied from the client's request on the HTTP thread. */
struct larder__proxy_request;

/* A request to proxy: method, target (path and query, starting with '/', relative to the
 * model's base URL), the client's end-to-end headers (Authorization only when larderd did
 * not consume it itself: drop_auth false), and the request's body (r->body, read when the
 * request is sent: r must stay suspended until then, as it does under
 * larder__proxy_run). NULL on ENOMEM. HTTP thread. */
struct larder__proxy_request *larder__proxy_request_new(struct larder__request *r,
                                                        const char *method, const char *target,
                                                        bool drop_auth);
void larder__proxy_request_free(struct larder__proxy_request *pr);

/* The time the request waited for its lease beyond the model's load, sent back to the
 * client as X-Larder-Queue-Ms (not sent when never set). */
void larder__proxy_request_set_queue_ms(struct larder__proxy_request *pr, double queue_ms);

/* Proxies pr to the external model that lease holds: the entry point of every route that
 * forwards to an external model (its own infer and proxy routes; a dialect route may
 * forward a body of its own the same way). r is suspended and owned by the caller; this
 * takes r, lease and pr: r is answered and resumed, the lease released at the end of the
 * exchange, pr freed. timeout_ms bounds the connect and the response head (0 = 60 s). */
void larder__proxy_run(struct larder__request *r, larder_lease *lease,
                       struct larder__proxy_request *pr, int64_t timeout_ms);

/* Route: ANY /v1/models/{name}/proxy/... (rest: what follows "/proxy", may be ""). */
void larder__route_proxy(struct larder__request *r, const char *name);

/* Ends every stream in flight (the daemon's shutdown) and waits up to timeout_ms for
 * their leases to come back; returns how many are still out. */
unsigned larder__proxy_close_all(int64_t timeout_ms);

/* ---- the client ------------------------------------------------------------------------ */

/* Connects to host:port (TCP), failing at deadline (monotonic seconds). The fd, or a
 * negative errno (-ETIMEDOUT past the deadline) with a message in err. */
int larder__upstream_connect(const char *host, unsigned port, double deadline, char *err,
                             size_t errlen);

/* GET path on host:port with Connection: close; *ret_status gets the response's status.
 * 0, or a negative errno (-ETIMEDOUT) with a message in err. */
int larder__upstream_get_status(const char *host, unsigned port, const char *path,
                                double deadline, int *ret_status, char *err, size_t errlen);

#endif
