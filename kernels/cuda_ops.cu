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

/* The element-wise kernels give one warp to each row: the row's metadata (its range,
 * its first/last-touch route, a 64-bit division by rows-per-batch per view) is worked out
 * once, and the lanes walk the row's heads x dim in groups of V elements. V = 8 where
 * every view allows 16-byte accesses (dim and strides multiples of 8, aligned base:
 * vec_ok), so one instruction moves 8 values; V = 1 otherwise. Measured on H200 with the
 * earlier warp-per-(row, head) scalar kernels: ~1 TB/s, a third of the HBM rate, which
 * made them 16% of a 2-GPU backward at 32k tokens (per-call profile, perf-notes.md). */
#define FOR_EACH_ROW(nrows, t)                                                                              \
  for (int64_t t = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; t < (nrows);       \
       t += static_cast<int64_t>(gridDim.x) * blockDim.x / 32)

/* The kernels without a dependence between a row's elements split each row into kSlices
 * warps: with 8k-16k rows of 4096 values, one warp per row leaves too few warps to keep
 * enough loads in flight (measured: 1.6 TB/s for the accumulations at 32k tokens). Work
 * item w is slice w % kSlices of row w / kSlices; a slice takes every kSlices-th group. */
constexpr int kSlices = 4;
#define FOR_EACH_ROW_SLICE(nrows, t, slice)                                                                 \
  for (int64_t w_ = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;                    \
       w_ < (nrows) * kSlices; w_ += static_cast<int64_t>(gridDim.x) * blockDim.x / 32)                       \
    for (int64_t t = w_ / kSlices, slice = w_ % kSlices, once_ = 1; once_; once_ = 0)

int warp_blocks(int64_t warps) {
  int64_t b = (warps * 32 + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

template <int V>
__device__ __forceinline__ void loadv(const void *p, int dt, int64_t i, float *x) {
  if constexpr (V == 8) {
    if (dt == 0) {
      const float4 *q = reinterpret_cast<const float4 *>(static_cast<const float *>(p) + i);
      float4 a = q[0], b = q[1];
      x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w; x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
    } else {
      uint4 u = *reinterpret_cast<const uint4 *>(static_cast<const uint16_t *>(p) + i);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
      for (int k = 0; k < 4; ++k) {
        float2 f;
        if (dt == 1) f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w[k]));
        else f = __half22float2(*reinterpret_cast<const __half2 *>(&w[k]));
        x[2 * k] = f.x;
        x[2 * k + 1] = f.y;
      }
    }
  } else {
    for (int k = 0; k < V; ++k) x[k] = load(p, dt, i + k);
  }
}

