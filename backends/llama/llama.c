/* larder backend: GGUF language models, embedders and rerankers through llama.cpp's C API
 * (libllama and ggml as the npm package @node-llama-cpp ships them).
 *
 * Model and instances: the model is one llama_model (the weights, shared by every request);
 * each instance is one llama_context with its own KV cache, so `instances = N` runs N
 * sequences at once. docs/backends.md describes the options and the request contract;
 * in short, one JSON body of:
 *   {"prompt": "text" | [token ids]} or {"messages": [{"role", "content"}...]}  generation
 *   {"input": "text" | ["a", "b"]}                                   embeddings
 *   {"query": "q", "documents": ["d1", ...]}                         rerank scores
 *   {"describe": true}                                               the model's facts
 *
 * Process-wide, once, before the first model: llama.cpp's log goes to the host's log (its
 * progress dots dropped), then ggml's backends are loaded from the directory libllama was
 * loaded from (CPU variants, and the GPU backend of a GPU build), then llama_backend_init.
 */
#include <larder/backend.h>

#include "../common/plugin-util.h"
#include "gguf-info.h"

#include <ggml-backend.h>
#include <llama.h>

#include <dlfcn.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef LARDER_LLAMA_NAME
#define LARDER_LLAMA_NAME "llama"
#endif
#define BACKEND_NAME LARDER_LLAMA_NAME

#define DEFAULT_CTX 2048
#define MAX_BATCH 512
#define DEFAULT_MAX_TOKENS 256
#define MAX_STOPS 16
/* Compute buffers and outputs beyond weights and KV cache: a floor for the graph's small
 * tensors, plus what scales with the batch (checked against measured loads, see
 * docs/backends.md). */
#define COMPUTE_FLOOR (256ULL << 10)
/* llama.cpp rounds a context up to a multiple of this many cells. */
#define CTX_PAD 256

enum kind { KIND_GENERATE, KIND_EMBED, KIND_RERANK };

/* Bytes of the buffers llama.cpp reports allocating ("CPU KV buffer size = 0.50 MiB"): in
 * host memory (CPU*, *_Host) and on devices. */
struct buffers {
    uint64_t host, dev;
};

struct config {
    char *path;
    uint32_t ctx;
    int threads;
    int gpu_layers;            /* -1: auto */
    int gpu_device;            /* index among the GPU devices ggml sees */
    unsigned long long gpu_budget; /* 0: the device's free memory */
    bool embedding;
    enum llama_pooling_type pooling;
    bool mmap;
    /* generation defaults */
    double temperature, top_p;
    int top_k;
    uint32_t seed;
    int max_tokens;
    char *stop[MAX_STOPS];
    size_t n_stop;
};

struct model {
    struct config cfg;
    enum kind kind;
    struct llama_model *model;
    const struct llama_vocab *vocab;
    char *chat_template;       /* NULL: the plain fallback */
    int gpu_layers;            /* layers llama.cpp reports offloaded */
    int n_layers_total;        /* layers it counts (blocks + output) */
    char gpu_name[64];
    uint64_t gpu_bytes;        /* planned device bytes: offloaded weights + their KV */
    uint64_t kv_bytes;         /* per instance */
    uint64_t gpu_margin;       /* compute margin the layer fitting keeps free on the GPU */
    struct buffers weights;    /* the model buffers llama.cpp allocated */
    _Atomic uint64_t inst_host, inst_dev; /* buffers of the latest instance */
};

struct instance {
    struct llama_context *ctx;
};

static const struct larder_host *g_host;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static const char *const option_keys[] = {
    "path", "ctx", "threads", "gpu_layers", "gpu_device", "gpu_budget", "embedding",
    "pooling", "mmap", "temperature", "top_p", "top_k", "seed", "max_tokens", "stop", NULL};

/* ---- llama.cpp's log ------------------------------------------------------------------ */

/* A line llama.cpp writes in pieces, per thread; and what a load on this thread learns from
 * it (llama.cpp reports offloaded layers only there). */
static _Thread_local char t_line[512];
static _Thread_local size_t t_line_len;
static _Thread_local enum ggml_log_level t_line_level;
static _Thread_local struct model *t_loading;
static _Thread_local struct buffers *t_buffers;
static _Thread_local char t_last_error[256];

/* "load_tensors:   CPU_Mapped model buffer size =     0.47 MiB": adds the size (rounded
 * up by the print's last digit) to the host or device total. */
static void count_buffer(const char *line, struct buffers *b)
{
    const char *at = strstr(line, " buffer size = "), *name, *end;
    double mib;

    if (!at || sscanf(at, " buffer size = %lf MiB", &mib) != 1 || mib < 0)
        return;
    if (!(name = strchr(line, ':')))
        return;
    name += strspn(name + 1, " ") + 1;
    end = name + strcspn(name, " ");
    uint64_t bytes = (uint64_t)((mib + 0.005) * 1048576.0);
    if (strncmp(name, "CPU", 3) == 0 || (end - name > 5 && memcmp(end - 5, "_Host", 5) == 0))
        b->host += bytes;
    else
        b->dev += bytes;
}

static void line_done(void)
{
    enum larder_log_level lv;
    int a = 0, b = 0;

    while (t_line_len && (t_line[t_line_len - 1] == '\n' || t_line[t_line_len - 1] == ' '))
        t_line_len--;
    t_line[t_line_len] = '\0';
    if (t_line_len == 0 || strspn(t_line, ".") == t_line_len) {
        t_line_len = 0;
        return;
    }
    if (t_loading && strstr(t_line, "offloaded ") &&
        sscanf(strstr(t_line, "offloaded "), "offloaded %d/%d layers", &a, &b) == 2) {
        t_loading->gpu_layers = a;
        t_loading->n_layers_total = b;
    }
    if (t_buffers)
        count_buffer(t_line, t_buffers);
    switch (t_line_level) {
    case GGML_LOG_LEVEL_ERROR:
        lv = LARDER_LOG_WARN;
        snprintf(t_last_error, sizeof t_last_error, "%s", t_line);
        break;
    case GGML_LOG_LEVEL_WARN: lv = LARDER_LOG_INFO; break;
    default: lv = LARDER_LOG_DEBUG; break;
    }
    larder_pu_say(g_host, BACKEND_NAME, lv, "llama.cpp: %s", t_line);
    t_line_len = 0;
}

static void llama_log(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (level != GGML_LOG_LEVEL_CONT) {
        if (t_line_len)
            line_done();
        t_line_level = level;
    }
    for (; *text; text++) {
        if (*text == '\n') {
            line_done();
            continue;
        }
        if (t_line_len < sizeof t_line - 1)
            t_line[t_line_len++] = *text;
    }
}

static bool quiet_progress(float progress, void *ud)
{
    (void)progress;
    (void)ud;
    return true;
}

