/* Synthetic request traces for the eviction replayer. Deterministic: the same parameters
 * (seed included) give the same trace, byte for byte, on every machine.
 *
 * Every trace uses one catalog of components whose sizes and load times span the real
 * backends: from 1 MiB loading in 5 ms (a small booster) to 2 GiB loading in 20 s (a
 * large model). Sizes are log-uniform; load time grows with size, times a factor between
 * 1/4 and 4 so that cost per byte differs from one component to the next. Popularity
 * ranks are a random permutation, unrelated to size. Requests hold their lease for an
 * exponential time whose mean grows with the component's load time (bigger models run
 * longer).
 *
 * Kinds:
 *   zipf      Zipf(s) popularity; sessions arrive as a Poisson process, each a geometric
 *             number of requests (mean burst) for one component, think seconds apart on
 *             average (burst = 1: every request is independent, a plain Poisson stream).
 *   shift     as zipf, but the popularity ranks are reshuffled every shift_min minutes.
 *   pipeline  periodic jobs: each pipeline runs its stages one after the other every
 *             period; a stage acquires its set of components at the same instant and holds
 *             them for the stage's duration. Light zipf traffic runs beside them.
 *   scan      zipf traffic with, half-way through, one pass over every component.
 */
#ifndef LARDER_BENCH_GEN_H
#define LARDER_BENCH_GEN_H

#include "trace.h"

#include <stdint.h>

struct gen_params {
    const char *kind;  /* "zipf", "shift", "pipeline", "scan" */
    double zipf_s;     /* Zipf exponent of the background popularity */
    double hours;      /* length of the trace */
    double rate;       /* Zipf requests per second, on average */
    double burst;      /* mean requests per session (geometric; 1 = plain Poisson) */
    double think;      /* mean seconds between the requests of one session */
    double shift_min;  /* shift: minutes between popularity changes */
    unsigned ncomps;   /* catalog size */
    unsigned pipelines;/* pipeline: number of periodic jobs */
    uint64_t seed;
};

/* The parameters of a standard trace: "zipf-0.8", "zipf-1.2" (memoryless), "sessions"
 * (zipf 0.8 in bursts of 4 requests, 15 s apart), "shift", "pipeline", "scan".
 * Errors: -EINVAL for an unknown name. */
int gen_defaults(const char *name, struct gen_params *ret_params);
/* Generates a trace called `name`. Errors: -EINVAL (unknown kind, zero components, a
 * non-positive length, rate or shift period, a negative think time or exponent), -ENOMEM. */
int gen_trace(const struct gen_params *p, const char *name, struct trace **ret_trace);

/* NULL-terminated names of the standard traces, in report order. */
extern const char *const gen_standard[];

#endif
