/* larder backend plugin ABI. Self-contained: a backend includes this header only.
 *
 * A backend is a shared object exporting one symbol, LARDER_BACKEND_ENTRY, of type
 * larder_backend_entry_fn. The host calls it once after dlopen() with its table of
 * services and gets back the backend's operations table.
 *
 * Versioning: abi_major changes break compatibility: the host refuses a plugin whose
 * abi_major differs from its own. abi_minor grows when fields are appended at the end
 * of struct larder_backend_ops, struct larder_host or struct larder_infer_request; a
 * reader checks the other side's abi_minor before touching a field newer than that side.
 * struct larder_infer_request has no size or version of its own: the host fills it, so a
 * backend reads a request field added in minor N only when host->abi_minor >= N (the
 * host it was given at entry). The host fills every field it knows and never assumes a
 * backend reads the newer ones: a minor-0 backend never sees a cancel check, and its
 * requests simply run to their end.
 *
 * Minor 1 added: LARDER_BACKEND_ECANCELED and LARDER_BACKEND_ETOOBIG, the request's
 * host_ctx, and the host's cancelled and reserve_request_bytes services. A backend returns
 * an error code of minor N only to a host of minor N or later (to a minor-0 host, an
 * input too big is LARDER_BACKEND_EINPUT).
 *
 * Minor 2 added streamed replies: the request's stream flag and the host's emit service.
 * A caller that can forward a reply piece by piece (server-sent events, NDJSON, a worker
 * connection) sets stream; a backend of minor >= 2 that produces its reply in pieces (the
 * tokens of a generation) then calls host->emit once per piece, as it goes, and finally
 * returns its result as usual: that result is the stream's last piece (a summary such as
 * the finish reason and token counts). A backend that does not stream ignores the flag
 * and returns its whole result, which the caller sends as a single piece. Each piece is
 * one JSON object, so the very same sequence can be framed over a worker connection.
 *
 * Every call carries bytes in and JSON (or bytes) out, so the very same call can be
 * carried over a socket to a worker process unchanged.
 */
#ifndef LARDER_BACKEND_H
#define LARDER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LARDER_BACKEND_ABI_MAJOR 1
#define LARDER_BACKEND_ABI_MINOR 2
#define LARDER_BACKEND_ENTRY "larder_backend_entry"

/* Errors a backend returns (negative). The host maps them to HTTP statuses. */
enum {
    LARDER_BACKEND_EINPUT = -30001,  /* the request body is malformed (400) */
    LARDER_BACKEND_EMEDIA = -30002,  /* unsupported content type (415) */
    LARDER_BACKEND_EOPTION = -30003, /* a bad or unknown option (config error) */
    LARDER_BACKEND_EMODEL = -30004,  /* the model file is missing or unreadable */
    LARDER_BACKEND_EINTERNAL = -30005, /* the engine failed (500) */
    LARDER_BACKEND_ENOMEM = -30006,
    /* minor 1 */
    LARDER_BACKEND_ECANCELED = -30007, /* the host's cancelled() said stop (504, or dropped) */
    LARDER_BACKEND_ETOOBIG = -30008,   /* the input would decode past a limit (413) */
};

enum larder_log_level {
    LARDER_LOG_ERROR = 0,
    LARDER_LOG_WARN = 1,
    LARDER_LOG_INFO = 2,
    LARDER_LOG_DEBUG = 3,
};

/* One `key = value` line of the model's config section, backend keys only. */
struct larder_option {
    const char *key;
    const char *value;
};

