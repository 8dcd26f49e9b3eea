/*
 * bench_data.c -- see bench_data.h.
 */
#include "bench_data.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

float bench_value(uint64_t seed, int tensor, int64_t token, int head, int d) {
  uint64_t h = splitmix(seed ^ splitmix((uint64_t)tensor << 56 ^ (uint64_t)token << 20 ^ (uint64_t)head << 9 ^
                                        (uint64_t)d));
  return (float)((h >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static uint16_t to_half_bits(float f, cpattnDataType_t dt) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if (dt == cpattnBFloat16) { /* round to nearest even */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
  }
  /* fp16 of a value in [-1, 1): normal or subnormal, round to nearest even */
  uint32_t sign = (u >> 16) & 0x8000u;
  float a = fabsf(f);
  if (a < 6.103515625e-05f) return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f)); /* subnormal */
  int e;
  float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
  uint32_t mant = (uint32_t)lrintf((m * 2.0f - 1.0f) * 1024.0f);
  int exp = e - 1 + 15;
  if (mant == 1024) {
    mant = 0;
    ++exp;
  }
  return (uint16_t)(sign | (uint32_t)exp << 10 | mant);
}

int bench_fill(const cpattnConfig_t *c, int rank, int world, uint64_t seed, int tensor, int heads, int dim,
               void *host) {
  int64_t n;
  if (cpattnGetLocalTokenCount(c, rank, world, &n) != cpattnSuccess) return -1;
  int64_t *pos = malloc(sizeof(int64_t) * (size_t)(n + 1));
  int32_t *sq = malloc(sizeof(int32_t) * (size_t)(n + 1));
  if (!pos || !sq || cpattnGetLocalPositions(c, rank, world, pos, sq) != cpattnSuccess) {
    free(pos);
    free(sq);
    return -1;
  }
  int thd = c->layout == cpattnLayoutTHD;
  int64_t B = thd ? 1 : c->batch, row = (int64_t)heads * dim;
  /* One hash per (token, head) seeds a xorshift stream along the head dim: the values
   * depend only on the global token, so every rank count sees the same tensors, and the
   * 2M-token runs fill their inputs in seconds. */
#pragma omp parallel for schedule(static)
  for (int64_t bi = 0; bi < B * n; ++bi) {
    int64_t b = bi / n, i = bi % n;
    int64_t g = thd ? c->cuSeqlens[sq[i]] + pos[i] : b * c->seqLen + pos[i]; /* global token id */
    int64_t r = c->layout == cpattnLayoutSBHD ? i * B + b : b * n + i;     /* local row */
    for (int h = 0; h < heads; ++h) {
      uint64_t x = splitmix(seed ^ splitmix((uint64_t)tensor << 56 ^ (uint64_t)g << 12 ^ (uint64_t)h)) | 1u;
      for (int d = 0; d < dim; ++d) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        float v = (float)((x >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
        int64_t at = r * row + (int64_t)h * dim + d;
        if (c->dtype == cpattnFloat32) ((float *)host)[at] = v;
        else ((uint16_t *)host)[at] = to_half_bits(v, c->dtype);
      }
    }
  }
  free(pos);
  free(sq);
  return 0;
}

static double pairs_of(int64_t L, const cpattnConfig_t *c) {
  int64_t lo = -1, hi = -1;
  if (c->mask == cpattnMaskCausal) hi = 0;
  if (c->mask == cpattnMaskSlidingWindow) {
    lo = c->windowLeft;
    hi = c->windowRight;
  }
  double pairs = 0;
  for (int64_t q = 0; q < L; ++q) {
    int64_t first = lo < 0 ? 0 : (q - lo > 0 ? q - lo : 0);
    int64_t last = hi < 0 ? L - 1 : (q + hi < L - 1 ? q + hi : L - 1);
    if (last >= first) pairs += (double)(last - first + 1);
  }
  return pairs;
}

double bench_visible_pairs(const cpattnConfig_t *c) {
  if (c->layout != cpattnLayoutTHD) return pairs_of(c->seqLen, c) * c->batch;
  double p = 0;
  for (int b = 0; b < c->batch; ++b) p += pairs_of(c->cuSeqlens[b + 1] - c->cuSeqlens[b], c);
  return p;
}

int bench_thd_lengths(uint64_t seed, int64_t total, int64_t lo, int64_t hi, int32_t *cu) {
  int n = 0;
  cu[0] = 0;
  if (lo < 1) lo = 1;
  if (hi < lo) hi = lo;
  while (cu[n] < total) {
    double u = (double)(splitmix(seed ^ (uint64_t)(n + 1) * 0x51ed27u) >> 11) * (1.0 / 9007199254740992.0);
    int64_t len = (int64_t)exp(log((double)lo) + u * (log((double)hi) - log((double)lo)));
    if (len < 1) len = 1;
    if (cu[n] + len > total) len = total - cu[n];
    cu[n + 1] = (int32_t)(cu[n] + len);
    ++n;
  }
  return n;
}

static double load(const void *p, cpattnDataType_t dt, int64_t i) {
  if (dt == cpattnFloat32) return ((const float *)p)[i];
  uint16_t h = ((const uint16_t *)p)[i];
  if (dt == cpattnBFloat16) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
  }
  int exp = (h >> 10) & 31, mant = h & 1023;
  double v = exp == 0 ? ldexp(mant, -24) : exp == 31 ? (mant ? NAN : INFINITY) : ldexp(1024 + mant, exp - 25);
  return (h & 0x8000) ? -v : v;
}

double bench_rel_err(const void *got, const void *want, cpattnDataType_t dt, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    double g = load(got, dt, i), w = load(want, dt, i);
    if (isnan(g) || isnan(w)) return INFINITY;
    if (fabs(g - w) > num) num = fabs(g - w);
    if (fabs(w) > den) den = fabs(w);
  }
  return den > 0 ? num / den : num;
}

double bench_rel_l2(const void *got, const void *want, cpattnDataType_t dt, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    double g = load(got, dt, i), w = load(want, dt, i);
    if (isnan(g) || isnan(w)) return INFINITY;
    num += (g - w) * (g - w);
    den += w * w;
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

double bench_rel_err_lse(const float *got, const float *want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (isnan(got[i]) || isinf(got[i]) != isinf(want[i])) return INFINITY;
    if (isinf(want[i])) continue;
    if (fabs((double)got[i] - want[i]) > num) num = fabs((double)got[i] - want[i]);
    if (fabs(want[i]) > den) den = fabs(want[i]);
  }
  return den > 0 ? num / den : num;
}
