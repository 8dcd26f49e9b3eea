/*
 * attn_ref.c -- CPU reference attention (see attn_ref.h for the contract).
 *
 * Numerics. A score is s = (double)scale * dot_fp32(q, k): the dot product is fp32 (with
 * eight partial sums, so the compiler can vectorise it) and is computed by the same
 * function, in the same order, in forward and backward and whatever the key range, so a
 * split of the keys never changes a score. Everything after the score (exp, the softmax
 * sums, the output rows, dQ/dK/dV rows) is fp64 and rounded once when stored. In backward
 * dP = dO . V is an fp64 sum too, like D = rowsum(dO * O), because dP - D cancels.
 *
 * Memory. bf16 inputs are converted to fp32 once per row, not once per use: a query row
 * once per (row, head) (in backward once per 128-key tile), key and value rows once per
 * call and kv head, shared by the head's group of query heads. The copies live in scratch
 * from one malloc per call: forward, (keys some row sees) x (d_qk + d_v) floats, only when
 * K or V is bf16; backward, at most 128 x (d_qk + d_v) x 12 bytes (384 KiB), with its fp64
 * dK/dV accumulators. If the malloc fails there is no status to return, so forward
 * converts a key row each time it is used (same numbers, slower) and backward runs 4-key
 * tiles out of a 16 KiB stack buffer (so dQ is rounded to fp32 every 4 keys rather than
 * every 128). Nothing is allocated per row and nothing aborts.
 *
 * IEEE infinities carry meaning here (lse = -inf marks a row that sees no key): do not
 * build this file with -ffast-math or -ffinite-math-only.
 *
 * Work. Each query row visits only its visible key range [i + diag_lo, i + diag_hi] (and
 * each key tile in backward only the query rows that can see it), so fully masked parts
 * of a block cost nothing.
 */
#include "attn_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
  kMaxHeadDim = 256,
  /* Keys scored at a time in forward: the online softmax rescales its fp64 row sums once
   * per tile, so a tile of this size makes the rescale cost negligible. */
  kScoreTile = 128,
  /* Keys per backward tile: dK/dV of a tile (fp64) plus its K/V rows stay in L2 while
   * every query row that sees the tile streams past. */
  kBwdKeyTile = 128,
  /* Backward tile when the workspace malloc fails: its accumulators live on the stack
   * (2 * 4 * 256 doubles = 16 KiB). */
  kBwdFallbackKeyTile = 4
};

/* The one allocation of a call. Building with -DCPA_REF_TEST_NO_SCRATCH makes it fail
 * every time, so that a second build of the tests covers the fallback paths. */
static void *scratchAlloc(size_t bytes) {
#ifdef CPA_REF_TEST_NO_SCRATCH
  (void)bytes;
  return NULL;
#else
  return malloc(bytes);
#endif
}

/* A shape outside the header's rules (head dims 1..256, n_hkv >= 1 dividing n_hq) would
 * overrun the fixed row buffers or divide by zero. There is no status to return, so the
 * kernels then fill their outputs with NaN wherever the extents allow: a misuse cannot
 * pass for a result. */
static int shapeIsValid(const cpaRefShape *s) {
  return s->d_qk >= 1 && s->d_qk <= kMaxHeadDim && s->d_v >= 1 && s->d_v <= kMaxHeadDim && s->n_hkv >= 1 &&
         s->n_hq >= s->n_hkv && s->n_hq % s->n_hkv == 0;
}

/* ---------------------------------------------------------------------------------- */
/* bf16                                                                                */
/* ---------------------------------------------------------------------------------- */

