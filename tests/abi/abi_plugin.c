/* A minimal backend plugin for the ABI tests, built in several variants (ABI_VARIANT):
 *   GOOD         a complete plugin of this header's ABI
 *   BAD_MAJOR    reports another abi_major
 *   NULL_OPS     its entry returns NULL
 *   INCOMPLETE   lacks infer
 *   HALF_POOL    has instance_new without instance_free
 *   NO_ENTRY     exports its table under another name
 *   MINOR0       a complete plugin of ABI 1.0: it knows no request field past n_params
 *   CANCELLER    ABI 1.1: its infer waits (30 s at most) for the host's cancel check to say
 *                stop, and returns LARDER_BACKEND_ECANCELED; with the query parameter
 *                `lie` it returns that code at once, unasked
 * Its operations do nothing useful: the host only opens it, and runs its infer.
 */
#include <larder/backend.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GOOD 1
#define BAD_MAJOR 2
#define NULL_OPS 3
#define INCOMPLETE 4
#define HALF_POOL 5
#define NO_ENTRY 6
#define MINOR0 7
#define CANCELLER 8

#ifndef ABI_VARIANT
#error "define ABI_VARIANT"
#endif

#define EXPORT __attribute__((visibility("default")))

static const char *const keys[] = {"path", NULL};
static int model_token;
static const struct larder_host *g_host;

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

#if ABI_VARIANT == CANCELLER
/* Waits for the host's word: 1 when it came, 0 after 30 s without it. */
static int wait_cancel(const struct larder_infer_request *req)
{
    const struct timespec tick = {.tv_nsec = 1000000};

    if (g_host->abi_minor < 1 || !g_host->cancelled)
        return 0;
    for (int i = 0; i < 30000; i++) {
        if (g_host->cancelled(req->host_ctx))
            return 1;
        nanosleep(&tick, NULL);
    }
    return 0;
}
#endif

static int abi_infer(void *model, void *instance, const struct larder_infer_request *req,
                     struct larder_infer_result *res, char *err, size_t errlen)
{
#if ABI_VARIANT == CANCELLER
    if (req->n_params && strcmp(req->params[0].key, "lie") == 0)
        return LARDER_BACKEND_ECANCELED;
    if (wait_cancel(req))
        return LARDER_BACKEND_ECANCELED;
#endif
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
    .abi_minor = ABI_VARIANT == MINOR0 ? 0 : LARDER_BACKEND_ABI_MINOR,
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
    g_host = host;
    return ABI_VARIANT == NULL_OPS ? NULL : &ops;
}
