/* Memory truth: what the process, its cgroup, the kernel's pressure figures and the
 * GPUs say about memory, read from the kernel's own files.
 *
 * Root paths: every probe that reads files takes `root`, the directory the absolute
 * paths below are resolved under. NULL or "" means "/", the running system. Tests
 * point it at small fake trees.
 *
 * Errors (all functions): -ENOENT when a file is missing, -EBADMSG when a file is
 * malformed, truncated, holds a NUL byte or lacks a required field, -ERANGE when a
 * number overflows, -EFBIG for a file over 1 MiB, -ENAMETOOLONG when root plus a path
 * does not fit PATH_MAX, -EINVAL for bad arguments, -ENOMEM, or another negated errno
 * from open()/read(). Out-parameters are left untouched on failure. Nothing here aborts
 * or prints.
 *
 * Threads: every function may be called from any thread; none keeps state between
 * calls except the pressure watcher and the GPU handle, which document their own rules.
 */
#ifndef LARDER_PROBE_H
#define LARDER_PROBE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A limit that is not set ("max" in cgroup v2, the huge default in v1). */
#define LARDER__UNLIMITED UINT64_MAX

/* ---- the process -------------------------------------------------------------------- */

struct larder__proc_mem {
    uint64_t rss;        /* VmRSS of <root>/proc/self/status, bytes */
    uint64_t hwm;        /* VmHWM: peak RSS since start or the last peak reset, bytes */
    bool has_rollup;     /* false when smaps_rollup is absent (kernels before 4.14) */
    uint64_t rollup_rss; /* Rss of <root>/proc/self/smaps_rollup, bytes */
    uint64_t pss;        /* Pss: RSS with shared pages divided among their users */
    uint64_t anon;       /* Anonymous: heap, stacks, private mappings */
};

/* Reads VmRSS and VmHWM from status, and Rss, Pss, Anonymous from smaps_rollup when
 * that file exists (a missing smaps_rollup is not an error; a malformed one is).
 * smaps_rollup walks the page tables: call it every few seconds, not per request. */
int larder__probe_proc(const char *root, struct larder__proc_mem *ret_mem);

/* Resident set of this process in bytes, from /proc/self/statm: one open, one read into
 * a stack buffer, one close. Cheap enough to call around every load and unload.
 * Returns 0 when statm cannot be read. */
uint64_t larder__rss_bytes(void);

/* Resets VmHWM of this process to its current RSS (writes "5" to
 * <root>/proc/self/clear_refs), so that a later VmHWM is the peak of what ran in
 * between. Errors: those of open()/write() (-EACCES, -EPERM where not allowed). */
int larder__peak_reset(const char *root);

/* ---- the machine ------------------------------------------------------------------- */

struct larder__meminfo {
    uint64_t total;     /* MemTotal: physical RAM, bytes */
    bool has_available; /* false on kernels without MemAvailable */
    uint64_t available; /* MemAvailable: what can be allocated without swapping */
};

/* Reads <root>/proc/meminfo. */
int larder__probe_meminfo(const char *root, struct larder__meminfo *ret_info);

/* ---- the cgroup ------------------------------------------------------------------------ */

/* Counters of memory.events (cgroup v2), cumulative since the cgroup was created. */
struct larder__cgroup_events {
    uint64_t high;     /* times usage went over memory.high (throttled) */
    uint64_t max;      /* times usage hit memory.max (reclaim forced) */
    uint64_t oom;      /* times the OOM killer was about to run */
    uint64_t oom_kill; /* processes the OOM killer killed */
};

struct larder__cgroup {
    int version;  /* 2; or 1 for the legacy memory controller */
    uint64_t current; /* bytes charged now (v2 memory.current, v1 memory.usage_in_bytes) */
    uint64_t max;     /* hard limit, LARDER__UNLIMITED when none */
    uint64_t high;    /* throttling limit, LARDER__UNLIMITED when none (always in v1) */
    /* v2: all four counters of memory.events; v1: only oom_kill, from
     * memory.oom_control (kernels since 4.13), the rest 0. false when unreadable. */
    bool has_events;
    struct larder__cgroup_events events;
};

/* Finds the directory of this process's memory cgroup: the cgroup v2 path of the
 * "0::/path" line of <root>/proc/self/cgroup under <root>/sys/fs/cgroup (or
 * <root>/sys/fs/cgroup/unified on hybrid hosts) when that directory has memory.current;
 * else the v1 "memory" controller's path under <root>/sys/fs/cgroup/memory. When the
 * path does not exist under the mount (a container that sees the host's path), the
 * mount's own directory is tried. Writes the directory into buf (len bytes) and the
 * version (2 or 1). Errors: -ENOENT when no memory cgroup is reachable, -EBADMSG for a
 * malformed /proc/self/cgroup, -ENAMETOOLONG when the path does not fit. */
