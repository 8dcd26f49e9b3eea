/*
 * test_mpi_attention.c -- distributed attention on the host executor, under mpirun with
 * any number of ranks, against single-rank attention on the whole sequence.
 *
 * Every rank draws the same full inputs from the same seed, computes the reference on
 * the whole sequence with the CPU reference kernel (compiled into this test, not taken
 * from the library under test), shards inputs and reference with the library's helpers,
 * runs cpattnForward / cpattnBackward on its shard and measures the relative error of
 * O, LSE, dQ, dK and dV. Errors are reduced across ranks before any assert, so a failure
 * on one rank fails every rank instead of leaving the others waiting in a collective.
 */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_ref.h"
#include "cpattn.h"
#include "cpattn_mpi.h"

static int g_rank, g_world;
static cpattnComm_t g_comm;

static uint64_t rng_state;
static float frand(void) { /* uniform in [-1, 1) */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

typedef struct {
  cpattnLayout_t layout;
  cpattnDataType_t dtype;
  cpattnMask_t mask;
  int wl, wr;
  cpattnSchedule_t schedule;
  int a2a;
  int hq, hkv, dqk, dv;
  int strided; /* local q/k/v with padded rows: exercises the strided paths */
  uint64_t seed;
} Case;

/* A buffer in the plan's dtype, with its descriptor. */
typedef struct {
  void *data;
  cpattnTensor_t t;
} Buf;

static size_t esize(cpattnDataType_t dt) { return dt == cpattnFloat32 ? 4 : 2; }

static void buf_make(Buf *b, const cpattnConfig_t *c, int64_t tokens, int heads, int dim, int pad) {
  int64_t rows = c->layout == cpattnLayoutTHD ? tokens : (int64_t)c->batch * tokens;
  int64_t row = (int64_t)heads * dim + pad;
  b->data = calloc((size_t)(rows * row + 1), esize(c->dtype));
  cpattnTensorInit(&b->t, b->data, c->dtype, c->layout, c->batch, tokens, heads, dim);
  if (pad) {
    if (c->layout == cpattnLayoutTHD) b->t.strides[0] = row;
    else if (c->layout == cpattnLayoutBSHD) { b->t.strides[1] = row; b->t.strides[0] = tokens * row; }
    else { b->t.strides[0] = c->batch * row; b->t.strides[1] = row; }
  }
}

static float load(const Buf *b, int64_t i) { return cpaRefLoad(b->data, b->t.dtype, i); }

/* Offset (elements) of (batch element or sequence start, token) in a full tensor. */
static int64_t row_offset(const cpattnTensor_t *t, cpattnLayout_t layout, int64_t b, int64_t tok) {
  if (layout == cpattnLayoutTHD) return tok * t->strides[0];
  if (layout == cpattnLayoutBSHD) return b * t->strides[0] + tok * t->strides[1];
  return tok * t->strides[0] + b * t->strides[1];
}

static int64_t row_stride(const cpattnTensor_t *t, cpattnLayout_t layout) {
  return layout == cpattnLayoutTHD ? t->strides[0] : layout == cpattnLayoutBSHD ? t->strides[1] : t->strides[0];
}

static int head_dim_index(cpattnLayout_t layout) { return layout == cpattnLayoutTHD ? 1 : 2; }

/* Reference attention over the whole sequence (fp32 outputs, every sequence on its own). */
static void reference(const cpattnConfig_t *c, const Buf *q, const Buf *k, const Buf *v, const Buf *dout, float *o,
                      float *lse, float *dq, float *dk, float *dv, float scale) {
  int hq = c->numHeadsQ, hkv = c->numHeadsKV, dqk = c->headDimQK, dvv = c->headDimV ? c->headDimV : dqk;
  int thd = c->layout == cpattnLayoutTHD, hd = head_dim_index(c->layout);
  int nseq = c->batch;
  int64_t S = c->seqLen;
  for (int s = 0; s < nseq; ++s) {
    int64_t start = thd ? c->cuSeqlens[s] : 0, len = thd ? c->cuSeqlens[s + 1] - c->cuSeqlens[s] : S;
    int64_t b = thd ? 0 : s;
    cpaRefShape sh = {len, len, hq, hkv, dqk, dvv, scale, CPA_DIAG_UNBOUNDED_LO, CPA_DIAG_UNBOUNDED_HI};
    if (c->mask == cpattnMaskCausal) sh.diag_hi = 0;
    if (c->mask == cpattnMaskSlidingWindow) {
      if (c->windowLeft >= 0) sh.diag_lo = -c->windowLeft;
      if (c->windowRight >= 0) sh.diag_hi = c->windowRight;
    }
    /* Reference outputs are packed [tokens][heads][dim] in the layout's token order. */
    int64_t oq = row_offset(&q->t, c->layout, b, start), ok = row_offset(&k->t, c->layout, b, start);
    int64_t ov = row_offset(&v->t, c->layout, b, start), od = row_offset(&dout->t, c->layout, b, start);
    cpattnTensor_t to, tq, tk, tv; /* packed fp32 outputs in the layout's token order */
    cpattnTensorInit(&to, NULL, cpattnFloat32, c->layout, c->batch, S, hq, dvv);
    cpattnTensorInit(&tq, NULL, cpattnFloat32, c->layout, c->batch, S, hq, dqk);
    cpattnTensorInit(&tk, NULL, cpattnFloat32, c->layout, c->batch, S, hkv, dqk);
    cpattnTensorInit(&tv, NULL, cpattnFloat32, c->layout, c->batch, S, hkv, dvv);
    size_t es = esize(c->dtype);
    cpaRefIn iq = {(char *)q->data + oq * (int64_t)es, c->dtype, row_stride(&q->t, c->layout), q->t.strides[hd]};
    cpaRefIn ik = {(char *)k->data + ok * (int64_t)es, c->dtype, row_stride(&k->t, c->layout), k->t.strides[hd]};
    cpaRefIn iv = {(char *)v->data + ov * (int64_t)es, c->dtype, row_stride(&v->t, c->layout), v->t.strides[hd]};
    cpaRefIn ido = {(char *)dout->data + od * (int64_t)es, c->dtype, row_stride(&dout->t, c->layout),
                    dout->t.strides[hd]};
    float *po = o + row_offset(&to, c->layout, b, start);
    cpaRefOut out = {po, cpattnFloat32, row_stride(&to, c->layout), to.strides[hd]};
    /* LSE in the public full layout: [b][h][s] or [t][h]. */
    float *pl = thd ? lse + start * hq : lse + b * hq * S;
    int64_t lrs = thd ? hq : 1, lhs = thd ? 1 : S;
    cpaRefAttnFwd(&sh, iq, ik, iv, out, pl, lrs, lhs);
    /* A bf16 user holds O rounded once, and that is what its backward consumes. */
    if (c->dtype != cpattnFloat32)
      for (int64_t t = 0; t < len; ++t)
        for (int h = 0; h < hq; ++h)
          for (int d = 0; d < dvv; ++d) {
            float *x = po + t * row_stride(&to, c->layout) + h * to.strides[hd] + d;
            *x = cpaBf16ToFloat(cpaFloatToBf16(*x));
          }
    cpaRefIn io = {po, cpattnFloat32, row_stride(&to, c->layout), to.strides[hd]};
    cpaRefAttnBwd(&sh, iq, ik, iv, io, ido, pl, lrs, lhs, dq + row_offset(&tq, c->layout, b, start),
                  row_stride(&tq, c->layout), tq.strides[hd], dk + row_offset(&tk, c->layout, b, start),
                  row_stride(&tk, c->layout), tk.strides[hd], dv + row_offset(&tv, c->layout, b, start),
                  row_stride(&tv, c->layout), tv.strides[hd], 0);
  }
}

/* Packed fp32 reference -> a Buf in the plan's dtype (rounded once, like the library). */
static void to_dtype(const cpattnConfig_t *c, const float *src, Buf *dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (dst->t.dtype == cpattnFloat32) ((float *)dst->data)[i] = src[i];
    else ((uint16_t *)dst->data)[i] = cpaFloatToBf16(src[i]);
  }
  (void)c;
}

