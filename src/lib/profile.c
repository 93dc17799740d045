/* Learned profiles in SQLite (see profile.h). One connection per store, its prepared
 * statements reused under one mutex. */
#include "profile.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define DB_NAME "/profiles.sqlite"
#define BUSY_TIMEOUT_MS 2000
#define SCHEMA_VERSION 2
#define STR(x) #x
#define XSTR(x) STR(x)

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS profiles ("
    " name TEXT PRIMARY KEY NOT NULL,"
    " measured_bytes INTEGER NOT NULL DEFAULT 0,"
    " instance_bytes INTEGER NOT NULL DEFAULT 0,"
    " load_ms_last REAL NOT NULL DEFAULT 0,"
    " load_ms_avg REAL NOT NULL DEFAULT 0,"
    " loads INTEGER NOT NULL DEFAULT 0,"
    " updated INTEGER NOT NULL DEFAULT 0,"
    " first_bytes INTEGER NOT NULL DEFAULT 0)";

/* Version 1 had no first-load figure: its rows keep everything, with first_bytes 0. */
static const char migrate_v1_sql[] =
    "ALTER TABLE profiles ADD COLUMN first_bytes INTEGER NOT NULL DEFAULT 0";

static const char get_sql[] =
    "SELECT measured_bytes, instance_bytes, load_ms_last, load_ms_avg, loads, updated,"
    " first_bytes FROM profiles WHERE name = ?1";

/* ?2/?3/?6 of 0 keep the stored sizes; the average is the running mean over every load. */
static const char put_sql[] =
    "INSERT INTO profiles (name, measured_bytes, instance_bytes, load_ms_last, load_ms_avg,"
    " loads, updated, first_bytes) VALUES (?1, ?2, ?3, ?4, ?4, 1, ?5, ?6)"
    " ON CONFLICT(name) DO UPDATE SET"
    " measured_bytes = CASE WHEN ?2 > 0 THEN ?2 ELSE measured_bytes END,"
    " instance_bytes = CASE WHEN ?3 > 0 THEN ?3 ELSE instance_bytes END,"
    " first_bytes = CASE WHEN ?6 > 0 THEN ?6 ELSE first_bytes END,"
    " load_ms_last = ?4,"
    " load_ms_avg = (load_ms_avg * loads + ?4) / (loads + 1),"
    " loads = loads + 1,"
    " updated = ?5";

static const char forget_sql[] = "DELETE FROM profiles WHERE name = ?1";

struct larder__profiles {
    pthread_mutex_t lock;
    sqlite3 *db;
    sqlite3_stmt *get;
    sqlite3_stmt *put;
    sqlite3_stmt *forget;
    char path[PATH_MAX]; /* "" in memory */
};

static int map_error(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
    case SQLITE_FORMAT:
    case SQLITE_SCHEMA:
        return -EBADMSG;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
        return -EACCES;
    default:
        return -EIO;
    }
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Creates state_dir when missing and builds the database path into s->path. */
static int make_path(struct larder__profiles *s, const char *dir, char *err, size_t errlen)
{
    struct stat st;
    int n;

    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        set_err(err, errlen, "cannot create state directory %s: %s", dir, strerror(e));
        return -e;
    }
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        set_err(err, errlen, "state directory %s is not a directory", dir);
        return -ENOTDIR;
    }
    n = snprintf(s->path, sizeof(s->path), "%s%s", dir, DB_NAME);
    if (n < 0 || (size_t)n >= sizeof(s->path)) {
        s->path[0] = '\0';
        set_err(err, errlen, "state directory path too long");
        return -ENAMETOOLONG;
    }
    return 0;
}

static int exec_sql(struct larder__profiles *s, const char *sql, char *err, size_t errlen)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);

    if (rc == SQLITE_OK)
        return 0;
    set_err(err, errlen, "%s: %s", s->path[0] ? s->path : "profiles", sqlite3_errmsg(s->db));
    /* a table of another shape is not a profile database */
    return rc == SQLITE_ERROR ? -EBADMSG : map_error(rc);
}

static int read_user_version(struct larder__profiles *s, int *ret)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL);

    if (rc != SQLITE_OK)
        return map_error(rc);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *ret = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : map_error(rc);
}

static int check_schema(struct larder__profiles *s, char *err, size_t errlen, int *ret_version)
{
    int version = 0, r;

    if ((r = read_user_version(s, &version)) < 0) {
        set_err(err, errlen, "%s: %s", s->path, sqlite3_errmsg(s->db));
        return r;
    }
    if (version > SCHEMA_VERSION) {
        set_err(err, errlen, "%s: schema version %d is newer than this larder's (%d)", s->path,
                version, SCHEMA_VERSION);
        return -EBADMSG;
    }
    if ((r = exec_sql(s, schema_sql, err, errlen)) < 0)
        return r;
    *ret_version = version;
    return 0;
}

/* Brings a version 1 file to this version, once even when several processes open it
 * at the same time: the version is read again under the write lock. */
static int migrate(struct larder__profiles *s, int *version, char *err, size_t errlen)
{
    int r, now = 0;

    if (*version != 1)
        return 0;
    if ((r = exec_sql(s, "BEGIN IMMEDIATE", err, errlen)) < 0)
        return r;
    r = read_user_version(s, &now);
    if (r == 0 && now == 1)
        r = exec_sql(s, migrate_v1_sql, err, errlen);
    if (r == 0 && now == 1)
        r = exec_sql(s, "PRAGMA user_version = " XSTR(SCHEMA_VERSION), err, errlen);
    if (r < 0) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return r;
    }
    *version = SCHEMA_VERSION;
    return exec_sql(s, "COMMIT", err, errlen);
}