int larder__cgroup_find(const char *root, char *buf, size_t len, int *ret_version);

/* Reads the memory figures of cgroup directory `dir` (as found above; not under a
 * root). v2: memory.current, memory.max, memory.high and memory.events are required.
 * v1: memory.usage_in_bytes and memory.limit_in_bytes are required; a limit of 2^62 or
 * more counts as unlimited. */
int larder__cgroup_read(const char *dir, int version, struct larder__cgroup *ret_cg);

/* larder__cgroup_find() then larder__cgroup_read(). */
int larder__probe_cgroup(const char *root, struct larder__cgroup *ret_cg);

/* Where a memory limit comes from. */
enum larder__limit_source {
    LARDER__LIMIT_RAM = 1, /* MemTotal: no cgroup limit, or one above physical RAM */
    LARDER__LIMIT_CGROUP,  /* the cgroup's memory.max or memory.high, the lower */
};

/* The memory this process may use: the lowest of the cgroup's memory.max and
 * memory.high (when set) and MemTotal. ret_source may be NULL. An unreadable cgroup
 * is not an error (RAM is used); an unreadable meminfo is. */
int larder__memory_limit(const char *root, uint64_t *ret_limit,
                         enum larder__limit_source *ret_source);

/* Default budget: fraction x larder__memory_limit(), rounded down. fraction must be in
 * (0, 1]. Errors: -EINVAL for a fraction out of range, and those of
 * larder__memory_limit(). */
int larder__default_budget(const char *root, double fraction, uint64_t *ret_bytes);

/* ---- pressure stall information (PSI) ------------------------------------------------ */

struct larder__psi_line {
    double avg10;      /* % of wall time stalled, averaged over 10 s */
    double avg60;
    double avg300;
    uint64_t total_us; /* total stall time, microseconds */
};

struct larder__psi {
    struct larder__psi_line some; /* at least one task stalled on memory */
    struct larder__psi_line full; /* every non-idle task stalled at once */
};

/* Reads <root>/proc/pressure/memory. -ENOENT on kernels without PSI; -EOPNOTSUPP when
 * the kernel has PSI but it is disabled (psi=0 on the command line). */
int larder__probe_psi(const char *root, struct larder__psi *ret_psi);

/* Same, for any file in that format: a cgroup's memory.pressure, for instance. */
int larder__psi_read(const char *path, struct larder__psi *ret_psi);

/* ---- pressure watcher ----------------------------------------------------------------- */

/* Which sources a watcher listens to, and which of them fired. */
enum {
    LARDER__PRESSURE_PSI = 1u << 0,    /* a PSI trigger fired */
    LARDER__PRESSURE_EVENTS = 1u << 1, /* a counter of memory.events grew */
};

/* Figures handed to the callback, read right after the wake-up. */
struct larder__pressure {
    unsigned fired;     /* LARDER__PRESSURE_* sources that woke the watcher this time */
    bool has_psi;       /* psi holds the watched PSI file's figures */
    struct larder__psi psi;
    bool has_cgroup;    /* cgroup holds the watched cgroup's figures */
    struct larder__cgroup cgroup;
    /* Growth of the memory.events counters since the previous callback (or the start). */
    struct larder__cgroup_events delta;
};

/* Called on the watcher's thread, once per wake-up with something new. It must not
 * stop its own watcher; it may call anything else (evict, log, publish an event). */
typedef void (*larder__pressure_fn)(void *ud, const struct larder__pressure *p);

struct larder__pressure_opts {
    const char *root;    /* for the default paths; NULL or "" = "/" */
    /* PSI trigger: "some|full STALL_US WINDOW_US"; NULL = "some 150000 1000000" (150 ms
     * stalled within 1 s). The kernel refuses windows that are not multiples of 2 s from
     * processes without CAP_SYS_RESOURCE; the watcher then retries once with the window
     * rounded up to such a multiple and the stall scaled in proportion. */
    const char *trigger;
    /* PSI file; NULL = <root>/proc/pressure/memory; "" = do not watch PSI. A cgroup's
     * memory.pressure works too. Must be a proc or cgroup2 file: anything else is
     * refused with -EOPNOTSUPP, so a trigger is never written into an ordinary file. */
    const char *psi_path;
    /* cgroup v2 memory.events; NULL = the one of this process's cgroup (none on a v1
     * host); "" = do not watch. The figures in the callback come from its directory. */
    const char *events_path;
    larder__pressure_fn cb; /* required */
    void *ud;
};