static void global_setup(void)
{
    Dl_info info;
    char dir[PATH_MAX];
    void (*fn)(void) = llama_backend_init;
    void *addr;

    memcpy(&addr, &fn, sizeof addr); /* where libllama was loaded from */
    llama_log_set(llama_log, NULL);
    if (dladdr(addr, &info) && info.dli_fname) {
        snprintf(dir, sizeof dir, "%s", info.dli_fname);
        char *slash = strrchr(dir, '/');
        if (slash) {
            *slash = '\0';
            ggml_backend_load_all_from_path(dir);
        }
    }
    if (ggml_backend_dev_count() == 0)
        ggml_backend_load_all();
    llama_backend_init();
}

/* ---- configuration ---------------------------------------------------------------------- */

static void config_clear(struct config *c)
{
    free(c->path);
    for (size_t i = 0; i < c->n_stop; i++)
        free(c->stop[i]);
    memset(c, 0, sizeof *c);
}

static bool parse_yes_no(const char *s, bool *ret)
{
    if (strcmp(s, "yes") == 0 || strcmp(s, "true") == 0 || strcmp(s, "1") == 0 ||
        strcmp(s, "on") == 0)
        *ret = true;
    else if (strcmp(s, "no") == 0 || strcmp(s, "false") == 0 || strcmp(s, "0") == 0 ||
             strcmp(s, "off") == 0)
        *ret = false;
    else
        return false;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *ret)
{
    char *end;
    double v;

    if (!s || !*s)
        return false;
    errno = 0;
    v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi))
        return false;
    *ret = v;
    return true;
}

static bool parse_pooling(const char *s, enum llama_pooling_type *ret)
{
    static const struct {
        const char *name;
        enum llama_pooling_type type;
    } names[] = {{"none", LLAMA_POOLING_TYPE_NONE}, {"mean", LLAMA_POOLING_TYPE_MEAN},
                 {"cls", LLAMA_POOLING_TYPE_CLS},   {"last", LLAMA_POOLING_TYPE_LAST},
                 {"rank", LLAMA_POOLING_TYPE_RANK}};

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) {
            *ret = names[i].type;
            return true;
        }
    return false;
}

/* stop: a JSON array of strings, or one plain string. */
static int parse_stop_list(json_t *arr, char **out, size_t *n, char *err, size_t errlen)
{
    size_t i;
    json_t *v;

    if (json_array_size(arr) > MAX_STOPS)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "stop: at most %d strings",
                              MAX_STOPS);
    json_array_foreach(arr, i, v) {
        if (!json_is_string(v) || json_string_length(v) == 0)
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                                  "stop: expected an array of non-empty strings");
    }
    json_array_foreach(arr, i, v) {
        out[i] = strdup(json_string_value(v));
        if (!out[i])
            return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
        *n = i + 1;
    }
    return 0;
}

static int default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    n = n > 1 ? n / 2 : 1;
    return (int)(n > 8 ? 8 : n);
}

#define OPT_FAIL(...) larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, __VA_ARGS__)

/* Fills cfg from opts; reads no file. */
static int config_parse(const struct larder_option *opts, size_t n, struct config *cfg,
                        char *err, size_t errlen)
{
    const char *v;
    unsigned long long u;
    int rc;

    memset(cfg, 0, sizeof *cfg);
    *cfg = (struct config){.ctx = DEFAULT_CTX, .threads = default_threads(), .gpu_layers = -1,
                           .pooling = LLAMA_POOLING_TYPE_UNSPECIFIED, .mmap = true,
                           .temperature = 0.8, .top_p = 0.95, .top_k = 40,
                           .seed = LLAMA_DEFAULT_SEED, .max_tokens = DEFAULT_MAX_TOKENS};
    if ((rc = larder_pu_check_keys(opts, n, option_keys, err, errlen)) < 0)
        return rc;
    v = larder_pu_opt_get(opts, n, "path");
    if (!v || !*v)
        return OPT_FAIL("path: the .gguf file is required");
    if (!(cfg->path = strdup(v)))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    if ((v = larder_pu_opt_get(opts, n, "ctx"))) {
        if (!larder_pu_parse_ull(v, 16, 1u << 20, &u))
            return OPT_FAIL("ctx '%s': expected a context length of 16 to 1048576 tokens", v);
        cfg->ctx = (uint32_t)u;
    }
    if ((v = larder_pu_opt_get(opts, n, "threads"))) {
        if (!larder_pu_parse_ull(v, 1, 512, &u))
            return OPT_FAIL("threads '%s': expected 1 to 512", v);
        cfg->threads = (int)u;
    }
    if ((v = larder_pu_opt_get(opts, n, "gpu_layers")) && strcmp(v, "auto") != 0) {
        if (!larder_pu_parse_ull(v, 0, 100000, &u))
            return OPT_FAIL("gpu_layers '%s': expected auto or a number of layers", v);
        cfg->gpu_layers = (int)u;
    }
    if ((v = larder_pu_opt_get(opts, n, "gpu_device"))) {
        if (!larder_pu_parse_ull(v, 0, 63, &u))
            return OPT_FAIL("gpu_device '%s': expected a device index", v);
        cfg->gpu_device = (int)u;
    }
    if ((v = larder_pu_opt_get(opts, n, "gpu_budget")) &&
        !larder_pu_parse_bytes(v, &cfg->gpu_budget))
        return OPT_FAIL("gpu_budget '%s': not a size (\"6GiB\", bytes)", v);
    if ((v = larder_pu_opt_get(opts, n, "embedding")) && !parse_yes_no(v, &cfg->embedding))
        return OPT_FAIL("embedding '%s': expected yes or no", v);
    if ((v = larder_pu_opt_get(opts, n, "pooling")) && !parse_pooling(v, &cfg->pooling))
        return OPT_FAIL("pooling '%s': expected mean, cls, last, rank or none", v);
    if (cfg->pooling != LLAMA_POOLING_TYPE_UNSPECIFIED && !cfg->embedding &&
        cfg->pooling != LLAMA_POOLING_TYPE_RANK)
        return OPT_FAIL("pooling needs embedding = yes (or pooling = rank for a reranker)");
    if ((v = larder_pu_opt_get(opts, n, "mmap")) && !parse_yes_no(v, &cfg->mmap))
        return OPT_FAIL("mmap '%s': expected yes or no", v);
    if ((v = larder_pu_opt_get(opts, n, "temperature")) &&
        !parse_double(v, 0.0, 100.0, &cfg->temperature))
        return OPT_FAIL("temperature '%s': expected a number from 0 (greedy)", v);
    if ((v = larder_pu_opt_get(opts, n, "top_p")) && !parse_double(v, 0.0, 1.0, &cfg->top_p))
        return OPT_FAIL("top_p '%s': expected 0 to 1", v);
    if ((v = larder_pu_opt_get(opts, n, "top_k"))) {
        if (!larder_pu_parse_ull(v, 0, 1u << 20, &u))
            return OPT_FAIL("top_k '%s': expected a count (0: off)", v);
        cfg->top_k = (int)u;
    }
    if ((v = larder_pu_opt_get(opts, n, "seed"))) {
        if (!larder_pu_parse_ull(v, 0, UINT32_MAX, &u))
            return OPT_FAIL("seed '%s': expected 0 to 4294967295", v);
        cfg->seed = (uint32_t)u;
    }
    if ((v = larder_pu_opt_get(opts, n, "max_tokens"))) {
        if (!larder_pu_parse_ull(v, 1, 1u << 20, &u))
            return OPT_FAIL("max_tokens '%s': expected a positive count", v);
        cfg->max_tokens = (int)u;
    }
    if ((v = larder_pu_opt_get(opts, n, "stop"))) {
        json_t *j = json_loads(v, JSON_DECODE_ANY, NULL);
        int r;

        if (!j)
            j = json_pack("[s]", v);
        else if (json_is_string(j)) {
            json_t *a = json_pack("[O]", j);
            json_decref(j);
            j = a;
        }
        r = json_is_array(j) ? parse_stop_list(j, cfg->stop, &cfg->n_stop, err, errlen)
                             : LARDER_BACKEND_EINPUT;
        json_decref(j);
        if (r < 0)
            return OPT_FAIL("stop '%s': expected a string or a JSON array of strings", v);
    }
    return 0;
}

