/* larderd configuration: one INI file (see docs/config.md).
 *
 * larder__config_load_all() reads and validates the whole file and reports every error it
 * finds, each naming the file, the line and the key: syntax errors, unknown sections and
 * keys (with a "did you mean" for near misses), bad values, keys given twice, missing
 * required keys, and the combinations of keys the library would refuse at larder_open()
 * (a low_watermark that is not below the high_watermark, either one's default included).
 * larder__config_load() is the same check returning the first error's text only.
 * Relative paths resolve against the directory of the config file. Backend option keys
 * (any key of a [model.NAME] section that larderd does not know) are kept in order for
 * the backend; larder__config_check_model_keys() checks them against a backend's own list
 * once the backend is open (at the model's first load, or by `larder check`).
 *
 * Threads: a loaded config is immutable and may be read from any thread. The parsing
 * functions keep no state between calls and may run on several threads at once.
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
#define LARDER__NODE_NAME_MAX 64

/* Where a model runs ([model.NAME] isolation; DESIGN.md section 5). */
enum larder__isolation {
    LARDER__ISOLATION_IN_PROCESS = 0, /* the plugin inside larderd (the default) */
    LARDER__ISOLATION_WORKER,         /* the plugin in a larder-worker child process */
    LARDER__ISOLATION_EXTERNAL,       /* a command serving HTTP, reverse-proxied */
};

/* The API an external model's server speaks ([model.NAME] api), through which larderd's
 * dialect routes reach it by its name. */
enum larder__ext_api {
    LARDER__EXT_API_NONE = 0,         /* only its own routes: /infer and /proxy */
    LARDER__EXT_API_OPENAI,           /* /v1/chat/completions, /v1/completions, ... */
};

/* An external model: a command larderd starts on first use and proxies to. */
struct larder__external_conf {
    char **argv;                  /* the command split into words, NULL-terminated; the
                                   * ${PORT} and ${MODEL} macros are still in them */
    size_t argc;
    char **env;                   /* KEY=VALUE words added to the environment; may be NULL */
    size_t n_env;
    char *workdir;                /* resolved; NULL = the config file's directory */
    char *health;                 /* path polled until it answers 200; default /health */
    char *proxy;                  /* base URL, macros in it; default http://127.0.0.1:${PORT} */
    char *infer_path;             /* where POST .../infer goes; default /infer */
    int64_t stop_timeout_ms;      /* SIGTERM to SIGKILL; default 10 s */
    enum larder__ext_api api;     /* the dialect its server speaks; default none */
    unsigned command_line;        /* line of the command key */
};

/* "in-process", "worker", "external". */
const char *larder__isolation_name(enum larder__isolation i);

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
    int64_t infer_timeout_ms;     /* one inference's deadline; 0 = none */
    enum larder__isolation isolation;
    struct larder__external_conf ext; /* isolation = external only */
    int64_t worker_timeout_ms;    /* worker: each call's deadline; 0 = the default (60 s) */
};

struct larder__config {
    char *file;                   /* as given */
    char *dir;                    /* absolute directory of the file */
    /* [server] */
    char *listen_host;            /* default 127.0.0.1 */
    unsigned listen_port;         /* default 8377 */
    char *admin_tokens;           /* resolved path; NULL = admin routes refused */
    char *infer_tokens;           /* resolved path; NULL = infer routes open */
    unsigned admin_tokens_line;   /* config line of each token file's key (0 = not set) */
    unsigned infer_tokens_line;
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
    bool allow_empty;             /* a reload may leave no model, or no admin tokens */
    unsigned max_connections;     /* open connections, all clients; default 1024 */
    unsigned max_connections_per_client; /* open connections of one address; default 256 */
    int64_t header_timeout_ms;    /* a request's headers, from the connection's opening or
                                   * the end of its previous request; default 30 s */
    int64_t body_timeout_ms;      /* a request's body, from its headers; default 120 s */
    uint64_t request_memory;      /* body bytes buffered for requests in flight, all
                                   * together; default 256 MiB */
    char *node_name;              /* X-Larder-Node of every reply; NULL = the host name */
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
    int64_t cooldown_ms;          /* the first cooldown after a failure; 0 = library default */
    /* [model.NAME], sorted by name */
    struct larder__model_conf *models;
    size_t n_models;              /* 0 is valid: the caller decides what an empty config means */
    /* key = value lines read, in any section. 0: the file holds no setting at all (empty,
     * blank or comments only), which is loaded like a file of defaults. */
    unsigned n_settings;
};

/* One error found in a config file. The strings live for the duration of the report
 * call only; copy what you keep. */
