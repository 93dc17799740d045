/* Memory history: a fixed ring of the last samples (one a second by default: an hour
 * of them) with the events that explain them mixed in, in the order they happened.
 *
 * Memory: allocated once at create; pushes never allocate, never block on anything but
 * a short internal lock, and overwrite the oldest entry when the ring is full.
 * Threads: every function may be called from any thread at any time between create and
 * free.
 */
#ifndef LARDER_HISTORY_H
#define LARDER_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#define LARDER__HISTORY_DEFAULT 3600
#define LARDER__HISTORY_NAME_MAX 64 /* component names are cut to 63 bytes */

enum larder__hist_kind {
    LARDER__HIST_SAMPLE = 0,
    LARDER__HIST_LOAD,     /* a component finished loading; bytes = its reservation */
    LARDER__HIST_EVICT,    /* a component is being evicted; bytes = reservation */
    LARDER__HIST_UNLOAD,   /* a component was unloaded; bytes = RSS returned (may be < 0) */
    LARDER__HIST_PRESSURE, /* memory pressure; bytes = what was asked to be freed, or 0 */
};

struct larder__hist_sample {
    uint64_t rss_bytes;      /* process RSS */
    uint64_t reserved_bytes; /* sum of the reservations */
    uint64_t cgroup_bytes;   /* the cgroup's memory.current; 0 when unknown */
    double psi_some_avg10;   /* PSI "some" avg10, %; 0 when unknown */
    uint64_t children_bytes; /* processes of components outside this one; 0 = none */
};

struct larder__hist_entry {
    uint64_t seq;      /* 1 for the first push, then +1 per push: gaps = overwritten */
    int64_t time_ms;   /* wall clock (CLOCK_REALTIME), milliseconds since 1970 */
    enum larder__hist_kind kind;
    struct larder__hist_sample sample; /* LARDER__HIST_SAMPLE */
    int64_t bytes;                     /* events */
    char name[LARDER__HISTORY_NAME_MAX]; /* events: the component, "" for none */
};

struct larder__history;

/* Creates a ring of `capacity` entries (0 = LARDER__HISTORY_DEFAULT). Errors: -ENOMEM,
 * -EINVAL (a capacity too large to allocate). */
int larder__history_new(size_t capacity, struct larder__history **ret_history);

/* Frees the ring. Accepts NULL. Returns NULL. No other call may be running. */
struct larder__history *larder__history_free(struct larder__history *h);

/* Appends a sample taken at time_ms (0 = now). Does nothing for NULL h or s. */
void larder__history_push_sample(struct larder__history *h, int64_t time_ms,
                                 const struct larder__hist_sample *s);

/* Appends an event. name may be NULL. Does nothing for NULL h or a kind out of range. */
void larder__history_push_event(struct larder__history *h, int64_t time_ms,
                                enum larder__hist_kind kind, const char *name, int64_t bytes);

/* Copies the last min(n, stored) entries, oldest first, into ret_entries (room for n)
 * and returns how many. The copy is consistent: taken under one lock hold. */
size_t larder__history_copy(struct larder__history *h, size_t n,
                            struct larder__hist_entry *ret_entries);

/* Entries stored now (<= capacity) and the capacity. */
size_t larder__history_count(struct larder__history *h);
size_t larder__history_capacity(const struct larder__history *h);

/* Name of a kind: "sample", "load", "evict", "unload", "pressure"; "?" otherwise. */
const char *larder__hist_kind_name(enum larder__hist_kind kind);

#endif