static int prepare_all(struct larder__profiles *s, char *err, size_t errlen)
{
    const char *const sql[] = {get_sql, put_sql, forget_sql};
    sqlite3_stmt **st[] = {&s->get, &s->put, &s->forget};

    for (size_t i = 0; i < 3; i++) {
        int rc = sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, st[i], NULL);
        if (rc != SQLITE_OK) {
            set_err(err, errlen, "%s: %s", s->path, sqlite3_errmsg(s->db));
            return rc == SQLITE_ERROR ? -EBADMSG : map_error(rc);
        }
    }
    return 0;
}

static int open_db(struct larder__profiles *s, char *err, size_t errlen)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int version = 0, rc, r;

    rc = sqlite3_open_v2(s->path[0] ? s->path : ":memory:", &s->db, flags, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "%s: %s", s->path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
        return map_error(rc);
    }
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    if (s->path[0]) {
        /* the first statement to touch the file: a corrupt one fails here */
        if ((r = exec_sql(s, "PRAGMA journal_mode = WAL", err, errlen)) < 0 ||
            (r = exec_sql(s, "PRAGMA synchronous = NORMAL", err, errlen)) < 0)
            return r;
    }
    if ((r = check_schema(s, err, errlen, &version)) < 0 ||
        (r = migrate(s, &version, err, errlen)) < 0 || (r = prepare_all(s, err, errlen)) < 0)
        return r;
    /* stamped only once the statements fit the table: a foreign file keeps its version */
    if (version < SCHEMA_VERSION)
        return exec_sql(s, "PRAGMA user_version = " XSTR(SCHEMA_VERSION), err, errlen);
    return 0;
}

int larder__profile_open(const char *state_dir, char *err, size_t errlen,
                         struct larder__profiles **ret_store)
{
    struct larder__profiles *s;
    int r = 0;

    if (!ret_store)
        return -EINVAL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        free(s);
        return -ENOMEM;
    }
    if (state_dir && *state_dir)
        r = make_path(s, state_dir, err, errlen);
    if (r >= 0)
        r = open_db(s, err, errlen);
    if (r < 0) {
        larder__profile_close(s);
        return r;
    }
    *ret_store = s;
    return 0;
}

static sqlite3_int64 clamp_i64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)v;
}

static uint64_t column_u64(sqlite3_stmt *st, int col)
{
    sqlite3_int64 v = sqlite3_column_int64(st, col);

    return v < 0 ? 0 : (uint64_t)v;
}

static void read_row(sqlite3_stmt *st, struct larder__profile *p)
{
    p->measured_bytes = column_u64(st, 0);
    p->instance_bytes = column_u64(st, 1);
    p->load_ms_last = sqlite3_column_double(st, 2);
    p->load_ms_avg = sqlite3_column_double(st, 3);
    p->loads = column_u64(st, 4);
    p->updated = sqlite3_column_int64(st, 5);
    p->first_bytes = column_u64(st, 6);
}

/* Runs a statement whose parameters are bound; resets it for the next use. */
static int finish(sqlite3_stmt *st, struct larder__profile *ret_row)
{
    int rc = sqlite3_step(st), r;

    if (rc == SQLITE_ROW && ret_row) {
        read_row(st, ret_row);
        r = 0;
    } else if (rc == SQLITE_DONE) {
        r = ret_row ? -ENOENT : 0;
    } else {
        r = map_error(rc);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return r;
}

int larder__profile_get(struct larder__profiles *s, const char *name,
                        struct larder__profile *ret_profile)
{
    struct larder__profile p;
    int r;

    if (!s || !name || !ret_profile)
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    r = sqlite3_bind_text(s->get, 1, name, -1, SQLITE_TRANSIENT);
    r = r == SQLITE_OK ? finish(s->get, &p) : map_error(r);
    pthread_mutex_unlock(&s->lock);
    if (r == 0)
        *ret_profile = p;
    return r;
}

int larder__profile_put(struct larder__profiles *s, const char *name, uint64_t measured_bytes,
                        uint64_t instance_bytes, uint64_t first_bytes, double load_ms)
{
    int rc, r;

    if (!s || !name || !*name || !isfinite(load_ms) || load_ms < 0)
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    rc = sqlite3_bind_text(s->put, 1, name, -1, SQLITE_TRANSIENT);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s->put, 2, clamp_i64(measured_bytes));
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s->put, 3, clamp_i64(instance_bytes));
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_double(s->put, 4, load_ms);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s->put, 5, (sqlite3_int64)time(NULL));
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s->put, 6, clamp_i64(first_bytes));
    r = rc == SQLITE_OK ? finish(s->put, NULL) : map_error(rc);
    if (rc != SQLITE_OK)
        sqlite3_clear_bindings(s->put);
    pthread_mutex_unlock(&s->lock);
    return r;
}

int larder__profile_forget(struct larder__profiles *s, const char *name)
{
    int r;

    if (!s || !name)
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    r = sqlite3_bind_text(s->forget, 1, name, -1, SQLITE_TRANSIENT);
    r = r == SQLITE_OK ? finish(s->forget, NULL) : map_error(r);
    pthread_mutex_unlock(&s->lock);
    return r;
}

const char *larder__profile_path(const struct larder__profiles *s)
{
    return s ? s->path : "";
}

struct larder__profiles *larder__profile_close(struct larder__profiles *s)
{
    if (!s)
        return NULL;
    sqlite3_finalize(s->get);
    sqlite3_finalize(s->put);
    sqlite3_finalize(s->forget);
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->lock);
    free(s);
    return NULL;
}
