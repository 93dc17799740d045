/* The llama plugin, built, on the GGUF models the build writes (tools/larder-gguf), checked
 * against a plain libllama program written here: greedy generation gives exactly its
 * tokens, embeddings equal the mean of its per-token embeddings.
 *
 * Environment: LARDER_PLUGIN (larder-llama.so), LARDER_GGUF_DIR (the written models),
 * LARDER_EXAMPLES. */
#include "harness.h"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <gguf.h>
#include <llama.h>
#include <ggml-backend.h>

#define PROMPT "the quick brown fox jumps over the lazy dog"

static const struct larder_backend_ops *ops;
static char gen_path[4096], embed_path[4096], rank_path[4096];

static void model_path(char *out, const char *name)
{
    const char *dir = getenv("LARDER_GGUF_DIR");

    if (!dir)
        fail_msg("LARDER_GGUF_DIR is not set: run the test through meson test");
    snprintf(out, 4096, "%s/%s", dir, name);
}

static void quiet(enum ggml_log_level level, const char *text, void *ud)
{
    (void)level;
    (void)text;
    (void)ud;
}

static int setup(void **state)
{
    (void)state;
    ops = harness_open("LARDER_PLUGIN", NULL);
    model_path(gen_path, "tiny-generator-f32.gguf");
    model_path(embed_path, "tiny-embedder-f32.gguf");
    model_path(rank_path, "tiny-reranker-f32.gguf");
    /* the plain program loads ggml's backends as any libllama program must */
    if (!getenv("LARDER_LLAMA_LIBDIR"))
        fail_msg("LARDER_LLAMA_LIBDIR is not set: run the test through meson test");
    ggml_backend_load_all_from_path(getenv("LARDER_LLAMA_LIBDIR"));
    llama_backend_init();
    return 0;
}

/* ---- the plain libllama program ------------------------------------------------------- */

static struct llama_model *plain_load(const char *path)
{
    struct llama_model_params mp = llama_model_default_params();
    static ggml_backend_dev_t none[1] = {NULL};
    struct llama_model *m;

    mp.devices = none;
    mp.n_gpu_layers = 0;
    m = llama_model_load_from_file(path, mp);
    assert_non_null(m);
    return m;
}

static struct llama_context *plain_context(struct llama_model *m, bool embeddings,
                                           uint32_t batch)
{
    struct llama_context_params cp = llama_context_default_params();
    struct llama_context *ctx;

    cp.n_ctx = 2048;
    cp.n_batch = cp.n_ubatch = batch;
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = 1;
    cp.embeddings = embeddings;
    if (embeddings)
        cp.pooling_type = LLAMA_POOLING_TYPE_NONE;
    ctx = llama_init_from_model(m, cp);
    assert_non_null(ctx);
    return ctx;
}

static int plain_tokenize(const struct llama_vocab *v, const char *text, llama_token *out,
                          int cap)
{
    int n = llama_tokenize(v, text, (int32_t)strlen(text), out, cap, true, true);

    assert_true(n > 0);
    return n;
}

