/* larderd logging: one line per event and per request, as text or JSON lines.
 *
 * A line is a message plus ordered fields. Fields are given as a jansson object (its
 * keys keep their insertion order); the text format prints them as key=value, the JSON
 * format as one object per line with "ts", "level" and "msg" first.
 *
 * Threads: every function may be called from any thread; each line is written with a
 * single write(2), so lines of different threads never interleave.
 */
#ifndef LARDER_DAEMON_LOG_H
#define LARDER_DAEMON_LOG_H

#include <jansson.h>
#include <stdbool.h>

enum larder__log_format {
    LARDER__LOG_TEXT = 0,
    LARDER__LOG_JSON,
};

enum larder__log_level {
    LARDER__LOG_ERROR = 0,
    LARDER__LOG_WARN,
    LARDER__LOG_INFO,
    LARDER__LOG_DEBUG,
};

/* Sets the format, the most verbose level written and the file descriptor (2 by
 * default). Call before other threads log. */
void larder__log_setup(enum larder__log_format format, enum larder__log_level level, int fd);

/* Parses "text"/"json" and "error"/"warn"/"info"/"debug". Errors: -EINVAL. */
int larder__log_parse_format(const char *s, enum larder__log_format *ret_format);
int larder__log_parse_level(const char *s, enum larder__log_level *ret_level);

/* True when lines of this level are written (to skip building fields). */
bool larder__log_enabled(enum larder__log_level level);

/* Writes one line. fields may be NULL; the reference to fields is stolen (decref'd). */
void larder__log(enum larder__log_level level, const char *msg, json_t *fields);

/* Writes one line with printf-style text in a "detail" field. */
void larder__logf(enum larder__log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
