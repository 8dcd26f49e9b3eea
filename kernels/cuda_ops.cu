/*
 * cuda_ops.cu -- kernels around cuDNN (see cuda_ops.h). All of them are memory-bound
 * and simple; what matters is that every index is 64-bit (2M-token sequences overflow
 * int32 element offsets), that threads walk the contiguous head dim so accesses
 * coalesce, and that no kernel needs anything allocated or synchronized.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda_ops.h"

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load(const void *p, int dt, int64_t i) {
  if (dt == 0) return static_cast<const float *>(p)[i];
  if (dt == 1) return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
  return __half2float(static_cast<const __half *>(p)[i]);
}

__device__ __forceinline__ void store(void *p, int dt, int64_t i, float x) {
  if (dt == 0) static_cast<float *>(p)[i] = x;
  else if (dt == 1) static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(x);
  else static_cast<__half *>(p)[i] = __float2half_rn(x);
}

__device__ __forceinline__ int64_t row_off(const cpaCuView &v, int64_t t) {
  return (t / v.rpb) * v.bs + (t % v.rpb) * v.rs;
}

/* The element-wise kernels give one warp to each (row, head) pair and let its lanes walk
 * the head dim: the 64-bit row arithmetic (a division by rows-per-batch) is done once per
 * pair instead of once per element, where it made these kernels compute-bound. */
#define FOR_EACH_ROW_HEAD(nrows, heads, t, h)                                                              \
  for (int64_t w_ = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32,                     \
               n_ = (nrows) * (heads);                                                                   \
       w_ < n_; w_ += static_cast<int64_t>(gridDim.x) * blockDim.x / 32)                                    \
    for (int64_t t = w_ / (heads), h = w_ % (heads), once_ = 1; once_; once_ = 0)

