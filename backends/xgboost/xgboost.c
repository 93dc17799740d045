/* larder backend: XGBoost prediction.
 *
 * Request (application/json): {"rows": [[f1, f2, ...], ...]} or a bare array of rows. Each
 * row has exactly as many values as the model has features; null means a missing value.
 * Reply: {"predictions": [...]}: one number per row, or one array per row for models with
 * several outputs (multi-class probabilities).
 *
 * Options:
 *   path      the model file (.ubj, .json or XGBoost's binary format); required
 *   nthread   threads of one prediction; default 1 (requests already run in parallel)
 *   max_rows  most rows in one request; default 100000
 *
 * Threads: the booster is shared by every request (no instances). XGBoost documents
 * prediction as thread-safe for tree boosters (gbtree, dart) since 1.4; for any other
 * booster the model serializes predictions with a mutex. load() runs one prediction so
 * that XGBoost's lazy configuration happens there, on one thread.
 */
#include <larder/backend.h>

#include "../common/plugin-util.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xgboost/c_api.h>

/* The name of this backend, in its log lines and its operations table. */
#define BACKEND_NAME "xgboost"

#define DEFAULT_NTHREAD 1
#define MAX_NTHREAD 256
#define DEFAULT_MAX_ROWS 100000ULL
/* Resident bytes of a loaded booster: a fixed part (the engine's own state: 1 MiB
 * measured) plus the model file times a factor (a 0.87 MB .ubj model: 2.9 MiB more; see
 * docs/backends.md). */
#define ESTIMATE_BASE (2ULL << 20)
#define ESTIMATE_FACTOR 3.5
/* Prediction settings: normal output, every tree, shape reported as is. */
#define PREDICT_CONFIG                                                                      \
    "{\"type\": 0, \"training\": false, \"iteration_begin\": 0, \"iteration_end\": 0, "   \
    "\"strict_shape\": false, \"missing\": NaN, \"cache_id\": 0}"

struct config {
    char *path;
    unsigned nthread;
    unsigned long long max_rows;
};

struct model {
    struct config cfg;
    BoosterHandle booster;
    bst_ulong n_features;
    bool serialize;       /* not a tree booster: one prediction at a time */
    pthread_mutex_t lock; /* used when serialize */
};

/* A parsed request: rows x cols floats, row-major. */
struct matrix {
    float *data;
    size_t rows;
    size_t cols;
};

static const struct larder_host *g_host;

static const char *const option_keys[] = {"path", "nthread", "max_rows", NULL};

/* ---- configuration ---------------------------------------------------------------------- */

static void config_clear(struct config *c)
{
    free(c->path);
    memset(c, 0, sizeof(*c));
}

static int parse_numbers(const struct larder_option *opts, size_t n, struct config *cfg,
                         char *err, size_t errlen)
{
    const char *nthread = larder_pu_opt_get(opts, n, "nthread");
    const char *max_rows = larder_pu_opt_get(opts, n, "max_rows");
    unsigned long long v = DEFAULT_NTHREAD;

    if (nthread && !larder_pu_parse_ull(nthread, 1, MAX_NTHREAD, &v))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "nthread '%s': expected 1-%d",
                              nthread, MAX_NTHREAD);
    cfg->nthread = (unsigned)v;
    cfg->max_rows = DEFAULT_MAX_ROWS;
    if (max_rows && !larder_pu_parse_ull(max_rows, 1, 1ULL << 32, &cfg->max_rows))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "max_rows '%s': not a count",
                              max_rows);
    return 0;
}

/* Fills cfg from opts and checks the model file. Cheap: reads no model data. */
static int config_parse(const struct larder_option *opts, size_t n, struct config *cfg,
                        uint64_t *ret_file_bytes, char *err, size_t errlen)
{
    const char *path = larder_pu_opt_get(opts, n, "path");
    struct stat st;
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    if ((rc = larder_pu_check_keys(opts, n, option_keys, err, errlen)) < 0 ||
        (rc = parse_numbers(opts, n, cfg, err, errlen)) < 0)
        return rc;
    if (!path || !*path)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                              "option 'path' (the model file) is required");
    if (stat(path, &st) != 0 || access(path, R_OK) != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "model %s: %s", path,
                              strerror(errno));
    if (!S_ISREG(st.st_mode) || st.st_size == 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "model %s: not a model file",
                              path);
    if (!(cfg->path = strdup(path)))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    if (ret_file_bytes)
        *ret_file_bytes = (uint64_t)st.st_size;
    return 0;
}

