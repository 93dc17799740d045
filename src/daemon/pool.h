/* larderd worker threads: a fixed set of threads running submitted jobs in order.
 *
 * Threads: submit from any thread; free from one thread only, never from a job.
 */
#ifndef LARDER_DAEMON_POOL_H
#define LARDER_DAEMON_POOL_H

#include <stddef.h>
#include <stdint.h>

struct larder__pool;

typedef void (*larder__job_fn)(void *arg);

/* Starts `threads` (>= 1) workers named `name` (at most 15 bytes, for debuggers).
 * Errors: -ENOMEM, -EAGAIN. */
int larder__pool_new(const char *name, unsigned threads, struct larder__pool **ret_pool);

/* Queues fn(arg). Never blocks on other jobs. Errors: -ENOMEM, -ESHUTDOWN once the pool
 * is being freed (fn is then not called). */
int larder__pool_submit(struct larder__pool *p, larder__job_fn fn, void *arg);

/* Jobs queued or running. */
size_t larder__pool_pending(struct larder__pool *p);

/* Runs every queued job to the end, then stops the threads. Accepts NULL; returns NULL. */
struct larder__pool *larder__pool_free(struct larder__pool *p);

/* larder__pool_free with a bound: waits at most timeout_ms for the threads to finish
 * their jobs and exit. Returns 0 when they did (p is freed), else how many are still
 * inside a job: those are detached and p is left to them (never freed: the caller is
 * about to exit the process, and they with it). Accepts NULL. */
unsigned larder__pool_stop(struct larder__pool *p, int64_t timeout_ms);

#endif
