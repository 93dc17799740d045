/* Memory history ring: ordering, wrap-around, events, and pushes racing copies. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "history.h"

static struct larder__hist_sample sample(uint64_t rss)
{
    return (struct larder__hist_sample){.rss_bytes = rss, .reserved_bytes = rss / 2,
                                        .cgroup_bytes = rss * 2, .psi_some_avg10 = 1.5};
}

static void empty_and_defaults(void **state)
{
    struct larder__history *h = NULL;
    struct larder__hist_entry e[4];

    assert_int_equal(larder__history_new(0, &h), 0);
    assert_int_equal(larder__history_capacity(h), LARDER__HISTORY_DEFAULT);
    assert_int_equal(larder__history_count(h), 0);
    assert_int_equal(larder__history_copy(h, 4, e), 0);
    assert_null(larder__history_free(h));
    assert_null(larder__history_free(NULL));
    assert_int_equal(larder__history_new(1, NULL), -EINVAL);
    assert_int_equal(larder__history_new(SIZE_MAX, &h), -EINVAL);
    /* NULLs are ignored */
    larder__history_push_sample(NULL, 0, &(struct larder__hist_sample){0});
    larder__history_push_event(NULL, 0, LARDER__HIST_LOAD, "x", 1);
    assert_int_equal(larder__history_copy(NULL, 4, e), 0);
    assert_string_equal(larder__hist_kind_name(LARDER__HIST_UNLOAD), "unload");
    assert_string_equal(larder__hist_kind_name((enum larder__hist_kind)42), "?");
}

