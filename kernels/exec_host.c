/*
 * exec_host.c -- the host executor: the engine's operations on host memory with the CPU
 * reference kernels (attn_ref.h). Partial outputs are fp32, so the host path keeps full
 * precision end to end and is the yardstick for the GPU path.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../src/engine.h"
#include "../src/executor.h"
#include "attn_ref.h"

typedef struct {
  const cpaProblem *pb;
  const cpaTouch *touch; /* the engine's, from dry_begin                         */
  float *row;            /* one merged row of dv values, for rows a merge finishes */
  int dry;
} cpaHostExec;

static size_t host_part_bytes(void *st) {
  (void)st;
  return 4;
}

static cpattnResult_t host_dry_begin(void *st, const struct cpaEngine *eng) {
  ((cpaHostExec *)st)->touch = &eng->touch;
  ((cpaHostExec *)st)->dry = 1;
  return cpattnSuccess;
}

static cpattnResult_t host_dry_end(void *st, size_t *extra) {
  ((cpaHostExec *)st)->dry = 0;
  *extra = 0;
  return cpattnSuccess;
}

static cpattnResult_t host_begin(void *st, struct CUstream_st *stream, void *ws) {
  (void)st;
  (void)stream;
  (void)ws;
  return cpattnSuccess;
}

static cpattnResult_t host_end(void *st) {
  (void)st;
  return cpattnSuccess;
}

/* Element offset of (row t, head h) in a view. */
static int64_t at(const cpaView *v, int64_t t, int h) { return cpaViewOffset(v, t) + (int64_t)h * v->head_stride; }

static void store(void *p, cpattnDataType_t dt, int64_t i, float x) {
  if (dt == cpattnFloat32) ((float *)p)[i] = x;
  else ((uint16_t *)p)[i] = cpaFloatToBf16(x);
}

static cpattnResult_t host_fill(void *st, const cpaView *dst, int64_t nrows, float value) {
  if (((cpaHostExec *)st)->dry) return cpattnSuccess;
  for (int64_t t = 0; t < nrows; ++t)
    for (int h = 0; h < dst->heads; ++h) {
      int64_t o = at(dst, t, h);
      for (int d = 0; d < dst->dim; ++d) store(dst->data, dst->dtype, o + d, value);
    }
  return cpattnSuccess;
}

static cpattnResult_t host_copy(void *st, const cpaView *dst, const cpaView *src, int64_t nrows, const cpaRowMap *map,
                                int inverse) {
  if (((cpaHostExec *)st)->dry) return cpattnSuccess;
  for (int64_t t = 0; t < nrows; ++t) {
    int64_t ts = map && !inverse ? map->host[t] : t, td = map && inverse ? map->host[t] : t;
    for (int h = 0; h < dst->heads; ++h) {
      int64_t od = at(dst, td, h), os = at(src, ts, h);
      if (dst->dtype == src->dtype) {
        size_t es = cpaDtypeSize(dst->dtype);
        memcpy((char *)dst->data + (size_t)od * es, (const char *)src->data + (size_t)os * es, (size_t)dst->dim * es);
      } else {
        for (int d = 0; d < dst->dim; ++d) store(dst->data, dst->dtype, od + d, cpaRefLoad(src->data, src->dtype, os + d));
      }
    }
  }
  return cpattnSuccess;
}

static cpattnResult_t host_add(void *st, const cpaView *dst, const cpaView *src, int64_t nrows) {
  if (((cpaHostExec *)st)->dry) return cpattnSuccess;
  for (int64_t t = 0; t < nrows; ++t)
    for (int h = 0; h < dst->heads; ++h) {
      float *o = (float *)dst->data + at(dst, t, h);
      int64_t os = at(src, t, h);
      for (int d = 0; d < dst->dim; ++d) o[d] += cpaRefLoad(src->data, src->dtype, os + d);
    }
  return cpattnSuccess;
}

/* The call's entries over every batch element: (batch b, entry e). */
#define FOR_EACH_ENTRY(x, call, b, e)                 \
  for (int64_t b = 0; b < (x)->pb->batch_mult; ++b)   \
    for (int e = 0; e < (call)->nentries; ++e)

static cpaRefIn ref_in(const cpaView *v, int64_t b, int64_t row) {
  cpaRefIn r = {(const char *)v->data + (size_t)(b * v->batch_stride + row * v->row_stride) * cpaDtypeSize(v->dtype),
                v->dtype, v->row_stride, v->head_stride};
  return r;
}

static float *f32_at(const cpaView *v, int64_t b, int64_t row) {
  return (float *)v->data + b * v->batch_stride + row * v->row_stride;
}