int warp_blocks(int64_t pairs) {
  int64_t b = (pairs * 32 + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

__global__ void fill_kernel(cpaCuView dst, int64_t nrows, float value) {
  int lane = threadIdx.x & 31;
  FOR_EACH_ROW_HEAD(nrows, dst.heads, t, h) {
    int64_t o = row_off(dst, t) + h * dst.hs;
    for (int d = lane; d < dst.dim; d += 32) store(dst.data, dst.dtype, o + d, value);
  }
}

__global__ void copy_kernel(cpaCuView dst, cpaCuView src, int64_t nrows, const int64_t *map, int inverse) {
  int lane = threadIdx.x & 31;
  FOR_EACH_ROW_HEAD(nrows, dst.heads, t, h) {
    int64_t ts = map && !inverse ? map[t] : t, td = map && inverse ? map[t] : t;
    int64_t od = row_off(dst, td) + h * dst.hs, os = row_off(src, ts) + h * src.hs;
    for (int d = lane; d < dst.dim; d += 32) store(dst.data, dst.dtype, od + d, load(src.data, src.dtype, os + d));
  }
}

__global__ void add_kernel(cpaCuView dst, cpaCuView src, int64_t nrows) {
  int lane = threadIdx.x & 31;
  FOR_EACH_ROW_HEAD(nrows, dst.heads, t, h) {
    float *p = static_cast<float *>(dst.data) + row_off(dst, t) + h * dst.hs;
    int64_t os = row_off(src, t) + h * src.hs;
    for (int d = lane; d < dst.dim; d += 32) p[d] += load(src.data, src.dtype, os + d);
  }
}

/* Which range global row g of the concatenated ranges falls in. */
__device__ __forceinline__ int find_range(const int64_t *prefix, int nranges, int64_t g) {
  int lo = 0, hi = nranges - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= g) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/* CPA_CU_FIRST / CPA_CU_LAST for row t of a call (cuda_ops.h); warp-uniform. */
__device__ __forceinline__ int route_mode(const cpaCuRoute &rt, int64_t t, int64_t rpb) {
  if (!rt.allow) return 0;
  int64_t r = t % rpb;
  int mode = 0;
  if ((rt.allow & CPA_CU_FIRST) && rt.first[r] == rt.call) mode |= CPA_CU_FIRST;
  if ((rt.allow & CPA_CU_LAST) && rt.last[r] == rt.call) mode |= CPA_CU_LAST;
  return mode;
}

/* One warp per (row, head): the lanes share the two LSE values and walk the head dim.
 * The destination (accumulator or route.out) is chosen per row, so a call may finish
 * some of its rows and leave others to later calls. */
__global__ void merge_kernel(cpaCuView acc_o, cpaCuView acc_lse, cpaCuView part, const float *stats,
                             const cpaCuRange *ranges, const int64_t *prefix, int nranges, int64_t total,
                             cpaCuRoute rt) {
  int heads = acc_o.heads;
  int64_t warps = total * heads;
  int lane = threadIdx.x & 31;
  for (int64_t w = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; w < warps;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    int64_t g = w / heads;
    int h = static_cast<int>(w % heads);
    int ri = find_range(prefix, nranges, g);
    const cpaCuRange rg = ranges[ri];
    int64_t i = g - prefix[ri], t = rg.row0 + i;
    int mode = route_mode(rt, t, acc_o.rpb);
    float *lse_p = static_cast<float *>(acc_lse.data) + row_off(acc_lse, t) + h * acc_lse.hs;
    float l2 = stats[rg.stats_off + i * rg.stats_rs + h * rg.stats_hs];
    float w1 = 0.f, w2 = 0.f, l = -INFINITY;
    if (mode & CPA_CU_FIRST) {
      /* Merged with (0, -inf): the part itself, exactly; the accumulator is not read. */
      l = l2;
      w2 = l2 == -INFINITY ? 0.f : 1.f;
    } else {
      float l1 = *lse_p;
      /* Stable in every case: a side at -inf gets weight 0, both -inf keeps (0, -inf). */
      float m = fmaxf(l1, l2);
      if (m != -INFINITY) {
        float e1 = __expf(l1 - m), e2 = __expf(l2 - m), s = e1 + e2;
        l = m + __logf(s);
        w1 = e1 / s;
        w2 = e2 / s;
      }
    }
    int64_t oa = row_off(acc_o, t) + h * acc_o.hs; /* read if w1 > 0 */
    int64_t po = row_off(part, t) + h * part.hs;
    /* Last touch: the merged row goes to the final output (e.g. the user's bf16 O through
     * its strides), never back to the accumulator. */
    void *dst = acc_o.data;
    int dt = acc_o.dtype;
    int64_t od = oa;
    if (mode & CPA_CU_LAST) {
      dst = rt.out.data;
      dt = rt.out.dtype;
      od = row_off(rt.out, t) + h * rt.out.hs;
    }
    for (int d = lane; d < acc_o.dim; d += 32) {
      float x = w2 > 0.f ? load(part.data, part.dtype, po + d) : 0.f; /* 0 * NaN must not leak */
      store(dst, dt, od + d, (w1 > 0.f ? w1 * load(acc_o.data, acc_o.dtype, oa + d) : 0.f) + w2 * x);
    }
    __syncwarp(); /* every lane has read *lse_p before lane 0 overwrites it */
    if (lane == 0) {
      if (mode & CPA_CU_LAST) store(rt.out_lse.data, rt.out_lse.dtype, row_off(rt.out_lse, t) + h * rt.out_lse.hs, l);
      else *lse_p = l;
    }
  }
}

__global__ void accumulate_kernel(cpaCuView acc, cpaCuView part, const cpaCuRange *ranges, const int64_t *prefix,
                                  int nranges, int64_t total, cpaCuRoute rt) {
  int lane = threadIdx.x & 31;
  FOR_EACH_ROW_HEAD(total, acc.heads, g, h) {
    int ri = find_range(prefix, nranges, g);
    int64_t t = ranges[ri].row0 + (g - prefix[ri]);
    int mode = route_mode(rt, t, acc.rpb);
    /* The accumulator is fp32, or (light accumulation, engine.c) the output itself. */
    int64_t oa = row_off(acc, t) + h * acc.hs;
    int64_t op = row_off(part, t) + h * part.hs;
    if (mode & CPA_CU_LAST) {
      int64_t od = row_off(rt.out, t) + h * rt.out.hs;
      for (int d = lane; d < acc.dim; d += 32) {
        float x = load(part.data, part.dtype, op + d);
        store(rt.out.data, rt.out.dtype, od + d, mode & CPA_CU_FIRST ? x : load(acc.data, acc.dtype, oa + d) + x);
      }
    } else if (mode & CPA_CU_FIRST) {
      for (int d = lane; d < acc.dim; d += 32) store(acc.data, acc.dtype, oa + d, load(part.data, part.dtype, op + d));
    } else {
      for (int d = lane; d < acc.dim; d += 32)
        store(acc.data, acc.dtype, oa + d, load(acc.data, acc.dtype, oa + d) + load(part.data, part.dtype, op + d));
    }
  }
}

__global__ void ragged_kernel(const int64_t *q_row, const int64_t *q_len, const int64_t *k_row, const int64_t *k_len,
                              const int64_t *delta, int n, int b, int32_t *seq_q, int32_t *seq_kv, int32_t *delta32,
                              cpaCuRaggedOut out) {
  for (int e = threadIdx.x; e <= b; e += blockDim.x) {
    bool real = e < n;
    /* Padding entries (and the closing one) sit at the end of the last real entry. */
    int64_t qs = real ? q_row[e] : (n ? q_row[n - 1] + q_len[n - 1] : 0);
    int64_t ks = real ? k_row[e] : (n ? k_row[n - 1] + k_len[n - 1] : 0);
    if (e < b) {
      seq_q[e] = real ? static_cast<int32_t>(q_len[e]) : 0;
      seq_kv[e] = real ? static_cast<int32_t>(k_len[e]) : 0;
      if (delta32) delta32[e] = real ? static_cast<int32_t>(delta[e]) : 0;
    }
    for (int k = 0; k < out.ntensors; ++k) out.off[k][e] = (out.is_q[k] ? qs : ks) * out.strides[k];
  }
}

__global__ void fill_int32_kernel(int32_t *dst, int n, int32_t v) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = v;
}

}  // namespace

