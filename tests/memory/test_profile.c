/* Learned profiles: round trip, persistence, in-memory stores, corrupt files, threads. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "profile.h"

struct tmp {
    char dir[PATH_MAX];
};

static void remove_db(const char *dir)
{
    static const char *const files[] = {"profiles.sqlite", "profiles.sqlite-wal",
                                        "profiles.sqlite-shm", "profiles.sqlite-journal"};
    char path[2 * PATH_MAX];

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void rm_rf(const char *dir)
{
    char path[PATH_MAX + 32];

    snprintf(path, sizeof(path), "%s/state", dir);
    remove_db(path);
    remove_db(dir);
}

static int setup(void **state)
{
    struct tmp *t = calloc(1, sizeof(*t));
    const char *base = getenv("TMPDIR");

    if (!t)
        return -1;
    snprintf(t->dir, sizeof(t->dir), "%s/larder-profile-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(t->dir)) {
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    struct tmp *t = *state;

    rm_rf(t->dir);
    free(t);
    return 0;
}

static bool near(double a, double b)
{
    return fabs(a - b) < 1e-9;
}

static void round_trip(struct larder__profiles *s)
{
    struct larder__profile p, orig;
    int64_t t0 = (int64_t)time(NULL);

    memset(&orig, 0x5a, sizeof(orig));
    p = orig;
    assert_int_equal(larder__profile_get(s, "ocr", &p), -ENOENT);
    assert_memory_equal(&p, &orig, sizeof(p));

    assert_int_equal(larder__profile_put(s, "ocr", 90000000, 4000000, 0, 300.0), 0);
    assert_int_equal(larder__profile_get(s, "ocr", &p), 0);
    assert_int_equal(p.measured_bytes, 90000000);
    assert_int_equal(p.instance_bytes, 4000000);
    assert_true(near(p.load_ms_last, 300.0));
    assert_true(near(p.load_ms_avg, 300.0));
    assert_int_equal(p.loads, 1);
    assert_true(p.updated >= t0 && p.updated <= (int64_t)time(NULL));

    /* 0 keeps the stored sizes; the average runs over every load */
    assert_int_equal(larder__profile_put(s, "ocr", 0, 0, 0, 100.0), 0);
    assert_int_equal(larder__profile_put(s, "ocr", 95000000, 0, 0, 500.0), 0);
    assert_int_equal(larder__profile_get(s, "ocr", &p), 0);
    assert_int_equal(p.measured_bytes, 95000000);
    assert_int_equal(p.instance_bytes, 4000000);
    assert_true(near(p.load_ms_last, 500.0));
    assert_true(near(p.load_ms_avg, 300.0)); /* (300 + 100 + 500) / 3 */
    assert_int_equal(p.loads, 3);

    /* names are exact, sizes above 2^63 are kept as the largest storable value */
    assert_int_equal(larder__profile_put(s, "OCR", UINT64_MAX, 1, 0, 1.0), 0);
    assert_int_equal(larder__profile_get(s, "OCR", &p), 0);
    assert_int_equal(p.measured_bytes, (uint64_t)INT64_MAX);
    assert_int_equal(larder__profile_get(s, "ocr", &p), 0);
    assert_int_equal(p.measured_bytes, 95000000);

    assert_int_equal(larder__profile_forget(s, "OCR"), 0);
    assert_int_equal(larder__profile_get(s, "OCR", &p), -ENOENT);
    assert_int_equal(larder__profile_forget(s, "never-there"), 0);
}

static void bad_arguments(struct larder__profiles *s)
{
    struct larder__profile p;

    assert_int_equal(larder__profile_put(s, "x", 1, 1, 0, -1.0), -EINVAL);
    assert_int_equal(larder__profile_put(s, "x", 1, 1, 0, NAN), -EINVAL);
    assert_int_equal(larder__profile_put(s, "", 1, 1, 0, 1.0), -EINVAL);
    assert_int_equal(larder__profile_put(s, NULL, 1, 1, 0, 1.0), -EINVAL);
    assert_int_equal(larder__profile_put(NULL, "x", 1, 1, 0, 1.0), -EINVAL);
    assert_int_equal(larder__profile_get(s, NULL, &p), -EINVAL);
    assert_int_equal(larder__profile_get(s, "x", NULL), -EINVAL);
    assert_int_equal(larder__profile_get(s, "x", &p), -ENOENT);
    assert_int_equal(larder__profile_open(NULL, NULL, 0, NULL), -EINVAL);
    assert_null(larder__profile_close(NULL));
}

static void in_memory(void **state)
{
    struct larder__profiles *s = NULL, *s2 = NULL;
    struct larder__profile p;

    assert_int_equal(larder__profile_open(NULL, NULL, 0, &s), 0);
    assert_string_equal(larder__profile_path(s), "");
    round_trip(s);
    bad_arguments(s);
    /* "" is in memory too, and two in-memory stores share nothing */
    assert_int_equal(larder__profile_open("", NULL, 0, &s2), 0);
    assert_int_equal(larder__profile_get(s2, "ocr", &p), -ENOENT);
    assert_null(larder__profile_close(s2));
    assert_null(larder__profile_close(s));
}