static void shape_of(const cpaHostExec *x, const cpaCall *call, const cpaEntry *en, cpaRefShape *s) {
  const cpaProblem *pb = x->pb;
  s->n_q = en->q_len;
  s->n_k = en->k_len;
  s->n_hq = pb->hq_local;
  s->n_hkv = pb->hkv_local;
  s->d_qk = pb->dqk;
  s->d_v = pb->dv;
  s->scale = pb->scale;
  s->diag_lo = CPA_DIAG_UNBOUNDED_LO;
  s->diag_hi = CPA_DIAG_UNBOUNDED_HI;
  if (call->kind == CPA_KIND_CAUSAL) {
    s->diag_hi = 0;
  } else if (call->kind == CPA_KIND_BAND) {
    /* k - q = (j - i) - delta must lie in [-lo, hi]. */
    if (pb->band_lo != CPA_UNBOUNDED) s->diag_lo = en->delta - pb->band_lo;
    if (pb->band_hi != CPA_UNBOUNDED) s->diag_hi = en->delta + pb->band_hi;
  }
}

/* Stats of the host executor: token-major over the query set, [row][head]. */
static cpattnResult_t host_attn_fwd(void *st, const cpaCall *call, const cpaView *q, const cpaView *k,
                                    const cpaView *v, const cpaView *o_part, float *stats) {
  cpaHostExec *x = st;
  if (x->dry) return cpattnSuccess;
  int H = x->pb->hq_local;
  FOR_EACH_ENTRY(x, call, b, e) {
    const cpaEntry *en = &call->entries[e];
    cpaRefShape s;
    shape_of(x, call, en, &s);
    cpaRefOut out = {f32_at(o_part, b, en->q_row), cpattnFloat32, o_part->row_stride, o_part->head_stride};
    float *ls = stats + (b * o_part->rows_per_batch + en->q_row) * H;
    cpaRefAttnFwd(&s, ref_in(q, b, en->q_row), ref_in(k, b, en->k_row), ref_in(v, b, en->k_row), out, ls, H, 1);
  }
  return cpattnSuccess;
}

/* How row r (within a batch element) of a call is routed: CPA_TOUCH_FIRST and/or
 * CPA_TOUCH_LAST where allow permits and the engine's tables say so (executor.h). */
static int route(const cpaHostExec *x, const cpaCall *call, int side, int allow, int64_t r) {
  if (!allow) return 0;
  const int32_t *first = side ? x->touch->k_first : x->touch->q_first;
  int mode = 0;
  if ((allow & CPA_TOUCH_FIRST) && first[r] == call->id) mode |= CPA_TOUCH_FIRST;
  if ((allow & CPA_TOUCH_LAST) && !side && x->touch->q_last[r] == call->id) mode |= CPA_TOUCH_LAST;
  return mode;
}

/* One (row, head) of a merge. A first row merges into an empty accumulator (lse -inf,
 * so acc_o is not read: cpaRefMerge copies part, or zeros when part's lse is -inf too);
 * a last row is merged in a scratch row and goes to out_o / out_lse, the accumulator
 * untouched, as the CUDA kernel does. */
static void merge_row(cpaHostExec *x, int mode, float *ao, float *al, const float *op, float lp, const cpaView *out_o,
                      const cpaView *out_lse, int64_t b, int64_t row, int h) {
  int dv = x->pb->dv;
  float l = mode & CPA_TOUCH_FIRST ? -INFINITY : *al;
  float *o = ao;
  if (mode & CPA_TOUCH_LAST) {
    o = x->row;
    if (!(mode & CPA_TOUCH_FIRST)) memcpy(o, ao, sizeof(float) * (size_t)dv);
  }
  cpaRefMerge(1, 1, dv, o, 0, 0, &l, 0, 0, op, 0, 0, &lp, 0, 0);
  if (mode & CPA_TOUCH_LAST) {
    int64_t od = b * out_o->batch_stride + row * out_o->row_stride + h * out_o->head_stride;
    for (int d = 0; d < dv; ++d) store(out_o->data, out_o->dtype, od + d, o[d]);
    int64_t ol = b * out_lse->batch_stride + row * out_lse->row_stride + h * out_lse->head_stride;
    store(out_lse->data, out_lse->dtype, ol, l);
  } else {
    *al = l;
  }
}

