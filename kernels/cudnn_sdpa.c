/*
 * cudnn_sdpa.c -- fused attention through cuDNN's backend C API (see cudnn_sdpa.h).
 *
 * The graphs are the "composite" SDPA pattern that cudnn-frontend emits below cuDNN 9.21
 * and that ../shared/research/cudnn-from-c.md measured on an H200 with cuDNN 9.19. cuDNN
 * does not run such a graph op by op: each engine pattern-matches the whole graph and
 * runs one fused kernel. So the op order, every data type and every virtual-tensor shape
 * below follow the measured recipe exactly; a "tidier" graph (ops merged or reordered,
 * an fp32 P into the second matmul, a bool mask in another place) gets "no engine".
 * Where this file differs from the research sketch it says so and why.
 *
 * Structure:
 *   GraphBuilder  records every descriptor it creates (destroyed together, in reverse)
 *                 and the first failure, so that graph code reads as a straight list of
 *                 ops: a failed call makes the later ones no-ops, checked once at the end.
 *   buildFwd/Bwd  the op lists.
 *   buildPlan     heuristics (mode A, then FALLBACK), first config whose plan finalizes.
 *   cache         canonical key bytes -> plan, FNV-1a hash, chained buckets, one mutex.
 *   cpaSdpaRun    variant pack + execute; the only per-call path (BAND: once per entry).
 *
 * Measured on an H200 with cuDNN 9.19 (tests/gpu/test_cudnn_sdpa.c and a probe): the
 * fused engines honour by-value and device (1,1,1,1) scalars in the mask's index
 * arithmetic, but silently ignore (b,1,1,1) operands there (they read per-entry values
 * only as the padding seq lens), so a graph with a per-entry diagonal shift built the
 * obvious way runs and returns wrong numbers. BAND therefore runs a b = 1 graph per entry.
 */
#include "cudnn_sdpa.h"

#include <cuda_runtime.h>
#include <cudnn.h>

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core.h"

/* ---------------------------------------------------------------------------------- */
/* Tensor unique ids                                                                   */
/* ---------------------------------------------------------------------------------- */

/* Fixed ids for every tensor that has memory (or a host value) behind it: the variant
 * pack names them by these ids. Virtual tensors count up from UID_FIRST_VIRTUAL. */
enum {
  UID_Q = 1,
  UID_K,
  UID_V,
  UID_O,
  UID_STATS,
  UID_SCALE,       /* by value, fp32                                                  */
  UID_SEQ_Q,       /* ragged: (b,1,1,1) int32                                         */
  UID_SEQ_KV,
  UID_NEG_INF,     /* by value, fp32: the value masked scores take                    */
  UID_DELTA,       /* BAND: (1,1,1,1) int32 device scalar, delta + e per launch       */
  UID_BAND_HI,     /* BAND: by value int32, right bound                               */
  UID_BAND_LO,     /* BAND: by value int32, left bound + 1 (see cpaSdpaRun)           */
  UID_OFF_Q,       /* ragged offsets: (b+1,1,1,1) int64 element offsets               */
  UID_OFF_K,
  UID_OFF_V,
  UID_OFF_O,
  UID_OFF_STATS,
  UID_DO,
  UID_DQ,
  UID_DK,
  UID_DV,
  UID_ONE,         /* by value, fp32 1.0: the dropout-scale slot of the backward       */
  UID_SOFTMAX_SUM, /* backward scratch, fp32, front of the workspace                  */
  UID_DQ_ACCUM,    /* backward scratch, fp32, after softmax_sum                       */
  UID_OFF_DO,
  UID_OFF_DQ,
  UID_OFF_DK,
  UID_OFF_DV,
  UID_USER_END,
  UID_FIRST_VIRTUAL = 1000
};

#define SDPA_ALIGN 16           /* byte alignment declared on every tensor (frontend's default) */
#define SDPA_SCRATCH_ALIGN 256  /* alignment of the scratch tensors and cuDNN's workspace      */
#define SDPA_MAX_OPS 96         /* the largest graph (bwd, ragged, both band bounds) has ~60 */
#define SDPA_MAX_USER_UIDS 32

/* ---------------------------------------------------------------------------------- */
/* Graph builder                                                                       */
/* ---------------------------------------------------------------------------------- */

typedef struct {
  int64_t dim[4];
  int64_t str[4];
} Shape4;

typedef struct {
  cudnnBackendDescriptor_t *descs; /* every descriptor created, in creation order      */
  int ndescs, capDescs;
  cudnnBackendDescriptor_t ops[SDPA_MAX_OPS];
  int nops;
  int64_t userUids[SDPA_MAX_USER_UIDS]; /* non-virtual tensors: the variant pack's ids */
  int nUserUids;
  int64_t nextVirtualUid;
  int band; /* BAND graph: one batch entry per launch, smaller alignments (uidAlign)   */
  /* First failure; later builder calls do nothing once it is set. */
  int failed;
  cpattnResult_t failRes;
  char failMsg[768];
} GraphBuilder;

static void gbInit(GraphBuilder *g) {
  memset(g, 0, sizeof *g);
  g->nextVirtualUid = UID_FIRST_VIRTUAL;
}

/* Destroy in reverse creation order: ops go before the tensors they reference. */
static void gbRelease(GraphBuilder *g) {
  for (int i = g->ndescs - 1; i >= 0; --i) cudnnBackendDestroyDescriptor(g->descs[i]);
  free(g->descs);
  g->descs = NULL;
  g->ndescs = g->capDescs = 0;
}

static void gbFail(GraphBuilder *g, cpattnResult_t res, const char *fmt, ...) CPA_PRINTF(3, 4);
static void gbFail(GraphBuilder *g, cpattnResult_t res, const char *fmt, ...) {
  if (g->failed) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g->failMsg, sizeof g->failMsg, fmt, ap);
  va_end(ap);
  g->failed = 1;
  g->failRes = res;
}

/* cuDNN 9 statuses are grouped by thousands; the 3000s say "valid, but not supported",
 * which a caller may fall back from. Everything else is a failure. */
static cpattnResult_t mapCudnnStatus(cudnnStatus_t st) {
  return CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_NOT_SUPPORTED ? cpattnNotSupported : cpattnCudnnError;
}

static void gbFailCudnn(GraphBuilder *g, cudnnStatus_t st, const char *what) {
  char last[512];
  cudnnGetLastErrorString(last, sizeof last);
  gbFail(g, mapCudnnStatus(st), "%s: %s (%d): %s", what, cudnnGetErrorString(st), (int)st, last);
}

static int gbCall(GraphBuilder *g, cudnnStatus_t st, const char *what) {
  if (st == CUDNN_STATUS_SUCCESS) return 1;
  gbFailCudnn(g, st, what);
  return 0;
}