static enum kind config_kind(const struct config *c)
{
    if (c->pooling == LLAMA_POOLING_TYPE_RANK)
        return KIND_RERANK;
    return c->embedding ? KIND_EMBED : KIND_GENERATE;
}

/* Batch sizes: generation decodes prompts in batches of up to 512; an embedder takes each
 * input in one batch, so its batch is the whole context. */
static uint32_t batch_size(const struct config *c)
{
    if (config_kind(c) != KIND_GENERATE)
        return c->ctx;
    return c->ctx < MAX_BATCH ? c->ctx : MAX_BATCH;
}

/* The context llama.cpp makes of ctx: rounded up to whole blocks of cells. */
static uint32_t padded_ctx(const struct config *c)
{
    return (c->ctx + CTX_PAD - 1) / CTX_PAD * CTX_PAD;
}

/* One instance's compute and output buffers, as llama.cpp sizes them for its worst-case
 * batch of b = batch_size tokens over n = padded_ctx cells: the F16 attention mask
 * (b x n x 2), the activations of a layer (b x (6 n_embd + 2 n_ff) x 4), for a generator
 * the logits of the batch (b x n_vocab x 4), the output buffer ((n_vocab + n_embd) x 4),
 * and a floor. With flash attention (which llama.cpp turns on for the CPU) that is all;
 * a device without it also materializes the F32 attention scores (b x n x n_head x 4),
 * which the GPU's margin counts since its support is not known before the load.
 * llama.cpp's allocator reuses memory between these, so the sum is a bound from above. */
static uint64_t compute_margin(const struct config *c, const struct larder_gguf_info *gi,
                               bool scores)
{
    uint64_t b = batch_size(c), n = padded_ctx(c);
    uint64_t mask = b * n * 2;
    uint64_t act = b * ((uint64_t)gi->n_embd * 6 + (uint64_t)gi->n_ff * 2) * 4;
    uint64_t logits = config_kind(c) == KIND_GENERATE ? b * gi->n_vocab * 4 : 0;
    uint64_t out = (gi->n_vocab + gi->n_embd) * 4;
    uint64_t kq = scores ? b * n * gi->n_head * 4 : 0;

    return COMPUTE_FLOOR + mask + act + logits + out + kq;
}

/* ---- GPU layer fitting -------------------------------------------------------------------- */

struct gpu_plan {
    ggml_backend_dev_t dev; /* NULL: no GPU */
    int layers;             /* n_gpu_layers to ask for */
    uint64_t bytes;         /* device bytes those layers take (weights + KV) */
    uint64_t budget;
};

static ggml_backend_dev_t find_gpu(int index)
{
    int seen = 0;

    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        enum ggml_backend_dev_type t = ggml_backend_dev_type(d);

        if (t != GGML_BACKEND_DEVICE_TYPE_GPU && t != GGML_BACKEND_DEVICE_TYPE_IGPU)
            continue;
        if (seen++ == index)
            return d;
    }
    return NULL;
}

/* llama.cpp offloads the last n layers, then (n = blocks + 1) the output layer. */
static void plan_gpu(const struct config *c, const struct larder_gguf_info *gi,
                     struct gpu_plan *p)
{
    uint64_t kv = larder_gguf_kv_layer_bytes(gi, padded_ctx(c));
    uint64_t used;
    size_t free_b = 0, total_b = 0;

    memset(p, 0, sizeof *p);
    if (c->gpu_layers == 0)
        return;
    pthread_once(&g_once, global_setup);
    p->dev = find_gpu(c->gpu_device);
    if (!p->dev)
        return;
    ggml_backend_dev_memory(p->dev, &free_b, &total_b);
    p->budget = c->gpu_budget ? c->gpu_budget : free_b;
    used = compute_margin(c, gi, true);
    for (int i = (int)gi->n_layer - 1; i >= -1; i--) {
        uint64_t cost = i >= 0 ? gi->layer_bytes[i] + kv : gi->output_bytes;
        bool wanted = c->gpu_layers < 0 ? used + cost <= p->budget : p->layers < c->gpu_layers;

        if (!wanted)
            break;
        used += cost;
        p->bytes += cost;
        p->layers++;
    }
}

/* ---- operations ------------------------------------------------------------------------- */

static int llm_check(const struct larder_option *opts, size_t n, char *err, size_t errlen)
{
    struct config cfg;
    struct larder_gguf_info gi;
    int rc = config_parse(opts, n, &cfg, err, errlen);

    if (rc == 0 && (rc = larder_gguf_info_read(cfg.path, &gi, err, errlen)) == 0)
        larder_gguf_info_clear(&gi);
    config_clear(&cfg);
    return rc;
}

/* Host bytes of one model and one instance: the weights not planned on the GPU, the KV
 * cache of the layers kept on the CPU, and the compute margin. */
static int llm_estimate(const struct larder_option *opts, size_t n, uint64_t *ret_bytes)
{
    struct config cfg;
    struct larder_gguf_info gi;
    struct gpu_plan plan;
    int rc = config_parse(opts, n, &cfg, NULL, 0);

    if (rc == 0 && (rc = larder_gguf_info_read(cfg.path, &gi, NULL, 0)) == 0) {
        uint64_t kv = larder_gguf_kv_layer_bytes(&gi, padded_ctx(&cfg)) * gi.n_layer;

        plan_gpu(&cfg, &gi, &plan);
        *ret_bytes = gi.weight_bytes + kv + compute_margin(&cfg, &gi, false);
        *ret_bytes = *ret_bytes > plan.bytes ? *ret_bytes - plan.bytes : 0;
        larder_gguf_info_clear(&gi);
    }
    config_clear(&cfg);
    return rc;
}

