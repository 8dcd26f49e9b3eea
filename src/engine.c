/*
 * engine.c -- the schedule walk (see engine.h). The order of operations here is the
 * order both executors run them in; the comments say why each wait sits where it does.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "nvtx.h"
#include "tokens.h"

/* The dry run's stand-in for the workspace and user buffers: never dereferenced, only
 * turned into views (the CUDA executor reads strides and shapes out of them). */
#define CPA_FAKE_BASE ((char *)(uintptr_t)0x100000000ull)

typedef struct {
  cpaEngine *e;
  char *ws;
  const size_t *off;
  struct CUstream_st *stream;
} cpaRun;

static void *region(const cpaRun *r, cpaWsRegion id) { return r->ws + r->off[id]; }

/* ---------------------------------------------------------------------------------- */
/* Views                                                                               */
/* ---------------------------------------------------------------------------------- */

/* [batch][rows][heads][dim], packed. */
static cpaView packed(void *data, cpattnDataType_t dt, int64_t B, int64_t rows, int heads, int dim) {
  (void)B;
  cpaView v = {data, dt, rows > 0 ? rows : 1, rows * heads * dim, (int64_t)heads * dim, dim, heads, dim};
  return v;
}

/* [n][heads][dim] with no batch structure: rank-major staging of exchanges. */
static cpaView flat(void *data, cpattnDataType_t dt, int64_t n, int heads, int dim) {
  cpaView v = {data, dt, n > 0 ? n : 1, 0, (int64_t)heads * dim, dim, heads, dim};
  return v;
}

static cpaView head_slice(cpaView v, int first, int count) {
  v.data = (char *)v.data + (size_t)first * (size_t)v.head_stride * cpaDtypeSize(v.dtype);
  v.heads = count;
  return v;
}

static int view_is_packed(const cpaView *v, int64_t B) {
  return v->head_stride == v->dim && v->row_stride == (int64_t)v->heads * v->dim &&
         (B == 1 || v->batch_stride == v->rows_per_batch * v->row_stride);
}

static cpaView user_view(const cpaProblem *pb, const cpattnTensor_t *t) {
  cpaView v;
  v.data = t->data;
  v.dtype = t->dtype;
  if (pb->cfg.layout == cpattnLayoutTHD) {
    v.rows_per_batch = t->dims[0] > 0 ? t->dims[0] : 1;
    v.batch_stride = 0;
    v.row_stride = t->strides[0];
    v.head_stride = t->strides[1];
    v.heads = (int)t->dims[1];
    v.dim = (int)t->dims[2];
  } else {
    int sdim = pb->cfg.layout == cpattnLayoutBSHD ? 1 : 0, bdim = 1 - sdim;
    v.rows_per_batch = t->dims[sdim] > 0 ? t->dims[sdim] : 1;
    v.batch_stride = t->strides[bdim];
    v.row_stride = t->strides[sdim];
    v.head_stride = t->strides[2];
    v.heads = (int)t->dims[2];
    v.dim = (int)t->dims[3];
  }
  return v;
}

/* The public LSE layout (cpattn.h): [batch][heads][rows] or, for THD, [rows][heads]. */
static cpaView lse_view(const cpaProblem *pb, const float *lse, int64_t rows) {
  cpaView v = {(void *)lse, cpattnFloat32, rows > 0 ? rows : 1, 0, 0, 0, pb->hq, 1};
  if (pb->cfg.layout == cpattnLayoutTHD) {
    v.row_stride = pb->hq;
    v.head_stride = 1;
  } else {
    v.batch_stride = (int64_t)pb->hq * rows;
    v.row_stride = 1;
    v.head_stride = rows;
  }
  return v;
}

static cpattnDataType_t part_dtype(const cpaEngine *e) {
  return e->part_bytes == 4 ? cpattnFloat32 : e->pb.cfg.dtype;
}

/* ---------------------------------------------------------------------------------- */
/* Exchanges                                                                           */
/* ---------------------------------------------------------------------------------- */

static cpattnResult_t xchg(cpaRun *r, cpattnXfer_t *s, int ns, cpattnXfer_t *rv, int nr, int *h) {
  *h = -1;
  if (r->e->dry || r->e->profile == cpattnProfileComputeOnly) return cpattnSuccess;
  cpaEngine *e = r->e;
  int tag = e->tag;
  e->tag = (e->tag + 1) % 30000; /* MPI guarantees tags up to 32767 */
  CPA_TRACE("exchange tag %d: %d sends, %d receives", tag, ns, nr);
  cpaNvtxPush("cpattn exchange");
  cpattnResult_t res = e->tr->exchange(e->tr, s, ns, rv, nr, tag, r->stream, h);
  cpaNvtxPop();
  return res;
}

static cpattnResult_t xwait(cpaRun *r, int h) {
  if (r->e->dry || h < 0) return cpattnSuccess;
  return r->e->tr->wait(r->e->tr, h, r->stream, r->e->pb.timeout_ms);
}

/* ---------------------------------------------------------------------------------- */
/* All-to-all in and out of a group (heads <-> tokens)                                 */
/* ---------------------------------------------------------------------------------- */

typedef enum { CPA_HEADS_Q = 0, CPA_HEADS_KV = 1 } cpaHeadKind;

typedef struct {
  cpaView user;      /* this rank's rows, all heads                                    */
  cpaView member;    /* the group's rows (sorted), this member's heads                 */
  cpaHeadKind heads; /* how heads split across the group                               */
  cpattnDataType_t wire; /* dtype on the wire (out direction)                          */
  int sum;           /* out direction: replicated KV heads are summed (fp32 staging)   */
  cpaView stage;     /* out direction with sum: fp32, this rank's rows, all KV heads   */
} cpaA2aTensor;

static void member_heads(const cpaProblem *pb, cpaHeadKind k, int a, int *first, int *count) {
  if (k == CPA_HEADS_Q) {
    *first = a * pb->hq_local;
    *count = pb->hq_local;
  } else {
    cpaProblemKvHeads(pb, a, first, count);
  }
}

/* Each tensor: my rows' head slice for member a goes to member a; what arrives is the
 * group's rows (rank-major) for my heads, which the permute puts into sorted order. */
static cpattnResult_t a2a_in(cpaRun *r, cpaA2aTensor *t, int nt) {
  cpaEngine *e = r->e;
  const cpaProblem *pb = &e->pb;
  const cpaSchedule *s = &e->sched;
  const cpaExecOps *X = e->ex.ops;
  int pa = pb->pa;
  int64_t B = pb->batch_mult, R = cpaRankRows(pb, pb->rank), Rq = s->q_set.rows;
  cpattnXfer_t sends[6 * 64], recvs[6 * 64];
  if (nt * pa > 6 * 64) return cpaError(cpattnNotSupported, "all-to-all groups larger than 64 ranks");
  char *send = region(r, CPA_WS_A2A_SEND), *recv = region(r, CPA_WS_A2A_RECV);
  size_t so = 0, ro = 0, recv_start[8];
  int n = 0;
  for (int i = 0; i < nt; ++i) {
    size_t es = cpaDtypeSize(t[i].member.dtype);
    int h = t[i].member.heads, d = t[i].member.dim;
    for (int a = 0; a < pa; ++a) {
      int first, count;
      member_heads(pb, t[i].heads, a, &first, &count);
      cpaView dst = flat(send + so, t[i].member.dtype, B * R, h, d);
      cpaView src = head_slice(t[i].user, first, count);
      CPA_CHECK(X->copy(e->ex.st, &dst, &src, B * R, NULL, 0));
      size_t bytes = (size_t)(B * R) * (size_t)h * (size_t)d * es;
      cpattnXfer_t x = {send + so, bytes, s->group_ranks[a]};
      sends[n] = x;
      so += cpaAlignUp(bytes, 256);
      cpattnXfer_t y = {recv + ro, (size_t)(B * s->group_rows[a]) * (size_t)h * (size_t)d * es, s->group_ranks[a]};
      recvs[n++] = y;
      if (a == 0) recv_start[i] = ro;
      ro += y.bytes; /* no padding between blocks: the permute map counts rows across them */
    }
    ro = cpaAlignUp(ro, 256);
  }
  int hdl;
  CPA_CHECK(xchg(r, sends, n, recvs, n, &hdl));
  CPA_CHECK(xwait(r, hdl));
  for (int i = 0; i < nt; ++i) {
    cpaView src = flat(recv + recv_start[i], t[i].member.dtype, B * Rq, t[i].member.heads, t[i].member.dim);
    CPA_CHECK(X->copy(e->ex.st, &t[i].member, &src, B * Rq, &e->perm, 0));
  }
  return cpattnSuccess;
}

