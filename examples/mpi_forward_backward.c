/*
 * mpi_forward_backward.c -- the shortest complete use of cpattn under mpirun.
 *
 *   mpirun -np 2 ./mpi_forward_backward
 *
 * Every rank bootstraps a communicator from MPI (NCCL on its GPU when it has one, the
 * host executor otherwise), makes a plan for one causal sequence, fills its shard of Q,
 * K, V and dO, and runs forward and backward. Rank 0 prints a checksum of every rank's
 * output, so two runs with different rank counts can be compared by eye.
 */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpattn.h"
#include "cpattn_mpi.h"

#ifdef CPATTN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#define CHECK(call)                                                                                \
  do {                                                                                             \
    cpattnResult_t r_ = (call);                                                                    \
    if (r_ != cpattnSuccess) {                                                                     \
      fprintf(stderr, "%s failed: %s: %s\n", #call, cpattnGetErrorString(r_), cpattnGetLastError()); \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                                \
    }                                                                                              \
  } while (0)

/* Device memory with a GPU, host memory without: the only place the two differ. */
static int use_gpu;
static void *alloc_copy(const void *host, size_t bytes) {
  void *p = NULL;
#ifdef CPATTN_HAVE_CUDA
  if (use_gpu) {
    cudaMalloc(&p, bytes);
    if (host) cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
    return p;
  }
#endif
  p = aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (host) memcpy(p, host, bytes);
  return p;
}
static void download(void *host, const void *p, size_t bytes) {
#ifdef CPATTN_HAVE_CUDA
  if (use_gpu) {
    /* The first synchronizing call after forward/backward: where an asynchronous failure
     * shows up. Ignoring it would checksum whatever the buffers held. */
    cudaError_t e = cudaMemcpy(host, p, bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
      fprintf(stderr, "download: %s\n", cudaGetErrorString(e));
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return;
  }
#endif
  memcpy(host, p, bytes);
}
static void release(void *p) {
#ifdef CPATTN_HAVE_CUDA
  if (use_gpu) {
    cudaFree(p);
    return;
  }
#endif
  free(p);
}

/* bf16 bits of a float (round to nearest even), for inputs made on the host */
static uint16_t bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, world;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);

  /* 1. A communicator: NCCL bootstrapped over MPI on this rank's GPU, or MPI itself. */
  int ngpu = 0;
#ifdef CPATTN_HAVE_CUDA
  if (cudaGetDeviceCount(&ngpu) != cudaSuccess) ngpu = 0;
  cudaGetLastError(); /* "no device" is an answer here, not an error to leave behind */
#endif
  use_gpu = ngpu > 0;
  cpattnComm_t comm;
  if (use_gpu) CHECK(cpattnCommInitNcclFromMpi(&comm, MPI_COMM_WORLD, -1)); /* -1: local rank % GPUs */
  else CHECK(cpattnCommInitMpi(&comm, MPI_COMM_WORLD));

  /* 2. The problem, the same on every rank; the plan is made collectively. */
  cpattnConfig_t cfg = CPATTN_CONFIG_INITIALIZER;
  cfg.layout = cpattnLayoutBSHD;
  cfg.dtype = cpattnBFloat16;
  cfg.batch = 1;
  cfg.seqLen = use_gpu ? 8192 : 512; /* tokens of the whole sequence */
  cfg.numHeadsQ = 8;
  cfg.numHeadsKV = 2; /* GQA */
  cfg.headDimQK = 64;
  cfg.mask = cpattnMaskCausal; /* zigzag load balance is chosen for causal */
  cfg.schedule = cpattnScheduleRing;
  cpattnPlan_t plan;
  CHECK(cpattnPlanCreate(&plan, comm, &cfg));

  /* 3. This rank's shard: how many tokens, and which (for the values, and for RoPE). */
  int64_t n;
  CHECK(cpattnPlanGetLocalTokenCount(plan, &n));
  int64_t *pos = malloc(sizeof(int64_t) * (size_t)n);
  CHECK(cpattnGetLocalPositions(&cfg, rank, world, pos, NULL));
  size_t nq = (size_t)(n * cfg.numHeadsQ * cfg.headDimQK), nk = (size_t)(n * cfg.numHeadsKV * cfg.headDimQK);
  uint16_t *hq = malloc(nq * 2), *hk = malloc(nk * 2), *hv = malloc(nk * 2), *hdo = malloc(nq * 2);
  for (int64_t t = 0; t < n; ++t) { /* values depend on the global position only */
    for (size_t i = 0; i < nq / (size_t)n; ++i) {
      hq[(size_t)t * (nq / (size_t)n) + i] = bf16(sinf(0.01f * (float)(pos[t] * 131 + (int64_t)i)));
      hdo[(size_t)t * (nq / (size_t)n) + i] = bf16(cosf(0.02f * (float)(pos[t] * 37 + (int64_t)i)));
    }
    for (size_t i = 0; i < nk / (size_t)n; ++i) {
      hk[(size_t)t * (nk / (size_t)n) + i] = bf16(cosf(0.013f * (float)(pos[t] * 71 + (int64_t)i)));
      hv[(size_t)t * (nk / (size_t)n) + i] = bf16(sinf(0.017f * (float)(pos[t] * 29 + (int64_t)i)));
    }
  }

  /* 4. Buffers and their descriptors (packed BSHD: batch, local tokens, heads, dim). */
  void *q = alloc_copy(hq, nq * 2), *k = alloc_copy(hk, nk * 2), *v = alloc_copy(hv, nk * 2);
  void *dout = alloc_copy(hdo, nq * 2), *o = alloc_copy(NULL, nq * 2);
  void *dq = alloc_copy(NULL, nq * 2), *dk = alloc_copy(NULL, nk * 2), *dv = alloc_copy(NULL, nk * 2);
  float *lse = alloc_copy(NULL, (size_t)(n * cfg.numHeadsQ) * 4);
  size_t ws_bytes;
  CHECK(cpattnPlanGetWorkspaceSize(plan, &ws_bytes));
  void *ws = alloc_copy(NULL, ws_bytes);
  cpattnTensor_t tq, tk, tv, to, tdo, tdq, tdk, tdv;
  CHECK(cpattnTensorInit(&tq, q, cfg.dtype, cfg.layout, 1, n, cfg.numHeadsQ, cfg.headDimQK));
  CHECK(cpattnTensorInit(&tk, k, cfg.dtype, cfg.layout, 1, n, cfg.numHeadsKV, cfg.headDimQK));
  CHECK(cpattnTensorInit(&tv, v, cfg.dtype, cfg.layout, 1, n, cfg.numHeadsKV, cfg.headDimQK));
  CHECK(cpattnTensorInit(&to, o, cfg.dtype, cfg.layout, 1, n, cfg.numHeadsQ, cfg.headDimQK));
  CHECK(cpattnTensorInit(&tdo, dout, cfg.dtype, cfg.layout, 1, n, cfg.numHeadsQ, cfg.headDimQK));
  CHECK(cpattnTensorInit(&tdq, dq, cfg.dtype, cfg.layout, 1, n, cfg.numHeadsQ, cfg.headDimQK));
  CHECK(cpattnTensorInit(&tdk, dk, cfg.dtype, cfg.layout, 1, n, cfg.numHeadsKV, cfg.headDimQK));
  CHECK(cpattnTensorInit(&tdv, dv, cfg.dtype, cfg.layout, 1, n, cfg.numHeadsKV, cfg.headDimQK));

  /* 5. Forward and backward (collective; on the GPU enqueued on the default stream). */
  CHECK(cpattnForward(plan, &tq, &tk, &tv, &to, lse, ws, ws_bytes, NULL));
  CHECK(cpattnBackward(plan, &tq, &tk, &tv, &to, &tdo, lse, &tdq, &tdk, &tdv, ws, ws_bytes, NULL));

  /* 6. A checksum of O and dQ over all ranks (download synchronizes on the GPU). */
  download(hq, o, nq * 2);
  download(hdo, dq, nq * 2);
  double sums[2] = {0, 0}, all[2];
  for (size_t i = 0; i < nq; ++i) {
    sums[0] += from_bf16(hq[i]);
    sums[1] += fabsf(from_bf16(hdo[i]));
  }
  MPI_Reduce(sums, all, 2, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rank == 0)
    printf("cpattn example: %d rank(s), %s executor, %lld tokens: sum(O) = %.4f, sum|dQ| = %.4f\n", world,
           use_gpu ? "cuda" : "host", (long long)cfg.seqLen, all[0], all[1]);

  void *bufs[10] = {q, k, v, dout, o, dq, dk, dv, lse, ws};
  for (int i = 0; i < 10; ++i) release(bufs[i]);
  free(hq); free(hk); free(hv); free(hdo); free(pos);
  CHECK(cpattnPlanDestroy(plan));
  CHECK(cpattnCommDestroy(comm));
  MPI_Finalize();
  return rank != 0 || (isfinite(all[0]) && isfinite(all[1])) ? 0 : 1;
}