static void model_free(struct model *m)
{
    if (!m)
        return;
    if (m->model)
        llama_model_free(m->model);
    free(m->chat_template);
    config_clear(&m->cfg);
    free(m);
}

static int llm_load(const struct larder_option *opts, size_t n, void **ret_model, char *err,
                    size_t errlen)
{
    struct model *m = calloc(1, sizeof *m);
    struct larder_gguf_info gi;
    struct gpu_plan plan;
    struct llama_model_params mp;
    ggml_backend_dev_t devs[2] = {NULL, NULL};
    const char *tmpl;
    int rc;

    if (!m)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    if ((rc = config_parse(opts, n, &m->cfg, err, errlen)) < 0 ||
        (rc = larder_gguf_info_read(m->cfg.path, &gi, err, errlen)) < 0) {
        model_free(m);
        return rc;
    }
    pthread_once(&g_once, global_setup);
    m->kind = config_kind(&m->cfg);
    plan_gpu(&m->cfg, &gi, &plan);
    m->kv_bytes = larder_gguf_kv_layer_bytes(&gi, padded_ctx(&m->cfg)) * gi.n_layer;
    m->gpu_margin = compute_margin(&m->cfg, &gi, true);
    larder_gguf_info_clear(&gi);

    mp = llama_model_default_params();
    mp.load_mode = m->cfg.mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
    mp.progress_callback = quiet_progress;
    mp.n_gpu_layers = plan.layers;
    if (plan.dev) {
        devs[0] = plan.dev;
        mp.devices = devs;
        mp.split_mode = LLAMA_SPLIT_MODE_NONE;
        mp.main_gpu = 0;
        snprintf(m->gpu_name, sizeof m->gpu_name, "%s", ggml_backend_dev_name(plan.dev));
    } else {
        static ggml_backend_dev_t none[1] = {NULL};
        mp.devices = none; /* no GPU: every layer on the CPU */
    }
    t_loading = m;
    t_buffers = &m->weights;
    t_last_error[0] = '\0';
    m->model = llama_model_load_from_file(m->cfg.path, mp);
    t_loading = NULL;
    t_buffers = NULL;
    if (!m->model) {
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "llama.cpp cannot load %s%s%s",
                            m->cfg.path, t_last_error[0] ? ": " : "", t_last_error);
        model_free(m);
        return rc;
    }
    m->vocab = llama_model_get_vocab(m->model);
    m->gpu_bytes = m->gpu_layers > 0 ? plan.bytes : 0;
    if (m->kind == KIND_RERANK && llama_model_n_cls_out(m->model) == 0) {
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                            "pooling = rank: %s has no classifier head (cls.output)",
                            m->cfg.path);
        model_free(m);
        return rc;
    }
    tmpl = llama_model_chat_template(m->model, NULL);
    if (tmpl && !(m->chat_template = strdup(tmpl))) {
        model_free(m);
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    }
    larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_INFO,
                  "loaded %s: %llu bytes of weights, %d/%d layers on %s (%llu device bytes "
                  "planned, budget %llu)",
                  m->cfg.path, (unsigned long long)llama_model_size(m->model), m->gpu_layers,
                  m->n_layers_total ? m->n_layers_total : llama_model_n_layer(m->model) + 1,
                  plan.dev ? m->gpu_name : "no GPU", (unsigned long long)m->gpu_bytes,
                  (unsigned long long)plan.budget);
    *ret_model = m;
    return 0;
}

static void llm_unload(void *model)
{
    model_free(model);
}

/* Host bytes of the model and its latest instance, as llama.cpp allocated them (its
 * buffer reports); the weights less the planned device bytes when it reported none. */
static int llm_measure(void *model, uint64_t *ret_bytes)
{
    struct model *m = model;
    uint64_t w = llama_model_size(m->model);

    if (m->weights.host || m->weights.dev)
        w = m->weights.host;
    else
        w = w > m->gpu_bytes ? w - m->gpu_bytes : 0;
    *ret_bytes = w + atomic_load(&m->inst_host);
    return 0;
}

static int llm_instance_new(void *model, void **ret_instance, char *err, size_t errlen)
{
    struct model *m = model;
    struct instance *in = calloc(1, sizeof *in);
    struct llama_context_params cp = llama_context_default_params();
    struct buffers bufs = {0, 0};

    if (!in)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    cp.n_ctx = m->cfg.ctx;
    cp.n_batch = cp.n_ubatch = batch_size(&m->cfg);
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = m->cfg.threads;
    cp.no_perf = true;
    if (m->kind != KIND_GENERATE) {
        cp.embeddings = true;
        cp.pooling_type = m->cfg.pooling;
    }
    t_last_error[0] = '\0';
    t_buffers = &bufs;
    in->ctx = llama_init_from_model(m->model, cp);
    t_buffers = NULL;
    if (in->ctx) {
        atomic_store(&m->inst_host, bufs.host);
        atomic_store(&m->inst_dev, bufs.dev);
    }
    if (!in->ctx) {
        free(in);
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM,
                              "llama.cpp cannot create a context of %u tokens%s%s", m->cfg.ctx,
                              t_last_error[0] ? ": " : "", t_last_error);
    }
    *ret_instance = in;
    return 0;
}

static void llm_instance_free(void *model, void *instance)
{
    struct instance *in = instance;

    (void)model;
    if (!in)
        return;
    llama_free(in->ctx);
    free(in);
}

/* ---- requests ------------------------------------------------------------------------------ */

struct call {
    struct model *m;
    struct llama_context *ctx;
    const struct larder_infer_request *req;
    char *err;
    size_t errlen;
};

#define IN_FAIL(c, ...) larder_pu_fail((c)->err, (c)->errlen, LARDER_BACKEND_EINPUT, __VA_ARGS__)
/* An input longer than the context: ETOOBIG, for a host that knows it (minor >= 1). */
#define CTX_FAIL(c, ...)                                                                   \
    larder_pu_fail((c)->err, (c)->errlen,                                                  \
                   g_host && g_host->abi_minor >= 1 ? LARDER_BACKEND_ETOOBIG               \
                                                    : LARDER_BACKEND_EINPUT,               \
                   __VA_ARGS__)

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Tokenizes text (with the vocabulary's BOS when add_special, special tokens parsed). */
static int tokenize(struct call *c, const char *text, size_t len, bool add_special,
                    llama_token **ret, int *ret_n)
{
    int n;
    llama_token *t;

    if (len > INT32_MAX / 2)
        return IN_FAIL(c, "text too long");
    n = -llama_tokenize(c->m->vocab, text, (int32_t)len, NULL, 0, add_special, true);
    if (n < 0)
        n = 0;
    t = malloc(((size_t)n + 2) * sizeof *t);
    if (!t)
        return larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    if (n > 0 && llama_tokenize(c->m->vocab, text, (int32_t)len, t, n, add_special, true) != n) {
        free(t);
        return larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_EINTERNAL,
                              "llama.cpp could not tokenize the text");
    }
    *ret = t;
    *ret_n = n;
    return 0;
}

