/*
 * test_attn_ref.c -- the CPU reference attention kernels against a naive float64
 * implementation, against finite differences, and against themselves split into key
 * chunks and merged.
 *
 * Every input is fresh N(0,1) data from a seeded generator, rounded to the input dtype so
 * that the float64 reference sees exactly the values the kernel sees: what is left is the
 * kernel's own error. Buffers are filled with a NaN sentinel before use: reading a gap
 * between strided rows turns the result into NaN, and writing outside the block's rows
 * changes a sentinel, so both show up as failures.
 *
 * Usage: test_attn_ref [cmocka test name filter, e.g. "*merge*"]
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attn_ref.h"

#define UNB_LO CPA_DIAG_UNBOUNDED_LO
#define UNB_HI CPA_DIAG_UNBOUNDED_HI

enum { kMaxSeq = 8 };

/* ---------------------------------------------------------------------------------- */
/* Tolerances (error metric: |got - ref| / (|ref| + rms(ref)), so that elements near    */
/* zero are judged on the tensor's scale instead of their own)                         */
/* ---------------------------------------------------------------------------------- */

/* fp32 forward: each score is an fp32 dot product of up to 256 terms (relative error a
 * few 1e-7 with eight partial sums), and o is rounded once to fp32. Measured worst over
 * all cases: 1.5e-6 (at S = 1025), so 1e-5 leaves a factor of ~7, while any real bug (a
 * wrong mask edge, head mapping or stride) gives errors of order 1. */
static const double kTolFwd = 1e-5;
/* fp32 backward: adds the fp32 LSE (its rounding scales every P of a row by 1 + |lse| *
 * 2^-24) and fp32 o in D = rowsum(dO * O). Measured worst: 3.1e-6, hence 5e-5 (~16x). */
static const double kTolBwd = 5e-5;
/* bf16 output: the exact value rounded once to nearest even is off by at most half an
 * ulp, 2^-8 of its magnitude (8 significant bits), plus the fp32 error before rounding. */
static const double kTolBf16Out = 1.0 / 256 + 1e-5;
/* LSE is judged against |lse| + 1 (it is a log: absolute error matters near 0). */
static const double kLseFloor = 1.0;

/* ---------------------------------------------------------------------------------- */
/* Random numbers                                                                      */
/* ---------------------------------------------------------------------------------- */

typedef struct {
  uint64_t state;
} Rng;

