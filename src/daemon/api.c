/* larderd: the APIs clients already speak (see api.h and docs/http-api.md). */
#include "api.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "pool.h"
#include "routes.h"

/* ---- helpers ---------------------------------------------------------------------------- */

/* The client's body as a JSON object, or NULL with a 400 reply. */
static json_t *body_object(struct larder__request *r)
{
    json_error_t jerr;
    json_t *o = json_loadb(r->body ? r->body : "", r->body_len, 0, &jerr);
    if (!o) {
        larder__reply_error(r, 400, "invalid_json", "line %d column %d: %s", jerr.line,
                            jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        larder__reply_error(r, 400, "invalid_json", "the body must be a JSON object");
        return NULL;
    }
    return o;
}

static bool bad_param(struct larder__request *r, const char *param, const char *what)
{
    larder__reply_error_param(r, 400, "invalid_type", param, "'%s' %s", param, what);
    return false;
}

/* The "model" string of o into call->model. It is checked first, before the fields whose
 * meaning depends on the model: a well-formed body naming no configured model is 404. */
static bool take_model(struct larder__request *r, json_t *o, struct larder__call *call)
{
    json_t *m = json_object_get(o, "model");
    if (!json_is_string(m) || !json_string_length(m))
        return bad_param(r, "model", m ? "must be a model name (a string)"
                                       : "is required: the name of the model");
    const char *name = json_string_value(m);
    pthread_rwlock_rdlock(&r->d->conf_lock);
    bool known = larder__config_model(r->d->conf, name) != NULL;
    pthread_rwlock_unlock(&r->d->conf_lock);
    if (!known) {
        larder__reply_error(r, 404, "model_not_found", "no model named '%s'", name);
        return false;
    }
    call->model = strdup(name);
    return call->model != NULL;
}

/* Copies o[from] into out[to] when present, checking its type: 'n' number, 'i' integer,
 * 'p' positive integer. */
static bool copy_number(struct larder__request *r, json_t *o, const char *from, json_t *out,
                        const char *to, char kind)
{
    json_t *v = json_object_get(o, from);
    if (!v || json_is_null(v))
        return true;
    if (kind == 'n' && !json_is_number(v))
        return bad_param(r, from, "must be a number");
    if (kind != 'n' && !json_is_integer(v))
        return bad_param(r, from, "must be an integer");
    if (kind == 'p' && json_integer_value(v) < 1)
        return bad_param(r, from, "must be at least 1");
    json_object_set(out, to, v);
    return true;
}

/* "stop": a string or an array of strings, into out["stop"] as an array. */
static bool copy_stop(struct larder__request *r, json_t *o, json_t *out)
{
    json_t *v = json_object_get(o, "stop"), *e;
    size_t i;
    if (!v || json_is_null(v))
        return true;
    if (json_is_string(v)) {
        json_object_set_new(out, "stop", json_pack("[O]", v));
        return true;
    }
    if (!json_is_array(v))
        return bad_param(r, "stop", "must be a string or an array of strings");
    json_array_foreach(v, i, e) if (!json_is_string(e))
        return bad_param(r, "stop", "must be a string or an array of strings");
    json_object_set(out, "stop", v);
    return true;
}

/* The sampling options OpenAI's requests carry, into the backend's request. */
static bool openai_sampling(struct larder__request *r, json_t *o, json_t *out)
{
    json_t *n = json_object_get(o, "n");
    if (n && !json_is_null(n) && !(json_is_integer(n) && json_integer_value(n) == 1))
        return bad_param(r, "n", "must be 1: one choice per request");
    const char *max = json_object_get(o, "max_completion_tokens") ? "max_completion_tokens"
                                                                  : "max_tokens";
    return copy_number(r, o, max, out, "max_tokens", 'p') &&
           copy_number(r, o, "temperature", out, "temperature", 'n') &&
           copy_number(r, o, "top_p", out, "top_p", 'n') &&
           copy_number(r, o, "top_k", out, "top_k", 'i') &&
           copy_number(r, o, "seed", out, "seed", 'i') && copy_stop(r, o, out);
}

static const char *str_at(json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

/* The text of a message's content: a string, or an array of {"type":"text","text"} parts;
 * NULL (with a 400 reply) for anything else. Caller frees. */
static char *content_text(struct larder__request *r, json_t *content, const char *param)
{
    if (json_is_string(content))
        return strdup(json_string_value(content));
    if (json_is_null(content))
        return strdup("");
    if (!json_is_array(content)) {
        bad_param(r, param, "must be a string or an array of text parts");
        return NULL;
    }
    size_t i, len = 0;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *text = json_object_get(part, "text");
        if (!json_is_string(text) || strcmp(str_at(part, "type", ""), "text") != 0) {
            bad_param(r, param, "parts must be {\"type\":\"text\",\"text\":...}: "
                                "larder's language models take text only");
            return NULL;
        }
        len += json_string_length(text);
    }
    char *s = malloc(len + 1), *p = s;
    if (!s)
        return NULL;
    json_array_foreach(content, i, part) {
        size_t n = json_string_length(json_object_get(part, "text"));
        memcpy(p, json_string_value(json_object_get(part, "text")), n);
        p += n;
    }
    *p = 0;
    return s;
}

/* messages (an array of {role, content}) into out["messages"]; empty_ok for Ollama's
 * load and unload requests. */
static bool copy_messages(struct larder__request *r, json_t *o, json_t *out, bool empty_ok)
{
    json_t *msgs = json_object_get(o, "messages"), *m;
    size_t i;
    if (!msgs && empty_ok)
        return true;
    if (!json_is_array(msgs))
        return bad_param(r, "messages", "must be an array of {\"role\",\"content\"} objects");
    if (!json_array_size(msgs) && !empty_ok)
        return bad_param(r, "messages", "must not be empty");
    json_t *list = json_array();
    json_object_set_new(out, "messages", list);
    json_array_foreach(msgs, i, m) {
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role))
            return bad_param(r, "messages", "entries must be objects with a string \"role\"");
        char *text = content_text(r, json_object_get(m, "content"), "messages");
        if (!text)
            return false;
        json_t *entry = json_pack("{s:O,s:s}", "role", role, "content", text);
        free(text);
        if (!entry)
            return bad_param(r, "messages", "content must be UTF-8 text");
        json_array_append_new(list, entry);
    }
    return true;
}

