/* larderd serving the GGUF models the build writes (a generator, an embedder, a reranker)
 * through POST /v1/models/NAME/infer, checked against the same plugin driven in this
 * process: the same greedy tokens, the same vectors, the same scores. Bad requests and bad
 * files get clear errors and the daemon goes on serving; the registry shows the estimate
 * and the measured bytes.
 *
 * Environment: LARDER_BACKEND_DIR (the built plugins); GGUF_DIR is compiled in. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "../backends/harness.h"

#ifndef GGUF_DIR
#error "GGUF_DIR must name the directory of the written GGUF models"
#endif

#define PROMPT "the quick brown fox jumps over the lazy dog"
#define GEN_BODY "{\"prompt\": \"" PROMPT "\", \"max_tokens\": 16, \"temperature\": 0}"
#define EMBED_BODY "{\"input\": [\"hello world\", \"a b c d\"]}"
#define RANK_BODY "{\"query\": \"fox\", \"documents\": [\"the fox\", \"a dog\", \"zzz\"]}"

static struct daemon d;
static const struct larder_backend_ops *ops;
static char swap_path[256];

static int group_setup(void **state)
{
    char plugin[4096], config[4096];
    const char *dir = getenv("LARDER_BACKEND_DIR");
    size_t len;
    void *gguf;

    (void)state;
    if (!dir)
        return -1;
    snprintf(plugin, sizeof plugin, "%s/larder-llama.so", dir);
    ops = harness_open(NULL, plugin);
    /* a copy of the generator that a test later overwrites with something else */
    snprintf(swap_path, sizeof swap_path, "/tmp/larder-it-llama-%d.gguf", (int)getpid());
    gguf = harness_read_example(GGUF_DIR "/tiny-generator-f32.gguf", &len);
    {
        FILE *f = fopen(swap_path, "wb");

        if (!f || fwrite(gguf, 1, len, f) != len || fclose(f) != 0)
            return -1;
    }
    free(gguf);
    snprintf(config, sizeof config,
             "[memory]\nbudget = 1GiB\nwatch_pressure = no\n"
             "[model.llm]\nbackend = llama\npath = " GGUF_DIR "/tiny-generator-f32.gguf\n"
             "ctx = 256\nthreads = 1\n"
             "[model.emb]\nbackend = llama\npath = " GGUF_DIR "/tiny-embedder-f32.gguf\n"
             "embedding = yes\npooling = mean\nthreads = 1\nctx = 256\n"
             "[model.rank]\nbackend = llama\npath = " GGUF_DIR "/tiny-reranker-f32.gguf\n"
             "pooling = rank\nthreads = 1\nctx = 256\n"
             "[model.pair]\nbackend = llama\npath = " GGUF_DIR "/tiny-generator-f32.gguf\n"
             "ctx = 256\nthreads = 1\ninstances = 2\n"
             "[model.changed]\nbackend = llama\npath = %s\nthreads = 1\nctx = 256\n",
             swap_path);
    return daemon_start(&d, config);
}

static int group_teardown(void **state)
{
    (void)state;
    unlink(swap_path);
    return daemon_stop(&d) == 0 ? 0 : -1;
}

/* POST body to model's /infer; asserts the status; returns the parsed reply. */
static json_t *infer(const char *model, const char *body, int want)
{
    char path[128];
    struct larder__http_response r = {0};
    json_t *o;
    int st;

    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    st = http(&d, "POST", path, "application/json", body, strlen(body), false, &r);
    if (st != want) {
        daemon_dump_log(&d);
        fail_msg("%s %.60s: HTTP %d, wanted %d: %s", model, body, st, want,
                 r.body ? r.body : "");
    }
    o = json_loads(r.body ? r.body : "", 0, NULL);
    larder__http_response_clear(&r);
    assert_non_null(o);
    return o;
}

/* The same request through the plugin in this process, with the model's options. */
static json_t *plugin_infer(const char *file, const char *k, const char *v, const char *body)
{
    char path[4096];
    struct larder_option o[] = {{"path", path}, {"threads", "1"}, {"ctx", "256"}, {k, v}};
    void *model, *in = NULL;
    char err[512] = "";
    json_t *reply = NULL;

    snprintf(path, sizeof path, GGUF_DIR "/%s", file);
    model = harness_load(ops, o, k ? 4 : 3);
    if (ops->instance_new(model, &in, err, sizeof err) < 0)
        fail_msg("instance_new: %s", err);
    assert_int_equal(harness_infer(ops, model, in, body, strlen(body), "application/json",
                                   &reply), 0);
    ops->instance_free(model, in);
    ops->unload(model);
    return reply;
}