static int decode_failed(struct call *c, int r)
{
    return larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_EINTERNAL, "llama_decode failed (%d)",
                          r);
}

static int set_result(struct larder_infer_result *res, json_t *o, char *err, size_t errlen)
{
    res->json = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!res->json)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    return 0;
}

/* -- text as it is generated: bytes to valid UTF-8, stop strings, streamed pieces -- */

struct textbuf {
    char *s;
    size_t len, cap;
    unsigned char pend[4]; /* an incomplete UTF-8 sequence at the end of the bytes so far */
    size_t npend;
    size_t sent;           /* bytes of s already streamed */
};

static bool tb_put(struct textbuf *t, const char *p, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        char *s;

        while (cap < t->len + n + 1)
            cap *= 2;
        if (!(s = realloc(t->s, cap)))
            return false;
        t->s = s;
        t->cap = cap;
    }
    memcpy(t->s + t->len, p, n);
    t->len += n;
    t->s[t->len] = '\0';
    return true;
}

/* The length of the valid UTF-8 sequence at p (avail bytes), 0 when invalid, or -1 when
 * the bytes so far are a valid start of a longer one. */
static int utf8_seq(const unsigned char *p, size_t avail)
{
    unsigned char b = p[0];
    int len;
    unsigned char lo = 0x80, hi = 0xbf;

    if (b < 0x80)
        return 1;
    if (b >= 0xc2 && b <= 0xdf)
        len = 2;
    else if (b >= 0xe0 && b <= 0xef) {
        len = 3;
        lo = b == 0xe0 ? 0xa0 : 0x80;
        hi = b == 0xed ? 0x9f : 0xbf;
    } else if (b >= 0xf0 && b <= 0xf4) {
        len = 4;
        lo = b == 0xf0 ? 0x90 : 0x80;
        hi = b == 0xf4 ? 0x8f : 0xbf;
    } else
        return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= avail)
            return -1;
        if (p[i] < (i == 1 ? lo : 0x80) || p[i] > (i == 1 ? hi : 0xbf))
            return 0;
    }
    return len;
}

#define REPLACEMENT "\xef\xbf\xbd"

/* Appends bytes, keeping s valid UTF-8: invalid bytes become U+FFFD, an incomplete
 * sequence at the end waits for the next bytes (flush: is replaced). */
static bool tb_feed(struct textbuf *t, const char *bytes, size_t n, bool flush)
{
    unsigned char work[4 + 256];
    size_t w = 0, i = 0;

    if (n > 256)
        return tb_feed(t, bytes, 256, false) && tb_feed(t, bytes + 256, n - 256, flush);
    memcpy(work, t->pend, t->npend);
    w = t->npend;
    memcpy(work + w, bytes, n);
    w += n;
    t->npend = 0;
    while (i < w) {
        int len = utf8_seq(work + i, w - i);

        if (len < 0 && !flush) {
            memcpy(t->pend, work + i, w - i);
            t->npend = w - i;
            break;
        }
        if (len <= 0) {
            if (!tb_put(t, REPLACEMENT, 3))
                return false;
            i++;
            continue;
        }
        if (!tb_put(t, (const char *)work + i, (size_t)len))
            return false;
        i += (size_t)len;
    }
    return true;
}

/* The first stop string in s (searching from `from`): its offset, or -1. */
static long find_stop(const struct textbuf *t, char *const *stop, size_t n_stop, size_t from)
{
    long best = -1;

    for (size_t k = 0; k < n_stop; k++) {
        const char *hit = strstr(t->s + from, stop[k]);

        if (hit && (best < 0 || hit - t->s < best))
            best = hit - t->s;
    }
    return best;
}

/* Bytes at the end of s that could begin a stop string: held back from the stream. */
static size_t stop_prefix_len(const struct textbuf *t, char *const *stop, size_t n_stop)
{
    size_t held = 0;

    for (size_t k = 0; k < n_stop; k++) {
        size_t sl = strlen(stop[k]);

        for (size_t l = sl - 1; l > held; l--)
            if (l <= t->len && memcmp(t->s + t->len - l, stop[k], l) == 0) {
                held = l;
                break;
            }
    }
    return held;
}

/* Streams s[sent..upto) as one piece (with the token that produced it, or none: -1). */
static int emit_piece(struct call *c, struct textbuf *t, size_t upto, llama_token tok)
{
    json_t *o;
    char *s;
    int r;

    if (upto < t->sent)
        upto = t->sent;
    if (tok < 0 && upto == t->sent)
        return 0;
    o = json_object();
    json_object_set_new(o, "text", json_stringn(t->s + t->sent, upto - t->sent));
    if (tok >= 0)
        json_object_set_new(o, "token", json_integer(tok));
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    r = g_host->emit(c->req->host_ctx, s, strlen(s));
    free(s);
    if (r < 0)
        return larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ECANCELED,
                              "the stream's receiver has gone");
    t->sent = upto;
    return 0;
}

/* -- generation -- */

struct gen_params {
    int max_tokens, top_k;
    double temperature, top_p;
    uint32_t seed;
    char *stop[MAX_STOPS];
    size_t n_stop;
    bool own_stop; /* stop strings are this request's (freed), else the config's */
};

static int read_gen_params(struct call *c, json_t *body, struct gen_params *g)
{
    const struct config *cfg = &c->m->cfg;
    json_t *v;

    *g = (struct gen_params){.max_tokens = cfg->max_tokens, .top_k = cfg->top_k,
                             .temperature = cfg->temperature, .top_p = cfg->top_p,
                             .seed = cfg->seed, .n_stop = cfg->n_stop};
    memcpy(g->stop, cfg->stop, sizeof g->stop);
    if ((v = json_object_get(body, "max_tokens")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > (1 << 20))
            return IN_FAIL(c, "max_tokens: expected a positive integer");
        g->max_tokens = (int)json_integer_value(v);
    }
    if ((v = json_object_get(body, "temperature")) && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100)
            return IN_FAIL(c, "temperature: expected a number from 0 (greedy)");
        g->temperature = json_number_value(v);
    }
    if ((v = json_object_get(body, "top_p")) && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1)
            return IN_FAIL(c, "top_p: expected a number from 0 to 1");
        g->top_p = json_number_value(v);
    }
    if ((v = json_object_get(body, "top_k")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > (1 << 20))
            return IN_FAIL(c, "top_k: expected a count (0: off)");
        g->top_k = (int)json_integer_value(v);
    }
    if ((v = json_object_get(body, "seed")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > (json_int_t)UINT32_MAX)
            return IN_FAIL(c, "seed: expected an integer from 0 to 4294967295");
        g->seed = (uint32_t)json_integer_value(v);
    }
    if ((v = json_object_get(body, "stop")) && !json_is_null(v)) {
        json_t *arr = json_is_string(v) ? json_pack("[O]", v) : json_incref(v);
        int r;

        g->n_stop = 0;
        g->own_stop = true;
        r = json_is_array(arr) ? parse_stop_list(arr, g->stop, &g->n_stop, c->err, c->errlen)
                               : IN_FAIL(c, "stop: expected an array of strings");
        json_decref(arr);
        return r;
    }
    return 0;
}