extern "C" {

int cpaCuFill(const cpaCuView *dst, int64_t nrows, float value, cudaStream_t stream) {
  if (nrows * dst->heads * dst->dim <= 0) return 0;
  fill_kernel<<<warp_blocks(nrows * dst->heads), kThreads, 0, stream>>>(*dst, nrows, value);
  return static_cast<int>(cudaGetLastError());
}

int cpaCuCopy(const cpaCuView *dst, const cpaCuView *src, int64_t nrows, const int64_t *map, int inverse,
              cudaStream_t stream) {
  if (nrows * dst->heads * dst->dim <= 0) return 0;
  copy_kernel<<<warp_blocks(nrows * dst->heads), kThreads, 0, stream>>>(*dst, *src, nrows, map, inverse);
  return static_cast<int>(cudaGetLastError());
}

int cpaCuAdd(const cpaCuView *dst, const cpaCuView *src, int64_t nrows, cudaStream_t stream) {
  if (nrows * dst->heads * dst->dim <= 0) return 0;
  add_kernel<<<warp_blocks(nrows * dst->heads), kThreads, 0, stream>>>(*dst, *src, nrows);
  return static_cast<int>(cudaGetLastError());
}

int cpaCuMerge(const cpaCuView *acc_o, const cpaCuView *acc_lse, const cpaCuView *part, const float *stats,
               const cpaCuRange *ranges, const int64_t *prefix, int nranges, int64_t total, const cpaCuRoute *route,
               cudaStream_t stream) {
  if (total <= 0 || nranges <= 0) return 0;
  merge_kernel<<<warp_blocks(total * acc_o->heads), kThreads, 0, stream>>>(*acc_o, *acc_lse, *part, stats, ranges,
                                                                                prefix, nranges, total, *route);
  return static_cast<int>(cudaGetLastError());
}

int cpaCuAccumulate(const cpaCuView *acc, const cpaCuView *part, const cpaCuRange *ranges, const int64_t *prefix,
                    int nranges, int64_t total, const cpaCuRoute *route, cudaStream_t stream) {
  if (total * acc->heads * acc->dim <= 0 || nranges <= 0) return 0;
  accumulate_kernel<<<warp_blocks(total * acc->heads), kThreads, 0, stream>>>(*acc, *part, ranges, prefix, nranges,
                                                                             total, *route);
  return static_cast<int>(cudaGetLastError());
}

int cpaCuRagged(const int64_t *q_row, const int64_t *q_len, const int64_t *k_row, const int64_t *k_len,
                const int64_t *delta, int n, int b, int32_t *seq_q, int32_t *seq_kv, int32_t *delta32,
                const cpaCuRaggedOut *out, cudaStream_t stream) {
  ragged_kernel<<<1, 256, 0, stream>>>(q_row, q_len, k_row, k_len, delta, n, b, seq_q, seq_kv, delta32, *out);
  return static_cast<int>(cudaGetLastError());
}

int cpaCuFillInt32(int32_t *dst, int n, int32_t value, cudaStream_t stream) {
  if (n <= 0) return 0;
  fill_int32_kernel<<<1, 256, 0, stream>>>(dst, n, value);
  return static_cast<int>(cudaGetLastError());
}

}  // extern "C"