/* The inverse: the group's rows of my heads go back to the ranks that own the rows; what
 * arrives is my rows for every member's heads. */
static cpattnResult_t a2a_out(cpaRun *r, cpaA2aTensor *t, int nt) {
  cpaEngine *e = r->e;
  const cpaProblem *pb = &e->pb;
  const cpaSchedule *s = &e->sched;
  const cpaExecOps *X = e->ex.ops;
  int pa = pb->pa;
  int64_t B = pb->batch_mult, R = cpaRankRows(pb, pb->rank), Rq = s->q_set.rows;
  cpattnXfer_t sends[6 * 64], recvs[6 * 64];
  if (nt * pa > 6 * 64) return cpaError(cpattnNotSupported, "all-to-all groups larger than 64 ranks");
  char *send = region(r, CPA_WS_A2A_SEND), *recv = region(r, CPA_WS_A2A_RECV);
  size_t so = 0, ro = 0, recv_start[8];
  int n = 0;
  for (int i = 0; i < nt; ++i) {
    size_t es = cpaDtypeSize(t[i].wire);
    int h = t[i].member.heads, d = t[i].member.dim;
    size_t row_bytes = (size_t)h * (size_t)d * es;
    cpaView dst = flat(send + so, t[i].wire, B * Rq, h, d);
    CPA_CHECK(X->copy(e->ex.st, &dst, &t[i].member, B * Rq, &e->perm, 1));
    recv_start[i] = ro;
    for (int a = 0; a < pa; ++a) {
      cpattnXfer_t x = {send + so, (size_t)(B * s->group_rows[a]) * row_bytes, s->group_ranks[a]};
      sends[n] = x;
      so += x.bytes;
      cpattnXfer_t y = {recv + ro, (size_t)(B * R) * row_bytes, s->group_ranks[a]};
      recvs[n++] = y;
      ro += cpaAlignUp(y.bytes, 256);
    }
    so = cpaAlignUp(so, 256);
  }
  int hdl;
  CPA_CHECK(xchg(r, sends, n, recvs, n, &hdl));
  CPA_CHECK(xwait(r, hdl));
  for (int i = 0; i < nt; ++i) {
    size_t row_bytes = (size_t)t[i].member.heads * (size_t)t[i].member.dim * cpaDtypeSize(t[i].wire);
    if (t[i].sum) CPA_CHECK(X->fill(e->ex.st, &t[i].stage, B * R, 0.0f));
    size_t ro_i = recv_start[i];
    for (int a = 0; a < pa; ++a) {
      int first, count;
      member_heads(pb, t[i].heads, a, &first, &count);
      cpaView src = flat(recv + ro_i, t[i].wire, B * R, t[i].member.heads, t[i].member.dim);
      ro_i += cpaAlignUp((size_t)(B * R) * row_bytes, 256);
      if (t[i].sum) {
        cpaView dst = head_slice(t[i].stage, first, count);
        CPA_CHECK(X->add(e->ex.st, &dst, &src, B * R));
      } else {
        cpaView dst = head_slice(t[i].user, first, count);
        CPA_CHECK(X->copy(e->ex.st, &dst, &src, B * R, NULL, 0));
      }
    }
    if (t[i].sum) CPA_CHECK(X->copy(e->ex.st, &t[i].user, &t[i].stage, B * R, NULL, 0));
  }
  return cpattnSuccess;
}

/* ---------------------------------------------------------------------------------- */
/* All-gather of K/V and the reduce-scatter of their gradients                         */
/* ---------------------------------------------------------------------------------- */

static size_t kv_part_bytes(const cpaEngine *e, int64_t rows, int dim, size_t es) {
  return cpaAlignUp((size_t)(e->pb.batch_mult * rows) * (size_t)e->pb.hkv_local * (size_t)dim * es, 256);
}

/* K and V views of a K/V region holding `rows` rows (K first, V at a fixed offset so that
 * it does not move with the block size). */
static void kv_views(const cpaEngine *e, char *base, int64_t rows, cpattnDataType_t dt, cpaView *k, cpaView *v) {
  const cpaProblem *pb = &e->pb;
  size_t es = cpaDtypeSize(dt);
  *k = packed(base, dt, pb->batch_mult, rows, pb->hkv_local, pb->dqk);
  *v = packed(base + kv_part_bytes(e, e->sched.max_kv_rows, pb->dqk, es), dt, pb->batch_mult, rows, pb->hkv_local,
              pb->dv);
}

static cpattnResult_t allgather_kv(cpaRun *r, const cpaView *uk, const cpaView *uv, cpaView *K, cpaView *V) {
  cpaEngine *e = r->e;
  const cpaProblem *pb = &e->pb;
  const cpaSchedule *s = &e->sched;
  const cpaExecOps *X = e->ex.ops;
  int P = pb->world;
  int64_t B = pb->batch_mult, R = cpaRankRows(pb, pb->rank), Rall = s->kv_sets[0].rows;
  cpattnDataType_t dt = pb->cfg.dtype;
  size_t es = cpaDtypeSize(dt);
  cpaView mk, mv, gk, gv;
  char *mine = region(r, CPA_WS_KV_SEND);
  mk = packed(mine, dt, B, R, pb->hkv, pb->dqk);
  mv = packed(mine + kv_part_bytes(e, R, pb->dqk, es), dt, B, R, pb->hkv, pb->dv);
  CPA_CHECK(X->copy(e->ex.st, &mk, uk, B * R, NULL, 0));
  CPA_CHECK(X->copy(e->ex.st, &mv, uv, B * R, NULL, 0));
  kv_views(e, region(r, CPA_WS_KV1), Rall, dt, &gk, &gv);
  cpattnXfer_t *sends = malloc(sizeof(cpattnXfer_t) * 2 * (size_t)P);
  cpattnXfer_t *recvs = malloc(sizeof(cpattnXfer_t) * 2 * (size_t)P);
  if (!sends || !recvs) {
    free(sends);
    free(recvs);
    return cpaError(cpattnOutOfMemory, "no host memory for %d transfers", 2 * P);
  }
  size_t krow = (size_t)pb->hkv * (size_t)pb->dqk * es, vrow = (size_t)pb->hkv * (size_t)pb->dv * es;
  int64_t at = 0;
  for (int p = 0; p < P; ++p) {
    int64_t rows = B * s->all_rows[p];
    cpattnXfer_t sk = {mk.data, (size_t)(B * R) * krow, p}, sv = {mv.data, (size_t)(B * R) * vrow, p};
    cpattnXfer_t rk = {(char *)gk.data + (size_t)at * krow, (size_t)rows * krow, p};
    cpattnXfer_t rv = {(char *)gv.data + (size_t)at * vrow, (size_t)rows * vrow, p};
    sends[2 * p] = sk;
    sends[2 * p + 1] = sv;
    recvs[2 * p] = rk;
    recvs[2 * p + 1] = rv;
    at += rows;
  }
  int h;
  cpattnResult_t res = xchg(r, sends, 2 * P, recvs, 2 * P, &h);
  free(sends);
  free(recvs);
  CPA_CHECK(res);
  CPA_CHECK(xwait(r, h));
  kv_views(e, region(r, CPA_WS_KV0), Rall, dt, K, V);
  cpaView fk = flat(gk.data, dt, B * Rall, pb->hkv, pb->dqk), fv = flat(gv.data, dt, B * Rall, pb->hkv, pb->dv);
  CPA_CHECK(X->copy(e->ex.st, K, &fk, B * Rall, &e->gather, 0));
  CPA_CHECK(X->copy(e->ex.st, V, &fv, B * Rall, &e->gather, 0));
  return cpattnSuccess;
}

