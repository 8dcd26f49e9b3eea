/*
 * executor.h -- what the engine asks of an executor. Two implementations: the host one
 * (kernels/exec_host.c: CPU reference kernels, host memory) and the CUDA one
 * (kernels/exec_cuda.c: cuDNN per call, CUDA kernels, device memory, one stream).
 *
 * The engine owns the schedule and the workspace layout; it walks the steps and calls
 * these operations in order. An executor runs them in that order (the CUDA one enqueues
 * them on the call's stream). Keeping the executors this thin is what makes the host
 * executor a real test of the GPU path: the same engine decides every call, buffer and
 * exchange for both.
 *
 * Views. Every buffer the engine passes is a cpaView: rows of heads of `dim` values.
 * Rows are numbered t = b * rows_per_batch + r (b: batch element for BSHD/SBHD; THD has
 * one "batch" holding every row), and element (t, h, d) lives at
 *     data + b * batch_stride + r * row_stride + h * head_stride + d      (elements)
 * so a user's BSHD, SBHD or THD tensor, a head slice of it, an LSE in any layout (dim 1)
 * and the engine's packed buffers are all views.
 */
#ifndef CPATTN_SRC_EXECUTOR_H_
#define CPATTN_SRC_EXECUTOR_H_

#include <stddef.h>
#include <stdint.h>

#include "problem.h"
#include "schedule.h"

typedef struct {
  void *data;
  cpattnDataType_t dtype;
  int64_t rows_per_batch;
  int64_t batch_stride, row_stride, head_stride;
  int heads, dim;
} cpaView;

static inline int64_t cpaViewOffset(const cpaView *v, int64_t t) {
  return (t / v->rows_per_batch) * v->batch_stride + (t % v->rows_per_batch) * v->row_stride;
}

/* A row map known at plan time (schedule.h's permute maps), uploaded by the executor
 * once: id is its index in the engine's list, host its values (for the host executor). */
typedef struct {
  int id;
  const int64_t *host;
  int64_t n;
} cpaRowMap;

struct cpaEngine;

typedef struct cpaExecOps {
  const char *name;
  /* Bytes of one element of the partial outputs (o_part, dq/dk/dv parts) this executor
   * writes: 4 for the host (fp32 partials), the io dtype for cuDNN. */
  size_t (*part_elem_bytes)(void *st);

  /* Plan time. `dry` brackets the engine's dry run of forward and backward (see
   * engine.h): between dry_begin and dry_end the executor records what each call needs
   * (cuDNN plans, metadata) instead of running anything, and dry_end returns the extra
   * workspace the executor wants for itself (placed by the engine, passed to begin).
   * The engine's row maps and first/last-touch tables (eng->touch) are final by
   * dry_begin; an executor keeps or uploads them there or at dry_end. */
  cpattnResult_t (*dry_begin)(void *st, const struct cpaEngine *eng);
  cpattnResult_t (*dry_end)(void *st, size_t *extra_workspace);

  /* Call time: binds the stream and the executor's own slice of the workspace. */
  cpattnResult_t (*begin)(void *st, struct CUstream_st *stream, void *exec_ws);
  /* End of a forward or backward: checks for asynchronous errors where it can without
   * synchronizing (the CUDA one checks the last launch error). */
  cpattnResult_t (*end)(void *st);

  /* dst rows [0, nrows) of every head and dim set to value. */
  cpattnResult_t (*fill)(void *st, const cpaView *dst, int64_t nrows, float value);
  /* dst row t = src row (map ? map[t] : t) for t in [0, nrows), converting dtypes;
   * heads and dim of dst (src must have at least as many). With inverse = 1 the map is
   * applied on the destination side instead: dst row map[t] = src row t. */
  cpattnResult_t (*copy)(void *st, const cpaView *dst, const cpaView *src, int64_t nrows, const cpaRowMap *map,
                         int inverse);
  /* dst (fp32) row t += src row t, for t in [0, nrows). */
  cpattnResult_t (*add)(void *st, const cpaView *dst, const cpaView *src, int64_t nrows);

  /* Attention of one call: writes o_part (query rows of the call's entries, in the rows
   * of the query set) and its LSE into stats (executor-defined layout, at most
   * rows*heads floats, meaningful only to merge). */
  cpattnResult_t (*attn_fwd)(void *st, const cpaCall *call, const cpaView *q, const cpaView *k, const cpaView *v,
                             const cpaView *o_part, float *stats);
  /* acc_o, acc_lse (fp32 views) = LSE-merge of themselves with the call's o_part/stats,
   * on the call's query rows only.
   * Routing (`allow`, CPA_TOUCH_* of schedule.h; 0 = the plain merge on every row): a
   * query row r (row t of the views, r = t % acc_o->rows_per_batch) whose first call is
   * this one (the engine's cpaTouch q_first[r] == call->id) and allow has FIRST is merged
   * with an empty accumulator (lse -inf: acc_o and acc_lse are not read there, only
   * written); a row whose last call is this one (q_last) with allow LAST goes to out_o
   * (any dtype) and out_lse instead of the accumulator, which is then not written. */
  cpattnResult_t (*merge)(void *st, const cpaCall *call, int allow, const cpaView *acc_o, const cpaView *acc_lse,
                          const cpaView *o_part, const float *stats, const cpaView *out_o, const cpaView *out_lse);
  /* Gradient of one call given the final o and lse (views over the query set): writes
   * dq_part on the call's query rows and dk_part, dv_part on its key rows. */
  cpattnResult_t (*attn_bwd)(void *st, const cpaCall *call, const cpaView *q, const cpaView *k, const cpaView *v,
                             const cpaView *o, const cpaView *dout, const cpaView *lse, const cpaView *dq_part,
                             const cpaView *dk_part, const cpaView *dv_part);
  /* acc (fp32) += part on the call's query rows (side 0) or key rows (side 1).
   * Routing as in merge, row r = t % acc->rows_per_batch: a first row (allow FIRST;
   * side 0: cpaTouch q_first, side 1: k_first, the key rows of step 0's block) stores
   * acc = part without reading acc; a last row (allow LAST, side 0 only: q_last) writes
   * out = acc + part (part alone if also first) in out's dtype and leaves acc alone. */
  cpattnResult_t (*accumulate)(void *st, const cpaCall *call, int side, int allow, const cpaView *acc,
                               const cpaView *part, const cpaView *out);

  void (*destroy)(void *st);
} cpaExecOps;

typedef struct {
  const cpaExecOps *ops;
  void *st;
} cpaExecutor;

/* Makers (each returns cpattnNotSupported when its executor is not built in). */
cpattnResult_t cpaExecHostCreate(cpaExecutor *ex, const cpaProblem *pb);
cpattnResult_t cpaExecCudaCreate(cpaExecutor *ex, const cpaProblem *pb, cpattnComm_t comm);

#endif /* CPATTN_SRC_EXECUTOR_H_ */