/* Greedy generation of up to max tokens after prompt: the token ids. */
static int plain_generate(const char *path, const char *prompt, int max, llama_token *out)
{
    struct llama_model *m = plain_load(path);
    struct llama_context *ctx = plain_context(m, false, 512);
    const struct llama_vocab *v = llama_model_get_vocab(m);
    struct llama_sampler *s = llama_sampler_init_greedy();
    llama_token toks[1024];
    int n = plain_tokenize(v, prompt, toks, 1024), got = 0;

    assert_int_equal(llama_decode(ctx, llama_batch_get_one(toks, n)), 0);
    while (got < max) {
        llama_token t = llama_sampler_sample(s, ctx, -1);

        if (llama_vocab_is_eog(v, t))
            break;
        out[got++] = t;
        if (got < max)
            assert_int_equal(llama_decode(ctx, llama_batch_get_one(&t, 1)), 0);
    }
    llama_sampler_free(s);
    llama_free(ctx);
    llama_model_free(m);
    return got;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static void *load_with(const char *path, const char *k1, const char *v1)
{
    struct larder_option opts[] = {{"path", path}, {"threads", "1"}, {k1, v1}};

    return harness_load(ops, opts, k1 ? 3 : 2);
}

static void *new_instance(void *model)
{
    void *in = NULL;
    char err[512] = "";

    if (ops->instance_new(model, &in, err, sizeof err) < 0)
        fail_msg("instance_new: %s", err);
    return in;
}

static json_t *infer_ok(void *model, void *in, const char *body)
{
    json_t *reply = NULL;
    int rc = harness_infer(ops, model, in, body, strlen(body), "application/json", &reply);

    if (rc < 0)
        fail_msg("infer %s failed: %d", body, rc);
    return reply;
}

/* Runs a request expected to fail with code; returns nothing. */
static void infer_fails(void *model, void *in, const char *body, const char *ct, int code)
{
    json_t *reply = NULL;
    int rc = harness_infer(ops, model, in, body, strlen(body), ct, &reply);

    if (rc != code)
        fail_msg("%.60s: %d, expected %d", body, rc, code);
    assert_null(reply);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void check_greedy(const char *file)
{
    char path[4096];
    llama_token plain[32];
    void *model, *in;
    json_t *reply, *toks;
    int n;

    model_path(path, file);
    n = plain_generate(path, PROMPT, 24, plain);
    model = load_with(path, NULL, NULL);
    in = new_instance(model);
    reply = infer_ok(model, in,
                     "{\"prompt\": \"" PROMPT "\", \"max_tokens\": 24, \"temperature\": 0, "
                     "\"seed\": 42}");
    toks = json_object_get(reply, "tokens");
    assert_int_equal(json_array_size(toks), (size_t)n);
    for (int i = 0; i < n; i++)
        assert_int_equal(json_integer_value(json_array_get(toks, (size_t)i)), plain[i]);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(reply, "usage"), "completion_tokens")), n);
    assert_string_equal(json_string_value(json_object_get(reply, "finish_reason")),
                        n == 24 ? "length" : "stop");
    assert_true(json_is_number(json_object_get(json_object_get(reply, "timings"),
                                               "generate_ms")));
    json_decref(reply);
    ops->instance_free(model, in);
    ops->unload(model);
}

static void test_greedy_equals_plain(void **state)
{
    (void)state;
    check_greedy("tiny-generator-f32.gguf");
    check_greedy("tiny-generator-q8_0.gguf");
    check_greedy("tiny-generator-q4_0.gguf");
}

/* messages go through the GGUF's chat template (ChatML here), exactly as llama.cpp applies
 * it. */
static void test_messages_use_template(void **state)
{
    struct llama_chat_message chat[] = {{"system", "be brief"}, {"user", "hello"}};
    struct llama_model *m = plain_load(gen_path);
    char text[1024];
    llama_token toks[1024];
    int len, n;
    void *model, *in;
    json_t *reply;

    (void)state;
    len = llama_chat_apply_template(llama_model_chat_template(m, NULL), chat, 2, true, text,
                                    sizeof text);
    assert_true(len > 0 && len < (int)sizeof text);
    text[len] = '\0';
    assert_non_null(strstr(text, "<|im_start|>assistant"));
    n = plain_tokenize(llama_model_get_vocab(m), text, toks, 1024);
    llama_model_free(m);
    model = load_with(gen_path, NULL, NULL);
    in = new_instance(model);
    reply = infer_ok(model, in,
                     "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, "
                     "{\"role\": \"user\", \"content\": \"hello\"}], \"max_tokens\": 2}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(reply, "usage"),
                                                        "prompt_tokens")), n);
    json_decref(reply);
    ops->instance_free(model, in);
    ops->unload(model);
}

static void test_embeddings_equal_manual_mean(void **state)
{
    static const char *const inputs[] = {"hello world", "a b c d"};
    struct llama_model *m = plain_load(embed_path);
    struct llama_context *ctx = plain_context(m, true, 2048);
    const struct llama_vocab *v = llama_model_get_vocab(m);
    int dim = llama_model_n_embd(m);
    void *model, *in;
    json_t *reply, *embs;

    (void)state;
    model = load_with(embed_path, "embedding", "yes");
    in = new_instance(model);
    reply = infer_ok(model, in, "{\"input\": [\"hello world\", \"a b c d\"]}");
    embs = json_object_get(reply, "embeddings");
    assert_int_equal(json_array_size(embs), 2);
    for (size_t k = 0; k < 2; k++) {
        llama_token toks[256];
        int n = plain_tokenize(v, inputs[k], toks, 256);
        struct llama_batch b = llama_batch_init(n, 0, 1);
        json_t *got = json_array_get(embs, k);

        for (int i = 0; i < n; i++) {
            b.token[i] = toks[i];
            b.pos[i] = i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = 1;
        }
        b.n_tokens = n;
        llama_memory_clear(llama_get_memory(ctx), true);
        assert_int_equal(llama_decode(ctx, b), 0);
        assert_int_equal(json_array_size(got), (size_t)dim);
        for (int d = 0; d < dim; d++) {
            double mean = 0;

            for (int i = 0; i < n; i++)
                mean += llama_get_embeddings_ith(ctx, i)[d];
            mean /= n;
            assert_true(fabs(mean - json_real_value(json_array_get(got, (size_t)d))) < 1e-4);
        }
        llama_batch_free(b);
    }
    assert_true(json_integer_value(json_object_get(json_object_get(reply, "usage"),
                                                   "prompt_tokens")) > 2);
    json_decref(reply);
    llama_free(ctx);
    llama_model_free(m);
    ops->instance_free(model, in);
    ops->unload(model);
}