/* Services the host gives every backend. Valid until the plugin is closed. */
struct larder_host {
    uint32_t abi_major;
    uint32_t abi_minor;
    /* Logs one line (no trailing newline needed). Any thread. */
    void (*log)(enum larder_log_level level, const char *backend, const char *msg);
    /* Process resident set size in bytes, or 0 if unknown. Any thread. */
    uint64_t (*rss_bytes)(void);
    /* ---- minor 1 ---- */
    /* Non-zero when the request whose host_ctx this is should stop: its deadline passed or
     * its client went away. Cheap (rate-limited by the host), so a backend may call it
     * as often as every few milliseconds of work. A backend that sees non-zero stops, frees
     * what it made, leaves res empty and returns LARDER_BACKEND_ECANCELED; its instance
     * must be fit for the next request. Only the thread running that infer call may call
     * it, and only during that call. May be NULL. */
    int (*cancelled)(void *host_ctx);
    /* Tells the host that this request needs `bytes` more memory than its body while it
     * runs (a decoded image, decoded audio), before the backend allocates it. 0: go on;
     * negative: the host refuses it, and the backend returns LARDER_BACKEND_ETOOBIG
     * without allocating. Bytes reported add up over one infer call and are released by
     * the host when the call returns. Same thread rule as cancelled. May be NULL. */
    int (*reserve_request_bytes)(void *host_ctx, uint64_t bytes);
    /* ---- minor 2 ---- */
    /* Sends one piece of a streamed reply of the request whose host_ctx this is: a JSON
     * object text of len bytes (no NUL needed), copied before the call returns. Only for a
     * request whose stream flag is set. Blocks while the receiver is slow (bounded by the
     * host). 0: sent; negative: the receiver has gone or the request was cancelled, and
     * the backend stops as for cancelled (LARDER_BACKEND_ECANCELED). Same thread rule as
     * cancelled. May be NULL (then the host never sets stream). */
    int (*emit)(void *host_ctx, const char *json, size_t len);
};

struct larder_infer_request {
    const void *body;         /* request bytes; not NUL-terminated */
    size_t body_len;
    const char *content_type; /* e.g. "image/png", "audio/wav", "application/json"; may be NULL */
    const struct larder_option *params; /* query parameters of the request */
    size_t n_params;
    /* ---- minor 1: read only when host->abi_minor >= 1 ---- */
    void *host_ctx;           /* the request's handle for the host's cancelled and
                               * reserve_request_bytes; opaque to the backend */
    /* ---- minor 2: read only when host->abi_minor >= 2 ---- */
    int stream;               /* non-zero: the caller takes pieces through host->emit */
};

struct larder_infer_result {
    char *json;               /* NUL-terminated JSON object text, malloc'd; or NULL */
    void *bytes;              /* or raw bytes (malloc'd) with their content type */
    size_t bytes_len;
    char *content_type;       /* malloc'd; NULL with json */
};

/* The operations of one backend. Fields are appended only at the end.
 *
 * Threads: load/unload of one model never overlap. instance_new/free may run on any
 * thread. infer runs concurrently on many threads: with instance_new set, each call gets
 * its own instance (never shared between concurrent calls); without it, infer on one
 * model must be thread-safe.
 *
 * Error messages: functions taking (err, errlen) may write a NUL-terminated message
 * there (errlen >= 256). */
struct larder_backend_ops {
    uint32_t abi_major;       /* LARDER_BACKEND_ABI_MAJOR */
    uint32_t abi_minor;       /* LARDER_BACKEND_ABI_MINOR */
    const char *name;         /* e.g. "tesseract" */
    const char *description;
    /* NULL-terminated list of the option keys the backend accepts (besides none). */
    const char *const *option_keys;
    /* Cheap validation of options, no loading: files exist, values parse. */
    int (*check)(const struct larder_option *opts, size_t n, char *err, size_t errlen);
    /* Bytes one model plus one instance will take, before loading. May be NULL. */
    int (*estimate)(const struct larder_option *opts, size_t n, uint64_t *ret_bytes);
    int (*load)(const struct larder_option *opts, size_t n, void **ret_model, char *err,
                size_t errlen);
    void (*unload)(void *model);
    /* NULL when the model is thread-safe and callers share it. */
    int (*instance_new)(void *model, void **ret_instance, char *err, size_t errlen);
    void (*instance_free)(void *model, void *instance);
    /* Backend-reported size of a loaded model; may be NULL. */
    int (*measure)(void *model, uint64_t *ret_bytes);
    /* Runs one request; fills res (owned by the caller afterwards, freed with
     * result_free). instance is NULL for shared models. */
    int (*infer)(void *model, void *instance, const struct larder_infer_request *req,
                 struct larder_infer_result *res, char *err, size_t errlen);
    void (*result_free)(struct larder_infer_result *res);
};

typedef const struct larder_backend_ops *(*larder_backend_entry_fn)(const struct larder_host *host);

#ifdef __cplusplus
}
#endif
#endif