/* ---- booster ----------------------------------------------------------------------------- */

/* Reads the booster kind from the model's saved configuration. */
static bool is_tree_booster(BoosterHandle b)
{
    bst_ulong len = 0;
    const char *text = NULL;
    json_t *root, *name;
    bool tree = false;

    if (XGBoosterSaveJsonConfig(b, &len, &text) != 0 || !text)
        return false;
    root = json_loadb(text, len, 0, NULL);
    name = json_object_get(json_object_get(json_object_get(root, "learner"),
                                           "gradient_booster"), "name");
    if (json_is_string(name))
        tree = strcmp(json_string_value(name), "gbtree") == 0 ||
               strcmp(json_string_value(name), "dart") == 0;
    json_decref(root);
    return tree;
}

/* Predicts m->rows x m->cols values; *ret_values stays owned by XGBoost (thread-local:
 * copy before the next XGBoost call on this thread). */
static int predict(struct model *md, const struct matrix *m, const bst_ulong **ret_shape,
                   bst_ulong *ret_dim, const float **ret_values)
{
    char iface[256];

    snprintf(iface, sizeof(iface),
             "{\"data\": [%" PRIuPTR ", true], \"shape\": [%zu, %zu], \"typestr\": \"<f4\", "
             "\"version\": 3}",
             (uintptr_t)m->data, m->rows, m->cols);
    return XGBoosterPredictFromDense(md->booster, iface, PREDICT_CONFIG, NULL, ret_shape,
                                     ret_dim, ret_values);
}

/* One prediction on a row of zeros: XGBoost configures a booster lazily, on its first
 * prediction; this makes that happen in load, on one thread. */
static int warm_up(struct model *md, char *err, size_t errlen)
{
    float *zeros = calloc(md->n_features, sizeof(float));
    struct matrix one = {.data = zeros, .rows = 1, .cols = md->n_features};
    const bst_ulong *shape;
    bst_ulong dim;
    const float *out;
    int rc;

    if (!zeros)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    rc = predict(md, &one, &shape, &dim, &out);
    free(zeros);
    if (rc != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "model %s cannot predict: %s",
                              md->cfg.path, XGBGetLastError());
    return 0;
}

/* Reads the model file with nthread OpenMP threads: a booster applies its own nthread
 * only from its first prediction on, and parses a model with as many threads as the
 * calling thread's OpenMP default. That default is restored after. */
static int load_file(struct model *md)
{
    int saved = omp_get_max_threads();
    int rc;

    omp_set_num_threads((int)md->cfg.nthread);
    rc = XGBoosterLoadModel(md->booster, md->cfg.path);
    omp_set_num_threads(saved);
    return rc;
}

/* XGBoost reports a corrupt or foreign file with whatever its parser threw (often a bare
 * C++ library message such as "basic_string::_M_replace_aux"): the reply names the file
 * and what it is not; the engine's own words go to the debug log. */
static int not_a_model(const struct model *md, char *err, size_t errlen)
{
    larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_DEBUG, "XGBoost refused %s: %s",
                  md->cfg.path, XGBGetLastError());
    return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                          "model file %s is not a valid XGBoost model", md->cfg.path);
}

/* Loads the booster, reads its feature count and kind, and warms it up. */
static int booster_open(struct model *md, char *err, size_t errlen)
{
    char nthread[16];

    snprintf(nthread, sizeof(nthread), "%u", md->cfg.nthread);
    if (XGBoosterCreate(NULL, 0, &md->booster) != 0 ||
        XGBoosterSetParam(md->booster, "nthread", nthread) != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "XGBoost: %s",
                              XGBGetLastError());
    if (load_file(md) != 0 || XGBoosterGetNumFeature(md->booster, &md->n_features) != 0)
        return not_a_model(md, err, errlen);
    if (md->n_features == 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "model %s has no features",
                              md->cfg.path);
    md->serialize = !is_tree_booster(md->booster);
    return warm_up(md, err, errlen);
}

