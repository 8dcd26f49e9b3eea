/*
 * pairs.c -- visible query-key pairs of an entry (pairs.h).
 *
 * Every kind reduces to one count: below(q, k, c), the pairs (i, j) of the q x k
 * rectangle with j <= i + c. CAUSAL is below(0); a band is the pairs under its upper
 * diagonal minus those strictly under its lower one. Row i contributes
 * clamp(i + c + 1, 0, k), a line of slope 1 cut flat at 0 and at k, so the sum is an
 * arithmetic series between two constant runs.
 */
#include "pairs.h"

static int64_t below(int64_t q, int64_t k, int64_t c) {
  if (q <= 0 || k <= 0) return 0;
  /* Clamping c where the count saturates keeps every product below q * k. */
  if (c < -q) c = -q; /* no row reaches column 0 */
  if (c > k) c = k;   /* every row reaches column k-1 */
  int64_t lo = c < 0 ? -c : 0;                /* first row that sees a key      */
  int64_t hi = k - 1 - c > lo ? k - 1 - c : lo; /* first row that sees all k keys */
  if (lo > q) lo = q;
  if (hi > q) hi = q;
  /* rows [lo, hi) see i + c + 1 keys; rows [hi, q) see k */
  int64_t n = hi - lo;
  int64_t ramp = n * (c + 1) + (lo + hi - 1) * n / 2; /* (lo+hi-1)*n is even */
  return ramp + (q - hi) * k;
}

int64_t cpaVisiblePairs(cpaKind kind, int64_t q_len, int64_t k_len, int64_t delta, int64_t band_lo,
                        int64_t band_hi) {
  if (q_len <= 0 || k_len <= 0) return 0;
  switch (kind) {
  case CPA_KIND_NONE:
    return q_len * k_len;
  case CPA_KIND_CAUSAL:
    return below(q_len, k_len, 0);
  case CPA_KIND_BAND: {
    int64_t upto = band_hi == CPA_UNBOUNDED ? q_len * k_len : below(q_len, k_len, delta + band_hi);
    int64_t under = band_lo == CPA_UNBOUNDED ? 0 : below(q_len, k_len, delta - band_lo - 1);
    return upto - under; /* bounds >= 0: the lower diagonal never passes the upper */
  }
  }
  return 0;
}

int64_t cpaCallVisiblePairs(const cpaCall *call, int64_t band_lo, int64_t band_hi) {
  int64_t n = 0;
  for (int e = 0; e < call->nentries; ++e) {
    const cpaEntry *en = &call->entries[e];
    n += cpaVisiblePairs(call->kind, en->q_len, en->k_len, en->delta, band_lo, band_hi);
  }
  return n;
}
