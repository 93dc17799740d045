/* The OpenAI, Ollama and router routes at the HTTP level, against the real llama backend
 * and the GGUF models the build writes: bad input on each route answers the route's error
 * shape and status and costs nothing else, and a client that leaves a stream frees its
 * instance at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "harness.h"

static const char *models_dir(void)
{
    return MODELS_DIR;
}

static char junk_dir[64], junk[128];

/* A copy of the generator that start-up checks; overwritten later with what is no GGUF. */
static void make_junk(void)
{
    char cmd[512];
    snprintf(junk_dir, sizeof junk_dir, "/tmp/larder-api-XXXXXX");
    assert_non_null(mkdtemp(junk_dir));
    snprintf(junk, sizeof junk, "%s/junk.gguf", junk_dir);
    snprintf(cmd, sizeof cmd, "cp '%s/tiny-generator-f32.gguf' '%s'", models_dir(), junk);
    assert_int_equal(system(cmd), 0);
}

static void spoil_junk(void)
{
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("this is not a GGUF file\n", f);
    fclose(f);
}

static void drop_junk(void)
{
    unlink(junk);
    rmdir(junk_dir);
}

/* server: a [server] section, or "" for the harness's. */
static void start_with(struct daemon *d, const char *server)
{
    char conf[4096];
    make_junk();
    snprintf(conf, sizeof conf,
             "%s"
             "[model.gen]\nbackend = llama\npath = %s/tiny-generator-f32.gguf\nctx = 4096\n"
             "threads = 1\nmax_tokens = 8\ninstances = 1\n\n"
             "[model.small]\nbackend = llama\npath = %s/tiny-generator-f32.gguf\nctx = 64\n"
             "threads = 1\n\n"
             "[model.emb]\nbackend = llama\npath = %s/tiny-embedder-f32.gguf\nembedding = yes\n"
             "pooling = mean\nthreads = 1\nctx = 64\n\n"
             "[model.junk]\nbackend = llama\npath = %s\n\n"
             "[model.plain]\nbackend = synthetic\n",
             server, models_dir(), models_dir(), models_dir(), junk);
    assert_int_equal(daemon_start(d, conf), 0);
}

static void start(struct daemon *d)
{
    start_with(d, "");
}

/* A [server] section with the harness's listen and tokens, and more settings. */
#define SERVER(more) "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n" more "\n"

/* Stops the daemon (it must exit 0) and removes the test's files. */
static void finish(struct daemon *d)
{
    assert_int_equal(daemon_stop(d), 0);
    drop_junk();
}

/* The error of a reply in a route's shape: OpenAI's object (message, type, code, param)
 * or Ollama's string. Returns the code (OpenAI) or "" (Ollama). */
static const char *check_shape(const struct larder__http_response *resp, bool ollama)
{
    static char code[64];
    json_error_t jerr;
    json_t *o = json_loads(resp->body ? resp->body : "", 0, &jerr);
    if (!o)
        fprintf(stderr, "not JSON: %s\n", resp->body ? resp->body : "(none)");
    assert_non_null(o);
    json_t *e = json_object_get(o, "error");
    code[0] = 0;
    if (ollama) {
        assert_true(json_is_string(e) && json_string_length(e) > 0);
    } else {
        assert_true(json_is_object(e));
        assert_true(json_is_string(json_object_get(e, "message")));
        assert_true(json_is_string(json_object_get(e, "type")));
        assert_non_null(json_object_get(e, "param"));
        assert_true(json_is_string(json_object_get(e, "code")));
        snprintf(code, sizeof code, "%s", json_string_value(json_object_get(e, "code")));
    }
    json_decref(o);
    return code;
}

struct bad_case {
    const char *path;
    const char *body;
    int status;
    const char *code; /* OpenAI's code; NULL on Ollama's routes */
};