static uint64_t rngNext(Rng *r) { /* splitmix64 */
  uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double rngUniform(Rng *r) { return (double)(rngNext(r) >> 11) * 0x1.0p-53; }

static int64_t rngBelow(Rng *r, int64_t n) { return (int64_t)(rngNext(r) % (uint64_t)n); }

static double rngNormal(Rng *r) {
  double u1 = 1.0 - rngUniform(r), u2 = rngUniform(r);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* x as the nearest value of dtype dt (the kernel's input precision). */
static double roundTo(cpattnDataType_t dt, double x) {
  float f = (float)x;
  return dt == cpattnFloat32 ? f : cpaBf16ToFloat(cpaFloatToBf16(f));
}

static double *randomArray(Rng *r, size_t n, cpattnDataType_t dt) {
  double *x = malloc((n ? n : 1) * sizeof *x);
  assert_non_null(x);
  for (size_t i = 0; i < n; ++i) x[i] = roundTo(dt, rngNormal(r));
  return x;
}

static double *zeroArray(size_t n) {
  double *x = calloc(n ? n : 1, sizeof *x);
  assert_non_null(x);
  return x;
}

static double elapsedSince(const struct timespec *t0) {
  struct timespec t1;
  timespec_get(&t1, TIME_UTC);
  return (double)(t1.tv_sec - t0->tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0->tv_nsec);
}

/* ---------------------------------------------------------------------------------- */
/* Naive float64 attention (the oracle's oracle): every (i, j) pair, mask tested per    */
/* pair, straight from the definitions in attn_ref.h                                   */
/* ---------------------------------------------------------------------------------- */

typedef struct {
  int64_t n_q, n_k;
  int hq, hkv, d_qk, d_v;
  double scale;
  int64_t lo, hi;
} RefShape;

static bool refSees(const RefShape *s, int64_t i, int64_t j) {
  int64_t diff = j - i; /* small: no overflow; the unbounded sentinels compare correctly */
  return diff >= s->lo && diff <= s->hi;
}

/* Four partial sums only so that the S = 1025 cases run in seconds (the compiler may not
 * reorder one sum); in float64 that changes nothing the tests can see. */
static double refDot(const double *a, const double *b, int n) {
  double part[4] = {0, 0, 0, 0};
  int d = 0;
  for (; d + 4 <= n; d += 4)
    for (int u = 0; u < 4; ++u) part[u] += a[d + u] * b[d + u];
  for (; d < n; ++d) part[0] += a[d] * b[d];
  return (part[0] + part[1]) + (part[2] + part[3]);
}

/* Row-major [row][head][dim] arrays of one sequence; lse is [row][head]. */
#define AT(x, r, h, heads, dim) ((x) + ((size_t)(r) * (size_t)(heads) + (size_t)(h)) * (size_t)(dim))

static void refFwd(const RefShape *s, const double *q, const double *k, const double *v, double *o, double *lse) {
  int group = s->hq / s->hkv;
  double *p = malloc((size_t)(s->n_k ? s->n_k : 1) * sizeof *p);
  assert_non_null(p);
  for (int h = 0; h < s->hq; ++h) {
    for (int64_t i = 0; i < s->n_q; ++i) {
      double m = -INFINITY, sum = 0;
      double *oi = AT(o, i, h, s->hq, s->d_v);
      for (int64_t j = 0; j < s->n_k; ++j) {
        const double *qi = AT(q, i, h, s->hq, s->d_qk), *kj = AT(k, j, h / group, s->hkv, s->d_qk);
        p[j] = refSees(s, i, j) ? s->scale * refDot(qi, kj, s->d_qk) : -INFINITY;
        if (p[j] > m) m = p[j];
      }
      memset(oi, 0, (size_t)s->d_v * sizeof *oi);
      if (m == -INFINITY) {
        lse[i * s->hq + h] = -INFINITY;
        continue;
      }
      for (int64_t j = 0; j < s->n_k; ++j) {
        if (p[j] == -INFINITY) continue;
        double e = exp(p[j] - m);
        sum += e;
        const double *vj = AT(v, j, h / group, s->hkv, s->d_v);
        for (int d = 0; d < s->d_v; ++d) oi[d] += e * vj[d];
      }
      for (int d = 0; d < s->d_v; ++d) oi[d] /= sum;
      lse[i * s->hq + h] = m + log(sum);
    }
  }
  free(p);
}

/* Gradients given o and lse, as attn_ref.h defines them (overwrites dq, dk, dv). */
static void refBwd(const RefShape *s, const double *q, const double *k, const double *v, const double *o,
                   const double *dout, const double *lse, double *dq, double *dk, double *dv) {
  int group = s->hq / s->hkv;
  memset(dq, 0, (size_t)s->n_q * (size_t)s->hq * (size_t)s->d_qk * sizeof *dq);
  memset(dk, 0, (size_t)s->n_k * (size_t)s->hkv * (size_t)s->d_qk * sizeof *dk);
  memset(dv, 0, (size_t)s->n_k * (size_t)s->hkv * (size_t)s->d_v * sizeof *dv);
  for (int h = 0; h < s->hq; ++h) {
    int g = h / group;
    for (int64_t i = 0; i < s->n_q; ++i) {
      double lse_i = lse[i * s->hq + h];
      if (lse_i == -INFINITY) continue;
      const double *qi = AT(q, i, h, s->hq, s->d_qk), *doi = AT(dout, i, h, s->hq, s->d_v);
      double delta = refDot(doi, AT(o, i, h, s->hq, s->d_v), s->d_v);
      double *dqi = AT(dq, i, h, s->hq, s->d_qk);
      for (int64_t j = 0; j < s->n_k; ++j) {
        if (!refSees(s, i, j)) continue;
        const double *kj = AT(k, j, g, s->hkv, s->d_qk), *vj = AT(v, j, g, s->hkv, s->d_v);
        double p = exp(s->scale * refDot(qi, kj, s->d_qk) - lse_i);
        double ds = p * (refDot(doi, vj, s->d_v) - delta) * s->scale;
        double *dkj = AT(dk, j, g, s->hkv, s->d_qk), *dvj = AT(dv, j, g, s->hkv, s->d_v);
        for (int d = 0; d < s->d_qk; ++d) {
          dqi[d] += ds * kj[d];
          dkj[d] += ds * qi[d];
        }
        for (int d = 0; d < s->d_v; ++d) dvj[d] += p * doi[d];
      }
    }
  }
}

/* ---------------------------------------------------------------------------------- */
/* Error measurement                                                                   */
/* ---------------------------------------------------------------------------------- */

static double rmsOf(const double *x, size_t n) {
  double sum = 0;
  size_t finite = 0;
  for (size_t i = 0; i < n; ++i)
    if (isfinite(x[i])) sum += x[i] * x[i], ++finite;
  return finite ? sqrt(sum / (double)finite) : 0;
}

static double elemError(double got, double ref, double floor) {
  if (got == ref) return 0; /* also both -inf */
  if (!isfinite(got) || !isfinite(ref)) return INFINITY;
  return fabs(got - ref) / (fabs(ref) + floor);
}

/* Worst error of got vs ref ([n / (heads*dim)][heads][dim]); fails the test, naming the
 * worst element, when it exceeds tol. floor < 0 means rms(ref). Returns the worst error. */
static double expectClose(const char *name, const char *what, const double *got, const double *ref, size_t n,
                          int heads, int dim, double floor, double tol) {
  double worst = 0;
  size_t at = 0;
  if (floor < 0) floor = rmsOf(ref, n) + 1e-300;
  for (size_t i = 0; i < n; ++i) {
    double e = elemError(got[i], ref[i], floor);
    if (!(e <= worst)) worst = e, at = i; /* NaN counts as worst */
  }
  if (!(worst <= tol)) {
    size_t per_row = (size_t)heads * (size_t)dim;
    print_error("%s: %s worst error %.3g > %.3g at row %zu head %zu dim %zu: got %.9g, want %.9g\n", name, what,
                worst, tol, at / per_row, at % per_row / (size_t)dim, at % (size_t)dim, got[at], ref[at]);
    fail();
  }
  return worst;
}

/* ---------------------------------------------------------------------------------- */
/* Buffers with sentinels, and strided views into them                                 */
/* ---------------------------------------------------------------------------------- */

#define SENTINEL_F32 0x7fc5a5a5u
#define SENTINEL_BF16 0x7fc5u

typedef struct {
  unsigned char *bytes;
  size_t n; /* elements */
  cpattnDataType_t dtype;
  unsigned char *owned; /* 1 where some logical element lives */
} Buf;

static size_t elemSize(cpattnDataType_t dt) { return dt == cpattnFloat32 ? 4 : 2; }

static void bufInit(Buf *b, size_t n, cpattnDataType_t dt) {
  b->n = n;
  b->dtype = dt;
  b->bytes = malloc((n ? n : 1) * elemSize(dt));
  b->owned = calloc(n ? n : 1, 1);
  assert_non_null(b->bytes);
  assert_non_null(b->owned);
  for (size_t i = 0; i < n; ++i) {
    if (dt == cpattnFloat32) {
      uint32_t s = SENTINEL_F32;
      memcpy(b->bytes + 4 * i, &s, 4);
    } else {
      uint16_t s = SENTINEL_BF16;
      memcpy(b->bytes + 2 * i, &s, 2);
    }
  }
}

static void bufFree(Buf *b) {
  free(b->bytes);
  free(b->owned);
}

static bool bufIsSentinel(const Buf *b, size_t i) {
  if (b->dtype == cpattnFloat32) {
    uint32_t u;
    memcpy(&u, b->bytes + 4 * i, 4);
    return u == SENTINEL_F32;
  }
  uint16_t u;
  memcpy(&u, b->bytes + 2 * i, 2);
  return u == SENTINEL_BF16;
}

static double bufGet(const Buf *b, size_t i) { return cpaRefLoad(b->bytes, b->dtype, (int64_t)i); }

static void bufSet(Buf *b, size_t i, double x) {
  if (b->dtype == cpattnFloat32) {
    float f = (float)x;
    memcpy(b->bytes + 4 * i, &f, 4);
  } else {
    uint16_t h = cpaFloatToBf16((float)x);
    memcpy(b->bytes + 2 * i, &h, 2);
  }
}

/* After a kernel wrote the tensors living in b: every owned element was written and is
 * not NaN (lse = -inf is fine), every other element still holds its sentinel. */
static void expectWritesExact(const char *name, const char *what, const Buf *b) {
  for (size_t i = 0; i < b->n; ++i) {
    bool sentinel = bufIsSentinel(b, i);
    if (b->owned[i] && (sentinel || isnan(bufGet(b, i)))) {
      print_error("%s: %s element %zu was %s\n", name, what, i, sentinel ? "not written" : "NaN");
      fail();
    }
    if (!b->owned[i] && !sentinel) {
      print_error("%s: %s element %zu (outside every row) was overwritten\n", name, what, i);
      fail();
    }
  }
}

/* Tensor (seq b, row r, head h, dim d) at base[b] + r*row_stride + h*head_stride + d. */
typedef struct {
  Buf *buf;
  int n_seq;
  const int64_t *len; /* rows of each sequence */
  int heads, dim;
  int64_t base[kMaxSeq];
  int64_t row_stride, head_stride;
} View;

static size_t viewIndex(const View *v, int b, int64_t r, int h, int d) {
  return (size_t)(v->base[b] + r * v->row_stride + h * v->head_stride + d);
}

static void viewMarkOwned(const View *v) {
  for (int b = 0; b < v->n_seq; ++b)
    for (int64_t r = 0; r < v->len[b]; ++r)
      for (int h = 0; h < v->heads; ++h)
        for (int d = 0; d < v->dim; ++d) {
          size_t i = viewIndex(v, b, r, h, d);
          assert_true(i < v->buf->n);
          assert_int_equal(v->buf->owned[i], 0); /* views of one buffer never overlap */
          v->buf->owned[i] = 1;
        }
}

/* Logical arrays are packed [token][head][dim], sequence b starting at token cu[b]. */
static void viewStore(const View *v, const int64_t *cu, const double *x) {
  for (int b = 0; b < v->n_seq; ++b)
    for (int64_t r = 0; r < v->len[b]; ++r)
      for (int h = 0; h < v->heads; ++h)
        for (int d = 0; d < v->dim; ++d)
          bufSet(v->buf, viewIndex(v, b, r, h, d), AT(x, cu[b] + r, h, v->heads, v->dim)[d]);
}

static void viewLoad(const View *v, const int64_t *cu, double *x) {
  for (int b = 0; b < v->n_seq; ++b)
    for (int64_t r = 0; r < v->len[b]; ++r)
      for (int h = 0; h < v->heads; ++h)
        for (int d = 0; d < v->dim; ++d)
          AT(x, cu[b] + r, h, v->heads, v->dim)[d] = bufGet(v->buf, viewIndex(v, b, r, h, d));
}

static void *viewData(const View *v, int b) { return v->buf->bytes + (size_t)v->base[b] * elemSize(v->buf->dtype); }

static cpaRefIn viewIn(const View *v, int b) {
  cpaRefIn in = {viewData(v, b), v->buf->dtype, v->row_stride, v->head_stride};
  return in;
}

static cpaRefOut viewOut(const View *v, int b) {
  cpaRefOut out = {viewData(v, b), v->buf->dtype, v->row_stride, v->head_stride};
  return out;
}

static float *viewF32(const View *v, int b) { return (float *)viewData(v, b); }

/* ---------------------------------------------------------------------------------- */
/* Test problems: a batch of sequences in one layout                                   */
/* ---------------------------------------------------------------------------------- */

typedef enum {
  kBSHD,      /* [batch][seq][head][dim (+pad)]                                            */
  kSBHD,      /* [seq][batch][head][dim (+pad)]: a sequence's rows are batch-interleaved   */
  kTHD,       /* [token][head][dim (+pad)], sequences back to back                          */
  kPackedQKV  /* THD with q, k, v (and dq, dk, dv) interleaved in one buffer per token      */
} LayoutKind;

typedef enum { kMaskNone, kMaskCausal, kMaskWindow } MaskKind;

/* Masks in the header's terms: d = offset (+ n_k - n_q when aligned bottom-right, i.e.
 * the query block is the last n_q positions of the key range); window sides < 0 are
 * unbounded. */
typedef struct {
  MaskKind kind;
  int64_t offset;
  bool bottom_right;
  int64_t wl, wr;
} MaskSpec;

typedef struct {
  const char *name;
  LayoutKind layout;
  int n_seq;
  int64_t len_q[kMaxSeq], len_k[kMaxSeq];
  int hq, hkv, d_qk, d_v;
  cpattnDataType_t in_dt, out_dt;
  MaskSpec mask;
  double scale_mult; /* scale = scale_mult / sqrt(d_qk); 0 means 1 */
  int pad;           /* extra elements after each head's row (gaps the kernel must skip) */
} Case;

static void maskDiag(const MaskSpec *m, int64_t n_q, int64_t n_k, int64_t *lo, int64_t *hi) {
  int64_t d = m->offset + (m->bottom_right ? n_k - n_q : 0);
  *lo = UNB_LO;
  *hi = UNB_HI;
  if (m->kind == kMaskCausal) *hi = d;
  if (m->kind == kMaskWindow) {
    if (m->wl >= 0) *lo = d - m->wl;
    if (m->wr >= 0) *hi = d + m->wr;
  }
}

static double caseScaleMult(const Case *c) { return c->scale_mult ? c->scale_mult : 1.0; }

static double caseScale(const Case *c) { return caseScaleMult(c) / sqrt((double)c->d_qk); }

/* Scores are fp32 dot products, whose absolute error grows with their magnitude: a case
 * whose scale is k times the usual 1/sqrt(d) gets k times the tolerance. */
static double caseTol(const Case *c, double tol) { return tol * (caseScaleMult(c) > 1 ? caseScaleMult(c) : 1); }

/* Everything one case needs: logical inputs and results, the buffers and their views. */
typedef struct {
  const Case *c;
  int64_t cu_q[kMaxSeq + 1], cu_k[kMaxSeq + 1];
  double *q, *k, *v, *dout;                /* inputs                                  */
  double *o, *lse, *dq, *dk, *dv;          /* kernel results, read back               */
  double *o_ref, *lse_ref, *dq_ref, *dk_ref, *dv_ref;
  Buf b_qkv[3], b_do, b_o, b_lse, b_dqkv[3];
  View q_v, k_v, v_v, do_v, o_v, lse_v, dq_v, dk_v, dv_v;
} Problem;

static void cumulative(const int64_t *len, int n, int64_t *cu) {
  cu[0] = 0;
  for (int b = 0; b < n; ++b) cu[b + 1] = cu[b] + len[b];
}

/* A view of `heads` x `dim` rows in its own buffer, in the case's layout (kPackedQKV
 * tensors that are not q/k/v live as THD). */
static void placeAlone(const Case *c, const int64_t *len, const int64_t *cu, int heads, int dim, cpattnDataType_t dt,
                       Buf *buf, View *v) {
  int64_t hs = dim + c->pad, n_rows = cu[c->n_seq];
  memset(v, 0, sizeof *v);
  v->buf = buf, v->n_seq = c->n_seq, v->len = len, v->heads = heads, v->dim = dim, v->head_stride = hs;
  if (c->layout == kBSHD || c->layout == kSBHD)
    for (int b = 0; b < c->n_seq; ++b) assert_int_equal(len[b], len[0]); /* padded layouts: equal lengths */
  for (int b = 0; b < c->n_seq; ++b) {
    if (c->layout == kBSHD) v->base[b] = b * len[0] * heads * hs;
    else if (c->layout == kSBHD) v->base[b] = b * heads * hs;
    else v->base[b] = cu[b] * heads * hs;
  }
  v->row_stride = c->layout == kSBHD ? c->n_seq * heads * hs : heads * hs;
  bufInit(buf, (size_t)(n_rows * heads * hs), dt);
  viewMarkOwned(v);
}

/* lse: [batch][head][seq] for BSHD/SBHD (as flash-attention keeps it), [head][token] for
 * THD, [token][head] for packed QKV: three different (row, head) stride pairs. */
static void placeLse(const Case *c, const int64_t *len, const int64_t *cu, Buf *buf, View *v) {
  int64_t total = cu[c->n_seq];
  memset(v, 0, sizeof *v);
  v->buf = buf, v->n_seq = c->n_seq, v->len = len, v->heads = c->hq, v->dim = 1;
  for (int b = 0; b < c->n_seq; ++b) {
    if (c->layout == kBSHD || c->layout == kSBHD) v->base[b] = b * c->hq * len[0];
    else if (c->layout == kTHD) v->base[b] = cu[b];
    else v->base[b] = cu[b] * c->hq;
  }
  v->row_stride = c->layout == kPackedQKV ? c->hq : 1;
  v->head_stride = c->layout == kBSHD || c->layout == kSBHD ? len[0] : c->layout == kTHD ? total : 1;
  bufInit(buf, (size_t)(total * c->hq), cpattnFloat32);
  viewMarkOwned(v);
}

/* q, k, v (or dq, dk, dv) interleaved per token: [token][head][3][dim] for MHA, and
 * [token][hq + 2 hkv][dim] (q heads, then k heads, then v heads) for GQA. */
static void placePacked(const Case *c, const Problem *p, cpattnDataType_t dt, Buf *buf, View *vq, View *vk,
                        View *vv) {
  int d = c->d_qk;
  bool mha = c->hq == c->hkv;
  int64_t row = (int64_t)(c->hq + 2 * c->hkv) * d;
  View *views[3] = {vq, vk, vv};
  assert_int_equal(c->d_qk, c->d_v);
  for (int b = 0; b < c->n_seq; ++b) assert_int_equal(c->len_q[b], c->len_k[b]);
  for (int t = 0; t < 3; ++t) {
    View *v = views[t];
    memset(v, 0, sizeof *v);
    v->buf = buf, v->n_seq = c->n_seq, v->len = c->len_q, v->heads = t == 0 ? c->hq : c->hkv, v->dim = d;
    v->row_stride = row;
    v->head_stride = mha ? 3 * d : d;
    int64_t first = mha ? t * d : (t == 0 ? 0 : t == 1 ? c->hq * d : (int64_t)(c->hq + c->hkv) * d);
    for (int b = 0; b < c->n_seq; ++b) v->base[b] = p->cu_q[b] * row + first;
  }
  bufInit(buf, (size_t)(p->cu_q[c->n_seq] * row), dt);
  for (int t = 0; t < 3; ++t) viewMarkOwned(views[t]);
}

static void problemInit(Problem *p, const Case *c, Rng *rng) {
  memset(p, 0, sizeof *p);
  p->c = c;
  cumulative(c->len_q, c->n_seq, p->cu_q);
  cumulative(c->len_k, c->n_seq, p->cu_k);
  size_t nq = (size_t)p->cu_q[c->n_seq], nk = (size_t)p->cu_k[c->n_seq];
  p->q = randomArray(rng, nq * c->hq * c->d_qk, c->in_dt);
  p->k = randomArray(rng, nk * c->hkv * c->d_qk, c->in_dt);
  p->v = randomArray(rng, nk * c->hkv * c->d_v, c->in_dt);
  p->dout = randomArray(rng, nq * c->hq * c->d_v, c->in_dt);
  p->o = zeroArray(nq * c->hq * c->d_v), p->o_ref = zeroArray(nq * c->hq * c->d_v);
  p->lse = zeroArray(nq * c->hq), p->lse_ref = zeroArray(nq * c->hq);
  p->dq = zeroArray(nq * c->hq * c->d_qk), p->dq_ref = zeroArray(nq * c->hq * c->d_qk);
  p->dk = zeroArray(nk * c->hkv * c->d_qk), p->dk_ref = zeroArray(nk * c->hkv * c->d_qk);
  p->dv = zeroArray(nk * c->hkv * c->d_v), p->dv_ref = zeroArray(nk * c->hkv * c->d_v);
  if (c->layout == kPackedQKV) {
    placePacked(c, p, c->in_dt, &p->b_qkv[0], &p->q_v, &p->k_v, &p->v_v);
    placePacked(c, p, cpattnFloat32, &p->b_dqkv[0], &p->dq_v, &p->dk_v, &p->dv_v);
  } else {
    placeAlone(c, c->len_q, p->cu_q, c->hq, c->d_qk, c->in_dt, &p->b_qkv[0], &p->q_v);
    placeAlone(c, c->len_k, p->cu_k, c->hkv, c->d_qk, c->in_dt, &p->b_qkv[1], &p->k_v);
    placeAlone(c, c->len_k, p->cu_k, c->hkv, c->d_v, c->in_dt, &p->b_qkv[2], &p->v_v);
    placeAlone(c, c->len_q, p->cu_q, c->hq, c->d_qk, cpattnFloat32, &p->b_dqkv[0], &p->dq_v);
    placeAlone(c, c->len_k, p->cu_k, c->hkv, c->d_qk, cpattnFloat32, &p->b_dqkv[1], &p->dk_v);
    placeAlone(c, c->len_k, p->cu_k, c->hkv, c->d_v, cpattnFloat32, &p->b_dqkv[2], &p->dv_v);
  }
  placeAlone(c, c->len_q, p->cu_q, c->hq, c->d_v, c->in_dt, &p->b_do, &p->do_v);
  placeAlone(c, c->len_q, p->cu_q, c->hq, c->d_v, c->out_dt, &p->b_o, &p->o_v);
  placeLse(c, c->len_q, p->cu_q, &p->b_lse, &p->lse_v);
  viewStore(&p->q_v, p->cu_q, p->q);
  viewStore(&p->k_v, p->cu_k, p->k);
  viewStore(&p->v_v, p->cu_k, p->v);
  viewStore(&p->do_v, p->cu_q, p->dout);
}

static void problemFree(Problem *p) {
  double *arrays[] = {p->q,  p->k,  p->v,     p->dout,    p->o,      p->lse,    p->dq,
                      p->dk, p->dv, p->o_ref, p->lse_ref, p->dq_ref, p->dk_ref, p->dv_ref};
  for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; ++i) free(arrays[i]);
  for (int t = 0; t < 3; ++t) {
    if (p->b_qkv[t].bytes) bufFree(&p->b_qkv[t]);
    if (p->b_dqkv[t].bytes) bufFree(&p->b_dqkv[t]);
  }
  bufFree(&p->b_do);
  bufFree(&p->b_o);
  bufFree(&p->b_lse);
}

static cpaRefShape kernelShape(const Case *c, int64_t n_q, int64_t n_k) {
  cpaRefShape s = {n_q, n_k, c->hq, c->hkv, c->d_qk, c->d_v, (float)caseScale(c), 0, 0};
  maskDiag(&c->mask, n_q, n_k, &s.diag_lo, &s.diag_hi);
  return s;
}

static RefShape refShape(const cpaRefShape *s) {
  RefShape r = {s->n_q, s->n_k, s->n_hq, s->n_hkv, s->d_qk, s->d_v, s->scale, s->diag_lo, s->diag_hi};
  return r;
}

static void runKernelFwd(Problem *p) {
  const Case *c = p->c;
  for (int b = 0; b < c->n_seq; ++b) {
    cpaRefShape s = kernelShape(c, c->len_q[b], c->len_k[b]);
    cpaRefAttnFwd(&s, viewIn(&p->q_v, b), viewIn(&p->k_v, b), viewIn(&p->v_v, b), viewOut(&p->o_v, b),
                  viewF32(&p->lse_v, b), p->lse_v.row_stride, p->lse_v.head_stride);
  }
  expectWritesExact(c->name, "o", &p->b_o);
  expectWritesExact(c->name, "lse", &p->b_lse);
  viewLoad(&p->o_v, p->cu_q, p->o);
  viewLoad(&p->lse_v, p->cu_q, p->lse);
}

/* Backward with the kernel's own o (in the output dtype) and lse, as a training step
 * would run it; accumulate = 0 must overwrite the sentinels in dq, dk, dv. */
static void runKernelBwd(Problem *p) {
  const Case *c = p->c;
  for (int b = 0; b < c->n_seq; ++b) {
    cpaRefShape s = kernelShape(c, c->len_q[b], c->len_k[b]);
    cpaRefIn o_in = viewIn(&p->o_v, b);
    cpaRefAttnBwd(&s, viewIn(&p->q_v, b), viewIn(&p->k_v, b), viewIn(&p->v_v, b), o_in, viewIn(&p->do_v, b),
                  viewF32(&p->lse_v, b), p->lse_v.row_stride, p->lse_v.head_stride, viewF32(&p->dq_v, b),
                  p->dq_v.row_stride, p->dq_v.head_stride, viewF32(&p->dk_v, b), p->dk_v.row_stride,
                  p->dk_v.head_stride, viewF32(&p->dv_v, b), p->dv_v.row_stride, p->dv_v.head_stride, 0);
  }
  for (int t = 0; t < 3; ++t)
    if (p->b_dqkv[t].bytes) expectWritesExact(c->name, "dq/dk/dv", &p->b_dqkv[t]);
  viewLoad(&p->dq_v, p->cu_q, p->dq);
  viewLoad(&p->dk_v, p->cu_k, p->dk);
  viewLoad(&p->dv_v, p->cu_k, p->dv);
}

/* The float64 reference, sequence by sequence; backward from the kernel's o (what the
 * kernel was given: D = rowsum(dO * O) is defined on it) and the exact lse. */
static void runReference(Problem *p) {
  const Case *c = p->c;
  for (int b = 0; b < c->n_seq; ++b) {
    cpaRefShape ks = kernelShape(c, c->len_q[b], c->len_k[b]);
    RefShape s = refShape(&ks);
    s.scale = ks.scale; /* the kernel gets the scale as fp32: the oracle uses that value */
    int64_t iq = p->cu_q[b], ik = p->cu_k[b];
    refFwd(&s, AT(p->q, iq, 0, c->hq, c->d_qk), AT(p->k, ik, 0, c->hkv, c->d_qk), AT(p->v, ik, 0, c->hkv, c->d_v),
           AT(p->o_ref, iq, 0, c->hq, c->d_v), p->lse_ref + iq * c->hq);
    refBwd(&s, AT(p->q, iq, 0, c->hq, c->d_qk), AT(p->k, ik, 0, c->hkv, c->d_qk), AT(p->v, ik, 0, c->hkv, c->d_v),
           AT(p->o, iq, 0, c->hq, c->d_v), AT(p->dout, iq, 0, c->hq, c->d_v), p->lse_ref + iq * c->hq,
           AT(p->dq_ref, iq, 0, c->hq, c->d_qk), AT(p->dk_ref, ik, 0, c->hkv, c->d_qk),
           AT(p->dv_ref, ik, 0, c->hkv, c->d_v));
  }
}

/* bf16 outputs must be the exact result rounded once to nearest even: the same bits as
 * the float64 reference rounded so, except where the reference lies so close to a rounding
 * midpoint (within the fp32 tolerance) that the kernel's own error may decide the side.
 * Returns how many elements were that close. */
static size_t expectBf16RoundedToNearest(const char *name, const View *v, const int64_t *cu, const double *ref,
                                         double tol) {
  size_t n = (size_t)cu[v->n_seq] * (size_t)v->heads * (size_t)v->dim, near_mid = 0;
  double floor = rmsOf(ref, n);
  for (int b = 0; b < v->n_seq; ++b)
    for (int64_t r = 0; r < v->len[b]; ++r)
      for (int h = 0; h < v->heads; ++h)
        for (int d = 0; d < v->dim; ++d) {
          double x = AT(ref, cu[b] + r, h, v->heads, v->dim)[d];
          float f = (float)x;
          uint32_t u;
          memcpy(&u, &f, 4);
          uint16_t down = (uint16_t)(u >> 16), got;
          double mid = 0.5 * ((double)cpaBf16ToFloat(down) + (double)cpaBf16ToFloat((uint16_t)(down + 1)));
          memcpy(&got, v->buf->bytes + 2 * viewIndex(v, b, r, h, d), 2);
          if (fabs(x - mid) < tol * (fabs(x) + floor)) {
            ++near_mid;
          } else if (got != cpaFloatToBf16(f)) {
            print_error("%s: bf16 o at seq %d row %lld head %d dim %d is 0x%04x, want 0x%04x (%.9g rounded)\n", name,
                        b, (long long)r, h, d, got, cpaFloatToBf16(f), x);
            fail();
          }
        }
  return near_mid;
}

/* Runs one case: kernel forward and backward, reference, comparisons; prints the worst
 * errors so a run shows how much margin each tolerance has. */
static void checkCaseAgainstReference(const Case *c, uint64_t seed) {
  Rng rng = {seed};
  Problem p;
  struct timespec t0;
  timespec_get(&t0, TIME_UTC);
  problemInit(&p, c, &rng);
  runKernelFwd(&p);
  runKernelBwd(&p);
  runReference(&p);
  size_t nq = (size_t)p.cu_q[c->n_seq], nk = (size_t)p.cu_k[c->n_seq];
  double tol_fwd = caseTol(c, kTolFwd), tol_bwd = caseTol(c, kTolBwd);
  double tol_o = c->out_dt == cpattnFloat32 ? tol_fwd : kTolBf16Out - kTolFwd + tol_fwd;
  double e_o = expectClose(c->name, "o", p.o, p.o_ref, nq * c->hq * c->d_v, c->hq, c->d_v, -1, tol_o);
  double e_l = expectClose(c->name, "lse", p.lse, p.lse_ref, nq * c->hq, c->hq, 1, kLseFloor, tol_fwd);
  double e_dq = expectClose(c->name, "dq", p.dq, p.dq_ref, nq * c->hq * c->d_qk, c->hq, c->d_qk, -1, tol_bwd);
  double e_dk = expectClose(c->name, "dk", p.dk, p.dk_ref, nk * c->hkv * c->d_qk, c->hkv, c->d_qk, -1, tol_bwd);
  double e_dv = expectClose(c->name, "dv", p.dv, p.dv_ref, nk * c->hkv * c->d_v, c->hkv, c->d_v, -1, tol_bwd);
  if (c->out_dt == cpattnBFloat16) {
    size_t near_mid = expectBf16RoundedToNearest(c->name, &p.o_v, p.cu_q, p.o_ref, tol_fwd);
    print_message("  %-40s bf16 o: all bits as rounded from float64, except %zu near a midpoint\n", c->name, near_mid);
  }
  print_message("  %-40s o %.1e lse %.1e dq %.1e dk %.1e dv %.1e  (%.2f s)\n", c->name, e_o, e_l, e_dq, e_dk, e_dv,
                elapsedSince(&t0));
  problemFree(&p);
}

static void checkCases(const Case *cases, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; ++i) checkCaseAgainstReference(&cases[i], seed + 1000 * i);
}

/* ---------------------------------------------------------------------------------- */
/* Forward and backward against the float64 reference                                  */
/* ---------------------------------------------------------------------------------- */

#define F32 cpattnFloat32
#define BF16 cpattnBFloat16
#define NO_MASK {kMaskNone, 0, false, -1, -1}
#define CAUSAL(off, br) {kMaskCausal, off, br, -1, -1}
#define WINDOW(off, br, wl, wr) {kMaskWindow, off, br, wl, wr}

static void test_fwd_bwd_match_float64_reference_bshd(void **state) {
  (void)state;
  static const Case cases[] = {
      {"bshd S97 d64 8/1 none fp32", kBSHD, 2, {97, 97}, {97, 97}, 8, 1, 64, 64, F32, F32, NO_MASK, 0, 0},
      {"bshd S97 d128 8/2 causal bf16", kBSHD, 2, {97, 97}, {97, 97}, 8, 2, 128, 128, BF16, BF16, CAUSAL(0, false), 0, 8},
      {"bshd S1 d256 8/8 causal fp32", kBSHD, 3, {1, 1, 1}, {1, 1, 1}, 8, 8, 256, 256, F32, F32, CAUSAL(0, false), 0, 0},
      {"bshd q1 k97 d256 8/2 causal-br bf16", kBSHD, 2, {1, 1}, {97, 97}, 8, 2, 256, 256, BF16, F32, CAUSAL(0, true), 0, 0},
      {"bshd q97 k1 d64 8/8 window bf16>f32", kBSHD, 1, {97}, {1}, 8, 8, 64, 64, BF16, F32, WINDOW(40, false, 50, 3), 0, 0},
      {"bshd S97 d13/7 8/2 causal-br+3 fp32", kBSHD, 2, {97, 97}, {97, 97}, 8, 2, 13, 7, F32, F32, CAUSAL(3, true), 0, 3},
      {"bshd S97 d64 8/1 peaky(x8) none fp32", kBSHD, 1, {97}, {97}, 8, 1, 64, 64, F32, F32, NO_MASK, 8, 0},
  };
  checkCases(cases, sizeof cases / sizeof cases[0], 11);
}

static void test_fwd_bwd_match_float64_reference_sbhd_batch_interleaved(void **state) {
  (void)state;
  static const Case cases[] = {
      {"sbhd S97 d64 8/2 causal+13 bf16>f32", kSBHD, 3, {97, 97, 97}, {97, 97, 97}, 8, 2, 64, 64, BF16, F32, CAUSAL(13, false), 0, 0},
      {"sbhd S97 d128 8/8 causal-17 f32>bf16", kSBHD, 3, {97, 97, 97}, {97, 97, 97}, 8, 8, 128, 128, F32, BF16, CAUSAL(-17, false), 0, 0},
      {"sbhd q97 k150 d64 8/1 win-left fp32", kSBHD, 2, {97, 97}, {150, 150}, 8, 1, 64, 64, F32, F32, WINDOW(0, true, 20, -1), 0, 4},
      {"sbhd q97 k150 d64 8/2 win-right bf16", kSBHD, 2, {97, 97}, {150, 150}, 8, 2, 64, 64, BF16, BF16, WINDOW(0, true, -1, 16), 0, 0},
      {"sbhd S97 d128 8/1 mistral(32,0) fp32", kSBHD, 2, {97, 97}, {97, 97}, 8, 1, 128, 128, F32, F32, WINDOW(0, false, 32, 0), 0, 0},
  };
  checkCases(cases, sizeof cases / sizeof cases[0], 22);
}

/* n random lengths in [2, max_len], then 0 and 1 put at random places. */
static void randomLengths(Rng *rng, int n, int64_t max_len, int64_t *len) {
  for (int b = 0; b < n; ++b) len[b] = 2 + rngBelow(rng, max_len - 1);
  int64_t at0 = rngBelow(rng, n), at1 = (at0 + 1 + rngBelow(rng, n - 1)) % n;
  len[at0] = 0;
  len[at1] = 1;
}

static void test_fwd_bwd_match_float64_reference_thd_packed_varlen(void **state) {
  (void)state;
  Rng rng = {33};
  Case cases[] = {
      {"thd varlen d64 8/1 causal bf16", kTHD, 5, {0}, {0}, 8, 1, 64, 64, BF16, BF16, CAUSAL(0, false), 0, 0},
      {"thd varlen d128 8/2 window(7,3) fp32", kTHD, 6, {0}, {0}, 8, 2, 128, 128, F32, F32, WINDOW(0, false, 7, 3), 0, 0},
      {"thd varlen q<=k d256 8/8 causal-br f32>bf16", kTHD, 4, {0}, {0}, 8, 8, 256, 256, F32, BF16, CAUSAL(0, true), 0, 8},
      {"thd varlen d64 8/2 none bf16>f32", kTHD, 5, {0}, {0}, 8, 2, 64, 64, BF16, F32, NO_MASK, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    Case *c = &cases[i];
    randomLengths(&rng, c->n_seq, 120, c->len_q);
    memcpy(c->len_k, c->len_q, sizeof c->len_k);
    if (c->mask.bottom_right) /* a query chunk at the end of a longer key range */
      for (int b = 0; b < c->n_seq; ++b) c->len_k[b] = c->len_q[b] + rngBelow(&rng, 40);
  }
  checkCases(cases, sizeof cases / sizeof cases[0], 33);
}

static void test_fwd_bwd_match_float64_reference_interleaved_qkv(void **state) {
  (void)state;
  static const Case cases[] = {
      {"qkv [t][h][3][d] S97 d64 8/8 causal bf16", kPackedQKV, 2, {97, 61}, {97, 61}, 8, 8, 64, 64, BF16, BF16, CAUSAL(0, false), 0, 0},
      {"qkv [t][hq+2hkv][d] S97 d128 8/2 win-right", kPackedQKV, 2, {97, 5}, {97, 5}, 8, 2, 128, 128, F32, F32, WINDOW(0, false, -1, 9), 0, 0},
      {"qkv [t][hq+2hkv][d] S97 d64 8/1 none bf16", kPackedQKV, 1, {97}, {97}, 8, 1, 64, 64, BF16, F32, NO_MASK, 0, 0},
  };
  checkCases(cases, sizeof cases / sizeof cases[0], 44);
}

static void test_fwd_bwd_match_float64_reference_s1025(void **state) {
  (void)state;
  static const Case cases[] = {
      {"bshd S1025 d128 8/1 causal bf16>f32", kBSHD, 1, {1025}, {1025}, 8, 1, 128, 128, BF16, F32, CAUSAL(0, false), 0, 0},
      {"thd S1025 d256 8/2 window(100,100) fp32", kTHD, 1, {1025}, {1025}, 8, 2, 256, 256, F32, F32, WINDOW(0, false, 100, 100), 0, 0},
      {"bshd S1025 d64 8/8 none bf16 padded", kBSHD, 1, {1025}, {1025}, 8, 8, 64, 64, BF16, BF16, NO_MASK, 0, 8},
  };
  checkCases(cases, sizeof cases / sizeof cases[0], 55);
}

/* ---------------------------------------------------------------------------------- */
/* Backward against central finite differences of loss = sum(o * w), all float64       */
/* ---------------------------------------------------------------------------------- */

static double lossOf(const RefShape *s, const double *q, const double *k, const double *v, const double *w,
                     double *o_tmp, double *lse_tmp) {
  refFwd(s, q, k, v, o_tmp, lse_tmp);
  return refDot(o_tmp, w, (int)(s->n_q * s->hq * s->d_v));
}

/* d loss / d x[i] for every i by central differences (step h: truncation error h^2 ~
 * 1e-10, rounding error 1e-16 / h ~ 1e-11, both far below the tolerances). */
static void finiteDiffGrad(const RefShape *s, double *q, double *k, double *v, const double *w, double *x, size_t n,
                           double *grad) {
  const double h = 1e-5;
  double *o_tmp = zeroArray((size_t)(s->n_q * s->hq * s->d_v)), *lse_tmp = zeroArray((size_t)(s->n_q * s->hq));
  for (size_t i = 0; i < n; ++i) {
    double saved = x[i];
    x[i] = saved + h;
    double up = lossOf(s, q, k, v, w, o_tmp, lse_tmp);
    x[i] = saved - h;
    double down = lossOf(s, q, k, v, w, o_tmp, lse_tmp);
    x[i] = saved;
    grad[i] = (up - down) / (2 * h);
  }
  free(o_tmp);
  free(lse_tmp);
}

static float *toF32(const double *x, size_t n) {
  float *f = malloc((n ? n : 1) * sizeof *f);
  assert_non_null(f);
  for (size_t i = 0; i < n; ++i) f[i] = (float)x[i];
  return f;
}

static float *filledF32(size_t n, float x) {
  float *f = malloc((n ? n : 1) * sizeof *f);
  assert_non_null(f);
  for (size_t i = 0; i < n; ++i) f[i] = x;
  return f;
}

static double *toF64(const float *f, size_t n) {
  double *x = zeroArray(n);
  for (size_t i = 0; i < n; ++i) x[i] = f[i];
  return x;
}

static void checkBwdAgainstFiniteDifferences(const char *name, int64_t lo, int64_t hi, uint64_t seed) {
  enum { NQ = 11, NK = 13, HQ = 4, HKV = 2, DQK = 8, DV = 6 };
  Rng rng = {seed};
  RefShape s = {NQ, NK, HQ, HKV, DQK, DV, (float)0.7, lo, hi}; /* the kernel's fp32 scale, exactly */
  size_t nq = NQ * HQ * DQK, nk = NK * HKV * DQK, nv = NK * HKV * DV, no = NQ * HQ * DV;
  double *q = randomArray(&rng, nq, F32), *k = randomArray(&rng, nk, F32), *v = randomArray(&rng, nv, F32);
  double *w = randomArray(&rng, no, F32);
  double *fd_q = zeroArray(nq), *fd_k = zeroArray(nk), *fd_v = zeroArray(nv);
  finiteDiffGrad(&s, q, k, v, w, q, nq, fd_q);
  finiteDiffGrad(&s, q, k, v, w, k, nk, fd_k);
  finiteDiffGrad(&s, q, k, v, w, v, nv, fd_v);

  /* the float64 reference backward, oracle of the other tests, must agree to the finite
   * differences' own error (~1e-9, see finiteDiffGrad) */
  double *o_ref = zeroArray(no), *lse_ref = zeroArray(NQ * HQ);
  double *dq_ref = zeroArray(nq), *dk_ref = zeroArray(nk), *dv_ref = zeroArray(nv);
  refFwd(&s, q, k, v, o_ref, lse_ref);
  refBwd(&s, q, k, v, o_ref, w, lse_ref, dq_ref, dk_ref, dv_ref);
  double e_ref = expectClose(name, "reference dq vs finite differences", dq_ref, fd_q, nq, HQ, DQK, -1, 1e-7);
  e_ref = fmax(e_ref, expectClose(name, "reference dk vs finite differences", dk_ref, fd_k, nk, HKV, DQK, -1, 1e-7));
  e_ref = fmax(e_ref, expectClose(name, "reference dv vs finite differences", dv_ref, fd_v, nv, HKV, DV, -1, 1e-7));

  /* the kernel in fp32, contiguous [row][head][dim] */
  float *qf = toF32(q, nq), *kf = toF32(k, nk), *vf = toF32(v, nv), *wf = toF32(w, no);
  float *of = filledF32(no, NAN), *lsef = filledF32(NQ * HQ, NAN);
  float *dqf = filledF32(nq, NAN), *dkf = filledF32(nk, NAN), *dvf = filledF32(nv, NAN);
  cpaRefShape ks = {NQ, NK, HQ, HKV, DQK, DV, (float)0.7, lo, hi};
  cpaRefIn qi = {qf, F32, HQ * DQK, DQK}, ki = {kf, F32, HKV * DQK, DQK}, vi = {vf, F32, HKV * DV, DV};
  cpaRefIn oi = {of, F32, HQ * DV, DV}, wi = {wf, F32, HQ * DV, DV};
  cpaRefOut oo = {of, F32, HQ * DV, DV};
  cpaRefAttnFwd(&ks, qi, ki, vi, oo, lsef, HQ, 1);
  cpaRefAttnBwd(&ks, qi, ki, vi, oi, wi, lsef, HQ, 1, dqf, HQ * DQK, DQK, dkf, HKV * DQK, DQK, dvf, HKV * DV, DV, 0);
  double *dq = toF64(dqf, nq), *dk = toF64(dkf, nk), *dv = toF64(dvf, nv);
  /* fp32 kernel vs the exact gradient: its fp32 scores, o and lse (measured worst ~7e-7),
   * so 1e-5 as for the forward */
  double e_q = expectClose(name, "dq vs finite differences", dq, fd_q, nq, HQ, DQK, -1, 1e-5);
  double e_k = expectClose(name, "dk vs finite differences", dk, fd_k, nk, HKV, DQK, -1, 1e-5);
  double e_v = expectClose(name, "dv vs finite differences", dv, fd_v, nv, HKV, DV, -1, 1e-5);
  print_message("  %-40s kernel: dq %.1e dk %.1e dv %.1e  float64 reference: %.1e\n", name, e_q, e_k, e_v, e_ref);

  double *all[] = {q, k, v, w, fd_q, fd_k, fd_v, o_ref, lse_ref, dq_ref, dk_ref, dv_ref, dq, dk, dv};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) free(all[i]);
  float *allf[] = {qf, kf, vf, wf, of, lsef, dqf, dkf, dvf};
  for (size_t i = 0; i < sizeof allf / sizeof allf[0]; ++i) free(allf[i]);
}

static void test_bwd_matches_finite_differences_causal(void **state) {
  (void)state;
  /* query block at the end of the key range (d = 2), then one shifted so rows 0..2 see nothing */
  checkBwdAgainstFiniteDifferences("fd causal d=+2", UNB_LO, 2, 101);
  checkBwdAgainstFiniteDifferences("fd causal d=-3", UNB_LO, -3, 102);
}

static void test_bwd_matches_finite_differences_window(void **state) {
  (void)state;
  checkBwdAgainstFiniteDifferences("fd window d=2 (3,1)", 2 - 3, 2 + 1, 103);
  checkBwdAgainstFiniteDifferences("fd window left only (4,-)", -4, UNB_HI, 104);
}

/* ---------------------------------------------------------------------------------- */
/* Key-range splits: merge of per-chunk forwards, sum of per-chunk backwards            */
/* ---------------------------------------------------------------------------------- */

/* One block (single sequence, contiguous [row][head][dim] fp32 arrays, lse [row][head]). */
typedef struct {
  cpaRefShape s;
  float *q, *k, *v, *dout;
} Block;

static float *randomF32(Rng *rng, size_t n) {
  float *f = malloc((n ? n : 1) * sizeof *f);
  assert_non_null(f);
  for (size_t i = 0; i < n; ++i) f[i] = (float)rngNormal(rng);
  return f;
}

static cpaRefIn inF32(const float *x, int heads, int dim) {
  cpaRefIn in = {x, F32, (int64_t)heads * dim, dim};
  return in;
}

/* The diagonal bounds of keys [a, b) of the block: key j of the chunk is key a + j. */
static cpaRefShape chunkShape(const cpaRefShape *whole, int64_t a, int64_t b) {
  cpaRefShape s = *whole;
  s.n_k = b - a;
  if (s.diag_lo != UNB_LO) s.diag_lo -= a;
  if (s.diag_hi != UNB_HI) s.diag_hi -= a;
  return s;
}

/* Forward of keys [a, b) into o ([row][head][dim]) and lse stored [head][row], so that
 * merging exercises different strides on its two sides. */
static void chunkFwd(const Block *blk, int64_t a, int64_t b, float *o, float *lse_hr) {
  const cpaRefShape *w = &blk->s;
  cpaRefShape s = chunkShape(w, a, b);
  cpaRefOut oo = {o, F32, (int64_t)w->n_hq * w->d_v, w->d_v};
  cpaRefAttnFwd(&s, inF32(blk->q, w->n_hq, w->d_qk), inF32(blk->k + a * w->n_hkv * w->d_qk, w->n_hkv, w->d_qk),
                inF32(blk->v + a * w->n_hkv * w->d_v, w->n_hkv, w->d_v), oo, lse_hr, 1, w->n_q);
}

/* Merges part (lse [head][row]) into acc (lse [row][head]). */
static void mergeInto(const cpaRefShape *w, float *o_acc, float *lse_acc_rh, const float *o_part,
                      const float *lse_part_hr) {
  int64_t row = (int64_t)w->n_hq * w->d_v;
  cpaRefMerge(w->n_q, w->n_hq, w->d_v, o_acc, row, w->d_v, lse_acc_rh, w->n_hq, 1, o_part, row, w->d_v,
              lse_part_hr, 1, w->n_q);
}

/* Same merge with both lse arrays stored [head][row] (the tree's operands). */
static void mergeIntoHr(const cpaRefShape *w, float *o_acc, float *lse_acc_hr, const float *o_part,
                        const float *lse_part_hr) {
  int64_t row = (int64_t)w->n_hq * w->d_v;
  cpaRefMerge(w->n_q, w->n_hq, w->d_v, o_acc, row, w->d_v, lse_acc_hr, 1, w->n_q, o_part, row, w->d_v, lse_part_hr,
              1, w->n_q);
}

/* n_chunks + 1 sorted cut points from 0 to n_k, at least one chunk empty. */
static void randomCuts(Rng *rng, int64_t n_k, int n_chunks, int64_t *cut) {
  cut[0] = 0;
  cut[n_chunks] = n_k;
  for (int c = 1; c < n_chunks; ++c) cut[c] = rngBelow(rng, n_k + 1);
  for (int c = 1; c < n_chunks; ++c) /* insertion sort: tiny */
    for (int d = c; d > 1 && cut[d - 1] > cut[d]; --d) {
      int64_t t = cut[d];
      cut[d] = cut[d - 1];
      cut[d - 1] = t;
    }
  int empty = 1 + (int)rngBelow(rng, n_chunks - 1);
  cut[empty] = cut[empty - 1];
}

static void compareF32(const char *name, const char *what, const float *got, const float *want, size_t n, int heads,
                       int dim, double floor, double tol, double *worst) {
  double *g = toF64(got, n), *r = toF64(want, n);
  double e = expectClose(name, what, g, r, n, heads, dim, floor, tol);
  if (e > *worst) *worst = e;
  free(g);
  free(r);
}

/* lse [head][row] -> [row][head] */
static float *transposeLse(const float *hr, int64_t n_q, int heads) {
  float *rh = filledF32((size_t)(n_q * heads), 0);
  for (int64_t i = 0; i < n_q; ++i)
    for (int h = 0; h < heads; ++h) rh[i * heads + h] = hr[h * n_q + i];
  return rh;
}

#define MAX_CHUNKS 7

typedef struct {
  int n_chunks;
  int64_t cut[MAX_CHUNKS + 1];
  float *o[MAX_CHUNKS], *lse_hr[MAX_CHUNKS];
} Chunks;

static void chunksFwd(const Block *blk, Chunks *ch) {
  size_t no = (size_t)(blk->s.n_q * blk->s.n_hq * blk->s.d_v), nl = (size_t)(blk->s.n_q * blk->s.n_hq);
  for (int c = 0; c < ch->n_chunks; ++c) {
    ch->o[c] = filledF32(no, NAN);
    ch->lse_hr[c] = filledF32(nl, NAN);
    chunkFwd(blk, ch->cut[c], ch->cut[c + 1], ch->o[c], ch->lse_hr[c]);
  }
}

static void chunksFree(Chunks *ch) {
  for (int c = 0; c < ch->n_chunks; ++c) free(ch->o[c]), free(ch->lse_hr[c]);
}

/* Left to right into an accumulator that starts empty (o = 0, lse = -inf). */
static void mergeLeftToRight(const Block *blk, const Chunks *ch, float *o, float *lse_rh) {
  size_t no = (size_t)(blk->s.n_q * blk->s.n_hq * blk->s.d_v), nl = (size_t)(blk->s.n_q * blk->s.n_hq);
  for (size_t i = 0; i < no; ++i) o[i] = 0;
  for (size_t i = 0; i < nl; ++i) lse_rh[i] = -INFINITY;
  for (int c = 0; c < ch->n_chunks; ++c) mergeInto(&blk->s, o, lse_rh, ch->o[c], ch->lse_hr[c]);
}

/* Pairwise: ((0 1) (2 3)) ((4 5) 6), merging in place into the left operand. */
static void mergeTree(const Block *blk, Chunks *ch) {
  for (int step = 1; step < ch->n_chunks; step *= 2)
    for (int c = 0; c + step < ch->n_chunks; c += 2 * step)
      mergeIntoHr(&blk->s, ch->o[c], ch->lse_hr[c], ch->o[c + step], ch->lse_hr[c + step]);
}

static void bwdCall(const Block *blk, const cpaRefShape *s, int64_t a, const float *o, const float *lse_rh, float *dq,
                    float *dk, float *dv, int accumulate) {
  const cpaRefShape *w = &blk->s;
  int hq = w->n_hq, hkv = w->n_hkv;
  cpaRefAttnBwd(s, inF32(blk->q, hq, w->d_qk), inF32(blk->k + a * hkv * w->d_qk, hkv, w->d_qk),
                inF32(blk->v + a * hkv * w->d_v, hkv, w->d_v), inF32(o, hq, w->d_v), inF32(blk->dout, hq, w->d_v),
                lse_rh, hq, 1, dq, (int64_t)hq * w->d_qk, w->d_qk, dk + a * hkv * w->d_qk, (int64_t)hkv * w->d_qk,
                w->d_qk, dv + a * hkv * w->d_v, (int64_t)hkv * w->d_v, w->d_v, accumulate);
}

/* Whole-range backward vs the sum of per-chunk backwards given the merged (final) o and
 * lse. The first chunk uses accumulate = 0 on NaN-filled dq and on its own dk/dv rows,
 * the others accumulate = 1 on their (zeroed) rows. */
static void checkChunkedBwd(const char *name, const Block *blk, const Chunks *ch, const float *o, const float *lse_rh,
                            double *worst) {
  const cpaRefShape *w = &blk->s;
  size_t nq = (size_t)(w->n_q * w->n_hq * w->d_qk), nk = (size_t)(w->n_k * w->n_hkv * w->d_qk),
         nv = (size_t)(w->n_k * w->n_hkv * w->d_v);
  float *dq = filledF32(nq, NAN), *dk = filledF32(nk, NAN), *dv = filledF32(nv, NAN);
  float *dq_w = filledF32(nq, NAN), *dk_w = filledF32(nk, NAN), *dv_w = filledF32(nv, NAN);
  bwdCall(blk, w, 0, o, lse_rh, dq_w, dk_w, dv_w, 0);
  for (size_t i = (size_t)ch->cut[1] * w->n_hkv * w->d_qk; i < nk; ++i) dk[i] = 0;
  for (size_t i = (size_t)ch->cut[1] * w->n_hkv * w->d_v; i < nv; ++i) dv[i] = 0;
  for (int c = 0; c < ch->n_chunks; ++c) {
    cpaRefShape s = chunkShape(w, ch->cut[c], ch->cut[c + 1]);
    bwdCall(blk, &s, ch->cut[c], o, lse_rh, dq, dk, dv, c == 0 ? 0 : 1);
  }
  /* per chunk, dq is rounded to fp32 once more: a few ulp, judged at 1e-5 like the merge */
  compareF32(name, "chunked dq", dq, dq_w, nq, w->n_hq, w->d_qk, -1, 1e-5, worst);
  compareF32(name, "chunked dk", dk, dk_w, nk, w->n_hkv, w->d_qk, -1, 1e-5, worst);
  compareF32(name, "chunked dv", dv, dv_w, nv, w->n_hkv, w->d_v, -1, 1e-5, worst);
  float *all[] = {dq, dk, dv, dq_w, dk_w, dv_w};
  for (size_t i = 0; i < 6; ++i) free(all[i]);
}

static void blockInit(Block *blk, Rng *rng, cpaRefShape s) {
  blk->s = s;
  blk->q = randomF32(rng, (size_t)(s.n_q * s.n_hq * s.d_qk));
  blk->k = randomF32(rng, (size_t)(s.n_k * s.n_hkv * s.d_qk));
  blk->v = randomF32(rng, (size_t)(s.n_k * s.n_hkv * s.d_v));
  blk->dout = randomF32(rng, (size_t)(s.n_q * s.n_hq * s.d_v));
}

static void blockFree(Block *blk) {
  free(blk->q), free(blk->k), free(blk->v), free(blk->dout);
}

/* For several random splits of the key range: merged chunks == one whole-range call (left
 * to right and as a tree, and the two orders agree), and chunked backward == whole. */
static void checkKeySplits(const char *name, int64_t lo, int64_t hi, uint64_t seed, bool check_bwd) {
  enum { NQ = 97, NK = 203 };
  Rng rng = {seed};
  Block blk;
  cpaRefShape shape = {NQ, NK, 8, 2, 64, 48, 0.125f, lo, hi}; /* d_v != d_qk on purpose */
  blockInit(&blk, &rng, shape);
  size_t no = (size_t)NQ * blk.s.n_hq * blk.s.d_v, nl = (size_t)NQ * blk.s.n_hq;
  float *o_w = filledF32(no, NAN), *lse_w_hr = filledF32(nl, NAN);
  chunkFwd(&blk, 0, NK, o_w, lse_w_hr);
  float *lse_w = transposeLse(lse_w_hr, NQ, blk.s.n_hq);
  float *o_lr = filledF32(no, NAN), *lse_lr = filledF32(nl, NAN);
  double worst_fwd = 0, worst_bwd = 0;
  for (int split = 0; split < 3; ++split) {
    Chunks ch;
    ch.n_chunks = 2 + (int)rngBelow(&rng, MAX_CHUNKS - 1);
    randomCuts(&rng, NK, ch.n_chunks, ch.cut);
    chunksFwd(&blk, &ch);
    mergeLeftToRight(&blk, &ch, o_lr, lse_lr);
    /* relative error 1e-5: each merge rounds o and lse to fp32 once (~1e-7 each) */
    compareF32(name, "o merged left-to-right vs whole", o_lr, o_w, no, blk.s.n_hq, blk.s.d_v, -1, 1e-5, &worst_fwd);
    compareF32(name, "lse merged left-to-right vs whole", lse_lr, lse_w, nl, blk.s.n_hq, 1, kLseFloor, 1e-5,
               &worst_fwd);
    if (check_bwd) checkChunkedBwd(name, &blk, &ch, o_lr, lse_lr, &worst_bwd);
    mergeTree(&blk, &ch);
    float *lse_tree = transposeLse(ch.lse_hr[0], NQ, blk.s.n_hq);
    compareF32(name, "o merged as a tree vs whole", ch.o[0], o_w, no, blk.s.n_hq, blk.s.d_v, -1, 1e-5, &worst_fwd);
    compareF32(name, "lse merged as a tree vs whole", lse_tree, lse_w, nl, blk.s.n_hq, 1, kLseFloor, 1e-5, &worst_fwd);
    compareF32(name, "o tree vs left-to-right", ch.o[0], o_lr, no, blk.s.n_hq, blk.s.d_v, -1, 1e-5, &worst_fwd);
    free(lse_tree);
    chunksFree(&ch);
  }
  if (check_bwd) print_message("  %-40s merge %.1e  chunked bwd %.1e\n", name, worst_fwd, worst_bwd);
  else print_message("  %-40s merge %.1e\n", name, worst_fwd);
  free(o_w), free(lse_w_hr), free(lse_w), free(o_lr), free(lse_lr);
  blockFree(&blk);
}

static void test_merge_of_random_key_chunks_matches_whole_range(void **state) {
  (void)state;
  checkKeySplits("merge none", UNB_LO, UNB_HI, 201, false);
  checkKeySplits("merge causal d=n_k-n_q", UNB_LO, 203 - 97, 202, false);
  checkKeySplits("merge causal d=-10 (rows 0..9 empty)", UNB_LO, -10, 203, false);
  checkKeySplits("merge causal d=+40", UNB_LO, 40, 204, false);
  checkKeySplits("merge window (40,0) d=n_k-n_q", 106 - 40, 106, 205, false);
  checkKeySplits("merge window (30,25) d=50", 50 - 30, 50 + 25, 206, false);
  checkKeySplits("merge window right only (-,12) d=0", UNB_LO, 12, 207, false);
}

static void test_bwd_summed_over_key_chunks_matches_whole_range(void **state) {
  (void)state;
  checkKeySplits("chunked bwd none", UNB_LO, UNB_HI, 301, true);
  checkKeySplits("chunked bwd causal d=-10", UNB_LO, -10, 302, true);
  checkKeySplits("chunked bwd causal d=n_k-n_q", UNB_LO, 106, 303, true);
  checkKeySplits("chunked bwd window (30,25) d=50", 20, 75, 304, true);
}

/* ---------------------------------------------------------------------------------- */
/* Fully masked rows and empty blocks                                                  */
/* ---------------------------------------------------------------------------------- */

static bool anyNan(const float *x, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (isnan(x[i])) return true;
  return false;
}

static bool allZeroBits(const void *p, size_t bytes) {
  const unsigned char *c = p;
  for (size_t i = 0; i < bytes; ++i)
    if (c[i]) return false;
  return true;
}

static void test_fully_masked_rows_give_neg_inf_lse_zero_o_and_no_nan(void **state) {
  (void)state;
  enum { NQ = 20, NK = 10, HQ = 4, HKV = 2, D = 16 };
  Rng rng = {401};
  Block blk;
  /* causal, d = -5 (the query block starts 5 positions before the key block): rows
   * 0..4 see no key */
  cpaRefShape s = {NQ, NK, HQ, HKV, D, D, 0.25f, UNB_LO, -5};
  blockInit(&blk, &rng, s);
  float *o = filledF32(NQ * HQ * D, NAN), *lse = filledF32(NQ * HQ, NAN);
  cpaRefOut oo = {o, F32, HQ * D, D};
  cpaRefAttnFwd(&s, inF32(blk.q, HQ, D), inF32(blk.k, HKV, D), inF32(blk.v, HKV, D), oo, lse, HQ, 1);
  for (int i = 0; i < NQ; ++i)
    for (int h = 0; h < HQ; ++h) {
      bool masked = i < 5;
      float l = lse[i * HQ + h];
      assert_true(masked ? (isinf(l) && l < 0) : isfinite(l));
      if (masked) assert_true(allZeroBits(o + (i * HQ + h) * D, D * sizeof(float))); /* +0.0 exactly */
    }
  assert_false(anyNan(o, NQ * HQ * D));

  /* bf16 output: masked rows are +0.0 in bf16 too */
  uint16_t *ob = malloc(NQ * HQ * D * sizeof *ob);
  assert_non_null(ob);
  memset(ob, 0xff, NQ * HQ * D * sizeof *ob);
  cpaRefOut obo = {ob, BF16, HQ * D, D};
  cpaRefAttnFwd(&s, inF32(blk.q, HQ, D), inF32(blk.k, HKV, D), inF32(blk.v, HKV, D), obo, lse, HQ, 1);
  assert_true(allZeroBits(ob, 5 * HQ * D * sizeof *ob));
  free(ob);

  /* backward: masked rows get dq = 0, nothing anywhere is NaN */
  float *dq = filledF32(NQ * HQ * D, NAN), *dk = filledF32(NK * HKV * D, NAN), *dv = filledF32(NK * HKV * D, NAN);
  cpaRefAttnBwd(&s, inF32(blk.q, HQ, D), inF32(blk.k, HKV, D), inF32(blk.v, HKV, D), inF32(o, HQ, D),
                inF32(blk.dout, HQ, D), lse, HQ, 1, dq, HQ * D, D, dk, HKV * D, D, dv, HKV * D, D, 0);
  assert_false(anyNan(dq, NQ * HQ * D) || anyNan(dk, NK * HKV * D) || anyNan(dv, NK * HKV * D));
  assert_true(allZeroBits(dq, 5 * HQ * D * sizeof(float)));

  /* merge: a fully masked partial changes nothing; into a fully masked accumulator it
   * copies; two fully masked sides give o = 0, lse = -inf */
  float *o2 = filledF32(NQ * HQ * D, NAN), *lse2 = filledF32(NQ * HQ, NAN);
  memcpy(o2, o, sizeof(float) * NQ * HQ * D);
  memcpy(lse2, lse, sizeof(float) * NQ * HQ);
  cpaRefMerge(NQ, HQ, D, o2, HQ * D, D, lse2, HQ, 1, o, HQ * D, D, lse, HQ, 1);
  assert_false(anyNan(o2, NQ * HQ * D));
  for (int i = 0; i < 5 * HQ; ++i) assert_true(isinf(lse2[i]) && lse2[i] < 0);
  assert_true(allZeroBits(o2, 5 * HQ * D * sizeof(float)));
  for (int i = 5 * HQ; i < NQ * HQ; ++i) /* equal sides: lse + log 2, o unchanged to rounding */
    assert_true(fabs(lse2[i] - (lse[i] + log(2.0))) <= 1e-6 * (fabs(lse[i]) + 1));
  free(o2), free(lse2), free(o), free(lse), free(dq), free(dk), free(dv);
  blockFree(&blk);
}

static void test_merge_with_neg_inf_on_either_side_is_exact_and_nan_free(void **state) {
  (void)state;
  enum { D = 5 };
  float part[D] = {1.5f, -2.25f, 3.0f, 0.125f, -7.0f};
  /* accumulator empty (lse -inf, o holding garbage NaN that must not be read) */
  float acc[D] = {NAN, NAN, NAN, NAN, NAN}, lse_acc = -INFINITY, lse_part = 2.5f;
  cpaRefMerge(1, 1, D, acc, D, D, &lse_acc, 1, 1, part, D, D, &lse_part, 1, 1);
  assert_memory_equal(acc, part, sizeof acc);
  assert_true(lse_acc == 2.5f);
  /* part empty: the accumulator is untouched, bit for bit */
  float keep[D];
  memcpy(keep, acc, sizeof keep);
  float garbage[D] = {NAN, INFINITY, NAN, -INFINITY, NAN}, lse_empty = -INFINITY;
  cpaRefMerge(1, 1, D, acc, D, D, &lse_acc, 1, 1, garbage, D, D, &lse_empty, 1, 1);
  assert_memory_equal(acc, keep, sizeof acc);
  assert_true(lse_acc == 2.5f);
  /* both empty: o = 0, lse = -inf */
  float both[D] = {NAN, 1, NAN, 2, NAN}, lse_both = -INFINITY;
  cpaRefMerge(1, 1, D, both, D, D, &lse_both, 1, 1, garbage, D, D, &lse_empty, 1, 1);
  assert_true(allZeroBits(both, sizeof both));
  assert_true(isinf(lse_both) && lse_both < 0);
  /* far apart (difference 200, exp underflows in fp32): the small side vanishes, no NaN */
  float big[D] = {1, 2, 3, 4, 5}, lse_big = 150.0f, small[D] = {9, 9, 9, 9, 9}, lse_small = -50.0f;
  cpaRefMerge(1, 1, D, big, D, D, &lse_big, 1, 1, small, D, D, &lse_small, 1, 1);
  for (int d = 0; d < D; ++d) assert_true(big[d] == (float)(d + 1));
  assert_true(lse_big == 150.0f);
}

static void test_empty_blocks_and_all_masked_diagonals(void **state) {
  (void)state;
  enum { N = 9, H = 2, D = 8 };
  Rng rng = {501};
  float *q = randomF32(&rng, N * H * D), *k = randomF32(&rng, N * H * D), *v = randomF32(&rng, N * H * D);
  float *o = filledF32(N * H * D, NAN), *lse = filledF32(N * H, NAN);
  cpaRefOut oo = {o, F32, H * D, D};
  /* lo > hi, bounds beyond every row (both signs, up to the int64 limits): all masked */
  const int64_t masks[][2] = {{3, 2}, {INT64_MAX - 5, UNB_HI}, {UNB_LO, INT64_MIN + 3}, {N, UNB_HI}, {UNB_LO, -N}};
  for (size_t m = 0; m < sizeof masks / sizeof masks[0]; ++m) {
    cpaRefShape s = {N, N, H, H, D, D, 0.3f, masks[m][0], masks[m][1]};
    cpaRefAttnFwd(&s, inF32(q, H, D), inF32(k, H, D), inF32(v, H, D), oo, lse, H, 1);
    for (int i = 0; i < N * H; ++i) assert_true(isinf(lse[i]) && lse[i] < 0);
    assert_true(allZeroBits(o, sizeof(float) * N * H * D));
  }
  /* n_k = 0: every row empty; n_q = 0: nothing written */
  cpaRefShape no_keys = {N, 0, H, H, D, D, 0.3f, UNB_LO, UNB_HI};
  for (int i = 0; i < N * H * D; ++i) o[i] = NAN;
  cpaRefAttnFwd(&no_keys, inF32(q, H, D), inF32(k, H, D), inF32(v, H, D), oo, lse, H, 1);
  assert_true(allZeroBits(o, sizeof(float) * N * H * D));
  cpaRefShape no_rows = {0, N, H, H, D, D, 0.3f, UNB_LO, UNB_HI};
  for (int i = 0; i < N * H; ++i) lse[i] = NAN;
  cpaRefAttnFwd(&no_rows, inF32(q, H, D), inF32(k, H, D), inF32(v, H, D), oo, lse, H, 1);
  for (int i = 0; i < N * H; ++i) assert_true(isnan(lse[i]));
  /* backward accumulate = 0 on an empty block still zeroes the block's gradient rows */
  float *dq = filledF32(N * H * D, NAN), *dk = filledF32(N * H * D, NAN), *dv = filledF32(N * H * D, NAN);
  cpaRefAttnBwd(&no_keys, inF32(q, H, D), inF32(k, H, D), inF32(v, H, D), inF32(o, H, D), inF32(q, H, D), lse, H, 1,
                dq, H * D, D, dk, H * D, D, dv, H * D, D, 0);
  assert_true(allZeroBits(dq, sizeof(float) * N * H * D));
  assert_true(isnan(dk[0])); /* n_k = 0: no key rows to touch */
  /* near-limit bounds that are not the sentinels still mean "no bound" */
  cpaRefShape open = {N, N, H, H, D, D, 0.3f, UNB_LO, UNB_HI}, near = open;
  near.diag_lo = INT64_MIN + 1;
  near.diag_hi = INT64_MAX - 1;
  float *o_near = filledF32(N * H * D, NAN), *lse_near = filledF32(N * H, NAN);
  cpaRefOut on = {o_near, F32, H * D, D};
  cpaRefAttnFwd(&open, inF32(q, H, D), inF32(k, H, D), inF32(v, H, D), oo, lse, H, 1);
  cpaRefAttnFwd(&near, inF32(q, H, D), inF32(k, H, D), inF32(v, H, D), on, lse_near, H, 1);
  assert_memory_equal(o, o_near, sizeof(float) * N * H * D);
  assert_memory_equal(lse, lse_near, sizeof(float) * N * H);
  float *all[] = {q, k, v, o, lse, dq, dk, dv, o_near, lse_near};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) free(all[i]);
}

