/* Language models through larderd against a plain libllama program in the same process,
 * same run, same model file, same thread count and context parameters:
 *
 *   tokens/s     greedy generation through POST /v1/models/NAME/infer (HTTP, the whole
 *                request) against the plain decode loop (tokenize, prompt, sample, piece)
 *   cold         unload, then one request for 1 token (load + instance + first token)
 *                against a plain load + context + first token
 *   warm TTFT    a 1-token request through larderd, and the first streamed piece through
 *                the plugin's host emit (the HTTP figure is a whole 1-token reply),
 *                against the plain time to the first token
 *   swap         two models under a budget that holds one, alternating requests (each
 *                evicts the other) against a plain unload + load + first token
 *
 * Rounds alternate larderd and plain so that whatever else the machine does hits both
 * alike; figures are medians. It also prints the registry's estimate and measured bytes
 * of the model. A benchmark, not a test: it fails only when something does not work.
 *
 * usage: bench_llm [-t THREADS] [-n TOKENS] [-r ROUNDS] [LARDERD [MODEL_A MODEL_B [PLUGIN]]]
 */
#include <larder/backend.h>

#include "../http/common.h"

#include <dlfcn.h>
#include <ggml-backend.h>
#include <jansson.h>
#include <llama.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CTX 512
#define PROMPT "the quick brown fox jumps over the lazy dog and keeps on running"
#define ADMIN "bench-admin-token-0123456789abcdef"
#define MAX_ROUNDS 64

static int threads = 1, n_tokens = 64, rounds = 7;

static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "bench_llm: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* ---- the plain libllama program -------------------------------------------------------- */

struct plain {
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
};

/* The parameters the plugin uses for this configuration (docs/backends.md): the file
 * mapped, no GPU, a context of CTX with batches of up to 512, one sequence. */
static void plain_load(struct plain *p, const char *path)
{
    struct llama_model_params mp = llama_model_default_params();
    struct llama_context_params cp = llama_context_default_params();
    static ggml_backend_dev_t none[1] = {NULL};

    mp.devices = none;
    mp.n_gpu_layers = 0;
    mp.load_mode = LLAMA_LOAD_MODE_MMAP;
    if (!(p->model = llama_model_load_from_file(path, mp)))
        die("plain: cannot load %s", path);
    cp.n_ctx = CTX;
    cp.n_batch = cp.n_ubatch = CTX < 512 ? CTX : 512;
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = threads;
    cp.no_perf = true;
    if (!(p->ctx = llama_init_from_model(p->model, cp)))
        die("plain: cannot create a context");
    p->vocab = llama_model_get_vocab(p->model);
}

/* trim: as larder does after an unload, give the freed heap back to the system. */
static void plain_free(struct plain *p, bool trim)
{
    llama_free(p->ctx);
    llama_model_free(p->model);
    memset(p, 0, sizeof *p);
    if (trim)
        malloc_trim(0);
}

/* Greedy generation of up to max tokens after PROMPT; returns the count, the token ids in
 * out, and the seconds to the first token (with its text piece) in *ttft. */
static int plain_generate(struct plain *p, int max, llama_token *out, double *ttft)
{
    llama_token prompt[256];
    struct llama_sampler *s = llama_sampler_init_greedy();
    double t0 = bench_now();
    int n = llama_tokenize(p->vocab, PROMPT, (int32_t)strlen(PROMPT), prompt, 256, true, true);
    int got = 0;

    llama_memory_clear(llama_get_memory(p->ctx), true);
    if (n <= 0 || llama_decode(p->ctx, llama_batch_get_one(prompt, n)) != 0)
        die("plain: prompt decode failed");
    while (got < max) {
        char piece[256];
        llama_token t = llama_sampler_sample(s, p->ctx, -1);

        if (llama_vocab_is_eog(p->vocab, t))
            break;
        out[got++] = t;
        llama_token_to_piece(p->vocab, t, piece, sizeof piece, 0, false);
        if (got == 1 && ttft)
            *ttft = bench_now() - t0;
        if (got < max && llama_decode(p->ctx, llama_batch_get_one(&t, 1)) != 0)
            die("plain: decode failed");
    }
    llama_sampler_free(s);
    return got;
}

