/* Fuzzes the XGBoost backend's request parsing (backends/xgboost/xgboost.c): content
 * type, JSON document, rows_of, matrix_from_json, row_copy; then, when the example
 * booster (examples/tabular.ubj, 4 features) loads, a real prediction on what parsed.
 *
 * An input is "CONTENT-TYPE\nBODY" (see fuzz.h). Checks, beyond "no crash, no leak, no
 * undefined behaviour": a parsed matrix has 1..max_rows rows of exactly the model's
 * columns, each value a float or NaN (null); a prediction answers one number per row;
 * every refusal has a message. */
#include "fuzz.h"

#include "../../backends/xgboost/xgboost.c"

#ifndef EXAMPLES_DIR
#define EXAMPLES_DIR "examples"
#endif
/* Small, so that a prediction on what the fuzzer made up stays fast. */
#define FUZZ_MAX_ROWS 64

static struct model *g_booster; /* NULL when the example model cannot load */
static int g_ready;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *path = getenv("LARDER_FUZZ_TABULAR");
    struct larder_option opts[] = {
        {"path", path && *path ? path : EXAMPLES_DIR "/tabular.ubj"},
        {"nthread", "1"},
        {"max_rows", "64"},
    };
    char err[256] = "";
    void *md = NULL;
    if (g_ready)
        return 0;
    g_ready = 1;
    if (getenv("LARDER_FUZZ_NO_BOOSTER"))
        return 0;
    if (xgb_load(opts, 3, &md, err, sizeof err) < 0)
        fprintf(stderr, "fuzz_rows: no booster, parsing only: %s\n", err);
    g_booster = md; /* kept to the end: XGBoost's statics go before atexit handlers */
    return 0;
}

static void check_prediction(const char *json, size_t rows)
{
    json_t *doc = json_loads(json, 0, NULL);
    FUZZ_ASSERT(doc);
    json_t *preds = json_object_get(doc, "predictions");
    FUZZ_ASSERT(json_is_array(preds) && json_array_size(preds) == rows);
    for (size_t i = 0; i < rows; i++)
        FUZZ_ASSERT(json_is_number(json_array_get(preds, i)));
    json_decref(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    LLVMFuzzerInitialize(NULL, NULL); /* once, also where no libFuzzer calls it */
    struct fuzz_request in;
    fuzz_request_split(&in, data, size);
    struct larder_infer_request req = {
        .body = in.body, .body_len = in.len, .content_type = in.ct};
    char err[256] = "";

    /* a model of 4 features that needs no booster */
    struct model fake = {.cfg = {.max_rows = FUZZ_MAX_ROWS}, .n_features = 4};
    struct matrix m = {0};
    int rc = parse_request(&req, &fake, &m, err, sizeof err);
    if (fuzz_verbose())
        fprintf(stderr, "parse_request: %d %s (%zu rows)\n", rc, err, m.rows);
    if (rc == 0) {
        FUZZ_ASSERT(m.data && m.rows >= 1 && m.rows <= FUZZ_MAX_ROWS && m.cols == 4);
        for (size_t i = 0; i < m.rows * m.cols; i++)
            FUZZ_ASSERT(isnan(m.data[i]) || isfinite(m.data[i]));
    } else {
        FUZZ_ASSERT(!m.data && err[0]);
        FUZZ_ASSERT(rc == LARDER_BACKEND_EINPUT || rc == LARDER_BACKEND_EMEDIA ||
                    rc == LARDER_BACKEND_ENOMEM);
    }

    if (g_booster) {
        struct larder_infer_result res = {0};
        err[0] = 0;
        int irc = xgb_infer(g_booster, NULL, &req, &res, err, sizeof err);
        /* the booster has the fake's shape: the same requests parse */
        FUZZ_ASSERT((irc == 0) == (rc == 0));
        if (irc == 0) {
            FUZZ_ASSERT(res.json);
            check_prediction(res.json, m.rows);
            larder_pu_result_free(&res);
        }
    }
    free(m.data);
    fuzz_request_free(&in);
    return 0;
}
