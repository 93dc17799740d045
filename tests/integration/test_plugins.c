/* Test plugins for the host's checks: one speaks another ABI major, one has no entry
 * point, one returns no operations. Built only for tests/integration. */
#include <larder/backend.h>
#include <stddef.h>

#define EXPORT __attribute__((visibility("default")))

const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host);
int larder_backend_not_the_entry(void);

#if defined(PLUGIN_BAD_ABI)
static const char *const keys[] = {"path", NULL};
static int never_load(const struct larder_option *o, size_t n, void **ret, char *err, size_t len)
{
    return LARDER_BACKEND_EINTERNAL;
}
static void no_unload(void *model)
{
}
static const struct larder_backend_ops ops = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR + 1,
    .abi_minor = 0,
    .name = "badabi",
    .option_keys = keys,
    .load = never_load,
    .unload = no_unload,
};
EXPORT const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host)
{
    return &ops;
}
#elif defined(PLUGIN_NULL_OPS)
EXPORT const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host)
{
    return NULL;
}
#else
EXPORT int larder_backend_not_the_entry(void)
{
    return 0;
}
#endif