/* dK/dV of the whole sequence (fp32, sorted) -> each rank gets the sum over ranks of its
 * own rows: rank-major pack, exchange, add up in fp32, round once into the user's. */
static cpattnResult_t reduce_scatter_dkv(cpaRun *r, const cpaView *dk_all, const cpaView *dv_all, const cpaView *udk,
                                         const cpaView *udv) {
  cpaEngine *e = r->e;
  const cpaProblem *pb = &e->pb;
  const cpaSchedule *s = &e->sched;
  const cpaExecOps *X = e->ex.ops;
  int P = pb->world;
  int64_t B = pb->batch_mult, R = cpaRankRows(pb, pb->rank), Rall = s->kv_sets[0].rows;
  size_t krow = (size_t)pb->hkv * (size_t)pb->dqk * 4, vrow = (size_t)pb->hkv * (size_t)pb->dv * 4;
  char *send = region(r, CPA_WS_A2A_SEND), *recv = region(r, CPA_WS_A2A_RECV);
  char *send_v = send + cpaAlignUp((size_t)(B * Rall) * krow, 256);
  cpaView fk = flat(send, cpattnFloat32, B * Rall, pb->hkv, pb->dqk);
  cpaView fv = flat(send_v, cpattnFloat32, B * Rall, pb->hkv, pb->dv);
  CPA_CHECK(X->copy(e->ex.st, &fk, dk_all, B * Rall, &e->gather, 1));
  CPA_CHECK(X->copy(e->ex.st, &fv, dv_all, B * Rall, &e->gather, 1));
  cpattnXfer_t *sends = malloc(sizeof(cpattnXfer_t) * 2 * (size_t)P);
  cpattnXfer_t *recvs = malloc(sizeof(cpattnXfer_t) * 2 * (size_t)P);
  if (!sends || !recvs) {
    free(sends);
    free(recvs);
    return cpaError(cpattnOutOfMemory, "no host memory for %d transfers", 2 * P);
  }
  size_t kblock = cpaAlignUp((size_t)(B * R) * krow, 256), vblock = cpaAlignUp((size_t)(B * R) * vrow, 256);
  int64_t at = 0;
  for (int p = 0; p < P; ++p) {
    int64_t rows = B * s->all_rows[p];
    cpattnXfer_t sk = {send + (size_t)at * krow, (size_t)rows * krow, p};
    cpattnXfer_t sv = {send_v + (size_t)at * vrow, (size_t)rows * vrow, p};
    cpattnXfer_t rk = {recv + (size_t)p * kblock, (size_t)(B * R) * krow, p};
    cpattnXfer_t rv = {recv + (size_t)P * kblock + (size_t)p * vblock, (size_t)(B * R) * vrow, p};
    sends[2 * p] = sk;
    sends[2 * p + 1] = sv;
    recvs[2 * p] = rk;
    recvs[2 * p + 1] = rv;
    at += rows;
  }
  int h;
  cpattnResult_t res = xchg(r, sends, 2 * P, recvs, 2 * P, &h);
  free(sends);
  free(recvs);
  CPA_CHECK(res);
  CPA_CHECK(xwait(r, h));
  char *stage = region(r, CPA_WS_DKV_STAGE);
  cpaView sk = packed(stage, cpattnFloat32, B, R, pb->hkv, pb->dqk);
  cpaView sv = packed(stage + cpaAlignUp((size_t)(B * R) * krow, 256), cpattnFloat32, B, R, pb->hkv, pb->dv);
  CPA_CHECK(X->fill(e->ex.st, &sk, B * R, 0.0f));
  CPA_CHECK(X->fill(e->ex.st, &sv, B * R, 0.0f));
  for (int p = 0; p < P; ++p) {
    cpaView bk = flat(recv + (size_t)p * kblock, cpattnFloat32, B * R, pb->hkv, pb->dqk);
    cpaView bv = flat(recv + (size_t)P * kblock + (size_t)p * vblock, cpattnFloat32, B * R, pb->hkv, pb->dv);
    CPA_CHECK(X->add(e->ex.st, &sk, &bk, B * R));
    CPA_CHECK(X->add(e->ex.st, &sv, &bv, B * R));
  }
  CPA_CHECK(X->copy(e->ex.st, udk, &sk, B * R, NULL, 0));
  CPA_CHECK(X->copy(e->ex.st, udv, &sv, B * R, NULL, 0));
  return cpattnSuccess;
}

/* ---------------------------------------------------------------------------------- */
/* Tensor checks                                                                       */
/* ---------------------------------------------------------------------------------- */

static const char *const kLayoutDims[3][4] = {
    {"batch", "seq", "heads", "dim"}, {"seq", "batch", "heads", "dim"}, {"tokens", "heads", "dim", ""}};

cpattnResult_t cpaCheckTensor(const cpaProblem *pb, const char *name, const cpattnTensor_t *t, int64_t tokens,
                              int heads, int dim) {
  const cpattnConfig_t *c = &pb->cfg;
  int thd = c->layout == cpattnLayoutTHD, nd = thd ? 3 : 4;
  int64_t want[4];
  if (c->layout == cpattnLayoutBSHD) { want[0] = c->batch; want[1] = tokens; want[2] = heads; want[3] = dim; }
  else if (c->layout == cpattnLayoutSBHD) { want[0] = tokens; want[1] = c->batch; want[2] = heads; want[3] = dim; }
  else { want[0] = tokens; want[1] = heads; want[2] = dim; want[3] = 1; }
  CPA_REQUIRE(t != NULL, "%s must not be NULL", name);
  CPA_REQUIRE(t->dtype == c->dtype, "%s->dtype = %s but the plan's config->dtype is %s", name,
              cpaDtypeName(t->dtype), cpaDtypeName(c->dtype));
  CPA_REQUIRE(t->ndim == nd, "%s->ndim = %d, layout %s needs %d", name, t->ndim, thd ? "THD" : "BSHD/SBHD", nd);
  for (int i = 0; i < nd; ++i)
    CPA_REQUIRE(t->dims[i] == want[i], "%s->dims[%d] (%s) = %lld, expected %lld for this rank", name, i,
                kLayoutDims[c->layout][i], (long long)t->dims[i], (long long)want[i]);
  CPA_REQUIRE(t->data != NULL || tokens == 0, "%s->data must not be NULL", name);
  CPA_REQUIRE(t->strides[nd - 1] == 1, "%s->strides[%d] (dim) = %lld must be 1", name, nd - 1,
              (long long)t->strides[nd - 1]);
  for (int i = 0; i < nd; ++i)
    CPA_REQUIRE(t->strides[i] >= 0, "%s->strides[%d] = %lld must be >= 0", name, i, (long long)t->strides[i]);
  /* No two elements may share an address: with the dims of extent > 1 sorted by stride,
   * each stride must step over everything the smaller ones span. */
  int order[4], n = 0;
  for (int i = 0; i < nd; ++i)
    if (t->dims[i] > 1) order[n++] = i;
  for (int i = 1; i < n; ++i)
    for (int j = i; j > 0 && t->strides[order[j]] < t->strides[order[j - 1]]; --j) {
      int x = order[j];
      order[j] = order[j - 1];
      order[j - 1] = x;
    }
  for (int i = 1; i < n; ++i) {
    int a = order[i - 1], b = order[i];
    CPA_REQUIRE(t->strides[b] >= t->strides[a] * t->dims[a],
                "%s->strides overlap: strides[%d] (%s) = %lld is smaller than strides[%d] * dims[%d] = %lld", name, b,
                kLayoutDims[c->layout][b], (long long)t->strides[b], a, a, (long long)(t->strides[a] * t->dims[a]));
  }
  if (pb->executor == cpattnExecutorCuda) {
    /* cuDNN's tensors are declared 16-byte aligned: the base and every row start. */
    CPA_REQUIRE(((uintptr_t)t->data & 15) == 0, "%s->data = %p must be 16-byte aligned for the CUDA executor", name,
                t->data);
    for (int i = 0; i < nd - 1; ++i)
      CPA_REQUIRE(t->strides[i] % 8 == 0 || t->dims[i] == 1,
                  "%s->strides[%d] = %lld must be a multiple of 8 elements (16 bytes) for the CUDA executor", name, i,
                  (long long)t->strides[i]);
  }
  return cpattnSuccess;
}