static void persists(void **state)
{
    struct tmp *t = *state;
    struct larder__profiles *s = NULL;
    struct larder__profile p;
    char dir[PATH_MAX + 8], err[256] = "", want[PATH_MAX + 32];
    struct stat st;

    /* the state directory is created when missing */
    snprintf(dir, sizeof(dir), "%s/state", t->dir);
    assert_int_equal(larder__profile_open(dir, err, sizeof(err), &s), 0);
    snprintf(want, sizeof(want), "%s/profiles.sqlite", dir);
    assert_string_equal(larder__profile_path(s), want);
    assert_int_equal(stat(dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    round_trip(s);
    assert_int_equal(larder__profile_put(s, "asr", 91000000, 0, 0, 1500.0), 0);
    assert_null(larder__profile_close(s));

    s = NULL;
    assert_int_equal(larder__profile_open(dir, err, sizeof(err), &s), 0);
    assert_int_equal(larder__profile_get(s, "asr", &p), 0);
    assert_int_equal(p.measured_bytes, 91000000);
    assert_int_equal(p.loads, 1);
    assert_true(near(p.load_ms_last, 1500.0));
    assert_int_equal(larder__profile_get(s, "ocr", &p), 0);
    assert_int_equal(p.loads, 3);
    assert_null(larder__profile_close(s));
}

static void two_stores_one_file(void **state)
{
    struct tmp *t = *state;
    struct larder__profiles *a = NULL, *b = NULL;
    struct larder__profile p;

    /* two connections, as two processes sharing a state directory would have */
    assert_int_equal(larder__profile_open(t->dir, NULL, 0, &a), 0);
    assert_int_equal(larder__profile_open(t->dir, NULL, 0, &b), 0);
    assert_int_equal(larder__profile_put(a, "m", 10, 0, 0, 1.0), 0);
    assert_int_equal(larder__profile_put(b, "m", 20, 0, 0, 3.0), 0);
    assert_int_equal(larder__profile_get(a, "m", &p), 0);
    assert_int_equal(p.measured_bytes, 20);
    assert_int_equal(p.loads, 2);
    assert_true(near(p.load_ms_avg, 2.0));
    larder__profile_close(a);
    larder__profile_close(b);
}

static void write_file(const char *path, const void *bytes, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, bytes, n), (ssize_t)n);
    close(fd);
}

static void corrupt_file(void **state)
{
    static const char garbage[] = "this is not an SQLite database, it is a text file\n";
    struct tmp *t = *state;
    struct larder__profiles *s = NULL;
    struct larder__profile p;
    char path[PATH_MAX + 32], err[256] = "";

    snprintf(path, sizeof(path), "%s/profiles.sqlite", t->dir);
    write_file(path, garbage, sizeof(garbage));
    assert_int_equal(larder__profile_open(t->dir, err, sizeof(err), &s), -EBADMSG);
    assert_null(s);
    assert_non_null(strstr(err, "profiles.sqlite"));
    print_message("corrupt file reported as: %s\n", err);

    /* the caller goes on in memory */
    assert_int_equal(larder__profile_open(NULL, NULL, 0, &s), 0);
    assert_int_equal(larder__profile_put(s, "a", 1, 0, 0, 1.0), 0);
    assert_int_equal(larder__profile_get(s, "a", &p), 0);
    larder__profile_close(s);
}

