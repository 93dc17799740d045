/* GGUF metadata for the llama backend (see gguf-info.h). Reads the header with its own
 * checks first, so that a file that is no GGUF, or of an unknown version, gets its own
 * message; then ggml's reader with no_alloc (no tensor data is read); then checks that the
 * tensor data the header promises is in the file and that the vocabulary matches the
 * token embeddings. */
#include "gguf-info.h"

#include <larder/backend.h>

#include "../common/plugin-util.h"

#include <gguf.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* An unsigned integer key of any integer type; false when absent or not an integer. */
static bool get_uint(const struct gguf_context *g, const char *key, uint64_t *ret)
{
    int64_t id = gguf_find_key(g, key);

    if (id < 0)
        return false;
    switch (gguf_get_kv_type(g, id)) {
    case GGUF_TYPE_UINT8: *ret = gguf_get_val_u8(g, id); return true;
    case GGUF_TYPE_UINT16: *ret = gguf_get_val_u16(g, id); return true;
    case GGUF_TYPE_UINT32: *ret = gguf_get_val_u32(g, id); return true;
    case GGUF_TYPE_UINT64: *ret = gguf_get_val_u64(g, id); return true;
    case GGUF_TYPE_INT32: {
        int32_t v = gguf_get_val_i32(g, id);
        *ret = v < 0 ? 0 : (uint64_t)v;
        return v >= 0;
    }
    case GGUF_TYPE_INT64: {
        int64_t v = gguf_get_val_i64(g, id);
        *ret = v < 0 ? 0 : (uint64_t)v;
        return v >= 0;
    }
    default: return false;
    }
}

static bool arch_uint(const struct gguf_context *g, const char *arch, const char *key,
                      uint64_t *ret)
{
    char full[160];

    snprintf(full, sizeof full, "%s.%s", arch, key);
    return get_uint(g, full, ret);
}

/* The magic and version, read by hand for clear messages. */
static int check_header(const char *path, struct stat *ret_st, char *err, size_t errlen)
{
    unsigned char head[8];
    struct stat st;
    FILE *f;
    size_t got;
    uint32_t version;

    if (stat(path, &st) != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "model file %s: %s", path,
                              strerror(errno));
    if (!S_ISREG(st.st_mode))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "model file %s: not a file",
                              path);
    f = fopen(path, "rb");
    if (!f)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "model file %s: %s", path,
                              strerror(errno));
    got = fread(head, 1, sizeof head, f);
    fclose(f);
    if (got < 4 || memcmp(head, "GGUF", 4) != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                              "model file %s is not a GGUF file (no GGUF magic)", path);
    if (got < 8)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                              "model file %s: truncated GGUF header", path);
    version = (uint32_t)head[4] | (uint32_t)head[5] << 8 | (uint32_t)head[6] << 16 |
              (uint32_t)head[7] << 24;
    if (version < 2 || version > 3)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                              "model file %s: GGUF version %u (2 or 3 are supported)", path,
                              version);
    *ret_st = st;
    return 0;
}

/* The metadata of the files read last, by path and identity (device, inode, size, change
 * times): parsing a large vocabulary takes milliseconds, and a model that is unloaded and
 * loaded again, or estimated, is read again unchanged. A file that changed is read anew;
 * failures are never kept. */
#define CACHE_SLOTS 8

struct cached {
    char *path;
    struct stat st;
    struct larder_gguf_info info;
};

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cached cache[CACHE_SLOTS];
static unsigned cache_next;

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Copies src into dst with its own layer array; false when out of memory. */
static bool info_copy(struct larder_gguf_info *dst, const struct larder_gguf_info *src)
{
    *dst = *src;
    dst->layer_bytes = malloc(src->n_layer * sizeof *dst->layer_bytes);
    if (!dst->layer_bytes)
        return false;
    memcpy(dst->layer_bytes, src->layer_bytes, src->n_layer * sizeof *dst->layer_bytes);
    return true;
}

static bool cache_get(const char *path, const struct stat *st, struct larder_gguf_info *info)
{
    bool hit = false;

    pthread_mutex_lock(&cache_mu);
    for (unsigned i = 0; i < CACHE_SLOTS && !hit; i++)
        if (cache[i].path && strcmp(cache[i].path, path) == 0 && same_file(&cache[i].st, st))
            hit = info_copy(info, &cache[i].info);
    pthread_mutex_unlock(&cache_mu);
    return hit;
}

static void cache_put(const char *path, const struct stat *st,
                      const struct larder_gguf_info *info)
{
    struct cached c = {.path = strdup(path), .st = *st};

    if (!c.path || !info_copy(&c.info, info)) {
        free(c.path);
        return;
    }
    pthread_mutex_lock(&cache_mu);
    for (unsigned i = 0; i < CACHE_SLOTS; i++)
        if (cache[i].path && strcmp(cache[i].path, path) == 0) {
            struct cached old = cache[i];

            cache[i] = c;
            pthread_mutex_unlock(&cache_mu);
            free(old.path);
            free(old.info.layer_bytes);
            return;
        }
    {
        struct cached old = cache[cache_next];

        cache[cache_next] = c;
        cache_next = (cache_next + 1) % CACHE_SLOTS;
        pthread_mutex_unlock(&cache_mu);
        free(old.path);
        free(old.info.layer_bytes);
    }
}

