/* larderd command lines of external models: splitting a config value into words, and
 * the ${PORT} and ${MODEL} macros.
 *
 * Splitting follows the shell's quoting without any of its expansions: words are
 * separated by blanks; 'single quotes' keep everything literally; "double quotes" keep
 * everything but a backslash before " or \, which stands for that character; outside
 * quotes a backslash keeps the next character. Nothing else is special (no globs, no
 * variables, no ~): the words go to execve() as they are, after the macros.
 *
 * Threads: pure functions; any thread.
 */
#ifndef LARDER_DAEMON_CMDLINE_H
#define LARDER_DAEMON_CMDLINE_H

#include <stddef.h>

/* Splits s into words: *ret_words is a NULL-terminated array of *ret_n malloc'd strings
 * (free with larder__cmdline_free). Errors: -EINVAL (an unterminated quote, a trailing
 * backslash, no word at all), message in err; -ENOMEM. */
int larder__cmdline_split(const char *s, char ***ret_words, size_t *ret_n, char *err,
                          size_t errlen);

/* Checks that every "${...}" of s is a known macro (${PORT}, ${MODEL}). Errors: -EINVAL
 * with the unknown one named in err. */
int larder__cmdline_check_macros(const char *s, char *err, size_t errlen);

/* s with ${PORT} replaced by port and ${MODEL} by model: a malloc'd string, or NULL on
 * ENOMEM. Unknown macros are left as they are. */
char *larder__cmdline_expand(const char *s, unsigned port, const char *model);

/* Frees a NULL-terminated word array. Accepts NULL. */
void larder__cmdline_free(char **words);

#endif