/* out as the call's backend request. */
static bool set_body(struct larder__call *call, json_t *out)
{
    call->body = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    call->body_len = call->body ? strlen(call->body) : 0;
    return call->body != NULL;
}

static bool stream_flag(struct larder__request *r, json_t *o, bool dflt, bool *ret)
{
    json_t *v = json_object_get(o, "stream");
    if (!v || json_is_null(v)) {
        *ret = dflt;
        return true;
    }
    if (!json_is_boolean(v))
        return bad_param(r, "stream", "must be true or false");
    *ret = json_is_true(v);
    return true;
}

static json_int_t int_at(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    return json_is_integer(v) ? json_integer_value(v) : 0;
}

static double real_at(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(o, a), b);
    return json_is_number(v) ? json_number_value(v) : 0;
}

static json_t *larder_fields(const struct larder__timing *t)
{
    return json_pack("{s:s?,s:b,s:f,s:f,s:f}", "served_by", t->served_by, "cold_start",
                     t->cold_start, "queue_ms", t->queue_ms, "load_ms", t->load_ms,
                     "infer_ms", t->infer_ms);
}

/* Appends the compact JSON of o (stolen), between pre and post. */
static void put_json(struct larder__text *out, const char *pre, json_t *o, const char *post)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!s) {
        out->failed = true;
        return;
    }
    larder__text_add(out, pre, strlen(pre));
    larder__text_add(out, s, strlen(s));
    larder__text_add(out, post, strlen(post));
    free(s);
}

static void simple_free(void *ud)
{
    free(ud);
}

/* True for a model that these APIs serve: the llama backend's (generators, embedders,
 * rerankers), and an external server's that declares the API it speaks (`api = openai`).
 * The model lists clients read (data[] of /v1/models, /api/tags, /api/ps, /models) hold
 * only these. */
static bool speaks_api(struct larder__daemon *d, const struct larder_component_info *c)
{
    const char *backend = c->class_name ? c->class_name : "";
    if (strcmp(backend, "llama") == 0)
        return true;
    if (strcmp(backend, "external") != 0)
        return false;
    pthread_rwlock_rdlock(&d->conf_lock);
    const struct larder__model_conf *m = larder__config_model(d->conf, c->name);
    bool api = m && m->isolation == LARDER__ISOLATION_EXTERNAL &&
               m->ext.api != LARDER__EXT_API_NONE;
    pthread_rwlock_unlock(&d->conf_lock);
    return api;
}

/* ---- larder's own stream: /v1/models/NAME/infer?stream=1 -------------------------------- */

static void native_reply(struct larder__request *r, void *ud, json_t *result,
                         const struct larder__timing *t)
{
    json_object_set_new(result, "model", json_string(t->model));
    json_object_update(result, larder_fields(t));
    larder__reply_json(r, 200, result);
}

static void native_piece(void *ud, json_t *piece, struct larder__text *out)
{
    put_json(out, "", json_incref(piece), "\n");
}

static void native_end(void *ud, json_t *result, const struct larder__timing *t, bool pieces,
                       struct larder__text *out)
{
    json_t *o = json_copy(result);
    json_t *f = larder_fields(t);
    json_object_set_new(o, "model", json_string(t->model));
    json_object_update(o, f);
    json_decref(f);
    json_object_set_new(o, "done", json_true());
    put_json(out, "", o, "\n");
}

static void native_fail(void *ud, unsigned status, const char *code, const char *msg,
                        struct larder__text *out)
{
    json_t *o = larder__error_json(LARDER__ERRORS_LARDER, status, code, NULL, msg);
    json_object_set_new(o, "done", json_true());
    put_json(out, "", o, "\n");
}

const struct larder__api larder__native_stream = {
    .name = "infer",
    .reply = native_reply,
    .stream_type = "application/x-ndjson",
    .piece = native_piece,
    .end = native_end,
    .fail = native_fail,
};

/* ---- OpenAI ------------------------------------------------------------------------------ */

enum oa_kind { OA_CHAT, OA_COMPLETION, OA_EMBEDDING, OA_RERANK };

struct oa {
    enum oa_kind kind;
    char id[48];
    long long created;
    bool include_usage;
    bool role_sent;
    bool base64;              /* embeddings: encoding_format base64 */
    json_int_t top_n;         /* rerank: 0 = all */
    bool return_documents;
    json_t *documents;        /* rerank: the documents as given */
    char model[256];          /* as the request named it */
};

static void oa_free(void *ud)
{
    struct oa *a = ud;
    if (a)
        json_decref(a->documents);
    free(a);
}

static struct oa *oa_new(enum oa_kind kind)
{
    static atomic_ullong seq;
    struct oa *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->kind = kind;
    a->created = (long long)time(NULL);
    snprintf(a->id, sizeof a->id, "%s-%llx%llx", kind == OA_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)a->created, (unsigned long long)atomic_fetch_add(&seq, 1));
    return a;
}

