/* GPU memory through NVML, opened with dlopen() at run time so that liblarder neither
 * links against nor needs the NVIDIA driver. See probe.h.
 *
 * Only the handful of NVML entry points and types used here are declared, with the
 * layouts of NVML's C API: every call returns an int status (0 = success), devices are
 * opaque pointers, and the memory figures are three unsigned long long in the order
 * total, free, used.
 */
#include "probe.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NVML_LIB_DEFAULT "libnvidia-ml.so.1"
#define NVML_SUCCESS 0

struct nvml_device;

struct nvml_memory {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
};

struct nvml_api {
    int (*init)(void);
    int (*shutdown)(void);
    int (*count)(unsigned int *ret_count);
    int (*handle)(unsigned int index, struct nvml_device **ret_device);
    int (*memory)(struct nvml_device *device, struct nvml_memory *ret_memory);
    int (*name)(struct nvml_device *device, char *name, unsigned int length);
};

struct larder__gpus {
    void *lib;        /* NULL when NVML is not available */
    struct nvml_api api;
    unsigned count;
};

/* Looks a function up; stores it through memcpy, as ISO C has no cast from void *. */
static int lookup(void *lib, const char *name, void *ret_fn, size_t size)
{
    void *p = dlsym(lib, name);

    if (!p || size != sizeof(p))
        return -ENOENT;
    memcpy(ret_fn, &p, size);
    return 0;
}

static int load_api(void *lib, struct nvml_api *api)
{
    if (lookup(lib, "nvmlInit_v2", &api->init, sizeof(api->init)) < 0 ||
        lookup(lib, "nvmlShutdown", &api->shutdown, sizeof(api->shutdown)) < 0 ||
        lookup(lib, "nvmlDeviceGetCount_v2", &api->count, sizeof(api->count)) < 0 ||
        lookup(lib, "nvmlDeviceGetHandleByIndex_v2", &api->handle, sizeof(api->handle)) < 0 ||
        lookup(lib, "nvmlDeviceGetMemoryInfo", &api->memory, sizeof(api->memory)) < 0 ||
        lookup(lib, "nvmlDeviceGetName", &api->name, sizeof(api->name)) < 0)
        return -ENOENT;
    return 0;
}

/* Opens and initializes NVML; leaves g->lib NULL when any step fails. */
static void start_nvml(struct larder__gpus *g, const char *lib)
{
    unsigned int n = 0;

    g->lib = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!g->lib)
        return;
    if (load_api(g->lib, &g->api) < 0 || g->api.init() != NVML_SUCCESS) {
        dlclose(g->lib);
        g->lib = NULL;
        return;
    }
    if (g->api.count(&n) == NVML_SUCCESS)
        g->count = n;
}

int larder__gpu_open(const char *lib, struct larder__gpus **ret_gpus)
{
    struct larder__gpus *g;

    if (!ret_gpus)
        return -EINVAL;
    g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    start_nvml(g, lib && *lib ? lib : NVML_LIB_DEFAULT);
    *ret_gpus = g;
    return 0;
}

unsigned larder__gpu_count(const struct larder__gpus *g)
{
    return g ? g->count : 0;
}

int larder__gpu_read(struct larder__gpus *g, unsigned index, struct larder__gpu_info *ret_info)
{
    struct larder__gpu_info info = {.index = index};
    struct nvml_device *dev = NULL;
    struct nvml_memory mem = {0};

    if (!g || !ret_info || index >= g->count)
        return -EINVAL;
    if (g->api.handle(index, &dev) != NVML_SUCCESS || g->api.memory(dev, &mem) != NVML_SUCCESS)
        return -EIO;
    if (g->api.name(dev, info.name, sizeof(info.name)) != NVML_SUCCESS)
        snprintf(info.name, sizeof(info.name), "GPU %u", index);
    info.name[sizeof(info.name) - 1] = '\0';
    info.total = mem.total;
    info.used = mem.used;
    info.free = mem.free;
    *ret_info = info;
    return 0;
}

struct larder__gpus *larder__gpu_close(struct larder__gpus *g)
{
    if (!g)
        return NULL;
    if (g->lib) {
        g->api.shutdown();
        dlclose(g->lib);
    }
    free(g);
    return NULL;
}
