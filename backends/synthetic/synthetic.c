/* larder backend: synthetic, a deterministic stand-in model for tests and benchmarks.
 *
 * It does what a real backend does, with every cost chosen by its options: load sleeps
 * and really allocates (and touches) memory, requests sleep, loads fail on demand. It
 * sits beside the real backends; larderd's integration tests and the benchmarks use it.
 *
 * Built twice from this file:
 *   larder-synthetic.so         shared model, no instances: requests share the model
 *   larder-synthetic-pooled.so  one instance per concurrent request (instance_new set)
 *
 * Options (sizes: "123", "64MiB", "1.5G", "100kB"; k/M/G/T and KiB.. = 1024^n, kB.. = 1000^n):
 *   size           bytes the model allocates and touches; default 1MiB
 *   instance_size  bytes each instance allocates and touches (pooled); default 64KiB
 *   load_ms        load sleeps this long; default 0
 *   instance_ms    instance_new sleeps this long (pooled); default 0
 *   infer_ms       each request waits this long; default 0. The wait stops early, with
 *                  LARDER_BACKEND_ECANCELED, when the host cancels the request
 *   fail           "never" (default), "always", or "first-N": the first N loads of the
 *                  models with this label in this process fail, later ones succeed
 *   pooled         "yes" for synthetic-pooled, "no" for synthetic: a check that the
 *                  config names the backend it means
 *   label          a name echoed in replies; default "synthetic"
 *   path           a file read into the model's memory at load, like weights; its size
 *                  is the default size
 *   leak           "yes": unload never frees the model's memory, as a backend that leaks
 *                  would (its RSS is not returned); default "no"
 *
 * Request: any body, any content type. Query parameters: `sleep_ms=N` replaces infer_ms,
 * `error=input|media|internal` makes the request fail with that error.
 * Reply: {"echo": <body length>, "model": "<label>"}, plus "instance": <serial number of
 * the instance> for the pooled variant.
 *
 * Self-checks: the pooled variant fails a request with LARDER_BACKEND_EINTERNAL when its
 * instance is already serving another request, or when it gets no instance; both mean the
 * host broke the ABI's contract.
 */
#include <larder/backend.h>

#include "../common/plugin-util.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#ifdef SYNTHETIC_POOLED
#define BACKEND_NAME "synthetic-pooled"
#define POOLED true
#else
#define BACKEND_NAME "synthetic"
#define POOLED false
#endif

#define DEFAULT_SIZE (1ULL << 20)
#define DEFAULT_INSTANCE_SIZE (64ULL << 10)
#define DEFAULT_LABEL "synthetic"
#define MAX_MS (3600 * 1000ULL)
#define MAX_LABELS 256

struct config {
    char path[4096];      /* "" when none */
    uint64_t size;
    uint64_t instance_size;
    unsigned long long load_ms;
    unsigned long long instance_ms;
    unsigned long long infer_ms;
    long long fail_first; /* -1 never, LLONG_MAX always, else N */
    char label[64];
    bool leak;            /* unload keeps the model's memory */
};

struct model {
    struct config cfg;
    unsigned char *mem;
    atomic_uint next_instance;
};

struct instance {
    unsigned serial;
    atomic_bool busy;
    unsigned char *mem;
};

/* Load attempts per label, for fail = first-N. */
struct fail_counter {
    char label[64];
    unsigned long long loads;
};

static const struct larder_host *g_host;
static pthread_mutex_t g_fail_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fail_counter g_fail[MAX_LABELS];
static size_t g_n_fail;

static const char *const option_keys[] = {
    "size", "instance_size", "load_ms", "instance_ms", "infer_ms", "fail", "pooled", "label",
    "path", "leak", NULL};

/* ---- small helpers -------------------------------------------------------------------- */

/* Multiplier of a size unit: "", "B", k/M/G/T (1024^n, optional "iB"), kB/MB/.. (1000^n). */
static bool unit_multiplier(const char *u, double *ret)
{
    static const char prefixes[] = "kmgt";
    const char *at = *u ? strchr(prefixes, tolower((unsigned char)*u)) : NULL;
    double base = 1024.0;

    if (!at) {
        *ret = 1.0;
        return *u == '\0' || ((*u == 'b' || *u == 'B') && u[1] == '\0');
    }
    u++;
    if ((*u == 'b' || *u == 'B') && u[1] == '\0')
        base = 1000.0;
    else if (!(*u == '\0' || ((*u == 'i' || *u == 'I') && (u[1] == '\0' ||
                                                          ((u[1] == 'b' || u[1] == 'B') &&
                                                           u[2] == '\0')))))
        return false;
    *ret = pow(base, (double)(at - prefixes + 1));
    return true;
}