static bool oa_generation(struct larder__request *r, struct larder__call *call, void **ret_ud,
                          enum oa_kind kind)
{
    json_t *o = body_object(r);
    if (!o)
        return false;
    json_t *out = json_object();
    struct oa *a = oa_new(kind);
    *ret_ud = a;
    bool ok = a && take_model(r, o, call) && stream_flag(r, o, false, &call->stream) &&
              openai_sampling(r, o, out);
    if (ok)
        snprintf(a->model, sizeof a->model, "%s", call->model);
    if (ok && kind == OA_CHAT) {
        ok = copy_messages(r, o, out, false);
    } else if (ok) {
        json_t *p = json_object_get(o, "prompt");
        if (json_is_array(p) && json_array_size(p) == 1)
            p = json_array_get(p, 0);
        if (!json_is_string(p))
            ok = bad_param(r, "prompt", "must be a string (one prompt per request)");
        else
            json_object_set(out, "prompt", p);
    }
    json_t *so = json_object_get(o, "stream_options");
    if (ok && a)
        a->include_usage = json_is_true(json_object_get(so, "include_usage"));
    json_decref(o);
    if (!ok) {
        json_decref(out);
        return false;
    }
    return set_body(call, out);
}

static bool oa_chat_prepare(struct larder__request *r, struct larder__call *call, void **ud)
{
    return oa_generation(r, call, ud, OA_CHAT);
}

static bool oa_completion_prepare(struct larder__request *r, struct larder__call *call,
                                  void **ud)
{
    return oa_generation(r, call, ud, OA_COMPLETION);
}

static json_t *oa_usage(json_t *result)
{
    json_int_t p = int_at(result, "usage", "prompt_tokens");
    json_int_t c = int_at(result, "usage", "completion_tokens");
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", p, "completion_tokens", c,
                     "total_tokens", p + c);
}

/* A chunk (stream) or a whole reply with one choice. */
static json_t *oa_object(struct oa *a, const char *model, bool chunk, json_t *choice)
{
    const char *object = a->kind == OA_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                            : "text_completion";
    return json_pack("{s:s,s:s,s:I,s:s,s:n,s:[o]}", "id", a->id, "object", object, "created",
                     (json_int_t)a->created, "model", model, "system_fingerprint", "choices",
                     choice);
}

/* The backend's text (a JSON string, which may hold NULs), as a new reference; "" when
 * it has none. */
static json_t *text_of(json_t *text)
{
    return json_is_string(text) ? json_incref(text) : json_string("");
}

/* text: the backend's "text" (NULL: none, for a last chunk). */
static json_t *oa_choice(struct oa *a, json_t *text, const char *finish, bool chunk)
{
    json_t *c = json_pack("{s:i,s:n}", "index", 0, "logprobs");
    json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
    if (a->kind == OA_COMPLETION) {
        json_object_set_new(c, "text", text_of(text));
    } else if (!chunk) {
        json_object_set_new(c, "message", json_pack("{s:s,s:o,s:n}", "role", "assistant",
                                                     "content", text_of(text), "refusal"));
    } else {
        json_t *delta = json_object();
        if (!a->role_sent)
            json_object_set_new(delta, "role", json_string("assistant"));
        a->role_sent = true;
        if (text)
            json_object_set_new(delta, "content", text_of(text));
        json_object_set_new(c, "delta", delta);
    }
    return c;
}

static void oa_generation_reply(struct larder__request *r, void *ud, json_t *result,
                                const struct larder__timing *t)
{
    struct oa *a = ud;
    json_t *o = oa_object(a, t->model, false,
                          oa_choice(a, json_object_get(result, "text"),
                                    str_at(result, "finish_reason", "stop"), false));
    json_object_set_new(o, "usage", oa_usage(result));
    json_object_set_new(o, "larder", larder_fields(t));
    json_decref(result);
    larder__reply_json(r, 200, o);
}

static void oa_piece(void *ud, json_t *piece, struct larder__text *out)
{
    struct oa *a = ud;
    json_t *o = oa_object(a, a->model, true, oa_choice(a, json_object_get(piece, "text"), NULL, true));
    put_json(out, "data: ", o, "\n\n");
}

static void oa_end(void *ud, json_t *result, const struct larder__timing *t, bool pieces,
                   struct larder__text *out)
{
    struct oa *a = ud;
    if (!pieces)
        put_json(out, "data: ",
                 oa_object(a, t->model, true, oa_choice(a, json_object_get(result, "text"), NULL, true)),
                 "\n\n");
    json_t *last = oa_object(a, t->model, true,
                             oa_choice(a, NULL, str_at(result, "finish_reason", "stop"), true));
    json_object_set_new(last, "larder", larder_fields(t));
    put_json(out, "data: ", last, "\n\n");
    if (a->include_usage) {
        json_t *u = oa_object(a, t->model, true, json_null());
        json_array_clear(json_object_get(u, "choices"));
        json_object_set_new(u, "usage", oa_usage(result));
        put_json(out, "data: ", u, "\n\n");
    }
    larder__text_lit(out, "data: [DONE]\n\n");
}

static void oa_fail(void *ud, unsigned status, const char *code, const char *msg,
                    struct larder__text *out)
{
    put_json(out, "data: ", larder__error_json(LARDER__ERRORS_OPENAI, status, code, NULL, msg),
             "\n\n");
    larder__text_lit(out, "data: [DONE]\n\n");
}

static const struct larder__api oa_chat_api = {
    .name = "chat.completions", .prepare = oa_chat_prepare, .reply = oa_generation_reply,
    .stream_type = "text/event-stream", .piece = oa_piece, .end = oa_end, .fail = oa_fail,
    .ud_free = oa_free,
    .proxy_path = "/v1/chat/completions",
};

static const struct larder__api oa_completion_api = {
    .name = "completions", .prepare = oa_completion_prepare, .reply = oa_generation_reply,
    .stream_type = "text/event-stream", .piece = oa_piece, .end = oa_end, .fail = oa_fail,
    .ud_free = oa_free,
    .proxy_path = "/v1/completions",
};

