/* The synthetic tabular data set of the example XGBoost model (examples/tabular.ubj).
 *
 * Rows have SYNTH_FEATURES features, each uniform in [-1, 1), drawn from a seeded
 * splitmix64 generator, so a seed always gives the same rows. The label is 1 when exactly
 * one of these holds: the point (x0, x1) lies inside the circle x0^2 + x1^2 < 0.45, or
 * x2 > 0.3. Feature x3 is noise the model has to learn to ignore.
 *
 * Used by the trainer (larder-train-xgboost) and by the tests that check its model.
 * Header-only; every function is pure apart from the generator state it is given.
 */
#ifndef LARDER_BACKENDS_XGBOOST_SYNTH_H
#define LARDER_BACKENDS_XGBOOST_SYNTH_H

#include <stdint.h>

#define SYNTH_FEATURES 4

/* Next 64 random bits of the generator state *s (splitmix64). */
static inline uint64_t synth_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* A float uniform in [-1, 1), with 24 random bits. */
static inline float synth_uniform(uint64_t *s)
{
    return (float)(synth_next(s) >> 40) / (float)(1 << 23) - 1.0f;
}

/* The true label of a row of SYNTH_FEATURES values. */
static inline int synth_label(const float *x)
{
    int inside = x[0] * x[0] + x[1] * x[1] < 0.45f;
    int high = x[2] > 0.3f;

    return inside != high;
}

/* Fills x with the next row of the generator. */
static inline void synth_row(uint64_t *s, float *x)
{
    for (int i = 0; i < SYNTH_FEATURES; i++)
        x[i] = synth_uniform(s);
}

#endif