#define GB_SET(g, desc, attr, type, count, ptr) \
  gbCall((g), cudnnBackendSetAttribute((desc), (attr), (type), (count), (ptr)), "cudnnBackendSetAttribute(" #attr ")")

static cudnnBackendDescriptor_t gbCreate(GraphBuilder *g, cudnnBackendDescriptorType_t type) {
  cudnnBackendDescriptor_t d = NULL;
  if (g->failed) return NULL;
  if (g->ndescs == g->capDescs) {
    int cap = g->capDescs ? 2 * g->capDescs : 128;
    cudnnBackendDescriptor_t *grown = realloc(g->descs, (size_t)cap * sizeof *grown);
    if (!grown) {
      gbFail(g, cpattnOutOfMemory, "out of host memory while building a cuDNN graph");
      return NULL;
    }
    g->descs = grown;
    g->capDescs = cap;
  }
  if (!gbCall(g, cudnnBackendCreateDescriptor(type, &d), "cudnnBackendCreateDescriptor")) return NULL;
  g->descs[g->ndescs++] = d;
  return d;
}

static void gbPushOp(GraphBuilder *g, cudnnBackendDescriptor_t op) {
  if (g->failed) return;
  if (g->nops == SDPA_MAX_OPS) {
    gbFail(g, cpattnInternalError, "cuDNN graph has more than %d ops", SDPA_MAX_OPS);
    return;
  }
  g->ops[g->nops++] = op;
}

enum { TENSOR_VIRTUAL = 1, TENSOR_BY_VALUE = 2 };

/* The byte alignment declared to cuDNN for a user tensor, and checked by cpaSdpaRun.
 * 16 everywhere (cudnn-frontend's default, what was validated), except in BAND graphs:
 * those run one batch entry per launch (see cpaSdpaRun), with the per-entry pointers
 * delta + e, seq_q + e, off_x + e and, for packed stats, stats + e * h_q * s_q, which
 * are only element-aligned. They are scalars or per-row values to cuDNN, not vectors
 * (validated on the H200 by the BAND cases of tests/gpu/test_cudnn_sdpa.c). */
static int64_t uidAlign(int band, int64_t uid) {
  if (!band) return SDPA_ALIGN;
  switch (uid) {
    case UID_DELTA:
    case UID_SEQ_Q:
    case UID_SEQ_KV:
    case UID_STATS: return 4;
    case UID_OFF_Q:
    case UID_OFF_K:
    case UID_OFF_V:
    case UID_OFF_O:
    case UID_OFF_STATS:
    case UID_OFF_DO:
    case UID_OFF_DQ:
    case UID_OFF_DK:
    case UID_OFF_DV: return 8;
    default: return SDPA_ALIGN;
  }
}

static cudnnBackendDescriptor_t gbTensor(GraphBuilder *g, int64_t uid, const Shape4 *s, cudnnDataType_t dt,
                                         int flags, cudnnBackendDescriptor_t ragged) {
  cudnnBackendDescriptor_t t = gbCreate(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  int64_t align = (flags & TENSOR_VIRTUAL) ? SDPA_ALIGN : uidAlign(g->band, uid);
  bool yes = true;
  if (!t) return NULL;
  GB_SET(g, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
  GB_SET(g, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, s->dim);
  GB_SET(g, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, s->str);
  GB_SET(g, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
  GB_SET(g, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
  if (flags & TENSOR_VIRTUAL) GB_SET(g, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes);
  if (flags & TENSOR_BY_VALUE) GB_SET(g, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes);
  if (ragged) GB_SET(g, t, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ragged);
  if (!gbCall(g, cudnnBackendFinalize(t), "cudnnBackendFinalize(tensor)")) return NULL;
  if (!(flags & TENSOR_VIRTUAL)) {
    if (g->nUserUids == SDPA_MAX_USER_UIDS) {
      gbFail(g, cpattnInternalError, "more than %d user tensors in a cuDNN graph", SDPA_MAX_USER_UIDS);
      return NULL;
    }
    g->userUids[g->nUserUids++] = uid;
  }
  return t;
}

static cudnnBackendDescriptor_t gbUser(GraphBuilder *g, int64_t uid, Shape4 s, cudnnDataType_t dt,
                                       cudnnBackendDescriptor_t ragged) {
  return gbTensor(g, uid, &s, dt, 0, ragged);
}

static cudnnBackendDescriptor_t gbVirtual(GraphBuilder *g, Shape4 s, cudnnDataType_t dt) {
  if (g->failed) return NULL;
  return gbTensor(g, g->nextVirtualUid++, &s, dt, TENSOR_VIRTUAL, NULL);
}

/* A host scalar, passed by pointer in the variant pack and read at execute time. */
static cudnnBackendDescriptor_t gbScalar(GraphBuilder *g, int64_t uid, cudnnDataType_t dt) {
  Shape4 s = {{1, 1, 1, 1}, {1, 1, 1, 1}};
  return gbTensor(g, uid, &s, dt, TENSOR_BY_VALUE, NULL);
}

/* Any NULL operand means an earlier call failed (and recorded why). */
static int gbHave(GraphBuilder *g, const cudnnBackendDescriptor_t *d, int n) {
  if (g->failed) return 0;
  for (int i = 0; i < n; ++i)
    if (!d[i]) {
      gbFail(g, cpattnInternalError, "cuDNN graph operand missing");
      return 0;
    }
  return 1;
}

/* y = mode(x [, b] [, t]); axis >= 0 only for GEN_INDEX. Alphas are set to 1 as the
 * frontend does. */
static cudnnBackendDescriptor_t gbPointwise(GraphBuilder *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec,
                                            cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                                            cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis) {
  const cudnnBackendDescriptor_t need[2] = {x, y};
  float one = 1.0f;
  if (!gbHave(g, need, 2)) return NULL;
  cudnnBackendDescriptor_t pw = gbCreate(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  cudnnBackendDescriptor_t op = gbCreate(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  if (!pw || !op) return NULL;
  GB_SET(g, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
  GB_SET(g, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
  if (axis >= 0) GB_SET(g, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
  if (!gbCall(g, cudnnBackendFinalize(pw), "cudnnBackendFinalize(pointwise)")) return NULL;
  GB_SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
  if (b) GB_SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
  if (t) GB_SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one);
  if (!gbCall(g, cudnnBackendFinalize(op), "cudnnBackendFinalize(pointwise op)")) return NULL;
  gbPushOp(g, op);
  return y;
}

/* Shorthands for the three pointwise shapes used below: they return the output tensor,
 * a new virtual of the given shape and type, so that ops chain. */
static cudnnBackendDescriptor_t pwUnary(GraphBuilder *g, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                                        Shape4 ys, cudnnDataType_t yt) {
  return gbPointwise(g, mode, CUDNN_DATA_FLOAT, x, NULL, NULL, gbVirtual(g, ys, yt), -1);
}
static cudnnBackendDescriptor_t pwBinary(GraphBuilder *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec,
                                         cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, Shape4 ys,
                                         cudnnDataType_t yt) {
  return gbPointwise(g, mode, prec, x, b, NULL, gbVirtual(g, ys, yt), -1);
}
static cudnnBackendDescriptor_t pwGenIndex(GraphBuilder *g, cudnnBackendDescriptor_t x, Shape4 ys, int64_t axis) {
  return gbPointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, x, NULL, NULL,
                     gbVirtual(g, ys, CUDNN_DATA_INT32), axis);
}

/* c = a . b over the last two dims; batch dims broadcast (GQA: b has h_kv heads, a has
 * h_q). The overrides are the (b,1,1,1) seq-len tensors of ragged calls, else NULL. */
static void gbMatmul(GraphBuilder *g, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                     cudnnBackendDescriptor_t c, cudnnBackendDescriptor_t mOvr, cudnnBackendDescriptor_t nOvr,
                     cudnnBackendDescriptor_t kOvr) {
  const cudnnBackendDescriptor_t need[3] = {a, b, c};
  cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  if (!gbHave(g, need, 3)) return;
  cudnnBackendDescriptor_t mm = gbCreate(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR);
  cudnnBackendDescriptor_t op = gbCreate(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
  if (!mm || !op) return;
  GB_SET(g, mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
  if (!gbCall(g, cudnnBackendFinalize(mm), "cudnnBackendFinalize(matmul)")) return;
  GB_SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm);
  if (mOvr) GB_SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mOvr);
  if (nOvr) GB_SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &nOvr);
  if (kOvr) GB_SET(g, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &kOvr);
  if (!gbCall(g, cudnnBackendFinalize(op), "cudnnBackendFinalize(matmul op)")) return;
  gbPushOp(g, op);
}

/* y = reduce(x) over the dims where y is smaller (1, or a divisor of the head count for
 * the GQA head reduction). */
static void gbReduce(GraphBuilder *g, cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x,
                     cudnnBackendDescriptor_t y) {
  const cudnnBackendDescriptor_t need[2] = {x, y};
  cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  if (!gbHave(g, need, 2)) return;
  cudnnBackendDescriptor_t rd = gbCreate(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
  cudnnBackendDescriptor_t op = gbCreate(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
  if (!rd || !op) return;
  GB_SET(g, rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
  GB_SET(g, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
  if (!gbCall(g, cudnnBackendFinalize(rd), "cudnnBackendFinalize(reduction)")) return;
  GB_SET(g, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd);
  if (!gbCall(g, cudnnBackendFinalize(op), "cudnnBackendFinalize(reduction op)")) return;
  gbPushOp(g, op);
}

/* Re-present x with y's dims, strides and type: the transposed views of P, dS and K. */
static void gbReshape(GraphBuilder *g, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
  const cudnnBackendDescriptor_t need[2] = {x, y};
  if (!gbHave(g, need, 2)) return;
  cudnnBackendDescriptor_t op = gbCreate(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
  if (!op) return;
  GB_SET(g, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
  GB_SET(g, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
  if (!gbCall(g, cudnnBackendFinalize(op), "cudnnBackendFinalize(reshape op)")) return;
  gbPushOp(g, op);
}

/* The operation graph. The handle is optional from cuDNN 9.8 on (device-less building,
 * which is what lets cpaSdpaCheckGraph run on a machine without a GPU). */
static cudnnBackendDescriptor_t gbFinalizeGraph(GraphBuilder *g, cudnnHandle_t handle) {
  cudnnBackendDescriptor_t graph = gbCreate(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  if (!graph) return NULL;
  if (handle) GB_SET(g, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  GB_SET(g, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->nops, g->ops);
  if (!gbCall(g, cudnnBackendFinalize(graph), "cudnnBackendFinalize(operation graph)")) return NULL;
  return graph;
}

/* ---------------------------------------------------------------------------------- */
/* Shapes                                                                              */
/* ---------------------------------------------------------------------------------- */

static Shape4 shape(int64_t d0, int64_t d1, int64_t d2, int64_t d3, const int64_t str[4]) {
  Shape4 s = {{d0, d1, d2, d3}, {str[0], str[1], str[2], str[3]}};
  return s;
}

static Shape4 dense(int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  const int64_t str[4] = {d1 * d2 * d3, d2 * d3, d3, 1};
  return shape(d0, d1, d2, d3, str);
}

/* Swap the two innermost dims: a transposed view of the same memory (K^T, V^T). */
static Shape4 swap23(Shape4 s) {
  int64_t t = s.dim[2];
  s.dim[2] = s.dim[3];
  s.dim[3] = t;
  t = s.str[2];
  s.str[2] = s.str[3];
  s.str[3] = t;
  return s;
}

/* Stats (b, h_q, s_q, 1) fp32: packed BHS1, or token-major [t, h] for ragged calls (with
 * its own offsets, in units of h_q floats per token). Both are the layouts the Hopper
 * backward reads correctly (research §4: other strides are ignored by some kernels). */
static Shape4 statsShape(const cpaSdpaKey *k) {
  const int64_t packed[4] = {k->h_q * k->s_q, k->s_q, 1, 1};
  const int64_t tokenMajor[4] = {k->h_q * k->s_q, 1, k->h_q, 1};
  return shape(k->b, k->h_q, k->s_q, 1, k->ragged ? tokenMajor : packed);
}

static cudnnDataType_t ioType(const cpaSdpaKey *k) {
  return k->io == cpattnFloat16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

/* ---------------------------------------------------------------------------------- */
/* Masks                                                                               */
/* ---------------------------------------------------------------------------------- */

typedef struct {
  cudnnBackendDescriptor_t seqQ, seqKv; /* ragged                                     */
  cudnnBackendDescriptor_t negInf;      /* any mask, padding included                 */
  cudnnBackendDescriptor_t delta, bandHi, bandLo; /* BAND                               */
} MaskInputs;

static MaskInputs makeMaskInputs(GraphBuilder *g, const cpaSdpaKey *k) {
  MaskInputs m;
  memset(&m, 0, sizeof m);
  const int64_t one[4] = {1, 1, 1, 1};
  if (k->ragged) {
    m.seqQ = gbUser(g, UID_SEQ_Q, shape(k->b, 1, 1, 1, one), CUDNN_DATA_INT32, NULL);
    m.seqKv = gbUser(g, UID_SEQ_KV, shape(k->b, 1, 1, 1, one), CUDNN_DATA_INT32, NULL);
  }
  if (k->ragged || k->mask != CPA_SDPA_MASK_NONE) m.negInf = gbScalar(g, UID_NEG_INF, CUDNN_DATA_FLOAT);
  if (k->mask == CPA_SDPA_MASK_BAND) {
    /* delta is a device scalar (1,1,1,1), not a (b,1,1,1) tensor: measured on 9.19 (H200),
     * the fused engines silently ignore (b,1,1,1) operands in the index arithmetic (they
     * read per-entry values only through the padding seq lens of the bottom-right
     * pattern), while by-value and device (1,1,1,1) scalars are honoured. So a BAND graph
     * has b = 1 and cpaSdpaRun launches it once per entry with delta + e. */
    m.delta = gbUser(g, UID_DELTA, shape(1, 1, 1, 1, one), CUDNN_DATA_INT32, NULL);
    if (k->band_has_hi) m.bandHi = gbScalar(g, UID_BAND_HI, CUDNN_DATA_INT32);
    if (k->band_has_lo) m.bandLo = gbScalar(g, UID_BAND_LO, CUDNN_DATA_INT32);
  }
  return m;
}

/* Padding mask of ragged calls: keep (row < seq_q && col < seq_kv), the frontend's
 * padding_mask op for op. BINARY_SELECT is y = t ? x : b. */
static cudnnBackendDescriptor_t applyPadding(GraphBuilder *g, const cpaSdpaKey *k, const MaskInputs *m,
                                             cudnnBackendDescriptor_t s) {
  Shape4 ss = dense(k->b, k->h_q, k->s_q, k->s_kv);
  cudnnBackendDescriptor_t row = pwGenIndex(g, s, ss, 2);
  cudnnBackendDescriptor_t col = pwGenIndex(g, s, ss, 3);
  cudnnBackendDescriptor_t rowOk = pwBinary(g, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, row, m->seqQ, ss,
                                            CUDNN_DATA_BOOLEAN);
  cudnnBackendDescriptor_t colOk = pwBinary(g, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, col, m->seqKv, ss,
                                            CUDNN_DATA_BOOLEAN);
  cudnnBackendDescriptor_t keep = pwBinary(g, CUDNN_POINTWISE_LOGICAL_AND, CUDNN_DATA_BOOLEAN, rowOk, colOk, ss,
                                           CUDNN_DATA_BOOLEAN);
  return gbPointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, m->negInf, keep,
                     gbVirtual(g, ss, CUDNN_DATA_FLOAT), -1);
}

/* The diagonal masks, each a fresh GEN_INDEX pair, arithmetic on int32 indices, one
 * compare to a bool and one BINARY_SELECT, as cudnn-frontend's composite diagonal band
 * node builds them (node/diagonal_band_mask.h, utils/attn_score_modifiers.h):
 *
 *   CAUSAL  row >= col                                    (top-left, no index op: the
 *                                                          "static diagonal" whose backward
 *                                                          skips masked tiles)
 *   BAND, right bound (first, as the frontend orders them):
 *           (row + delta) + band_hi >= col                 like the frontend's bottom-right
 *                                                          right bound: row + s_kv - s_q,
 *                                                          then + shift, then CMP_GE
 *   BAND, left bound:
 *           (col + band_lo1) - delta > row                 like the frontend's bottom-right
 *                                                          left bound: col + window (int32
 *                                                          by value) - s_kv + s_q, then
 *                                                          CMP_GT(col, row)
 *
 * The left bound keeps j >= i + delta - band_lo, i.e. j + (band_lo + 1) - delta > i, so
 * the by-value scalar is band_lo + 1 (cpaSdpaRun adds the 1). The delta is moved to the
 * column side there because that is where the frontend puts its per-sequence shift for
 * the left bound; mathematically it is the same r = i + delta of the header. Here delta
 * is a device scalar (one batch entry per launch, see makeMaskInputs); measured on 9.19:
 * by-value int32 bounds and device-scalar shifts are honoured on both sides. */
static cudnnBackendDescriptor_t applyDiagonal(GraphBuilder *g, const cpaSdpaKey *k, const MaskInputs *m,
                                              cudnnBackendDescriptor_t s) {
  Shape4 ss = dense(k->b, k->h_q, k->s_q, k->s_kv);
  if (k->mask == CPA_SDPA_MASK_CAUSAL) {
    cudnnBackendDescriptor_t row = pwGenIndex(g, s, ss, 2);
    cudnnBackendDescriptor_t col = pwGenIndex(g, s, ss, 3);
    cudnnBackendDescriptor_t keep = pwBinary(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, ss,
                                             CUDNN_DATA_BOOLEAN);
    return gbPointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, m->negInf, keep,
                       gbVirtual(g, ss, CUDNN_DATA_FLOAT), -1);
  }
  if (k->mask != CPA_SDPA_MASK_BAND) return s;
  if (k->band_has_hi) {
    cudnnBackendDescriptor_t row = pwGenIndex(g, s, ss, 2);
    cudnnBackendDescriptor_t col = pwGenIndex(g, s, ss, 3);
    cudnnBackendDescriptor_t r1 = pwBinary(g, CUDNN_POINTWISE_ADD, CUDNN_DATA_INT32, row, m->delta, ss,
                                           CUDNN_DATA_INT32);
    cudnnBackendDescriptor_t r2 = pwBinary(g, CUDNN_POINTWISE_ADD, CUDNN_DATA_INT32, r1, m->bandHi, ss,
                                           CUDNN_DATA_INT32);
    cudnnBackendDescriptor_t keep = pwBinary(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, r2, col, ss,
                                             CUDNN_DATA_BOOLEAN);
    s = gbPointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, m->negInf, keep,
                    gbVirtual(g, ss, CUDNN_DATA_FLOAT), -1);
  }
  if (k->band_has_lo) {
    cudnnBackendDescriptor_t row = pwGenIndex(g, s, ss, 2);
    cudnnBackendDescriptor_t col = pwGenIndex(g, s, ss, 3);
    cudnnBackendDescriptor_t c1 = pwBinary(g, CUDNN_POINTWISE_ADD, CUDNN_DATA_INT32, col, m->bandLo, ss,
                                           CUDNN_DATA_INT32);
    cudnnBackendDescriptor_t c2 = pwBinary(g, CUDNN_POINTWISE_SUB, CUDNN_DATA_INT32, c1, m->delta, ss,
                                           CUDNN_DATA_INT32);
    cudnnBackendDescriptor_t keep = pwBinary(g, CUDNN_POINTWISE_CMP_GT, CUDNN_DATA_BOOLEAN, c2, row, ss,
                                             CUDNN_DATA_BOOLEAN);
    s = gbPointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, m->negInf, keep,
                    gbVirtual(g, ss, CUDNN_DATA_FLOAT), -1);
  }
  return s;
}

/* ---------------------------------------------------------------------------------- */
/* Forward and backward graphs                                                         */
/* ---------------------------------------------------------------------------------- */

static Shape4 layoutShape(const cpaSdpaLayout *l, int64_t b, int64_t h, int64_t s, int64_t d) {
  return shape(b, h, s, d, l->stride);
}

static cudnnBackendDescriptor_t raggedOffset(GraphBuilder *g, const cpaSdpaKey *k, int64_t uid) {
  const int64_t one[4] = {1, 1, 1, 1};
  if (!k->ragged) return NULL;
  return gbUser(g, uid, shape(k->b + 1, 1, 1, 1, one), CUDNN_DATA_INT64, NULL);
}

/* S = Q.K^T, O = softmax(scale * S, masked) . V, Stats = rowmax + log(rowsum(exp)). */
static void buildFwd(GraphBuilder *g, const cpaSdpaKey *k) {
  const int64_t b = k->b, hq = k->h_q, hk = k->h_kv, sq = k->s_q, skv = k->s_kv;
  const cudnnDataType_t io = ioType(k);
  cudnnBackendDescriptor_t offQ = raggedOffset(g, k, UID_OFF_Q);
  cudnnBackendDescriptor_t offK = raggedOffset(g, k, UID_OFF_K);
  cudnnBackendDescriptor_t offV = raggedOffset(g, k, UID_OFF_V);
  cudnnBackendDescriptor_t offO = raggedOffset(g, k, UID_OFF_O);
  cudnnBackendDescriptor_t offS = raggedOffset(g, k, UID_OFF_STATS);

  cudnnBackendDescriptor_t Q = gbUser(g, UID_Q, layoutShape(&k->q, b, hq, sq, k->d_qk), io, offQ);
  /* K enters the first matmul as K^T: its own memory, declared as (b, h_kv, d, s_kv). */
  cudnnBackendDescriptor_t KT = gbUser(g, UID_K, swap23(layoutShape(&k->k, b, hk, skv, k->d_qk)), io, offK);
  cudnnBackendDescriptor_t V = gbUser(g, UID_V, layoutShape(&k->v, b, hk, skv, k->d_v), io, offV);
  cudnnBackendDescriptor_t O = gbUser(g, UID_O, layoutShape(&k->o, b, hq, sq, k->d_v), io, offO);
  cudnnBackendDescriptor_t ST = gbUser(g, UID_STATS, statsShape(k), CUDNN_DATA_FLOAT, offS);
  cudnnBackendDescriptor_t scale = gbScalar(g, UID_SCALE, CUDNN_DATA_FLOAT);
  MaskInputs m = makeMaskInputs(g, k);

  const Shape4 ss = dense(b, hq, sq, skv), rs = dense(b, hq, sq, 1);
  const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;

  cudnnBackendDescriptor_t S = gbVirtual(g, ss, f32);
  gbMatmul(g, Q, KT, S, m.seqQ, m.seqKv, NULL);
  S = pwBinary(g, CUDNN_POINTWISE_MUL, f32, S, scale, ss, f32);
  if (k->ragged) S = applyPadding(g, k, &m, S);
  S = applyDiagonal(g, k, &m, S);

  /* Softmax written out so that Stats can be an output; the op order is the frontend's
   * composite softmax: max, sub, exp, sum, log, add -> Stats, div -> P. */
  cudnnBackendDescriptor_t M = gbVirtual(g, rs, f32);
  gbReduce(g, CUDNN_REDUCE_TENSOR_MAX, S, M);
  cudnnBackendDescriptor_t X = pwBinary(g, CUDNN_POINTWISE_SUB, f32, S, M, ss, f32);
  cudnnBackendDescriptor_t E = pwUnary(g, CUDNN_POINTWISE_EXP, X, ss, f32);
  cudnnBackendDescriptor_t Z = gbVirtual(g, rs, f32);
  gbReduce(g, CUDNN_REDUCE_TENSOR_ADD, E, Z);
  cudnnBackendDescriptor_t LZ = pwUnary(g, CUDNN_POINTWISE_LOG, Z, rs, f32);
  gbPointwise(g, CUDNN_POINTWISE_ADD, f32, M, LZ, NULL, ST, -1);
  /* P in the io type: the second matmul's A operand must be (frontend: "Requirement by
   * cudnn backend to take in bmm2 aType as i/o type"). */
  cudnnBackendDescriptor_t P = pwBinary(g, CUDNN_POINTWISE_DIV, f32, E, Z, ss, io);
  gbMatmul(g, P, V, O, m.seqQ, NULL, m.seqKv);
}

/* The composite backward (research §2.3):
 *   softmax_sum = rowsum(dO * O)                     (fp32 scratch, front of workspace)
 *   P  = exp(mask(scale * Q.K^T) - Stats)            (padding before, band after "- Stats")
 *   dV = P^T . dO;   dS = scale * P * (dO.V^T - softmax_sum)
 *   dK = dS^T . Q;   dQ = dS . K  (via the fp32 dQ_accum scratch, or directly when
 *                                  deterministic: the "dP workspace" form)
 * GQA/MQA: dK and dV are computed per query head and summed over each head group. */
static void buildBwd(GraphBuilder *g, const cpaSdpaKey *k) {
  const int64_t b = k->b, hq = k->h_q, hk = k->h_kv, sq = k->s_q, skv = k->s_kv, dqk = k->d_qk, dv = k->d_v;
  const cudnnDataType_t io = ioType(k), f32 = CUDNN_DATA_FLOAT;
  const int gqa = hq != hk;
  cudnnBackendDescriptor_t offQ = raggedOffset(g, k, UID_OFF_Q);
  cudnnBackendDescriptor_t offK = raggedOffset(g, k, UID_OFF_K);
  cudnnBackendDescriptor_t offV = raggedOffset(g, k, UID_OFF_V);
  cudnnBackendDescriptor_t offO = raggedOffset(g, k, UID_OFF_O);
  cudnnBackendDescriptor_t offS = raggedOffset(g, k, UID_OFF_STATS);
  /* Unlike the sketch (dO shared O's layout and offsets, dQ/dK/dV those of Q/K/V), every
   * gradient has its own strides and offsets: a caller's gradient buffers need not be
   * laid out like the activations. */
  cudnnBackendDescriptor_t offDO = raggedOffset(g, k, UID_OFF_DO);
  cudnnBackendDescriptor_t offDQ = raggedOffset(g, k, UID_OFF_DQ);
  cudnnBackendDescriptor_t offDK = raggedOffset(g, k, UID_OFF_DK);
  cudnnBackendDescriptor_t offDV = raggedOffset(g, k, UID_OFF_DV);

  const Shape4 kShape = layoutShape(&k->k, b, hk, skv, dqk);
  cudnnBackendDescriptor_t Q = gbUser(g, UID_Q, layoutShape(&k->q, b, hq, sq, dqk), io, offQ);
  cudnnBackendDescriptor_t KT = gbUser(g, UID_K, swap23(kShape), io, offK);
  cudnnBackendDescriptor_t VT = gbUser(g, UID_V, swap23(layoutShape(&k->v, b, hk, skv, dv)), io, offV);
  cudnnBackendDescriptor_t O = gbUser(g, UID_O, layoutShape(&k->o, b, hq, sq, dv), io, offO);
  cudnnBackendDescriptor_t dO = gbUser(g, UID_DO, layoutShape(&k->dout, b, hq, sq, dv), io, offDO);
  cudnnBackendDescriptor_t ST = gbUser(g, UID_STATS, statsShape(k), f32, offS);
  cudnnBackendDescriptor_t dQ = gbUser(g, UID_DQ, layoutShape(&k->dq, b, hq, sq, dqk), io, offDQ);
  cudnnBackendDescriptor_t dK = gbUser(g, UID_DK, layoutShape(&k->dk, b, hk, skv, dqk), io, offDK);
  cudnnBackendDescriptor_t dV = gbUser(g, UID_DV, layoutShape(&k->dv, b, hk, skv, dv), io, offDV);
  cudnnBackendDescriptor_t scale = gbScalar(g, UID_SCALE, f32);
  cudnnBackendDescriptor_t one = gbScalar(g, UID_ONE, f32);
  MaskInputs m = makeMaskInputs(g, k);

  const Shape4 ss = dense(b, hq, sq, skv);
  /* Transposed (b, h, s_kv, s_q) view of a score-shaped virtual. */
  const int64_t sstStr[4] = {hq * sq * skv, sq * skv, 1, skv};
  const Shape4 sst = shape(b, hq, skv, sq, sstStr);

  /* softmax_sum. The dO*O product's virtual strides ({h s d, s d, h d, 1}) and the
   * "* 1.0" op are copied from the frontend: they are part of the matched pattern. The
   * scratch is dense BHS1 also for ragged calls (the frontend's layout when no
   * max-total-tokens bound is given), sized b * h_q * s_q. */
  const int64_t dooStr[4] = {hq * sq * dv, sq * dv, hq * dv, 1};
  cudnnBackendDescriptor_t doo = pwBinary(g, CUDNN_POINTWISE_MUL, f32, dO, O, shape(b, hq, sq, dv, dooStr), f32);
  cudnnBackendDescriptor_t rsum = gbVirtual(g, dense(b, hq, sq, 1), f32);
  gbReduce(g, CUDNN_REDUCE_TENSOR_ADD, doo, rsum);
  cudnnBackendDescriptor_t ssum = gbUser(g, UID_SOFTMAX_SUM, dense(b, hq, sq, 1), f32, NULL);
  gbPointwise(g, CUDNN_POINTWISE_MUL, f32, rsum, one, NULL, ssum, -1);

  /* P = exp(mask(scale * Q.K^T) - Stats): padding before the subtraction, the diagonal
   * after it (the frontend's order; for causal this is what the sketch validated). */
  cudnnBackendDescriptor_t S = gbVirtual(g, ss, f32);
  gbMatmul(g, Q, KT, S, m.seqQ, m.seqKv, NULL);
  S = pwBinary(g, CUDNN_POINTWISE_MUL, f32, S, scale, ss, f32);
  if (k->ragged) S = applyPadding(g, k, &m, S);
  S = pwBinary(g, CUDNN_POINTWISE_SUB, f32, S, ST, ss, f32);
  S = applyDiagonal(g, k, &m, S);
  cudnnBackendDescriptor_t P = pwUnary(g, CUDNN_POINTWISE_EXP, S, ss, f32);

  /* dV = P^T . dO */
  cudnnBackendDescriptor_t PT = gbVirtual(g, sst, io);
  gbReshape(g, P, PT);
  if (!gqa) {
    gbMatmul(g, PT, dO, dV, m.seqKv, NULL, m.seqQ);
  } else {
    cudnnBackendDescriptor_t dVfull = gbVirtual(g, dense(b, hq, skv, dv), io);
    gbMatmul(g, PT, dO, dVfull, m.seqKv, NULL, m.seqQ);
    gbReduce(g, CUDNN_REDUCE_TENSOR_ADD, dVfull, dV);
  }

  /* dS = scale * P * (dO . V^T - softmax_sum) */
  cudnnBackendDescriptor_t dP = gbVirtual(g, ss, f32);
  gbMatmul(g, dO, VT, dP, m.seqQ, m.seqKv, NULL);
  cudnnBackendDescriptor_t t1 = pwBinary(g, CUDNN_POINTWISE_SUB, f32, dP, ssum, ss, f32);
  cudnnBackendDescriptor_t t2 = pwBinary(g, CUDNN_POINTWISE_MUL, f32, t1, P, ss, f32);
  cudnnBackendDescriptor_t dS = pwBinary(g, CUDNN_POINTWISE_MUL, f32, t2, scale, ss, f32);

  /* dK = dS^T . Q */
  cudnnBackendDescriptor_t dST = gbVirtual(g, sst, io);
  gbReshape(g, dS, dST);
  if (!gqa) {
    gbMatmul(g, dST, Q, dK, m.seqKv, NULL, m.seqQ);
  } else {
    cudnnBackendDescriptor_t dKfull = gbVirtual(g, dense(b, hq, skv, dqk), io);
    gbMatmul(g, dST, Q, dKfull, m.seqKv, NULL, m.seqQ);
    gbReduce(g, CUDNN_REDUCE_TENSOR_ADD, dKfull, dK);
  }

  /* dQ = dS . K, with K recovered from K^T by a reshape that carries K's offsets. */
  cudnnBackendDescriptor_t Kview = g->failed ? NULL : gbTensor(g, g->nextVirtualUid++, &kShape, io, TENSOR_VIRTUAL, offK);
  gbReshape(g, KT, Kview);
  if (k->deterministic) {
    /* Hopper's deterministic form: no fp32 accumulator and no atomics; cuDNN's workspace
     * grows to about b * h_q * s_q * s_kv * 2 bytes instead. */
    gbMatmul(g, dS, Kview, dQ, m.seqQ, NULL, m.seqKv);
  } else {
    cudnnBackendDescriptor_t acc = gbUser(g, UID_DQ_ACCUM, dense(b, hq, sq, dqk), f32, NULL);
    gbMatmul(g, dS, Kview, acc, m.seqQ, NULL, m.seqKv);
    gbPointwise(g, CUDNN_POINTWISE_IDENTITY, f32, acc, NULL, NULL, dQ, -1);
  }
}

/* ---------------------------------------------------------------------------------- */
/* Keys                                                                                */
/* ---------------------------------------------------------------------------------- */

static const char *maskName(const cpaSdpaKey *k) {
  if (k->mask == CPA_SDPA_MASK_CAUSAL) return "causal";
  if (k->mask != CPA_SDPA_MASK_BAND) return "none";
  if (k->band_has_lo && k->band_has_hi) return "band(lo,hi)";
  return k->band_has_lo ? "band(lo)" : "band(hi)";
}

static void describeKey(const cpaSdpaKey *k, char *buf, size_t len) {
  snprintf(buf, len, "%s %s b=%lld hq=%lld hkv=%lld sq=%lld skv=%lld d=%lld/%lld%s %s%s",
           k->backward ? "bwd" : "fwd", k->io == cpattnFloat16 ? "fp16" : "bf16", (long long)k->b,
           (long long)k->h_q, (long long)k->h_kv, (long long)k->s_q, (long long)k->s_kv, (long long)k->d_qk,
           (long long)k->d_v, k->ragged ? " ragged" : "", maskName(k),
           k->backward && k->deterministic ? " deterministic" : "");
}

static cpattnResult_t checkLayout(const cpaSdpaLayout *l, const char *name) {
  CPA_REQUIRE(l->stride[3] == 1, "key->%s.stride[3] = %lld must be 1 (the head dim is contiguous)", name,
              (long long)l->stride[3]);
  for (int i = 0; i < 3; ++i)
    CPA_REQUIRE(l->stride[i] >= 0, "key->%s.stride[%d] = %lld must be >= 0", name, i, (long long)l->stride[i]);
  return cpattnSuccess;
}

static cpattnResult_t checkHeadDim(int64_t d, const char *name) {
  CPA_REQUIRE(d >= 8 && d <= 256 && d % 8 == 0, "key->%s = %lld must be a multiple of 8 in [8, 256]", name,
              (long long)d);
  return cpattnSuccess;
}

static cpattnResult_t validateKey(const cpaSdpaKey *k) {
  CPA_REQUIRE(k != NULL, "key must not be NULL");
  CPA_REQUIRE(k->backward == 0 || k->backward == 1, "key->backward = %d must be 0 or 1", k->backward);
  CPA_REQUIRE(k->io == cpattnBFloat16 || k->io == cpattnFloat16,
              "key->io = %d must be cpattnBFloat16 (%d) or cpattnFloat16 (%d)", k->io, (int)cpattnBFloat16,
              (int)cpattnFloat16);
  CPA_REQUIRE(k->b >= 1, "key->b = %lld must be >= 1", (long long)k->b);
  CPA_REQUIRE(k->h_q >= 1, "key->h_q = %lld must be >= 1", (long long)k->h_q);
  CPA_REQUIRE(k->h_kv >= 1, "key->h_kv = %lld must be >= 1", (long long)k->h_kv);
  CPA_REQUIRE(k->h_q % k->h_kv == 0, "key->h_kv = %lld must divide key->h_q = %lld", (long long)k->h_kv,
              (long long)k->h_q);
  CPA_REQUIRE(k->s_q >= 1, "key->s_q = %lld must be >= 1", (long long)k->s_q);
  CPA_REQUIRE(k->s_kv >= 1, "key->s_kv = %lld must be >= 1", (long long)k->s_kv);
  /* int32 GEN_INDEX and seq lens: every index must fit. */
  CPA_REQUIRE(k->s_q <= INT32_MAX && k->s_kv <= INT32_MAX, "key->s_q = %lld and key->s_kv = %lld must be < 2^31",
              (long long)k->s_q, (long long)k->s_kv);
  CPA_CHECK(checkHeadDim(k->d_qk, "d_qk"));
  CPA_CHECK(checkHeadDim(k->d_v, "d_v"));
  CPA_CHECK(checkLayout(&k->q, "q"));
  CPA_CHECK(checkLayout(&k->k, "k"));
  CPA_CHECK(checkLayout(&k->v, "v"));
  CPA_CHECK(checkLayout(&k->o, "o"));
  if (k->backward) {
    CPA_CHECK(checkLayout(&k->dout, "dout"));
    CPA_CHECK(checkLayout(&k->dq, "dq"));
    CPA_CHECK(checkLayout(&k->dk, "dk"));
    CPA_CHECK(checkLayout(&k->dv, "dv"));
    CPA_REQUIRE(k->deterministic == 0 || k->deterministic == 1, "key->deterministic = %d must be 0 or 1",
                k->deterministic);
  }
  CPA_REQUIRE(k->ragged == 0 || k->ragged == 1, "key->ragged = %d must be 0 or 1", k->ragged);
  CPA_REQUIRE(k->mask == CPA_SDPA_MASK_NONE || k->mask == CPA_SDPA_MASK_CAUSAL || k->mask == CPA_SDPA_MASK_BAND,
              "key->mask = %d must be CPA_SDPA_MASK_NONE, _CAUSAL or _BAND", k->mask);
  if (k->mask == CPA_SDPA_MASK_BAND) {
    CPA_REQUIRE(k->band_has_lo == 0 || k->band_has_lo == 1, "key->band_has_lo = %d must be 0 or 1",
                k->band_has_lo);
    CPA_REQUIRE(k->band_has_hi == 0 || k->band_has_hi == 1, "key->band_has_hi = %d must be 0 or 1",
                k->band_has_hi);
    CPA_REQUIRE(k->band_has_lo || k->band_has_hi,
                "key->mask = CPA_SDPA_MASK_BAND needs key->band_has_lo or key->band_has_hi (both are 0)");
  }
  return cpattnSuccess;
}

/* Limits of cuDNN itself (valid keys that it cannot run), kept apart from validateKey so
 * that a caller can fall back on cpattnNotSupported. */
static cpattnResult_t checkSupport(const cpaSdpaKey *k, size_t version) {
  char what[160];
  describeKey(k, what, sizeof what);
  /* cudnn-frontend's backward support surface (sdpa_support_surface.h). */
  if (k->backward && k->s_q == 1 && k->s_kv == 1)
    return cpaError(cpattnNotSupported, "cuDNN SDPA backward does not support s_q = s_kv = 1 (%s)", what);
  if (k->backward && k->d_qk != k->d_v && (k->d_qk > 128 || k->d_v > 128) && !(k->d_qk == 192 && k->d_v == 128))
    return cpaError(cpattnNotSupported,
                    "cuDNN SDPA backward on Hopper has a known bug for d_qk != d_v above 128 (%s); use equal head dims",
                    what);
  /* int64 ragged offsets need 9.5, token-major ragged Stats 9.6. */
  if (k->ragged && version < 90600)
    return cpaError(cpattnNotSupported, "ragged SDPA needs cuDNN >= 9.6 (runtime %zu): %s", version, what);
  /* Before 9.5.1 the backward assumed dO laid out like O. */
  if (k->backward && version < 90501 && memcmp(&k->dout, &k->o, sizeof k->o) != 0)
    return cpaError(cpattnNotSupported, "cuDNN < 9.5.1 (runtime %zu) needs dO strides equal to O's: %s", version,
                    what);
  return cpattnSuccess;
}

/* The bytes that are hashed and compared: only the fields that select a graph, with
 * padding and unused fields zeroed, so that two equal requests always match. */
static void canonicalKey(const cpaSdpaKey *in, cpaSdpaKey *out) {
  memset(out, 0, sizeof *out);
  out->backward = in->backward;
  out->io = in->io;
  out->b = in->b;
  out->h_q = in->h_q;
  out->h_kv = in->h_kv;
  out->s_q = in->s_q;
  out->s_kv = in->s_kv;
  out->d_qk = in->d_qk;
  out->d_v = in->d_v;
  out->q = in->q;
  out->k = in->k;
  out->v = in->v;
  out->o = in->o;
  if (in->backward) {
    out->dout = in->dout;
    out->dq = in->dq;
    out->dk = in->dk;
    out->dv = in->dv;
    out->deterministic = in->deterministic;
  }
  out->ragged = in->ragged;
  out->mask = in->mask;
  if (in->mask == CPA_SDPA_MASK_BAND) {
    out->band_has_lo = in->band_has_lo;
    out->band_has_hi = in->band_has_hi;
  }
}

/* FNV-1a over the canonical key's bytes. */
static uint64_t hashKey(const cpaSdpaKey *k) {
  const unsigned char *p = (const unsigned char *)k;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < sizeof *k; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

/* The key a graph is built from: a BAND key's graph covers one batch entry (b = 1) and is
 * launched once per entry, because a per-entry delta can only reach cuDNN's kernels as a
 * scalar (see makeMaskInputs). */
static cpaSdpaKey graphKey(const cpaSdpaKey *k) {
  cpaSdpaKey gk = *k;
  if (k->mask == CPA_SDPA_MASK_BAND) gk.b = 1;
  return gk;
}

static cpattnResult_t buildGraph(const cpaSdpaKey *key, cudnnHandle_t handle, GraphBuilder *g,
                                 cudnnBackendDescriptor_t *graph) {
  char what[160];
  const cpaSdpaKey gk = graphKey(key), *k = &gk;
  g->band = k->mask == CPA_SDPA_MASK_BAND;
  if (k->backward) buildBwd(g, k);
  else buildFwd(g, k);
  *graph = gbFinalizeGraph(g, handle);
  if (!g->failed) return cpattnSuccess;
  describeKey(key, what, sizeof what);
  return cpaError(g->failRes, "cuDNN graph for %s: %s", what, g->failMsg);
}

/* ---------------------------------------------------------------------------------- */
/* Plans                                                                               */
/* ---------------------------------------------------------------------------------- */

struct cpaSdpaPlan {
  cpaSdpaKey key;                 /* canonical                                          */
  GraphBuilder graph;             /* every graph descriptor, alive as long as the plan  */
  cudnnBackendDescriptor_t engineCfg;
  cudnnBackendDescriptor_t plan;
  int64_t engineIndex;
  size_t cudnnWorkspace;          /* cuDNN's own, after the scratch                      */
  size_t softmaxSumBytes;         /* backward scratch, 256-aligned                      */
  size_t dqAccumBytes;
  int zeroDqAccum;                /* runtime < 9.6: cuDNN does not zero dQ_accum itself  */
  int64_t launches;               /* BAND: the b=1 graph runs once per batch entry; else 1 */
  double buildMs;
};

typedef struct cpaSdpaEntry {
  uint64_t hash;
  struct cpaSdpaEntry *next;
  cpaSdpaPlan plan;
} cpaSdpaEntry;

struct cpaSdpaCache {
  cudnnHandle_t handle;
  /* One mutex for lookups, builds and executes: a cudnnHandle_t must not be used by two
   * threads at once, and cudnnSetStream + execute must not interleave with another
   * thread's. Building under it serializes plan builds, which also share the handle. */
  pthread_mutex_t mutex;
  cpaSdpaEntry **buckets;
  size_t nbuckets; /* power of two */
  size_t count;
};

static double nowMs(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int64_t engineIndexOf(cudnnBackendDescriptor_t cfg, int *nondeterministic) {
  cudnnBackendDescriptor_t eng = NULL;
  int64_t index = -1, n = 0;
  *nondeterministic = 0;
  if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng) != CUDNN_STATUS_SUCCESS) return -1;
  if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &eng) ==
      CUDNN_STATUS_SUCCESS) {
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index) !=
        CUDNN_STATUS_SUCCESS)
      index = -1;
    if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                 CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) == CUDNN_STATUS_SUCCESS)
      for (int64_t i = 0; i < n && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; ++i)
        if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) *nondeterministic = 1;
  }
  cudnnBackendDestroyDescriptor(eng);
  return index;
}

/* Heuristics mode A, then FALLBACK; the first engine config whose plan finalizes wins
 * (cuDNN's order is its preference). Failures to finalize a candidate are expected and
 * quiet; only "no candidate at all" is reported, with cuDNN's last message. */
static cpattnResult_t buildPlan(cudnnHandle_t handle, cudnnBackendDescriptor_t graph, cpaSdpaPlan *p) {
  static const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
  cudnnStatus_t lastSt = CUDNN_STATUS_NOT_SUPPORTED;
  char lastMsg[512] = "no engine configs";
  int tried = 0;
  for (int mi = 0; mi < 2 && !p->plan; ++mi) {
    cudnnBackendDescriptor_t heur = NULL;
    cudnnBackendDescriptor_t cfgs[64];
    int64_t count = 0, got = 0;
    int ncfg = 0;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                    &graph);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[mi]);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(heur);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                    NULL);
    if (st != CUDNN_STATUS_SUCCESS) {
      lastSt = st;
      cudnnGetLastErrorString(lastMsg, sizeof lastMsg);
      if (heur) cudnnBackendDestroyDescriptor(heur);
      continue;
    }
    if (count > 64) count = 64;
    for (ncfg = 0; ncfg < count; ++ncfg)
      if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[ncfg]) != CUDNN_STATUS_SUCCESS) break;
    if (ncfg > 0 && cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, ncfg,
                                             &got, cfgs) == CUDNN_STATUS_SUCCESS) {
      for (int64_t i = 0; i < got && i < ncfg && !p->plan; ++i) {
        cudnnBackendDescriptor_t plan = NULL;
        int64_t ws = 0, n = 0;
        int nondet = 0;
        int64_t index = engineIndexOf(cfgs[i], &nondet);
        ++tried;
        /* The deterministic graph form decides determinism on Hopper (its engine carries
         * no note); skipping engines that do say "nondeterministic" is a safety net. */
        if (p->key.backward && p->key.deterministic && nondet) continue;
        st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
        if (st == CUDNN_STATUS_SUCCESS)
          st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
        if (st == CUDNN_STATUS_SUCCESS)
          st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                        1, &cfgs[i]);
        if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(plan);
        if (st == CUDNN_STATUS_SUCCESS)
          st = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &ws);
        if (st == CUDNN_STATUS_SUCCESS && ws >= 0) {
          p->plan = plan;
          p->engineCfg = cfgs[i]; /* kept alive with the plan, as the frontend does */
          cfgs[i] = NULL;
          p->engineIndex = index;
          p->cudnnWorkspace = (size_t)ws;
        } else {
          lastSt = st;
          cudnnGetLastErrorString(lastMsg, sizeof lastMsg);
          if (plan) cudnnBackendDestroyDescriptor(plan);
        }
      }
    }
    for (int i = 0; i < ncfg; ++i)
      if (cfgs[i]) cudnnBackendDestroyDescriptor(cfgs[i]);
    cudnnBackendDestroyDescriptor(heur);
  }
  if (p->plan) return cpattnSuccess;
  char what[160];
  describeKey(&p->key, what, sizeof what);
  /* Heuristics that fail outright for a reason other than "not supported" (allocation,
   * internal error) are failures; an empty or unbuildable candidate list is "no engine". */
  if (tried == 0 && mapCudnnStatus(lastSt) != cpattnNotSupported && lastSt != CUDNN_STATUS_SUCCESS)
    return cpaError(cpattnCudnnError, "cuDNN heuristics failed for %s: %s (%d): %s", what,
                    cudnnGetErrorString(lastSt), (int)lastSt, lastMsg);
  return cpaError(cpattnNotSupported, "cuDNN has no engine for %s (%d configs tried; last: %s (%d): %s)", what, tried,
                  cudnnGetErrorString(lastSt), (int)lastSt, lastMsg);
}

