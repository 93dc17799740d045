/* GPU layer fitting of the llama plugin built against llama.cpp's Vulkan build, on the
 * first Vulkan device (Mesa's lavapipe where there is no GPU: GGML_VK_VISIBLE_DEVICES=0 is
 * set by meson). A budget that fits some layers but not all gets exactly those. Skips
 * (77) when no Vulkan device is present. */
#include "harness.h"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <gguf.h>

static const struct larder_backend_ops *ops;
static char path[4096];

static json_t *describe_with(const char *layers, const char *budget)
{
    struct larder_option o[] = {{"path", path}, {"threads", "1"}, {"gpu_layers", layers},
                                {"gpu_budget", budget}};
    void *model = harness_load(ops, o, budget ? 4 : 3), *in = NULL;
    char err[512];
    json_t *d = NULL, *g = NULL;
    const char *body = "{\"describe\": true}";
    const char *gen = "{\"prompt\": \"a b c\", \"max_tokens\": 4, \"temperature\": 0}";

    if (ops->instance_new(model, &in, err, sizeof err) < 0)
        fail_msg("instance_new: %s", err);
    assert_int_equal(harness_infer(ops, model, in, body, strlen(body), NULL, &d), 0);
    /* offloaded or not, it generates */
    assert_int_equal(harness_infer(ops, model, in, gen, strlen(gen), NULL, &g), 0);
    assert_int_equal(json_array_size(json_object_get(g, "tokens")), 4);
    json_decref(g);
    ops->instance_free(model, in);
    ops->unload(model);
    return d;
}

static int layers_of(json_t *d)
{
    return (int)json_integer_value(json_object_get(d, "gpu_layers"));
}

static void test_budget_fits_layers(void **state)
{
    struct gguf_init_params p = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(path, p);
    uint64_t layer[2] = {0, 0}, out = 0, kv, margin;
    json_t *d;
    char budget[64];
    int n_layer;

    (void)state;
    assert_non_null(g);
    for (int64_t t = 0; t < gguf_get_n_tensors(g); t++) {
        const char *name = gguf_get_tensor_name(g, t);
        if (strncmp(name, "blk.", 4) == 0)
            layer[name[4] - '0'] += gguf_get_tensor_size(g, t);
        else if (strncmp(name, "output", 6) == 0)
            out += gguf_get_tensor_size(g, t);
    }
    gguf_free(g);

    d = describe_with("1", NULL);
    if (!json_is_string(json_object_get(d, "gpu_device"))) {
        json_decref(d);
        skip(); /* unreachable in CI: main checks first */
    }
    assert_int_equal(layers_of(d), 1);
    n_layer = (int)json_integer_value(json_object_get(d, "n_layer"));
    assert_int_equal(n_layer, 2);
    kv = (uint64_t)json_integer_value(json_object_get(d, "kv_bytes")) / 2;
    margin = (uint64_t)json_integer_value(json_object_get(d, "gpu_margin"));
    json_decref(d);

    /* everything: both blocks and the output layer */
    snprintf(budget, sizeof budget, "%llu",
             (unsigned long long)(margin + layer[0] + layer[1] + 2 * kv + out));
    d = describe_with("auto", budget);
    assert_int_equal(layers_of(d), 3);
    assert_int_equal((uint64_t)json_integer_value(json_object_get(d, "gpu_bytes")),
                     layer[0] + layer[1] + 2 * kv + out);
    json_decref(d);
    /* the last block only (llama.cpp offloads from the last one) */
    snprintf(budget, sizeof budget, "%llu",
             (unsigned long long)(margin + layer[1] + kv + (layer[0] + kv) / 2));
    d = describe_with("auto", budget);
    assert_int_equal(layers_of(d), 1);
    assert_int_equal((uint64_t)json_integer_value(json_object_get(d, "gpu_bytes")),
                     layer[1] + kv);
    json_decref(d);
    /* two blocks, not the output layer */
    snprintf(budget, sizeof budget, "%llu",
             (unsigned long long)(margin + layer[0] + layer[1] + 2 * kv + out / 2));
    d = describe_with("auto", budget);
    assert_int_equal(layers_of(d), 2);
    json_decref(d);
    /* less than the margin: nothing */
    snprintf(budget, sizeof budget, "%llu", (unsigned long long)(margin / 2));
    d = describe_with("auto", budget);
    assert_int_equal(layers_of(d), 0);
    json_decref(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_budget_fits_layers)};
    const char *dir = getenv("LARDER_GGUF_DIR");
    struct larder_option o[2] = {{"path", path}, {"gpu_layers", "1"}};
    void *model = NULL;
    char err[512];
    bool has_gpu = false;

    snprintf(path, sizeof path, "%s/tiny-generator-f32.gguf", dir ? dir : ".");
    ops = harness_open("LARDER_PLUGIN", NULL);
    /* is there a Vulkan device at all? (libvulkan1 and mesa-vulkan-drivers) */
    if (ops->load(o, 2, &model, err, sizeof err) == 0) {
        void *in = NULL;
        json_t *d = NULL;
        if (ops->instance_new(model, &in, err, sizeof err) == 0) {
            harness_infer(ops, model, in, "{\"describe\": true}", 18, NULL, &d);
            has_gpu = json_is_string(json_object_get(d, "gpu_device"));
            json_decref(d);
            ops->instance_free(model, in);
        }
        ops->unload(model);
    }
    if (!has_gpu) {
        fprintf(stderr, "no Vulkan device (install libvulkan1 and mesa-vulkan-drivers): skipped\n");
        return 77;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
