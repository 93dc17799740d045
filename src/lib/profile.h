/* Learned profiles: what each component really took the last times it was loaded, kept
 * across restarts in <state_dir>/profiles.sqlite so that the next estimate starts from
 * a measurement instead of a guess.
 *
 * Threads: a store may be used from any number of threads at once (one lock inside).
 * Several processes may share one file: it is in WAL mode, and a writer waits up to
 * 2 s for another process's lock before giving up with -EBUSY.
 *
 * Errors: negative errno values: -EINVAL (bad arguments), -ENOENT (no profile for that
 * name), -ENOMEM, -EBADMSG (the file is not a profile database, or is corrupt), -EBUSY
 * (locked by another process for too long), -EACCES (cannot create or write the
 * file), -EIO (any other SQLite failure). Out-parameters are untouched on failure.
 */
#ifndef LARDER_PROFILE_H
#define LARDER_PROFILE_H

#include <stddef.h>
#include <stdint.h>

struct larder__profile {
    uint64_t measured_bytes; /* last measured size of the model (plus one instance) */
    uint64_t instance_bytes; /* last measured size of one more instance; 0 = unknown */
    uint64_t first_bytes;    /* last size measured by a first load of its class in a
                                fresh process (engine mapping included); 0 = unknown */
    double load_ms_last;     /* duration of the last load */
    double load_ms_avg;      /* mean duration over every recorded load */
    uint64_t loads;          /* loads recorded */
    int64_t updated;         /* when the last load was recorded, seconds since 1970 */
};

struct larder__profiles;

/* Opens (creating when missing) <state_dir>/profiles.sqlite; state_dir itself is
 * created (mode 0700) when it does not exist. NULL or "" state_dir: an in-memory store
 * that lives until close, never an error other than -ENOMEM. On failure a reason is
 * written to err (errlen bytes, may be NULL/0) and the caller may fall back to an
 * in-memory store: larder__profile_open(NULL, ...). */
int larder__profile_open(const char *state_dir, char *err, size_t errlen,
                         struct larder__profiles **ret_store);

/* Reads the profile of `name`. -ENOENT when none was recorded. */
int larder__profile_get(struct larder__profiles *s, const char *name,
                        struct larder__profile *ret_profile);

/* Records one load of `name`: measured_bytes, instance_bytes and first_bytes replace
 * the stored ones unless 0 (unknown: the old value stays); load_ms becomes the last
 * load time and enters the average; loads grows by one; updated becomes now. */
int larder__profile_put(struct larder__profiles *s, const char *name, uint64_t measured_bytes,
                        uint64_t instance_bytes, uint64_t first_bytes, double load_ms);

/* Forgets the profile of `name` (0 also when there was none). */
int larder__profile_forget(struct larder__profiles *s, const char *name);

/* Path of the database file; "" for an in-memory store. Valid until close. */
const char *larder__profile_path(const struct larder__profiles *s);

/* Closes the store. Accepts NULL. Returns NULL. */
struct larder__profiles *larder__profile_close(struct larder__profiles *s);

#endif
