/* larderd configuration: one INI file (see docs/config.md).
 *
 * larder__config_load() reads and validates the whole file: unknown sections and keys,
 * bad values and missing required keys are errors that name the file, the line and the
 * key. Relative paths resolve against the directory of the config file. Backend option
 * keys (any key of a [model.NAME] section that larderd does not know) are kept in order
 * for the backend; they are checked against the backend's own list when the backend is
 * opened (at the model's first load, or by `larder check`).
 *
 * Threads: a loaded config is immutable and may be read from any thread.
 */
#ifndef LARDER_DAEMON_CONFIG_H
#define LARDER_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "larder/backend.h"
#include "larder/larder.h"
#include "log.h"

#define LARDER__DEFAULT_PORT 8377

struct larder__model_conf {
    char *name;
    char *backend;
    char *path;                   /* resolved; NULL when the model has none */
    struct larder_option *opts;   /* backend options, "path" first when set */
    unsigned *opt_lines;          /* config line of each option (0 for "path") */
    size_t n_opts;
    unsigned instances;           /* >= 1 */
    int64_t ttl_ms;               /* LARDER_TTL_DEFAULT when not set */
    bool preload;
    bool pin;
    int priority;
    char *fallback;               /* NULL when none */
    uint64_t memory_bytes;        /* 0 = no override */
    unsigned queue;               /* 0 = manager default */
    int64_t timeout_ms;           /* 0 = the server's request_timeout */
    int gpu;                      /* GPU whose device memory it takes; -1 = none */
    uint64_t gpu_bytes;           /* device memory it takes once loaded */
    unsigned line;                /* line of the [model.NAME] header */
    unsigned backend_line;        /* line of the backend key */
    unsigned path_line;           /* line of the path key (0 = none) */
    unsigned fallback_line;       /* line of the fallback key (0 = none) */
};

struct larder__config {
    char *file;                   /* as given */
    char *dir;                    /* absolute directory of the file */
    /* [server] */
    char *listen_host;            /* default 127.0.0.1 */
    unsigned listen_port;         /* default 8377 */
    char *admin_tokens;           /* resolved path; NULL = admin routes refused */
    char *infer_tokens;           /* resolved path; NULL = infer routes open */
    char *backend_dir;            /* resolved; NULL = environment, then built-in */
    uint64_t max_body;            /* default 32 MiB */
    int64_t request_timeout_ms;   /* default 60 s */
    unsigned threads;             /* inference workers; 0 = number of CPUs */
    unsigned http_threads;        /* HTTP polling threads; 0 = automatic */
    uint64_t events_queue;        /* bytes queued per SSE client before it is dropped */
    int64_t drain_timeout_ms;     /* unload/reload/shutdown drain; default 30 s */
    enum larder__log_format log_format;
    enum larder__log_level log_level;
    char *state_dir;              /* resolved; NULL = none */
    /* [memory] */
    uint64_t budget_bytes;        /* 0 = budget_fraction */
    double budget_fraction;       /* 0 = library default */
    char *policy;                 /* NULL = library default */
    int64_t default_ttl_ms;       /* LARDER_TTL_DEFAULT when not set */
    unsigned loader_threads;      /* 0 = library default */
    int64_t admission_timeout_ms; /* 0 = library default */
    double high_watermark;        /* fraction of the memory limit; 0 = library default */
    double low_watermark;         /* fraction to evict down to; 0 = library default */
    bool watch_pressure;          /* PSI and cgroup memory.events watcher; default yes */
    char *psi_trigger;            /* "some 150000 1000000"; "" = none; NULL = default */
    int64_t history_s;            /* memory history kept, seconds; -1 = library default */
    uint64_t gpu_budget[LARDER_MAX_GPUS]; /* device-memory budgets; 0 = not enforced */
    /* [model.NAME], sorted by name */
    struct larder__model_conf *models;
    size_t n_models;
};

/* Loads and validates a config file. On failure writes a message naming the file, line
 * and key into err (errlen bytes) and returns a negative errno. */
int larder__config_load(const char *file, struct larder__config **ret_config, char *err,
                        size_t errlen);

/* Frees a config. Accepts NULL; returns NULL. */
struct larder__config *larder__config_free(struct larder__config *c);

/* The model named `name`, or NULL. Binary search; any thread. */
const struct larder__model_conf *larder__config_model(const struct larder__config *c,
                                                      const char *name);

/* True when two model definitions are the same (nothing to redefine on reload). */
bool larder__model_conf_equal(const struct larder__model_conf *a,
                              const struct larder__model_conf *b);

/* Parses a duration: "250ms", "30s", "5m", "2h", "1d", a plain number (seconds),
 * "never" (-1) or "0". Errors: -EINVAL, -ERANGE. */
int larder__parse_duration(const char *s, int64_t *ret_ms);

/* Parses yes/no, true/false, on/off, 1/0. Errors: -EINVAL. */
int larder__parse_bool(const char *s, bool *ret_value);

/* Parses "HOST:PORT", ":PORT", "PORT" or "[V6]:PORT". On success *ret_host is a new
 * string (the default host when none is given). Errors: -EINVAL, -ENOMEM. */
int larder__parse_listen(const char *s, char **ret_host, unsigned *ret_port);

/* Writes bytes as "512 B", "1.5 KiB", "20.7 MiB", "2.0 GiB". */
void larder__format_size(uint64_t bytes, char *buf, size_t len);

#endif