/* "input": a string or a non-empty array of strings, into out["input"]. */
static bool copy_input(struct larder__request *r, json_t *o, const char *key, json_t *out)
{
    json_t *in = json_object_get(o, key), *e;
    size_t i;
    if (json_is_string(in)) {
        json_object_set(out, "input", in);
        return true;
    }
    if (!json_is_array(in) || !json_array_size(in))
        return bad_param(r, key, "must be a string or a non-empty array of strings");
    json_array_foreach(in, i, e) if (!json_is_string(e))
        return bad_param(r, key, "must be a string or a non-empty array of strings "
                                 "(token arrays are not taken)");
    json_object_set(out, "input", in);
    return true;
}

static bool oa_embed_prepare(struct larder__request *r, struct larder__call *call, void **ud)
{
    json_t *o = body_object(r);
    if (!o)
        return false;
    struct oa *a = oa_new(OA_EMBEDDING);
    *ud = a;
    json_t *out = json_object();
    const char *fmt = str_at(o, "encoding_format", "float");
    bool ok = a && take_model(r, o, call) && copy_input(r, o, "input", out);
    if (ok && strcmp(fmt, "float") != 0 && strcmp(fmt, "base64") != 0)
        ok = bad_param(r, "encoding_format", "must be \"float\" or \"base64\"");
    if (ok)
        a->base64 = strcmp(fmt, "base64") == 0;
    json_decref(o);
    if (!ok) {
        json_decref(out);
        return false;
    }
    return set_body(call, out);
}

/* Little-endian float32 values of v, in base64, as OpenAI's encoding_format base64. */
static json_t *base64_floats(json_t *v)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = json_array_size(v), bytes = n * 4;
    unsigned char *raw = malloc(bytes + 3);
    char *text = malloc((bytes + 2) / 3 * 4 + 1);
    json_t *s = NULL;
    if (raw && text) {
        for (size_t i = 0; i < n; i++) {
            float f = (float)json_number_value(json_array_get(v, i));
            uint32_t u;
            memcpy(&u, &f, 4);
            for (int k = 0; k < 4; k++)
                raw[i * 4 + (size_t)k] = (unsigned char)(u >> (8 * k));
        }
        size_t o = 0;
        for (size_t i = 0; i < bytes; i += 3) {
            uint32_t w = (uint32_t)raw[i] << 16 | (i + 1 < bytes ? raw[i + 1] << 8 : 0) |
                         (i + 2 < bytes ? raw[i + 2] : 0);
            text[o++] = b64[w >> 18 & 63];
            text[o++] = b64[w >> 12 & 63];
            text[o++] = i + 1 < bytes ? b64[w >> 6 & 63] : '=';
            text[o++] = i + 2 < bytes ? b64[w & 63] : '=';
        }
        text[o] = 0;
        s = json_string(text);
    }
    free(raw);
    free(text);
    return s;
}

static void oa_embed_reply(struct larder__request *r, void *ud, json_t *result,
                           const struct larder__timing *t)
{
    struct oa *a = ud;
    json_t *list = json_array(), *v;
    size_t i;
    json_array_foreach(json_object_get(result, "embeddings"), i, v)
        json_array_append_new(list, json_pack("{s:s,s:I,s:o}", "object", "embedding", "index",
                                              (json_int_t)i, "embedding",
                                              a->base64 ? base64_floats(v) : json_incref(v)));
    json_int_t p = int_at(result, "usage", "prompt_tokens");
    json_t *o = json_pack("{s:s,s:o,s:s,s:{s:I,s:I},s:o}", "object", "list", "data", list,
                          "model", t->model, "usage", "prompt_tokens", p, "total_tokens", p,
                          "larder", larder_fields(t));
    json_decref(result);
    larder__reply_json(r, 200, o);
}

static const struct larder__api oa_embed_api = {
    .name = "embeddings", .prepare = oa_embed_prepare, .reply = oa_embed_reply,
    .ud_free = oa_free,
    .proxy_path = "/v1/embeddings",
};

static bool oa_rerank_prepare(struct larder__request *r, struct larder__call *call, void **ud)
{
    json_t *o = body_object(r);
    if (!o)
        return false;
    struct oa *a = oa_new(OA_RERANK);
    *ud = a;
    json_t *q = json_object_get(o, "query"), *docs = json_object_get(o, "documents"), *d;
    json_t *texts = json_array();
    size_t i;
    bool ok = a && take_model(r, o, call);
    if (ok && !json_is_string(q))
        ok = bad_param(r, "query", "must be a string");
    if (ok && (!json_is_array(docs) || !json_array_size(docs)))
        ok = bad_param(r, "documents", "must be a non-empty array of strings");
    json_array_foreach(docs, i, d) {
        json_t *text = json_is_object(d) ? json_object_get(d, "text") : d;
        if (ok && !json_is_string(text))
            ok = bad_param(r, "documents", "entries must be strings or {\"text\": ...}");
        if (ok)
            json_array_append(texts, text);
    }
    json_t *top = json_object_get(o, "top_n");
    if (ok && top && !json_is_null(top) && (!json_is_integer(top) || json_integer_value(top) < 1))
        ok = bad_param(r, "top_n", "must be a positive integer");
    if (ok) {
        a->top_n = top ? json_integer_value(top) : 0;
        a->return_documents = json_is_true(json_object_get(o, "return_documents"));
        a->documents = json_incref(texts);
    }
    json_t *out = ok ? json_pack("{s:O,s:O}", "query", q, "documents", texts) : NULL;
    json_decref(texts);
    json_decref(o);
    return ok && set_body(call, out);
}

static int by_score(const void *x, const void *y)
{
    double a = json_number_value(json_object_get(*(json_t *const *)x, "relevance_score"));
    double b = json_number_value(json_object_get(*(json_t *const *)y, "relevance_score"));
    return a < b ? 1 : a > b ? -1 : 0;
}

