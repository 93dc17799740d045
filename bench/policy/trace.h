/* Request traces for the eviction replayer: the in-memory form and the text format.
 *
 * Text format (one item per line; '#' starts a comment; blank lines are ignored):
 *
 *     component NAME BYTES LOAD_SECONDS [priority=N] [ttl=MS] [pin]
 *     TIME NAME [DURATION]
 *
 * A `component` line declares a component: its size (an integer, optionally with a binary
 * suffix K, M, G, KiB, MiB, GiB) and the seconds one load of it takes. priority and ttl
 * (keep-alive in milliseconds, -1 = never, the default) are handed to the policies as the
 * manager would; `pin` makes it unevictable. Every other line is a request: TIME (seconds
 * from the start of the trace, non-decreasing from line to line) at which the component
 * NAME, declared earlier, is acquired, and the seconds it keeps its lease (default 0).
 *
 * Threads: a trace is plain data; nothing here locks. Errors are negative errno values.
 */
#ifndef LARDER_BENCH_TRACE_H
#define LARDER_BENCH_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct trace_comp {
    char *name;
    uint64_t bytes;
    double load_s;
    int priority;
    int64_t ttl_ms;
    bool pin;
};

struct trace_req {
    double t;      /* arrival, seconds from the start */
    double dur;    /* seconds the lease is held once served */
    uint32_t comp; /* index into comps */
};

struct trace {
    char *name;
    struct trace_comp *comps;
    size_t ncomps, capcomps;
    struct trace_req *reqs;
    size_t nreqs, capreqs;
};

/* Creates an empty trace called `name` (copied). Errors: -ENOMEM. */
int trace_new(const char *name, struct trace **ret_trace);
/* Frees a trace. Accepts NULL; returns NULL. */
struct trace *trace_free(struct trace *t);

/* Declares a component; returns its index. Errors: -EINVAL (empty or duplicate name,
 * zero bytes, negative or non-finite load time), -ENOMEM. */
int trace_add_comp(struct trace *t, const struct trace_comp *c);
/* Appends a request. Requests may be appended out of order when trace_sort() follows.
 * Errors: -EINVAL (unknown component, negative or non-finite time or duration), -ENOMEM. */
int trace_add_req(struct trace *t, double time, uint32_t comp, double dur);
/* Sorts the requests by time, keeping the order of equal times. Errors: -ENOMEM. */
int trace_sort(struct trace *t);
/* Index of the component called `name`, or -ENOENT. */
int trace_find(const struct trace *t, const char *name);
/* Sum of the sizes of all components. */
uint64_t trace_total_bytes(const struct trace *t);

/* Reads a trace in the text format. On failure writes "line N: what" into err (errlen
 * bytes, may be 0). Errors: -EINVAL (syntax, unknown component, time going backwards),
 * -ENOMEM, or the negated errno of a failed read. */
int trace_read(FILE *f, const char *name, struct trace **ret_trace, char *err, size_t errlen);
/* Same, from a NUL-terminated string. */
int trace_parse(const char *text, const char *name, struct trace **ret_trace, char *err,
                size_t errlen);
/* Same, from a file; the trace is named after the file's base name without extension. */
int trace_load(const char *path, struct trace **ret_trace, char *err, size_t errlen);
/* Writes t in the text format; trace_read() gives back the same trace. Errors: -EIO. */
int trace_write(const struct trace *t, FILE *f);

/* Parses a size: an integer with an optional binary suffix. Errors: -EINVAL, -ERANGE. */
int trace_parse_size(const char *s, uint64_t *ret_bytes);

#endif