/* max |got - want| / max |want| over every element the descriptor addresses; NaN -> inf. */
static double rel_err(const Buf *got, const Buf *want, double *worst_abs) {
  const cpattnTensor_t *t = &got->t;
  int nd = t->ndim;
  int64_t idx[4] = {0, 0, 0, 0};
  double num = 0, den = 0;
  int64_t total = 1;
  for (int i = 0; i < nd; ++i) total *= t->dims[i];
  for (int64_t n = 0; n < total; ++n) {
    int64_t rem = n, og = 0, ow = 0;
    for (int i = nd - 1; i >= 0; --i) {
      idx[i] = rem % t->dims[i];
      rem /= t->dims[i];
      og += idx[i] * t->strides[i];
      ow += idx[i] * want->t.strides[i];
    }
    double g = load(got, og), w = load(want, ow);
    if (isnan(g)) return INFINITY;
    if (fabs(g - w) > num) num = fabs(g - w);
    if (fabs(w) > den) den = fabs(w);
  }
  if (worst_abs) *worst_abs = num;
  return den > 0 ? num / den : num;
}

static double rel_err_f(const float *got, const float *want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (isnan(got[i]) || (isinf(got[i]) != isinf(want[i]))) return INFINITY;
    if (isinf(want[i])) continue;
    if (fabs((double)got[i] - want[i]) > num) num = fabs((double)got[i] - want[i]);
    if (fabs(want[i]) > den) den = fabs(want[i]);
  }
  return den > 0 ? num / den : num;
}