static void gen_params_clear(struct gen_params *g)
{
    if (g->own_stop)
        for (size_t i = 0; i < g->n_stop; i++)
            free(g->stop[i]);
    g->n_stop = 0;
}

/* The prompt text of a messages array: the model's chat template, or when it has none (or
 * llama.cpp does not know it) the plain form "role: content\n" per message, then
 * "assistant:". */
static int apply_messages(struct call *c, json_t *msgs, char **ret)
{
    size_t n = json_array_size(msgs), total = 64, i;
    struct llama_chat_message *chat;
    json_t *msg;
    char *buf = NULL;
    int32_t len = -1;

    if (!json_is_array(msgs) || n == 0)
        return IN_FAIL(c, "messages: expected a non-empty array of {\"role\", \"content\"}");
    chat = calloc(n, sizeof *chat);
    if (!chat)
        return larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    json_array_foreach(msgs, i, msg) {
        const char *role = json_string_value(json_object_get(msg, "role"));
        const char *content = json_string_value(json_object_get(msg, "content"));

        if (!json_is_object(msg) || !role || !content || !*role) {
            free(chat);
            return IN_FAIL(c, "messages[%zu]: expected {\"role\": \"system|user|assistant\", "
                              "\"content\": \"text\"}", i);
        }
        chat[i] = (struct llama_chat_message){.role = role, .content = content};
        total += strlen(role) + strlen(content) + 16;
    }
    if (c->m->chat_template) {
        buf = malloc(total * 2);
        len = buf ? llama_chat_apply_template(c->m->chat_template, chat, n, true, buf,
                                              (int32_t)(total * 2)) : -1;
        if (buf && len > (int32_t)(total * 2)) {
            char *bigger = realloc(buf, (size_t)len + 1);
            buf = bigger ? bigger : buf;
            len = bigger ? llama_chat_apply_template(c->m->chat_template, chat, n, true, buf,
                                                     len + 1) : -1;
        }
        if (len >= 0)
            buf[len] = '\0';
    }
    if (len < 0) {
        size_t off = 0;

        free(buf);
        if (!(buf = malloc(total))) {
            free(chat);
            return larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
        }
        for (i = 0; i < n; i++)
            off += (size_t)snprintf(buf + off, total - off, "%s: %s\n", chat[i].role,
                                    chat[i].content);
        snprintf(buf + off, total - off, "assistant:");
    }
    free(chat);
    *ret = buf;
    return 0;
}

static struct llama_sampler *make_sampler(const struct gen_params *g)
{
    struct llama_sampler_chain_params sp = llama_sampler_chain_default_params();
    struct llama_sampler *s = llama_sampler_chain_init(sp);

    sp.no_perf = true;
    if (!s)
        return NULL;
    if (g->temperature <= 0) {
        llama_sampler_chain_add(s, llama_sampler_init_greedy());
        return s;
    }
    if (g->top_k > 0)
        llama_sampler_chain_add(s, llama_sampler_init_top_k(g->top_k));
    if (g->top_p < 1.0)
        llama_sampler_chain_add(s, llama_sampler_init_top_p((float)g->top_p, 1));
    llama_sampler_chain_add(s, llama_sampler_init_temp((float)g->temperature));
    llama_sampler_chain_add(s, llama_sampler_init_dist(g->seed));
    return s;
}

/* The prompt's tokens: a string, token ids, or messages through the chat template. */
static int prompt_tokens(struct call *c, json_t *body, llama_token **ret, int *ret_n)
{
    json_t *prompt = json_object_get(body, "prompt");
    int32_t n_vocab = llama_vocab_n_tokens(c->m->vocab);
    char *text = NULL;
    int rc;

    if (prompt && json_is_array(prompt)) {
        size_t n = json_array_size(prompt), i;
        json_t *v;
        llama_token *t = malloc((n + 1) * sizeof *t);

        if (!t)
            return larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
        json_array_foreach(prompt, i, v) {
            json_int_t id = json_integer_value(v);

            if (!json_is_integer(v) || id < 0 || id >= n_vocab) {
                free(t);
                return IN_FAIL(c, "prompt[%zu]: token ids must be integers in 0..%d (the "
                                  "vocabulary has %d tokens)", i, n_vocab - 1, n_vocab);
            }
            t[i] = (llama_token)id;
        }
        *ret = t;
        *ret_n = (int)n;
        return 0;
    }
    if (prompt) {
        if (!json_is_string(prompt))
            return IN_FAIL(c, "prompt: expected a string or an array of token ids");
        return tokenize(c, json_string_value(prompt), json_string_length(prompt), true, ret,
                        ret_n);
    }
    if ((rc = apply_messages(c, json_object_get(body, "messages"), &text)) < 0)
        return rc;
    rc = tokenize(c, text, strlen(text), true, ret, ret_n);
    free(text);
    return rc;
}