/* Address range [lo, hi) a tensor touches, for alias checks. */
static void tensor_span(const cpattnTensor_t *t, uintptr_t *lo, uintptr_t *hi) {
  int64_t last = 0;
  for (int i = 0; i < t->ndim; ++i)
    if (t->dims[i] > 0) last += (t->dims[i] - 1) * t->strides[i];
  *lo = (uintptr_t)t->data;
  *hi = *lo + (uintptr_t)(last + 1) * cpaDtypeSize(t->dtype);
}

static cpattnResult_t check_no_alias(const char *out_name, const cpattnTensor_t *out, const char *in_name,
                                     const cpattnTensor_t *in) {
  if (!out->data || !in->data) return cpattnSuccess;
  uintptr_t a0, a1, b0, b1;
  tensor_span(out, &a0, &a1);
  tensor_span(in, &b0, &b1);
  CPA_REQUIRE(a1 <= b0 || b1 <= a0, "%s must not overlap %s in memory (outputs never alias inputs)", out_name,
              in_name);
  return cpattnSuccess;
}

static cpattnResult_t check_workspace(const cpaEngine *e, void *ws, size_t bytes) {
  if (bytes < e->ws_bytes)
    return cpaError(cpattnWorkspaceTooSmall, "workspaceBytes = %zu is smaller than the %zu bytes this plan needs "
                    "(cpattnPlanGetWorkspaceSize)", bytes, e->ws_bytes);
  CPA_REQUIRE(ws != NULL || e->ws_bytes == 0, "workspace must not be NULL (%zu bytes needed)", e->ws_bytes);
  CPA_REQUIRE(((uintptr_t)ws & 255) == 0, "workspace = %p must be 256-byte aligned", ws);
  return cpattnSuccess;
}

/* ---------------------------------------------------------------------------------- */
/* Forward                                                                             */
/* ---------------------------------------------------------------------------------- */

/* The K/V block of step 0 must be packed to travel (a transport sends contiguous bytes):
 * a user's strided K/V is copied into the first ring buffer. */
static cpattnResult_t ring_start(cpaRun *r, const cpaView *K0, const cpaView *V0, cpaView *Kc, cpaView *Vc,
                                 int *cur) {
  cpaEngine *e = r->e;
  int64_t B = e->pb.batch_mult;
  *Kc = *K0;
  *Vc = *V0;
  *cur = -1;
  if (e->sched.nsteps > 1 && (!view_is_packed(K0, B) || !view_is_packed(V0, B))) {
    int64_t rows = e->sched.kv_sets[e->sched.steps[0].kv_member].rows;
    kv_views(e, region(r, CPA_WS_KV0), rows, e->pb.cfg.dtype, Kc, Vc);
    CPA_CHECK(e->ex.ops->copy(e->ex.st, Kc, K0, B * rows, NULL, 0));
    CPA_CHECK(e->ex.ops->copy(e->ex.st, Vc, V0, B * rows, NULL, 0));
    *cur = 0;
  }
  return cpattnSuccess;
}

/* Starts moving step st+1's K/V block into the ring buffer that step st does not use. */
static cpattnResult_t ring_next(cpaRun *r, int st, const cpaView *Kc, const cpaView *Vc, int cur, cpaView *Kn,
                                cpaView *Vn, int *next, int *h) {
  cpaEngine *e = r->e;
  const cpaSchedule *s = &e->sched;
  int64_t B = e->pb.batch_mult;
  size_t es = cpaDtypeSize(e->pb.cfg.dtype);
  *next = cur == 1 ? 0 : 1;
  int64_t rows_c = s->kv_sets[s->steps[st].kv_member].rows, rows_n = s->kv_sets[s->steps[st + 1].kv_member].rows;
  kv_views(e, region(r, *next ? CPA_WS_KV1 : CPA_WS_KV0), rows_n, e->pb.cfg.dtype, Kn, Vn);
  size_t krow = (size_t)e->pb.hkv_local * (size_t)e->pb.dqk * es, vrow = (size_t)e->pb.hkv_local * (size_t)e->pb.dv * es;
  cpattnXfer_t sends[2] = {{Kc->data, (size_t)(B * rows_c) * krow, s->send_to},
                           {Vc->data, (size_t)(B * rows_c) * vrow, s->send_to}};
  cpattnXfer_t recvs[2] = {{Kn->data, (size_t)(B * rows_n) * krow, s->recv_from},
                           {Vn->data, (size_t)(B * rows_n) * vrow, s->recv_from}};
  return xchg(r, sends, 2, recvs, 2, h);
}

/* First/last-touch routing of the query-side merges and accumulations (cpaTouch): with
 * every query row covered by some call, the first call over a row stores (no fill), and
 * without an all-to-all to undo (whose send staging reads the accumulator) the last
 * writes the user's tensor (no final copy). CommOnly runs no call: the plain path, whose
 * fills leave nothing uninitialized behind. */
static int touch_allow(const cpaEngine *e, int64_t R) {
  if (!e->touch.q_clean || e->profile == cpattnProfileCommOnly) return 0;
  int direct = e->sched.pre != CPA_PRE_ALLTOALL && e->sched.q_set.rows == R;
  return CPA_TOUCH_FIRST | (direct ? CPA_TOUCH_LAST : 0);
}

