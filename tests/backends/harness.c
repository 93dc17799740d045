/* Shared helpers of the backend plugin tests (see harness.h). */
#include "harness.h"

#include <stdarg.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <dlfcn.h>

static atomic_uint log_counts[4];

static void host_log(enum larder_log_level level, const char *backend, const char *msg)
{
    assert_non_null(backend);
    assert_non_null(msg);
    if ((unsigned)level < 4)
        atomic_fetch_add(&log_counts[level], 1);
}

static uint64_t host_rss(void)
{
    return harness_rss();
}

/* The request context harness_infer hands the plugin (ABI minor 1). */
struct harness_ctx {
    unsigned checks;
    json_t *pieces;      /* streamed pieces (ABI minor 2), when streaming */
    unsigned refuse_at;  /* emit refuses from this piece on (0: never) */
};

static atomic_uint cancel_at, last_checks;
static atomic_ullong reserved, reserve_limit;

static int host_cancelled(void *host_ctx)
{
    struct harness_ctx *c = host_ctx;
    if (!c)
        return 0; /* a request a test built itself */
    c->checks++;
    unsigned at = atomic_load(&cancel_at);
    return at && c->checks >= at;
}

static int host_reserve(void *host_ctx, uint64_t bytes)
{
    unsigned long long limit = atomic_load(&reserve_limit);
    (void)host_ctx;
    if (limit && atomic_load(&reserved) + bytes > limit)
        return -1;
    atomic_fetch_add(&reserved, bytes);
    return 0;
}

static int host_emit(void *host_ctx, const char *json, size_t len)
{
    struct harness_ctx *c = host_ctx;
    json_t *piece;

    assert_non_null(c);
    assert_non_null(c->pieces);
    if (c->refuse_at && json_array_size(c->pieces) + 1 >= c->refuse_at)
        return -1;
    piece = json_loadb(json, len, 0, NULL);
    if (!json_is_object(piece))
        fail_msg("streamed piece is not a JSON object: %.*s", (int)len, json);
    json_array_append_new(c->pieces, piece);
    return 0;
}

const struct larder_host harness_host = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .log = host_log,
    .rss_bytes = host_rss,
    .cancelled = host_cancelled,
    .reserve_request_bytes = host_reserve,
    .emit = host_emit,
};

unsigned harness_last_checks(void)
{
    return atomic_load(&last_checks);
}

void harness_cancel_at(unsigned check)
{
    atomic_store(&cancel_at, check);
}

uint64_t harness_reserved(uint64_t limit)
{
    atomic_store(&reserve_limit, limit);
    return atomic_exchange(&reserved, 0);
}

unsigned harness_log_count(enum larder_log_level level)
{
    return atomic_load(&log_counts[level & 3]);
}

static larder_backend_entry_fn find_entry(const char *env_var, const char *path)
{
    larder_backend_entry_fn entry;
    void *so;

    if (env_var)
        path = getenv(env_var);
    if (!path)
        fail_msg("%s is not set: run the test through meson test", env_var);
    so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!so)
        fail_msg("dlopen %s: %s", path, dlerror());
    *(void **)&entry = dlsym(so, LARDER_BACKEND_ENTRY);
    assert_non_null(entry);
    return entry;
}

const struct larder_backend_ops *harness_open(const char *env_var, const char *path)
{
    const struct larder_backend_ops *ops = find_entry(env_var, path)(&harness_host);

    assert_non_null(ops);
    assert_int_equal(ops->abi_major, LARDER_BACKEND_ABI_MAJOR);
    assert_true(ops->abi_minor <= LARDER_BACKEND_ABI_MINOR);
    assert_non_null(ops->name);
    assert_non_null(ops->description);
    assert_non_null(ops->option_keys);
    assert_non_null(ops->check);
    assert_non_null(ops->load);
    assert_non_null(ops->unload);
    assert_non_null(ops->infer);
    assert_non_null(ops->result_free);
    assert_true((ops->instance_new == NULL) == (ops->instance_free == NULL));
    return ops;
}

const struct larder_backend_ops *harness_entry_with_major(const char *env_var,
                                                          uint32_t abi_major)
{
    struct larder_host other = harness_host;
    larder_backend_entry_fn entry = find_entry(env_var, NULL);
    const struct larder_backend_ops *ops;

    other.abi_major = abi_major;
    ops = entry(&other);
    entry(&harness_host); /* back to the real host table for later tests */
    return ops;
}

