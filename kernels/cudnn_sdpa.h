/*
 * cudnn_sdpa.h -- fused attention for one chunk pair through cuDNN's backend C API.
 *
 * The graphs are cuDNN's "composite" SDPA pattern (matmul, scale, masks, softmax with
 * log-sum-exp statistics, matmul; and its backward), built from plain C descriptors;
 * ../shared/research/cudnn-from-c.md explains the pattern and what was measured. The
 * module knows nothing of ranks or schedules: it runs attention of some query rows
 * against some key rows, with one of three masks, and returns O and the fp32 LSE.
 *
 * Plans are built once per shape (a cpaSdpaKey) and cached; building is slow (50 ms to
 * 1 s), so the CUDA executor builds every plan its schedule needs at cpattnPlanCreate and
 * forward/backward only execute.
 *
 * Tensor convention: every tensor is described in logical order (b, h, s, d) with element
 * strides; stride[3] must be 1. K and V are given as K and V (not transposed); the module
 * declares the transposed views cuDNN wants.
 *
 * Masks (row i, col j are 0-based within the call's query and key rows of one batch entry):
 *   NONE    every key.
 *   CAUSAL  j <= i (top-left diagonal). The only causal form whose *backward* skips the
 *           masked tiles on cuDNN 9.19 Hopper; the engine reduces every causal chunk pair
 *           to NONE and CAUSAL calls.
 *   BAND    with r = i + delta[b]:  r - band_lo <= j <= r + band_hi, where a bound is
 *           omitted from the graph when the key says so. delta is a device int32 tensor
 *           (b,1,1,1) (global position of query row 0 minus that of key row 0), band_lo /
 *           band_hi are by-value scalars. Correct for any offset; the backward costs what
 *           an unmasked backward costs.
 *
 * Ragged (THD) calls: b entries, each its own sequence of seq_q[e] query rows and
 * seq_kv[e] key rows (0 allowed), placed by per-tensor element offsets (int64, b+1
 * entries: row_start * row_stride, so offsets[b] is one past the last entry); s_q and s_kv
 * in the key are the maxima over entries. Stats are token-major (row r, head h at
 * r * h_q + h, placed by their own offsets = row_start * h_q). Non-ragged stats are packed
 * (b, h_q, s_q) fp32.
 */
#ifndef CPATTN_KERNELS_CUDNN_SDPA_H_
#define CPATTN_KERNELS_CUDNN_SDPA_H_

#include <stddef.h>
#include <stdint.h>

#include "cpattn.h"

struct cudnnContext; /* cudnnHandle_t */
struct CUstream_st;  /* cudaStream_t  */

typedef enum { CPA_SDPA_MASK_NONE = 0, CPA_SDPA_MASK_CAUSAL = 1, CPA_SDPA_MASK_BAND = 2 } cpaSdpaMask;

typedef struct {
  int64_t stride[4]; /* logical (b, h, s, d) element strides; stride[3] == 1 */
} cpaSdpaLayout;

/* Everything that selects a cuDNN plan. Zero the struct before filling it (it is hashed
 * and compared as bytes). */
typedef struct {
  int backward;      /* 0 forward, 1 backward                                          */
  int io;            /* cpattnBFloat16 or cpattnFloat16                                */
  int64_t b, h_q, h_kv, s_q, s_kv, d_qk, d_v;
  cpaSdpaLayout q, k, v, o;   /* forward and backward                                   */
  cpaSdpaLayout dout, dq, dk, dv; /* backward only (zero in a forward key)              */
  int ragged;        /* THD: offsets + seq lens on every tensor, padding mask            */
  int mask;          /* cpaSdpaMask                                                    */
  int band_has_lo;   /* BAND: include the  r - band_lo <= j  bound                      */
  int band_has_hi;   /* BAND: include the  j <= r + band_hi  bound                      */
  int deterministic; /* backward: cuDNN's deterministic form (no dQ atomics; workspace
                      * grows as b * h * s_q * s_kv * 2 bytes)                          */
} cpaSdpaKey;

typedef struct cpaSdpaPlan cpaSdpaPlan;   /* a finalized cuDNN execution plan + sizes    */
typedef struct cpaSdpaCache cpaSdpaCache; /* plans by key, for one cudnnHandle_t        */