cpattnResult_t cpaEngineForward(cpaEngine *e, const cpattnTensor_t *q, const cpattnTensor_t *k,
                                const cpattnTensor_t *v, const cpattnTensor_t *o, float *lse, void *ws,
                                size_t ws_bytes, struct CUstream_st *stream) {
  const cpaProblem *pb = &e->pb;
  const cpaSchedule *s = &e->sched;
  const cpaExecOps *X = e->ex.ops;
  void *st = e->ex.st;
  int64_t B = pb->batch_mult, R = cpaRankRows(pb, pb->rank), Rq = s->q_set.rows;
  if (!e->dry) {
    CPA_CHECK(cpaCheckTensor(pb, "q", q, R, pb->hq, pb->dqk));
    CPA_CHECK(cpaCheckTensor(pb, "k", k, R, pb->hkv, pb->dqk));
    CPA_CHECK(cpaCheckTensor(pb, "v", v, R, pb->hkv, pb->dv));
    CPA_CHECK(cpaCheckTensor(pb, "o", o, R, pb->hq, pb->dv));
    CPA_REQUIRE(lse != NULL || R == 0, "lse must not be NULL");
    CPA_CHECK(check_no_alias("o", o, "q", q));
    CPA_CHECK(check_no_alias("o", o, "k", k));
    CPA_CHECK(check_no_alias("o", o, "v", v));
    CPA_CHECK(check_workspace(e, ws, ws_bytes));
  }
  cpaRun run = {e, e->dry ? CPA_FAKE_BASE : (char *)ws, e->ws_off_fwd, stream};
  cpaRun *r = &run;
  CPA_CHECK(X->begin(st, stream, region(r, CPA_WS_EXEC)));
  cpaView uq = user_view(pb, q), uk = user_view(pb, k), uv = user_view(pb, v), uo = user_view(pb, o);
  cpaView ulse = lse_view(pb, lse, R);
  int hq = pb->hq_local;
  cpattnDataType_t io = pb->cfg.dtype;

  cpaView Q = uq, K0 = uk, V0 = uv;
  if (s->pre == CPA_PRE_ALLTOALL) {
    Q = packed(region(r, CPA_WS_QM), io, B, Rq, hq, pb->dqk);
    K0 = packed(region(r, CPA_WS_KM), io, B, Rq, pb->hkv_local, pb->dqk);
    V0 = packed(region(r, CPA_WS_VM), io, B, Rq, pb->hkv_local, pb->dv);
    cpaA2aTensor t[3] = {{uq, Q, CPA_HEADS_Q, io, 0, {0}}, {uk, K0, CPA_HEADS_KV, io, 0, {0}},
                         {uv, V0, CPA_HEADS_KV, io, 0, {0}}};
    CPA_CHECK(a2a_in(r, t, 3));
  } else if (s->pre == CPA_PRE_ALLGATHER) {
    CPA_CHECK(allgather_kv(r, &uk, &uv, &K0, &V0));
  }

  /* Light accumulation: the user's O holds the first partial (see light_acc()). */
  cpaView acc_o = e->light_acc ? uo : packed(region(r, CPA_WS_ACC_O), cpattnFloat32, B, Rq, hq, pb->dv);
  cpaView acc_lse = packed(region(r, CPA_WS_ACC_LSE), cpattnFloat32, B, Rq, hq, 1);
  cpaView opart = packed(region(r, CPA_WS_OPART), part_dtype(e), B, Rq, hq, pb->dv);
  float *stats = region(r, CPA_WS_STATS);
  int allow = touch_allow(e, R);
  if (!allow) {
    CPA_CHECK(X->fill(st, &acc_o, B * Rq, 0.0f));
    CPA_CHECK(X->fill(st, &acc_lse, B * Rq, -INFINITY));
  }

  cpaView Kc, Vc, Kn, Vn;
  int cur, next;
  CPA_CHECK(ring_start(r, &K0, &V0, &Kc, &Vc, &cur));
  for (int i = 0; i < s->nsteps; ++i) {
    const cpaStep *step = &s->steps[i];
    int h = -1;
    /* Issued before this step's compute, so the next block travels while it runs. */
    if (i + 1 < s->nsteps) CPA_CHECK(ring_next(r, i, &Kc, &Vc, cur, &Kn, &Vn, &next, &h));
    CPA_TRACE("forward step %d: kv block %d, %d call(s)", i, step->kv_member, step->ncalls);
    if (!e->dry) cpaNvtxPush("cpattn forward step compute");
    for (int c = 0; c < step->ncalls && e->profile != cpattnProfileCommOnly; ++c) {
      cpattnResult_t res = X->attn_fwd(st, &step->calls[c], &Q, &Kc, &Vc, &opart, stats);
      if (res == cpattnSuccess)
        res = X->merge(st, &step->calls[c], allow, &acc_o, &acc_lse, &opart, stats, &uo, &ulse);
      if (res != cpattnSuccess) {
        if (!e->dry) cpaNvtxPop();
        return res;
      }
    }
    if (!e->dry) cpaNvtxPop();
    if (h >= 0 || i + 1 < s->nsteps) {
      CPA_CHECK(xwait(r, h));
      Kc = Kn;
      Vc = Vn;
      cur = next;
    }
  }

  if (s->pre == CPA_PRE_ALLTOALL) {
    cpaA2aTensor t[2] = {{uo, acc_o, CPA_HEADS_Q, io, 0, {0}}, {ulse, acc_lse, CPA_HEADS_Q, cpattnFloat32, 0, {0}}};
    CPA_CHECK(a2a_out(r, t, 2));
  } else if (!(allow & CPA_TOUCH_LAST)) {
    if (!e->light_acc) CPA_CHECK(X->copy(st, &uo, &acc_o, B * R, NULL, 0));
    CPA_CHECK(X->copy(st, &ulse, &acc_lse, B * R, NULL, 0));
  }
  return X->end(st);
}

/* ---------------------------------------------------------------------------------- */
/* Backward                                                                            */
/* ---------------------------------------------------------------------------------- */

/* One backward step's calls: gradients of each call, dQ into its accumulator, dK/dV into
 * the accumulator of the K/V block, which travels one step behind the block. */
static cpattnResult_t bwd_step(cpaRun *r, const cpaStep *step, const cpaView *Q, const cpaView *K, const cpaView *V,
                               const cpaView *O, const cpaView *DO, const cpaView *LSE, const cpaView *dq_acc,
                               const cpaView *dq_part, const cpaView *dk_part, const cpaView *dv_part,
                               const cpaView dkv[2], int *hd, int allow_q, const cpaView *udq, int allow_k) {
  cpaEngine *e = r->e;
  const cpaExecOps *X = e->ex.ops;
  void *st = e->ex.st;
  for (int c = 0; c < step->ncalls && e->profile != cpattnProfileCommOnly; ++c) {
    const cpaCall *call = &step->calls[c];
    CPA_CHECK(X->attn_bwd(st, call, Q, K, V, O, DO, LSE, dq_part, dk_part, dv_part));
    CPA_CHECK(X->accumulate(st, call, 0, allow_q, dq_acc, dq_part, udq));
    /* The accumulator of this block is needed only now, after the first (long)
     * attention call of the step was issued: its transfer hid behind that call. */
    CPA_CHECK(xwait(r, *hd));
    *hd = -1;
    CPA_CHECK(X->accumulate(st, call, 1, allow_k, &dkv[0], dk_part, NULL));
    CPA_CHECK(X->accumulate(st, call, 1, allow_k, &dkv[1], dv_part, NULL));
  }
  return cpattnSuccess;
}