/* Runs one case; returns the worst relative error over O, LSE, dQ, dK, dV (reduced over
 * ranks), or -1 if the plan is not supported (on every rank alike). */
static double run_case(const Case *cs, const char *name) {
  rng_state = 0x2545F4914F6CDD1Dull ^ cs->seed;
  int32_t cu[5] = {0, 5, 5, 6, 0};
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  c.layout = cs->layout;
  c.dtype = cs->dtype;
  c.executor = cpattnExecutorHost;
  c.numHeadsQ = cs->hq;
  c.numHeadsKV = cs->hkv;
  c.headDimQK = cs->dqk;
  c.headDimV = cs->dv;
  c.mask = cs->mask;
  if (cs->mask == cpattnMaskSlidingWindow) {
    c.windowLeft = cs->wl;
    c.windowRight = cs->wr;
  }
  c.schedule = cs->schedule;
  c.a2aGroupSize = cs->a2a;
  if (cs->layout == cpattnLayoutTHD) {
    cu[4] = 6 + 29 + (int32_t)(cs->seed % 7); /* lengths 5, 0, 1, 29..35: awkward on purpose */
    c.batch = 4;
    c.cuSeqlens = cu;
    c.seqLen = cu[4];
  } else {
    c.batch = 2;
    c.seqLen = 37;
  }
  int64_t S = c.seqLen, full_rows = cs->layout == cpattnLayoutTHD ? S : 2 * S;
  int hq = cs->hq, hkv = cs->hkv, dqk = cs->dqk, dv = cs->dv;
  float scale = 1.0f / sqrtf((float)dqk);

  Buf q, k, v, dout;
  buf_make(&q, &c, S, hq, dqk, 0);
  buf_make(&k, &c, S, hkv, dqk, 0);
  buf_make(&v, &c, S, hkv, dv, 0);
  buf_make(&dout, &c, S, hq, dv, 0);
  Buf *ins[4] = {&q, &k, &v, &dout};
  int64_t nel[4] = {full_rows * hq * dqk, full_rows * hkv * dqk, full_rows * hkv * dv, full_rows * hq * dv};
  for (int i = 0; i < 4; ++i)
    for (int64_t j = 0; j < nel[i]; ++j) {
      if (c.dtype == cpattnFloat32) ((float *)ins[i]->data)[j] = frand();
      else ((uint16_t *)ins[i]->data)[j] = cpaFloatToBf16(frand());
    }
  float *ro = calloc((size_t)nel[3], 4), *rlse = calloc((size_t)(full_rows * hq), 4);
  float *rdq = calloc((size_t)nel[0], 4), *rdk = calloc((size_t)nel[1], 4), *rdv = calloc((size_t)nel[2], 4);
  reference(&c, &q, &k, &v, &dout, ro, rlse, rdq, rdk, rdv, scale);
  Buf fo, fdq, fdk, fdv;
  buf_make(&fo, &c, S, hq, dv, 0);
  buf_make(&fdq, &c, S, hq, dqk, 0);
  buf_make(&fdk, &c, S, hkv, dqk, 0);
  buf_make(&fdv, &c, S, hkv, dv, 0);
  to_dtype(&c, ro, &fo, nel[3]);
  to_dtype(&c, rdq, &fdq, nel[0]);
  to_dtype(&c, rdk, &fdk, nel[1]);
  to_dtype(&c, rdv, &fdv, nel[2]);

  cpattnPlan_t plan = NULL;
  cpattnResult_t res = cpattnPlanCreate(&plan, g_comm, &c);
  double worst = 0;
  if (res == cpattnNotSupported) {
    worst = -1;
  } else if (res != cpattnSuccess) {
    print_error("[rank %d] %s: cpattnPlanCreate: %s: %s\n", g_rank, name, cpattnGetErrorString(res),
                cpattnGetLastError());
    worst = INFINITY;
  } else {
    int64_t R;
    cpattnPlanGetLocalTokenCount(plan, &R);
    int pad = cs->strided ? 8 : 0;
    Buf lq, lk, lv, ldo, lo, ldq, ldk, ldv, eo, edq, edk, edv;
    buf_make(&lq, &c, R, hq, dqk, pad);
    buf_make(&lk, &c, R, hkv, dqk, pad);
    buf_make(&lv, &c, R, hkv, dv, pad);
    buf_make(&ldo, &c, R, hq, dv, 0);
    buf_make(&lo, &c, R, hq, dv, pad);
    buf_make(&ldq, &c, R, hq, dqk, pad); /* dQ is written through its strides by its last call */
    buf_make(&ldk, &c, R, hkv, dqk, pad);
    buf_make(&ldv, &c, R, hkv, dv, 0);
    buf_make(&eo, &c, R, hq, dv, 0);
    buf_make(&edq, &c, R, hq, dqk, 0);
    buf_make(&edk, &c, R, hkv, dqk, 0);
    buf_make(&edv, &c, R, hkv, dv, 0);
    int64_t lrows = cs->layout == cpattnLayoutTHD ? R : 2 * R;
    float *llse = calloc((size_t)(lrows * hq + 1), 4), *lse_exp = calloc((size_t)(lrows * hq + 1), 4);
    assert_int_equal(cpattnShardHost(&c, g_rank, g_world, &q.t, &lq.t), cpattnSuccess);
    assert_int_equal(cpattnShardHost(&c, g_rank, g_world, &k.t, &lk.t), cpattnSuccess);
    assert_int_equal(cpattnShardHost(&c, g_rank, g_world, &v.t, &lv.t), cpattnSuccess);
    assert_int_equal(cpattnShardHost(&c, g_rank, g_world, &dout.t, &ldo.t), cpattnSuccess);
    assert_int_equal(cpattnShardHost(&c, g_rank, g_world, &fo.t, &eo.t), cpattnSuccess);
    assert_int_equal(cpattnShardHost(&c, g_rank, g_world, &fdq.t, &edq.t), cpattnSuccess);
    assert_int_equal(cpattnShardHost(&c, g_rank, g_world, &fdk.t, &edk.t), cpattnSuccess);
    assert_int_equal(cpattnShardHost(&c, g_rank, g_world, &fdv.t, &edv.t), cpattnSuccess);
    assert_int_equal(cpattnShardLseHost(&c, g_rank, g_world, rlse, lse_exp), cpattnSuccess);
    size_t wsb;
    cpattnPlanGetWorkspaceSize(plan, &wsb);
    void *ws = NULL;
    if (wsb && posix_memalign(&ws, 256, wsb)) ws = NULL;
    if (wsb) memset(ws, 0xff, wsb); /* NaN garbage: nothing may read workspace it did not write */
    res = cpattnForward(plan, &lq.t, &lk.t, &lv.t, &lo.t, llse, ws, wsb, NULL);
    if (res == cpattnSuccess)
      res = cpattnBackward(plan, &lq.t, &lk.t, &lv.t, &lo.t, &ldo.t, llse, &ldq.t, &ldk.t, &ldv.t, ws, wsb, NULL);
    if (res != cpattnSuccess) {
      print_error("[rank %d] %s: %s: %s\n", g_rank, name, cpattnGetErrorString(res), cpattnGetLastError());
      worst = INFINITY;
    } else {
      double e[5];
      e[0] = rel_err(&lo, &eo, NULL);
      e[1] = rel_err_f(llse, lse_exp, lrows * hq);
      e[2] = rel_err(&ldq, &edq, NULL);
      e[3] = rel_err(&ldk, &edk, NULL);
      e[4] = rel_err(&ldv, &edv, NULL);
      static const char *nm[5] = {"O", "LSE", "dQ", "dK", "dV"};
      for (int i = 0; i < 5; ++i) {
        if (e[i] > worst) worst = e[i];
        if (e[i] > (c.dtype == cpattnFloat32 ? 1e-5 : 1e-2))
          print_error("[rank %d] %s: %s relative error %.3g\n", g_rank, name, nm[i], e[i]);
      }
    }
    free(ws);
    Buf *all[12] = {&lq, &lk, &lv, &ldo, &lo, &ldq, &ldk, &ldv, &eo, &edq, &edk, &edv};
    for (int i = 0; i < 12; ++i) free(all[i]->data);
    free(llse);
    free(lse_exp);
    cpattnPlanDestroy(plan);
  }
  free(ro);
  free(rlse);
  free(rdq);
  free(rdk);
  free(rdv);
  Buf *fb[8] = {&q, &k, &v, &dout, &fo, &fdq, &fdk, &fdv};
  for (int i = 0; i < 8; ++i) free(fb[i]->data);
  double all_worst;
  MPI_Allreduce(&worst, &all_worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return all_worst;
}

static const char *kLayoutNames[] = {"bshd", "sbhd", "thd"};
static const char *kSchedNames[] = {"auto", "ring", "a2a", "allgather", "hybrid"};

static void test_every_schedule_mask_layout_gqa(void **state) {
  (void)state;
  const struct { cpattnMask_t m; int wl, wr; const char *name; } masks[] = {
      {cpattnMaskNone, -1, -1, "none"},
      {cpattnMaskCausal, -1, -1, "causal"},
      {cpattnMaskSlidingWindow, 5, 2, "window5,2"},
      {cpattnMaskSlidingWindow, 9, 0, "window9,0"}};
  int P = g_world;
  int gqa = P == 3 ? 3 : 4;
  int hybrid_group = P % 2 == 0 ? 2 : P;
  int kvs[3] = {12, gqa, 1};
  int ran = 0, failed = 0, skipped = 0;
  uint64_t seed = 1;
  for (int layout = 0; layout < 3; ++layout)
    for (size_t m = 0; m < sizeof masks / sizeof masks[0]; ++m)
      for (int sc = cpattnScheduleRing; sc <= cpattnScheduleHybrid; ++sc)
        for (int g = 0; g < 3; ++g, ++seed) {
          Case cs = {(cpattnLayout_t)layout, cpattnFloat32, masks[m].m, masks[m].wl, masks[m].wr,
                     (cpattnSchedule_t)sc, sc == cpattnScheduleHybrid ? hybrid_group : 0, 12, kvs[g], 16,
                     seed % 3 == 0 ? 8 : 16, (int)(seed % 2), seed};
          char name[128];
          snprintf(name, sizeof name, "P=%d %s %s %s hq=%d hkv=%d dv=%d%s", P, kLayoutNames[layout], masks[m].name,
                   kSchedNames[sc], cs.hq, cs.hkv, cs.dv, cs.strided ? " strided" : "");
          double err = run_case(&cs, name);
          if (err < 0) {
            ++skipped;
            continue;
          }
          ++ran;
          if (!(err <= 1e-5)) {
            ++failed;
            if (g_rank == 0) print_error("FAIL %s: worst relative error %.3g\n", name, err);
          }
        }
  if (g_rank == 0) print_message("P=%d: %d cases ran, %d not supported by the heads, %d failed\n", P, ran, skipped, failed);
  assert_int_equal(failed, 0);
  assert_true(ran >= 130);
}

/* bf16 storage: one rounding at the end, so the error is the same at every P. */
static void test_bf16_error_does_not_grow_with_ranks(void **state) {
  (void)state;
  const cpattnSchedule_t scheds[] = {cpattnScheduleRing, cpattnScheduleAllGather, cpattnScheduleAllToAll};
  for (int i = 0; i < 3; ++i)
    for (int layout = 0; layout < 3; layout += 2) {
      Case cs = {(cpattnLayout_t)layout, cpattnBFloat16, cpattnMaskCausal, -1, -1, scheds[i], 0, 12, 4, 16, 16, 0,
                 (uint64_t)(100 + layout)};
      if (g_world == 3) cs.hkv = 3;
      char name[96];
      snprintf(name, sizeof name, "bf16 P=%d %s causal %s", g_world, kLayoutNames[layout], kSchedNames[scheds[i]]);
      double err = run_case(&cs, name);
      if (g_rank == 0) print_message("%s: worst relative error %.3g (one bf16 ulp is <= 7.8e-3)\n", name, err);
      /* 2^-7: one bf16 ulp, the most two correct roundings of nearly equal fp32 values can
       * differ by. The same bound holds at every P: partials stay fp32 until the end. */
      assert_true(err >= 0 && err <= 0.0079);
    }
}

/* A config whose heads an all-to-all cannot split is refused on every rank alike. */
static void test_unsupported_heads_refused_everywhere(void **state) {
  (void)state;
  if (g_world < 2) skip();
  Case cs = {cpattnLayoutBSHD, cpattnFloat32, cpattnMaskNone, -1, -1, cpattnScheduleAllToAll, 0, g_world + 1, 1, 16,
             16, 0, 7};
  if ((g_world + 1) % g_world == 0) cs.hq = 2 * g_world + 1;
  assert_true(run_case(&cs, "unsupported") < 0);
}

/* Different configs on different ranks: every rank gets cpattnConfigMismatch. */
static void test_config_mismatch_detected(void **state) {
  (void)state;
  if (g_world < 2) skip();
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  c.dtype = cpattnFloat32;
  c.executor = cpattnExecutorHost;
  c.numHeadsQ = c.numHeadsKV = 2;
  c.headDimQK = 8;
  c.seqLen = 64;
  if (g_rank == g_world - 1) c.numHeadsKV = 1;
  cpattnPlan_t plan;
  cpattnResult_t res = cpattnPlanCreate(&plan, g_comm, &c);
  int ok = res == cpattnConfigMismatch && strstr(cpattnGetLastError(), "config->numHeadsKV") != NULL, all;
  if (!ok) print_error("[rank %d] got %s: %s\n", g_rank, cpattnGetErrorString(res), cpattnGetLastError());
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  assert_true(all);
  /* A rank whose config is invalid makes the others fail too (remote error), not hang. */
  c.numHeadsKV = 2;
  if (g_rank == 0) c.headDimQK = 0;
  res = cpattnPlanCreate(&plan, g_comm, &c);
  ok = g_rank == 0 ? res == cpattnInvalidArgument : res == cpattnRemoteError;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  assert_true(all);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world);
  if (cpattnCommInitMpi(&g_comm, MPI_COMM_WORLD) != cpattnSuccess) {
    fprintf(stderr, "cpattnCommInitMpi: %s\n", cpattnGetLastError());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_schedule_mask_layout_gqa),
      cmocka_unit_test(test_bf16_error_does_not_grow_with_ranks),
      cmocka_unit_test(test_unsupported_heads_refused_everywhere),
      cmocka_unit_test(test_config_mismatch_detected),
  };
  /* Only rank 0 prints cmocka's report; every rank runs every test. */
  if (g_rank != 0) cmocka_set_message_output(CM_OUTPUT_SUBUNIT);
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  cpattnCommDestroy(g_comm);
  MPI_Finalize();
  return failed ? 1 : 0;
}