static inline float floatFromBits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint32_t bitsFromFloat(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

uint16_t cpaFloatToBf16(float f) {
  uint32_t u = bitsFromFloat(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    /* A NaN whose payload sits only in the low 16 bits would round to inf: keep the
     * sign and the high payload, and force the quiet bit so it stays a NaN. */
    return (uint16_t)((u >> 16) | 0x0040u);
  }
  /* Round to nearest, ties to even: add just under half an ulp, plus one when the kept
   * lsb is odd. Overflow past the largest finite value carries into inf, as it should. */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float cpaBf16ToFloat(uint16_t h) { return floatFromBits((uint32_t)h << 16); }

/* An fp64 value rounded once to bf16. Rounding to fp32 first and then to bf16 could round
 * twice (a value just above a bf16 tie lands exactly on it in fp32, then goes to even); so
 * the fp32 step rounds to odd, which keeps the sticky information the second step needs. */
static uint16_t bf16FromDouble(double x) {
  float f = (float)x;
  if ((double)f != x && !isnan(x)) {
    uint32_t u = bitsFromFloat(f);
    if (fabs((double)f) > fabs(x)) u -= 1; /* toward zero: same sign, one ulp smaller */
    f = floatFromBits(u | 1u);
  }
  return cpaFloatToBf16(f);
}

/* ---------------------------------------------------------------------------------- */
/* Strided rows                                                                        */
/* ---------------------------------------------------------------------------------- */

static inline size_t dtypeBytes(cpattnDataType_t dt) { return dt == cpattnFloat32 ? 4 : 2; }

static inline const void *advance(const void *p, cpattnDataType_t dt, int64_t elems) {
  return (const char *)p + elems * (int64_t)dtypeBytes(dt);
}

/* One head of a strided input, read as rows of fp32. */
typedef struct {
  const void *base;       /* row 0 of this head */
  cpattnDataType_t dtype; /* cpattnFloat32; anything else is read as bf16 (as cpaRefLoad) */
  int64_t row_stride;
  int dim;
  const float *cache; /* the rows already converted to fp32, dim apart; NULL if none */
} RowView;

static RowView headView(cpaRefIn t, int head, int dim) {
  RowView v = {advance(t.data, t.dtype, head * t.head_stride), t.dtype, t.row_stride, dim, NULL};
  return v;
}

static void bf16RowToFloat(const uint16_t *src, int n, float *dst) {
  for (int d = 0; d < n; ++d) dst[d] = floatFromBits((uint32_t)src[d] << 16);
}

/* Row r as fp32: in place when the data is fp32 or cached, else converted into tmp. */
static const float *rowAt(const RowView *v, int64_t r, float *tmp) {
  if (v->cache) return v->cache + r * v->dim;
  if (v->dtype == cpattnFloat32) return (const float *)v->base + r * v->row_stride;
  bf16RowToFloat((const uint16_t *)v->base + r * v->row_stride, v->dim, tmp);
  return tmp;
}

/* Converts rows [first, first + n) of a bf16 view into cache (NULL: leave the view
 * uncached) and points the view at it, so that rowAt(v, r - first) is row r. fp32 views
 * need no copy. */
static RowView cacheRows(RowView v, int64_t first, int64_t n, float *cache) {
  v.base = advance(v.base, v.dtype, first * v.row_stride);
  if (v.dtype == cpattnFloat32 || !cache) return v;
  for (int64_t r = 0; r < n; ++r)
    bf16RowToFloat((const uint16_t *)v.base + r * v.row_stride, v.dim, cache + r * v.dim);
  v.cache = cache;
  return v;
}

/* ---------------------------------------------------------------------------------- */
/* Row arithmetic (written so that GCC vectorises it at -O2)                           */
/* ---------------------------------------------------------------------------------- */

/* fp32 dot product with eight independent partial sums: a fixed order (so every caller
 * gets the same bits for the same rows) that the compiler can keep in vector registers. */
static float dotF32(const float *a, const float *b, int n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int d = 0;
  for (; d + 8 <= n; d += 8)
    for (int u = 0; u < 8; ++u) part[u] += a[d + u] * b[d + u];
  for (; d < n; ++d) part[d & 7] += a[d] * b[d];
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
}

static double dotF64(const float *a, const float *b, int n) {
  double part[4] = {0, 0, 0, 0};
  int d = 0;
  for (; d + 4 <= n; d += 4)
    for (int u = 0; u < 4; ++u) part[u] += (double)a[d + u] * b[d + u];
  for (; d < n; ++d) part[d & 3] += (double)a[d] * b[d];
  return (part[0] + part[2]) + (part[1] + part[3]);
}

/* acc += w * x, acc in fp64. */
static void axpyF64(double *acc, double w, const float *x, int n) {
  int d = 0;
  for (; d + 4 <= n; d += 4)
    for (int u = 0; u < 4; ++u) acc[d + u] += w * x[d + u];
  for (; d < n; ++d) acc[d] += w * x[d];
}

static void scaleF64(double *acc, double w, int n) {
  for (int d = 0; d < n; ++d) acc[d] *= w;
}

/* ---------------------------------------------------------------------------------- */
/* Masks                                                                               */
/* ---------------------------------------------------------------------------------- */

static int64_t satAdd(int64_t a, int64_t b) {
  if (b > 0 && a > INT64_MAX - b) return INT64_MAX;
  if (b < 0 && a < INT64_MIN - b) return INT64_MIN;
  return a + b;
}

static int64_t satSub(int64_t a, int64_t b) {
  if (b < 0 && a > INT64_MAX + b) return INT64_MAX;
  if (b > 0 && a < INT64_MIN + b) return INT64_MIN;
  return a - b;
}

/* [*first, *end) = the keys row i sees: i + lo <= j <= i + hi, 0 <= j < n_k. The unbounded
 * sentinels are the int64 extremes, hence saturating arithmetic. Empty when first >= end. */
static void visibleKeys(const cpaRefShape *s, int64_t i, int64_t *first, int64_t *end) {
  int64_t lo = satAdd(i, s->diag_lo), hi = satAdd(i, s->diag_hi);
  *first = lo < 0 ? 0 : lo;
  *end = hi >= s->n_k ? s->n_k : hi + 1;
}

/* [*first, *end) = the query rows that see at least one key of [ja, jb). */
static void rowsSeeingKeys(const cpaRefShape *s, int64_t ja, int64_t jb, int64_t *first, int64_t *end) {
  int64_t lo = satSub(ja, s->diag_hi), hi = satSub(jb - 1, s->diag_lo);
  *first = lo < 0 ? 0 : lo;
  *end = hi >= s->n_q ? s->n_q : hi + 1;
}

/* [*first, *end) = the keys that some row sees (empty when first >= end). Row ranges
 * slide right by one key per row, so their union is one range from row 0's first key to
 * row n_q - 1's last. */
static void keysSeenByAnyRow(const cpaRefShape *s, int64_t *first, int64_t *end) {
  int64_t unused;
  *first = *end = 0;
  if (s->n_q <= 0 || s->n_k <= 0 || s->diag_lo > s->diag_hi) return;
  visibleKeys(s, 0, first, &unused);
  visibleKeys(s, s->n_q - 1, &unused, end);
  if (*first >= *end) *first = *end = 0;
}

/* The one definition of a score, shared by forward and backward. */
static inline double scoreOf(const cpaRefShape *s, const float *q, const float *k) {
  return (double)s->scale * (double)dotF32(q, k, s->d_qk);
}

/* ---------------------------------------------------------------------------------- */
/* Forward                                                                             */
/* ---------------------------------------------------------------------------------- */

/* Softmax-weighted sum of the value rows of keys [j0, j1) (view rows) for one query row, as an
 * online softmax over tiles of keys: acc (d_v, fp64) gets the unnormalised output, *m the
 * running max score and *l the sum of exp(score - *m). */
static void fwdAccumulateRow(const cpaRefShape *s, const float *q, const RowView *k, const RowView *v,
                             int64_t j0, int64_t j1, double *acc, double *m, double *l) {
  double score[kScoreTile];
  float row_tmp[kMaxHeadDim];
  *m = -INFINITY;
  *l = 0.0;
  memset(acc, 0, (size_t)s->d_v * sizeof *acc);
  for (int64_t jt = j0; jt < j1; jt += kScoreTile) {
    int n = (int)(j1 - jt < kScoreTile ? j1 - jt : kScoreTile);
    double tile_max = -INFINITY;
    for (int t = 0; t < n; ++t) {
      score[t] = scoreOf(s, q, rowAt(k, jt + t, row_tmp));
      if (score[t] > tile_max) tile_max = score[t];
    }
    if (tile_max > *m) {
      double rescale = exp(*m - tile_max); /* 0 on the first tile: nothing to rescale */
      *l *= rescale;
      scaleF64(acc, rescale, s->d_v);
      *m = tile_max;
    }
    for (int t = 0; t < n; ++t) {
      double p = exp(score[t] - *m);
      *l += p;
      axpyF64(acc, p, rowAt(v, jt + t, row_tmp), s->d_v);
    }
  }
}

static void storeOutRow(cpaRefOut o, int64_t r, int h, const double *acc, double l, int d_v) {
  int64_t off = r * o.row_stride + h * o.head_stride;
  if (o.dtype == cpattnFloat32) {
    float *dst = (float *)o.data + off;
    for (int d = 0; d < d_v; ++d) dst[d] = (float)(acc[d] / l);
  } else {
    uint16_t *dst = (uint16_t *)o.data + off;
    for (int d = 0; d < d_v; ++d) dst[d] = bf16FromDouble(acc[d] / l);
  }
}

static void storeMaskedRow(cpaRefOut o, int64_t r, int h, int d_v) {
  /* +0.0 in fp32 and in bf16 is all zero bits */
  size_t bytes = (size_t)d_v * dtypeBytes(o.dtype);
  memset((char *)o.data + (r * o.row_stride + h * o.head_stride) * (int64_t)dtypeBytes(o.dtype), 0, bytes);
}

static void fillRowsF32(float *base, int64_t n, int heads, int dim, int64_t row_stride, int64_t head_stride,
                        float value) {
  for (int64_t r = 0; r < n; ++r)
    for (int h = 0; h < heads; ++h)
      for (int d = 0; d < dim; ++d) base[r * row_stride + h * head_stride + d] = value;
}

static void poisonFwd(const cpaRefShape *s, cpaRefOut o, float *lse, int64_t lse_row_stride,
                      int64_t lse_head_stride) {
  for (int64_t r = 0; r < s->n_q; ++r)
    for (int h = 0; h < s->n_hq; ++h) {
      int64_t off = r * o.row_stride + h * o.head_stride;
      for (int d = 0; d < s->d_v; ++d) {
        if (o.dtype == cpattnFloat32) ((float *)o.data)[off + d] = NAN;
        else ((uint16_t *)o.data)[off + d] = cpaFloatToBf16(NAN);
      }
    }
  fillRowsF32(lse, s->n_q, s->n_hq, 1, lse_row_stride, lse_head_stride, NAN);
}

/* n_rows K and V rows of one kv head as fp32; NULL when neither needs converting or the
 * malloc failed (rowAt then converts per use). */
static float *allocKvCache(const cpaRefShape *s, int64_t n_rows, cpaRefIn k, cpaRefIn v, float **k_cache,
                           float **v_cache) {
  size_t k_floats = k.dtype == cpattnFloat32 ? 0 : (size_t)s->d_qk;
  size_t v_floats = v.dtype == cpattnFloat32 ? 0 : (size_t)s->d_v;
  size_t per_row = k_floats + v_floats;
  float *cache = NULL;
  *k_cache = *v_cache = NULL;
  if (n_rows <= 0 || per_row == 0 || (uint64_t)n_rows > SIZE_MAX / sizeof(float) / per_row) return NULL;
  cache = scratchAlloc((size_t)n_rows * per_row * sizeof(float));
  if (!cache) return NULL;
  if (k_floats) *k_cache = cache;
  if (v_floats) *v_cache = cache + (size_t)n_rows * k_floats;
  return cache;
}

void cpaRefAttnFwd(const cpaRefShape *s, cpaRefIn q, cpaRefIn k, cpaRefIn v, cpaRefOut o, float *lse,
                   int64_t lse_row_stride, int64_t lse_head_stride) {
  if (!shapeIsValid(s)) {
    poisonFwd(s, o, lse, lse_row_stride, lse_head_stride);
    return;
  }
  if (s->n_q <= 0) return;
  int group = s->n_hq / s->n_hkv;
  int64_t ka, kb; /* only keys that some row sees are converted; views start at ka */
  keysSeenByAnyRow(s, &ka, &kb);
  float *k_cache = NULL, *v_cache = NULL;
  float *cache = allocKvCache(s, kb - ka, k, v, &k_cache, &v_cache);
  double acc[kMaxHeadDim];
  float q_tmp[kMaxHeadDim];
  for (int g = 0; g < s->n_hkv; ++g) {
    /* the kv head's rows are converted once and shared by its group of query heads */
    RowView kv = cacheRows(headView(k, g, s->d_qk), ka, kb - ka, k_cache);
    RowView vv = cacheRows(headView(v, g, s->d_v), ka, kb - ka, v_cache);
    for (int h = g * group; h < (g + 1) * group; ++h) {
      RowView qv = headView(q, h, s->d_qk);
      for (int64_t i = 0; i < s->n_q; ++i) {
        float *lse_at = lse + i * lse_row_stride + h * lse_head_stride;
        int64_t j0, j1;
        visibleKeys(s, i, &j0, &j1);
        if (j0 >= j1) {
          storeMaskedRow(o, i, h, s->d_v);
          *lse_at = -INFINITY;
          continue;
        }
        double m, l;
        fwdAccumulateRow(s, rowAt(&qv, i, q_tmp), &kv, &vv, j0 - ka, j1 - ka, acc, &m, &l);
        storeOutRow(o, i, h, acc, l, s->d_v);
        *lse_at = (float)(m + log(l));
      }
    }
  }
  free(cache);
}

/* ---------------------------------------------------------------------------------- */
/* Backward                                                                            */
/* ---------------------------------------------------------------------------------- */

/* The backward's arguments, packed once by the entry point. */
typedef struct {
  cpaRefIn q, k, v, o, dout;
  const float *lse;
  int64_t lse_row_stride, lse_head_stride;
  float *dq, *dk, *dv;
  int64_t dq_row_stride, dq_head_stride, dk_row_stride, dk_head_stride, dv_row_stride, dv_head_stride;
} BwdArgs;

/* Where a key tile's fp64 accumulators and fp32 K/V copies live. */
typedef struct {
  int64_t tile;   /* keys per tile */
  double *dk_acc; /* tile x d_qk */
  double *dv_acc; /* tile x d_v  */
  float *k_cache; /* tile x d_qk, or NULL (K is fp32, or no room) */
  float *v_cache; /* tile x d_v, or NULL */
  void *heap;     /* what to free */
} BwdScratch;

/* One malloc for the call, sized for tiles of up to kBwdKeyTile of the n_keys keys; if it
 * fails, kBwdFallbackKeyTile keys with the caller's stack arrays as accumulators and K/V
 * converted per use. */
static void bwdScratchInit(const cpaRefShape *s, int64_t n_keys, cpaRefIn k, cpaRefIn v, BwdScratch *w,
                           double *stack_dk, double *stack_dv) {
  int64_t tile = n_keys < kBwdKeyTile ? n_keys : kBwdKeyTile;
  size_t k_floats = k.dtype == cpattnFloat32 ? 0 : (size_t)s->d_qk;
  size_t v_floats = v.dtype == cpattnFloat32 ? 0 : (size_t)s->d_v;
  size_t doubles = (size_t)tile * (size_t)(s->d_qk + s->d_v);
  size_t floats = (size_t)tile * (k_floats + v_floats);
  char *heap = scratchAlloc(doubles * sizeof(double) + floats * sizeof(float));
  memset(w, 0, sizeof *w);
  if (!heap) {
    w->tile = tile < kBwdFallbackKeyTile ? tile : kBwdFallbackKeyTile;
    w->dk_acc = stack_dk;
    w->dv_acc = stack_dv;
    return;
  }
  w->heap = heap;
  w->tile = tile;
  w->dk_acc = (double *)heap;
  w->dv_acc = w->dk_acc + (size_t)tile * (size_t)s->d_qk;
  float *f = (float *)(w->dv_acc + (size_t)tile * (size_t)s->d_v);
  if (k_floats) w->k_cache = f;
  if (v_floats) w->v_cache = f + (size_t)tile * k_floats;
}

static void addRowF64(float *dst, const double *src, int n) {
  for (int d = 0; d < n; ++d) dst[d] = (float)((double)dst[d] + src[d]);
}

/* Query row i of head h against keys [j0, j1), all inside the tile whose first key is ja
 * (view row 0 of kt, vt): adds to dQ_i, and to the tile's dK/dV accumulators. */
static void bwdRowTile(const cpaRefShape *s, const BwdArgs *a, int h, int64_t i, double lse_i, const RowView *kt,
                       const RowView *vt, int64_t ja, int64_t j0, int64_t j1, double *dk_acc, double *dv_acc) {
  float q_tmp[kMaxHeadDim], do_tmp[kMaxHeadDim], o_tmp[kMaxHeadDim], k_tmp[kMaxHeadDim], v_tmp[kMaxHeadDim];
  double dq_acc[kMaxHeadDim];
  RowView qv = headView(a->q, h, s->d_qk), ov = headView(a->o, h, s->d_v), dov = headView(a->dout, h, s->d_v);
  const float *q = rowAt(&qv, i, q_tmp);
  const float *dout = rowAt(&dov, i, do_tmp);
  double delta = dotF64(dout, rowAt(&ov, i, o_tmp), s->d_v); /* D_i = rowsum(dO_i * O_i) */
  memset(dq_acc, 0, (size_t)s->d_qk * sizeof *dq_acc);
  for (int64_t j = j0; j < j1; ++j) {
    int64_t t = j - ja;
    const float *kj = rowAt(kt, t, k_tmp);
    double p = exp(scoreOf(s, q, kj) - lse_i);
    /* dP_ij - D_i cancels where a row's weight sits on few keys (on one key, exactly):
     * both accumulate the same way in fp64, so the difference stays accurate */
    double ds = p * (dotF64(dout, rowAt(vt, t, v_tmp), s->d_v) - delta) * (double)s->scale;
    axpyF64(dq_acc, ds, kj, s->d_qk);
    axpyF64(dk_acc + t * s->d_qk, ds, q, s->d_qk);
    axpyF64(dv_acc + t * s->d_v, p, dout, s->d_v);
  }
  addRowF64(a->dq + i * a->dq_row_stride + h * a->dq_head_stride, dq_acc, s->d_qk);
}

/* Keys [ja, jb) of kv head g: their dK/dV (summed over the group's query heads in fp64,
 * then added to the outputs once) and their share of dQ, visiting only the query rows
 * that see them. */
static void bwdKeyTile(const cpaRefShape *s, const BwdArgs *a, int g, int64_t ja, int64_t jb, const BwdScratch *w) {
  int group = s->n_hq / s->n_hkv;
  RowView kt = cacheRows(headView(a->k, g, s->d_qk), ja, jb - ja, w->k_cache);
  RowView vt = cacheRows(headView(a->v, g, s->d_v), ja, jb - ja, w->v_cache);
  int64_t i0, i1;
  memset(w->dk_acc, 0, (size_t)(jb - ja) * (size_t)s->d_qk * sizeof(double));
  memset(w->dv_acc, 0, (size_t)(jb - ja) * (size_t)s->d_v * sizeof(double));
  rowsSeeingKeys(s, ja, jb, &i0, &i1);
  for (int h = g * group; h < (g + 1) * group; ++h)
    for (int64_t i = i0; i < i1; ++i) {
      double lse_i = a->lse[i * a->lse_row_stride + h * a->lse_head_stride];
      int64_t j0, j1;
      if (lse_i == -INFINITY) continue; /* the row saw no key anywhere: P = 0 */
      visibleKeys(s, i, &j0, &j1);
      if (j0 < ja) j0 = ja;
      if (j1 > jb) j1 = jb;
      if (j0 < j1) bwdRowTile(s, a, h, i, lse_i, &kt, &vt, ja, j0, j1, w->dk_acc, w->dv_acc);
    }
  for (int64_t j = ja; j < jb; ++j) {
    addRowF64(a->dk + j * a->dk_row_stride + g * a->dk_head_stride, w->dk_acc + (j - ja) * s->d_qk, s->d_qk);
    addRowF64(a->dv + j * a->dv_row_stride + g * a->dv_head_stride, w->dv_acc + (j - ja) * s->d_v, s->d_v);
  }
}

void cpaRefAttnBwd(const cpaRefShape *s, cpaRefIn q, cpaRefIn k, cpaRefIn v, cpaRefIn o, cpaRefIn dout,
                   const float *lse, int64_t lse_row_stride, int64_t lse_head_stride, float *dq,
                   int64_t dq_row_stride, int64_t dq_head_stride, float *dk, int64_t dk_row_stride,
                   int64_t dk_head_stride, float *dv, int64_t dv_row_stride, int64_t dv_head_stride,
                   int accumulate) {
  BwdArgs a = {q, k, v, o, dout, lse, lse_row_stride, lse_head_stride, dq, dk, dv,
               dq_row_stride, dq_head_stride, dk_row_stride, dk_head_stride, dv_row_stride, dv_head_stride};
  int valid = shapeIsValid(s);
  if (!accumulate || !valid) {
    float value = valid ? 0.0f : NAN;
    fillRowsF32(dq, s->n_q, s->n_hq, s->d_qk, dq_row_stride, dq_head_stride, value);
    fillRowsF32(dk, s->n_k, s->n_hkv, s->d_qk, dk_row_stride, dk_head_stride, value);
    fillRowsF32(dv, s->n_k, s->n_hkv, s->d_v, dv_row_stride, dv_head_stride, value);
  }
  int64_t ka, kb; /* keys no row sees get no gradient: their rows are left as they are */
  if (!valid) return;
  keysSeenByAnyRow(s, &ka, &kb);
  if (ka >= kb) return;
  double stack_dk[kBwdFallbackKeyTile * kMaxHeadDim], stack_dv[kBwdFallbackKeyTile * kMaxHeadDim];
  BwdScratch w;
  bwdScratchInit(s, kb - ka, k, v, &w, stack_dk, stack_dv);
  for (int g = 0; g < s->n_hkv; ++g)
    for (int64_t ja = ka; ja < kb; ja += w.tile) bwdKeyTile(s, &a, g, ja, kb - ja < w.tile ? kb : ja + w.tile, &w);
  free(w.heap);
}

/* ---------------------------------------------------------------------------------- */
/* Merge                                                                               */
/* ---------------------------------------------------------------------------------- */

/* A side whose lse is -inf has weight 0 and its o is never read: an accumulator that
 * starts as (lse = -inf, o = anything) is then safe, and 0 * garbage cannot make a NaN. */
static void mergeRow(float *o_acc, float *lse_acc, const float *o_part, float lse_part, int d_v) {
  double la = *lse_acc, lp = lse_part;
  if (lp == -INFINITY) {
    if (la == -INFINITY) memset(o_acc, 0, (size_t)d_v * sizeof *o_acc);
    return;
  }
  if (la == -INFINITY) {
    memcpy(o_acc, o_part, (size_t)d_v * sizeof *o_acc);
    *lse_acc = lse_part;
    return;
  }
  double top = la > lp ? la : lp; /* NaN on either side propagates through the diff */
  double lse = top + log1p(exp(-fabs(la - lp)));
  double wa = exp(la - lse), wp = exp(lp - lse);
  for (int d = 0; d < d_v; ++d) o_acc[d] = (float)(wa * o_acc[d] + wp * o_part[d]);
  *lse_acc = (float)lse;
}

void cpaRefMerge(int64_t n_rows, int n_heads, int d_v, float *o_acc, int64_t o_acc_row_stride,
                 int64_t o_acc_head_stride, float *lse_acc, int64_t lse_acc_row_stride,
                 int64_t lse_acc_head_stride, const float *o_part, int64_t o_part_row_stride,
                 int64_t o_part_head_stride, const float *lse_part, int64_t lse_part_row_stride,
                 int64_t lse_part_head_stride) {
  for (int64_t r = 0; r < n_rows; ++r)
    for (int h = 0; h < n_heads; ++h)
      mergeRow(o_acc + r * o_acc_row_stride + h * o_acc_head_stride,
               lse_acc + r * lse_acc_row_stride + h * lse_acc_head_stride,
               o_part + r * o_part_row_stride + h * o_part_head_stride,
               lse_part[r * lse_part_row_stride + h * lse_part_head_stride], d_v);
}