static void planRelease(cpaSdpaPlan *p) {
  if (p->plan) cudnnBackendDestroyDescriptor(p->plan);
  if (p->engineCfg) cudnnBackendDestroyDescriptor(p->engineCfg);
  p->plan = p->engineCfg = NULL;
  gbRelease(&p->graph);
}

static cpattnResult_t planCreate(cudnnHandle_t handle, const cpaSdpaKey *key, cpaSdpaPlan *p) {
  const size_t version = cudnnGetVersion();
  cudnnBackendDescriptor_t graph = NULL;
  cpattnResult_t res;
  double t0 = nowMs();
  memset(p, 0, sizeof *p);
  p->key = *key;
  gbInit(&p->graph);
  CPA_CHECK(checkSupport(key, version));
  CPA_CHECK_GOTO(buildGraph(key, handle, &p->graph, &graph), res, fail);
  CPA_CHECK_GOTO(buildPlan(handle, graph, p), res, fail);
  p->launches = key->mask == CPA_SDPA_MASK_BAND ? key->b : 1;
  if (key->backward) {
    /* Sized for the graph's batch (1 for BAND, whose launches reuse the scratch in
     * stream order). */
    const int64_t gb = key->b / p->launches;
    p->softmaxSumBytes = cpaAlignUp((size_t)(gb * key->h_q * key->s_q) * sizeof(float), SDPA_SCRATCH_ALIGN);
    if (!key->deterministic) {
      p->dqAccumBytes =
          cpaAlignUp((size_t)(gb * key->h_q * key->s_q * key->d_qk) * sizeof(float), SDPA_SCRATCH_ALIGN);
      p->zeroDqAccum = version < 90600;
    }
    if (version < 91501 && !key->ragged && key->s_kv % 128 != 0)
      CPA_WARN("cuDNN %zu < 9.15.1: a backward with s_kv %% 128 != 0 and no padding mask may fault under CUDA "
               "graph replay (fixed in 9.15.1)",
               version);
  }
  p->buildMs = nowMs() - t0;
  return cpattnSuccess;
fail:
  planRelease(p);
  return res;
}