template <int V>
__device__ __forceinline__ void storev(void *p, int dt, int64_t i, const float *x) {
  if constexpr (V == 8) {
    if (dt == 0) {
      float4 *q = reinterpret_cast<float4 *>(static_cast<float *>(p) + i);
      q[0] = make_float4(x[0], x[1], x[2], x[3]);
      q[1] = make_float4(x[4], x[5], x[6], x[7]);
    } else {
      uint32_t w[4];
      for (int k = 0; k < 4; ++k) {
        if (dt == 1) {
          __nv_bfloat162 h = __floats2bfloat162_rn(x[2 * k], x[2 * k + 1]);
          w[k] = *reinterpret_cast<uint32_t *>(&h);
        } else {
          __half2 h = __floats2half2_rn(x[2 * k], x[2 * k + 1]);
          w[k] = *reinterpret_cast<uint32_t *>(&h);
        }
      }
      *reinterpret_cast<uint4 *>(static_cast<uint16_t *>(p) + i) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  } else {
    for (int k = 0; k < V; ++k) store(p, dt, i + k, x[k]);
  }
}

/* Group g of a row (V elements): its head and the element offset within the row. */
template <int V>
__device__ __forceinline__ int64_t group_at(const cpaCuView &v, int g, int per_head, int *h) {
  *h = g / per_head;
  return *h * v.hs + static_cast<int64_t>(g - *h * per_head) * V;
}

template <int V>
__global__ void fill_kernel(cpaCuView dst, int64_t nrows, float value) {
  int lane = threadIdx.x & 31, per_head = dst.dim / V, n = dst.heads * per_head;
  float x[V];
  for (int k = 0; k < V; ++k) x[k] = value;
  FOR_EACH_ROW_SLICE(nrows, t, slice) {
    int64_t o = row_off(dst, t);
    for (int g = static_cast<int>(slice) * 32 + lane, h; g < n; g += 32 * kSlices)
      storev<V>(dst.data, dst.dtype, o + group_at<V>(dst, g, per_head, &h), x);
  }
}

template <int V>
__global__ void copy_kernel(cpaCuView dst, cpaCuView src, int64_t nrows, const int64_t *map, int inverse) {
  int lane = threadIdx.x & 31, per_head = dst.dim / V, n = dst.heads * per_head;
  FOR_EACH_ROW_SLICE(nrows, t, slice) {
    int64_t ts = map && !inverse ? map[t] : t, td = map && inverse ? map[t] : t;
    int64_t od = row_off(dst, td), os = row_off(src, ts);
    for (int g = static_cast<int>(slice) * 32 + lane, h; g < n; g += 32 * kSlices) {
      int64_t e = group_at<V>(dst, g, per_head, &h), d = e - h * dst.hs;
      float x[V];
      loadv<V>(src.data, src.dtype, os + h * src.hs + d, x);
      storev<V>(dst.data, dst.dtype, od + e, x);
    }
  }
}

/* Views of one value per (row, head), such as LSE slices: a thread per value, threads
 * along rows (the contiguous direction of the [b][h][rows] LSE layouts). */
__global__ void copy_narrow_kernel(cpaCuView dst, cpaCuView src, int64_t nrows, const int64_t *map, int inverse) {
  int64_t n = nrows * dst.heads;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t h = i / nrows, t = i - h * nrows;
    int64_t ts = map && !inverse ? map[t] : t, td = map && inverse ? map[t] : t;
    int64_t od = row_off(dst, td) + h * dst.hs, os = row_off(src, ts) + h * src.hs;
    for (int d = 0; d < dst.dim; ++d) store(dst.data, dst.dtype, od + d, load(src.data, src.dtype, os + d));
  }
}

