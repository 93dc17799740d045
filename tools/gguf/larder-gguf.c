/* larder-gguf: writes small GGUF language models with seeded random weights, for larder's
 * tests, examples and benchmarks (no weights can be downloaded where larder is built).
 *
 *   larder-gguf KIND OUT.gguf [--layers N] [--embd N] [--heads N] [--kv-heads N] [--ff N]
 *               [--vocab N] [--ctx N] [--seed N] [--type f32|q8_0|q4_0]
 *
 * KIND:
 *   generator  a llama-architecture model with an output head and a ChatML chat template
 *   embedder   a llama-architecture model that declares mean pooling
 *   reranker   a qwen3-architecture model (llama with per-head Q/K norms) that declares
 *              rank pooling and carries the classifier head llama.cpp reads for it,
 *              cls.output.weight, with two labels ("yes", "no"); the score is the first
 *
 * The vocabulary is SentencePiece style (tokenizer.ggml.model = "llama"): <unk>, <s>, </s>,
 * the 256 byte tokens, U+2581 and then letters and letter pairs with and without a leading
 * U+2581 until the vocabulary is full. Every token string is unique (a duplicate would abort
 * llama.cpp's loader): the writer checks it, and checks the written file again by reading
 * it back. Quantized types are made from the F32 file by llama.cpp's llama_model_quantize.
 * Same arguments, same bytes.
 */
#include <ggml.h>
#include <gguf.h>
#include <llama.h>

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum kind { KIND_GENERATOR, KIND_EMBEDDER, KIND_RERANKER };

struct shape {
    enum kind kind;
    unsigned layers, embd, heads, kv_heads, ff, vocab, ctx;
    unsigned long long seed;
    const char *type;
};

#define SPECIALS 3
#define BYTE_TOKENS 256
#define WORD_MARK "\xe2\x96\x81" /* U+2581, SentencePiece's word start */

static const char chatml_template[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "larder-gguf: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(1);
}