cpattnResult_t cpaEngineBackward(cpaEngine *e, const cpattnTensor_t *q, const cpattnTensor_t *k,
                                 const cpattnTensor_t *v, const cpattnTensor_t *o, const cpattnTensor_t *dout,
                                 const float *lse, const cpattnTensor_t *dq, const cpattnTensor_t *dk,
                                 const cpattnTensor_t *dv, void *ws, size_t ws_bytes, struct CUstream_st *stream) {
  const cpaProblem *pb = &e->pb;
  const cpaSchedule *s = &e->sched;
  const cpaExecOps *X = e->ex.ops;
  void *st = e->ex.st;
  int64_t B = pb->batch_mult, R = cpaRankRows(pb, pb->rank), Rq = s->q_set.rows;
  if (!e->dry) {
    CPA_CHECK(cpaCheckTensor(pb, "q", q, R, pb->hq, pb->dqk));
    CPA_CHECK(cpaCheckTensor(pb, "k", k, R, pb->hkv, pb->dqk));
    CPA_CHECK(cpaCheckTensor(pb, "v", v, R, pb->hkv, pb->dv));
    CPA_CHECK(cpaCheckTensor(pb, "o", o, R, pb->hq, pb->dv));
    CPA_CHECK(cpaCheckTensor(pb, "do_", dout, R, pb->hq, pb->dv));
    CPA_CHECK(cpaCheckTensor(pb, "dq", dq, R, pb->hq, pb->dqk));
    CPA_CHECK(cpaCheckTensor(pb, "dk", dk, R, pb->hkv, pb->dqk));
    CPA_CHECK(cpaCheckTensor(pb, "dv", dv, R, pb->hkv, pb->dv));
    CPA_REQUIRE(lse != NULL || R == 0, "lse must not be NULL");
    const cpattnTensor_t *outs[3] = {dq, dk, dv}, *ins[5] = {q, k, v, o, dout};
    const char *on[3] = {"dq", "dk", "dv"}, *in[5] = {"q", "k", "v", "o", "do_"};
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 5; ++j) CPA_CHECK(check_no_alias(on[i], outs[i], in[j], ins[j]));
      for (int j = i + 1; j < 3; ++j) CPA_CHECK(check_no_alias(on[i], outs[i], on[j], outs[j]));
    }
    CPA_CHECK(check_workspace(e, ws, ws_bytes));
  }
  cpaRun run = {e, e->dry ? CPA_FAKE_BASE : (char *)ws, e->ws_off_bwd, stream};
  cpaRun *r = &run;
  CPA_CHECK(X->begin(st, stream, region(r, CPA_WS_EXEC)));
  cpaView uq = user_view(pb, q), uk = user_view(pb, k), uv = user_view(pb, v), uo = user_view(pb, o);
  cpaView udo = user_view(pb, dout), udq = user_view(pb, dq), udk = user_view(pb, dk), udv = user_view(pb, dv);
  cpaView ulse = lse_view(pb, lse, R);
  int hq = pb->hq_local, hkv = pb->hkv_local;
  cpattnDataType_t io = pb->cfg.dtype, pt = part_dtype(e);

  cpaView Q = uq, K0 = uk, V0 = uv, O = uo, DO = udo, LSE = ulse;
  if (s->pre == CPA_PRE_ALLTOALL) {
    Q = packed(region(r, CPA_WS_QM), io, B, Rq, hq, pb->dqk);
    K0 = packed(region(r, CPA_WS_KM), io, B, Rq, hkv, pb->dqk);
    V0 = packed(region(r, CPA_WS_VM), io, B, Rq, hkv, pb->dv);
    O = packed(region(r, CPA_WS_OM), io, B, Rq, hq, pb->dv);
    DO = packed(region(r, CPA_WS_DOM), io, B, Rq, hq, pb->dv);
    LSE = packed(region(r, CPA_WS_LSEM), cpattnFloat32, B, Rq, hq, 1);
    cpaA2aTensor t[6] = {{uq, Q, CPA_HEADS_Q, io, 0, {0}},     {uk, K0, CPA_HEADS_KV, io, 0, {0}},
                         {uv, V0, CPA_HEADS_KV, io, 0, {0}},   {uo, O, CPA_HEADS_Q, io, 0, {0}},
                         {udo, DO, CPA_HEADS_Q, io, 0, {0}},   {ulse, LSE, CPA_HEADS_Q, cpattnFloat32, 0, {0}}};
    CPA_CHECK(a2a_in(r, t, 6));
  } else if (s->pre == CPA_PRE_ALLGATHER) {
    CPA_CHECK(allgather_kv(r, &uk, &uv, &K0, &V0));
  }

  cpaView dq_acc = e->light_acc ? udq : packed(region(r, CPA_WS_DQ_ACC), cpattnFloat32, B, Rq, hq, pb->dqk);
  cpaView dq_part = packed(region(r, CPA_WS_DQ_PART), pt, B, Rq, hq, pb->dqk);
  int allow_q = touch_allow(e, R);
  if (!allow_q) CPA_CHECK(X->fill(st, &dq_acc, B * Rq, 0.0f));

  /* dK/dV accumulators travel with their K/V block, one step behind it: the block a
   * rank receives at step i+1 was finished by its neighbour at step i. Step 0's is this
   * rank's own: when step 0's calls cover all its key rows, the first call over a row
   * stores there instead of adding to a fill. Received ones are complete blocks. */
  cpaView D[2][2];
  int64_t rows0 = s->kv_sets[s->steps[0].kv_member].rows;
  kv_views(e, region(r, CPA_WS_DKV0), rows0, cpattnFloat32, &D[0][0], &D[0][1]);
  int allow_k = e->touch.k_clean && e->profile != cpattnProfileCommOnly ? CPA_TOUCH_FIRST : 0;
  if (!allow_k) {
    CPA_CHECK(X->fill(st, &D[0][0], B * rows0, 0.0f));
    CPA_CHECK(X->fill(st, &D[0][1], B * rows0, 0.0f));
  }
  int d = 0, hd = -1;

  cpaView Kc, Vc, Kn, Vn;
  int cur, next;
  CPA_CHECK(ring_start(r, &K0, &V0, &Kc, &Vc, &cur));
  for (int i = 0; i < s->nsteps; ++i) {
    const cpaStep *step = &s->steps[i];
    int64_t rows = s->kv_sets[step->kv_member].rows;
    cpaView dk_part = packed(region(r, CPA_WS_DK_PART), pt, B, rows, hkv, pb->dqk);
    cpaView dv_part = packed(region(r, CPA_WS_DV_PART), pt, B, rows, hkv, pb->dv);
    int h = -1;
    if (i + 1 < s->nsteps) CPA_CHECK(ring_next(r, i, &Kc, &Vc, cur, &Kn, &Vn, &next, &h));
    CPA_TRACE("backward step %d: kv block %d, %d call(s)", i, step->kv_member, step->ncalls);
    if (!e->dry) cpaNvtxPush("cpattn backward step compute");
    cpattnResult_t res = bwd_step(r, step, &Q, &Kc, &Vc, &O, &DO, &LSE, &dq_acc, &dq_part, &dk_part, &dv_part,
                                  D[d], &hd, allow_q, &udq, i == 0 ? allow_k : 0);
    if (!e->dry) cpaNvtxPop();
    CPA_CHECK(res);
    CPA_CHECK(xwait(r, hd)); /* a step with no calls still passes its accumulator on */
    hd = -1;
    int last_hop = i + 1 == s->nsteps && pb->pr > 1 && s->pre == CPA_PRE_NONE;
    if (last_hop) {
      /* The block leaves complete: its owner only rounds it. Rounding before sending is
       * the same result and half the bytes of the one exchange nothing hides. */
      char *wire = region(r, CPA_WS_DKV_WIRE);
      size_t half = kv_part_bytes(e, s->max_kv_rows, pb->dqk, cpaDtypeSize(io)) +
                    kv_part_bytes(e, s->max_kv_rows, pb->dv, cpaDtypeSize(io));
      int64_t rows_n = s->kv_sets[s->group].rows;
      cpaView wk, wv, rk, rv;
      kv_views(e, wire, rows, io, &wk, &wv);
      kv_views(e, wire + half, rows_n, io, &rk, &rv);
      CPA_CHECK(X->copy(st, &wk, &D[d][0], B * rows, NULL, 0));
      CPA_CHECK(X->copy(st, &wv, &D[d][1], B * rows, NULL, 0));
      size_t es = cpaDtypeSize(io), krow = (size_t)hkv * (size_t)pb->dqk * es, vrow = (size_t)hkv * (size_t)pb->dv * es;
      cpattnXfer_t sends[2] = {{wk.data, (size_t)(B * rows) * krow, s->send_to},
                               {wv.data, (size_t)(B * rows) * vrow, s->send_to}};
      cpattnXfer_t recvs[2] = {{rk.data, (size_t)(B * rows_n) * krow, s->recv_from},
                               {rv.data, (size_t)(B * rows_n) * vrow, s->recv_from}};
      CPA_CHECK(xchg(r, sends, 2, recvs, 2, &hd));
      D[d][0] = rk; /* home: already in the io dtype */
      D[d][1] = rv;
    } else if (pb->pr > 1 && pb->schedule != cpattnScheduleAllGather) {
      int64_t rows_n = s->kv_sets[i + 1 < s->nsteps ? s->steps[i + 1].kv_member : s->group].rows;
      kv_views(e, region(r, d ? CPA_WS_DKV0 : CPA_WS_DKV1), rows_n, cpattnFloat32, &D[1 - d][0], &D[1 - d][1]);
      size_t krow = (size_t)hkv * (size_t)pb->dqk * 4, vrow = (size_t)hkv * (size_t)pb->dv * 4;
      cpattnXfer_t sends[2] = {{D[d][0].data, (size_t)(B * rows) * krow, s->send_to},
                               {D[d][1].data, (size_t)(B * rows) * vrow, s->send_to}};
      cpattnXfer_t recvs[2] = {{D[1 - d][0].data, (size_t)(B * rows_n) * krow, s->recv_from},
                               {D[1 - d][1].data, (size_t)(B * rows_n) * vrow, s->recv_from}};
      CPA_CHECK(xchg(r, sends, 2, recvs, 2, &hd));
      d = 1 - d;
    }
    if (i + 1 < s->nsteps) {
      CPA_CHECK(xwait(r, h));
      Kc = Kn;
      Vc = Vn;
      cur = next;
    }
  }
  CPA_CHECK(xwait(r, hd)); /* my own block, home after a full turn */

  if (s->pre == CPA_PRE_ALLTOALL) {
    int sum = pb->hkv < pb->pa;
    char *stage = region(r, CPA_WS_DKV_STAGE);
    cpaView sk = packed(stage, cpattnFloat32, B, R, pb->hkv, pb->dqk);
    cpaView sv = packed(stage + cpaAlignUp((size_t)(B * R) * (size_t)pb->hkv * (size_t)pb->dqk * 4, 256),
                        cpattnFloat32, B, R, pb->hkv, pb->dv);
    /* dK/dV cross the wire in fp32: replicated heads are summed before the one rounding. */
    cpaA2aTensor t[3] = {{udq, dq_acc, CPA_HEADS_Q, io, 0, {0}},
                         {udk, D[d][0], CPA_HEADS_KV, cpattnFloat32, sum, sk},
                         {udv, D[d][1], CPA_HEADS_KV, cpattnFloat32, sum, sv}};
    CPA_CHECK(a2a_out(r, t, 3));
  } else if (s->pre == CPA_PRE_ALLGATHER) {
    if (!(allow_q & CPA_TOUCH_LAST) && !e->light_acc) CPA_CHECK(X->copy(st, &udq, &dq_acc, B * R, NULL, 0));
    CPA_CHECK(reduce_scatter_dkv(r, &D[d][0], &D[d][1], &udk, &udv));
  } else {
    if (!(allow_q & CPA_TOUCH_LAST) && !e->light_acc) CPA_CHECK(X->copy(st, &udq, &dq_acc, B * R, NULL, 0));
    CPA_CHECK(X->copy(st, &udk, &D[d][0], B * R, NULL, 0));
    CPA_CHECK(X->copy(st, &udv, &D[d][1], B * R, NULL, 0));
  }
  return X->end(st);
}

