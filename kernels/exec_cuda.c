/*
 * exec_cuda.c -- the CUDA executor: the engine's operations as cuDNN calls and CUDA
 * kernels on one stream.
 *
 * Everything a call needs is prepared during the engine's plan-time dry run: the cuDNN
 * plan of every attention call (forward and backward), the row ranges its merges and
 * accumulations touch, the entries of its ragged (THD) launches, the permute maps. All
 * of it is uploaded once into one device buffer, so a forward or backward only enqueues
 * kernels and cuDNN executes: no allocation, no host synchronization.
 */
#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdlib.h>
#include <string.h>

#include "../src/comm.h"
#include "../src/engine.h"
#include "../src/executor.h"
#include "cuda_ops.h"
#include "cudnn_sdpa.h"
#include "exec_cuda_profile.h"

#define CUDA_CHECK(call)                                                                                  \
  do {                                                                                                    \
    cudaError_t e_ = (call);                                                                              \
    if (e_ != cudaSuccess)                                                                                \
      return cpaError(cpattnCudaError, "%s:%d %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
  } while (0)
#define KERNEL_CHECK(call)                                                                                    \
  do {                                                                                                        \
    int e_ = (call);                                                                                          \
    if (e_ != 0)                                                                                              \
      return cpaError(cpattnCudaError, "%s:%d %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString((cudaError_t)e_)); \
  } while (0)

/* Shared by every plan of one communicator: a cuDNN handle and its plan cache. */
typedef struct {
  cudnnHandle_t handle;
  cpaSdpaCache *cache;
} cpaCudaShared;

static void shared_free(void *p) {
  cpaCudaShared *s = p;
  if (!s) return;
  cpaSdpaCacheDestroy(s->cache);
  cudnnDestroy(s->handle);
  free(s);
}

/* Host-side record of one call, then offsets into the device metadata buffer. */
typedef struct {
  cpaSdpaKey kf, kb;          /* the keys prepared at plan time (a mismatch builds lazily) */
  const cpaSdpaPlan *pf, *pb;
  int b_plan;                 /* ragged: entries of the plan (bucketed)                 */
  int nq, nk;                 /* ranges on the query and key side                       */
  int64_t q_total, k_total;   /* rows they cover                                        */
  cpaCuRange *hq, *hk;        /* host copies until upload                               */
  size_t off_qr, off_qp, off_kr, off_kp, off_ent; /* device metadata offsets             */
  int64_t max_q;              /* for the backward LSE gather scratch                    */
} cpaCallMeta;

typedef struct {
  const cpaProblem *pb;
  const cpaEngine *eng;
  cpattnComm_t comm;
  cpaCudaShared *sh;
  int device;
  int dry;
  cpaCallMeta *calls;
  int ncalls;
  char *meta;            /* device: ranges, prefixes, entries, maps                      */
  size_t meta_bytes;
  size_t off_map[2];     /* perm, gather maps in meta                                    */
  size_t off_touch[3];   /* first/last touch in meta: q_first, q_last, k_first (int32)  */
  /* executor workspace layout (bytes from its base) */
  size_t ws_cudnn, ws_meta_off, ws_stats_off, ws_total;
  int b_max;
  cudaStream_t stream;
  char *ws;
  cpaProfiler *prof;     /* CPATTN_PROFILE_CALLS=1, else NULL (exec_cuda_profile.h)      */
} cpaCudaExec;

static size_t cu_part_bytes(void *st) { return cpaDtypeSize(((cpaCudaExec *)st)->pb->cfg.dtype); }

static cpaCuView cu_view(const cpaView *v) {
  cpaCuView c = {v->data, (int)v->dtype, v->heads, v->dim, v->rows_per_batch, v->batch_stride, v->row_stride,
                 v->head_stride};
  return c;
}

static int ragged(const cpaCudaExec *x) { return x->pb->cfg.layout == cpattnLayoutTHD; }

/* Events around each op of the per-call profile; with the profile off, a test of NULL. */
static cpattnResult_t prof_open(cpaCudaExec *x, cpaProfOp op, const cpaCall *call) {
  return x->prof ? cpaProfilerOpen(x->prof, op, call, x->stream) : cpattnSuccess;
}
static cpattnResult_t prof_close(cpaCudaExec *x) {
  return x->prof ? cpaProfilerClose(x->prof, x->stream) : cpattnSuccess;
}

static int64_t bucket_pow2(int64_t n) {
  int64_t b = 1;
  while (b < n) b *= 2;
  return b;
}

/* Ragged plans are shared between calls of similar size: entry counts round up to a
 * power of two and lengths to a multiple of 256 (padding entries have length 0). */
static int64_t bucket_len(int64_t n) { return (n + 255) / 256 * 256; }

static cpaSdpaLayout layout_of(const cpaView *v) {
  cpaSdpaLayout l = {{v->batch_stride, v->head_stride, v->row_stride, 1}};
  return l;
}

/* Ragged tensors are placed by their offsets and cuDNN ignores the batch stride, but the
 * validated pattern declares it dense (s_max rows), never 0: keep to it. */
static void ragged_batch_strides(cpaSdpaKey *k) {
  if (!k->ragged) return;
  cpaSdpaLayout *qside[5] = {&k->q, &k->o, &k->dout, &k->dq, NULL};
  cpaSdpaLayout *kside[5] = {&k->k, &k->v, &k->dk, &k->dv, NULL};
  for (int i = 0; qside[i]; ++i)
    if (qside[i]->stride[2]) qside[i]->stride[0] = k->s_q * qside[i]->stride[2];
  for (int i = 0; kside[i]; ++i)
    if (kside[i]->stride[2]) kside[i]->stride[0] = k->s_kv * kside[i]->stride[2];
}

static void key_common(const cpaCudaExec *x, const cpaCall *call, cpaSdpaKey *k, int backward) {
  const cpaProblem *pb = x->pb;
  memset(k, 0, sizeof *k);
  k->backward = backward;
  k->io = pb->cfg.dtype;
  k->h_q = pb->hq_local;
  k->h_kv = pb->hkv_local;
  k->d_qk = pb->dqk;
  k->d_v = pb->dv;
  k->mask = call->kind == CPA_KIND_NONE ? CPA_SDPA_MASK_NONE
            : call->kind == CPA_KIND_CAUSAL ? CPA_SDPA_MASK_CAUSAL
                                            : CPA_SDPA_MASK_BAND;
  if (k->mask == CPA_SDPA_MASK_BAND) {
    k->band_has_lo = pb->band_lo != CPA_UNBOUNDED;
    k->band_has_hi = pb->band_hi != CPA_UNBOUNDED;
  }
  k->deterministic = backward && pb->cfg.deterministic;
  if (ragged(x)) {
    k->ragged = 1;
    k->b = bucket_pow2(call->nentries);
    k->s_q = bucket_len(call->max_q);
    k->s_kv = bucket_len(call->max_k);
  } else {
    k->b = pb->batch_mult;
    k->s_q = call->entries[0].q_len;
    k->s_kv = call->entries[0].k_len;
  }
}

/* Row ranges of a call on one side, for views with rows_per_batch rpb. Non-ragged stats
 * are the call's packed (b, h, s_q); ragged stats are token-major over the query set. */
static cpaCuRange *make_ranges(const cpaCudaExec *x, const cpaCall *call, int side, int64_t rpb, int *n,
                               int64_t *total) {
  const cpaProblem *pb = x->pb;
  int H = pb->hq_local;
  int64_t B = pb->batch_mult;
  int cnt = (int)(B * call->nentries);
  cpaCuRange *r = calloc((size_t)cnt, sizeof *r);
  if (!r) return NULL;
  *total = 0;
  int i = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int e = 0; e < call->nentries; ++e, ++i) {
      const cpaEntry *en = &call->entries[e];
      int64_t row = side ? en->k_row : en->q_row, len = side ? en->k_len : en->q_len;
      r[i].row0 = b * rpb + row;
      r[i].n = len;
      if (ragged(x)) {
        r[i].stats_off = en->q_row * H;
        r[i].stats_rs = H;
        r[i].stats_hs = 1;
      } else {
        r[i].stats_off = b * H * en->q_len;
        r[i].stats_rs = 1;
        r[i].stats_hs = en->q_len;
      }
      *total += len;
    }
  *n = cnt;
  return r;
}

static cpattnResult_t get_plan(cpaCudaExec *x, const cpaSdpaKey *k, const cpaSdpaPlan **plan) {
  cpattnResult_t res = cpaSdpaCacheGet(x->sh->cache, k, plan);
  if (res != cpattnSuccess) return res;
  if (!x->dry) CPA_INFO("cuDNN plan built outside plan creation (tensor strides differ from the packed ones)");
  return cpattnSuccess;
}

/* ---------------------------------------------------------------------------------- */
/* Plan time                                                                            */
/* ---------------------------------------------------------------------------------- */

static cpattnResult_t cu_dry_begin(void *st, const struct cpaEngine *eng) {
  cpaCudaExec *x = st;
  x->eng = eng;
  x->dry = 1;
  x->ncalls = eng->sched.ncalls_total;
  x->calls = calloc((size_t)(x->ncalls ? x->ncalls : 1), sizeof(cpaCallMeta));
  if (!x->calls) return cpaError(cpattnOutOfMemory, "no host memory for %d calls", x->ncalls);
  return cpattnSuccess;
}

static cpattnResult_t cu_dry_end(void *st, size_t *extra) {
  cpaCudaExec *x = st;
  x->dry = 0;
  const cpaEngine *e = x->eng;
  /* Device metadata: ranges + prefixes per call and side, ragged entries, maps. */
  size_t at = 0;
  for (int i = 0; i < x->ncalls; ++i) {
    cpaCallMeta *m = &x->calls[i];
    m->off_qr = at; at += cpaAlignUp(sizeof(cpaCuRange) * (size_t)m->nq, 16);
    m->off_qp = at; at += cpaAlignUp(sizeof(int64_t) * (size_t)(m->nq + 1), 16);
    m->off_kr = at; at += cpaAlignUp(sizeof(cpaCuRange) * (size_t)m->nk, 16);
    m->off_kp = at; at += cpaAlignUp(sizeof(int64_t) * (size_t)(m->nk + 1), 16);
    m->off_ent = at; at += cpaAlignUp(sizeof(int64_t) * 5 * (size_t)(m->b_plan + 1), 16);
  }
  const cpaRowMap *maps[2] = {&e->perm, &e->gather};
  for (int i = 0; i < 2; ++i) {
    x->off_map[i] = at;
    at += cpaAlignUp(sizeof(int64_t) * (size_t)(maps[i]->n + 1), 16);
  }
  const int32_t *touch[3] = {e->touch.q_first, e->touch.q_last, e->touch.k_first};
  int64_t touch_n[3] = {e->touch.nq, e->touch.nq, e->touch.nk};
  for (int i = 0; i < 3; ++i) {
    x->off_touch[i] = at;
    at += cpaAlignUp(sizeof(int32_t) * (size_t)(touch_n[i] + 1), 16);
  }
  x->meta_bytes = at;
  if (x->prof) CPA_CHECK(cpaProfilerSchedule(x->prof, &e->sched));
  char *host = calloc(1, at ? at : 1);
  if (!host) return cpaError(cpattnOutOfMemory, "no host memory for %zu bytes of metadata", at);
  const cpaSchedule *s = &e->sched;
  for (int st_i = 0; st_i < s->nsteps; ++st_i)
    for (int c = 0; c < s->steps[st_i].ncalls; ++c) {
      const cpaCall *call = &s->steps[st_i].calls[c];
      cpaCallMeta *m = &x->calls[call->id];
      memcpy(host + m->off_qr, m->hq, sizeof(cpaCuRange) * (size_t)m->nq);
      memcpy(host + m->off_kr, m->hk, sizeof(cpaCuRange) * (size_t)m->nk);
      int64_t *qp = (int64_t *)(host + m->off_qp), *kp = (int64_t *)(host + m->off_kp);
      for (int i = 0; i < m->nq; ++i) qp[i + 1] = qp[i] + m->hq[i].n;
      for (int i = 0; i < m->nk; ++i) kp[i + 1] = kp[i] + m->hk[i].n;
      /* entries as five int64 columns: q_row, q_len, k_row, k_len, delta */
      int64_t *ent = (int64_t *)(host + m->off_ent);
      int b = m->b_plan;
      for (int i = 0; i < call->nentries; ++i) {
        ent[0 * (b + 1) + i] = call->entries[i].q_row;
        ent[1 * (b + 1) + i] = call->entries[i].q_len;
        ent[2 * (b + 1) + i] = call->entries[i].k_row;
        ent[3 * (b + 1) + i] = call->entries[i].k_len;
        ent[4 * (b + 1) + i] = call->entries[i].delta;
      }
    }
  for (int i = 0; i < 2; ++i)
    if (maps[i]->n) memcpy(host + x->off_map[i], maps[i]->host, sizeof(int64_t) * (size_t)maps[i]->n);
  for (int i = 0; i < 3; ++i)
    if (touch_n[i]) memcpy(host + x->off_touch[i], touch[i], sizeof(int32_t) * (size_t)touch_n[i]);
  cudaError_t ce = cudaMalloc((void **)&x->meta, at ? at : 16);
  if (ce == cudaSuccess) ce = cudaMemcpy(x->meta, host, at, cudaMemcpyHostToDevice);
  free(host);
  if (ce != cudaSuccess)
    return cpaError(ce == cudaErrorMemoryAllocation ? cpattnOutOfMemory : cpattnCudaError,
                    "uploading %zu bytes of plan metadata: %s", at, cudaGetErrorString(ce));
  /* The executor's workspace: cuDNN's, the ragged metadata of one call, and the packed
   * LSE slice a non-ragged backward call reads. */
  size_t ws_cudnn = 0;
  int64_t max_q = 0;
  for (int i = 0; i < x->ncalls; ++i) {
    cpaCallMeta *m = &x->calls[i];
    if (m->pf && cpaSdpaPlanWorkspaceSize(m->pf) > ws_cudnn) ws_cudnn = cpaSdpaPlanWorkspaceSize(m->pf);
    if (m->pb && cpaSdpaPlanWorkspaceSize(m->pb) > ws_cudnn) ws_cudnn = cpaSdpaPlanWorkspaceSize(m->pb);
    if (m->max_q > max_q) max_q = m->max_q;
    free(m->hq);
    free(m->hk);
    m->hq = m->hk = NULL;
  }
  x->ws_cudnn = cpaAlignUp(ws_cudnn, 256);
  x->ws_meta_off = x->ws_cudnn;
  size_t bm = (size_t)x->b_max + 1;
  x->ws_stats_off = x->ws_meta_off + 3 * cpaAlignUp(4 * bm, 256) + CPA_CU_MAX_RAGGED * cpaAlignUp(8 * bm, 256);
  x->ws_total = x->ws_stats_off + cpaAlignUp((size_t)(x->pb->batch_mult * max_q) * (size_t)x->pb->hq_local * 4, 256);
  *extra = x->ws_total;
  CPA_INFO("CUDA executor: %d calls, %zu bytes of metadata, %zu bytes of executor workspace (cuDNN %zu)",
           x->ncalls, at, x->ws_total, ws_cudnn);
  return cpattnSuccess;
}

/* ---------------------------------------------------------------------------------- */
/* Call time                                                                            */
/* ---------------------------------------------------------------------------------- */

static cpattnResult_t cu_begin(void *st, struct CUstream_st *stream, void *ws) {
  cpaCudaExec *x = st;
  x->stream = stream;
  x->ws = ws;
  if (x->dry) return cpattnSuccess;
  int dev = -1;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev != x->device)
    return cpaError(cpattnInvalidUsage, "the current CUDA device is %d but the plan was made for device %d "
                    "(cudaSetDevice(%d) before calling)", dev, x->device, x->device);
  if (x->prof) CPA_CHECK(cpaProfilerBegin(x->prof, stream));
  return cpattnSuccess;
}

static cpattnResult_t cu_end(void *st) {
  cpaCudaExec *x = st;
  if (x->dry) return cpattnSuccess;
  CUDA_CHECK(cudaGetLastError());
  if (x->prof) CPA_CHECK(cpaProfilerEnd(x->prof, x->stream)); /* waits for the stream */
  return cpattnSuccess;
}

static const int64_t *map_ptr(const cpaCudaExec *x, const cpaRowMap *map) {
  return map ? (const int64_t *)(x->meta + x->off_map[map->id]) : NULL;
}

static cpattnResult_t cu_fill(void *st, const cpaView *dst, int64_t nrows, float value) {
  cpaCudaExec *x = st;
  if (x->dry) return cpattnSuccess;
  cpaCuView d = cu_view(dst);
  CPA_CHECK(prof_open(x, CPA_PROF_FILL, NULL));
  KERNEL_CHECK(cpaCuFill(&d, nrows, value, x->stream));
  return prof_close(x);
}

static cpattnResult_t cu_copy(void *st, const cpaView *dst, const cpaView *src, int64_t nrows, const cpaRowMap *map,
                              int inverse) {
  cpaCudaExec *x = st;
  if (x->dry) return cpattnSuccess;
  cpaCuView d = cu_view(dst), s = cu_view(src);
  CPA_CHECK(prof_open(x, CPA_PROF_COPY, NULL));
  KERNEL_CHECK(cpaCuCopy(&d, &s, nrows, map_ptr(x, map), inverse, x->stream));
  return prof_close(x);
}

static cpattnResult_t cu_add(void *st, const cpaView *dst, const cpaView *src, int64_t nrows) {
  cpaCudaExec *x = st;
  if (x->dry) return cpattnSuccess;
  cpaCuView d = cu_view(dst), s = cu_view(src);
  CPA_CHECK(prof_open(x, CPA_PROF_ADD, NULL));
  KERNEL_CHECK(cpaCuAdd(&d, &s, nrows, x->stream));
  return prof_close(x);
}

/* Ragged metadata of one call into the executor workspace (one call at a time: the
 * stream orders each call's kernel after the previous call's cuDNN launch). */
typedef struct {
  int32_t *seq_q, *seq_kv, *delta;
  int64_t *off[CPA_CU_MAX_RAGGED];
} cpaRaggedMeta;

static cpattnResult_t ragged_meta(cpaCudaExec *x, const cpaCall *call, const cpaView *const *views, const int *is_q,
                                  int nt, cpaRaggedMeta *rm) {
  cpaCallMeta *m = &x->calls[call->id];
  /* cuDNN wants every device tensor 16-byte aligned: each array starts on 256 bytes. */
  size_t bm = (size_t)x->b_max + 1, i32 = cpaAlignUp(4 * bm, 256), i64 = cpaAlignUp(8 * bm, 256);
  char *base = x->ws + x->ws_meta_off;
  rm->seq_q = (int32_t *)base;
  rm->seq_kv = (int32_t *)(base + i32);
  rm->delta = (int32_t *)(base + 2 * i32);
  char *offs = base + 3 * i32;
  cpaCuRaggedOut out;
  memset(&out, 0, sizeof out);
  out.ntensors = nt;
  for (int k = 0; k < nt; ++k) {
    rm->off[k] = (int64_t *)(offs + (size_t)k * i64);
    out.off[k] = rm->off[k];
    out.strides[k] = views[k]->row_stride;
    out.is_q[k] = is_q[k];
  }
  const int64_t *ent = (const int64_t *)(x->meta + m->off_ent);
  int b1 = m->b_plan + 1;
  CPA_CHECK(prof_open(x, CPA_PROF_META, NULL));
  KERNEL_CHECK(cpaCuRagged(ent, ent + b1, ent + 2 * b1, ent + 3 * b1, ent + 4 * b1, call->nentries, m->b_plan,
                           rm->seq_q, rm->seq_kv, rm->delta, &out, x->stream));
  return prof_close(x);
}

static char *row_ptr(const cpaView *v, int64_t row) {
  return (char *)v->data + (size_t)(row * v->row_stride) * cpaDtypeSize(v->dtype);
}

static void band_args(const cpaCudaExec *x, cpaSdpaArgs *a) {
  a->band_lo = x->pb->band_lo == CPA_UNBOUNDED ? 0 : (int32_t)x->pb->band_lo;
  a->band_hi = x->pb->band_hi == CPA_UNBOUNDED ? 0 : (int32_t)x->pb->band_hi;
}

static cpattnResult_t cu_attn_fwd(void *st, const cpaCall *call, const cpaView *q, const cpaView *k, const cpaView *v,
                                  const cpaView *o_part, float *stats) {
  cpaCudaExec *x = st;
  cpaCallMeta *m = &x->calls[call->id];
  cpaSdpaKey key;
  key_common(x, call, &key, 0);
  key.q = layout_of(q);
  key.k = layout_of(k);
  key.v = layout_of(v);
  key.o = layout_of(o_part);
  ragged_batch_strides(&key);
  if (x->dry) {
    m->kf = key;
    m->b_plan = (int)key.b;
    if (key.b > x->b_max) x->b_max = (int)key.b;
    if (!m->hq) m->hq = make_ranges(x, call, 0, o_part->rows_per_batch, &m->nq, &m->q_total);
    if (!m->hq) return cpaError(cpattnOutOfMemory, "no host memory for call metadata");
    return get_plan(x, &key, &m->pf);
  }
  const cpaSdpaPlan *plan = m->pf;
  if (memcmp(&key, &m->kf, sizeof key) != 0) CPA_CHECK(get_plan(x, &key, &plan));
  cpaSdpaArgs a;
  memset(&a, 0, sizeof a);
  a.scale = x->pb->scale;
  a.workspace = x->ws;
  band_args(x, &a);
  if (ragged(x)) {
    /* stats: token-major over the query rows, so their row stride is the head count */
    cpaView sv = *o_part;
    sv.row_stride = x->pb->hq_local;
    const cpaView *vv[5] = {q, k, v, o_part, &sv};
    int is_q[5] = {1, 0, 0, 1, 1};
    cpaRaggedMeta rm;
    CPA_CHECK(ragged_meta(x, call, vv, is_q, 5, &rm));
    a.q = q->data;
    a.k = k->data;
    a.v = v->data;
    a.o = o_part->data;
    a.stats = stats;
    a.seq_q = rm.seq_q;
    a.seq_kv = rm.seq_kv;
    a.off_q = rm.off[0];
    a.off_k = rm.off[1];
    a.off_v = rm.off[2];
    a.off_o = rm.off[3];
    a.off_stats = rm.off[4];
    a.delta = rm.delta;
  } else {
    const cpaEntry *en = &call->entries[0];
    a.q = row_ptr(q, en->q_row);
    a.k = row_ptr(k, en->k_row);
    a.v = row_ptr(v, en->k_row);
    a.o = row_ptr(o_part, en->q_row);
    a.stats = stats;
    if (call->kind == CPA_KIND_BAND) {
      int32_t *delta = (int32_t *)(x->ws + x->ws_meta_off);
      CPA_CHECK(prof_open(x, CPA_PROF_META, NULL));
      KERNEL_CHECK(cpaCuFillInt32(delta, (int)x->pb->batch_mult, (int32_t)en->delta, x->stream));
      CPA_CHECK(prof_close(x));
      a.delta = delta;
    }
  }
  CPA_CHECK(prof_open(x, CPA_PROF_ATTN_FWD, call));
  CPA_CHECK(cpaSdpaRun(x->sh->cache, plan, &a, x->stream));
  return prof_close(x);
}

/* The first/last-touch routing of a call (executor.h): the tables uploaded at dry_end,
 * the key side (step 0's block) with FIRST only. */
static cpaCuRoute make_route(const cpaCudaExec *x, const cpaCall *call, int side, int allow, const cpaView *out,
                             const cpaView *out_lse) {
  cpaCuRoute r;
  memset(&r, 0, sizeof r);
  r.call = call->id;
  r.allow = (allow & CPA_TOUCH_FIRST ? CPA_CU_FIRST : 0) | (!side && (allow & CPA_TOUCH_LAST) ? CPA_CU_LAST : 0);
  r.first = (const int32_t *)(x->meta + x->off_touch[side ? 2 : 0]);
  r.last = side ? NULL : (const int32_t *)(x->meta + x->off_touch[1]);
  if (out && (r.allow & CPA_CU_LAST)) r.out = cu_view(out);
  if (out_lse && (r.allow & CPA_CU_LAST)) r.out_lse = cu_view(out_lse);
  return r;
}

static cpattnResult_t cu_merge(void *st, const cpaCall *call, int allow, const cpaView *acc_o, const cpaView *acc_lse,
                               const cpaView *o_part, const float *stats, const cpaView *out_o,
                               const cpaView *out_lse) {
  cpaCudaExec *x = st;
  if (x->dry) return cpattnSuccess;
  cpaCallMeta *m = &x->calls[call->id];
  if ((allow & CPA_TOUCH_LAST) && (!out_o || !out_lse))
    return cpaError(cpattnInternalError, "merge: last-touch routing without an output");
  cpaCuView ao = cu_view(acc_o), al = cu_view(acc_lse), op = cu_view(o_part);
  cpaCuRoute rt = make_route(x, call, 0, allow, out_o, out_lse);
  CPA_CHECK(prof_open(x, CPA_PROF_MERGE, NULL));
  KERNEL_CHECK(cpaCuMerge(&ao, &al, &op, stats, (const cpaCuRange *)(x->meta + m->off_qr),
                          (const int64_t *)(x->meta + m->off_qp), m->nq, m->q_total, &rt, x->stream));
  return prof_close(x);
}

static cpattnResult_t cu_attn_bwd(void *st, const cpaCall *call, const cpaView *q, const cpaView *k, const cpaView *v,
                                  const cpaView *o, const cpaView *dout, const cpaView *lse, const cpaView *dq_part,
                                  const cpaView *dk_part, const cpaView *dv_part) {
  cpaCudaExec *x = st;
  cpaCallMeta *m = &x->calls[call->id];
  cpaSdpaKey key;
  key_common(x, call, &key, 1);
  key.q = layout_of(q);
  key.k = layout_of(k);
  key.v = layout_of(v);
  key.o = layout_of(o);
  key.dout = layout_of(dout);
  key.dq = layout_of(dq_part);
  key.dk = layout_of(dk_part);
  key.dv = layout_of(dv_part);
  ragged_batch_strides(&key);
  if (x->dry) {
    m->kb = key;
    if (key.b > x->b_max) x->b_max = (int)key.b;
    if (!m->hk) m->hk = make_ranges(x, call, 1, dk_part->rows_per_batch, &m->nk, &m->k_total);
    if (!m->hk) return cpaError(cpattnOutOfMemory, "no host memory for call metadata");
    if (!ragged(x) && call->entries[0].q_len > m->max_q) m->max_q = call->entries[0].q_len;
    if (ragged(x) && (lse->row_stride != x->pb->hq_local || lse->head_stride != 1))
      return cpaError(cpattnInternalError, "THD backward needs a token-major LSE");
    return get_plan(x, &key, &m->pb);
  }
  const cpaSdpaPlan *plan = m->pb;
  if (memcmp(&key, &m->kb, sizeof key) != 0) CPA_CHECK(get_plan(x, &key, &plan));
  cpaSdpaArgs a;
  memset(&a, 0, sizeof a);
  a.scale = x->pb->scale;
  a.workspace = x->ws;
  band_args(x, &a);
  if (ragged(x)) {
    const cpaView *vv[9] = {q, k, v, o, lse, dout, dq_part, dk_part, dv_part};
    int is_q[9] = {1, 0, 0, 1, 1, 1, 1, 0, 0};
    cpaRaggedMeta rm;
    CPA_CHECK(ragged_meta(x, call, vv, is_q, 9, &rm));
    a.q = q->data;
    a.k = k->data;
    a.v = v->data;
    a.o = o->data;
    a.stats = lse->data;
    a.dout = dout->data;
    a.dq = dq_part->data;
    a.dk = dk_part->data;
    a.dv = dv_part->data;
    a.seq_q = rm.seq_q;
    a.seq_kv = rm.seq_kv;
    a.off_q = rm.off[0];
    a.off_k = rm.off[1];
    a.off_v = rm.off[2];
    a.off_o = rm.off[3];
    a.off_stats = rm.off[4];
    a.off_dout = rm.off[5];
    a.off_dq = rm.off[6];
    a.off_dk = rm.off[7];
    a.off_dv = rm.off[8];
    a.delta = rm.delta;
  } else {
    const cpaEntry *en = &call->entries[0];
    /* cuDNN reads the LSE as packed (b, h, s_q): gather this call's slice. */
    float *st_buf = (float *)(x->ws + x->ws_stats_off);
    int H = x->pb->hq_local;
    cpaView dst = {st_buf, cpattnFloat32, en->q_len, (int64_t)H * en->q_len, 1, en->q_len, H, 1};
    cpaView src = *lse;
    src.data = row_ptr(lse, en->q_row);
    src.rows_per_batch = en->q_len; /* row t = (b, i) -> b * batch_stride + i * row_stride */
    cpaCuView d = cu_view(&dst), s = cu_view(&src);
    CPA_CHECK(prof_open(x, CPA_PROF_LSE_GATHER, NULL));
    KERNEL_CHECK(cpaCuCopy(&d, &s, x->pb->batch_mult * en->q_len, NULL, 0, x->stream));
    CPA_CHECK(prof_close(x));
    a.q = row_ptr(q, en->q_row);
    a.k = row_ptr(k, en->k_row);
    a.v = row_ptr(v, en->k_row);
    a.o = row_ptr(o, en->q_row);
    a.stats = st_buf;
    a.dout = row_ptr(dout, en->q_row);
    a.dq = row_ptr(dq_part, en->q_row);
    a.dk = row_ptr(dk_part, en->k_row);
    a.dv = row_ptr(dv_part, en->k_row);
    if (call->kind == CPA_KIND_BAND) {
      int32_t *delta = (int32_t *)(x->ws + x->ws_meta_off);
      CPA_CHECK(prof_open(x, CPA_PROF_META, NULL));
      KERNEL_CHECK(cpaCuFillInt32(delta, (int)x->pb->batch_mult, (int32_t)en->delta, x->stream));
      CPA_CHECK(prof_close(x));
      a.delta = delta;
    }
  }
  CPA_CHECK(prof_open(x, CPA_PROF_ATTN_BWD, call));
  CPA_CHECK(cpaSdpaRun(x->sh->cache, plan, &a, x->stream));
  return prof_close(x);
}

static cpattnResult_t cu_accumulate(void *st, const cpaCall *call, int side, int allow, const cpaView *acc,
                                    const cpaView *part, const cpaView *out) {
  cpaCudaExec *x = st;
  if (x->dry) return cpattnSuccess;
  cpaCallMeta *m = &x->calls[call->id];
  if (!side && (allow & CPA_TOUCH_LAST) && !out)
    return cpaError(cpattnInternalError, "accumulate: last-touch routing without an output");
  cpaCuView a = cu_view(acc), p = cu_view(part);
  cpaCuRoute rt = make_route(x, call, side, allow, out, NULL);
  size_t r = side ? m->off_kr : m->off_qr, pfx = side ? m->off_kp : m->off_qp;
  CPA_CHECK(prof_open(x, CPA_PROF_ACCUMULATE, NULL));
  KERNEL_CHECK(cpaCuAccumulate(&a, &p, (const cpaCuRange *)(x->meta + r), (const int64_t *)(x->meta + pfx),
                               side ? m->nk : m->nq, side ? m->k_total : m->q_total, &rt, x->stream));
  return prof_close(x);
}

static void cu_destroy(void *st) {
  cpaCudaExec *x = st;
  if (!x) return;
  if (x->meta) cudaFree(x->meta);
  cpaProfilerDestroy(x->prof);
  for (int i = 0; x->calls && i < x->ncalls; ++i) {
    free(x->calls[i].hq);
    free(x->calls[i].hk);
  }
  free(x->calls);
  free(x);
}

static const cpaExecOps kCudaOps = {
    "cuda",   cu_part_bytes, cu_dry_begin, cu_dry_end,  cu_begin,    cu_end,        cu_fill,
    cu_copy,  cu_add,        cu_attn_fwd,  cu_merge,    cu_attn_bwd, cu_accumulate, cu_destroy,
};

cpattnResult_t cpaExecCudaCreate(cpaExecutor *ex, const cpaProblem *pb, cpattnComm_t comm) {
  if (pb->cfg.headDimQK % 8 != 0 || pb->dv % 8 != 0)
    return cpaError(cpattnNotSupported, "config->headDimQK = %d / headDimV = %d: the CUDA executor (cuDNN) needs "
                    "multiples of 8", pb->cfg.headDimQK, pb->dv);
  if (pb->dqk != pb->dv && pb->dqk > 128)
    return cpaError(cpattnNotSupported, "config->headDimQK = %d != headDimV = %d above 128: cuDNN's Hopper backward "
                    "has a known bug there", pb->dqk, pb->dv);
  CPA_CHECK(cpaSdpaCheckVersion(pb->masked && !pb->causal));
  int dev = comm->tr.device;
  CUDA_CHECK(cudaSetDevice(dev));
  if (!comm->cuda_shared) {
    cpaCudaShared *s = calloc(1, sizeof *s);
    if (!s) return cpaError(cpattnOutOfMemory, "no host memory");
    cudnnStatus_t cs = cudnnCreate(&s->handle);
    if (cs != CUDNN_STATUS_SUCCESS) {
      free(s);
      return cpaError(cpattnCudnnError, "cudnnCreate: %s", cudnnGetErrorString(cs));
    }
    cpattnResult_t res = cpaSdpaCacheCreate(&s->cache, s->handle);
    if (res != cpattnSuccess) {
      cudnnDestroy(s->handle);
      free(s);
      return res;
    }
    comm->cuda_shared = s;
    comm->cuda_shared_free = shared_free;
  }
  cpaCudaExec *x = calloc(1, sizeof *x);
  if (!x) return cpaError(cpattnOutOfMemory, "no host memory for the CUDA executor");
  x->pb = pb;
  x->comm = comm;
  x->sh = comm->cuda_shared;
  x->device = dev;
  /* Read once, here: a plan's passes are profiled or not for its whole life. */
  if (cpaParamInt(CPA_PARAM_PROFILE_CALLS) == 1) {
    cpattnResult_t res = cpaProfilerCreate(&x->prof, pb);
    if (res != cpattnSuccess) {
      free(x);
      return res;
    }
  }
  ex->ops = &kCudaOps;
  ex->st = x;
  return cpattnSuccess;
}