static int generate(struct call *c, json_t *body, struct larder_infer_result *res)
{
    struct gen_params g;
    struct textbuf t = {0};
    struct llama_sampler *smpl = NULL;
    llama_token *prompt = NULL, *out = NULL;
    int n_prompt = 0, n_out = 0, rc;
    uint32_t n_ctx = llama_n_ctx(c->ctx), n_batch = batch_size(&c->m->cfg);
    bool stream = g_host && g_host->abi_minor >= 2 && g_host->emit && c->req->stream;
    const char *finish = "length";
    double t0, t1, t2;
    json_t *o, *toks;

    if ((rc = read_gen_params(c, body, &g)) < 0) {
        gen_params_clear(&g);
        return rc;
    }
    t0 = now_ms();
    if ((rc = prompt_tokens(c, body, &prompt, &n_prompt)) < 0)
        goto out;
    if (n_prompt == 0) {
        rc = IN_FAIL(c, "the prompt is empty");
        goto out;
    }
    if ((uint32_t)n_prompt >= n_ctx) {
        rc = CTX_FAIL(c, "prompt is %d tokens, context is %u", n_prompt, n_ctx);
        goto out;
    }
    out = malloc((size_t)g.max_tokens * sizeof *out);
    smpl = make_sampler(&g);
    if (!out || !smpl) {
        rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
        goto out;
    }
    llama_memory_clear(llama_get_memory(c->ctx), true);
    for (int i = 0; i < n_prompt; i += (int)n_batch) {
        int chunk = n_prompt - i < (int)n_batch ? n_prompt - i : (int)n_batch;
        int r;

        if (larder_pu_cancelled(g_host, c->req)) {
            rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ECANCELED, "cancelled");
            goto out;
        }
        if ((r = llama_decode(c->ctx, llama_batch_get_one(prompt + i, chunk))) != 0) {
            rc = decode_failed(c, r);
            goto out;
        }
    }
    t1 = now_ms();
    while (n_out < g.max_tokens) {
        char piece[256];
        llama_token tok;
        int plen, r;
        long hit;

        if ((uint32_t)(n_prompt + n_out) >= n_ctx)
            break; /* the context is full: "length" */
        if (larder_pu_cancelled(g_host, c->req)) {
            rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ECANCELED, "cancelled");
            goto out;
        }
        tok = llama_sampler_sample(smpl, c->ctx, -1);
        if (llama_vocab_is_eog(c->m->vocab, tok)) {
            finish = "stop";
            break;
        }
        out[n_out++] = tok;
        plen = llama_token_to_piece(c->m->vocab, tok, piece, sizeof piece, 0, false);
        if (plen < 0)
            plen = 0;
        if (!tb_feed(&t, piece, (size_t)plen, false) || (!t.s && !tb_put(&t, "", 0))) {
            rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
            goto out;
        }
        hit = g.n_stop ? find_stop(&t, g.stop, g.n_stop, t.sent) : -1;
        if (hit >= 0) {
            t.len = (size_t)hit;
            t.s[t.len] = '\0';
            t.npend = 0;
            finish = "stop";
        }
        if (stream) {
            size_t upto = hit >= 0 ? t.len : t.len - stop_prefix_len(&t, g.stop, g.n_stop);

            if ((rc = emit_piece(c, &t, upto, tok)) < 0)
                goto out;
        }
        if (hit >= 0)
            break;
        if (n_out == g.max_tokens)
            break;
        if ((r = llama_decode(c->ctx, llama_batch_get_one(&tok, 1))) != 0) {
            rc = decode_failed(c, r);
            goto out;
        }
    }
    t2 = now_ms();
    if (!tb_feed(&t, "", 0, true) || (!t.s && !tb_put(&t, "", 0))) {
        rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
        goto out;
    }
    if (stream && (rc = emit_piece(c, &t, t.len, -1)) < 0)
        goto out;
    toks = json_array();
    for (int i = 0; i < n_out; i++)
        json_array_append_new(toks, json_integer(out[i]));
    o = json_pack("{s:s%,s:o,s:s,s:{s:i,s:i},s:{s:f,s:f}}", "text", t.s, t.len, "tokens", toks,
                  "finish_reason", finish, "usage", "prompt_tokens", n_prompt,
                  "completion_tokens", n_out, "timings", "prompt_ms", t1 - t0, "generate_ms",
                  t2 - t1);
    rc = set_result(res, o, c->err, c->errlen);
out:
    llama_memory_clear(llama_get_memory(c->ctx), true);
    if (smpl)
        llama_sampler_free(smpl);
    gen_params_clear(&g);
    free(prompt);
    free(out);
    free(t.s);
    return rc;
}

/* -- embeddings and rerank: one sequence per input, decoded whole -- */

/* Decodes tokens as sequence 0 with every token an output. */
static int decode_all(struct call *c, const llama_token *tok, int n)
{
    struct llama_batch b = llama_batch_init(n, 0, 1);
    int r;

    if (!b.token)
        return larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        b.token[i] = tok[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    llama_memory_clear(llama_get_memory(c->ctx), true);
    r = llama_decode(c->ctx, b);
    llama_batch_free(b);
    return r != 0 ? decode_failed(c, r) : 0;
}

static json_t *vector(const float *v, int n)
{
    json_t *a = json_array();

    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

/* The pooled vector of the decoded sequence, or (pooling none) its per-token vectors. */
static json_t *pooled(struct call *c, int n_tokens)
{
    int dim = llama_model_n_embd_out(c->m->model);
    const float *v;

    if (llama_pooling_type(c->ctx) == LLAMA_POOLING_TYPE_NONE) {
        json_t *rows = json_array();

        for (int i = 0; i < n_tokens; i++) {
            v = llama_get_embeddings_ith(c->ctx, i);
            if (!v) {
                json_decref(rows);
                return NULL;
            }
            json_array_append_new(rows, vector(v, dim));
        }
        return rows;
    }
    if (llama_pooling_type(c->ctx) == LLAMA_POOLING_TYPE_RANK)
        dim = (int)llama_model_n_cls_out(c->m->model);
    v = llama_get_embeddings_seq(c->ctx, 0);
    return v ? vector(v, dim) : NULL;
}

static int check_fits(struct call *c, int n, const char *what, size_t index)
{
    uint32_t n_ctx = llama_n_ctx(c->ctx);

    if (n == 0)
        return IN_FAIL(c, "%s %zu is empty", what, index);
    if ((uint32_t)n > n_ctx)
        return CTX_FAIL(c, "%s %zu is %d tokens, context is %u", what, index, n, n_ctx);
    return 0;
}

static int embed(struct call *c, json_t *body, struct larder_infer_result *res)
{
    json_t *input = json_object_get(body, "input"), *list, *out = json_array(), *v;
    size_t i;
    int total = 0, rc = 0;

    list = json_is_string(input) ? json_pack("[O]", input) : json_incref(input);
    if (!json_is_array(list) || json_array_size(list) == 0) {
        rc = IN_FAIL(c, "input: expected a string or a non-empty array of strings");
        goto out;
    }
    json_array_foreach(list, i, v) {
        if (!json_is_string(v)) {
            rc = IN_FAIL(c, "input[%zu]: expected a string", i);
            goto out;
        }
    }
    json_array_foreach(list, i, v) {
        llama_token *tok = NULL;
        int n = 0;
        json_t *vec;

        if (larder_pu_cancelled(g_host, c->req)) {
            rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ECANCELED, "cancelled");
            goto out;
        }
        if ((rc = tokenize(c, json_string_value(v), json_string_length(v), true, &tok, &n)) < 0)
            goto out;
        if ((rc = check_fits(c, n, "input", i)) == 0)
            rc = decode_all(c, tok, n);
        free(tok);
        if (rc < 0)
            goto out;
        if (!(vec = pooled(c, n))) {
            rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_EINTERNAL,
                                "llama.cpp returned no embeddings");
            goto out;
        }
        json_array_append_new(out, vec);
        total += n;
    }
    rc = set_result(res, json_pack("{s:O,s:{s:i}}", "embeddings", out, "usage",
                                   "prompt_tokens", total), c->err, c->errlen);
out:
    llama_memory_clear(llama_get_memory(c->ctx), true);
    json_decref(list);
    json_decref(out);
    return rc;
}

/* Each document is scored as BOS query EOS document EOS (SEP for EOS where the vocabulary
 * has one); the score is the classifier's first output. */