static void oa_rerank_reply(struct larder__request *r, void *ud, json_t *result,
                            const struct larder__timing *t)
{
    struct oa *a = ud;
    json_t *scores = json_object_get(result, "scores");
    size_t n = json_array_size(scores);
    json_t **items = calloc(n ? n : 1, sizeof *items);
    for (size_t i = 0; items && i < n; i++) {
        items[i] = json_pack("{s:I,s:f}", "index", (json_int_t)i, "relevance_score",
                             json_number_value(json_array_get(scores, i)));
        if (a->return_documents)
            json_object_set_new(items[i], "document",
                                json_pack("{s:O}", "text", json_array_get(a->documents, i)));
    }
    if (items)
        qsort(items, n, sizeof *items, by_score);
    json_t *list = json_array();
    for (size_t i = 0; items && i < n; i++) {
        if (!a->top_n || (json_int_t)i < a->top_n)
            json_array_append(list, items[i]);
        json_decref(items[i]);
    }
    free(items);
    json_int_t p = int_at(result, "usage", "prompt_tokens");
    json_t *o = json_pack("{s:s,s:s,s:s,s:o,s:{s:I,s:I},s:o}", "id", a->id, "object", "list",
                          "model", t->model, "results", list, "usage", "prompt_tokens", p,
                          "total_tokens", p, "larder", larder_fields(t));
    json_decref(result);
    larder__reply_json(r, 200, o);
}

static const struct larder__api oa_rerank_api = {
    .name = "rerank", .prepare = oa_rerank_prepare, .reply = oa_rerank_reply,
    .ud_free = oa_free,
    .proxy_path = "/v1/rerank",
};

static void openai_route(struct larder__request *r, const struct larder__api *api)
{
    r->error_style = LARDER__ERRORS_OPENAI;
    larder__infer_api(r, api);
}

void larder__route_openai_chat(struct larder__request *r, const char *name)
{
    openai_route(r, &oa_chat_api);
}

void larder__route_openai_completions(struct larder__request *r, const char *name)
{
    openai_route(r, &oa_completion_api);
}

void larder__route_openai_embeddings(struct larder__request *r, const char *name)
{
    openai_route(r, &oa_embed_api);
}

void larder__route_openai_rerank(struct larder__request *r, const char *name)
{
    openai_route(r, &oa_rerank_api);
}

void larder__openai_models_text(struct larder__text *t, struct larder__daemon *d,
                                const struct larder_snapshot *s, double created)
{
    larder__text_lit(t, "\"object\":\"list\",\"data\":[");
    bool first = true;
    for (size_t i = 0; i < s->n; i++) {
        if (!speaks_api(d, &s->components[i]))
            continue;
        if (!first)
            larder__text_lit(t, ",");
        first = false;
        larder__text_lit(t, "{\"id\":");
        larder__text_json_string(t, s->components[i].name);
        larder__text_lit(t, ",\"object\":\"model\",\"created\":");
        larder__text_json_int(t, (int64_t)created);
        larder__text_lit(t, ",\"owned_by\":\"larder\"}");
    }
    larder__text_lit(t, "],");
}

/* ---- Ollama ------------------------------------------------------------------------------ */

enum ol_kind { OL_CHAT, OL_GENERATE, OL_EMBED, OL_EMBEDDINGS };

struct ol {
    enum ol_kind kind;
    double t_start;           /* the request's start, monotonic seconds */
    bool keep_alive_set;
    int64_t keep_alive_ms;    /* LARDER_TTL_NEVER, 0, or ms */
    char model[256];
};

/* "2024-05-01T12:00:00.123456Z" */
static void iso_time(double unix_s, char *buf, size_t len)
{
    time_t secs = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%06ldZ", (long)((unix_s - (double)secs) * 1e6));
}

static double wall_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* A Go duration ("5m", "1h30m", "300ms", "-1s") or a plain number of seconds, into ms;
 * negative means forever. False when it does not parse. */
static bool parse_go_duration(const char *s, int64_t *ret_ms)
{
    char *end;
    double v = strtod(s, &end);
    if (end != s && !*end) {
        *ret_ms = v < 0 ? LARDER_TTL_NEVER : (int64_t)(v * 1000.0);
        return true;
    }
    bool neg = *s == '-';
    if (*s == '-' || *s == '+')
        s++;
    double ms = 0;
    if (!*s)
        return false;
    while (*s) {
        if (!((*s >= '0' && *s <= '9') || *s == '.'))
            return false;
        v = strtod(s, &end);
        s = end;
        static const struct { const char *u; double ms; } units[] = {
            {"ns", 1e-6}, {"us", 1e-3}, {"\xc2\xb5s", 1e-3}, {"ms", 1}, {"s", 1e3},
            {"m", 6e4}, {"h", 3.6e6}};
        size_t best = 0, best_len = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            size_t n = strlen(units[i].u);
            if (n > best_len && strncmp(s, units[i].u, n) == 0) {
                best = i;
                best_len = n;
            }
        }
        if (!best_len)
            return false;
        ms += v * units[best].ms;
        s += best_len;
    }
    *ret_ms = neg && ms > 0 ? LARDER_TTL_NEVER : (int64_t)ms;
    return true;
}

static bool ol_keep_alive(struct larder__request *r, json_t *o, struct ol *a)
{
    json_t *k = json_object_get(o, "keep_alive");
    if (!k || json_is_null(k))
        return true;
    int64_t ms;
    if (json_is_number(k)) {
        double v = json_number_value(k);
        ms = v < 0 ? LARDER_TTL_NEVER : (int64_t)(v * 1000.0);
    } else if (!json_is_string(k) || !parse_go_duration(json_string_value(k), &ms)) {
        larder__reply_error(r, 400, "bad_keep_alive",
                            "keep_alive must be a duration such as \"5m\", \"1h\" or \"0\", or "
                            "a number of seconds (negative: keep loaded)");
        return false;
    }
    a->keep_alive_set = true;
    a->keep_alive_ms = ms;
    return true;
}