/* Parses "64MiB"-style sizes, up to 1 TiB. */
static bool parse_size(const char *s, uint64_t *ret)
{
    char *end;
    double v, mult;

    if (!s || !(isdigit((unsigned char)s[0]) || s[0] == '.'))
        return false;
    v = strtod(s, &end);
    while (*end == ' ')
        end++;
    if (!unit_multiplier(end, &mult) || !(v * mult <= 1099511627776.0))
        return false;
    *ret = (uint64_t)(v * mult);
    return true;
}

static void sleep_ms(unsigned long long ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};

    if (!ms)
        return; /* a no-op model must cost nothing: nanosleep(0) still enters the kernel */
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Allocates len bytes and writes every page of them, so they are resident. */
static unsigned char *alloc_touched(uint64_t len)
{
    unsigned char *p = malloc(len ? (size_t)len : 1);

    if (p)
        memset(p, 0xA5, (size_t)len);
    return p;
}

/* Reads up to len bytes of the file at path into mem. */
static int read_weights(const char *path, unsigned char *mem, uint64_t len, char *err,
                        size_t errlen)
{
    FILE *f = fopen(path, "rb");
    int rc = 0;

    if (!f)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "%s: %s", path, strerror(errno));
    if (fread(mem, 1, (size_t)len, f) < (size_t)len && ferror(f))
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "%s: read error", path);
    fclose(f);
    return rc;
}

/* ---- configuration ---------------------------------------------------------------------- */

static int parse_fail(const char *s, long long *ret)
{
    unsigned long long n;

    if (!s || strcmp(s, "never") == 0)
        *ret = -1;
    else if (strcmp(s, "always") == 0)
        *ret = LLONG_MAX;
    else if (strncmp(s, "first-", 6) == 0 && larder_pu_parse_ull(s + 6, 0, 1000000, &n))
        *ret = (long long)n;
    else
        return -1;
    return 0;
}

/* A yes/no option (key names it in the message); *ret unchanged when absent. */
static int parse_yes_no(const char *key, const char *s, bool *ret, char *err, size_t errlen)
{
    if (!s)
        return 0;
    if (strcmp(s, "yes") == 0 || strcmp(s, "true") == 0 || strcmp(s, "1") == 0)
        *ret = true;
    else if (strcmp(s, "no") == 0 || strcmp(s, "false") == 0 || strcmp(s, "0") == 0)
        *ret = false;
    else
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                              "%s '%s': expected yes or no", key, s);
    return 0;
}

static int parse_pooled(const char *s, char *err, size_t errlen)
{
    bool yes = POOLED;
    int rc = parse_yes_no("pooled", s, &yes, err, errlen);

    if (rc < 0)
        return rc;
    if (yes != POOLED)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "pooled = %s needs backend = %s",
                              s, yes ? "synthetic-pooled" : "synthetic");
    return 0;
}

/* The path option: a readable file whose size becomes the default model size. */
static int parse_path(const char *path, struct config *c, char *err, size_t errlen)
{
    struct stat st;

    if (!path || !*path)
        return 0;
    if (strlen(path) >= sizeof(c->path))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "path too long");
    if (stat(path, &st) != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "%s: not a file", path);
    snprintf(c->path, sizeof(c->path), "%s", path);
    c->size = (uint64_t)st.st_size;
    return 0;
}

static int parse_sizes(const struct larder_option *opts, size_t n, struct config *c,
                       char *err, size_t errlen)
{
    const char *size = larder_pu_opt_get(opts, n, "size");
    const char *isize = larder_pu_opt_get(opts, n, "instance_size");
    int rc;

    c->size = DEFAULT_SIZE;
    if ((rc = parse_path(larder_pu_opt_get(opts, n, "path"), c, err, errlen)) < 0)
        return rc;
    c->instance_size = POOLED ? DEFAULT_INSTANCE_SIZE : 0;
    if (size && !parse_size(size, &c->size))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "size '%s': not a size", size);
    if (isize && !parse_size(isize, &c->instance_size))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "instance_size '%s': not a size",
                              isize);
    if (!POOLED && isize)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                              "instance_size needs backend = synthetic-pooled");
    return 0;
}

