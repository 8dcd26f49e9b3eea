/*
 * cuda_ops.h -- the CUDA kernels the executor needs around cuDNN: fills, strided copies
 * with dtype conversion and row maps (packing, zigzag / all-to-all permutes, final
 * rounding), fp32 accumulation, the LSE merge of partial results, and the derivation of
 * THD ragged offsets. C interface; each call enqueues one kernel on `stream` and returns
 * cudaGetLastError() as an int (0 = success).
 *
 * Views are the engine's (executor.h): element (t, h, d) of a view lives at
 *   data + (t / rpb) * bs + (t % rpb) * rs + h * hs + d.
 */
#ifndef CPATTN_KERNELS_CUDA_OPS_H_
#define CPATTN_KERNELS_CUDA_OPS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st;

/* dtype codes: the values of cpattnDataType_t (0 fp32, 1 bf16, 2 fp16). */
typedef struct {
  void *data;
  int dtype;
  int heads, dim;
  int64_t rpb, bs, rs, hs;
} cpaCuView;

/* A run of rows of a view and where their LSE values live in a stats buffer:
 * stats of (row row0 + i, head h) at stats_off + i * stats_rs + h * stats_hs. */
typedef struct {
  int64_t row0, n;
  int64_t stats_off, stats_rs, stats_hs;
} cpaCuRange;

int cpaCuFill(const cpaCuView *dst, int64_t nrows, float value, struct CUstream_st *stream);

/* dst row t = src row map[t] (inverse = 0) or dst row map[t] = src row t (inverse = 1);
 * map NULL: identity. Converts between dtypes. */
int cpaCuCopy(const cpaCuView *dst, const cpaCuView *src, int64_t nrows, const int64_t *map, int inverse,
              struct CUstream_st *stream);

/* dst (fp32) row t += src row t. */
int cpaCuAdd(const cpaCuView *dst, const cpaCuView *src, int64_t nrows, struct CUstream_st *stream);

/* First/last-touch routing of one call's merge or accumulation (executor.h). Row t of
 * the ranges is row r = t % rpb of its batch element, rpb the accumulator's rows per
 * batch; with `allow` & CPA_CU_FIRST and first[r] == call the row is the call's first
 * touch, with `allow` & CPA_CU_LAST and last[r] == call its last (first, last: device
 * int32 arrays of rpb entries; last may be NULL where allow has no CPA_CU_LAST).
 * allow = 0: every row plain, the arrays unused. */
#define CPA_CU_FIRST 1
#define CPA_CU_LAST 2
typedef struct {
  const int32_t *first, *last;
  int call;
  int allow;
  cpaCuView out, out_lse; /* where last rows go (out_lse: merge only)                   */
} cpaCuRoute;

/* For the rows of `nranges` ranges (device array; prefix[i] = rows before range i, device,
 * nranges+1 entries; total = prefix[nranges]):
 *   merge: (acc_o, acc_lse) = LSE-merge of themselves with (part, stats); a first row
 *     merges with (0, -inf) without reading the accumulator, a last row writes
 *     route.out / route.out_lse (any dtype, strided) instead of the accumulator
 *   accumulate: acc += part; a first row stores acc = part, a last row writes
 *     route.out = acc + part (= part if also first) and leaves acc alone
 * acc_o and acc are fp32 views, or views of the output dtype when they are the output
 * itself (the engine's light accumulation: at most a first and a last touch per row);
 * acc_lse is an fp32 view with dim 1. */
int cpaCuMerge(const cpaCuView *acc_o, const cpaCuView *acc_lse, const cpaCuView *part, const float *stats,
               const cpaCuRange *ranges, const int64_t *prefix, int nranges, int64_t total, const cpaCuRoute *route,
               struct CUstream_st *stream);
int cpaCuAccumulate(const cpaCuView *acc, const cpaCuView *part, const cpaCuRange *ranges, const int64_t *prefix,
                    int nranges, int64_t total, const cpaCuRoute *route, struct CUstream_st *stream);

/* THD ragged metadata of one call: from entry rows (device arrays of n entries: first
 * row and row count on each side, and delta), writes for a plan of b >= n entries
 *   seq_q[e], seq_kv[e] (int32; 0 for padding entries e >= n), delta32[e],
 *   off[k][e] = row_start * strides[k] for tensor k in [0, ntensors), e in [0, b]
 * where tensor k uses the q-side rows if is_q[k] and the k-side rows otherwise; the
 * entry past the last (and padding entries) get the end of the last entry. */
#define CPA_CU_MAX_RAGGED 10
typedef struct {
  int ntensors;
  int64_t strides[CPA_CU_MAX_RAGGED];
  int is_q[CPA_CU_MAX_RAGGED];
  int64_t *off[CPA_CU_MAX_RAGGED];
} cpaCuRaggedOut;

int cpaCuRagged(const int64_t *q_row, const int64_t *q_len, const int64_t *k_row, const int64_t *k_len,
                const int64_t *delta, int n, int b, int32_t *seq_q, int32_t *seq_kv, int32_t *delta32,
                const cpaCuRaggedOut *out, struct CUstream_st *stream);

/* fill an int32 array with one value (BAND delta for BSHD calls, b copies) */
int cpaCuFillInt32(int32_t *dst, int n, int32_t value, struct CUstream_st *stream);

#ifdef __cplusplus
}
#endif

#endif /* CPATTN_KERNELS_CUDA_OPS_H_ */