/* Ollama's "options" into the backend's request. */
static bool ol_options(struct larder__request *r, json_t *o, json_t *out)
{
    json_t *opts = json_object_get(o, "options");
    if (!opts || json_is_null(opts))
        return true;
    if (!json_is_object(opts)) {
        larder__reply_error(r, 400, "bad_options", "options must be an object");
        return false;
    }
    return copy_number(r, opts, "num_predict", out, "max_tokens", 'i') &&
           copy_number(r, opts, "temperature", out, "temperature", 'n') &&
           copy_number(r, opts, "top_p", out, "top_p", 'n') &&
           copy_number(r, opts, "top_k", out, "top_k", 'i') &&
           copy_number(r, opts, "seed", out, "seed", 'i') && copy_stop(r, opts, out);
}

static void ol_reply_done(struct larder__request *r, struct ol *a, const char *reason)
{
    char when[48];
    iso_time(wall_now(), when, sizeof when);
    json_t *o = json_pack("{s:s,s:s,s:b,s:s}", "model", a->model, "created_at", when, "done", 1,
                          "done_reason", reason);
    if (a->kind == OL_CHAT)
        json_object_set_new(o, "message", json_pack("{s:s,s:s}", "role", "assistant",
                                                    "content", ""));
    else
        json_object_set_new(o, "response", json_string(""));
    larder__reply_json(r, 200, o);
}

/* Ollama's unload request (keep_alive 0, nothing to generate): the model's ttl becomes 0,
 * so it is unloaded as soon as it is idle (at once when it is idle now). */
static void ol_unload_now(struct larder__request *r, struct ol *a)
{
    larder *m = larder__mgr_get(r->d);
    int e = m ? larder_set_ttl(m, a->model, 0) : LARDER_ECLOSED;
    if (m)
        larder__mgr_put(r->d);
    if (e == LARDER_ENOTFOUND)
        larder__reply_error(r, 404, "model_not_found", "model '%s' not found", a->model);
    else if (e < 0)
        larder__reply_larder_error(r, e, NULL);
    else
        ol_reply_done(r, a, "unload");
}

static bool ol_prepare(struct larder__request *r, struct larder__call *call, void **ud,
                       enum ol_kind kind)
{
    json_t *o = body_object(r);
    if (!o)
        return false;
    struct ol *a = calloc(1, sizeof *a);
    *ud = a;
    json_t *out = json_object();
    bool ok = a && take_model(r, o, call);
    if (ok) {
        a->kind = kind;
        a->t_start = r->t_start;
        snprintf(a->model, sizeof a->model, "%s", call->model);
        ok = ol_keep_alive(r, o, a) &&
             stream_flag(r, o, kind == OL_CHAT || kind == OL_GENERATE, &call->stream);
    }
    bool empty = false;
    if (ok && kind == OL_CHAT) {
        ok = copy_messages(r, o, out, true) && ol_options(r, o, out);
        empty = json_array_size(json_object_get(out, "messages")) == 0;
    } else if (ok && kind == OL_GENERATE) {
        json_t *p = json_object_get(o, "prompt"), *sys = json_object_get(o, "system");
        json_t *raw = json_object_get(o, "raw"), *tmpl = json_object_get(o, "template");
        if (p && !json_is_null(p) && !json_is_string(p))
            ok = bad_param(r, "prompt", "must be a string");
        else if (sys && !json_is_null(sys) && !json_is_string(sys))
            ok = bad_param(r, "system", "must be a string");
        else if (raw && !json_is_null(raw) && !json_is_boolean(raw))
            ok = bad_param(r, "raw", "must be true or false");
        else if (json_string_length(tmpl) || (tmpl && !json_is_null(tmpl) && !json_is_string(tmpl)))
            ok = bad_param(r, "template", "is not taken: the model's own chat template is "
                                          "used (send raw: true with a prompt formatted "
                                          "your way)");
        empty = !json_string_length(p);
        if (ok && !empty && json_is_true(raw)) {
            /* raw: the prompt goes to the model as written, without a template. */
            json_object_set(out, "prompt", p);
        } else if (ok && !empty) {
            /* Else, as Ollama does, one user turn (after the system text, if any) through
             * the model's chat template. */
            json_t *msgs = json_array();
            if (json_string_length(sys))
                json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "system",
                                                      "content", sys));
            json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "user", "content", p));
            json_object_set_new(out, "messages", msgs);
        }
        ok = ok && ol_options(r, o, out);
    } else if (ok) {
        ok = copy_input(r, o, kind == OL_EMBED ? "input" : "prompt", out);
    }
    json_decref(o);
    if (ok && empty) {
        json_decref(out);
        if (a->keep_alive_set && a->keep_alive_ms == 0) {
            ol_unload_now(r, a);
            return false;
        }
        call->no_infer = true; /* a load */
        call->stream = false;
        return true;
    }
    if (!ok) {
        json_decref(out);
        return false;
    }
    return set_body(call, out);
}

static bool ol_chat_prepare(struct larder__request *r, struct larder__call *call, void **ud)
{
    return ol_prepare(r, call, ud, OL_CHAT);
}

static bool ol_generate_prepare(struct larder__request *r, struct larder__call *call, void **ud)
{
    return ol_prepare(r, call, ud, OL_GENERATE);
}

static bool ol_embed_prepare(struct larder__request *r, struct larder__call *call, void **ud)
{
    return ol_prepare(r, call, ud, OL_EMBED);
}

static bool ol_embeddings_prepare(struct larder__request *r, struct larder__call *call,
                                  void **ud)
{
    return ol_prepare(r, call, ud, OL_EMBEDDINGS);
}

/* {"model","created_at"} and the text of a piece (or the whole reply; NULL: ""). */
static json_t *ol_message(struct ol *a, json_t *text, bool done)
{
    char when[48];
    iso_time(wall_now(), when, sizeof when);
    json_t *o = json_pack("{s:s,s:s}", "model", a->model, "created_at", when);
    if (a->kind == OL_CHAT)
        json_object_set_new(o, "message", json_pack("{s:s,s:o}", "role", "assistant",
                                                     "content", text_of(text)));
    else
        json_object_set_new(o, "response", text_of(text));
    json_object_set_new(o, "done", json_boolean(done));
    return o;
}