/* ---------------------------------------------------------------------------------- */
/* Public entry points                                                                 */
/* ---------------------------------------------------------------------------------- */

cpattnResult_t cpaSdpaCheckVersion(int needBand) {
  const size_t v = cudnnGetVersion();
  if (v < 90000) return cpaError(cpattnNotSupported, "cuDNN runtime %zu is older than 9.0", v);
  if (v == 91000 || v == 91001)
    return cpaError(cpattnNotSupported,
                    "cuDNN %zu has known SDPA bf16/fp16 bugs (9.10.0 and 9.10.1); use 9.10.2 or newer", v);
  if (needBand && v / 100 == 914)
    return cpaError(cpattnNotSupported, "cuDNN %zu (9.14.x) has a known sliding-window bug; use 9.15 or newer", v);
  return cpattnSuccess;
}

cpattnResult_t cpaSdpaCheckGraph(const cpaSdpaKey *key) {
  const size_t version = cudnnGetVersion();
  cpaSdpaKey k;
  GraphBuilder g;
  cudnnBackendDescriptor_t graph = NULL;
  CPA_CHECK(validateKey(key));
  canonicalKey(key, &k);
  CPA_CHECK(checkSupport(&k, version));
  if (version < 90800)
    return cpaError(cpattnNotSupported, "building a cuDNN graph without a handle needs cuDNN >= 9.8 (runtime %zu)",
                    version);
  gbInit(&g);
  cpattnResult_t res = buildGraph(&k, NULL, &g, &graph);
  gbRelease(&g);
  return res;
}