static bool allNan(const float *x, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!isnan(x[i])) return false;
  return true;
}

/* Not part of the header's contract (which only allows valid shapes), but what attn_ref.c
 * promises for a void function that cannot return a status: no overrun of its 256-wide
 * row buffers, no division by zero, and outputs that cannot pass for a result. */
static void test_invalid_shapes_fill_outputs_with_nan_instead_of_overrunning(void **state) {
  (void)state;
  enum { N = 3, H = 8, D = 300 };
  Rng rng = {701};
  float *q = randomF32(&rng, N * H * D), *k = randomF32(&rng, N * H * D), *v = randomF32(&rng, N * H * D);
  float *o = filledF32(N * H * D, 0), *lse = filledF32(N * H, 0);
  float *dq = filledF32(N * H * D, 0), *dk = filledF32(N * H * D, 0), *dv = filledF32(N * H * D, 0);
  const int shapes[][4] = {/* hq, hkv, d_qk, d_v */ {H, H, 257, 64}, {H, H, 64, 300}, {H, 3, 64, 64}, {H, 0, 64, 64},
                           {H, H, 0, 64}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; ++i) {
    cpaRefShape s = {N, N, shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3], 0.1f, UNB_LO, UNB_HI};
    cpaRefIn qi = {q, F32, H * D, D}, ki = {k, F32, H * D, D}, vi = {v, F32, H * D, D}, oi = {o, F32, H * D, D};
    cpaRefOut oo = {o, F32, H * D, D};
    cpaRefAttnFwd(&s, qi, ki, vi, oo, lse, H, 1);
    cpaRefAttnBwd(&s, qi, ki, vi, oi, qi, lse, H, 1, dq, H * D, D, dk, H * D, D, dv, H * D, D, 1);
    for (int r = 0; r < N; ++r)
      for (int h = 0; h < H; ++h) {
        assert_true(allNan(o + (r * H + h) * D, (size_t)s.d_v));
        assert_true(isnan(lse[r * H + h]));
        if (s.d_qk > 0) assert_true(allNan(dq + (r * H + h) * D, (size_t)s.d_qk));
        if (h < s.n_hkv) assert_true(allNan(dv + (r * H + h) * D, (size_t)s.d_v));
      }
  }
  float *all[] = {q, k, v, o, lse, dq, dk, dv};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) free(all[i]);
}

