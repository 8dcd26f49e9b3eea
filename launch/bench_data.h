/*
 * bench_data.h -- cpattn-bench's inputs, FLOP counts and error metrics.
 *
 * Inputs are a pure function of (seed, tensor, global token, head, d), so every rank
 * generates exactly its own shard, any rank count sees the same global tensors, and the
 * whole-sequence reference can be rebuilt anywhere: no rank ever has to hold or scatter
 * the full inputs except for --check.
 */
#ifndef CPATTN_LAUNCH_BENCH_DATA_H_
#define CPATTN_LAUNCH_BENCH_DATA_H_

#include <stdint.h>

#include "cpattn.h"

enum { BENCH_Q = 0, BENCH_K = 1, BENCH_V = 2, BENCH_DO = 3 };

/* Uniform in [-1, 1), never exactly zero in bulk. */
float bench_value(uint64_t seed, int tensor, int64_t token, int head, int d);

/* Fills a packed tensor of the config's layout (host memory, the config's dtype) for
 * `rank` of `world` (world = 1, rank = 0: the whole sequence). */
int bench_fill(const cpattnConfig_t *c, int rank, int world, uint64_t seed, int tensor, int heads, int dim,
               void *host);

/* Global (query, key) pairs the mask makes visible, over the whole problem (all batch
 * elements); forward FLOPs are 2 * (dqk + dv) * heads * pairs. */
double bench_visible_pairs(const cpattnConfig_t *c);

/* THD lengths: log-uniform in [lo, hi], summing exactly to total (the last one cut).
 * Returns the number of sequences written to cu (cu must hold total + 1 entries). */
int bench_thd_lengths(uint64_t seed, int64_t total, int64_t lo, int64_t hi, int32_t *cu);

/* max |got - want| / max |want| over n elements of dtype dt (NaN -> infinity). */
double bench_rel_err(const void *got, const void *want, cpattnDataType_t dt, int64_t n);
/* ||got - want||_2 / ||want||_2 (NaN -> infinity): the criterion for 16-bit results,
 * where the max-norm also flags two valid roundings of terms that nearly cancel. */
double bench_rel_l2(const void *got, const void *want, cpattnDataType_t dt, int64_t n);
/* The same for fp32 LSE values, where -inf must match -inf. */
double bench_rel_err_lse(const float *got, const float *want, int64_t n);

#endif /* CPATTN_LAUNCH_BENCH_DATA_H_ */
