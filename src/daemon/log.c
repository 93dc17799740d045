/* larderd logging (see log.h). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_format = LARDER__LOG_TEXT;
static _Atomic int log_level = LARDER__LOG_INFO;
static _Atomic int log_fd = 2;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void larder__log_setup(enum larder__log_format format, enum larder__log_level level, int fd)
{
    atomic_store(&log_format, (int)format);
    atomic_store(&log_level, (int)level);
    atomic_store(&log_fd, fd);
}

int larder__log_parse_format(const char *s, enum larder__log_format *ret_format)
{
    if (s && strcmp(s, "text") == 0)
        *ret_format = LARDER__LOG_TEXT;
    else if (s && strcmp(s, "json") == 0)
        *ret_format = LARDER__LOG_JSON;
    else
        return -EINVAL;
    return 0;
}

int larder__log_parse_level(const char *s, enum larder__log_level *ret_level)
{
    for (int i = 0; s && i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *ret_level = (enum larder__log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool larder__log_enabled(enum larder__log_level level)
{
    return (int)level <= atomic_load(&log_level);
}

static void format_time(char *buf, size_t len)
{
    /* The date part changes once a second: each thread keeps its last one. */
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char cached[32];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = ts.tv_sec;
    }
    snprintf(buf, len, "%.20s.%03dZ", cached, (int)(ts.tv_nsec / 1000000));
}

/* Appends to a growing buffer; on allocation failure the line is cut short. */
struct line {
    char *buf;
    size_t len, cap;
};

static void line_add(struct line *l, const char *s, size_t n)
{
    if (l->len + n + 2 > l->cap) {
        size_t cap = (l->len + n + 2) * 2;
        char *nb = realloc(l->buf, cap);
        if (!nb)
            return;
        l->buf = nb;
        l->cap = cap;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void line_str(struct line *l, const char *s)
{
    line_add(l, s, strlen(s));
}

static bool needs_quotes(const char *s)
{
    if (!*s)
        return true;
    for (; *s; s++)
        if (*s <= ' ' || *s == '"' || *s == '=' || *s == '\\' || (unsigned char)*s >= 0x7f)
            return true;
    return false;
}

static void text_value(struct line *l, json_t *v)
{
    char num[64];
    if (json_is_string(v) && !needs_quotes(json_string_value(v))) {
        line_str(l, json_string_value(v));
        return;
    }
    if (json_is_integer(v) || json_is_real(v)) {
        if (json_is_integer(v))
            snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        else
            snprintf(num, sizeof num, "%.6g", json_real_value(v));
        line_str(l, num);
        return;
    }
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(6));
    if (s)
        line_str(l, s);
    free(s);
}

static void build_text(struct line *l, const char *ts, const char *level, const char *msg,
                       json_t *fields)
{
    const char *key;
    json_t *v;
    line_str(l, ts);
    line_str(l, " ");
    line_str(l, level);
    line_str(l, " ");
    line_str(l, msg);
    json_object_foreach(fields, key, v) {
        line_str(l, " ");
        line_str(l, key);
        line_str(l, "=");
        text_value(l, v);
    }
}

static void build_json(struct line *l, const char *ts, const char *level, const char *msg,
                       json_t *fields)
{
    json_t *o = json_pack("{s:s,s:s,s:s}", "ts", ts, "level", level, "msg", msg);
    if (!o)
        return;
    if (fields)
        json_object_update(o, fields);
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    if (s)
        line_str(l, s);
    free(s);
    json_decref(o);
}

void larder__log(enum larder__log_level level, const char *msg, json_t *fields)
{
    if (!larder__log_enabled(level)) {
        json_decref(fields);
        return;
    }
    char ts[40];
    struct line l = {0};
    format_time(ts, sizeof ts);
    if (atomic_load(&log_format) == LARDER__LOG_JSON)
        build_json(&l, ts, level_names[level], msg, fields);
    else
        build_text(&l, ts, level_names[level], msg, fields);
    json_decref(fields);
    if (!l.buf)
        return;
    l.buf[l.len++] = '\n';
    int fd = atomic_load(&log_fd);
    for (size_t off = 0; off < l.len;) {
        ssize_t n = write(fd, l.buf + off, l.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    free(l.buf);
}

void larder__logf(enum larder__log_level level, const char *msg, const char *fmt, ...)
{
    if (!larder__log_enabled(level))
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    larder__log(level, msg, json_pack("{s:s}", "detail", buf));
}