static int layer_of(const char *name, uint32_t n_layer)
{
    char *end;
    unsigned long l;

    if (strncmp(name, "blk.", 4) != 0)
        return -1;
    l = strtoul(name + 4, &end, 10);
    return *end == '.' && l < n_layer ? (int)l : -1;
}

int larder_gguf_info_read(const char *path, struct larder_gguf_info *info, char *err,
                          size_t errlen)
{
    struct gguf_init_params p = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g;
    struct stat st;
    uint64_t file_size, v, data_end = 0;
    int64_t id, tok, emb;
    const char *arch;
    int rc;

    memset(info, 0, sizeof *info);
    if ((rc = check_header(path, &st, err, errlen)) < 0)
        return rc;
    if (cache_get(path, &st, info))
        return 0;
    file_size = (uint64_t)st.st_size;
    g = gguf_init_from_file(path, p);
    if (!g)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                              "model file %s: truncated or corrupt GGUF metadata", path);
    rc = LARDER_BACKEND_EMODEL;
    id = gguf_find_key(g, "general.architecture");
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_STRING) {
        larder_pu_fail(err, errlen, rc, "model file %s: no general.architecture", path);
        goto out;
    }
    arch = gguf_get_val_str(g, id);
    snprintf(info->arch, sizeof info->arch, "%s", arch);
    if (!arch_uint(g, arch, "block_count", &v) || v == 0 || v > 4096) {
        larder_pu_fail(err, errlen, rc, "model file %s: no %s.block_count", path, arch);
        goto out;
    }
    info->n_layer = (uint32_t)v;
    if (!arch_uint(g, arch, "embedding_length", &v) || v == 0 || v > (1u << 20)) {
        larder_pu_fail(err, errlen, rc, "model file %s: no %s.embedding_length", path, arch);
        goto out;
    }
    info->n_embd = (uint32_t)v;
    /* Per-layer arrays of head counts (some architectures) are read as their default. */
    info->n_head = arch_uint(g, arch, "attention.head_count", &v) && v ? (uint32_t)v : 1;
    info->n_head_kv = arch_uint(g, arch, "attention.head_count_kv", &v) && v ? (uint32_t)v
                                                                             : info->n_head;
    info->n_ff = arch_uint(g, arch, "feed_forward_length", &v) ? (uint32_t)v : 0;
    info->n_ctx_train = arch_uint(g, arch, "context_length", &v) ? (uint32_t)v : 0;
    info->key_len = arch_uint(g, arch, "attention.key_length", &v) && v
                        ? (uint32_t)v : info->n_embd / info->n_head;
    info->val_len = arch_uint(g, arch, "attention.value_length", &v) && v
                        ? (uint32_t)v : info->n_embd / info->n_head;
    info->has_chat_template = gguf_find_key(g, "tokenizer.chat_template") >= 0;

    tok = gguf_find_key(g, "tokenizer.ggml.tokens");
    if (tok < 0 || gguf_get_kv_type(g, tok) != GGUF_TYPE_ARRAY ||
        gguf_get_arr_type(g, tok) != GGUF_TYPE_STRING) {
        larder_pu_fail(err, errlen, rc, "model file %s: no vocabulary (tokenizer.ggml.tokens)",
                       path);
        goto out;
    }
    info->n_vocab = gguf_get_arr_n(g, tok);
    emb = gguf_find_tensor(g, "token_embd.weight");
    if (emb >= 0 && (uint64_t)gguf_get_tensor_ne(g, emb)[1] != info->n_vocab) {
        larder_pu_fail(err, errlen, rc,
                       "model file %s: vocabulary mismatch: the tokenizer has %llu tokens, "
                       "token_embd has %lld rows",
                       path, (unsigned long long)info->n_vocab,
                       (long long)gguf_get_tensor_ne(g, emb)[1]);
        goto out;
    }

    info->layer_bytes = calloc(info->n_layer, sizeof *info->layer_bytes);
    if (!info->layer_bytes) {
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
        goto out;
    }
    for (int64_t t = 0; t < gguf_get_n_tensors(g); t++) {
        const char *name = gguf_get_tensor_name(g, t);
        uint64_t size = gguf_get_tensor_size(g, t), end = gguf_get_tensor_offset(g, t) + size;
        int layer = layer_of(name, info->n_layer);

        info->weight_bytes += size;
        if (end > data_end)
            data_end = end;
        if (layer >= 0)
            info->layer_bytes[layer] += size;
        else if (strncmp(name, "output", 6) == 0 || strncmp(name, "cls", 3) == 0)
            info->output_bytes += size;
    }
    data_end += gguf_get_data_offset(g);
    if (data_end > file_size) {
        larder_pu_fail(err, errlen, rc,
                       "model file %s is truncated: its tensors end at byte %llu, the file "
                       "has %llu",
                       path, (unsigned long long)data_end, (unsigned long long)file_size);
        goto out;
    }
    rc = 0;
    cache_put(path, &st, info);
out:
    gguf_free(g);
    if (rc < 0)
        larder_gguf_info_clear(info);
    return rc;
}

void larder_gguf_info_clear(struct larder_gguf_info *info)
{
    free(info->layer_bytes);
    info->layer_bytes = NULL;
}

uint64_t larder_gguf_kv_layer_bytes(const struct larder_gguf_info *info, uint32_t ctx)
{
    return (uint64_t)ctx * info->n_head_kv * (info->key_len + info->val_len) * 2;
}