/* Per-execute data. Device pointers unless said otherwise. */
typedef struct {
  const void *q, *k, *v;
  void *o;                /* forward output; backward input                            */
  float *stats;           /* forward output (LSE); backward input (the final LSE)      */
  const void *dout;       /* backward                                                  */
  void *dq, *dk, *dv;     /* backward outputs (overwritten)                            */
  float scale;            /* by value                                                  */
  /* ragged only */
  const int32_t *seq_q, *seq_kv;                /* (b)                                 */
  const int64_t *off_q, *off_k, *off_v, *off_o; /* (b+1) element offsets              */
  const int64_t *off_stats;                     /* (b+1) element offsets of stats      */
  const int64_t *off_dout, *off_dq, *off_dk, *off_dv; /* backward, (b+1)              */
  /* BAND only */
  const int32_t *delta;   /* (b)                                                       */
  int32_t band_lo, band_hi; /* by value                                                */
  void *workspace;        /* at least cpaSdpaPlanWorkspaceSize bytes, 256-byte aligned */
} cpaSdpaArgs;

/* Checks the runtime cuDNN version (cudnnGetVersion). Returns cpattnNotSupported with a
 * message for versions known to be broken for SDPA (9.10.0 and 9.10.1, and 9.14.x when
 * needBand is set: its sliding-window bug); cpattnSuccess otherwise. */
cpattnResult_t cpaSdpaCheckVersion(int needBand);

/* A cache bound to one cuDNN handle (the caller owns the handle and must keep it alive
 * longer than the cache). Thread-safe. */
cpattnResult_t cpaSdpaCacheCreate(cpaSdpaCache **cache, struct cudnnContext *handle);
void cpaSdpaCacheDestroy(cpaSdpaCache *cache);

/* Returns the plan for key, building it on first use. cpattnNotSupported when cuDNN has
 * no engine for the graph (the message says which key); the pointer stays valid until
 * the cache is destroyed. */
cpattnResult_t cpaSdpaCacheGet(cpaSdpaCache *cache, const cpaSdpaKey *key, const cpaSdpaPlan **plan);

/* Bytes of workspace one execute of this plan needs (cuDNN's own workspace plus the
 * fp32 scratch the backward graph exposes). */
size_t cpaSdpaPlanWorkspaceSize(const cpaSdpaPlan *plan);

/* A one-line description ("fwd bf16 b=1 hq=32 ... causal engine 6 ws 0 B"), for logs. */
void cpaSdpaPlanDescribe(const cpaSdpaPlan *plan, char *buf, size_t len);

/* Enqueues the plan on stream (cudnnSetStream + execute). No allocation of device memory,
 * no synchronization; safe to capture in a CUDA graph. */
cpattnResult_t cpaSdpaRun(cpaSdpaCache *cache, const cpaSdpaPlan *plan, const cpaSdpaArgs *args,
                          struct CUstream_st *stream);

/* Builds and finalizes only the cuDNN operation graph for key, with no handle and no GPU
 * (cuDNN >= 9.8 builds graphs device-less), then frees it. It checks that the graph is
 * well formed (shapes, types, op wiring), not that an engine exists for it: that needs a
 * GPU (cpaSdpaCacheGet). For CI machines without a GPU. cpattnInvalidArgument for a bad
 * key (the message names the field), cpattnNotSupported for a valid key cuDNN cannot run
 * (or a runtime older than 9.8), cpattnCudnnError when cuDNN rejects the graph. */
cpattnResult_t cpaSdpaCheckGraph(const cpaSdpaKey *key);

/* Notes on cpaSdpaRun (implementation facts a caller relies on):
 *   - every device pointer in cpaSdpaArgs that the plan uses must be 16-byte aligned (the
 *     graph declares 16-byte alignment to cuDNN), except, for BAND plans, delta and the
 *     seq lens (4 bytes), the offsets (8 bytes) and stats (4 bytes);
 *   - BAND plans run one cuDNN launch per batch entry (b launches in stream order): on
 *     cuDNN 9.19 the fused engines ignore per-entry (b,1,1,1) tensors in the mask index
 *     arithmetic, so delta reaches them as the device scalar delta + e. Keep BAND for
 *     rare calls or small b;
 *   - the workspace holds, in order, the backward's fp32 softmax_sum (b * h_q * s_q) and
 *     dQ_accum (b * h_q * s_q * d_qk, absent when deterministic), each rounded up to 256
 *     bytes (b = 1 for BAND plans), then cuDNN's own workspace; ragged calls size them by
 *     b * s_q too;
 *   - band_lo and band_hi are clamped to [-2^30, 2^30] (beyond that a bound is moot), and
 *     i + delta +- band must stay within int32. */

#endif /* CPATTN_KERNELS_CUDNN_SDPA_H_ */