/* ---------------------------------------------------------------------------------- */
/* bf16                                                                                */
/* ---------------------------------------------------------------------------------- */

static float fromBits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_bf16_rounds_to_nearest_even_on_chosen_bit_patterns(void **state) {
  (void)state;
  static const struct {
    uint32_t in;
    uint16_t out;
  } cases[] = {
      {0x3f800000u, 0x3f80}, /* 1.0: exact                                      */
      {0x3f807fffu, 0x3f80}, /* just below the tie: down                       */
      {0x3f808000u, 0x3f80}, /* tie, kept lsb even: stays                      */
      {0x3f808001u, 0x3f81}, /* just above the tie: up                         */
      {0x3f818000u, 0x3f82}, /* tie, kept lsb odd: up to even                  */
      {0xbf818000u, 0xbf82}, /* same, negative                                 */
      {0xbf808000u, 0xbf80},
      {0x3fffffffu, 0x4000}, /* carry into the exponent                        */
      {0x7f7f7fffu, 0x7f7f}, /* largest finite bf16                            */
      {0x7f7f8000u, 0x7f80}, /* tie above the largest finite, odd lsb: inf     */
      {0x7f7fffffu, 0x7f80}, /* FLT_MAX: inf                                   */
      {0x7f800000u, 0x7f80}, /* +inf                                           */
      {0xff800000u, 0xff80}, /* -inf                                           */
      {0x00000000u, 0x0000}, /* +0                                             */
      {0x80000000u, 0x8000}, /* -0                                             */
      {0x00000001u, 0x0000}, /* smallest subnormal: to 0                       */
      {0x00008000u, 0x0000}, /* subnormal tie, even: 0                         */
      {0x00018000u, 0x0002}, /* subnormal tie, odd: up                         */
      {0x007fffffu, 0x0080}, /* largest subnormal rounds to the smallest normal */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    uint16_t got = cpaFloatToBf16(fromBits(cases[i].in));
    if (got != cases[i].out) print_error("0x%08x -> 0x%04x, want 0x%04x\n", cases[i].in, got, cases[i].out);
    assert_int_equal(got, cases[i].out);
  }
  /* NaNs stay NaN (a payload only in the low 16 bits must not turn into inf), sign kept */
  static const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fa00000u, 0x7fffffffu};
  for (size_t i = 0; i < sizeof nans / sizeof nans[0]; ++i) {
    uint16_t got = cpaFloatToBf16(fromBits(nans[i]));
    assert_true(isnan(cpaBf16ToFloat(got)));
    assert_int_equal(got >> 15, nans[i] >> 31);
  }
}