/* Load, context and the first token; everything freed again (then trimmed). */
static double plain_cold(const char *path, bool trim)
{
    struct plain p;
    llama_token t[1];
    double t0 = bench_now(), t1;

    plain_load(&p, path);
    if (plain_generate(&p, 1, t, NULL) != 1)
        die("plain: no first token");
    t1 = bench_now();
    plain_free(&p, trim);
    return t1 - t0;
}

/* ---- the plugin through a host, for the streamed first piece ------------------------------ */

static double first_piece_at;
static int pieces;

static void host_log(enum larder_log_level level, const char *backend, const char *msg)
{
    if (level <= LARDER_LOG_WARN)
        fprintf(stderr, "%s: %s\n", backend, msg);
}

static uint64_t host_rss(void) { return 0; }
static int host_cancelled(void *ctx) { (void)ctx; return 0; }
static int host_reserve(void *ctx, uint64_t bytes) { (void)ctx; (void)bytes; return 0; }

static int host_emit(void *ctx, const char *json, size_t len)
{
    (void)ctx;
    (void)json;
    (void)len;
    if (pieces++ == 0)
        first_piece_at = bench_now();
    return 0;
}

static const struct larder_host host = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR, .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .log = host_log, .rss_bytes = host_rss, .cancelled = host_cancelled,
    .reserve_request_bytes = host_reserve, .emit = host_emit};

static const struct larder_backend_ops *plugin_open(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    const struct larder_backend_ops *(*entry)(const struct larder_host *);

    if (!h)
        die("cannot open %s: %s", path, dlerror());
    *(void **)&entry = dlsym(h, "larder_backend_entry");
    if (!entry || !entry(&host))
        die("%s: no usable larder_backend_entry", path);
    return entry(&host);
}

/* Seconds from the call to the first emitted piece of a streamed greedy request. */
static double plugin_first_piece(const struct larder_backend_ops *ops, void *model, void *inst)
{
    static const char body[] =
        "{\"prompt\": \"" PROMPT "\", \"max_tokens\": 4, \"temperature\": 0}";
    struct larder_infer_request rq = {.body = body, .body_len = sizeof body - 1,
                                      .content_type = "application/json", .stream = 1};
    struct larder_infer_result res;
    char err[512];
    double t0;

    pieces = 0;
    t0 = bench_now();
    if (ops->infer(model, inst, &rq, &res, err, sizeof err) < 0 || pieces == 0)
        die("plugin stream: %s", err);
    ops->result_free(&res);
    return first_piece_at - t0;
}

/* ---- larderd -------------------------------------------------------------------------------- */

static struct bench_daemon daemon_;

static json_t *request(const char *method, const char *path, const char *body, int want)
{
    static const char *const admin[] = {"Authorization: Bearer " ADMIN, NULL};
    struct larder__http_response r = {0};
    json_t *o;

    if (larder__http_request(&daemon_.url, method, path, admin, body ? "application/json" : NULL,
                             body, body ? strlen(body) : 0, 120000, &r) < 0 ||
        r.status != want)
        die("%s %s: HTTP %d: %s", method, path, r.status, r.body ? r.body : "(no reply)");
    o = json_loads(r.body ? r.body : "", 0, NULL);
    larder__http_response_clear(&r);
    if (!o)
        die("%s %s: the reply is not JSON", method, path);
    return o;
}

/* One greedy request for max tokens: its seconds, the reply in *ret (or dropped). */
static double infer(const char *model, int max, json_t **ret)
{
    char path[128], body[512];
    double t0;
    json_t *o;

    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    snprintf(body, sizeof body,
             "{\"prompt\": \"" PROMPT "\", \"max_tokens\": %d, \"temperature\": 0}", max);
    t0 = bench_now();
    o = request("POST", path, body, 200);
    t0 = bench_now() - t0;
    if (ret)
        *ret = o;
    else
        json_decref(o);
    return t0;
}