static void make_db(const char *dir, const char *sql)
{
    char path[PATH_MAX + 32];
    sqlite3 *db = NULL;

    snprintf(path, sizeof(path), "%s/profiles.sqlite", dir);
    unlink(path);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void foreign_database(void **state)
{
    struct tmp *t = *state;
    struct larder__profiles *s = NULL;
    char path[PATH_MAX + 32], err[256] = "";

    /* a real SQLite file whose "profiles" table has another shape */
    make_db(t->dir, "CREATE TABLE profiles (id INTEGER PRIMARY KEY, blob BLOB)");
    assert_int_equal(larder__profile_open(t->dir, err, sizeof(err), &s), -EBADMSG);
    assert_null(s);
    print_message("foreign table reported as: %s\n", err);

    /* written by a newer larder */
    make_db(t->dir, "PRAGMA user_version = 99");
    assert_int_equal(larder__profile_open(t->dir, err, sizeof(err), &s), -EBADMSG);
    assert_non_null(strstr(err, "newer"));

    /* an empty file is a valid, empty database */
    snprintf(path, sizeof(path), "%s/profiles.sqlite", t->dir);
    write_file(path, "", 0);
    assert_int_equal(larder__profile_open(t->dir, err, sizeof(err), &s), 0);
    assert_int_equal(larder__profile_put(s, "a", 1, 0, 0, 1.0), 0);
    larder__profile_close(s);
}

static int user_version(const char *dir)
{
    char path[PATH_MAX + 32];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int v = -1;

    snprintf(path, sizeof(path), "%s/profiles.sqlite", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* A file written by the first schema keeps its rows and gains the first-load figure. */
static void migrates_version_1(void **state)
{
    struct tmp *t = *state;
    struct larder__profiles *s = NULL;
    struct larder__profile p;
    char err[256] = "";

    make_db(t->dir, "CREATE TABLE profiles (name TEXT PRIMARY KEY NOT NULL,"
                    " measured_bytes INTEGER NOT NULL DEFAULT 0,"
                    " instance_bytes INTEGER NOT NULL DEFAULT 0,"
                    " load_ms_last REAL NOT NULL DEFAULT 0,"
                    " load_ms_avg REAL NOT NULL DEFAULT 0,"
                    " loads INTEGER NOT NULL DEFAULT 0,"
                    " updated INTEGER NOT NULL DEFAULT 0);"
                    "INSERT INTO profiles VALUES ('ocr', 27000000, 1000, 900, 800, 5, 17);"
                    "PRAGMA user_version = 1");
    assert_int_equal(larder__profile_open(t->dir, err, sizeof(err), &s), 0);
    assert_int_equal(larder__profile_get(s, "ocr", &p), 0);
    assert_int_equal(p.measured_bytes, 27000000);
    assert_int_equal(p.instance_bytes, 1000);
    assert_int_equal(p.loads, 5);
    assert_int_equal(p.first_bytes, 0);
    /* a first-load figure is kept until the next one; other loads leave it */
    assert_int_equal(larder__profile_put(s, "ocr", 26000000, 0, 26000000, 700.0), 0);
    assert_int_equal(larder__profile_put(s, "ocr", 10000000, 0, 0, 100.0), 0);
    assert_int_equal(larder__profile_get(s, "ocr", &p), 0);
    assert_int_equal(p.measured_bytes, 10000000);
    assert_int_equal(p.first_bytes, 26000000);
    larder__profile_close(s);
    assert_int_equal(user_version(t->dir), 2);
    /* opened again: already migrated, nothing lost */
    assert_int_equal(larder__profile_open(t->dir, err, sizeof(err), &s), 0);
    assert_int_equal(larder__profile_get(s, "ocr", &p), 0);
    assert_int_equal(p.first_bytes, 26000000);
    assert_int_equal(p.loads, 7);
    larder__profile_close(s);
}

static void not_a_directory(void **state)
{
    struct tmp *t = *state;
    struct larder__profiles *s = NULL;
    char path[PATH_MAX + 32], err[256] = "";

    snprintf(path, sizeof(path), "%s/profiles.sqlite", t->dir);
    write_file(path, "x", 1);
    assert_int_equal(larder__profile_open(path, err, sizeof(err), &s), -ENOTDIR);
    assert_null(s);
    assert_true(err[0] != '\0');
    snprintf(path, sizeof(path), "%s/no/such/parent", t->dir);
    assert_int_equal(larder__profile_open(path, err, sizeof(err), &s), -ENOENT);
}

#define THREADS 4
#define PUTS 200

struct worker {
    struct larder__profiles *s;
    int id;
};

static void *hammer(void *arg)
{
    struct worker *w = arg;
    struct larder__profile p;
    char name[32];

    for (int i = 0; i < PUTS; i++) {
        snprintf(name, sizeof(name), "c%d", i % 8);
        if (larder__profile_put(w->s, name, (uint64_t)(w->id + 1) * 1000, 0, 0, 2.0) < 0)
            return (void *)1;
        if (larder__profile_get(w->s, name, &p) < 0 || p.loads == 0)
            return (void *)1;
    }
    return NULL;
}

static void threads(void **state)
{
    struct tmp *t = *state;
    struct larder__profiles *s = NULL;
    struct worker w[THREADS];
    pthread_t th[THREADS];
    struct larder__profile p;
    uint64_t loads = 0;

    assert_int_equal(larder__profile_open(t->dir, NULL, 0, &s), 0);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){s, i};
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    for (int c = 0; c < 8; c++) {
        char name[8];
        snprintf(name, sizeof(name), "c%d", c);
        assert_int_equal(larder__profile_get(s, name, &p), 0);
        assert_true(near(p.load_ms_avg, 2.0));
        loads += p.loads;
    }
    assert_int_equal(loads, THREADS * PUTS); /* no update was lost */
    larder__profile_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(in_memory),
        cmocka_unit_test_setup_teardown(persists, setup, teardown),
        cmocka_unit_test_setup_teardown(two_stores_one_file, setup, teardown),
        cmocka_unit_test_setup_teardown(corrupt_file, setup, teardown),
        cmocka_unit_test_setup_teardown(foreign_database, setup, teardown),
        cmocka_unit_test_setup_teardown(migrates_version_1, setup, teardown),
        cmocka_unit_test_setup_teardown(not_a_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
