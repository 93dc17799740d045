/* Memory history ring (see history.h). */
#include "history.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct larder__history {
    pthread_mutex_t lock;
    size_t capacity;
    size_t head;  /* where the next push goes */
    size_t count; /* entries stored, <= capacity */
    uint64_t seq; /* of the last push */
    struct larder__hist_entry *ring;
};

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int larder__history_new(size_t capacity, struct larder__history **ret_history)
{
    struct larder__history *h;

    if (!ret_history)
        return -EINVAL;
    if (capacity == 0)
        capacity = LARDER__HISTORY_DEFAULT;
    if (capacity > SIZE_MAX / sizeof(struct larder__hist_entry))
        return -EINVAL;
    h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->ring = calloc(capacity, sizeof(*h->ring));
    if (!h->ring || pthread_mutex_init(&h->lock, NULL) != 0) {
        free(h->ring);
        free(h);
        return -ENOMEM;
    }
    h->capacity = capacity;
    *ret_history = h;
    return 0;
}

struct larder__history *larder__history_free(struct larder__history *h)
{
    if (!h)
        return NULL;
    pthread_mutex_destroy(&h->lock);
    free(h->ring);
    free(h);
    return NULL;
}

/* Stores *e (its seq assigned here) over the oldest entry when full. */
static void push(struct larder__history *h, struct larder__hist_entry *e)
{
    if (e->time_ms == 0)
        e->time_ms = now_ms();
    pthread_mutex_lock(&h->lock);
    e->seq = ++h->seq;
    h->ring[h->head] = *e;
    h->head = (h->head + 1) % h->capacity;
    if (h->count < h->capacity)
        h->count++;
    pthread_mutex_unlock(&h->lock);
}

void larder__history_push_sample(struct larder__history *h, int64_t time_ms,
                                 const struct larder__hist_sample *s)
{
    struct larder__hist_entry e = {.time_ms = time_ms, .kind = LARDER__HIST_SAMPLE};

    if (!h || !s)
        return;
    e.sample = *s;
    push(h, &e);
}

void larder__history_push_event(struct larder__history *h, int64_t time_ms,
                                enum larder__hist_kind kind, const char *name, int64_t bytes)
{
    struct larder__hist_entry e = {.time_ms = time_ms, .kind = kind, .bytes = bytes};

    if (!h || kind <= LARDER__HIST_SAMPLE || kind > LARDER__HIST_PRESSURE)
        return;
    if (name) {
        size_t n = strnlen(name, sizeof(e.name) - 1);
        memcpy(e.name, name, n);
        e.name[n] = '\0';
    }
    push(h, &e);
}

size_t larder__history_copy(struct larder__history *h, size_t n,
                            struct larder__hist_entry *ret_entries)
{
    size_t start, first;

    if (!h || !ret_entries || n == 0)
        return 0;
    pthread_mutex_lock(&h->lock);
    if (n > h->count)
        n = h->count;
    /* the oldest wanted entry sits n places behind head */
    start = (h->head + h->capacity - n) % h->capacity;
    first = h->capacity - start < n ? h->capacity - start : n;
    memcpy(ret_entries, h->ring + start, first * sizeof(*ret_entries));
    memcpy(ret_entries + first, h->ring, (n - first) * sizeof(*ret_entries));
    pthread_mutex_unlock(&h->lock);
    return n;
}

size_t larder__history_count(struct larder__history *h)
{
    size_t n;

    if (!h)
        return 0;
    pthread_mutex_lock(&h->lock);
    n = h->count;
    pthread_mutex_unlock(&h->lock);
    return n;
}

size_t larder__history_capacity(const struct larder__history *h)
{
    return h ? h->capacity : 0;
}

const char *larder__hist_kind_name(enum larder__hist_kind kind)
{
    static const char *const names[] = {"sample", "load", "evict", "unload", "pressure"};

    if ((unsigned)kind >= sizeof(names) / sizeof(names[0]))
        return "?";
    return names[kind];
}