void *harness_read_example(const char *name, size_t *ret_len)
{
    const char *dir = getenv("LARDER_EXAMPLES");
    char path[4096];
    FILE *f;
    long len;
    void *buf;

    if (name[0] == '/')
        snprintf(path, sizeof(path), "%s", name);
    else if (!dir)
        fail_msg("LARDER_EXAMPLES is not set: run the test through meson test");
    else
        snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    len = ftell(f);
    assert_true(len > 0);
    rewind(f);
    buf = malloc((size_t)len);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *ret_len = (size_t)len;
    return buf;
}

bool harness_has_option(const struct larder_backend_ops *ops, const char *key)
{
    for (size_t i = 0; ops->option_keys[i]; i++)
        if (strcmp(ops->option_keys[i], key) == 0)
            return true;
    return false;
}

static int infer_ctx(const struct larder_backend_ops *ops, void *model, void *instance,
                     const void *body, size_t len, const char *content_type,
                     const struct larder_option *params, size_t n_params,
                     struct harness_ctx *ctx_in, json_t **ret_reply)
{
    struct larder_infer_request req = {.body = body, .body_len = len,
                                       .content_type = content_type, .params = params,
                                       .n_params = n_params, .stream = ctx_in->pieces != NULL};
    struct harness_ctx ctx = *ctx_in;
    struct larder_infer_result res;
    char err[512] = "";
    json_error_t jerr;
    int rc;

    req.host_ctx = &ctx;
    memset(&res, 0x5A, sizeof(res)); /* the plugin must fill every field */
    *ret_reply = NULL;
    rc = ops->infer(model, instance, &req, &res, err, sizeof(err));
    atomic_store(&last_checks, ctx.checks);
    if (rc < 0) {
        if (err[0] == '\0')
            fail_msg("infer failed with %d and no message", rc);
        return rc;
    }
    assert_non_null(res.json);
    assert_null(res.bytes);
    assert_null(res.content_type);
    *ret_reply = json_loads(res.json, 0, &jerr);
    if (!*ret_reply || !json_is_object(*ret_reply))
        fail_msg("reply is not a JSON object: %s (%s)", res.json, jerr.text);
    ops->result_free(&res);
    assert_null(res.json);
    return rc;
}

int harness_infer_params(const struct larder_backend_ops *ops, void *model, void *instance,
                         const void *body, size_t len, const char *content_type,
                         const struct larder_option *params, size_t n_params,
                         json_t **ret_reply)
{
    struct harness_ctx ctx = {0};

    return infer_ctx(ops, model, instance, body, len, content_type, params, n_params, &ctx,
                     ret_reply);
}

int harness_infer_stream(const struct larder_backend_ops *ops, void *model, void *instance,
                         const char *body, unsigned refuse_at, json_t **ret_reply,
                         json_t **ret_pieces)
{
    struct harness_ctx ctx = {.pieces = json_array(), .refuse_at = refuse_at};

    *ret_pieces = ctx.pieces;
    return infer_ctx(ops, model, instance, body, strlen(body), "application/json", NULL, 0,
                     &ctx, ret_reply);
}

int harness_infer(const struct larder_backend_ops *ops, void *model, void *instance,
                  const void *body, size_t len, const char *content_type, json_t **ret_reply)
{
    return harness_infer_params(ops, model, instance, body, len, content_type, NULL, 0,
                                ret_reply);
}

void *harness_load(const struct larder_backend_ops *ops, const struct larder_option *opts,
                   size_t n)
{
    char err[512] = "";
    void *model = NULL;
    int rc = ops->load(opts, n, &model, err, sizeof(err));

    if (rc < 0)
        fail_msg("load failed: %d: %s", rc, err);
    return model;
}

int harness_check(const struct larder_backend_ops *ops, const struct larder_option *opts,
                  size_t n)
{
    char err[512] = "";
    int rc = ops->check(opts, n, err, sizeof(err));

    if (rc < 0 && err[0] == '\0')
        fail_msg("check failed with %d and no message", rc);
    return rc;
}

uint64_t harness_rss(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

unsigned char *harness_noise(size_t count, uint64_t seed)
{
    unsigned char *p = malloc(count ? count : 1);

    assert_non_null(p);
    for (size_t i = 0; i < count; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = (unsigned char)(seed >> 56);
    }
    return p;
}