static void test_bad_input(void **state)
{
    struct daemon d;
    start(&d);
    spoil_junk();
    char longp[24000] = "{\"model\":\"small\",\"messages\":[{\"role\":\"user\",\"content\":\"";
    for (int i = 0; i < 2000; i++)
        strcat(longp, "word ");
    strcat(longp, "\"}]}");
    /* The same words as a prompt, and as an input past the embedder's context. */
    static char longc[24000], longe[24000], longg[24000];
    const char *words = strstr(longp, "word ");
    int wlen = (int)(strlen(words) - 4);
    snprintf(longc, sizeof longc, "{\"model\":\"small\",\"prompt\":\"%.*s\"}", wlen, words);
    snprintf(longe, sizeof longe, "{\"model\":\"emb\",\"input\":\"%.*s\"}", wlen, words);
    snprintf(longg, sizeof longg, "{\"model\":\"small\",\"prompt\":\"%.*s\",\"stream\":false}",
             wlen, words);
    const struct bad_case cases[] = {
        {"/v1/chat/completions", "{\"model\":\"nosuch\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         404, "model_not_found"},
        {"/v1/chat/completions", "{\"model\":\"gen\",\"messages\":", 400, "invalid_json"},
        {"/v1/chat/completions", "[1,2]", 400, "invalid_json"},
        {"/v1/chat/completions", "{\"model\":\"gen\",\"messages\":\"hi\"}", 400, "invalid_type"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400,
         "invalid_type"},
        {"/v1/chat/completions",
         "{\"model\":\"gen\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
         "\"temperature\":\"hot\"}", 400, "invalid_type"},
        {"/v1/chat/completions",
         "{\"model\":\"gen\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
         400, "invalid_type"},
        {"/v1/chat/completions", longp, 400, "context_length_exceeded"},
        {"/v1/chat/completions",
         "{\"model\":\"junk\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 500,
         "load_failed"},
        {"/v1/completions", "{\"model\":\"gen\",\"prompt\":5}", 400, "invalid_type"},
        {"/v1/embeddings", "{\"model\":\"emb\",\"input\":5}", 400, "invalid_type"},
        {"/v1/embeddings", "{\"model\":\"emb\",\"input\":\"x\",\"encoding_format\":\"hex\"}", 400,
         "invalid_type"},
        {"/v1/embeddings", "{\"model\":\"nosuch\",\"input\":\"x\"}", 404, "model_not_found"},
        {"/v1/rerank", "{\"model\":\"emb\",\"query\":\"q\"}", 400, "invalid_type"},
        {"/api/chat", "{\"model\":\"gen\",\"messages\":", 400, NULL},
        {"/api/chat", "{\"model\":\"nosuch\",\"messages\":[]}", 404, NULL},
        {"/api/chat", "{\"model\":\"gen\",\"messages\":{}}", 400, NULL},
        {"/api/generate", "{\"model\":\"gen\",\"prompt\":\"x\",\"keep_alive\":\"banana\"}", 400,
         NULL},
        {"/api/generate", "{\"model\":\"gen\",\"prompt\":[1]}", 400, NULL},
        {"/api/embed", "{\"model\":\"emb\",\"input\":{}}", 400, NULL},
        {"/models/load", "{\"model\":\"gen\"}", 401, "unauthorized"},
        /* A well-formed body naming an unknown model is 404 whatever else is wrong with it;
         * a malformed body is 400 first; a model that is no name is 400. */
        {"/v1/chat/completions", "{\"model\":\"nosuch\",\"messages\":\"hi\",\"n\":3}", 404,
         "model_not_found"},
        {"/v1/chat/completions", "{\"model\":\"nosuch\",\"messages\":", 400, "invalid_json"},
        {"/v1/chat/completions", "{\"model\":5,\"messages\":[]}", 400, "invalid_type"},
        {"/v1/completions", "{\"model\":\"nosuch\",\"prompt\":5}", 404, "model_not_found"},
        {"/v1/embeddings", "{\"model\":\"nosuch\",\"input\":5}", 404, "model_not_found"},
        {"/v1/rerank", "{\"model\":\"nosuch\"}", 404, "model_not_found"},
        {"/api/generate", "{\"model\":\"nosuch\",\"prompt\":[1]}", 404, NULL},
        {"/api/generate", "{\"model\":\"gen\",\"prompt\":\"x\",\"raw\":\"yes\"}", 400, NULL},
        {"/api/generate", "{\"model\":\"gen\",\"prompt\":\"x\",\"template\":\"{{ .Prompt }}\"}",
         400, NULL},
        {"/models/unload", "{\"model\":\"gen\"}", 401, "unauthorized"},
        /* Longer than the context on the other routes too. */
        {"/v1/completions", longc, 400, "context_length_exceeded"},
        {"/v1/embeddings", longe, 400, "context_length_exceeded"},
        {"/api/generate", longg, 400, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct larder__http_response resp = {0};
        int st = http(&d, "POST", cases[i].path, "application/json", cases[i].body,
                      strlen(cases[i].body), false, &resp);
        if (st != cases[i].status)
            fprintf(stderr, "case %zu %s: %d %s\n", i, cases[i].path, st, resp.body);
        assert_int_equal(st, cases[i].status);
        const char *code = check_shape(&resp, cases[i].code == NULL);
        if (cases[i].code && strcmp(code, cases[i].code) != 0)
            fprintf(stderr, "case %zu %s: code %s\n", i, cases[i].path, code);
        if (cases[i].code)
            assert_string_equal(code, cases[i].code);
        larder__http_response_clear(&resp);
    }
    /* Admin: an unknown model on the router is 404; a known one loads. */
    struct larder__http_response resp = {0};
    const char *unknown = "{\"model\":\"nosuch\"}", *known = "{\"model\":\"emb\"}";
    assert_int_equal(http(&d, "POST", "/models/load", "application/json", unknown,
                          strlen(unknown), true, &resp), 404);
    larder__http_response_clear(&resp);
    assert_int_equal(http(&d, "POST", "/models/load", "application/json", known,
                          strlen(known), true, &resp), 200);
    larder__http_response_clear(&resp);
    /* Nothing leaked, and the daemon serves. */
    assert_int_equal(wait_json_field(&d, "/v1/models/gen", "leases", 0), 0);
    assert_int_equal(wait_json_field(&d, "/v1/models/small", "leases", 0), 0);
    const char *ok = "{\"model\":\"gen\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    assert_int_equal(http(&d, "POST", "/v1/chat/completions", "application/json", ok, strlen(ok),
                          false, NULL), 200);
    assert_int_equal(http_get(&d, "/health"), 200);
    finish(&d);
}