struct larder__pressure_watch;

/* Opens the sources, registers the PSI trigger and starts the watcher thread, which
 * blocks in poll() on the sources and a wake-up eventfd: no timers, no polling loop.
 * Returns the LARDER__PRESSURE_* mask of the sources it listens to (> 0) when at least
 * one could be opened; a source that fails is left out (see _psi_error()). When none
 * can: the PSI error when PSI was asked for (-ENOENT no PSI, -EINVAL trigger refused or
 * malformed, -EACCES/-EPERM not allowed, -EOPNOTSUPP not a PSI file), else the
 * memory.events error; the caller then runs without pressure notifications.
 * Other errors: -EINVAL (no callback), -ENOMEM, -EAGAIN (thread). */
int larder__pressure_watch_start(const struct larder__pressure_opts *opts,
                                 struct larder__pressure_watch **ret_watch);

/* Stops the thread (wakes it through the eventfd and joins it), removes the trigger and
 * frees the watcher. When it returns, the callback is not running and will not run.
 * Accepts NULL. Returns NULL. Must not be called from the callback. */
struct larder__pressure_watch *larder__pressure_watch_stop(struct larder__pressure_watch *w);

/* Why PSI is not watched: 0 when it is (or was not asked for), else the error. */
int larder__pressure_watch_psi_error(const struct larder__pressure_watch *w);

/* The trigger the kernel accepted ("" when PSI is not watched). Valid until stop. */
const char *larder__pressure_watch_trigger(const struct larder__pressure_watch *w);

/* Number of callbacks made so far. Any thread. */
uint64_t larder__pressure_watch_fired(const struct larder__pressure_watch *w);

/* One line for logs and events: "psi some avg10=12.50 full avg10=3.10; cgroup
 * 480.0 MiB of 512.0 MiB, +2 high, +1 oom_kill". Always NUL-terminates (len > 0).
 * Returns the length it wanted, as snprintf. */
int larder__pressure_summary(const struct larder__pressure *p, char *buf, size_t len);

/* ---- GPUs (NVML, opened at run time) ---------------------------------------------------- */

struct larder__gpu_info {
    unsigned index;
    char name[96];
    uint64_t total; /* bytes */
    uint64_t used;
    uint64_t free;
};

struct larder__gpus;

/* dlopen()s NVML (lib: NULL = "libnvidia-ml.so.1") and initializes it. No library, no
 * driver or no device is not an error: the handle then reports zero GPUs. Errors:
 * -EINVAL (ret_gpus NULL), -ENOMEM. The handle may be used from any thread. */
int larder__gpu_open(const char *lib, struct larder__gpus **ret_gpus);

/* Number of GPUs seen at open. 0 for NULL. */
unsigned larder__gpu_count(const struct larder__gpus *g);

/* Current figures of GPU `index`. Errors: -EINVAL (index out of range, NULL), -EIO
 * (NVML failed: the device fell off the bus, the driver went away). */
int larder__gpu_read(struct larder__gpus *g, unsigned index, struct larder__gpu_info *ret_info);

/* Device memory that the processes `pids` (n of them) hold on GPU `index`, summed, from
 * NVML's per-process lists (compute and graphics; a process on both counted once). A
 * listed pid that NVML does not list holds nothing there. Errors: -EINVAL (index out of
 * range, NULL), -ENOTSUP (this NVML has no per-process lists), -ENODATA (the driver
 * withholds a listed process's figure), -EIO (NVML failed), -ENOMEM. */
int larder__gpu_process_bytes(struct larder__gpus *g, unsigned index, const int *pids, size_t n,
                              uint64_t *ret_bytes);

/* Shuts NVML down and dlclose()s it. Accepts NULL. Returns NULL. */
struct larder__gpus *larder__gpu_close(struct larder__gpus *g);

/* ---- sizes and budgets (units.c) -------------------------------------------------------- */

/* A budget: either a size (larder_parse_size()) or a percentage of `limit` ("75%",
 * "12.5 %"), rounded down. Errors: -EINVAL (garbage; a percentage with limit 0),
 * -ERANGE (overflow, a percentage above 100). */
int larder__parse_budget(const char *s, uint64_t limit, uint64_t *ret);

#endif