struct larder__config_error {
    const char *file;     /* the config file, as given */
    unsigned line;        /* 1-based; 0 when the error is about the whole file */
    const char *section;  /* "server", "memory", "model.NAME", an unknown section's name;
                           * NULL when the error is about a line outside any section */
    const char *key;      /* the key; NULL when the error is about a line or a section */
    const char *message;  /* the message alone: "value out of range '0'" */
    const char *text;     /* everything, one line, no newline: "FILE:LINE: [SECTION] KEY:
                           * MESSAGE" with a key, "FILE:LINE: MESSAGE" without,
                           * "FILE: MESSAGE" for line 0 */
};

/* Receives one error; ud is the caller's pointer. Must not call back into the loader. */
typedef void (*larder__config_report_fn)(void *ud, const struct larder__config_error *e);

/* A report function that writes e->text and a newline to the stdio FILE *ud. */
void larder__config_report_print(void *ud, const struct larder__config_error *e);

/* Loads and validates a config file, reporting every error rather than the first.
 *
 * Each error goes to report (which may be NULL: then they are only counted), once, in
 * order of line (errors about the whole file, line 0, first), before this returns.
 * Parsing goes on after an error, so one run shows every mistake; after 100 errors, or
 * at a NUL byte (not a text file), it stops reading and says so in the last error.
 *
 * Returns 0 and *ret_config (free it with larder__config_free) when there is no error;
 * ret_config may be NULL to check a file only. Otherwise sets *ret_config (when not
 * NULL) to NULL and returns a negative errno: -EINVAL for errors in the text; the open
 * or read error for a file that cannot be read (-ENOENT, -EACCES, -EISDIR for a
 * directory, -EIO, ...; reported with line 0 and no key), also when errors in the lines
 * before a read error were reported; -ENOMEM. A file that is empty or holds only blank
 * lines and comments is not an error: it loads with n_models == 0 and n_settings == 0. */
int larder__config_load_all(const char *file, struct larder__config **ret_config,
                            larder__config_report_fn report, void *ud);

/* The candidate nearest to key, for a "did you mean": the first candidate, in list
 * order, at the smallest edit distance from key (one insertion, deletion, substitution
 * or swap of two adjacent characters counts 1; letters compare case-insensitively),
 * provided that distance is at most 2 and less than half the length of key. NULL when
 * none is that near, or when key or candidates is NULL. candidates is NULL-terminated;
 * candidates longer than 64 characters are never suggested. Pure; any thread. */
const char *larder__config_suggest(const char *key, const char *const *candidates);

/* larderd's own keys of a [model.NAME] section, NULL-terminated ("backend", "path",
 * "instances", ...). Every other key of the section is a backend option. */
const char *const *larder__config_model_keys(void);

/* Checks the backend options of model m (of config c) against the option keys its
 * backend accepts: backend_keys, NULL-terminated (NULL: the backend accepts none).
 * Every option whose key is neither one of larderd's model keys (so never "path") nor
 * in backend_keys is reported through report (may be NULL), in config order, as an
 * error with file c->file, the option's line, section "model.NAME", the key, and
 *   message  "unknown key for backend 'B'" or "unknown key for backend 'B' (did you
 *            mean 'K'?)", K the nearest of larderd's model keys and backend_keys by the
 *            rule of larder__config_suggest, larderd's winning a tie (so `instnaces`
 *            suggests `instances`, and `langauge` a backend's `language`);
 *   text     "FILE:LINE: [model.NAME] KEY: unknown key for backend 'B' (did you mean 'K'?)".
 * Returns the number of unknown keys (0: all known). Any thread; c is not changed. */
size_t larder__config_check_model_keys(const struct larder__config *c,
                                       const struct larder__model_conf *m,
                                       const char *const *backend_keys,
                                       larder__config_report_fn report, void *ud);

/* Loads and validates a config file: larder__config_load_all() keeping only the first
 * error. On failure writes that error's text (file, line and key) into err (errlen
 * bytes), sets *ret_config to NULL and returns the same negative errno. */
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

/* True when v may name a node (`[server] node_name`): 1 to LARDER__NODE_NAME_MAX of
 * [A-Za-z0-9._:-], so it needs no quoting in a header or a Prometheus label. */
bool larder__node_name_valid(const char *v);

/* Parses yes/no, true/false, on/off, 1/0. Errors: -EINVAL. */
int larder__parse_bool(const char *s, bool *ret_value);

/* Parses "HOST:PORT", ":PORT", "PORT" or "[V6]:PORT". On success *ret_host is a new
 * string (the default host when none is given). Errors: -EINVAL, -ENOMEM. */
int larder__parse_listen(const char *s, char **ret_host, unsigned *ret_port);

/* Writes bytes as "512 B", "1.5 KiB", "20.7 MiB", "2.0 GiB". */
void larder__format_size(uint64_t bytes, char *buf, size_t len);

#endif