static int parse_times(const struct larder_option *opts, size_t n, struct config *c,
                       char *err, size_t errlen)
{
    static const char *const keys[] = {"load_ms", "instance_ms", "infer_ms"};
    unsigned long long *const fields[] = {&c->load_ms, &c->instance_ms, &c->infer_ms};

    for (size_t i = 0; i < 3; i++) {
        const char *v = larder_pu_opt_get(opts, n, keys[i]);

        *fields[i] = 0;
        if (v && !larder_pu_parse_ull(v, 0, MAX_MS, fields[i]))
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "%s '%s': expected 0-%llu",
                                  keys[i], v, MAX_MS);
    }
    return 0;
}

static int config_parse(const struct larder_option *opts, size_t n, struct config *c,
                        char *err, size_t errlen)
{
    const char *failv = larder_pu_opt_get(opts, n, "fail");
    const char *label = larder_pu_opt_get(opts, n, "label");
    int rc;

    memset(c, 0, sizeof(*c));
    if ((rc = larder_pu_check_keys(opts, n, option_keys, err, errlen)) < 0 ||
        (rc = parse_sizes(opts, n, c, err, errlen)) < 0 ||
        (rc = parse_times(opts, n, c, err, errlen)) < 0 ||
        (rc = parse_pooled(larder_pu_opt_get(opts, n, "pooled"), err, errlen)) < 0 ||
        (rc = parse_yes_no("leak", larder_pu_opt_get(opts, n, "leak"), &c->leak, err,
                           errlen)) < 0)
        return rc;
    if (parse_fail(failv, &c->fail_first) < 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                              "fail '%s': expected never, always or first-N", failv);
    if (label && strlen(label) >= sizeof(c->label))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "label longer than %zu bytes",
                              sizeof(c->label) - 1);
    snprintf(c->label, sizeof(c->label), "%s", label ? label : DEFAULT_LABEL);
    return 0;
}

/* Counts one load attempt of c's label; true when this one must fail. */
static bool load_must_fail(const struct config *c)
{
    struct fail_counter *fc = NULL;
    bool must;

    if (c->fail_first < 0)
        return false;
    pthread_mutex_lock(&g_fail_lock);
    for (size_t i = 0; i < g_n_fail && !fc; i++)
        if (strcmp(g_fail[i].label, c->label) == 0)
            fc = &g_fail[i];
    if (!fc && g_n_fail < MAX_LABELS) {
        fc = &g_fail[g_n_fail++];
        snprintf(fc->label, sizeof(fc->label), "%s", c->label);
    }
    /* Past MAX_LABELS distinct labels, counting stops and every load fails. */
    must = !fc || fc->loads < (unsigned long long)c->fail_first;
    if (fc)
        fc->loads++;
    pthread_mutex_unlock(&g_fail_lock);
    return must;
}

/* ---- operations ------------------------------------------------------------------------- */

static int syn_check(const struct larder_option *opts, size_t n, char *err, size_t errlen)
{
    struct config c;

    return config_parse(opts, n, &c, err, errlen);
}

static int syn_estimate(const struct larder_option *opts, size_t n, uint64_t *ret_bytes)
{
    struct config c;
    int rc = config_parse(opts, n, &c, NULL, 0);

    if (rc < 0)
        return rc;
    *ret_bytes = c.size + c.instance_size;
    return 0;
}

static void syn_unload(void *model)
{
    struct model *m = model;

    if (!m)
        return;
    if (!m->cfg.leak) /* a leaking model's memory stays resident until the process exits */
        free(m->mem);
    free(m);
}

static int syn_load(const struct larder_option *opts, size_t n, void **ret_model, char *err,
                    size_t errlen)
{
    struct model *m;
    struct config c;
    int rc;

    if ((rc = config_parse(opts, n, &c, err, errlen)) < 0)
        return rc;
    sleep_ms(c.load_ms);
    if (load_must_fail(&c))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "synthetic load failure of '%s'",
                              c.label);
    m = calloc(1, sizeof(*m));
    if (!m || !(m->mem = alloc_touched(c.size))) {
        free(m);
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "cannot allocate %llu bytes",
                              (unsigned long long)c.size);
    }
    if (c.path[0] && (rc = read_weights(c.path, m->mem, c.size, err, errlen)) < 0) {
        syn_unload(m);
        return rc;
    }
    m->cfg = c;
    atomic_init(&m->next_instance, 0);
    larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_DEBUG, "loaded '%s': %llu bytes", c.label,
                  (unsigned long long)c.size);
    *ret_model = m;
    return 0;
}