template <int V>
__global__ void add_kernel(cpaCuView dst, cpaCuView src, int64_t nrows) {
  int lane = threadIdx.x & 31, per_head = dst.dim / V, n = dst.heads * per_head;
  FOR_EACH_ROW_SLICE(nrows, t, slice) {
    int64_t od = row_off(dst, t), os = row_off(src, t);
    for (int g = static_cast<int>(slice) * 32 + lane, h; g < n; g += 32 * kSlices) {
      int64_t e = group_at<V>(dst, g, per_head, &h), d = e - h * dst.hs;
      float a[V], x[V];
      loadv<V>(dst.data, dst.dtype, od + e, a);
      loadv<V>(src.data, src.dtype, os + h * src.hs + d, x);
      for (int k = 0; k < V; ++k) a[k] += x[k];
      storev<V>(dst.data, dst.dtype, od + e, a);
    }
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

/* The LSE merge of (l1, l2): weights of the two sides and the merged value. Stable in
 * every case: a side at -inf gets weight 0, both at -inf keep (0, -inf). A first row
 * merges with (0, -inf): the part itself, exactly, the accumulator not read. */
__device__ __forceinline__ void merge_weights(int first, float l1, float l2, float *w1, float *w2, float *l) {
  *w1 = 0.f;
  *w2 = 0.f;
  *l = -INFINITY;
  if (first) {
    *l = l2;
    *w2 = l2 == -INFINITY ? 0.f : 1.f;
    return;
  }
  float m = fmaxf(l1, l2);
  if (m == -INFINITY) return;
  float e1 = __expf(l1 - m), e2 = __expf(l2 - m), s = e1 + e2;
  *l = m + __logf(s);
  *w1 = e1 / s;
  *w2 = e2 / s;
}

/* One warp per row. The destination (accumulator or route.out) is chosen per row, so a
 * call may finish some of its rows and leave others to later calls. The row's LSE values
 * are read by every lane first and written after a __syncwarp, so no lane reads a value
 * another has already replaced (a head's groups may span lanes and iterations). */
template <int V>
__global__ void merge_kernel(cpaCuView acc_o, cpaCuView acc_lse, cpaCuView part, const float *stats,
                             const cpaCuRange *ranges, const int64_t *prefix, int nranges, int64_t total,
                             cpaCuRoute rt) {
  int lane = threadIdx.x & 31, per_head = acc_o.dim / V, n = acc_o.heads * per_head;
  FOR_EACH_ROW(total, g) {
    int ri = find_range(prefix, nranges, g);
    const cpaCuRange rg = ranges[ri];
    int64_t i = g - prefix[ri], t = rg.row0 + i;
    int mode = route_mode(rt, t, acc_o.rpb), first = mode & CPA_CU_FIRST;
    const float *lse1 = static_cast<const float *>(acc_lse.data) + row_off(acc_lse, t);
    const float *lse2 = stats + rg.stats_off + i * rg.stats_rs;
    int64_t oa = row_off(acc_o, t), po = row_off(part, t);
    /* Last touch: the merged row goes to the final output (e.g. the user's bf16 O through
     * its strides), never back to the accumulator. */
    int last = mode & CPA_CU_LAST;
    void *dst = last ? rt.out.data : acc_o.data;
    int dt = last ? rt.out.dtype : acc_o.dtype;
    int64_t od = last ? row_off(rt.out, t) : oa, dhs = last ? rt.out.hs : acc_o.hs;
    for (int gi = lane, h; gi < n; gi += 32) {
      int64_t e = group_at<V>(acc_o, gi, per_head, &h), d = e - h * acc_o.hs;
      float w1, w2, l, x[V], o[V];
      merge_weights(first, first ? -INFINITY : lse1[h * acc_lse.hs], lse2[h * rg.stats_hs], &w1, &w2, &l);
      if (w2 > 0.f) loadv<V>(part.data, part.dtype, po + h * part.hs + d, x); /* 0 * NaN must not leak */
      if (w1 > 0.f) loadv<V>(acc_o.data, acc_o.dtype, oa + e, o);
      for (int k = 0; k < V; ++k) x[k] = (w1 > 0.f ? w1 * o[k] : 0.f) + (w2 > 0.f ? w2 * x[k] : 0.f);
      storev<V>(dst, dt, od + h * dhs + d, x);
    }
    __syncwarp();
    /* Each lane now reads and replaces the LSE of its own heads only. */
    for (int h = lane; h < acc_o.heads; h += 32) {
      float w1, w2, l;
      merge_weights(first, first ? -INFINITY : lse1[h * acc_lse.hs], lse2[h * rg.stats_hs], &w1, &w2, &l);
      if (last) store(rt.out_lse.data, rt.out_lse.dtype, row_off(rt.out_lse, t) + h * rt.out_lse.hs, l);
      else static_cast<float *>(acc_lse.data)[row_off(acc_lse, t) + h * acc_lse.hs] = l;
    }
  }
}

template <int V>
__global__ void accumulate_kernel(cpaCuView acc, cpaCuView part, const cpaCuRange *ranges, const int64_t *prefix,
                                  int nranges, int64_t total, cpaCuRoute rt) {
  int lane = threadIdx.x & 31, per_head = acc.dim / V, n = acc.heads * per_head;
  FOR_EACH_ROW_SLICE(total, g, slice) {
    int ri = find_range(prefix, nranges, g);
    int64_t t = ranges[ri].row0 + (g - prefix[ri]);
    int mode = route_mode(rt, t, acc.rpb);
    /* The accumulator is fp32, or (light accumulation, engine.c) the output itself. */
    int64_t oa = row_off(acc, t), op = row_off(part, t);
    int last = mode & CPA_CU_LAST;
    void *dst = last ? rt.out.data : acc.data;
    int dt = last ? rt.out.dtype : acc.dtype;
    int64_t od = last ? row_off(rt.out, t) : oa, dhs = last ? rt.out.hs : acc.hs;
    for (int gi = static_cast<int>(slice) * 32 + lane, h; gi < n; gi += 32 * kSlices) {
      int64_t e = group_at<V>(acc, gi, per_head, &h), d = e - h * acc.hs;
      float x[V], a[V];
      loadv<V>(part.data, part.dtype, op + h * part.hs + d, x);
      if (!(mode & CPA_CU_FIRST)) {
        loadv<V>(acc.data, acc.dtype, oa + e, a);
        for (int k = 0; k < V; ++k) x[k] += a[k];
      }
      storev<V>(dst, dt, od + h * dhs + d, x);
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

/* 16-byte accesses of 8 elements: every group starts on a multiple of 8 elements. */
bool vec_ok(const cpaCuView &v) {
  return v.dim % 8 == 0 && reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && v.bs % 8 == 0 && v.rs % 8 == 0 &&
         v.hs % 8 == 0;
}

}  // namespace

extern "C" {

int cpaCuFill(const cpaCuView *dst, int64_t nrows, float value, cudaStream_t stream) {
  if (nrows * dst->heads * dst->dim <= 0) return 0;
  if (vec_ok(*dst)) fill_kernel<8><<<warp_blocks(nrows * kSlices), kThreads, 0, stream>>>(*dst, nrows, value);
  else fill_kernel<1><<<warp_blocks(nrows * kSlices), kThreads, 0, stream>>>(*dst, nrows, value);
  return static_cast<int>(cudaGetLastError());
}

int cpaCuCopy(const cpaCuView *dst, const cpaCuView *src, int64_t nrows, const int64_t *map, int inverse,
              cudaStream_t stream) {
  if (nrows * dst->heads * dst->dim <= 0) return 0;
  if (dst->dim < 8) {
    int64_t n = nrows * dst->heads, b = (n + kThreads - 1) / kThreads;
    copy_narrow_kernel<<<static_cast<int>(b > 65535 * 8 ? 65535 * 8 : b), kThreads, 0, stream>>>(*dst, *src, nrows,
                                                                                                  map, inverse);
  } else if (vec_ok(*dst) && vec_ok(*src)) {
    copy_kernel<8><<<warp_blocks(nrows * kSlices), kThreads, 0, stream>>>(*dst, *src, nrows, map, inverse);
  } else {
    copy_kernel<1><<<warp_blocks(nrows * kSlices), kThreads, 0, stream>>>(*dst, *src, nrows, map, inverse);
  }
  return static_cast<int>(cudaGetLastError());
}

int cpaCuAdd(const cpaCuView *dst, const cpaCuView *src, int64_t nrows, cudaStream_t stream) {
  if (nrows * dst->heads * dst->dim <= 0) return 0;
  if (vec_ok(*dst) && vec_ok(*src)) add_kernel<8><<<warp_blocks(nrows * kSlices), kThreads, 0, stream>>>(*dst, *src, nrows);
  else add_kernel<1><<<warp_blocks(nrows * kSlices), kThreads, 0, stream>>>(*dst, *src, nrows);
  return static_cast<int>(cudaGetLastError());
}

int cpaCuMerge(const cpaCuView *acc_o, const cpaCuView *acc_lse, const cpaCuView *part, const float *stats,
               const cpaCuRange *ranges, const int64_t *prefix, int nranges, int64_t total, const cpaCuRoute *route,
               cudaStream_t stream) {
  if (total <= 0 || nranges <= 0) return 0;
  bool vec = vec_ok(*acc_o) && vec_ok(*part) && (!(route->allow & CPA_CU_LAST) || vec_ok(route->out));
  if (vec)
    merge_kernel<8><<<warp_blocks(total), kThreads, 0, stream>>>(*acc_o, *acc_lse, *part, stats, ranges, prefix,
                                                                 nranges, total, *route);
  else
    merge_kernel<1><<<warp_blocks(total), kThreads, 0, stream>>>(*acc_o, *acc_lse, *part, stats, ranges, prefix,
                                                                 nranges, total, *route);
  return static_cast<int>(cudaGetLastError());
}

int cpaCuAccumulate(const cpaCuView *acc, const cpaCuView *part, const cpaCuRange *ranges, const int64_t *prefix,
                    int nranges, int64_t total, const cpaCuRoute *route, cudaStream_t stream) {
  if (total * acc->heads * acc->dim <= 0 || nranges <= 0) return 0;
  bool vec = vec_ok(*acc) && vec_ok(*part) && (!(route->allow & CPA_CU_LAST) || vec_ok(route->out));
  if (vec)
    accumulate_kernel<8><<<warp_blocks(total * kSlices), kThreads, 0, stream>>>(*acc, *part, ranges, prefix, nranges, total,
                                                                      *route);
  else
    accumulate_kernel<1><<<warp_blocks(total * kSlices), kThreads, 0, stream>>>(*acc, *part, ranges, prefix, nranges, total,
                                                                      *route);
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
