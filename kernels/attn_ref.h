/*
 * attn_ref.h -- CPU reference attention: the host executor's per-chunk kernel and the
 * oracle of every test.
 *
 * One "block" is n_q query rows against n_k key rows of one sequence. Rows are addressed
 * through strides, so any layout (BSHD, SBHD, THD, a chunk of any of them, a packed
 * internal buffer) is a pointer plus (row, head) strides; the innermost (dim) stride is 1.
 * Heads: n_hq query heads, n_hkv key/value heads, query head h uses kv head h / (n_hq /
 * n_hkv) (MHA, GQA, MQA).
 *
 * Mask: query row i (0-based in the block) may see key row j iff
 *        diag_lo <= j - i <= diag_hi
 * with CPA_DIAG_UNBOUNDED_LO / _HI for "no bound". So
 *   no mask                          lo = UNBOUNDED_LO, hi = UNBOUNDED_HI
 *   causal, top-left                 lo = UNBOUNDED_LO, hi = 0
 *   causal, query block starting d   lo = UNBOUNDED_LO, hi = d   (d = q_start - k_start,
 *     positions after the key block                                in global positions)
 *   sliding window (wl, wr) around   lo = d - wl,       hi = d + wr
 *     global positions, same d
 * A row that sees no key gets lse = -inf and o = 0 (never NaN).
 *
 * Math is fp32 with fp64 accumulation of the softmax sums and of the output rows, so the
 * result does not depend on how the key range is split (which is what lets the merge of
 * partial results agree with whole-sequence attention to ~1e-6 relative). The LSE is stored
 * in fp32, so with very peaked scores a merge step is good to about |lse| * 2^-24.
 *
 * Outputs never alias inputs. The kernels return nothing: a shape outside the rules (head
 * dim outside 1..256, n_hkv not dividing n_hq) fills the outputs with NaN instead of
 * overrunning anything, so a caller that validated its shapes never sees it.
 */
#ifndef CPATTN_KERNELS_ATTN_REF_H_
#define CPATTN_KERNELS_ATTN_REF_H_

#include <stdint.h>

#include "cpattn.h"

#define CPA_DIAG_UNBOUNDED_LO INT64_MIN
#define CPA_DIAG_UNBOUNDED_HI INT64_MAX

/* A strided view of rows of heads: element (row r, head h, d) is at
 * data + r * row_stride + h * head_stride + d (in elements of dtype). */
typedef struct {
  const void *data;
  cpattnDataType_t dtype; /* cpattnFloat32 or cpattnBFloat16 */
  int64_t row_stride;
  int64_t head_stride;
} cpaRefIn;

typedef struct {
  void *data;
  cpattnDataType_t dtype; /* outputs: cpattnFloat32 (the host executor's partials) or
                           * cpattnBFloat16 (rounded once, to nearest even)          */
  int64_t row_stride;
  int64_t head_stride;
} cpaRefOut;

typedef struct {
  int64_t n_q, n_k;        /* rows in the block (either may be 0: nothing to do)      */
  int n_hq, n_hkv;         /* n_hq % n_hkv == 0                                       */
  int d_qk, d_v;           /* head dims, 1..256                                       */
  float scale;             /* softmax scale                                           */
  int64_t diag_lo, diag_hi;
} cpaRefShape;

/* Forward: o (n_q x n_hq x d_v) and lse (fp32, element (r, h) at lse + r*lse_row_stride +
 * h*lse_head_stride). Overwrites o and lse for the block's rows. */
void cpaRefAttnFwd(const cpaRefShape *s, cpaRefIn q, cpaRefIn k, cpaRefIn v, cpaRefOut o, float *lse,
                   int64_t lse_row_stride, int64_t lse_head_stride);

/* Backward for one block, given the *final* o and lse of the query rows (the merged result
 * over all key blocks, not this block's partial): with P = exp(scale*q k^T - lse) (masked
 * entries 0), D_i = rowsum(do_i * o_i):
 *   dv += P^T do,  dS = P * (do v^T - D) * scale,  dq += dS k,  dk += dS^T q.
 * dq, dk, dv are fp32; accumulate = 0 overwrites all n_q dQ rows and all n_k dK/dV rows
 * (keys no row sees get zeros), 1 adds to them (keys no row sees stay untouched). Rows whose
 * lse is -inf contribute nothing (no NaN). */
void cpaRefAttnBwd(const cpaRefShape *s, cpaRefIn q, cpaRefIn k, cpaRefIn v, cpaRefIn o, cpaRefIn dout,
                   const float *lse, int64_t lse_row_stride, int64_t lse_head_stride, float *dq,
                   int64_t dq_row_stride, int64_t dq_head_stride, float *dk, int64_t dk_row_stride,
                   int64_t dk_head_stride, float *dv, int64_t dv_row_stride, int64_t dv_head_stride,
                   int accumulate);

/* Merge a partial result (o_part, lse_part) into an accumulator (o_acc, lse_acc), in place,
 * for n_rows rows of n_heads heads of d_v values, all fp32:
 *   lse = log(exp(lse_acc) + exp(lse_part))   (computed stably: max + log1p(exp(-|diff|)))
 *   o   = o_acc * exp(lse_acc - lse) + o_part * exp(lse_part - lse)
 * Either side may be -inf (weight 0) and its o is then never read, so an accumulator may
 * start as (lse = -inf, o = anything); both -inf leaves (o = 0, lse = -inf). Never NaN.
 * The accumulator and the part may be the same memory (the merge is element-wise). */
void cpaRefMerge(int64_t n_rows, int n_heads, int d_v, float *o_acc, int64_t o_acc_row_stride,
                 int64_t o_acc_head_stride, float *lse_acc, int64_t lse_acc_row_stride,
                 int64_t lse_acc_head_stride, const float *o_part, int64_t o_part_row_stride,
                 int64_t o_part_head_stride, const float *lse_part, int64_t lse_part_row_stride,
                 int64_t lse_part_head_stride);

/* bf16 <-> fp32 (round to nearest even; NaN stays NaN). */
uint16_t cpaFloatToBf16(float f);
float cpaBf16ToFloat(uint16_t h);

/* Reads element i of a buffer of dtype fp32 or bf16 as float. */
static inline float cpaRefLoad(const void *p, cpattnDataType_t dt, int64_t i) {
  return dt == cpattnFloat32 ? ((const float *)p)[i] : cpaBf16ToFloat(((const uint16_t *)p)[i]);
}

#endif /* CPATTN_KERNELS_ATTN_REF_H_ */