/* ---------------------------------------------------------------------------------- */
/* Plan time: workspace layout and the dry run                                          */
/* ---------------------------------------------------------------------------------- */

typedef struct {
  size_t *off;
  size_t at;
} cpaLayout;

static void take(cpaLayout *l, cpaWsRegion id, size_t bytes) {
  l->off[id] = l->at;
  l->at += cpaAlignUp(bytes, 256);
}

static size_t rows_bytes(int64_t rows, int heads, int dim, size_t es) {
  return cpaAlignUp((size_t)rows * (size_t)heads * (size_t)dim * es, 256);
}

static void layout_workspace(cpaEngine *e, size_t *fwd_end, size_t *bwd_end) {
  const cpaProblem *pb = &e->pb;
  const cpaSchedule *s = &e->sched;
  int64_t B = pb->batch_mult, R = cpaRankRows(pb, pb->rank), Rq = s->q_set.rows, Rk = s->max_kv_rows;
  int hq = pb->hq_local, hkv = pb->hkv_local, pa = pb->pa, P = pb->world;
  size_t io = cpaDtypeSize(pb->cfg.dtype), pe = e->part_bytes, dqk = (size_t)pb->dqk, dv = (size_t)pb->dv;
  int a2a = s->pre == CPA_PRE_ALLTOALL, ag = s->pre == CPA_PRE_ALLGATHER;
  size_t kv_io = kv_part_bytes(e, Rk, pb->dqk, io) + kv_part_bytes(e, Rk, pb->dv, io);
  size_t kv_f32 = kv_part_bytes(e, Rk, pb->dqk, 4) + kv_part_bytes(e, Rk, pb->dv, 4);
  size_t mine_kv = ag ? rows_bytes(B * R, pb->hkv, pb->dqk, io) + rows_bytes(B * R, pb->hkv, pb->dv, io) : 0;

  /* all-to-all staging: in (q, k, v [, o, do, lse]) and out directions share it */
  size_t in_send_f = 0, in_recv_f = 0, in_send_b = 0, in_recv_b = 0, out_send_f = 0, out_recv_f = 0,
         out_send_b = 0, out_recv_b = 0;
  if (a2a) {
    size_t qs = rows_bytes(B * R, hq, pb->dqk, io), ks = rows_bytes(B * R, hkv, pb->dqk, io),
           vs = rows_bytes(B * R, hkv, pb->dv, io), os = rows_bytes(B * R, hq, pb->dv, io),
           ls = rows_bytes(B * R, hq, 1, 4);
    in_send_f = (size_t)pa * (qs + ks + vs);
    in_send_b = (size_t)pa * (qs + ks + vs + 2 * os + ls);
    size_t qm = rows_bytes(B * Rq, hq, pb->dqk, io), km = rows_bytes(B * Rq, hkv, pb->dqk, io),
           vm = rows_bytes(B * Rq, hkv, pb->dv, io), om = rows_bytes(B * Rq, hq, pb->dv, io),
           lm = rows_bytes(B * Rq, hq, 1, 4);
    in_recv_f = qm + km + vm;
    in_recv_b = qm + km + vm + 2 * om + lm;
    out_send_f = om + lm;
    out_recv_f = (size_t)pa * (os + ls);
    out_send_b = qm + rows_bytes(B * Rq, hkv, pb->dqk, 4) + rows_bytes(B * Rq, hkv, pb->dv, 4);
    out_recv_b = (size_t)pa * (rows_bytes(B * R, hq, pb->dqk, io) + rows_bytes(B * R, hkv, pb->dqk, 4) +
                               rows_bytes(B * R, hkv, pb->dv, 4));
  }
  size_t rs_send = 0, rs_recv = 0;
  if (ag) {
    int64_t Rall = s->kv_sets[0].rows;
    rs_send = rows_bytes(B * Rall, pb->hkv, pb->dqk, 4) + rows_bytes(B * Rall, pb->hkv, pb->dv, 4);
    rs_recv = (size_t)P * (rows_bytes(B * R, pb->hkv, pb->dqk, 4) + rows_bytes(B * R, pb->hkv, pb->dv, 4));
  }

  cpaLayout f = {e->ws_off_fwd, 0};
  take(&f, CPA_WS_KV0, s->nsteps > 1 || ag ? kv_io : 0);
  take(&f, CPA_WS_KV1, s->nsteps > 1 || ag ? kv_io : 0);
  take(&f, CPA_WS_KV_SEND, mine_kv);
  take(&f, CPA_WS_OPART, (size_t)(B * Rq) * (size_t)hq * dv * pe);
  take(&f, CPA_WS_STATS, (size_t)(B * Rq) * (size_t)hq * 4);
  take(&f, CPA_WS_ACC_O, e->light_acc ? 0 : (size_t)(B * Rq) * (size_t)hq * dv * 4);
  take(&f, CPA_WS_ACC_LSE, (size_t)(B * Rq) * (size_t)hq * 4);
  take(&f, CPA_WS_A2A_SEND, in_send_f > out_send_f ? in_send_f : out_send_f);
  take(&f, CPA_WS_A2A_RECV, in_recv_f > out_recv_f ? in_recv_f : out_recv_f);
  take(&f, CPA_WS_QM, a2a ? rows_bytes(B * Rq, hq, pb->dqk, io) : 0);
  take(&f, CPA_WS_KM, a2a ? rows_bytes(B * Rq, hkv, pb->dqk, io) : 0);
  take(&f, CPA_WS_VM, a2a ? rows_bytes(B * Rq, hkv, pb->dv, io) : 0);
  *fwd_end = f.at;

  cpaLayout b = {e->ws_off_bwd, 0};
  take(&b, CPA_WS_KV0, s->nsteps > 1 || ag ? kv_io : 0);
  take(&b, CPA_WS_KV1, s->nsteps > 1 || ag ? kv_io : 0);
  take(&b, CPA_WS_KV_SEND, mine_kv);
  size_t bs = in_send_b > out_send_b ? in_send_b : out_send_b, br = in_recv_b > out_recv_b ? in_recv_b : out_recv_b;
  take(&b, CPA_WS_A2A_SEND, bs > rs_send ? bs : rs_send);
  take(&b, CPA_WS_A2A_RECV, br > rs_recv ? br : rs_recv);
  take(&b, CPA_WS_QM, a2a ? rows_bytes(B * Rq, hq, pb->dqk, io) : 0);
  take(&b, CPA_WS_KM, a2a ? rows_bytes(B * Rq, hkv, pb->dqk, io) : 0);
  take(&b, CPA_WS_VM, a2a ? rows_bytes(B * Rq, hkv, pb->dv, io) : 0);
  take(&b, CPA_WS_OM, a2a ? rows_bytes(B * Rq, hq, pb->dv, io) : 0);
  take(&b, CPA_WS_DOM, a2a ? rows_bytes(B * Rq, hq, pb->dv, io) : 0);
  take(&b, CPA_WS_LSEM, a2a ? rows_bytes(B * Rq, hq, 1, 4) : 0);
  take(&b, CPA_WS_DKV0, kv_f32);
  take(&b, CPA_WS_DKV1, pb->pr > 1 ? kv_f32 : 0);
  take(&b, CPA_WS_DQ_ACC, e->light_acc ? 0 : (size_t)(B * Rq) * (size_t)hq * dqk * 4);
  take(&b, CPA_WS_DQ_PART, (size_t)(B * Rq) * (size_t)hq * dqk * pe);
  take(&b, CPA_WS_DK_PART, (size_t)(B * Rk) * (size_t)hkv * dqk * pe);
  take(&b, CPA_WS_DV_PART, (size_t)(B * Rk) * (size_t)hkv * dv * pe);
  /* The wire is filled after the last step's accumulations, when the partials are dead
   * (the exchange's stream waits for that point): it reuses their space where it fits. */
  size_t wire = s->pre == CPA_PRE_NONE && pb->pr > 1 ? 2 * kv_io : 0;
  if (wire > 0 && wire <= b.at - b.off[CPA_WS_DQ_PART]) b.off[CPA_WS_DKV_WIRE] = b.off[CPA_WS_DQ_PART];
  else take(&b, CPA_WS_DKV_WIRE, wire);
  take(&b, CPA_WS_DKV_STAGE,
       (a2a && pb->hkv < pa) || ag ? rows_bytes(B * R, pb->hkv, pb->dqk, 4) + rows_bytes(B * R, pb->hkv, pb->dv, 4)
                                   : 0);
  *bwd_end = b.at;
}

