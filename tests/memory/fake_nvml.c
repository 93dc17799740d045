/* A stand-in for libnvidia-ml.so.1 with two devices, for test_gpu: the real library is
 * tested on machines that have one. Environment knobs:
 *   FAKE_NVML_INIT_FAIL=1    nvmlInit_v2 fails as with no driver loaded
 *   FAKE_NVML_MEMORY_FAIL=1  nvmlDeviceGetMemoryInfo fails (a GPU fell off the bus)
 * Counts calls so the test can check that init and shutdown pair up. */
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
