/* What the llama backend reads from a GGUF file's metadata without reading its weights:
 * validation for check(), sizes for estimate() and GPU layer fitting. */
#ifndef LARDER_LLAMA_GGUF_INFO_H
#define LARDER_LLAMA_GGUF_INFO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct larder_gguf_info {
    char arch[64];
    uint32_t n_layer, n_embd, n_head, n_head_kv, n_ff, n_ctx_train, key_len, val_len;
    uint64_t n_vocab;
    uint64_t weight_bytes;   /* sum of every tensor's size */
    uint64_t *layer_bytes;   /* n_layer entries: the tensors of blk.N.* */
    uint64_t output_bytes;   /* output, output_norm and cls*: llama.cpp's output layer */
    bool has_chat_template;
};

/* Reads path's metadata (0, or a LARDER_BACKEND_E* code with a message in err). */
int larder_gguf_info_read(const char *path, struct larder_gguf_info *info, char *err,
                          size_t errlen);
void larder_gguf_info_clear(struct larder_gguf_info *info);

/* KV cache bytes (F16 keys and values) of one layer for ctx positions. */
uint64_t larder_gguf_kv_layer_bytes(const struct larder_gguf_info *info, uint32_t ctx);

#endif