/* ---- seeded weights ------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [-scale, scale). */
static void fill_random(float *w, size_t n, float scale, uint64_t *s)
{
    for (size_t i = 0; i < n; i++)
        w[i] = scale * (float)((double)(rng_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* ---- vocabulary --------------------------------------------------------------------------- */

struct vocab {
    char **tokens;
    float *scores;
    int32_t *types;
    unsigned n;
};

static void vocab_add(struct vocab *v, const char *s, float score, int32_t type)
{
    v->tokens[v->n] = strdup(s);
    if (!v->tokens[v->n])
        die("%s", "out of memory");
    v->scores[v->n] = score;
    v->types[v->n] = type;
    v->n++;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Fails when two token strings are equal (llama.cpp aborts on such a vocabulary). */
static void check_unique(const char *const *tokens, size_t n)
{
    const char **sorted = malloc(n * sizeof *sorted);

    if (!sorted)
        die("%s", "out of memory");
    memcpy(sorted, tokens, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_str);
    for (size_t i = 1; i < n; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            die("duplicate token string '%s'", sorted[i]);
    free(sorted);
}

/* The i-th word of the filler sequence: a, b, ..., z, aa, ab, ..., zz, aaa, ... */
static void filler_word(unsigned i, char *out)
{
    unsigned len = 1, span = 26;
    char tmp[16];

    while (i >= span) {
        i -= span;
        span *= 26;
        len++;
    }
    for (unsigned k = 0; k < len; k++) {
        tmp[len - 1 - k] = (char)('a' + i % 26);
        i /= 26;
    }
    tmp[len] = '\0';
    strcpy(out, tmp);
}

static void vocab_build(struct vocab *v, unsigned size)
{
    char buf[32], word[16];

    v->tokens = calloc(size, sizeof *v->tokens);
    v->scores = calloc(size, sizeof *v->scores);
    v->types = calloc(size, sizeof *v->types);
    if (!v->tokens || !v->scores || !v->types)
        die("%s", "out of memory");
    vocab_add(v, "<unk>", 0.0f, 2);
    vocab_add(v, "<s>", 0.0f, 3);
    vocab_add(v, "</s>", 0.0f, 3);
    for (unsigned b = 0; b < BYTE_TOKENS; b++) {
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        vocab_add(v, buf, 0.0f, 6);
    }
    vocab_add(v, WORD_MARK, -1.0f, 1);
    /* Words alternate with and without the word mark: "a", "▁a", "b", "▁b", ... */
    for (unsigned i = 0; v->n < size; i++) {
        filler_word(i / 2, word);
        snprintf(buf, sizeof buf, "%s%s", i % 2 ? WORD_MARK : "", word);
        vocab_add(v, buf, -2.0f - (float)i * 0.001f, 1);
    }
    check_unique((const char *const *)v->tokens, v->n);
}

static void vocab_free(struct vocab *v)
{
    for (unsigned i = 0; i < v->n; i++)
        free(v->tokens[i]);
    free(v->tokens);
    free(v->scores);
    free(v->types);
}

/* ---- the model ---------------------------------------------------------------------------- */

struct writer {
    struct gguf_context *gguf;
    struct ggml_context *ggml;
    uint64_t rng;
};

/* Adds a tensor of ne0 x ne1 (ne1 = 1: a vector) F32 weights: random, or all `one`. */
static void add_tensor(struct writer *w, const char *name, int64_t ne0, int64_t ne1, bool ones)
{
    struct ggml_tensor *t = ne1 > 1 ? ggml_new_tensor_2d(w->ggml, GGML_TYPE_F32, ne0, ne1)
                                    : ggml_new_tensor_1d(w->ggml, GGML_TYPE_F32, ne0);
    float *data = t->data;
    size_t n = (size_t)ne0 * (size_t)ne1;

    ggml_set_name(t, name);
    if (ones)
        for (size_t i = 0; i < n; i++)
            data[i] = 1.0f;
    else
        fill_random(data, n, 1.0f / sqrtf((float)ne0), &w->rng);
    gguf_add_tensor(w->gguf, t);
}

static void set_key(struct writer *w, const char *arch, const char *key, uint32_t v)
{
    char full[128];

    snprintf(full, sizeof full, "%s.%s", arch, key);
    gguf_set_val_u32(w->gguf, full, v);
}

static size_t tensor_bytes(const struct shape *s)
{
    size_t e = s->embd, kv = (size_t)s->embd / s->heads * s->kv_heads, head = s->embd / s->heads;
    size_t layer = 2 * e + e * e * 2 + e * kv * 2 + 3 * e * s->ff + 2 * head;
    size_t total = (size_t)s->vocab * e * 2 + e + 2 * e + layer * s->layers;

    return total * sizeof(float) + (size_t)(s->layers * 11 + 4) * ggml_tensor_overhead() +
           (1u << 20);
}

static void write_f32(const struct shape *s, const char *out)
{
    const char *arch = s->kind == KIND_RERANKER ? "qwen3" : "llama";
    unsigned head = s->embd / s->heads, kv = head * s->kv_heads;
    struct ggml_init_params gp = {.mem_size = tensor_bytes(s), .mem_buffer = NULL,
                                  .no_alloc = false};
    struct writer w = {.gguf = gguf_init_empty(), .ggml = ggml_init(gp), .rng = s->seed};
    struct vocab v = {0};
    char name[96];

    if (!w.gguf || !w.ggml)
        die("%s", "out of memory");
    vocab_build(&v, s->vocab);

    gguf_set_val_u32(w.gguf, "general.alignment", 32);
    gguf_set_val_str(w.gguf, "general.architecture", arch);
    gguf_set_val_str(w.gguf, "general.name",
                     s->kind == KIND_GENERATOR ? "larder test generator"
                     : s->kind == KIND_EMBEDDER ? "larder test embedder"
                                                : "larder test reranker");
    gguf_set_val_u32(w.gguf, "general.file_type", 0);
    set_key(&w, arch, "context_length", s->ctx);
    set_key(&w, arch, "embedding_length", s->embd);
    set_key(&w, arch, "block_count", s->layers);
    set_key(&w, arch, "feed_forward_length", s->ff);
    set_key(&w, arch, "attention.head_count", s->heads);
    set_key(&w, arch, "attention.head_count_kv", s->kv_heads);
    set_key(&w, arch, "rope.dimension_count", head);
    set_key(&w, arch, "vocab_size", s->vocab);
    snprintf(name, sizeof name, "%s.rope.freq_base", arch);
    gguf_set_val_f32(w.gguf, name, 10000.0f);
    snprintf(name, sizeof name, "%s.attention.layer_norm_rms_epsilon", arch);
    gguf_set_val_f32(w.gguf, name, 1e-5f);
    if (s->kind == KIND_EMBEDDER)
        set_key(&w, arch, "pooling_type", 1);
    if (s->kind == KIND_RERANKER) {
        const char *labels[] = {"yes", "no"};

        set_key(&w, arch, "pooling_type", 4);
        snprintf(name, sizeof name, "%s.classifier.output_labels", arch);
        gguf_set_arr_str(w.gguf, name, labels, 2);
    }

    gguf_set_val_str(w.gguf, "tokenizer.ggml.model", "llama");
    gguf_set_arr_str(w.gguf, "tokenizer.ggml.tokens", (const char **)v.tokens, v.n);
    gguf_set_arr_data(w.gguf, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, v.scores, v.n);
    gguf_set_arr_data(w.gguf, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v.types, v.n);
    gguf_set_val_u32(w.gguf, "tokenizer.ggml.unknown_token_id", 0);
    gguf_set_val_u32(w.gguf, "tokenizer.ggml.bos_token_id", 1);
    gguf_set_val_u32(w.gguf, "tokenizer.ggml.eos_token_id", 2);
    gguf_set_val_bool(w.gguf, "tokenizer.ggml.add_bos_token", true);
    gguf_set_val_bool(w.gguf, "tokenizer.ggml.add_eos_token", false);
    if (s->kind == KIND_GENERATOR)
        gguf_set_val_str(w.gguf, "tokenizer.chat_template", chatml_template);

    add_tensor(&w, "token_embd.weight", s->embd, s->vocab, false);
    add_tensor(&w, "output_norm.weight", s->embd, 1, true);
    if (s->kind == KIND_GENERATOR)
        add_tensor(&w, "output.weight", s->embd, s->vocab, false);
    if (s->kind == KIND_RERANKER)
        add_tensor(&w, "cls.output.weight", s->embd, 2, false);
    for (unsigned l = 0; l < s->layers; l++) {
        static const struct {
            const char *name;
            int out; /* 0: embd, 1: kv, 2: ff; negative: a vector of ones */
            int in;
        } layer[] = {
            {"attn_norm", -1, 0}, {"attn_q", 0, 0},    {"attn_k", 1, 0},   {"attn_v", 1, 0},
            {"attn_output", 0, 0}, {"ffn_norm", -1, 0}, {"ffn_gate", 2, 0}, {"ffn_up", 2, 0},
            {"ffn_down", 0, 2},
        };
        for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
            int64_t dims[3] = {s->embd, kv, s->ff};

            snprintf(name, sizeof name, "blk.%u.%s.weight", l, layer[i].name);
            if (layer[i].out < 0)
                add_tensor(&w, name, s->embd, 1, true);
            else
                add_tensor(&w, name, dims[layer[i].in], dims[layer[i].out], false);
        }
        if (s->kind == KIND_RERANKER) {
            snprintf(name, sizeof name, "blk.%u.attn_q_norm.weight", l);
            add_tensor(&w, name, head, 1, true);
            snprintf(name, sizeof name, "blk.%u.attn_k_norm.weight", l);
            add_tensor(&w, name, head, 1, true);
        }
    }
    if (!gguf_write_to_file(w.gguf, out, false))
        die("cannot write %s", out);
    gguf_free(w.gguf);
    ggml_free(w.ggml);
    vocab_free(&v);
}

/* Reads the written file back: a GGUF whose vocabulary is unique and matches the
 * embedding rows. */
static void validate(const char *path, const struct shape *s)
{
    struct gguf_init_params p = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(path, p);
    int64_t key, t;
    size_t n;
    const char **tokens;

    if (!g)
        die("%s: not readable as GGUF after writing", path);
    key = gguf_find_key(g, "tokenizer.ggml.tokens");
    t = gguf_find_tensor(g, "token_embd.weight");
    if (key < 0 || t < 0)
        die("%s: vocabulary or token_embd missing", path);
    n = gguf_get_arr_n(g, key);
    if (n != s->vocab || gguf_get_tensor_ne(g, t)[1] != (int64_t)n)
        die("%s: vocabulary size does not match token_embd", path);
    tokens = malloc(n * sizeof *tokens);
    if (!tokens)
        die("%s", "out of memory");
    for (size_t i = 0; i < n; i++)
        tokens[i] = gguf_get_arr_str(g, key, i);
    check_unique(tokens, n);
    free(tokens);
    gguf_free(g);
}

static void quiet_log(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

static void quantize(const char *from, const char *to, const char *type)
{
    llama_model_quantize_params qp = llama_model_quantize_default_params();

    qp.nthread = 1;
    qp.ftype = strcmp(type, "q8_0") == 0 ? LLAMA_FTYPE_MOSTLY_Q8_0 : LLAMA_FTYPE_MOSTLY_Q4_0;
    if (llama_model_quantize(from, to, &qp) != 0)
        die("llama_model_quantize to %s failed", type);
}

static unsigned parse_uint(const char *s, const char *flag)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s ? s : "", &end, 10);
    if (!s || errno || *end || v == 0 || v > 1000000)
        die("%s: expected a positive number", flag);
    return (unsigned)v;
}

int main(int argc, char **argv)
{
    struct shape s = {.layers = 2, .embd = 64, .heads = 4, .kv_heads = 2, .ff = 128,
                      .vocab = 384, .ctx = 2048, .seed = 1, .type = "f32"};
    const char *out;

    if (argc < 3) {
        fprintf(stderr, "usage: larder-gguf generator|embedder|reranker OUT.gguf [--layers N] "
                        "[--embd N] [--heads N] [--kv-heads N] [--ff N] [--vocab N] [--ctx N] "
                        "[--seed N] [--type f32|q8_0|q4_0]\n");
        return 2;
    }
    if (strcmp(argv[1], "generator") == 0)
        s.kind = KIND_GENERATOR;
    else if (strcmp(argv[1], "embedder") == 0)
        s.kind = KIND_EMBEDDER;
    else if (strcmp(argv[1], "reranker") == 0)
        s.kind = KIND_RERANKER;
    else
        die("unknown kind '%s'", argv[1]);
    out = argv[2];
    for (int i = 3; i < argc; i += 2) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (strcmp(f, "--layers") == 0)
            s.layers = parse_uint(v, f);
        else if (strcmp(f, "--embd") == 0)
            s.embd = parse_uint(v, f);
        else if (strcmp(f, "--heads") == 0)
            s.heads = parse_uint(v, f);
        else if (strcmp(f, "--kv-heads") == 0)
            s.kv_heads = parse_uint(v, f);
        else if (strcmp(f, "--ff") == 0)
            s.ff = parse_uint(v, f);
        else if (strcmp(f, "--vocab") == 0)
            s.vocab = parse_uint(v, f);
        else if (strcmp(f, "--ctx") == 0)
            s.ctx = parse_uint(v, f);
        else if (strcmp(f, "--seed") == 0)
            s.seed = parse_uint(v, f);
        else if (strcmp(f, "--type") == 0 && v &&
                 (strcmp(v, "f32") == 0 || strcmp(v, "q8_0") == 0 || strcmp(v, "q4_0") == 0))
            s.type = v;
        else
            die("bad argument '%s'", f);
    }
    if (s.embd % s.heads || s.heads % s.kv_heads || s.embd % 32 || s.ff % 32 ||
        s.vocab < SPECIALS + BYTE_TOKENS + 2)
        die("%s", "inconsistent shape (embd and ff multiples of 32, heads dividing embd, "
                  "kv-heads dividing heads, vocab above 260)");
    llama_log_set(quiet_log, NULL);
    if (strcmp(s.type, "f32") == 0) {
        write_f32(&s, out);
    } else {
        char tmp[4096];

        snprintf(tmp, sizeof tmp, "%s.f32.tmp", out);
        write_f32(&s, tmp);
        validate(tmp, &s);
        quantize(tmp, out, s.type);
        unlink(tmp);
    }
    validate(out, &s);
    return 0;
}