/* Every number of two arrays (nested) within tol. */
static void assert_close(json_t *a, json_t *b, double tol)
{
    size_t i;
    json_t *v;

    if (json_is_array(a)) {
        assert_true(json_is_array(b));
        assert_int_equal(json_array_size(a), json_array_size(b));
        json_array_foreach(a, i, v)
            assert_close(v, json_array_get(b, i), tol);
        return;
    }
    assert_true(json_is_number(a) && json_is_number(b));
    assert_true(fabs(json_number_value(a) - json_number_value(b)) <= tol);
}

static void assert_error(json_t *o, const char *code, const char *needle)
{
    json_t *e = json_object_get(o, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));

    assert_non_null(msg);
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    if (needle && !strstr(msg, needle))
        fail_msg("error message '%s' lacks '%s'", msg, needle);
}

static void test_generation_equals_plugin(void **state)
{
    json_t *got, *want;

    (void)state;
    got = infer("llm", GEN_BODY, 200);
    want = plugin_infer("tiny-generator-f32.gguf", NULL, NULL, GEN_BODY);
    assert_true(json_array_size(json_object_get(want, "tokens")) > 0);
    assert_true(json_equal(json_object_get(got, "tokens"), json_object_get(want, "tokens")));
    assert_string_equal(json_string_value(json_object_get(got, "text")),
                        json_string_value(json_object_get(want, "text")));
    assert_string_equal(json_string_value(json_object_get(got, "finish_reason")),
                        json_string_value(json_object_get(want, "finish_reason")));
    json_decref(got);
    json_decref(want);
}

static void test_embeddings_equal_plugin(void **state)
{
    json_t *got, *want;

    (void)state;
    got = infer("emb", EMBED_BODY, 200);
    want = plugin_infer("tiny-embedder-f32.gguf", "embedding", "yes", EMBED_BODY);
    assert_int_equal(json_array_size(json_object_get(got, "embeddings")), 2);
    assert_int_equal(json_array_size(json_array_get(json_object_get(got, "embeddings"), 0)),
                     64);
    assert_close(json_object_get(got, "embeddings"), json_object_get(want, "embeddings"), 1e-5);
    json_decref(got);
    json_decref(want);
}

static void test_rerank_equals_plugin(void **state)
{
    json_t *got, *want;

    (void)state;
    got = infer("rank", RANK_BODY, 200);
    want = plugin_infer("tiny-reranker-f32.gguf", "pooling", "rank", RANK_BODY);
    assert_int_equal(json_array_size(json_object_get(got, "scores")), 3);
    assert_close(json_object_get(got, "scores"), json_object_get(want, "scores"), 1e-5);
    json_decref(got);
    json_decref(want);
}

/* One generation on its own thread: the parsed reply of a 200, else NULL (the main
 * thread asserts). */
static void *post_generation(void *arg)
{
    struct larder__http_response r = {0};
    json_t *o = NULL;

    (void)arg;
    if (http(&d, "POST", "/v1/models/pair/infer", "application/json", GEN_BODY,
             strlen(GEN_BODY), false, &r) == 200)
        o = json_loads(r.body, 0, NULL);
    larder__http_response_clear(&r);
    return o;
}

/* Requests at once on a model of two instances (two llama contexts): each gets the
 * tokens a lone request gets. */
static void test_concurrent_instances(void **state)
{
    pthread_t t[4];
    json_t *want = plugin_infer("tiny-generator-f32.gguf", NULL, NULL, GEN_BODY);

    (void)state;
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, post_generation, NULL), 0);
    for (int i = 0; i < 4; i++) {
        void *got;

        assert_int_equal(pthread_join(t[i], &got), 0);
        assert_non_null(got);
        assert_true(json_equal(json_object_get(got, "tokens"), json_object_get(want, "tokens")));
        json_decref(got);
    }
    json_decref(want);
    assert_true(json_field(&d, "/v1/models/pair", "instances.created") >= 1);
    assert_true(json_field(&d, "/v1/models/pair", "instances.created") <= 2);
}

/* Wrong operations, a prompt past the context, malformed bodies: 4xx JSON errors, and each
 * model serves its next request. */
