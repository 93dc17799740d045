/* GPU memory through NVML, opened with dlopen() at run time so that liblarder neither
 * links against nor needs the NVIDIA driver. See probe.h.
 *
 * Only the handful of NVML entry points and types used here are declared, with the
 * layouts of NVML's C API: every call returns an int status (0 = success), devices are
 * opaque pointers, and the memory figures are three unsigned long long in the order
 * total, free, used.
 *
 * Per-process figures come from nvmlDeviceGet{Compute,Graphics}RunningProcesses_v2 (or the
 * unversioned v1 where _v2 is missing). Their records are {pid, usedGpuMemory,
 * gpuInstanceId, computeInstanceId} (v2, 24 bytes) and {pid, usedGpuMemory} (v1, 16
 * bytes). The _v3 entry points are left alone: drivers changed the size of their records
 * without renaming them, so a caller cannot know the stride.
 */
#include "probe.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
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
    /* per-process lists: NULL when this NVML lacks them */
    int (*procs[2])(struct nvml_device *device, unsigned int *count, void *infos);
    size_t proc_stride; /* bytes per record of procs[] */
};

struct nvml_process_v1 {
    unsigned int pid;
    unsigned long long used;
};

struct nvml_process_v2 {
    unsigned int pid;
    unsigned long long used;
    unsigned int gpu_instance;
    unsigned int compute_instance;
};

#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_VALUE_NOT_AVAILABLE (~0ull)

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
    /* optional: without them per-process figures are unknown */
    static const char *const v2[2] = {"nvmlDeviceGetComputeRunningProcesses_v2",
                                      "nvmlDeviceGetGraphicsRunningProcesses_v2"};
    static const char *const v1[2] = {"nvmlDeviceGetComputeRunningProcesses",
                                      "nvmlDeviceGetGraphicsRunningProcesses"};
    for (int i = 0; i < 2; i++) {
        if (lookup(lib, v2[i], &api->procs[i], sizeof(api->procs[i])) == 0) {
            api->proc_stride = sizeof(struct nvml_process_v2);
            continue;
        }
        api->procs[i] = NULL;
    }
    if (!api->procs[0] && !api->procs[1]) {
        for (int i = 0; i < 2; i++)
            if (lookup(lib, v1[i], &api->procs[i], sizeof(api->procs[i])) < 0)
                api->procs[i] = NULL;
        api->proc_stride = sizeof(struct nvml_process_v1);
    }
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

/* The records of one list into *ret_buf (malloc'ed), their number into *ret_n. */
static int read_procs(struct larder__gpus *g, int which, struct nvml_device *dev,
                      unsigned char **ret_buf, unsigned *ret_n)
{
    unsigned int n = 0;
    int rc = g->api.procs[which](dev, &n, NULL);

    for (int tries = 0; tries < 4; tries++) {
        if (rc == NVML_SUCCESS && n == 0) {
            *ret_buf = NULL;
            *ret_n = 0;
            return 0;
        }
        if (rc != NVML_SUCCESS && rc != NVML_ERROR_INSUFFICIENT_SIZE)
            return -EIO;
        /* room for processes that start between the two calls */
        unsigned int cap = n + 8;
        unsigned char *buf = calloc(cap, g->api.proc_stride);
        if (!buf)
            return -ENOMEM;
        n = cap;
        rc = g->api.procs[which](dev, &n, buf);
        if (rc == NVML_SUCCESS) {
            *ret_buf = buf;
            *ret_n = n < cap ? n : cap;
            return 0;
        }
        free(buf);
    }
    return -EIO;
}

static bool listed(const int *pids, size_t n, unsigned int pid)
{
    for (size_t i = 0; i < n; i++)
        if (pids[i] >= 0 && (unsigned int)pids[i] == pid)
            return true;
    return false;
}

int larder__gpu_process_bytes(struct larder__gpus *g, unsigned index, const int *pids, size_t n,
                              uint64_t *ret_bytes)
{
    struct nvml_device *dev = NULL;
    unsigned char *bufs[2] = {NULL, NULL};
    unsigned counts[2] = {0, 0};
    uint64_t sum = 0;
    int rc = 0;

    if (!g || !ret_bytes || (n && !pids) || index >= g->count)
        return -EINVAL;
    if (!g->api.procs[0] && !g->api.procs[1])
        return -ENOTSUP;
    if (g->api.handle(index, &dev) != NVML_SUCCESS)
        return -EIO;
    for (int w = 0; w < 2 && rc == 0; w++)
        if (g->api.procs[w])
            rc = read_procs(g, w, dev, &bufs[w], &counts[w]);
    /* a process in both lists (CUDA and graphics) holds one set of memory: counted once */
    for (int w = 0; w < 2 && rc == 0; w++)
        for (unsigned i = 0; i < counts[w]; i++) {
            struct nvml_process_v1 p;
            memcpy(&p, bufs[w] + (size_t)i * g->api.proc_stride, sizeof(p));
            bool dup = false;
            for (unsigned j = 0; w == 1 && j < counts[0] && !dup; j++) {
                struct nvml_process_v1 q;
                memcpy(&q, bufs[0] + (size_t)j * g->api.proc_stride, sizeof(q));
                dup = q.pid == p.pid;
            }
            if (dup || !listed(pids, n, p.pid))
                continue;
            if (p.used == NVML_VALUE_NOT_AVAILABLE) {
                rc = -ENODATA; /* the driver withholds it (no rights, MIG, WDDM) */
                break;
            }
            sum += p.used;
        }
    free(bufs[0]);
    free(bufs[1]);
    if (rc == 0)
        *ret_bytes = sum;
    return rc;
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
