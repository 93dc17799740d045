/* A stand-in for libnvidia-ml.so.1 with two devices, for test_gpu: the real library is
 * tested on machines that have one. Environment knobs:
 *   FAKE_NVML_INIT_FAIL=1    nvmlInit_v2 fails as with no driver loaded
 *   FAKE_NVML_MEMORY_FAIL=1  nvmlDeviceGetMemoryInfo fails (a GPU fell off the bus)
 *   FAKE_NVML_PROCS=PATH     the per-process lists, read at every call: one process a
 *                            line, "PID GPU BYTES [compute|graphics|both]" (compute by
 *                            default); BYTES "na" is NVML's "not available"
 * Built with -DFAKE_NVML_NO_PROCS it has no per-process entry points at all, as an NVML
 * older than they are.
 * Counts calls so the test can check that init and shutdown pair up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

struct nvml_device {
    const char *name;
    unsigned long long total;
    unsigned long long used;
};

struct nvml_memory {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
};

static struct nvml_device devices[2] = {
    {"Fake H100 80GB HBM3", 85520809984ull, 1048576000ull},
    {"Fake L4", 24152899584ull, 0},
};
static int inits;

static int knob(const char *name)
{
    const char *v = getenv(name);
    return v && strcmp(v, "1") == 0;
}

EXPORT int fake_nvml_inits(void);
EXPORT int nvmlInit_v2(void);
EXPORT int nvmlShutdown(void);
EXPORT int nvmlDeviceGetCount_v2(unsigned int *ret_count);
EXPORT int nvmlDeviceGetHandleByIndex_v2(unsigned int index, struct nvml_device **ret_device);
EXPORT int nvmlDeviceGetMemoryInfo(struct nvml_device *device, struct nvml_memory *ret_memory);
EXPORT int nvmlDeviceGetName(struct nvml_device *device, char *name, unsigned int length);

int fake_nvml_inits(void)
{
    return inits;
}

int nvmlInit_v2(void)
{
    if (knob("FAKE_NVML_INIT_FAIL"))
        return 9; /* NVML_ERROR_DRIVER_NOT_LOADED */
    inits++;
    return 0;
}

int nvmlShutdown(void)
{
    inits--;
    return 0;
}

int nvmlDeviceGetCount_v2(unsigned int *ret_count)
{
    *ret_count = 2;
    return 0;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, struct nvml_device **ret_device)
{
    if (index >= 2)
        return 2; /* NVML_ERROR_INVALID_ARGUMENT */
    *ret_device = &devices[index];
    return 0;
}

int nvmlDeviceGetMemoryInfo(struct nvml_device *device, struct nvml_memory *ret_memory)
{
    if (knob("FAKE_NVML_MEMORY_FAIL"))
        return 15; /* NVML_ERROR_GPU_IS_LOST */
    ret_memory->total = device->total;
    ret_memory->used = device->used;
    ret_memory->free = device->total - device->used;
    return 0;
}

int nvmlDeviceGetName(struct nvml_device *device, char *name, unsigned int length)
{
    size_t n = strlen(device->name);
    if (n + 1 > length)
        return 7; /* NVML_ERROR_INSUFFICIENT_SIZE */
    memcpy(name, device->name, n + 1);
    return 0;
}

#ifndef FAKE_NVML_NO_PROCS
struct nvml_process_v2 {
    unsigned int pid;
    unsigned long long used;
    unsigned int gpu_instance;
    unsigned int compute_instance;
};

EXPORT int nvmlDeviceGetComputeRunningProcesses_v2(struct nvml_device *device,
                                                   unsigned int *count,
                                                   struct nvml_process_v2 *infos);
EXPORT int nvmlDeviceGetGraphicsRunningProcesses_v2(struct nvml_device *device,
                                                    unsigned int *count,
                                                    struct nvml_process_v2 *infos);

/* The lines of FAKE_NVML_PROCS for this device and list, as NVML fills them: *count in,
 * the room; out, how many there are (INSUFFICIENT_SIZE when they do not fit). */
static int list(struct nvml_device *device, int graphics, unsigned int *count,
                struct nvml_process_v2 *infos)
{
    const char *path = getenv("FAKE_NVML_PROCS");
    FILE *f = path ? fopen(path, "r") : NULL;
    unsigned int n = 0, room = *count;
    char line[256];

    while (f && fgets(line, sizeof line, f)) {
        unsigned int pid, gpu;
        char bytes[32], kind[16] = "compute";
        if (sscanf(line, "%u %u %31s %15s", &pid, &gpu, bytes, kind) < 3 || gpu >= 2 ||
            &devices[gpu] != device)
            continue;
        if (strcmp(kind, "both") != 0 && (strcmp(kind, "graphics") == 0) != graphics)
            continue;
        if (n < room && infos) {
            infos[n].pid = pid;
            infos[n].used = strcmp(bytes, "na") == 0 ? ~0ull : strtoull(bytes, NULL, 10);
            infos[n].gpu_instance = infos[n].compute_instance = ~0u;
        }
        n++;
    }
    if (f)
        fclose(f);
    *count = n;
    return n > room || (n && !infos) ? 7 /* NVML_ERROR_INSUFFICIENT_SIZE */ : 0;
}

int nvmlDeviceGetComputeRunningProcesses_v2(struct nvml_device *device, unsigned int *count,
                                            struct nvml_process_v2 *infos)
{
    return list(device, 0, count, infos);
}

int nvmlDeviceGetGraphicsRunningProcesses_v2(struct nvml_device *device, unsigned int *count,
                                             struct nvml_process_v2 *infos)
{
    return list(device, 1, count, infos);
}
#endif