static void test_bad_requests(void **state)
{
    char body[8192];
    size_t off;
    json_t *o;

    (void)state;
    o = infer("llm", "{\"input\": \"x\"}", 400);
    assert_error(o, "bad_input", "embeddings");
    json_decref(o);
    o = infer("emb", "{\"prompt\": \"x\"}", 400);
    assert_error(o, "bad_input", "embedder");
    json_decref(o);
    o = infer("rank", "{\"input\": \"x\"}", 400);
    assert_error(o, "bad_input", NULL);
    json_decref(o);
    o = infer("llm", "{\"nothing\": 1}", 400);
    assert_error(o, "bad_input", "prompt");
    json_decref(o);
    o = infer("llm", "{\"prompt\": ", 400);
    assert_error(o, "invalid_json", NULL);
    json_decref(o);
    off = (size_t)snprintf(body, sizeof body, "{\"prompt\": \"");
    for (int i = 0; i < 300; i++) /* 300 words: past the 256 cells of ctx = 256 */
        off += (size_t)snprintf(body + off, sizeof body - off, "word ");
    snprintf(body + off, sizeof body - off, "\"}");
    /* Past the context: the backend's ETOOBIG, 413 on /infer (the OpenAI and Ollama routes
     * answer it 400 context_length_exceeded). */
    o = infer("llm", body, 413);
    assert_error(o, "input_too_large", "context is 256");
    json_decref(o);
    body[off - 1] = '\0';
    {
        char emb[8300];

        snprintf(emb, sizeof emb, "{\"input\": \"%s\"}", body + 12);
        o = infer("emb", emb, 413);
        assert_error(o, "input_too_large", "context");
        json_decref(o);
    }
    /* still serving, with the same results */
    test_generation_equals_plugin(state);
    json_decref(infer("emb", EMBED_BODY, 200));
    assert_int_equal(http_get(&d, "/health"), 200);
}

/* A config naming a file that is no GGUF is refused at reload with the reason; a model
 * whose file turns into something else after the check fails its load with the reason.
 * The daemon serves the other models all along. */
static void test_non_gguf_files(void **state)
{
    char config[2048], rows[256];
    struct larder__http_response r = {0};
    json_t *o;
    FILE *f;

    (void)state;
    snprintf(rows, sizeof rows, "%s/rows.json", EXAMPLES_DIR);
    {
        /* the running config plus a model on a JSON file */
        char *cur = read_file(d.config, NULL);

        assert_non_null(cur);
        snprintf(config, sizeof config, "%s[model.bogus]\nbackend = llama\npath = %s\n", cur,
                 rows);
        free(cur);
    }
    assert_int_equal(daemon_write_config(&d, strstr(config, "[memory]")), 0);
    assert_int_equal(http(&d, "POST", "/v1/reload", NULL, NULL, 0, true, &r), 400);
    o = json_loads(r.body, 0, NULL);
    larder__http_response_clear(&r);
    assert_error(o, "reload_failed", "not a GGUF file");
    json_decref(o);
    /* the file of [model.changed] becomes JSON text after the daemon checked it */
    f = fopen(swap_path, "wb");
    assert_non_null(f);
    fputs("{\"not\": \"a model\"}\n", f);
    assert_int_equal(fclose(f), 0);
    o = infer("changed", GEN_BODY, 500);
    assert_error(o, "load_failed", "not a GGUF file");
    json_decref(o);
    assert_int_equal(http_get(&d, "/v1/models/bogus"), 404);
    test_generation_equals_plugin(state);
    json_decref(infer("rank", RANK_BODY, 200));
}

/* The registry shows the plugin's estimate (from the GGUF metadata) and what llama.cpp
 * allocated, measured by the plugin; the estimate is not below the measure. */
static void test_registry_bytes(void **state)
{
    static const char *const names[] = {"llm", "emb", "rank"};
    struct larder__http_response r = {0};

    (void)state;
    for (size_t i = 0; i < 3; i++) {
        char path[128];
        json_t *o, *mem;
        long long est, measured;

        json_decref(infer(names[i], i == 0 ? GEN_BODY : i == 1 ? EMBED_BODY : RANK_BODY, 200));
        snprintf(path, sizeof path, "/v1/models/%s", names[i]);
        assert_int_equal(http(&d, "GET", path, NULL, NULL, 0, false, &r), 200);
        o = json_loads(r.body, 0, NULL);
        larder__http_response_clear(&r);
        assert_non_null(o);
        mem = json_object_get(o, "memory");
        est = json_integer_value(json_object_get(mem, "estimate_bytes"));
        measured = json_integer_value(json_object_get(mem, "measured_bytes"));
        assert_string_equal(json_string_value(json_object_get(o, "state")), "ready");
        assert_string_equal(json_string_value(json_object_get(mem, "estimate_source")), "class");
        assert_string_equal(json_string_value(json_object_get(mem, "measure_method")), "class");
        if (!(measured > 300000 && est >= measured))
            fail_msg("%s: estimate %lld, measured %lld", names[i], est, measured);
        json_decref(o);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generation_equals_plugin),
        cmocka_unit_test(test_embeddings_equal_plugin),
        cmocka_unit_test(test_rerank_equals_plugin),
        cmocka_unit_test(test_concurrent_instances),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_registry_bytes),
        cmocka_unit_test(test_non_gguf_files),
    };

    return cmocka_run_group_tests_name("daemon-llama", tests, group_setup, group_teardown);
}
