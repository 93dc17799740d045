/* Helpers shared by the backend plugins: logging through the host, error messages, option
 * lookup and checks, number and media-type parsing, result release and the entry's body.
 *
 * Internal to backends/: compiled into every plugin and hidden there like everything else
 * (the build uses -fvisibility=hidden); a plugin exports only larder_backend_entry, which
 * this header declares with default visibility. Needs nothing of larder but
 * <larder/backend.h>.
 */
#ifndef LARDER_PLUGIN_UTIL_H
#define LARDER_PLUGIN_UTIL_H

#include <larder/backend.h>

#include <stdbool.h>
#include <stddef.h>

#define LARDER_PU_PRINTF(fmt, first) __attribute__((format(printf, fmt, first)))

/* The plugin's entry, the one symbol it exports: returns its operations, or NULL for a
 * host of another ABI major. Each plugin defines it. */
__attribute__((visibility("default"))) const struct larder_backend_ops *
larder_backend_entry(const struct larder_host *host);

/* Logs one formatted line (cut at 511 bytes) through host->log under the name backend;
 * does nothing while host or its log function is NULL. */
void larder_pu_say(const struct larder_host *host, const char *backend,
                   enum larder_log_level level, const char *fmt, ...) LARDER_PU_PRINTF(4, 5);

/* Writes a message into err (when given) and returns code. */
int larder_pu_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    LARDER_PU_PRINTF(4, 5);

/* The value of the last option named key among opts[0..n), or NULL. */
const char *larder_pu_opt_get(const struct larder_option *opts, size_t n, const char *key);

/* Checks that every option has a key and a value, and a key listed in the NULL-terminated
 * keys; returns 0, or LARDER_BACKEND_EOPTION with a message in err. */
int larder_pu_check_keys(const struct larder_option *opts, size_t n, const char *const *keys,
                         char *err, size_t errlen);

/* Parses a whole decimal number in [lo, hi] into *ret; false (and *ret untouched) when s is
 * NULL, does not start with a digit, has trailing characters or is out of range. */
bool larder_pu_parse_ull(const char *s, unsigned long long lo, unsigned long long hi,
                         unsigned long long *ret);

/* Parses a byte count: digits, then optionally K, M, G or T (alone, or followed by "iB" or
 * "B"; case ignored), each 1024 times the one before, into *ret; false (and *ret
 * untouched) on anything else, 0, or a value past 2^50. */
bool larder_pu_parse_bytes(const char *s, unsigned long long *ret);

/* True when the media type of ct (parameters and case ignored) is `type`. */
bool larder_pu_media_is(const char *ct, const char *type);

/* Frees what an infer call put in res and zeroes it; NULL is allowed. */
void larder_pu_result_free(struct larder_infer_result *res);

/* True when the host (of ABI minor 1 or later) says req should stop: its deadline passed
 * or its client went away. False for a minor-0 host, which never cancels. Thread of the
 * infer call only. */
bool larder_pu_cancelled(const struct larder_host *host, const struct larder_infer_request *req);

/* Asks the host (minor 1 or later) for `bytes` of request memory before the backend
 * allocates them; 0 when granted or when the host offers no such service, else
 * LARDER_BACKEND_ETOOBIG with a message in err. */
int larder_pu_reserve(const struct larder_host *host, const struct larder_infer_request *req,
                      unsigned long long bytes, char *err, size_t errlen);

/* Sleeps ms milliseconds, waking every few milliseconds to ask larder_pu_cancelled();
 * returns 0 after the whole wait, LARDER_BACKEND_ECANCELED as soon as it is cancelled. */
int larder_pu_wait_ms(const struct larder_host *host, const struct larder_infer_request *req,
                      unsigned long long ms);

/* The body of larder_backend_entry: NULL for a host of another ABI major, else stores host
 * in *slot and returns ops. */
const struct larder_backend_ops *larder_pu_entry(const struct larder_host *host,
                                                 const struct larder_host **slot,
                                                 const struct larder_backend_ops *ops);

#endif
