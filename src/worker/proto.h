/* The worker protocol: frames between larderd and a `larder-worker` process over one
 * stream socket (a socketpair), carrying the backend ABI's calls unchanged.
 *
 * A frame is a 16-byte header { u32 type, u32 len, u64 id } (host byte order: both ends
 * run on one machine) followed by len bytes of payload, len <= LARDER__WP_MAX_PAYLOAD.
 * A payload is { u32 meta_len, meta_len bytes of JSON object text, the rest: raw data }.
 *
 * Requests (larderd -> worker) carry a fresh id; the worker answers each with exactly
 * one WP_REPLY of the same id, whose meta holds "rc" (0 or the backend's negative code)
 * and "error" (a message, with rc < 0), plus what the call returns. Calls run
 * concurrently in the worker (one thread per call): a slow call never holds another.
 * During an infer call the worker may send WP_RESERVE and WP_CHUNK frames of that id;
 * larderd answers each with WP_RESERVE_ACK / WP_CHUNK_ACK {"rc"} of that id.
 *
 * Growth without a version: a receiver ignores meta keys it does not know; a worker
 * answers a request type it does not know with rc -ENOSYS; larderd ignores frame types it
 * does not know. New calls are new types, new arguments new meta keys.
 */
#ifndef LARDER_WORKER_PROTO_H
#define LARDER_WORKER_PROTO_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "larder/backend.h"

#define LARDER__WP_MAX_PAYLOAD (256u << 20)
#define LARDER__WP_MAX_META (4u << 20)

enum larder__wp_type {
    /* worker -> larderd */
    LARDER__WP_HELLO = 1,   /* once, first: {"pid","backend","abi_major","abi_minor",
                             * "instances": bool} or {"error"} (the plugin did not open) */
    LARDER__WP_REPLY = 2,   /* the answer to request id */
    LARDER__WP_LOG = 3,     /* {"level","backend","msg"}; id 0 */
    LARDER__WP_RESERVE = 4, /* infer id: {"bytes"}; answered by RESERVE_ACK */
    LARDER__WP_CHUNK = 5,   /* infer id: data = one JSON piece; answered by CHUNK_ACK */
    /* larderd -> worker: requests */
    LARDER__WP_CHECK = 16,        /* {"opts":[[k,v]...]} -> {} */
    LARDER__WP_ESTIMATE = 17,     /* {"opts"} -> {"bytes"} */
    LARDER__WP_LOAD = 18,         /* {"opts"} -> {} */
    LARDER__WP_INSTANCE_NEW = 19, /* {} -> {"instance"} (0: the model is shared) */
    LARDER__WP_INSTANCE_FREE = 20, /* {"instance"} -> {} */
    LARDER__WP_MEASURE = 21,      /* {} -> {"bytes"} (the backend's own figure) */
    LARDER__WP_INFER = 22,        /* {"instance","content_type","params":[[k,v]],"stream"}
                                   * + body -> {"kind":"json"|"bytes","content_type"} +
                                   * the result */
    LARDER__WP_UNLOAD = 23,       /* {} -> {} */
    /* larderd -> worker: not requests (no reply) */
    LARDER__WP_CANCEL = 24,       /* infer id: its host cancelled() turns true */
    LARDER__WP_EXIT = 25,         /* the worker exits at once */
    LARDER__WP_RESERVE_ACK = 26,  /* infer id: {"rc"} */
    LARDER__WP_CHUNK_ACK = 27,    /* infer id: {"rc"} */
};

struct larder__wp_hdr {
    uint32_t type;
    uint32_t len;
    uint64_t id;
};

/* One frame read. */
struct larder__wp_frame {
    uint32_t type;
    uint64_t id;
    json_t *meta;       /* an object (never NULL once read) */
    unsigned char *buf; /* the whole payload */
    const unsigned char *data; /* the raw part, inside buf */
    size_t data_len;
};

/* Writes one frame (meta may be NULL: {}; data may be NULL with data_len 0). Loops over
 * short writes and EINTR. 0, or a negative errno (-EPIPE: the other end has gone). The
 * caller serializes writers of one fd. */
int larder__wp_send(int fd, uint32_t type, uint64_t id, json_t *meta, const void *data,
                    size_t data_len);

/* Reads one frame, validating it: -EPROTO (with a reason in err) for a length past the
 * bounds, a meta that is not a JSON object, a meta_len past the payload; 0 at a clean end
 * of stream (*ret untouched, returns 0 with ret->meta NULL), 1 for a frame; other
 * negative errno on a read error. Free with larder__wp_frame_clear. */
int larder__wp_recv(int fd, struct larder__wp_frame *ret, char *err, size_t errlen);
void larder__wp_frame_clear(struct larder__wp_frame *f);

/* Options (and query parameters) as [[k,v]...] and back. A parsed array owns its
 * strings: free it with larder__wp_opts_free. -EPROTO on a bad shape. */
json_t *larder__wp_opts_json(const struct larder_option *o, size_t n);
int larder__wp_opts_parse(json_t *arr, struct larder_option **ret, size_t *ret_n);
void larder__wp_opts_free(struct larder_option *o, size_t n);

/* meta's integer member key, or def when absent or not an integer. */
int64_t larder__wp_int(json_t *meta, const char *key, int64_t def);
/* meta's string member key, or NULL. */
const char *larder__wp_str(json_t *meta, const char *key);

#endif
