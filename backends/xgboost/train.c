/* larder-train-xgboost: trains the example tabular model on the synthetic data set of
 * synth.h and saves it (.ubj: Universal Binary JSON; .json: JSON).
 *
 *   larder-train-xgboost [-r ROWS] [-s SEED] [-n ROUNDS] [-d DEPTH] OUT.ubj
 *
 * Defaults: 4000 training rows from seed 1, 20 rounds of depth-4 trees, binary logistic
 * objective, one thread and the histogram method, so the same arguments always give the
 * same model. Prints the accuracy on 1000 held-out rows (seed + 1000).
 * Exit status: 0 on success, 1 on an XGBoost error, 2 on bad usage.
 */
#include "synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xgboost/c_api.h>

#define HELD_OUT_ROWS 1000

struct params {
    unsigned rows;
    unsigned long long seed;
    unsigned rounds;
    unsigned depth;
    const char *out;
};

static int xgb_failed(const char *what)
{
    fprintf(stderr, "larder-train-xgboost: %s: %s\n", what, XGBGetLastError());
    return 1;
}

static int parse_args(int argc, char **argv, struct params *p)
{
    int c;

    *p = (struct params){.rows = 4000, .seed = 1, .rounds = 20, .depth = 4};
    while ((c = getopt(argc, argv, "r:s:n:d:")) != -1) {
        switch (c) {
        case 'r': p->rows = (unsigned)strtoul(optarg, NULL, 10); break;
        case 's': p->seed = strtoull(optarg, NULL, 10); break;
        case 'n': p->rounds = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'd': p->depth = (unsigned)strtoul(optarg, NULL, 10); break;
        default: return -1;
        }
    }
    if (optind + 1 != argc || p->rows < 10 || p->rounds == 0 || p->depth == 0 ||
        p->depth > 16)
        return -1;
    p->out = argv[optind];
    return 0;
}

/* A DMatrix of `rows` generated rows with their labels. */
static int make_data(unsigned rows, unsigned long long seed, DMatrixHandle *ret)
{
    float *x = malloc((size_t)rows * SYNTH_FEATURES * sizeof(float));
    float *y = malloc((size_t)rows * sizeof(float));
    uint64_t state = seed;
    int rc = -1;

    if (x && y) {
        for (unsigned i = 0; i < rows; i++) {
            synth_row(&state, x + (size_t)i * SYNTH_FEATURES);
            y[i] = (float)synth_label(x + (size_t)i * SYNTH_FEATURES);
        }
        rc = XGDMatrixCreateFromMat(x, rows, SYNTH_FEATURES, NAN, ret);
        if (rc == 0 && (rc = XGDMatrixSetFloatInfo(*ret, "label", y, rows)) != 0)
            XGDMatrixFree(*ret);
    }
    free(x);
    free(y);
    return rc;
}

static int set_params(BoosterHandle b, unsigned depth)
{
    char depth_s[16];
    static const char *const fixed[][2] = {
        {"objective", "binary:logistic"}, {"eta", "0.3"},  {"tree_method", "hist"},
        {"nthread", "1"},                 {"seed", "0"},   {"verbosity", "0"},
    };

    snprintf(depth_s, sizeof(depth_s), "%u", depth);
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (XGBoosterSetParam(b, fixed[i][0], fixed[i][1]) != 0)
            return -1;
    return XGBoosterSetParam(b, "max_depth", depth_s);
}

/* Fraction of held-out rows whose predicted probability falls on the side of 0.5 of
 * their label; negative on error. */
static double held_out_accuracy(BoosterHandle b, unsigned long long seed)
{
    DMatrixHandle test;
    bst_ulong len = 0;
    const float *pred = NULL;
    const float *labels = NULL;
    bst_ulong n_labels = 0;
    unsigned right = 0;

    if (make_data(HELD_OUT_ROWS, seed, &test) != 0)
        return -1;
    if (XGBoosterPredict(b, test, 0, 0, 0, &len, &pred) != 0 ||
        XGDMatrixGetFloatInfo(test, "label", &n_labels, &labels) != 0 || len != n_labels) {
        XGDMatrixFree(test);
        return -1;
    }
    for (bst_ulong i = 0; i < len; i++)
        right += (pred[i] > 0.5f) == (labels[i] > 0.5f);
    XGDMatrixFree(test);
    return (double)right / (double)len;
}

static int train(const struct params *p)
{
    DMatrixHandle train_set;
    BoosterHandle b;
    double acc;
    int rc;

    if (make_data(p->rows, p->seed, &train_set) != 0)
        return xgb_failed("creating the training data");
    if (XGBoosterCreate(&train_set, 1, &b) != 0) {
        XGDMatrixFree(train_set);
        return xgb_failed("creating the booster");
    }
    rc = set_params(b, p->depth);
    for (unsigned i = 0; rc == 0 && i < p->rounds; i++)
        rc = XGBoosterUpdateOneIter(b, (int)i, train_set);
    if (rc == 0 && (acc = held_out_accuracy(b, p->seed + 1000)) >= 0)
        printf("trained %u rounds of depth %u on %u rows: held-out accuracy %.4f (%d rows)\n",
               p->rounds, p->depth, p->rows, acc, HELD_OUT_ROWS);
    else
        rc = -1;
    if (rc == 0)
        rc = XGBoosterSaveModel(b, p->out);
    if (rc != 0)
        xgb_failed(p->out);
    XGBoosterFree(b);
    XGDMatrixFree(train_set);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct params p;

    if (parse_args(argc, argv, &p) < 0) {
        fprintf(stderr, "usage: larder-train-xgboost [-r ROWS] [-s SEED] [-n ROUNDS] "
                        "[-d DEPTH] OUT.ubj\n");
        return 2;
    }
    return train(&p);
}