/* Ollama's figures, in nanoseconds. */
static void ol_durations(struct ol *a, json_t *o, json_t *result, const struct larder__timing *t)
{
    json_object_set_new(o, "total_duration",
                        json_integer((json_int_t)((larder__now() - a->t_start) * 1e9)));
    json_object_set_new(o, "load_duration", json_integer((json_int_t)(t->load_ms * 1e6)));
    json_object_set_new(o, "prompt_eval_count",
                        json_integer(int_at(result, "usage", "prompt_tokens")));
    if (a->kind == OL_EMBED || a->kind == OL_EMBEDDINGS)
        return;
    json_object_set_new(o, "prompt_eval_duration",
                        json_integer((json_int_t)(real_at(result, "timings", "prompt_ms") * 1e6)));
    json_object_set_new(o, "eval_count",
                        json_integer(int_at(result, "usage", "completion_tokens")));
    json_object_set_new(o, "eval_duration",
                        json_integer((json_int_t)(real_at(result, "timings", "generate_ms") * 1e6)));
}

static json_t *ol_final(struct ol *a, json_t *result, const struct larder__timing *t,
                        json_t *text)
{
    json_t *o = ol_message(a, text, true);
    json_object_set_new(o, "done_reason", json_string(str_at(result, "finish_reason", "stop")));
    ol_durations(a, o, result, t);
    json_object_set_new(o, "larder", larder_fields(t));
    return o;
}

static void ol_reply(struct larder__request *r, void *ud, json_t *result,
                     const struct larder__timing *t)
{
    struct ol *a = ud;
    if (!result) {
        ol_reply_done(r, a, "load");
        return;
    }
    json_t *o;
    if (a->kind == OL_EMBED || a->kind == OL_EMBEDDINGS) {
        json_t *e = json_object_get(result, "embeddings");
        o = a->kind == OL_EMBED ? json_pack("{s:s,s:O}", "model", a->model, "embeddings", e)
                                : json_pack("{s:O}", "embedding", json_array_get(e, 0));
        if (a->kind == OL_EMBED)
            ol_durations(a, o, result, t);
    } else {
        o = ol_final(a, result, t, json_object_get(result, "text"));
    }
    json_decref(result);
    larder__reply_json(r, 200, o);
}

static void ol_piece(void *ud, json_t *piece, struct larder__text *out)
{
    put_json(out, "", ol_message(ud, json_object_get(piece, "text"), false), "\n");
}

static void ol_end(void *ud, json_t *result, const struct larder__timing *t, bool pieces,
                   struct larder__text *out)
{
    if (!pieces)
        put_json(out, "", ol_message(ud, json_object_get(result, "text"), false), "\n");
    put_json(out, "", ol_final(ud, result, t, NULL), "\n");
}

static void ol_fail(void *ud, unsigned status, const char *code, const char *msg,
                    struct larder__text *out)
{
    put_json(out, "", larder__error_json(LARDER__ERRORS_OLLAMA, status, code, NULL, msg), "\n");
}

/* keep_alive: the model's ttl from now on; a request without it sets the config's back. */
static void ol_before_release(struct larder__daemon *d, void *ud, const char *model)
{
    struct ol *a = ud;
    int64_t ttl = a->keep_alive_ms;
    if (!a->keep_alive_set) {
        pthread_rwlock_rdlock(&d->conf_lock);
        const struct larder__model_conf *m = larder__config_model(d->conf, model);
        ttl = m ? m->ttl_ms : LARDER_TTL_DEFAULT;
        pthread_rwlock_unlock(&d->conf_lock);
    }
    larder *mgr = larder__mgr_get(d);
    if (mgr) {
        larder_set_ttl(mgr, model, ttl);
        larder__mgr_put(d);
    }
}

#define OLLAMA_API(var, prep)                                                               \
    static const struct larder__api var = {                                                \
        .name = #var, .prepare = prep, .reply = ol_reply,                                   \
        .stream_type = "application/x-ndjson", .piece = ol_piece, .end = ol_end,           \
        .fail = ol_fail, .before_release = ol_before_release, .ud_free = simple_free,      \
    }
OLLAMA_API(ol_chat_api, ol_chat_prepare);
OLLAMA_API(ol_generate_api, ol_generate_prepare);
OLLAMA_API(ol_embed_api, ol_embed_prepare);
OLLAMA_API(ol_embeddings_api, ol_embeddings_prepare);

static void ollama_route(struct larder__request *r, const struct larder__api *api)
{
    r->error_style = LARDER__ERRORS_OLLAMA;
    larder__infer_api(r, api);
}

void larder__route_ollama_chat(struct larder__request *r, const char *name)
{
    ollama_route(r, &ol_chat_api);
}

void larder__route_ollama_generate(struct larder__request *r, const char *name)
{
    ollama_route(r, &ol_generate_api);
}

void larder__route_ollama_embed(struct larder__request *r, const char *name)
{
    ollama_route(r, &ol_embed_api);
}

void larder__route_ollama_embeddings(struct larder__request *r, const char *name)
{
    ollama_route(r, &ol_embeddings_api);
}