static void unload(const char *model)
{
    char path[128];

    snprintf(path, sizeof path, "/v1/models/%s/unload", model);
    json_decref(request("POST", path, NULL, 200));
}

static void start_larderd(const char *larderd, const char *a, const char *b,
                          unsigned long long budget)
{
    char config[4096], tokens[256];
    FILE *f;

    snprintf(config, sizeof config,
             "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
             "[memory]\nbudget = %llu\nwatch_pressure = no\n"
             "[model.bench-a]\nbackend = llama\npath = %s\nctx = %d\nthreads = %d\n"
             "ttl = never\n"
             "[model.bench-b]\nbackend = llama\npath = %s\nctx = %d\nthreads = %d\n"
             "ttl = never\n",
             budget, a, CTX, threads, b, CTX, threads);
    if (bench_prepare(&daemon_, config) < 0)
        die("cannot write the config");
    snprintf(tokens, sizeof tokens, "%s/admin.tokens", daemon_.dir);
    if (!(f = fopen(tokens, "w")) || fprintf(f, "%s\n", ADMIN) < 0 || fclose(f) != 0)
        die("cannot write %s", tokens);
    if (bench_start(&daemon_, larderd) < 0)
        die("larderd did not start (log: %s)", daemon_.log);
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;

    return a < b ? -1 : a > b;
}