/* Packed stand-ins for the user's tensors, for the dry run. */
static cpattnTensor_t fake_tensor(const cpaProblem *pb, int64_t rows, int heads, int dim) {
  cpattnTensor_t t;
  cpattnTensorInit(&t, CPA_FAKE_BASE, pb->cfg.dtype, pb->cfg.layout, pb->cfg.batch, rows, heads, dim);
  return t;
}

static cpattnResult_t dry_run(cpaEngine *e) {
  const cpaProblem *pb = &e->pb;
  int64_t R = cpaRankRows(pb, pb->rank);
  cpattnTensor_t q = fake_tensor(pb, R, pb->hq, pb->dqk), k = fake_tensor(pb, R, pb->hkv, pb->dqk),
                 v = fake_tensor(pb, R, pb->hkv, pb->dv), o = fake_tensor(pb, R, pb->hq, pb->dv);
  float *lse = (float *)CPA_FAKE_BASE;
  e->dry = 1;
  cpattnResult_t res = cpaEngineForward(e, &q, &k, &v, &o, lse, NULL, 0, NULL);
  if (res == cpattnSuccess) res = cpaEngineBackward(e, &q, &k, &v, &o, &o, lse, &q, &k, &v, NULL, 0, NULL);
  e->dry = 0;
  return res;
}

/* What the first/last-touch routing does for this plan, at INFO. */
static void log_touch(const cpaEngine *e) {
  if (cpaLogLevelGet() < CPA_LOG_INFO) return;
  const cpaSchedule *s = &e->sched;
  int n[4] = {0, 0, 0, 0}, k_first = 0; /* calls by CPA_TOUCH_FIRST | CPA_TOUCH_LAST on all their rows */
  for (int st = 0; st < s->nsteps; ++st)
    for (int c = 0; c < s->steps[st].ncalls; ++c) {
      const cpaCall *call = &s->steps[st].calls[c];
      n[cpaTouchCallKind(&e->touch, call, 0) & (CPA_TOUCH_FIRST | CPA_TOUCH_LAST)]++;
      if (st == 0 && (cpaTouchCallKind(&e->touch, call, 1) & CPA_TOUCH_FIRST)) ++k_first;
    }
  CPA_INFO("first/last touch: query rows %s; calls first on all their rows %d, last on all %d, both %d, neither %d "
           "(routed row by row); step 0 key rows %s, %d of %d calls first on all",
           e->touch.q_clean ? "all covered" : "not all covered (fill + copy)", n[1], n[2], n[3], n[0],
           e->touch.k_clean ? "all covered" : "not all covered (fill)", k_first, s->nsteps ? s->steps[0].ncalls : 0);
}

/* Light accumulation (plan time). The fp32 accumulators of O and dQ exist to sum many
 * partial results with one rounding at the end. Where no query row gets more than two
 * (two ranks: zigzag causal, or any mask), and the partials come in the output dtype
 * (the CUDA executor's; the host's at fp32), the first partial can wait in the output
 * itself: it is exactly what the accumulator would hold, and the last touch rounds the
 * sum once, as before. The same result without the c*H*D*4 bytes of each accumulator
 * (16 GiB per GPU at 2M tokens, 32 heads). Needs the first/last-touch routing with the
 * direct last write (no all-to-all, query set = this rank's rows). */
static int light_acc(const cpaEngine *e) {
  const cpaProblem *pb = &e->pb;
  return cpaParamInt(CPA_PARAM_LIGHT_ACC) != 0 && e->touch.q_clean && e->touch.q_max_touch <= 2 &&
         e->sched.pre != CPA_PRE_ALLTOALL && e->sched.q_set.rows == cpaRankRows(pb, pb->rank) &&
         e->part_bytes == cpaDtypeSize(pb->cfg.dtype);
}

cpattnResult_t cpaEngineInit(cpaEngine *e, cpattnComm_t comm, cpattnTransport_t *tr, const cpattnConfig_t *config) {
  cpattnResult_t res;
  memset(e, 0, sizeof *e);
  e->tr = tr;
  CPA_CHECK(cpaProblemInit(&e->pb, config, tr->rank, tr->size, tr->kind));
  CPA_CHECK_GOTO(cpaScheduleBuild(&e->pb, &e->sched), res, fail);
  if (e->pb.executor == cpattnExecutorHost)
    CPA_CHECK_GOTO(cpaExecHostCreate(&e->ex, &e->pb), res, fail);
  else
    CPA_CHECK_GOTO(cpaExecCudaCreate(&e->ex, &e->pb, comm), res, fail);
  e->part_bytes = e->ex.ops->part_elem_bytes(e->ex.st);
  e->perm.id = 0;
  e->perm.host = e->sched.perm_map;
  e->perm.n = e->sched.perm_n;
  e->gather.id = 1;
  e->gather.host = e->sched.gather_map;
  e->gather.n = e->sched.gather_n;

  size_t fwd_end, bwd_end, extra = 0;
  CPA_CHECK_GOTO(cpaScheduleTouch(&e->sched, &e->touch), res, fail);
  log_touch(e);
  e->light_acc = light_acc(e);
  layout_workspace(e, &fwd_end, &bwd_end);
  CPA_CHECK_GOTO(e->ex.ops->dry_begin(e->ex.st, e), res, fail);
  res = dry_run(e);
  cpattnResult_t end = e->ex.ops->dry_end(e->ex.st, &extra);
  if (res == cpattnSuccess) res = end;
  if (res != cpattnSuccess) goto fail;
  size_t base = fwd_end > bwd_end ? fwd_end : bwd_end;
  CPA_INFO("workspace: forward %zu, backward %zu, executor %zu bytes; O and dQ accumulate in %s", fwd_end, bwd_end,
           extra, e->light_acc ? "themselves (light: at most two partials per row)" : "fp32");
  e->ws_off_fwd[CPA_WS_EXEC] = e->ws_off_bwd[CPA_WS_EXEC] = base;
  e->ws_bytes = base + cpaAlignUp(extra, 256);
  return cpattnSuccess;
fail:
  cpaEngineFree(e);
  return res;
}

void cpaEngineFree(cpaEngine *e) {
  if (e->ex.ops) e->ex.ops->destroy(e->ex.st);
  cpaTouchFree(&e->touch);
  cpaScheduleFree(&e->sched);
  cpaProblemFree(&e->pb);
  memset(e, 0, sizeof *e);
}