static long long cancelled_gone(struct daemon *d)
{
    struct larder__http_response resp = {0};
    long long n = -1;
    if (http(d, "GET", "/metrics", NULL, NULL, 0, false, &resp) == 200) {
        const char *p = strstr(resp.body, "larder_infer_cancelled_total{reason=\"client_gone\"} ");
        if (p)
            n = atoll(strchr(p, ' ') + 1);
    }
    larder__http_response_clear(&resp);
    return n;
}

/* A client that leaves a long stream: the generation stops, its only instance is free at
 * once, and the next request gets it. */
static void test_disconnect(void **state)
{
    struct daemon d;
    start(&d);
    static const char *const bodies[] = {
        "{\"model\":\"gen\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
        "\"max_tokens\":3000,\"stream\":true}",
        "{\"model\":\"gen\",\"prompt\":\"hi\",\"options\":{\"num_predict\":3000}}",
    };
    static const char *const paths[] = {"/v1/chat/completions", "/api/generate"};
    for (int k = 0; k < 2; k++) {
        int fd = larder__http_connect(&d.url, 10000);
        assert_true(fd >= 0);
        assert_int_equal(larder__http_send(fd, &d.url, "POST", paths[k], NULL, "application/json",
                                           bodies[k], strlen(bodies[k])), 0);
        char buf[8192];
        size_t used = 0;
        /* The first piece has come: the generation runs. */
        assert_true(larder__http_read_until(fd, buf, sizeof buf, &used,
                                            k == 0 ? "data: " : "\"done\":false",
                                            WAIT_BOUND_MS) >= 0);
        close(fd);
        long long want = k + 1;
        WAIT_UNTIL(cancelled_gone(&d) >= want);
        assert_int_equal(cancelled_gone(&d), want);
        assert_int_equal(wait_json_field(&d, "/v1/models/gen", "leases", 0), 0);
        assert_int_equal(wait_json_field(&d, "/v1/models/gen", "instances.busy", 0), 0);
        const char *next = "{\"model\":\"gen\",\"prompt\":\"x\",\"max_tokens\":2}";
        assert_int_equal(http(&d, "POST", "/v1/completions", "application/json", next,
                              strlen(next), false, NULL), 200);
        assert_int_equal(json_field(&d, "/v1/models/gen", "instances.created"), 1);
    }
    finish(&d);
}