static int rerank(struct call *c, json_t *body, struct larder_infer_result *res)
{
    json_t *query = json_object_get(body, "query"), *docs = json_object_get(body, "documents");
    json_t *scores = json_array(), *v;
    llama_token *q = NULL;
    llama_token sep = llama_vocab_sep(c->m->vocab) >= 0 ? llama_vocab_sep(c->m->vocab)
                                                        : llama_vocab_eos(c->m->vocab);
    int nq = 0, total = 0, rc = 0;
    size_t i;

    if (!json_is_string(query) || !json_is_array(docs) || json_array_size(docs) == 0) {
        rc = IN_FAIL(c, "rerank: expected {\"query\": \"text\", \"documents\": [\"text\", ...]}");
        goto out;
    }
    json_array_foreach(docs, i, v) {
        if (!json_is_string(v)) {
            rc = IN_FAIL(c, "documents[%zu]: expected a string", i);
            goto out;
        }
    }
    if ((rc = tokenize(c, json_string_value(query), json_string_length(query), true, &q, &nq)) <
        0)
        goto out;
    json_array_foreach(docs, i, v) {
        llama_token *d = NULL, *all;
        int nd = 0, n;
        json_t *vec;

        if (larder_pu_cancelled(g_host, c->req)) {
            rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ECANCELED, "cancelled");
            goto out;
        }
        if ((rc = tokenize(c, json_string_value(v), json_string_length(v), false, &d, &nd)) < 0)
            goto out;
        n = nq + nd + 2;
        all = malloc((size_t)n * sizeof *all);
        if (!all) {
            free(d);
            rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_ENOMEM, "out of memory");
            goto out;
        }
        memcpy(all, q, (size_t)nq * sizeof *all);
        all[nq] = sep;
        memcpy(all + nq + 1, d, (size_t)nd * sizeof *all);
        all[n - 1] = sep;
        free(d);
        if ((rc = check_fits(c, n, "document", i)) == 0)
            rc = decode_all(c, all, n);
        free(all);
        if (rc < 0)
            goto out;
        if (!(vec = pooled(c, n)) || json_array_size(vec) == 0) {
            json_decref(vec);
            rc = larder_pu_fail(c->err, c->errlen, LARDER_BACKEND_EINTERNAL,
                                "llama.cpp returned no score");
            goto out;
        }
        json_array_append(scores, json_array_get(vec, 0));
        json_decref(vec);
        total += n;
    }
    rc = set_result(res, json_pack("{s:O,s:{s:i}}", "scores", scores, "usage", "prompt_tokens",
                                   total), c->err, c->errlen);
out:
    llama_memory_clear(llama_get_memory(c->ctx), true);
    free(q);
    json_decref(scores);
    return rc;
}

static const char *kind_name(enum kind k)
{
    return k == KIND_GENERATE ? "generate" : k == KIND_EMBED ? "embed" : "rerank";
}

static int describe(struct call *c, struct larder_infer_result *res)
{
    struct model *m = c->m;
    char arch[64] = "";
    uint64_t host = 0;
    json_t *o;

    llm_measure(m, &host);
    llama_model_meta_val_str(m->model, "general.architecture", arch, sizeof arch);
    o = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:I,s:b,s:i,s:s?,s:I,s:I,s:I}", "kind",
                  kind_name(m->kind), "architecture", arch, "n_ctx", (int)m->cfg.ctx,
                  "n_ctx_train", llama_model_n_ctx_train(m->model), "n_embd",
                  llama_model_n_embd_out(m->model), "n_layer", llama_model_n_layer(m->model),
                  "n_vocab", llama_vocab_n_tokens(m->vocab), "weight_bytes",
                  (json_int_t)llama_model_size(m->model), "chat_template",
                  m->chat_template != NULL, "gpu_layers", m->gpu_layers, "gpu_device",
                  m->gpu_name[0] ? m->gpu_name : NULL, "gpu_bytes", (json_int_t)m->gpu_bytes,
                  "kv_bytes", (json_int_t)m->kv_bytes, "gpu_margin",
                  (json_int_t)m->gpu_margin);
    if (o) {
        /* what llama.cpp allocated: the model and the latest instance */
        json_object_set_new(o, "measured_host_bytes", json_integer((json_int_t)host));
        json_object_set_new(o, "measured_device_bytes",
                            json_integer((json_int_t)(m->weights.dev +
                                                      atomic_load(&m->inst_dev))));
    }
    return set_result(res, o, c->err, c->errlen);
}

static int llm_infer(void *model, void *instance, const struct larder_infer_request *req,
                     struct larder_infer_result *res, char *err, size_t errlen)
{
    struct model *m = model;
    struct instance *in = instance;
    struct call c = {.m = m, .ctx = in ? in->ctx : NULL, .req = req, .err = err,
                     .errlen = errlen};
    json_error_t je;
    json_t *body;
    int rc;

    memset(res, 0, sizeof *res);
    if (!in)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "no instance");
    if (req->content_type && !larder_pu_media_is(req->content_type, "application/json"))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMEDIA,
                              "content type %s: expected application/json", req->content_type);
    body = json_loadb(req->body, req->body_len, 0, &je);
    if (!body)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "malformed JSON body: %s",
                              je.text);
    if (!json_is_object(body)) {
        json_decref(body);
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "expected a JSON object body");
    }
    if (json_is_true(json_object_get(body, "describe")))
        rc = describe(&c, res);
    else if (json_object_get(body, "prompt") || json_object_get(body, "messages"))
        rc = m->kind == KIND_GENERATE
                 ? generate(&c, body, res)
                 : IN_FAIL(&c, "this model is an %s (embedding = yes): send %s",
                           m->kind == KIND_EMBED ? "embedder" : "reranker",
                           m->kind == KIND_EMBED ? "{\"input\": ...}"
                                                 : "{\"query\": ..., \"documents\": [...]}");
    else if (json_object_get(body, "input"))
        rc = m->kind == KIND_EMBED
                 ? embed(&c, body, res)
                 : IN_FAIL(&c, "this model makes no embeddings (declare embedding = yes)");
    else if (json_object_get(body, "query") || json_object_get(body, "documents"))
        rc = m->kind == KIND_RERANK ? rerank(&c, body, res)
                                    : IN_FAIL(&c, "this model is no reranker (pooling = rank)");
    else
        rc = IN_FAIL(&c, "expected one of prompt, messages, input, or query and documents");
    json_decref(body);
    if (rc < 0)
        larder_pu_result_free(res);
    return rc;
}

static const struct larder_backend_ops ops = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .name = BACKEND_NAME,
    .description = "GGUF language models, embedders and rerankers (llama.cpp)",
    .option_keys = option_keys,
    .check = llm_check,
    .estimate = llm_estimate,
    .load = llm_load,
    .unload = llm_unload,
    .instance_new = llm_instance_new,
    .instance_free = llm_instance_free,
    .measure = llm_measure,
    .infer = llm_infer,
    .result_free = larder_pu_result_free,
};

const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host)
{
    return larder_pu_entry(host, &g_host, &ops);
}
