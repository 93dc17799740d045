/* larderd's APIs that clients already speak: OpenAI's (/v1/chat/completions,
 * /v1/completions, /v1/embeddings, /v1/rerank), Ollama's (/api/...) and llama.cpp's
 * router (/models...), beside larder's own /v1/models/NAME/infer (see docs/http-api.md).
 *
 * Each generation or embedding route is a struct larder__api: it reads the client's body
 * into the backend's request (the llama backend's JSON contract, docs/backends.md), and
 * writes the backend's result, or its streamed pieces, in the client's shape. infer.c runs
 * it exactly as /infer: the `model` field picks the component, which is loaded if it is
 * not (single flight, budget, eviction, fallback), on the inference pool. A model that is
 * an external server speaking OpenAI's API is reached the same way on the OpenAI routes,
 * its reply proxied as it comes (proxy.h).
 *
 * Threads: prepare, reply, piece, end, fail and before_release run on the inference pool.
 */
#ifndef LARDER_DAEMON_API_H
#define LARDER_DAEMON_API_H

#include <jansson.h>
#include <stdbool.h>

#include "http.h"

/* larder's figures for one call, for headers and extra fields clients ignore. */
struct larder__timing {
    const char *model;        /* the model asked for */
    const char *served_by;    /* the one that served: it, or its fallback */
    bool cold_start;
    double queue_ms, load_ms, infer_ms;
};

/* What prepare makes of the client's body. */
struct larder__call {
    char *model;              /* malloc'd: the component */
    char *body;               /* malloc'd: the backend's request (application/json) */
    size_t body_len;
    bool stream;              /* the client takes pieces as they come */
    bool no_infer;            /* only the lease (a load, as Ollama's empty request) */
};

struct larder__api {
    const char *name;
    /* Reads r's body (not empty) into call and *ret_ud. False: r has its error reply
     * (call's fields are freed by the caller whatever the outcome). NULL: larder's own
     * infer, whose body goes to the backend as it is. */
    bool (*prepare)(struct larder__request *r, struct larder__call *call, void **ret_ud);
    /* Sets r's reply for a whole result (the backend's object; NULL for no_infer). */
    void (*reply)(struct larder__request *r, void *ud, json_t *result,
                  const struct larder__timing *t);
    const char *stream_type;  /* Content-Type of the stream */
    /* Appends the bytes of one piece the backend emitted. */
    void (*piece)(void *ud, json_t *piece, struct larder__text *out);
    /* Appends the stream's last bytes, from the final result. pieces: false when the
     * backend emitted none (the result holds the whole reply). */
    void (*end)(void *ud, json_t *result, const struct larder__timing *t, bool pieces,
                struct larder__text *out);
    /* Appends an error that came once the stream had started. */
    void (*fail)(void *ud, unsigned status, const char *code, const char *msg,
                 struct larder__text *out);
    /* Before the lease goes back, whatever the outcome (keep_alive). May be NULL. */
    void (*before_release)(struct larder__daemon *d, void *ud, const char *model);
    void (*ud_free)(void *ud);
    /* The same call's path on an external server that declares `api = openai`: a request
     * naming such a model goes there with the client's body unchanged (infer.c), and is
     * translated by prepare only when an in-process fallback serves it. NULL: this route
     * reaches no external server. */
    const char *proxy_path;
};

/* larder's own stream of /v1/models/NAME/infer?stream=1: NDJSON (api.c). */
extern const struct larder__api larder__native_stream;

/* Runs r as a call of api (infer.c): checks the token, suspends r, prepares it on the
 * inference pool, acquires its model and answers. HTTP thread. */
void larder__infer_api(struct larder__request *r, const struct larder__api *api);

/* The routes (api.c). HTTP thread. */
void larder__route_openai_chat(struct larder__request *r, const char *name);
void larder__route_openai_completions(struct larder__request *r, const char *name);
void larder__route_openai_embeddings(struct larder__request *r, const char *name);
void larder__route_openai_rerank(struct larder__request *r, const char *name);
void larder__route_ollama_chat(struct larder__request *r, const char *name);
void larder__route_ollama_generate(struct larder__request *r, const char *name);
void larder__route_ollama_embed(struct larder__request *r, const char *name);
void larder__route_ollama_embeddings(struct larder__request *r, const char *name);
void larder__route_ollama_tags(struct larder__request *r, const char *name);
void larder__route_ollama_ps(struct larder__request *r, const char *name);
void larder__route_ollama_version(struct larder__request *r, const char *name);
void larder__route_router_models(struct larder__request *r, const char *name);
void larder__route_router_load(struct larder__request *r, const char *name);
void larder__route_router_unload(struct larder__request *r, const char *name);

/* The OpenAI-shaped part of GET /v1/models: "object":"list","data":[...], (api.c): the
 * models these APIs serve (llama models, external ones that declare an api). */
void larder__openai_models_text(struct larder__text *t, struct larder__daemon *d,
                                const struct larder_snapshot *s, double started_wall);

#endif