static cpattnResult_t host_merge(void *st, const cpaCall *call, int allow, const cpaView *acc_o,
                                 const cpaView *acc_lse, const cpaView *o_part, const float *stats,
                                 const cpaView *out_o, const cpaView *out_lse) {
  cpaHostExec *x = st;
  if (x->dry) return cpattnSuccess;
  int H = x->pb->hq_local;
  FOR_EACH_ENTRY(x, call, b, e) {
    const cpaEntry *en = &call->entries[e];
    const float *ls = stats + (b * o_part->rows_per_batch + en->q_row) * H;
    if (!allow) {
      cpaRefMerge(en->q_len, H, x->pb->dv, f32_at(acc_o, b, en->q_row), acc_o->row_stride, acc_o->head_stride,
                  f32_at(acc_lse, b, en->q_row), acc_lse->row_stride, acc_lse->head_stride,
                  f32_at(o_part, b, en->q_row), o_part->row_stride, o_part->head_stride, ls, H, 1);
      continue;
    }
    for (int64_t i = 0; i < en->q_len; ++i) {
      int64_t row = en->q_row + i;
      int mode = route(x, call, 0, allow, row);
      for (int h = 0; h < H; ++h)
        merge_row(x, mode, f32_at(acc_o, b, row) + (int64_t)h * acc_o->head_stride,
                  f32_at(acc_lse, b, row) + (int64_t)h * acc_lse->head_stride,
                  f32_at(o_part, b, row) + (int64_t)h * o_part->head_stride, ls[i * H + h], out_o, out_lse, b, row, h);
    }
  }
  return cpattnSuccess;
}

static cpattnResult_t host_attn_bwd(void *st, const cpaCall *call, const cpaView *q, const cpaView *k,
                                    const cpaView *v, const cpaView *o, const cpaView *dout, const cpaView *lse,
                                    const cpaView *dq_part, const cpaView *dk_part, const cpaView *dv_part) {
  cpaHostExec *x = st;
  if (x->dry) return cpattnSuccess;
  FOR_EACH_ENTRY(x, call, b, e) {
    const cpaEntry *en = &call->entries[e];
    cpaRefShape s;
    shape_of(x, call, en, &s);
    const float *l = f32_at(lse, b, en->q_row);
    cpaRefAttnBwd(&s, ref_in(q, b, en->q_row), ref_in(k, b, en->k_row), ref_in(v, b, en->k_row),
                  ref_in(o, b, en->q_row), ref_in(dout, b, en->q_row), l, lse->row_stride, lse->head_stride,
                  f32_at(dq_part, b, en->q_row), dq_part->row_stride, dq_part->head_stride,
                  f32_at(dk_part, b, en->k_row), dk_part->row_stride, dk_part->head_stride,
                  f32_at(dv_part, b, en->k_row), dv_part->row_stride, dv_part->head_stride, 0);
  }
  return cpattnSuccess;
}

static cpattnResult_t host_accumulate(void *st, const cpaCall *call, int side, int allow, const cpaView *acc,
                                      const cpaView *part, const cpaView *out) {
  cpaHostExec *x = st;
  if (x->dry) return cpattnSuccess;
  FOR_EACH_ENTRY(x, call, b, e) {
    const cpaEntry *en = &call->entries[e];
    int64_t row = side ? en->k_row : en->q_row, n = side ? en->k_len : en->q_len;
    for (int64_t r = 0; r < n; ++r) {
      int mode = route(x, call, side, allow, row + r);
      for (int h = 0; h < acc->heads; ++h) {
        float *a = f32_at(acc, b, row + r) + (int64_t)h * acc->head_stride;
        const float *p = f32_at(part, b, row + r) + (int64_t)h * part->head_stride;
        if (mode & CPA_TOUCH_LAST) {
          int64_t od = b * out->batch_stride + (row + r) * out->row_stride + h * out->head_stride;
          for (int d = 0; d < acc->dim; ++d)
            store(out->data, out->dtype, od + d, mode & CPA_TOUCH_FIRST ? p[d] : a[d] + p[d]);
        } else if (mode & CPA_TOUCH_FIRST) {
          memcpy(a, p, sizeof(float) * (size_t)acc->dim);
        } else {
          for (int d = 0; d < acc->dim; ++d) a[d] += p[d];
        }
      }
    }
  }
  return cpattnSuccess;
}

static void host_destroy(void *st) {
  cpaHostExec *x = st;
  if (x) free(x->row);
  free(x);
}

static const cpaExecOps kHostOps = {
    "host",        host_part_bytes, host_dry_begin, host_dry_end,    host_begin,    host_end,
    host_fill,     host_copy,       host_add,       host_attn_fwd,   host_merge,    host_attn_bwd,
    host_accumulate, host_destroy,
};

cpattnResult_t cpaExecHostCreate(cpaExecutor *ex, const cpaProblem *pb) {
  cpaHostExec *x = calloc(1, sizeof *x);
  if (x) x->row = malloc(sizeof(float) * (size_t)(pb->dv > 0 ? pb->dv : 1));
  if (!x || !x->row) {
    free(x);
    return cpaError(cpattnOutOfMemory, "no host memory for the host executor");
  }
  x->pb = pb;
  ex->ops = &kHostOps;
  ex->st = x;
  return cpattnSuccess;
}