cpattnResult_t cpaSdpaCacheCreate(cpaSdpaCache **cache, struct cudnnContext *handle) {
  CPA_REQUIRE(cache != NULL, "cache must not be NULL");
  *cache = NULL;
  CPA_REQUIRE(handle != NULL, "handle must not be NULL");
  cpaSdpaCache *c = calloc(1, sizeof *c);
  if (!c) return cpaError(cpattnOutOfMemory, "cannot allocate a cuDNN plan cache");
  c->nbuckets = 64;
  c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
  if (!c->buckets) {
    free(c);
    return cpaError(cpattnOutOfMemory, "cannot allocate a cuDNN plan cache");
  }
  if (pthread_mutex_init(&c->mutex, NULL) != 0) {
    free(c->buckets);
    free(c);
    return cpaError(cpattnSystemError, "pthread_mutex_init failed for the cuDNN plan cache");
  }
  c->handle = handle;
  *cache = c;
  return cpattnSuccess;
}

void cpaSdpaCacheDestroy(cpaSdpaCache *cache) {
  if (!cache) return;
  for (size_t i = 0; i < cache->nbuckets; ++i) {
    cpaSdpaEntry *e = cache->buckets[i];
    while (e) {
      cpaSdpaEntry *next = e->next;
      planRelease(&e->plan);
      free(e);
      e = next;
    }
  }
  free(cache->buckets);
  pthread_mutex_destroy(&cache->mutex);
  free(cache);
}