/* POST path with body; the reply's JSON object (status in *ret_status). */
static json_t *post(struct daemon *d, const char *path, const char *body, int *ret_status)
{
    struct larder__http_response resp = {0};
    *ret_status = http(d, "POST", path, "application/json", body, strlen(body), false, &resp);
    json_error_t jerr;
    json_t *o = json_loads(resp.body ? resp.body : "", 0, &jerr);
    if (!o || *ret_status != 200)
        fprintf(stderr, "POST %s: %d %s\n", path, *ret_status, resp.body ? resp.body : "");
    larder__http_response_clear(&resp);
    assert_non_null(o);
    return o;
}

static json_t *get(struct daemon *d, const char *path)
{
    struct larder__http_response resp = {0};
    assert_int_equal(http(d, "GET", path, NULL, NULL, 0, false, &resp), 200);
    json_error_t jerr;
    json_t *o = json_loads(resp.body, 0, &jerr);
    larder__http_response_clear(&resp);
    assert_non_null(o);
    return o;
}

/* The names at key of each entry of list, sorted, comma-separated. */
static void names_of(json_t *list, const char *key, char *out, size_t len)
{
    const char *names[16];
    size_t n = 0, i;
    json_t *e;
    json_array_foreach(list, i, e) if (n < 16) names[n++] = json_string_value(json_object_get(e, key));
    for (size_t a = 0; a < n; a++)
        for (size_t b = a + 1; b < n; b++)
            if (strcmp(names[b], names[a]) < 0) {
                const char *t = names[a];
                names[a] = names[b];
                names[b] = t;
            }
    out[0] = 0;
    for (size_t a = 0; a < n; a++)
        snprintf(out + strlen(out), len - strlen(out), "%s%s", a ? "," : "", names[a]);
}

/* The lists clients read hold the models these APIs serve (the llama ones), not the
 * synthetic one; larder's own registry holds them all. */
static void test_model_lists(void **state)
{
    struct daemon d;
    start(&d);
    char names[256];
    json_t *o = get(&d, "/v1/models");
    names_of(json_object_get(o, "data"), "id", names, sizeof names);
    assert_string_equal(names, "emb,gen,junk,small");
    names_of(json_object_get(o, "models"), "name", names, sizeof names);
    assert_string_equal(names, "emb,gen,junk,plain,small");
    json_decref(o);
    o = get(&d, "/api/tags");
    names_of(json_object_get(o, "models"), "name", names, sizeof names);
    assert_string_equal(names, "emb,gen,junk,small");
    json_decref(o);
    o = get(&d, "/models");
    names_of(json_object_get(o, "data"), "id", names, sizeof names);
    assert_string_equal(names, "emb,gen,junk,small");
    json_decref(o);
    /* Loaded: plain is, and still not in /api/ps. */
    int st;
    json_decref(post(&d, "/v1/models/plain/infer", "{\"text\":\"x\"}", &st));
    assert_int_equal(st, 200);
    json_decref(post(&d, "/api/generate", "{\"model\":\"gen\",\"prompt\":\"x\",\"stream\":false,"
                                          "\"options\":{\"num_predict\":1}}", &st));
    assert_int_equal(st, 200);
    o = get(&d, "/api/ps");
    names_of(json_object_get(o, "models"), "name", names, sizeof names);
    assert_string_equal(names, "gen");
    json_decref(o);
    finish(&d);
}

