/* A minimal backend plugin for the ABI tests, built in several variants (ABI_VARIANT):
 *   GOOD         a complete plugin of this header's ABI
 *   BAD_MAJOR    reports another abi_major
 *   NULL_OPS     its entry returns NULL
 *   INCOMPLETE   lacks infer
 *   HALF_POOL    has instance_new without instance_free
 *   NO_ENTRY     exports its table under another name
 * Its operations do nothing useful: the host only opens it.
 */
#include <larder/backend.h>

#include <stdlib.h>
#include <string.h>

#define GOOD 1
#define BAD_MAJOR 2
#define NULL_OPS 3
#define INCOMPLETE 4
#define HALF_POOL 5
#define NO_ENTRY 6

#ifndef ABI_VARIANT
#error "define ABI_VARIANT"
#endif

#define EXPORT __attribute__((visibility("default")))

static const char *const keys[] = {"path", NULL};
static int model_token;

static int abi_load(const struct larder_option *opts, size_t n, void **ret_model, char *err,
                    size_t errlen)
{
    *ret_model = &model_token;
    return 0;
}

static void abi_unload(void *model)
{
}

static int abi_instance_new(void *model, void **ret_instance, char *err, size_t errlen)
{
    *ret_instance = &model_token;
    return 0;
}

static int abi_infer(void *model, void *instance, const struct larder_infer_request *req,
                     struct larder_infer_result *res, char *err, size_t errlen)
{
    memset(res, 0, sizeof(*res));
    res->json = strdup("{}");
    return res->json ? 0 : LARDER_BACKEND_ENOMEM;
}

static void abi_result_free(struct larder_infer_result *res)
{
    if (res)
        free(res->json);
}

static const struct larder_backend_ops ops = {
    .abi_major = ABI_VARIANT == BAD_MAJOR ? LARDER_BACKEND_ABI_MAJOR + 1
                                          : LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .name = "abi-test",
    .description = "ABI test plugin",
    .option_keys = keys,
    .load = abi_load,
    .unload = abi_unload,
    .instance_new = ABI_VARIANT == HALF_POOL ? abi_instance_new : NULL,
    .infer = ABI_VARIANT == INCOMPLETE ? NULL : abi_infer,
    .result_free = abi_result_free,
};

#if ABI_VARIANT == NO_ENTRY
EXPORT const struct larder_backend_ops *larder_backend_entry_v0(const struct larder_host *host);

const struct larder_backend_ops *larder_backend_entry_v0(const struct larder_host *host)
#else
EXPORT const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host);

const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host)
#endif
{
    return ABI_VARIANT == NULL_OPS ? NULL : &ops;
}