/* ---- requests ------------------------------------------------------------------------------ */

/* The array of rows of a request document: the document itself or its "rows". */
static json_t *rows_of(json_t *doc)
{
    return json_is_array(doc) ? doc : json_object_get(doc, "rows");
}

/* Copies one row into out[cols]; null = missing (NaN). */
static int row_copy(json_t *row, size_t r, size_t cols, float *out, char *err, size_t errlen)
{
    if (!json_is_array(row))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "row %zu is not an array", r);
    if (json_array_size(row) != cols)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "row %zu has %zu values, the model expects %zu features", r,
                              json_array_size(row), cols);
    for (size_t c = 0; c < cols; c++) {
        json_t *v = json_array_get(row, c);

        double d = json_number_value(v);

        if (json_is_null(v))
            out[c] = NAN;
        else if (!json_is_number(v))
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                                  "row %zu, value %zu is not a number", r, c);
        else if (fabs(d) > FLT_MAX)
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                                  "row %zu, value %zu is out of the float range", r, c);
        else
            out[c] = (float)d;
    }
    return 0;
}

static int matrix_from_json(json_t *rows, const struct model *md, struct matrix *m, char *err,
                            size_t errlen)
{
    size_t n = json_array_size(rows);
    int rc = 0;

    if (!json_is_array(rows))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "expected {\"rows\": [[...], ...]} or an array of rows");
    if (n == 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "no rows");
    if (n > md->cfg.max_rows)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "%zu rows: more than max_rows %llu", n, md->cfg.max_rows);
    m->rows = n;
    m->cols = md->n_features;
    m->data = malloc(n * m->cols * sizeof(float));
    if (!m->data)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    for (size_t r = 0; rc == 0 && r < n; r++)
        rc = row_copy(json_array_get(rows, r), r, m->cols, m->data + r * m->cols, err, errlen);
    if (rc < 0) {
        free(m->data);
        m->data = NULL;
    }
    return rc;
}

/* Parses the request body into a matrix, with the right error for each kind of bad input. */
static int parse_request(const struct larder_infer_request *req, const struct model *md,
                         struct matrix *m, char *err, size_t errlen)
{
    const char *ct = req->content_type;
    json_error_t jerr;
    json_t *doc;
    int rc;

    if (ct && *ct && !larder_pu_media_is(ct, "application/json") &&
        !larder_pu_media_is(ct, "text/json"))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMEDIA,
                              "content type '%s' not accepted: send application/json", ct);
    if (!req->body || req->body_len == 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "empty body");
    doc = json_loadb(req->body, req->body_len, JSON_DECODE_ANY, &jerr);
    if (!doc)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "bad JSON at line %d, column %d: %s", jerr.line, jerr.column,
                              jerr.text);
    rc = matrix_from_json(rows_of(doc), md, m, err, errlen);
    json_decref(doc);
    return rc;
}

/* Builds {"predictions": [...]} from XGBoost's output of shape [rows] or [rows, k]. */
static int reply_json(const bst_ulong *shape, bst_ulong dim, const float *v, size_t rows,
                      char **ret_json)
{
    size_t k = dim >= 2 ? (size_t)shape[1] : 1;
    json_t *preds = json_array();
    json_t *obj;

    for (size_t r = 0; preds && r < rows; r++) {
        json_t *item = k == 1 ? json_real(v[r]) : json_array();

        for (size_t j = 0; k > 1 && j < k; j++)
            json_array_append_new(item, json_real(v[r * k + j]));
        if (json_array_append_new(preds, item) != 0) {
            json_decref(preds);
            return LARDER_BACKEND_ENOMEM;
        }
    }
    obj = preds ? json_pack("{s:o}", "predictions", preds) : NULL;
    *ret_json = obj ? json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(obj);
    return *ret_json ? 0 : LARDER_BACKEND_ENOMEM;
}

/* Predicts and encodes under the model's lock when predictions must be serialized: the
 * output buffer is valid only until the next XGBoost call on this thread. */