/* Doubles the bucket array when it gets crowded; called with the mutex held. A failed
 * allocation just keeps the old (longer-chained) table. */
static void cacheGrow(cpaSdpaCache *c) {
  size_t n = c->nbuckets * 2;
  cpaSdpaEntry **b = calloc(n, sizeof *b);
  if (!b) return;
  for (size_t i = 0; i < c->nbuckets; ++i) {
    cpaSdpaEntry *e = c->buckets[i];
    while (e) {
      cpaSdpaEntry *next = e->next;
      size_t j = (size_t)(e->hash & (n - 1));
      e->next = b[j];
      b[j] = e;
      e = next;
    }
  }
  free(c->buckets);
  c->buckets = b;
  c->nbuckets = n;
}

cpattnResult_t cpaSdpaCacheGet(cpaSdpaCache *cache, const cpaSdpaKey *key, const cpaSdpaPlan **plan) {
  cpaSdpaKey k;
  cpattnResult_t res = cpattnSuccess;
  CPA_REQUIRE(cache != NULL, "cache must not be NULL");
  CPA_REQUIRE(plan != NULL, "plan must not be NULL");
  *plan = NULL;
  CPA_CHECK(validateKey(key));
  canonicalKey(key, &k);
  const uint64_t h = hashKey(&k);

  pthread_mutex_lock(&cache->mutex);
  for (cpaSdpaEntry *e = cache->buckets[h & (cache->nbuckets - 1)]; e; e = e->next)
    if (e->hash == h && memcmp(&e->plan.key, &k, sizeof k) == 0) {
      *plan = &e->plan;
      goto out;
    }
  {
    /* Entries are never moved or freed before the cache is, so the pointer handed out
     * stays valid (the header's promise). */
    cpaSdpaEntry *e = calloc(1, sizeof *e);
    if (!e) {
      res = cpaError(cpattnOutOfMemory, "cannot allocate a cuDNN plan cache entry");
      goto out;
    }
    res = planCreate(cache->handle, &k, &e->plan);
    if (res != cpattnSuccess) {
      free(e);
      goto out;
    }
    e->hash = h;
    if (cache->count + 1 > 2 * cache->nbuckets) cacheGrow(cache);
    size_t j = (size_t)(h & (cache->nbuckets - 1));
    e->next = cache->buckets[j];
    cache->buckets[j] = e;
    cache->count++;
    *plan = &e->plan;
    if (cpaLogLevelGet() >= CPA_LOG_INFO) {
      char desc[256];
      cpaSdpaPlanDescribe(&e->plan, desc, sizeof desc);
      CPA_INFO("cuDNN SDPA plan built in %.1f ms: %s", e->plan.buildMs, desc);
    }
  }
out:
  pthread_mutex_unlock(&cache->mutex);
  return res;
}