static int syn_measure(void *model, uint64_t *ret_bytes)
{
    const struct model *m = model;

    *ret_bytes = m->cfg.size;
    return 0;
}

#ifdef SYNTHETIC_POOLED
static int syn_instance_new(void *model, void **ret_instance, char *err, size_t errlen)
{
    struct model *m = model;
    struct instance *in = calloc(1, sizeof(*in));

    sleep_ms(m->cfg.instance_ms);
    if (!in || !(in->mem = alloc_touched(m->cfg.instance_size))) {
        free(in);
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "cannot allocate an instance");
    }
    in->serial = atomic_fetch_add(&m->next_instance, 1);
    atomic_init(&in->busy, false);
    *ret_instance = in;
    return 0;
}

static void syn_instance_free(void *model, void *instance)
{
    struct instance *in = instance;

    if (!in)
        return;
    free(in->mem);
    free(in);
}
#endif

static const char *param_get(const struct larder_infer_request *req, const char *key)
{
    for (size_t i = 0; req->params && i < req->n_params; i++)
        if (req->params[i].key && strcmp(req->params[i].key, key) == 0)
            return req->params[i].value;
    return NULL;
}

/* The error a request asks for with error=..., or 0. */
static int requested_error(const struct larder_infer_request *req, char *err, size_t errlen)
{
    const char *e = param_get(req, "error");

    if (!e)
        return 0;
    if (strcmp(e, "input") == 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "input error requested");
    if (strcmp(e, "media") == 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMEDIA, "media error requested");
    return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "internal error requested");
}

static int reply(const struct model *m, const struct instance *in, size_t body_len,
                 struct larder_infer_result *res, char *err, size_t errlen)
{
    json_t *obj = json_pack("{s:I,s:s}", "echo", (json_int_t)body_len, "model", m->cfg.label);

    if (obj && in)
        json_object_set_new(obj, "instance", json_integer(in->serial));
    memset(res, 0, sizeof(*res));
    res->json = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    return res->json ? 0 : larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
}

static int syn_infer(void *model, void *instance, const struct larder_infer_request *req,
                     struct larder_infer_result *res, char *err, size_t errlen)
{
    struct model *m = model;
    struct instance *in = instance;
    const char *sleep_param;
    unsigned long long ms;
    int rc;

    if (!m || !req || !res || (POOLED && !in))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "called without %s",
                              m ? "an instance" : "a model");
    if (in && atomic_exchange(&in->busy, true))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL,
                              "instance %u is serving another request", in->serial);
    sleep_param = param_get(req, "sleep_ms");
    if (!sleep_param || !larder_pu_parse_ull(sleep_param, 0, MAX_MS, &ms))
        ms = m->cfg.infer_ms;
    rc = larder_pu_wait_ms(g_host, req, ms);
    if (rc < 0)
        larder_pu_fail(err, errlen, rc, "cancelled while waiting %llu ms", ms);
    else
        rc = requested_error(req, err, errlen);
    if (rc == 0)
        rc = reply(m, in, req->body ? req->body_len : 0, res, err, errlen);
    if (in)
        atomic_store(&in->busy, false);
    return rc;
}

static const struct larder_backend_ops ops = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .name = BACKEND_NAME,
    .description = POOLED ? "synthetic test model with one instance per request"
                          : "synthetic test model shared by all requests",
    .option_keys = option_keys,
    .check = syn_check,
    .estimate = syn_estimate,
    .load = syn_load,
    .unload = syn_unload,
#ifdef SYNTHETIC_POOLED
    .instance_new = syn_instance_new,
    .instance_free = syn_instance_free,
#endif
    .measure = syn_measure,
    .infer = syn_infer,
    .result_free = larder_pu_result_free,
};

/* The plugin's entry: returns its operations, or NULL for a host of another ABI major. */
const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host)
{
    return larder_pu_entry(host, &g_host, &ops);
}