static double median(const double *v, int n)
{
    double s[MAX_ROUNDS];

    memcpy(s, v, (size_t)n * sizeof *v);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void quiet(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

int main(int argc, char **argv)
{
    const char *larderd = LARDERD_PATH, *model_a = BENCH_MODEL_A, *model_b = BENCH_MODEL_B;
    const char *plugin = LLAMA_PLUGIN;
    const struct larder_backend_ops *ops;
    struct larder_option opts[] = {{"path", NULL}, {"ctx", NULL}, {"threads", NULL}};
    char ctx_s[16], threads_s[16], err[512];
    unsigned long long est = 0;
    double l_tps[MAX_ROUNDS], p_tps[MAX_ROUNDS], l_cold[MAX_ROUNDS], p_cold[MAX_ROUNDS];
    double l_ttft[MAX_ROUNDS], p_ttft[MAX_ROUNDS], e_ttft[MAX_ROUNDS];
    double l_swap[MAX_ROUNDS], p_swap[MAX_ROUNDS], t_cold[MAX_ROUNDS], t_swap[MAX_ROUNDS];
    llama_token plain_toks[1024];
    int opt, n_plain = 0, n_larderd = 0, same = 1;
    struct plain p;
    void *pm, *pi;
    json_t *reply, *info;

    while ((opt = getopt(argc, argv, "t:n:r:")) != -1) {
        if (opt == 't')
            threads = atoi(optarg);
        else if (opt == 'n')
            n_tokens = atoi(optarg);
        else if (opt == 'r')
            rounds = atoi(optarg);
        else
            die("usage: bench_llm [-t THREADS] [-n TOKENS] [-r ROUNDS] [LARDERD [MODEL_A "
                "MODEL_B [PLUGIN]]]");
    }
    if (threads < 1 || n_tokens < 2 || n_tokens > 1024 || rounds < 1 || rounds > MAX_ROUNDS)
        die("threads >= 1, 2 <= tokens <= 1024, 1 <= rounds <= %d", MAX_ROUNDS);
    if (optind < argc)
        larderd = argv[optind++];
    if (optind + 1 < argc) {
        model_a = argv[optind++];
        model_b = argv[optind++];
    }
    if (optind < argc)
        plugin = argv[optind++];
    if (access(model_a, R_OK) != 0 || access(model_b, R_OK) != 0)
        die("the bench models are missing: ninja -C BUILD tools/bench-q8_0.gguf "
            "tools/bench-b-q8_0.gguf (bench/llm/run.sh builds them)");

    llama_log_set(quiet, NULL);
    ggml_backend_load_all_from_path(LLAMA_LIBDIR);
    llama_backend_init();

    /* the budget holds one model (the plugin's own estimate) but not two */
    ops = plugin_open(plugin);
    snprintf(ctx_s, sizeof ctx_s, "%d", CTX);
    snprintf(threads_s, sizeof threads_s, "%d", threads);
    opts[0].value = model_a;
    opts[1].value = ctx_s;
    opts[2].value = threads_s;
    if (ops->estimate(opts, 3, (uint64_t *)&est) < 0 || est == 0)
        die("the plugin gives no estimate for %s", model_a);
    start_larderd(larderd, model_a, model_b, est + est / 2);
    printf("llm: %s (and %s for the swap), ctx %d, %d thread(s), greedy, %d rounds; "
           "larderd %s\n", model_a, model_b, CTX, threads, rounds, larderd);

    /* warm-up: both sides load once (the engine's first mapping is nobody's cold start) */
    infer("bench-a", 1, NULL);
    plain_load(&p, model_a);

    /* tokens/s: whole requests of n_tokens, both sides */
    for (int i = 0; i < rounds; i++) {
        double t0 = bench_now(), lt;
        json_t *toks;

        n_plain = plain_generate(&p, n_tokens, plain_toks, NULL);
        p_tps[i] = n_plain / (bench_now() - t0);
        lt = infer("bench-a", n_tokens, &reply);
        toks = json_object_get(reply, "tokens");
        n_larderd = (int)json_array_size(toks);
        l_tps[i] = n_larderd / lt;
        same = same && n_larderd == n_plain;
        for (int k = 0; same && k < n_plain; k++)
            same = json_integer_value(json_array_get(toks, (size_t)k)) == plain_toks[k];
        json_decref(reply);
    }
    /* warm time to first token: a 1-token request; the plugin's first streamed piece */
    if (ops->load(opts, 3, &pm, err, sizeof err) < 0 || ops->instance_new(pm, &pi, err,
                                                                            sizeof err) < 0)
        die("plugin load: %s", err);
    plugin_first_piece(ops, pm, pi);
    for (int i = 0; i < rounds; i++) {
        llama_token t[1];

        plain_generate(&p, 1, t, &p_ttft[i]);
        l_ttft[i] = infer("bench-a", 1, NULL);
        e_ttft[i] = plugin_first_piece(ops, pm, pi);
    }
    ops->instance_free(pm, pi);
    ops->unload(pm);
    plain_free(&p, false);

    /* cold: unload, then the first request */
    for (int i = 0; i < rounds; i++) {
        unload("bench-a");
        l_cold[i] = infer("bench-a", 1, NULL);
        p_cold[i] = plain_cold(model_a, false);
        t_cold[i] = plain_cold(model_a, true);
    }
    info = request("GET", "/v1/models/bench-a", NULL, 200);

    /* swap: bench-a is loaded; each request for the other evicts it */
    infer("bench-b", 1, NULL);
    for (int i = 0; i < rounds; i++) {
        const char *to = i % 2 ? "bench-b" : "bench-a";
        const char *path = i % 2 ? model_b : model_a;

        l_swap[i] = infer(to, 1, NULL);
        for (int trim = 0; trim < 2; trim++) {
            llama_token t[1];
            double t0;

            plain_load(&p, i % 2 ? model_a : model_b); /* the plain side holds the other */
            t0 = bench_now();
            plain_free(&p, trim);
            plain_load(&p, path);
            plain_generate(&p, 1, t, NULL);
            (trim ? t_swap : p_swap)[i] = bench_now() - t0;
            plain_free(&p, trim);
        }
    }
    {
        json_t *ma = json_object_get(info, "memory");
        json_t *b = request("GET", "/v1/models/bench-b", NULL, 200);
        json_t *a2 = request("GET", "/v1/models/bench-a", NULL, 200);
        const char *state_a = json_string_value(json_object_get(info, "state"));

        printf("registry bench-a (state %s): estimate %lld bytes, measured %lld bytes "
               "(estimate / measured %.2f; the plugin's estimate %llu); last load %.1f ms "
               "(model + first instance, as larderd timed it)\n",
               state_a ? state_a : "?",
               (long long)json_integer_value(json_object_get(ma, "estimate_bytes")),
               (long long)json_integer_value(json_object_get(ma, "measured_bytes")),
               (double)json_integer_value(json_object_get(ma, "estimate_bytes")) /
                   (double)json_integer_value(json_object_get(ma, "measured_bytes")),
               est, json_number_value(json_object_get(json_object_get(info, "load_ms"), "last")));
        printf("budget %llu bytes (1.5 x the estimate): one model fits, two do not; "
               "after the swaps: bench-a %lld loads, %lld evictions; bench-b %lld loads, %lld "
               "evictions\n",
               est + est / 2, (long long)json_integer_value(json_object_get(a2, "loads")),
               (long long)json_integer_value(json_object_get(a2, "evictions")),
               (long long)json_integer_value(json_object_get(b, "loads")),
               (long long)json_integer_value(json_object_get(b, "evictions")));
        json_decref(a2);
        json_decref(b);
        json_decref(info);
    }
    bench_stop(&daemon_);

    {
        double lt = median(l_tps, rounds), pt = median(p_tps, rounds);
        double lc = median(l_cold, rounds), pc = median(p_cold, rounds);
        double lf = median(l_ttft, rounds), pf = median(p_ttft, rounds);
        double ef = median(e_ttft, rounds);
        double ls = median(l_swap, rounds), ps = median(p_swap, rounds);
        double tc = median(t_cold, rounds), ts = median(t_swap, rounds);

        printf("generation: larderd %.1f tokens/s, plain %.1f tokens/s (%d tokens, greedy "
               "tokens %s)\n", lt, pt, n_plain, same ? "identical" : "DIFFER");
        printf("ratio tokens_per_s larderd/plain: %.3f   (target >= 0.95; POST "
               "/v1/models/NAME/infer, the whole request)\n", lt / pt);
        printf("cold: larderd %.1f ms (unload, then load + first token over HTTP), plain "
               "%.1f ms (load + context + first token)\n", lc * 1e3, pc * 1e3);
        printf("ratio cold larderd/plain: %.3f   (target <= 1.10)\n", lc / pc);
        printf("  plain with malloc_trim(0) after each unload, as larder does: %.1f ms; "
               "larderd/that %.3f\n", tc * 1e3, lc / tc);
        printf("warm first token: larderd %.2f ms (1-token request over HTTP), plugin "
               "stream %.2f ms (first piece through the host's emit), plain %.2f ms\n",
               lf * 1e3, ef * 1e3, pf * 1e3);
        printf("ratio ttft_overhead_ms larderd-plain: %.2f   (target <= 1 ms; HTTP request, "
               "a whole 1-token reply, not a streamed first piece)\n", (lf - pf) * 1e3);
        printf("ratio ttft_overhead_ms emit-plain: %.2f   (target <= 1 ms; the plugin via "
               "a host emit, in process)\n", (ef - pf) * 1e3);
        printf("swap: larderd %.1f ms per request that evicts the other model and loads "
               "its own, plain %.1f ms (unload + load + first token)\n", ls * 1e3, ps * 1e3);
        printf("ratio swap larderd/plain: %.3f   (target <= 1.10)\n", ls / ps);
        printf("  plain with malloc_trim(0) after the unload, as larder does: %.1f ms; "
               "larderd/that %.3f\n", ts * 1e3, ls / ts);
        printf("summary: tok/s %.2fx (>=0.95); cold %.2fx (<=1.10); TTFT +%.2f ms HTTP, "
               "+%.2f emit (<=1); swap %.2fx (<=1.10)%s\n",
               lt / pt, lc / pc, (lf - pf) * 1e3, (ef - pf) * 1e3, ls / ps,
               same ? "" : "; TOKENS DIFFER");
        return same ? 0 : 1;
    }
}