static void test_rerank_one_score_per_document(void **state)
{
    void *model, *in;
    json_t *reply, *scores;

    (void)state;
    model = load_with(rank_path, "pooling", "rank");
    in = new_instance(model);
    reply = infer_ok(model, in,
                     "{\"query\": \"fox\", \"documents\": [\"the fox\", \"a dog\", \"zzz\"]}");
    scores = json_object_get(reply, "scores");
    assert_int_equal(json_array_size(scores), 3);
    for (size_t i = 0; i < 3; i++) {
        double s = json_number_value(json_array_get(scores, i));
        assert_true(s > 0.0 && s < 1.0); /* softmax over the labels yes/no */
    }
    assert_true(json_number_value(json_array_get(scores, 0)) !=
                json_number_value(json_array_get(scores, 1)));
    json_decref(reply);
    /* wrong ops for this model */
    infer_fails(model, in, "{\"prompt\": \"x\"}", "application/json", LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{\"input\": \"x\"}", "application/json", LARDER_BACKEND_EINPUT);
    ops->instance_free(model, in);
    ops->unload(model);
}

static void concat_pieces(json_t *pieces, char *out, size_t cap, size_t *n_tokens)
{
    size_t i, off = 0;
    json_t *p;

    *n_tokens = 0;
    out[0] = '\0';
    json_array_foreach(pieces, i, p) {
        const char *t = json_string_value(json_object_get(p, "text"));

        assert_non_null(t);
        off += (size_t)snprintf(out + off, cap - off, "%s", t);
        if (json_object_get(p, "token"))
            (*n_tokens)++;
    }
}

static void test_stream_pieces_concatenate(void **state)
{
    static const char *const bodies[] = {
        "{\"prompt\": \"" PROMPT "\", \"max_tokens\": 20, \"temperature\": 0}",
        "{\"prompt\": \"" PROMPT "\", \"max_tokens\": 20, \"temperature\": 0.9, \"seed\": 3, "
        "\"stop\": [\"e\", \"zz\"]}",
    };
    void *model = load_with(gen_path, NULL, NULL), *in = new_instance(model);

    (void)state;
    for (size_t b = 0; b < 2; b++) {
        json_t *reply = NULL, *pieces = NULL;
        char text[8192];
        size_t n_tok;

        assert_int_equal(harness_infer_stream(ops, model, in, bodies[b], 0, &reply, &pieces), 0);
        concat_pieces(pieces, text, sizeof text, &n_tok);
        assert_string_equal(text, json_string_value(json_object_get(reply, "text")));
        assert_int_equal(n_tok, json_array_size(json_object_get(reply, "tokens")));
        if (b == 1)
            assert_null(strchr(text, 'e'));
        json_decref(reply);
        json_decref(pieces);
    }
    ops->instance_free(model, in);
    ops->unload(model);
}

/* A receiver that goes mid-stream, or a cancel check that says stop, ends the generation;
 * the instance then serves the next request exactly as a fresh one. */
static void test_cancel_frees_instance(void **state)
{
    const char *body = "{\"prompt\": \"" PROMPT "\", \"max_tokens\": 30, \"temperature\": 0}";
    void *model = load_with(gen_path, NULL, NULL), *in = new_instance(model);
    json_t *first = infer_ok(model, in, body), *reply = NULL, *pieces = NULL, *again;

    (void)state;
    assert_int_equal(harness_infer_stream(ops, model, in, body, 4, &reply, &pieces),
                     LARDER_BACKEND_ECANCELED);
    assert_null(reply);
    assert_int_equal(json_array_size(pieces), 3);
    json_decref(pieces);
    harness_cancel_at(5);
    infer_fails(model, in, body, "application/json", LARDER_BACKEND_ECANCELED);
    harness_cancel_at(0);
    again = infer_ok(model, in, body);
    assert_true(json_equal(json_object_get(first, "tokens"), json_object_get(again, "tokens")));
    json_decref(first);
    json_decref(again);
    ops->instance_free(model, in);
    ops->unload(model);
}

static void test_bad_requests(void **state)
{
    void *model, *in;
    char body[16384];
    size_t off;

    (void)state;
    {
        struct larder_option opts[] = {{"path", gen_path}, {"threads", "1"}, {"ctx", "32"}};
        model = harness_load(ops, opts, 3);
    }
    in = new_instance(model);
    off = (size_t)snprintf(body, sizeof body, "{\"prompt\": \"");
    for (int i = 0; i < 300; i++) /* past 32, and past the 256 llama.cpp rounds it up to */
        off += (size_t)snprintf(body + off, sizeof body - off, "word ");
    snprintf(body + off, sizeof body - off, "\"}");
    /* Longer than the context: ETOOBIG, which the OpenAI routes answer 400
     * context_length_exceeded. */
    infer_fails(model, in, body, "application/json", LARDER_BACKEND_ETOOBIG);
    infer_fails(model, in, "{not json", "application/json", LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "[1, 2]", "application/json", LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{}", "application/json", LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{\"prompt\": 5}", "application/json", LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{\"prompt\": [1, 99999]}", "application/json",
                LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{\"messages\": [{\"role\": 1}]}", "application/json",
                LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{\"messages\": []}", "application/json", LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{\"prompt\": \"a\", \"max_tokens\": -1}", "application/json",
                LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{\"prompt\": \"a\", \"stop\": [3]}", "application/json",
                LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{\"input\": \"a\"}", "application/json", LARDER_BACKEND_EINPUT);
    infer_fails(model, in, "{\"prompt\": \"a\"}", "image/png", LARDER_BACKEND_EMEDIA);
    /* still serves */
    json_decref(infer_ok(model, in, "{\"prompt\": \"a b\", \"max_tokens\": 2}"));
    ops->instance_free(model, in);
    ops->unload(model);
}

static void test_bad_files_and_options(void **state)
{
    char trunc[] = "/tmp/larder-llama-truncXXXXXX", rows[4096], err[512];
    const char *ex = getenv("LARDER_EXAMPLES");
    size_t len;
    unsigned char *data = harness_read_example(gen_path, &len);
    int fd = mkstemp(trunc);
    void *model = NULL;

    (void)state;
    snprintf(rows, sizeof rows, "%s/rows.json", ex ? ex : ".");
    /* the same path read whole first, then cut: the metadata read last is not reused */
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    {
        struct larder_option o[] = {{"path", trunc}};
        assert_int_equal(harness_check(ops, o, 1), 0);
    }
    assert_int_equal(ftruncate(fd, (off_t)(len / 2)), 0);
    close(fd);
    free(data);
    {
        struct larder_option o[] = {{"path", trunc}};
        assert_int_equal(harness_check(ops, o, 1), LARDER_BACKEND_EMODEL);
        assert_int_equal(ops->load(o, 1, &model, err, sizeof err), LARDER_BACKEND_EMODEL);
        assert_non_null(strstr(err, "truncated"));
    }
    {
        struct larder_option o[] = {{"path", rows}};
        assert_int_equal(ops->check(o, 1, err, sizeof err), LARDER_BACKEND_EMODEL);
        assert_non_null(strstr(err, "not a GGUF"));
    }
    {
        struct larder_option o[] = {{"path", "/nonexistent/model.gguf"}};
        assert_int_equal(harness_check(ops, o, 1), LARDER_BACKEND_EMODEL);
    }
    {
        static const char *const bad[][2] = {{"ctx", "abc"}, {"pooling", "sum"},
                                              {"gpu_layers", "many"}, {"bogus", "1"},
                                              {"temperature", "-1"}, {"mmap", "maybe"},
                                              {"stop", "[1]"}, {"threads", "0"}};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            struct larder_option o[] = {{"path", gen_path}, {bad[i][0], bad[i][1]}};
            assert_int_equal(harness_check(ops, o, 2), LARDER_BACKEND_EOPTION);
        }
    }
    {
        struct larder_option o[] = {{"path", gen_path}, {"stop", "[\"\\n\", \"###\"]"},
                                    {"gpu_layers", "auto"}, {"embedding", "no"}};
        assert_int_equal(harness_check(ops, o, 4), 0);
    }
    unlink(trunc);
}

/* The estimate holds the weights exactly (the summed tensor sizes llama.cpp reports as the
 * model size) plus a KV cache that grows with ctx. */
static void test_estimate_from_metadata(void **state)
{
    struct gguf_init_params p = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(gen_path, p);
    uint64_t sum = 0, e1 = 0, e2 = 0;
    void *model, *in;
    json_t *d;

    (void)state;
    assert_non_null(g);
    for (int64_t t = 0; t < gguf_get_n_tensors(g); t++)
        sum += gguf_get_tensor_size(g, t);
    gguf_free(g);
    {
        struct larder_option o1[] = {{"path", gen_path}, {"ctx", "256"}};
        struct larder_option o2[] = {{"path", gen_path}, {"ctx", "2048"}};
        assert_int_equal(ops->estimate(o1, 2, &e1), 0);
        assert_int_equal(ops->estimate(o2, 2, &e2), 0);
    }
    assert_true(e1 > sum);
    assert_true(e2 > e1);
    model = load_with(gen_path, NULL, NULL);
    in = new_instance(model);
    d = infer_ok(model, in, "{\"describe\": true}");
    assert_int_equal((uint64_t)json_integer_value(json_object_get(d, "weight_bytes")), sum);
    assert_string_equal(json_string_value(json_object_get(d, "kind")), "generate");
    assert_true(json_is_true(json_object_get(d, "chat_template")));
    json_decref(d);
    ops->instance_free(model, in);
    ops->unload(model);
}

/* The estimate bounds what llama.cpp allocates (its buffer reports: weights, KV cache,
 * compute and output buffers of one instance) from above, and not by much: for each kind
 * of model the build writes, at a small and a large context. */
static void test_estimate_covers_measured(void **state)
{
    static const char *const files[][3] = {
        {"tiny-generator-f32.gguf", NULL, NULL},  {"tiny-generator-q8_0.gguf", NULL, NULL},
        {"tiny-generator-q4_0.gguf", NULL, NULL}, {"tiny-embedder-f32.gguf", "embedding", "yes"},
        {"tiny-reranker-f32.gguf", "pooling", "rank"},
    };
    static const char *const ctxs[] = {"32", "256", "2048", "4096"};

    (void)state;
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++)
        for (size_t k = 0; k < sizeof ctxs / sizeof ctxs[0]; k++) {
            char path[4096];
            struct larder_option o[] = {{"path", path}, {"threads", "1"}, {"ctx", ctxs[k]},
                                        {files[f][1], files[f][2]}};
            size_t n = files[f][1] ? 4 : 3;
            uint64_t est = 0, measured = 0, described, weights;
            void *model, *in;
            json_t *d;

            model_path(path, files[f][0]);
            assert_int_equal(ops->estimate(o, n, &est), 0);
            model = harness_load(ops, o, n);
            in = new_instance(model);
            assert_int_equal(ops->measure(model, &measured), 0);
            d = infer_ok(model, in, "{\"describe\": true}");
            described = (uint64_t)json_integer_value(json_object_get(d, "measured_host_bytes"));
            weights = (uint64_t)json_integer_value(json_object_get(d, "weight_bytes"));
            json_decref(d);
            ops->instance_free(model, in);
            ops->unload(model);
            print_message("%s ctx %s: estimate %llu, measured %llu bytes (%.2fx)\n",
                          files[f][0], ctxs[k], (unsigned long long)est,
                          (unsigned long long)measured, (double)est / (double)measured);
            assert_int_equal(described, measured);
            /* more than the weights: the instance's buffers were counted */
            assert_true(measured > weights);
            assert_true(est >= measured);
            assert_true(est <= measured + measured / 2 + (512u << 10));
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_equals_plain),
        cmocka_unit_test(test_messages_use_template),
        cmocka_unit_test(test_embeddings_equal_manual_mean),
        cmocka_unit_test(test_rerank_one_score_per_document),
        cmocka_unit_test(test_stream_pieces_concatenate),
        cmocka_unit_test(test_cancel_frees_instance),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_bad_files_and_options),
        cmocka_unit_test(test_estimate_from_metadata),
        cmocka_unit_test(test_estimate_covers_measured),
    };

    llama_log_set(quiet, NULL);
    return cmocka_run_group_tests(tests, setup, NULL);
}
