/*
 * pairs.h -- how many query-key pairs of a schedule entry its mask leaves visible.
 *
 * Attention's work is proportional to the visible pairs, not to the rectangle: a causal
 * diagonal chunk does half the work of a full one. Anything that turns a time into a
 * rate (the CUDA executor's per-call profile, exec_cuda_profile.c) needs the exact
 * count, for every kind as schedule.h and cudnn_sdpa.h define it (rows i, cols j counted
 * from the entry's corner, 0 <= i < q_len, 0 <= j < k_len):
 *   NONE    every pair: q_len * k_len
 *   CAUSAL  j <= i (top-left), so row i sees min(i + 1, k_len) keys
 *   BAND    i + delta - band_lo <= j <= i + delta + band_hi, a bound equal to
 *           CPA_UNBOUNDED (problem.h) being absent
 * Pure host code, O(1) per entry (closed forms, no loop over rows), so it can run on
 * every call of a long THD schedule. Counts are per batch element.
 */
#ifndef CPATTN_SRC_PAIRS_H_
#define CPATTN_SRC_PAIRS_H_

#include <stdint.h>

#include "schedule.h"

/* Visible pairs of one rectangle of q_len x k_len (either may be 0: no pairs) under the
 * mask kind; delta, band_lo and band_hi are read for BAND only, each bound >= 0 or
 * CPA_UNBOUNDED (what cpaProblemInit makes of a config). Exact as long as |delta| and
 * the bounds stay below 2^61 (positions and windows are far smaller). */
int64_t cpaVisiblePairs(cpaKind kind, int64_t q_len, int64_t k_len, int64_t delta, int64_t band_lo,
                        int64_t band_hi);

/* The sum over a call's entries, the bounds being the problem's (cpaProblem.band_*). */
int64_t cpaCallVisiblePairs(const cpaCall *call, int64_t band_lo, int64_t band_hi);

#endif /* CPATTN_SRC_PAIRS_H_ */