static void order_before_wrap(void **state)
{
    struct larder__history *h = NULL;
    struct larder__hist_entry e[8];
    struct larder__hist_sample s = sample(100);

    assert_int_equal(larder__history_new(8, &h), 0);
    larder__history_push_sample(h, 1000, &s);
    larder__history_push_event(h, 1001, LARDER__HIST_LOAD, "ocr", 90000000);
    larder__history_push_sample(h, 2000, &(struct larder__hist_sample){.rss_bytes = 200});
    larder__history_push_event(h, 2001, LARDER__HIST_UNLOAD, "ocr", -4096);
    larder__history_push_event(h, 0, LARDER__HIST_PRESSURE, NULL, 0);
    larder__history_push_event(h, 5, LARDER__HIST_SAMPLE, "not an event", 1); /* refused */

    assert_int_equal(larder__history_count(h), 5);
    assert_int_equal(larder__history_copy(h, 8, e), 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(e[i].seq, (uint64_t)i + 1);
    assert_int_equal(e[0].kind, LARDER__HIST_SAMPLE);
    assert_int_equal(e[0].time_ms, 1000);
    assert_int_equal(e[0].sample.rss_bytes, 100);
    assert_int_equal(e[0].sample.cgroup_bytes, 200);
    assert_int_equal(e[1].kind, LARDER__HIST_LOAD);
    assert_string_equal(e[1].name, "ocr");
    assert_int_equal(e[1].bytes, 90000000);
    assert_int_equal(e[2].sample.rss_bytes, 200);
    assert_int_equal(e[3].bytes, -4096);
    assert_int_equal(e[4].kind, LARDER__HIST_PRESSURE);
    assert_string_equal(e[4].name, "");
    assert_true(e[4].time_ms > 1600000000000ll); /* 0 = now, wall clock in ms */

    /* the last 2 only, oldest first */
    assert_int_equal(larder__history_copy(h, 2, e), 2);
    assert_int_equal(e[0].seq, 4);
    assert_int_equal(e[1].seq, 5);
    larder__history_free(h);
}

static void wraps_around(void **state)
{
    enum { CAP = 7, PUSHES = 7 * 5 + 3 };
    struct larder__history *h = NULL;
    struct larder__hist_entry e[CAP + 3];

    assert_int_equal(larder__history_new(CAP, &h), 0);
    for (int i = 1; i <= PUSHES; i++) {
        struct larder__hist_sample s = sample((uint64_t)i);
        larder__history_push_sample(h, i, &s);
        /* after every push, a copy of any length is the newest entries in order */
        for (size_t n = 1; n <= CAP + 3; n++) {
            size_t want = n < (size_t)i ? n : (size_t)i;
            want = want < CAP ? want : CAP;
            assert_int_equal(larder__history_copy(h, n, e), want);
            for (size_t k = 0; k < want; k++)
                assert_int_equal(e[k].sample.rss_bytes, (uint64_t)i - want + 1 + k);
        }
    }
    assert_int_equal(larder__history_count(h), CAP);
    larder__history_free(h);
}

static void long_names_are_cut(void **state)
{
    struct larder__history *h = NULL;
    struct larder__hist_entry e;
    char name[200];

    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    assert_int_equal(larder__history_new(2, &h), 0);
    larder__history_push_event(h, 1, LARDER__HIST_EVICT, name, 1);
    assert_int_equal(larder__history_copy(h, 1, &e), 1);
    assert_int_equal(strlen(e.name), LARDER__HISTORY_NAME_MAX - 1);
    assert_int_equal(memcmp(e.name, name, LARDER__HISTORY_NAME_MAX - 1), 0);
    larder__history_free(h);
}

/* Writers push samples whose fields are tied together and events; readers copy and
 * check that every copy is a run of consecutive, whole entries. */
#define WRITERS 3
#define READERS 2
#define PUSHES_EACH 20000
#define RING 64

struct race {
    struct larder__history *h;
    atomic_int writers_left;
    atomic_int bad;
};

static void *writer(void *arg)
{
    struct race *r = arg;

    for (uint64_t i = 1; i <= PUSHES_EACH; i++) {
        if (i % 5 == 0) {
            larder__history_push_event(r->h, (int64_t)i, LARDER__HIST_EVICT, "component",
                                       (int64_t)i);
        } else {
            struct larder__hist_sample s = sample(i);
            larder__history_push_sample(r->h, (int64_t)i, &s);
        }
    }
    atomic_fetch_sub(&r->writers_left, 1);
    return NULL;
}

static bool entry_whole(const struct larder__hist_entry *e)
{
    if (e->kind == LARDER__HIST_SAMPLE)
        return e->sample.reserved_bytes == e->sample.rss_bytes / 2 &&
               e->sample.cgroup_bytes == e->sample.rss_bytes * 2 &&
               (int64_t)e->sample.rss_bytes == e->time_ms;
    return e->kind == LARDER__HIST_EVICT && e->bytes == e->time_ms &&
           strcmp(e->name, "component") == 0;
}

static void *reader(void *arg)
{
    struct race *r = arg;
    struct larder__hist_entry *e = calloc(RING, sizeof(*e));

    while (e && atomic_load(&r->writers_left) > 0) {
        size_t n = larder__history_copy(r->h, RING, e);
        for (size_t k = 0; k < n; k++) {
            if (!entry_whole(&e[k]) || (k > 0 && e[k].seq != e[k - 1].seq + 1))
                atomic_fetch_add(&r->bad, 1);
        }
    }
    free(e);
    return NULL;
}

static void push_races_copy(void **state)
{
    struct race r = {.h = NULL};
    pthread_t w[WRITERS], rd[READERS];
    struct larder__hist_entry last;

    assert_int_equal(larder__history_new(RING, &r.h), 0);
    atomic_init(&r.writers_left, WRITERS);
    atomic_init(&r.bad, 0);
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&rd[i], NULL, reader, &r), 0);
    for (int i = 0; i < WRITERS; i++)
        assert_int_equal(pthread_create(&w[i], NULL, writer, &r), 0);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(w[i], NULL);
    for (int i = 0; i < READERS; i++)
        pthread_join(rd[i], NULL);

    assert_int_equal(atomic_load(&r.bad), 0);
    assert_int_equal(larder__history_count(r.h), RING);
    assert_int_equal(larder__history_copy(r.h, 1, &last), 1);
    assert_int_equal(last.seq, (uint64_t)WRITERS * PUSHES_EACH); /* every push counted */
    larder__history_free(r.h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(empty_and_defaults), cmocka_unit_test(order_before_wrap),
        cmocka_unit_test(wraps_around),       cmocka_unit_test(long_names_are_cut),
        cmocka_unit_test(push_races_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
