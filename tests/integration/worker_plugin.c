/* larder-workertest.so: a backend for the worker tests, doing on purpose what a worker
 * process must survive or contain. Pooled (an instance per request). Its infer reads the
 * body as a command:
 *   "crash"          dereferences NULL (SIGSEGV);
 *   "hang"           never returns and ignores the host's cancel check;
 *   "slow"           waits until the file <marks>/go exists or the host cancels, after
 *                    creating <marks>/slow-running;
 *   "stream N"       emits N pieces {"piece":i} through host->emit, then returns
 *                    {"pieces":N};
 *   "reserve N"      asks the host for N bytes of request memory;
 *   anything else    {"echo": body, "pid": the process id}.
 * Options: hang_load = yes (its load never returns), marks = DIR (where the marks go;
 * the load also writes DIR/<pid>.load there), ballast = BYTES (allocated and touched at
 * load, so that the process's memory is visibly larger).
 */
#include <larder/backend.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const struct larder_host *host;

struct model {
    char marks[512];
    char *ballast;
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static const char *opt(const struct larder_option *o, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(o[i].key, key) == 0)
            return o[i].value;
    return NULL;
}

static void touch(const struct model *m, const char *name)
{
    char path[600];
    if (!m->marks[0])
        return;
    snprintf(path, sizeof path, "%s/%s", m->marks, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
}

static bool exists(const struct model *m, const char *name)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", m->marks, name);
    return access(path, F_OK) == 0;
}

/* A NULL dereference, the real fault (not a sanitizer's report of it). */
__attribute__((no_sanitize("undefined"), noinline)) static int deref_null(void)
{
    volatile int *null = NULL;
    return *null;
}

static int wt_check(const struct larder_option *o, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(o[i].key, "hang_load") && strcmp(o[i].key, "marks") &&
            strcmp(o[i].key, "ballast")) {
            snprintf(err, errlen, "unknown key %s", o[i].key);
            return LARDER_BACKEND_EOPTION;
        }
    return 0;
}

static int wt_load(const struct larder_option *o, size_t n, void **ret, char *err,
                   size_t errlen)
{
    struct model *m = calloc(1, sizeof *m);
    if (!m)
        return LARDER_BACKEND_ENOMEM;
    const char *marks = opt(o, n, "marks");
    snprintf(m->marks, sizeof m->marks, "%s", marks ? marks : "");
    char name[64];
    snprintf(name, sizeof name, "%d.load", (int)getpid());
    touch(m, name);
    const char *hang = opt(o, n, "hang_load");
    if (hang && strcmp(hang, "yes") == 0)
        for (;;)
            sleep_ms(1000);
    const char *ballast = opt(o, n, "ballast");
    size_t b = ballast ? strtoull(ballast, NULL, 10) : 0;
    if (b) {
        m->ballast = malloc(b);
        if (m->ballast)
            memset(m->ballast, 0x5a, b);
    }
    *ret = m;
    return 0;
}

static void wt_unload(void *model)
{
    struct model *m = model;
    free(m->ballast);
    free(m);
}

static int wt_instance_new(void *model, void **ret, char *err, size_t errlen)
{
    *ret = malloc(1);
    return *ret ? 0 : LARDER_BACKEND_ENOMEM;
}

static void wt_instance_free(void *model, void *inst)
{
    free(inst);
}

static int wt_infer(void *model, void *inst, const struct larder_infer_request *req,
                    struct larder_infer_result *res, char *err, size_t errlen)
{
    struct model *m = model;
    char body[256];
    size_t len = req->body_len < sizeof body - 1 ? req->body_len : sizeof body - 1;
    memcpy(body, req->body, len);
    body[len] = 0;
    if (strcmp(body, "crash") == 0)
        return deref_null();
    if (strcmp(body, "hang") == 0)
        for (;;)
            sleep_ms(1000);
    if (strcmp(body, "slow") == 0) {
        touch(m, "slow-running");
        while (!exists(m, "go")) {
            if (host->cancelled && host->cancelled(req->host_ctx))
                return LARDER_BACKEND_ECANCELED;
            sleep_ms(5);
        }
        res->json = strdup("{\"slow\":\"done\"}");
        return 0;
    }
    unsigned long k;
    if (sscanf(body, "stream %lu", &k) == 1) {
        for (unsigned long i = 0; i < k && req->stream; i++) {
            char piece[64];
            int pl = snprintf(piece, sizeof piece, "{\"piece\":%lu}", i);
            if (host->emit(req->host_ctx, piece, (size_t)pl) < 0)
                return LARDER_BACKEND_ECANCELED;
        }
        char out[64];
        snprintf(out, sizeof out, "{\"pieces\":%lu}", k);
        res->json = strdup(out);
        return 0;
    }
    if (sscanf(body, "reserve %lu", &k) == 1) {
        if (host->reserve_request_bytes(req->host_ctx, k) < 0)
            return LARDER_BACKEND_ETOOBIG;
        res->json = strdup("{\"reserved\":true}");
        return 0;
    }
    char out[512];
    snprintf(out, sizeof out, "{\"echo\":\"%s\",\"pid\":%d}", strspn(body, "abcdefghijklmnopqrstuvwxyz ") == len ? body : "?",
             (int)getpid());
    res->json = strdup(out);
    return res->json ? 0 : LARDER_BACKEND_ENOMEM;
}

static void wt_result_free(struct larder_infer_result *res)
{
    free(res->json);
    free(res->bytes);
    free(res->content_type);
}

static const char *const wt_keys[] = {"hang_load", "marks", "ballast", NULL};

static const struct larder_backend_ops wt_ops = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .name = "workertest",
    .description = "a backend that crashes, hangs and streams on request",
    .option_keys = wt_keys,
    .check = wt_check,
    .load = wt_load,
    .unload = wt_unload,
    .instance_new = wt_instance_new,
    .instance_free = wt_instance_free,
    .infer = wt_infer,
    .result_free = wt_result_free,
};

const struct larder_backend_ops *larder_backend_entry(const struct larder_host *h);

__attribute__((visibility("default"))) const struct larder_backend_ops *
larder_backend_entry(const struct larder_host *h)
{
    host = h;
    return &wt_ops;
}
