/* Shared helpers of the backend plugin tests: open the built plugin named by an
 * environment variable, read sample inputs, run one request and parse its JSON reply.
 *
 * Environment (set by tests/backends/meson.build):
 *   LARDER_PLUGIN     path of the plugin under test (larder-NAME.so)
 *   LARDER_EXAMPLES   the examples/ directory of the source tree
 *
 * Every helper fails the current cmocka test on error, so callers need no checks.
 */
#ifndef LARDER_TESTS_BACKENDS_HARNESS_H
#define LARDER_TESTS_BACKENDS_HARNESS_H

#include <larder/backend.h>

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The host table the tests hand to plugins; its log counts lines per level. */
extern const struct larder_host harness_host;
unsigned harness_log_count(enum larder_log_level level);

/* harness_host's cancel check (ABI minor 1) says stop from its check-th call within one
 * harness_infer on; 0 (the start) never. */
void harness_cancel_at(unsigned check);

/* How many times the plugin called the cancel check during the last harness_infer. */
unsigned harness_last_checks(void);

/* The request bytes plugins reserved through harness_host since the last call, which it
 * returns and resets; from now on a reservation that would pass limit (0: none) is
 * refused. */
uint64_t harness_reserved(uint64_t limit);

/* dlopen()s the plugin at $env_var (or at `path` when env_var is NULL), calls its entry
 * with harness_host and checks the ABI fields and required operations. */
const struct larder_backend_ops *harness_open(const char *env_var, const char *path);

/* Calls the entry of an already opened plugin with a host of another ABI major. */
const struct larder_backend_ops *harness_entry_with_major(const char *env_var,
                                                          uint32_t abi_major);

/* Reads examples/NAME (or an absolute path) into a malloc'd buffer. */
void *harness_read_example(const char *name, size_t *ret_len);

/* True when `key` is listed in ops->option_keys. */
bool harness_has_option(const struct larder_backend_ops *ops, const char *key);

/* Runs one request. On success returns 0 and the parsed reply (caller decrefs) in
 * *ret_reply; on failure returns the plugin's code, the reply stays NULL and the error
 * message must be non-empty. */
int harness_infer(const struct larder_backend_ops *ops, void *model, void *instance,
                  const void *body, size_t len, const char *content_type, json_t **ret_reply);

/* Same, with query parameters. */
int harness_infer_params(const struct larder_backend_ops *ops, void *model, void *instance,
                         const void *body, size_t len, const char *content_type,
                         const struct larder_option *params, size_t n_params,
                         json_t **ret_reply);

/* Runs one JSON request with the stream flag set (ABI minor 2): the pieces the plugin
 * emits are collected into *ret_pieces (caller decrefs; set even on failure); from the
 * refuse_at-th piece on (0: never) emit says the receiver has gone. */
int harness_infer_stream(const struct larder_backend_ops *ops, void *model, void *instance,
                         const char *body, unsigned refuse_at, json_t **ret_reply,
                         json_t **ret_pieces);

/* Loads with options (asserting success) and returns the model. */
void *harness_load(const struct larder_backend_ops *ops, const struct larder_option *opts,
                   size_t n);

/* Runs check() and returns its code; on failure asserts a non-empty message. */
int harness_check(const struct larder_backend_ops *ops, const struct larder_option *opts,
                  size_t n);

/* Process resident set size in bytes (from /proc/self/statm). */
uint64_t harness_rss(void);

/* `count` bytes of deterministic noise from `seed` (malloc'd). */
unsigned char *harness_noise(size_t count, uint64_t seed);

#define N_OPTS(a) (sizeof(a) / sizeof((a)[0]))

#endif
