/* larderd bearer tokens: a token file holds one token per line (blank lines and lines
 * starting with '#' are skipped, surrounding whitespace is ignored). A request passes
 * when its `Authorization: Bearer <token>` matches one of them. Comparisons take the
 * same time whichever token (or none) matches and however many leading bytes agree.
 * Tokens are never logged.
 *
 * Threads: a loaded token set is immutable; check it from any thread.
 */
#ifndef LARDER_DAEMON_AUTH_H
#define LARDER_DAEMON_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct larder__tokens;

/* Loads a token file. A file with no token is an error (-ENOENT with a message: it
 * would lock every admin route); so is a directory (-EISDIR). A file that the group or
 * others may read is loaded with a warning in the log (the tokens are secrets). Errors:
 * negative errno, message in err ("PATH: REASON"). */
int larder__tokens_load(const char *path, struct larder__tokens **ret_tokens, char *err,
                        size_t errlen);

/* Reads a token file as larder__tokens_load does, keeps nothing and logs nothing: 0 when
 * it would load. Errors: the same. */
int larder__tokens_check_file(const char *path, char *err, size_t errlen);

/* Frees a token set. Accepts NULL; returns NULL. */
struct larder__tokens *larder__tokens_free(struct larder__tokens *t);

/* Number of tokens in the set. */
size_t larder__tokens_count(const struct larder__tokens *t);

/* True when `authorization` (the header's value, may be NULL) is "Bearer <token>" with a
 * token of the set. A NULL set refuses everything. */
bool larder__tokens_check(const struct larder__tokens *t, const char *authorization);

/* Constant-time equality of a (alen bytes) and b (blen bytes): the time depends on alen
 * only. */
bool larder__consttime_equal(const char *a, size_t alen, const char *b, size_t blen);

#endif