static const char *text_at(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

/* /api/generate: raw takes the prompt as written (as /v1/completions does); otherwise the
 * prompt (after system) is one user turn through the model's chat template (as /api/chat
 * does). Greedy, so the same prompt tokens give the same text. */
static void test_generate_template(void **state)
{
    struct daemon d;
    start(&d);
    int st;
    const char *opts = "\"options\":{\"num_predict\":6,\"temperature\":0},\"stream\":false";
    char body[512];
    snprintf(body, sizeof body, "{\"model\":\"gen\",\"prompt\":\"once upon\",\"raw\":true,%s}", opts);
    json_t *raw = post(&d, "/api/generate", body, &st);
    assert_int_equal(st, 200);
    json_t *cmpl = post(&d, "/v1/completions",
                        "{\"model\":\"gen\",\"prompt\":\"once upon\",\"max_tokens\":6,"
                        "\"temperature\":0}", &st);
    assert_int_equal(st, 200);
    json_t *choice = json_array_get(json_object_get(cmpl, "choices"), 0);
    assert_string_equal(text_at(raw, "response", NULL), text_at(choice, "text", NULL));
    assert_int_equal(json_integer_value(json_object_get(raw, "prompt_eval_count")),
                     json_integer_value(json_object_get(json_object_get(cmpl, "usage"),
                                                        "prompt_tokens")));

    snprintf(body, sizeof body, "{\"model\":\"gen\",\"prompt\":\"once upon\",\"system\":\"be brief\",%s}",
             opts);
    json_t *tmpl = post(&d, "/api/generate", body, &st);
    assert_int_equal(st, 200);
    snprintf(body, sizeof body,
             "{\"model\":\"gen\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
             "{\"role\":\"user\",\"content\":\"once upon\"}],%s}", opts);
    json_t *chat = post(&d, "/api/chat", body, &st);
    assert_int_equal(st, 200);
    assert_string_equal(text_at(tmpl, "response", NULL), text_at(chat, "message", "content"));
    json_int_t templated = json_integer_value(json_object_get(tmpl, "prompt_eval_count"));
    assert_int_equal(templated, json_integer_value(json_object_get(chat, "prompt_eval_count")));
    /* The template's tokens are there. */
    assert_true(templated > json_integer_value(json_object_get(raw, "prompt_eval_count")) + 4);
    json_decref(raw);
    json_decref(cmpl);
    json_decref(tmpl);
    json_decref(chat);
    finish(&d);
}

/* The backend's request the routes make counts against request_memory with the client's
 * body: a body that fits alone but not with its translation is refused 503 request_memory,
 * a small one is served, and the memory comes back. */
static void test_request_memory(void **state)
{
    struct daemon d;
    start_with(&d, SERVER("max_body = 4k\nrequest_memory = 4k\n"));
    char body[4096];
    int n = snprintf(body, sizeof body, "{\"model\":\"gen\",\"max_tokens\":1,\"messages\":"
                                        "[{\"role\":\"user\",\"content\":\"");
    while (n < 2600)
        body[n++] = 'a';
    snprintf(body + n, sizeof body - (size_t)n, "\"}]}");
    struct larder__http_response resp = {0};
    assert_int_equal(http(&d, "POST", "/v1/chat/completions", "application/json", body,
                          strlen(body), false, &resp), 503);
    assert_string_equal(check_shape(&resp, false), "request_memory");
    larder__http_response_clear(&resp);
    const char *ok = "{\"model\":\"gen\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\","
                     "\"content\":\"hi\"}]}";
    assert_int_equal(http(&d, "POST", "/v1/chat/completions", "application/json", ok,
                          strlen(ok), false, NULL), 200);
    assert_int_equal(wait_json_field(&d, "/v1/memory", "requests.in_flight_bytes", 0), 0);
    finish(&d);
}

/* Waits at most WAIT_BOUND_MS for the daemon to exit, leaving it to daemon_stop to reap. */
static void wait_exit(struct daemon *d)
{
    siginfo_t si;
    bool gone = false;
    for (struct wait_bound b = wait_start(); !gone && wait_again(&b);) {
        memset(&si, 0, sizeof si);
        gone = waitid(P_PID, (id_t)d->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
               si.si_pid == d->pid;
    }
    assert_true(gone);
}

/* Opens a stream of body on path and reads until its first piece. */
static int open_stream(struct daemon *d, const char *path, const char *body, char *buf,
                       size_t len, size_t *used)
{
    int fd = larder__http_connect(&d->url, 10000);
    assert_true(fd >= 0);
    /* A small window: a client that stops reading holds the stream up soon. */
    int rcv = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    assert_int_equal(larder__http_send(fd, &d->url, "POST", path, NULL, "application/json",
                                       body, strlen(body)), 0);
    assert_true(larder__http_read_until(fd, buf, len, used, "data: ", WAIT_BOUND_MS) >= 0);
    return fd;
}

#define STREAM_BUF (8u << 20)

/* SIGTERM while a stream runs, within drain_timeout: the stream runs to its end (the
 * client gets every piece and [DONE]) and larderd exits 0. */
static void test_stop_drains_stream(void **state)
{
    struct daemon d;
    start(&d);
    char *buf = malloc(STREAM_BUF);
    assert_non_null(buf);
    size_t used = 0;
    int fd = open_stream(&d, "/v1/chat/completions",
                         "{\"model\":\"gen\",\"messages\":[{\"role\":\"user\",\"content\":"
                         "\"hi\"}],\"max_tokens\":300,\"stream\":true}",
                         buf, STREAM_BUF, &used);
    kill(d.pid, SIGTERM);
    assert_true(larder__http_read_until(fd, buf, STREAM_BUF, &used, "data: [DONE]",
                                        WAIT_BOUND_MS) >= 0);
    if (strstr(buf, "\"error\""))
        fprintf(stderr, "%s\n", strstr(buf, "\"error\""));
    assert_null(strstr(buf, "\"error\""));
    assert_non_null(strstr(buf, "\"finish_reason\":\""));
    close(fd);
    free(buf);
    wait_exit(&d);
    finish(&d);
}

/* SIGTERM while a stream outlasts drain_timeout (its client stopped reading): the
 * generation is stopped, the client gets OpenAI's error event (shutting_down) and [DONE]
 * after what was queued, and larderd exits 0. */
static void test_stop_ends_stream(void **state)
{
    struct daemon d;
    start_with(&d, SERVER("drain_timeout = 200ms\n"));
    char *buf = malloc(STREAM_BUF);
    assert_non_null(buf);
    size_t used = 0;
    /* Greedy from this prompt, the test generator runs to max_tokens (some 600 KB of
     * events): far more than the queue and the sockets' buffers hold. */
    int fd = open_stream(&d, "/v1/completions",
                         "{\"model\":\"gen\",\"prompt\":\"x\",\"max_tokens\":4000,"
                         "\"temperature\":0,\"stream\":true}",
                         buf, STREAM_BUF, &used);
    kill(d.pid, SIGTERM);
    if (daemon_wait_log(&d, "streams still running were ended", 1) != 1)
        daemon_dump_log(&d);
    assert_int_equal(daemon_log_count(&d, "streams still running were ended"), 1);
    assert_true(larder__http_read_until(fd, buf, STREAM_BUF, &used, "data: [DONE]",
                                        WAIT_BOUND_MS) >= 0);
    assert_non_null(strstr(buf, "\"code\":\"shutting_down\""));
    assert_null(strstr(buf, "\"finish_reason\":\""));
    close(fd);
    free(buf);
    wait_exit(&d);
    finish(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_bad_input, daemon_teardown),
        cmocka_unit_test_teardown(test_disconnect, daemon_teardown),
        cmocka_unit_test_teardown(test_model_lists, daemon_teardown),
        cmocka_unit_test_teardown(test_generate_template, daemon_teardown),
        cmocka_unit_test_teardown(test_request_memory, daemon_teardown),
        cmocka_unit_test_teardown(test_stop_drains_stream, daemon_teardown),
        cmocka_unit_test_teardown(test_stop_ends_stream, daemon_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