size_t cpaSdpaPlanWorkspaceSize(const cpaSdpaPlan *plan) {
  if (!plan) return 0;
  return plan->softmaxSumBytes + plan->dqAccumBytes + plan->cudnnWorkspace;
}

void cpaSdpaPlanDescribe(const cpaSdpaPlan *plan, char *buf, size_t len) {
  char what[160];
  if (!buf || len == 0) return;
  if (!plan) {
    snprintf(buf, len, "(no plan)");
    return;
  }
  describeKey(&plan->key, what, sizeof what);
  snprintf(buf, len, "%s engine %lld ws %zu B (cuDNN %zu B + scratch %zu B)%s", what, (long long)plan->engineIndex,
           cpaSdpaPlanWorkspaceSize(plan), plan->cudnnWorkspace, plan->softmaxSumBytes + plan->dqAccumBytes,
           plan->launches > 1 ? " one launch per entry" : "");
}

/* Host values of the by-value scalars. They live in cpaSdpaRun's frame: cuDNN reads them
 * during cudnnBackendExecute (and copies them into the launch), not later. */
typedef struct {
  float scale, negInf, one;
  int32_t bandHi, bandLo1;
} RunScalars;

/* The pointer for one graph uid, and its name for messages. */
static void *argFor(int64_t uid, const cpaSdpaArgs *a, RunScalars *sc, char *ws, const cpaSdpaPlan *p,
                    const char **name) {
  switch (uid) {
    case UID_Q: *name = "args->q"; return (void *)a->q;
    case UID_K: *name = "args->k"; return (void *)a->k;
    case UID_V: *name = "args->v"; return (void *)a->v;
    case UID_O: *name = "args->o"; return a->o;
    case UID_STATS: *name = "args->stats"; return a->stats;
    case UID_SCALE: *name = "scale"; return &sc->scale;
    case UID_SEQ_Q: *name = "args->seq_q"; return (void *)a->seq_q;
    case UID_SEQ_KV: *name = "args->seq_kv"; return (void *)a->seq_kv;
    case UID_NEG_INF: *name = "-inf"; return &sc->negInf;
    case UID_DELTA: *name = "args->delta"; return (void *)a->delta;
    case UID_BAND_HI: *name = "band_hi"; return &sc->bandHi;
    case UID_BAND_LO: *name = "band_lo"; return &sc->bandLo1;
    case UID_OFF_Q: *name = "args->off_q"; return (void *)a->off_q;
    case UID_OFF_K: *name = "args->off_k"; return (void *)a->off_k;
    case UID_OFF_V: *name = "args->off_v"; return (void *)a->off_v;
    case UID_OFF_O: *name = "args->off_o"; return (void *)a->off_o;
    case UID_OFF_STATS: *name = "args->off_stats"; return (void *)a->off_stats;
    case UID_DO: *name = "args->dout"; return (void *)a->dout;
    case UID_DQ: *name = "args->dq"; return a->dq;
    case UID_DK: *name = "args->dk"; return a->dk;
    case UID_DV: *name = "args->dv"; return a->dv;
    case UID_ONE: *name = "1.0"; return &sc->one;
    case UID_SOFTMAX_SUM: *name = "workspace (softmax_sum)"; return ws;
    case UID_DQ_ACCUM: *name = "workspace (dQ_accum)"; return ws ? ws + p->softmaxSumBytes : NULL;
    case UID_OFF_DO: *name = "args->off_dout"; return (void *)a->off_dout;
    case UID_OFF_DQ: *name = "args->off_dq"; return (void *)a->off_dq;
    case UID_OFF_DK: *name = "args->off_dk"; return (void *)a->off_dk;
    case UID_OFF_DV: *name = "args->off_dv"; return (void *)a->off_dv;
    default: *name = "?"; return NULL;
  }
}