/* One model as Ollama lists it; loaded: with its expiry and device memory (/api/ps). */
static json_t *ol_model(struct larder__request *r, const struct larder_component_info *c,
                        bool loaded)
{
    struct stat st = {0};
    pthread_rwlock_rdlock(&r->d->conf_lock);
    const struct larder__model_conf *m = larder__config_model(r->d->conf, c->name);
    bool have_file = m && m->path && stat(m->path, &st) == 0;
    pthread_rwlock_unlock(&r->d->conf_lock);
    const char *backend = c->class_name ? c->class_name : "";
    uint64_t size = c->measured_bytes ? c->measured_bytes : c->estimate_bytes;
    char when[48];
    iso_time(have_file ? (double)st.st_mtime : wall_now(), when, sizeof when);
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:{s:s,s:s,s:s,s:[s],s:s,s:s}}", "name", c->name,
                          "model", c->name, "size", (json_int_t)size, "digest", "", "details",
                          "parent_model", "", "format",
                          strcmp(backend, "llama") == 0 ? "gguf" : backend, "family", backend,
                          "families", backend, "parameter_size", "", "quantization_level", "");
    if (!loaded) {
        json_object_set_new(o, "modified_at", json_string(when));
        return o;
    }
    /* A model kept forever: Ollama's far-future expiry. */
    double expires = c->expires_in_ms >= 0 ? wall_now() + (double)c->expires_in_ms / 1000.0
                     : c->ttl_ms < 0       ? 253402300799.0
                                           : wall_now() + (double)c->ttl_ms / 1000.0;
    iso_time(expires, when, sizeof when);
    json_object_set_new(o, "expires_at", json_string(when));
    json_object_set_new(o, "size_vram", json_integer((json_int_t)c->gpu_bytes));
    return o;
}

static void ol_list(struct larder__request *r, bool loaded_only)
{
    r->error_style = LARDER__ERRORS_OLLAMA;
    struct larder_snapshot *s = larder__snapshot_or_reply(r);
    if (!s)
        return;
    json_t *list = json_array();
    for (size_t i = 0; i < s->n; i++)
        if ((!loaded_only || s->components[i].state == LARDER_STATE_READY) &&
            speaks_api(r->d, &s->components[i]))
            json_array_append_new(list, ol_model(r, &s->components[i], loaded_only));
    larder_snapshot_free(s);
    larder__reply_json(r, 200, json_pack("{s:o}", "models", list));
}

void larder__route_ollama_tags(struct larder__request *r, const char *name)
{
    ol_list(r, false);
}

void larder__route_ollama_ps(struct larder__request *r, const char *name)
{
    ol_list(r, true);
}

void larder__route_ollama_version(struct larder__request *r, const char *name)
{
    larder__reply_json(r, 200, json_pack("{s:s}", "version", LARDER_VERSION));
}

/* ---- llama.cpp's router: /models ----------------------------------------------------------- */

static const char *router_state(const struct larder_component_info *c)
{
    switch (c->state) {
    case LARDER_STATE_READY:
        return "loaded";
    case LARDER_STATE_LOADING:
        return "loading";
    case LARDER_STATE_FAILED:
        return "failed";
    default:
        return c->last_error && !c->loads ? "failed" : "unloaded";
    }
}

void larder__route_router_models(struct larder__request *r, const char *name)
{
    r->error_style = LARDER__ERRORS_OPENAI;
    struct larder_snapshot *s = larder__snapshot_or_reply(r);
    if (!s)
        return;
    json_t *list = json_array();
    long long created = (long long)larder__wall_started(r->d);
    for (size_t i = 0; i < s->n; i++) {
        const struct larder_component_info *c = &s->components[i];
        if (!speaks_api(r->d, c))
            continue;
        json_t *status = json_pack("{s:s}", "value", router_state(c));
        if (c->last_error_message)
            json_object_set_new(status, "error", json_string(c->last_error_message));
        json_array_append_new(list, json_pack("{s:s,s:s,s:s,s:I,s:o}", "id", c->name, "object",
                                              "model", "owned_by", "larder", "created",
                                              (json_int_t)created, "status", status));
    }
    larder_snapshot_free(s);
    larder__reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", list));
}

struct router_job {
    struct larder__request *r;
    bool load;
};

/* On the admin pool: the body names the model; a load starts it (and returns at once, as
 * llama-server does), an unload drains and unloads it. */
static void router_job(void *arg)
{
    struct router_job *j = arg;
    struct larder__request *r = j->r;
    struct larder__call call = {0};
    json_t *o = body_object(r);
    if (o && take_model(r, o, &call)) {
        int64_t drain;
        pthread_rwlock_rdlock(&r->d->conf_lock);
        drain = r->d->conf->drain_timeout_ms;
        pthread_rwlock_unlock(&r->d->conf_lock);
        larder *m = larder__mgr_get(r->d);
        int e = !m       ? LARDER_ECLOSED
                : j->load ? larder_preload(m, call.model)
                          : larder_unload(m, call.model, drain);
        if (m)
            larder__mgr_put(r->d);
        if (e == LARDER_ENOTFOUND)
            larder__reply_error(r, 404, "model_not_found", "no model named '%s'", call.model);
        else if (e < 0)
            larder__reply_larder_error_retry(
                r, e, NULL, e == LARDER_ECOOLDOWN ? larder__cooldown_left_ms(r->d, call.model) : -1);
        else
            larder__reply_json(r, 200, json_pack("{s:b}", "success", 1));
    }
    json_decref(o);
    free(call.model);
    free(j);
    larder__request_resume(r);
}

static void router_admin(struct larder__request *r, bool load)
{
    r->error_style = LARDER__ERRORS_OPENAI;
    if (!larder__require_token(r, true))
        return;
    struct router_job *j = calloc(1, sizeof *j);
    if (!j) {
        larder__reply_error(r, 500, "internal", "out of memory");
        return;
    }
    j->r = r;
    j->load = load;
    larder__request_suspend(r);
    if (larder__pool_submit(r->d->admin_pool, router_job, j) < 0) {
        free(j);
        larder__reply_error(r, 503, "shutting_down", "the server is stopping");
        larder__request_resume(r);
    }
}

void larder__route_router_load(struct larder__request *r, const char *name)
{
    router_admin(r, true);
}

void larder__route_router_unload(struct larder__request *r, const char *name)
{
    router_admin(r, false);
}