/* Independent rounding: the two bf16 neighbours of f compared in float64. */
static uint16_t nearestBf16ByComparison(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint16_t down = (uint16_t)(u >> 16), up = (uint16_t)(down + 1); /* magnitude order */
  double x = f, a = cpaBf16ToFloat(down);
  double b = (up & 0x7fff) == 0x7f80 ? copysign(ldexp(1.0, 128), x) : cpaBf16ToFloat(up);
  double da = fabs(x - a), db = fabs(b - x);
  if (da != db) return da < db ? down : up;
  return (down & 1) ? up : down;
}

static void test_bf16_round_trip_is_exact_and_random_floats_round_correctly(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    float f = cpaBf16ToFloat((uint16_t)h);
    uint16_t back = cpaFloatToBf16(f);
    if (isnan(f)) assert_true(isnan(cpaBf16ToFloat(back)) && (back >> 15) == (h >> 15));
    else assert_int_equal(back, h);
  }
  Rng rng = {601};
  for (int i = 0; i < 2000000; ++i) {
    float f = fromBits((uint32_t)rngNext(&rng));
    if (!isfinite(f)) continue;
    uint16_t want = nearestBf16ByComparison(f), got = cpaFloatToBf16(f);
    if (got != want) print_error("%a -> 0x%04x, want 0x%04x\n", (double)f, got, want);
    assert_int_equal(got, want);
  }
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bf16_rounds_to_nearest_even_on_chosen_bit_patterns),
      cmocka_unit_test(test_bf16_round_trip_is_exact_and_random_floats_round_correctly),
      cmocka_unit_test(test_fwd_bwd_match_float64_reference_bshd),
      cmocka_unit_test(test_fwd_bwd_match_float64_reference_sbhd_batch_interleaved),
      cmocka_unit_test(test_fwd_bwd_match_float64_reference_thd_packed_varlen),
      cmocka_unit_test(test_fwd_bwd_match_float64_reference_interleaved_qkv),
      cmocka_unit_test(test_fwd_bwd_match_float64_reference_s1025),
      cmocka_unit_test(test_bwd_matches_finite_differences_causal),
      cmocka_unit_test(test_bwd_matches_finite_differences_window),
      cmocka_unit_test(test_merge_of_random_key_chunks_matches_whole_range),
      cmocka_unit_test(test_bwd_summed_over_key_chunks_matches_whole_range),
      cmocka_unit_test(test_fully_masked_rows_give_neg_inf_lse_zero_o_and_no_nan),
      cmocka_unit_test(test_merge_with_neg_inf_on_either_side_is_exact_and_nan_free),
      cmocka_unit_test(test_empty_blocks_and_all_masked_diagonals),
      cmocka_unit_test(test_invalid_shapes_fill_outputs_with_nan_instead_of_overrunning),
  };
  if (argc > 1) cmocka_set_test_filter(argv[1]);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