static int isHostScalar(int64_t uid) {
  return uid == UID_SCALE || uid == UID_NEG_INF || uid == UID_BAND_HI || uid == UID_BAND_LO || uid == UID_ONE;
}

/* |band| beyond 2^30 means "unbounded" for any sequence cuDNN can index (int32); the
 * clamp keeps the int32 index arithmetic in the graph from wrapping. */
static int32_t clampBand(int32_t v) {
  const int32_t lim = 1 << 30;
  return v > lim ? lim : (v < -lim ? -lim : v);
}

/* One execute: variant pack for every user uid of the graph, then cudnnSetStream +
 * cudnnBackendExecute under the cache's mutex. `entry` only names the batch entry in
 * messages (-1 for a whole-batch launch). */
static cpattnResult_t runLaunch(cpaSdpaCache *cache, const cpaSdpaPlan *plan, const cpaSdpaArgs *args,
                                RunScalars *sc, struct CUstream_st *stream, int64_t entry) {
  int64_t uids[SDPA_MAX_USER_UIDS];
  void *ptrs[SDPA_MAX_USER_UIDS];
  char *ws = (char *)args->workspace;
  const int band = plan->key.mask == CPA_SDPA_MASK_BAND;
  const int n = plan->graph.nUserUids;
  char at[48] = "";
  if (entry >= 0) snprintf(at, sizeof at, " (batch entry %lld)", (long long)entry);
  for (int i = 0; i < n; ++i) {
    const char *name = NULL;
    const int64_t uid = plan->graph.userUids[i];
    void *p = argFor(uid, args, sc, ws, plan, &name);
    const int64_t align = uidAlign(band, uid);
    CPA_REQUIRE(p != NULL, "%s must not be NULL for this plan", name);
    /* The alignment each tensor was declared with (cuDNN may use vector accesses). */
    CPA_REQUIRE(isHostScalar(uid) || ((uintptr_t)p % (uintptr_t)align) == 0, "%s = %p%s must be %lld-byte aligned",
                name, p, at, (long long)align);
    uids[i] = uid;
    ptrs[i] = p;
  }
  void *cudnnWs = plan->cudnnWorkspace ? ws + plan->softmaxSumBytes + plan->dqAccumBytes : NULL;

  cudnnBackendDescriptor_t pack = NULL;
  cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
  const char *what = "cudnnBackendCreateDescriptor(variant pack)";
  if (st == CUDNN_STATUS_SUCCESS) {
    what = "cudnnBackendSetAttribute(variant pack)";
    st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &cudnnWs);
    if (st == CUDNN_STATUS_SUCCESS) {
      what = "cudnnBackendFinalize(variant pack)";
      st = cudnnBackendFinalize(pack);
    }
  }
  cpattnResult_t res = cpattnSuccess;
  if (st == CUDNN_STATUS_SUCCESS) {
    pthread_mutex_lock(&cache->mutex);
    what = "cudnnSetStream";
    st = cudnnSetStream(cache->handle, stream);
    if (st == CUDNN_STATUS_SUCCESS && plan->zeroDqAccum) {
      /* cuDNN < 9.6 accumulates into dQ_accum without clearing it first. */
      cudaError_t ce = cudaMemsetAsync(ws + plan->softmaxSumBytes, 0, plan->dqAccumBytes, stream);
      if (ce != cudaSuccess)
        res = cpaError(cpattnCudaError, "cudaMemsetAsync(dQ_accum, %zu B) failed: %s", plan->dqAccumBytes,
                       cudaGetErrorString(ce));
    }
    if (st == CUDNN_STATUS_SUCCESS && res == cpattnSuccess) {
      what = "cudnnBackendExecute";
      st = cudnnBackendExecute(cache->handle, plan->plan, pack);
    }
    pthread_mutex_unlock(&cache->mutex);
  }
  if (st != CUDNN_STATUS_SUCCESS && res == cpattnSuccess) {
    char last[512], desc[160];
    cudnnGetLastErrorString(last, sizeof last);
    describeKey(&plan->key, desc, sizeof desc);
    res = cpaError(cpattnCudnnError, "%s failed for %s%s: %s (%d): %s", what, desc, at, cudnnGetErrorString(st),
                   (int)st, last);
  }
  if (pack) cudnnBackendDestroyDescriptor(pack);
  return res;
}

/* The arguments of batch entry e of a BAND call, whose graph has b = 1: every per-entry
 * device array advances by e, fixed-length tensors by e batch strides, packed stats by
 * e * h_q * s_q. Pointer arithmetic only, no device access. */
static const void *advance(const void *p, int64_t bytes) {
  return p ? (const void *)((const char *)p + bytes) : NULL;
}

static cpaSdpaArgs entryArgs(const cpaSdpaKey *k, const cpaSdpaArgs *a, int64_t e) {
  cpaSdpaArgs x = *a;
  const int64_t es = 2; /* bf16 / fp16 */
  x.delta = a->delta ? a->delta + e : NULL;
  if (k->ragged) {
    /* The offsets keep addressing from the same base pointers: entry e's are off[e]. */
    x.seq_q = a->seq_q ? a->seq_q + e : NULL;
    x.seq_kv = a->seq_kv ? a->seq_kv + e : NULL;
    x.off_q = a->off_q ? a->off_q + e : NULL;
    x.off_k = a->off_k ? a->off_k + e : NULL;
    x.off_v = a->off_v ? a->off_v + e : NULL;
    x.off_o = a->off_o ? a->off_o + e : NULL;
    x.off_stats = a->off_stats ? a->off_stats + e : NULL;
    x.off_dout = a->off_dout ? a->off_dout + e : NULL;
    x.off_dq = a->off_dq ? a->off_dq + e : NULL;
    x.off_dk = a->off_dk ? a->off_dk + e : NULL;
    x.off_dv = a->off_dv ? a->off_dv + e : NULL;
    return x;
  }
  x.q = advance(a->q, e * k->q.stride[0] * es);
  x.k = advance(a->k, e * k->k.stride[0] * es);
  x.v = advance(a->v, e * k->v.stride[0] * es);
  x.o = (void *)advance(a->o, e * k->o.stride[0] * es);
  x.stats = a->stats ? a->stats + e * k->h_q * k->s_q : NULL;
  if (k->backward) {
    x.dout = advance(a->dout, e * k->dout.stride[0] * es);
    x.dq = (void *)advance(a->dq, e * k->dq.stride[0] * es);
    x.dk = (void *)advance(a->dk, e * k->dk.stride[0] * es);
    x.dv = (void *)advance(a->dv, e * k->dv.stride[0] * es);
  }
  return x;
}

cpattnResult_t cpaSdpaRun(cpaSdpaCache *cache, const cpaSdpaPlan *plan, const cpaSdpaArgs *args,
                          struct CUstream_st *stream) {
  RunScalars sc;
  CPA_REQUIRE(cache != NULL, "cache must not be NULL");
  CPA_REQUIRE(plan != NULL, "plan must not be NULL");
  CPA_REQUIRE(args != NULL, "args must not be NULL");
  const size_t wsBytes = cpaSdpaPlanWorkspaceSize(plan);
  const char *ws = (const char *)args->workspace;
  CPA_REQUIRE(wsBytes == 0 || ws != NULL, "args->workspace is NULL but the plan needs %zu bytes", wsBytes);
  CPA_REQUIRE(((uintptr_t)ws % SDPA_SCRATCH_ALIGN) == 0, "args->workspace = %p must be %d-byte aligned",
              (const void *)ws, SDPA_SCRATCH_ALIGN);

  sc.scale = args->scale;
  /* -inf (not FLT_MAX): a row that sees no key then gets Stats = -inf and O = 0 (measured
   * on 9.19), which the LSE merge treats as weight 0. */
  sc.negInf = -INFINITY;
  sc.one = 1.0f;
  sc.bandHi = clampBand(args->band_hi);
  sc.bandLo1 = clampBand(args->band_lo) + 1;

  if (plan->launches <= 1) return runLaunch(cache, plan, args, &sc, stream, -1);
  /* BAND: one launch per batch entry, in stream order (they share the scratch). */
  for (int64_t e = 0; e < plan->launches; ++e) {
    cpaSdpaArgs x = entryArgs(&plan->key, args, e);
    CPA_CHECK(runLaunch(cache, plan, &x, &sc, stream, e));
  }
  return cpattnSuccess;
}