static int predict_reply(struct model *md, const struct matrix *m, char **ret_json, char *err,
                         size_t errlen)
{
    const bst_ulong *shape = NULL;
    const float *values = NULL;
    bst_ulong dim = 0;
    int rc;

    if (md->serialize)
        pthread_mutex_lock(&md->lock);
    rc = predict(md, m, &shape, &dim, &values);
    if (rc != 0)
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "XGBoost: %s",
                            XGBGetLastError());
    else if (dim < 1 || shape[0] != m->rows)
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "unexpected prediction shape");
    else if ((rc = reply_json(shape, dim, values, m->rows, ret_json)) < 0)
        larder_pu_fail(err, errlen, rc, "out of memory");
    if (md->serialize)
        pthread_mutex_unlock(&md->lock);
    return rc;
}

/* ---- operations ------------------------------------------------------------------------- */

static int xgb_check(const struct larder_option *opts, size_t n, char *err, size_t errlen)
{
    struct config cfg;
    int rc = config_parse(opts, n, &cfg, NULL, err, errlen);

    config_clear(&cfg);
    return rc;
}

static int xgb_estimate(const struct larder_option *opts, size_t n, uint64_t *ret_bytes)
{
    struct config cfg;
    uint64_t file = 0;
    int rc = config_parse(opts, n, &cfg, &file, NULL, 0);

    config_clear(&cfg);
    if (rc < 0)
        return rc;
    *ret_bytes = ESTIMATE_BASE + (uint64_t)((double)file * ESTIMATE_FACTOR);
    return 0;
}

static void xgb_unload(void *model)
{
    struct model *md = model;

    if (!md)
        return;
    if (md->booster)
        XGBoosterFree(md->booster);
    pthread_mutex_destroy(&md->lock);
    config_clear(&md->cfg);
    free(md);
}

static int xgb_load(const struct larder_option *opts, size_t n, void **ret_model, char *err,
                    size_t errlen)
{
    struct model *md = calloc(1, sizeof(*md));
    int rc;

    if (!md)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    pthread_mutex_init(&md->lock, NULL);
    rc = config_parse(opts, n, &md->cfg, NULL, err, errlen);
    if (rc == 0)
        rc = booster_open(md, err, errlen);
    if (rc < 0) {
        xgb_unload(md);
        return rc;
    }
    larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_DEBUG, "loaded %s: %" PRIu64 " features, %s",
                  md->cfg.path, (uint64_t)md->n_features,
                  md->serialize ? "serialized" : "concurrent predictions");
    *ret_model = md;
    return 0;
}

static int xgb_infer(void *model, void *instance, const struct larder_infer_request *req,
                     struct larder_infer_result *res, char *err, size_t errlen)
{
    struct model *md = model;
    struct matrix m = {0};
    char *json = NULL;
    int rc;

    if (!md || !req || !res)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "called without a model");
    if ((rc = parse_request(req, md, &m, err, errlen)) < 0)
        return rc;
    /* Predictions are fast: one cancel check before, one after (a result nobody waits
     * for is dropped). */
    if (larder_pu_cancelled(g_host, req))
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_ECANCELED, "cancelled before predicting");
    else
        rc = predict_reply(md, &m, &json, err, errlen);
    free(m.data);
    if (rc == 0 && larder_pu_cancelled(g_host, req)) {
        free(json);
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_ECANCELED, "cancelled while predicting");
    }
    if (rc < 0)
        return rc;
    memset(res, 0, sizeof(*res));
    res->json = json;
    return 0;
}

static const struct larder_backend_ops ops = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .name = BACKEND_NAME,
    .description = "XGBoost prediction: JSON rows of features in, predictions out",
    .option_keys = option_keys,
    .check = xgb_check,
    .estimate = xgb_estimate,
    .load = xgb_load,
    .unload = xgb_unload,
    .instance_new = NULL,
    .instance_free = NULL,
    .measure = NULL,
    .infer = xgb_infer,
    .result_free = larder_pu_result_free,
};

/* The plugin's entry: returns its operations, or NULL for a host of another ABI major. */
const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host)
{
    return larder_pu_entry(host, &g_host, &ops);
}
