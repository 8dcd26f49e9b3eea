/*
 * borrow_nccl.c -- what a trainer that already has NCCL does: it owns its ncclComm_t and
 * its CUDA stream, and lends both to cpattn.
 *
 *   mpirun -np 2 ./borrow_nccl          (one rank per GPU; exits 77 without a GPU)
 *
 * The trainer made its communicator itself (here: rank 0's unique id sent over MPI, as
 * most launchers do); cpattn borrows it with cpattnCommInitNccl, never destroys it, and
 * runs every forward and backward on the stream the trainer passes, without
 * synchronizing: the trainer decides when to wait.
 */
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpattn.h" /* the core only: a trainer that brings NCCL needs no cpattn_mpi */

#define CHECK(call)                                                                                \
  do {                                                                                             \
    cpattnResult_t r_ = (call);                                                                    \
    if (r_ != cpattnSuccess) {                                                                     \
      fprintf(stderr, "%s failed: %s: %s\n", #call, cpattnGetErrorString(r_), cpattnGetLastError()); \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                                \
    }                                                                                              \
  } while (0)

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, world, ngpu = 0, local = 0, nlocal = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (cudaGetDeviceCount(&ngpu) != cudaSuccess || ngpu == 0) {
    if (rank == 0) printf("borrow_nccl: no GPU, skipped\n");
    MPI_Finalize();
    return 77;
  }
  /* cpattn's rule for picking a GPU: node-local rank modulo the visible GPUs (under
   * cpattn-run each rank sees one, its own). NCCL refuses two ranks on one GPU, so the
   * node's ranks compare PCI bus ids and skip together when GPUs are too few. */
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local);
  MPI_Comm_size(node, &nlocal);
  int device = local % ngpu;
  cudaSetDevice(device);
  char bus[32] = "", *all = calloc((size_t)nlocal, sizeof bus);
  cudaDeviceGetPCIBusId(bus, (int)sizeof bus, device);
  MPI_Allgather(bus, (int)sizeof bus, MPI_CHAR, all, (int)sizeof bus, MPI_CHAR, node);
  int shared = 0, any_shared = 0;
  for (int i = 0; i < nlocal; ++i) shared |= i != local && strcmp(all + i * sizeof bus, bus) == 0;
  free(all);
  MPI_Comm_free(&node);
  MPI_Allreduce(&shared, &any_shared, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_shared) {
    if (rank == 0) printf("borrow_nccl: fewer GPUs than ranks on a node, skipped\n");
    MPI_Finalize();
    return 77;
  }

  /* --- the trainer's own NCCL communicator and stream ----------------------------- */
  ncclUniqueId id;
  if (rank == 0) ncclGetUniqueId(&id);
  MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclComm_t nccl;
  if (ncclCommInitRank(&nccl, world, id, rank) != ncclSuccess) MPI_Abort(MPI_COMM_WORLD, 1);
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);

  /* --- cpattn borrows them ------------------------------------------------------------ */
  cpattnComm_t comm;
  CHECK(cpattnCommInitNccl(&comm, nccl, device));
  cpattnConfig_t cfg = CPATTN_CONFIG_INITIALIZER;
  cfg.layout = cpattnLayoutTHD; /* a packed batch of documents */
  cfg.dtype = cpattnBFloat16;
  int32_t cu[4] = {0, 3000, 3001, 12000}; /* lengths 3000, 1, 8999: no padding needed */
  cfg.batch = 3;
  cfg.cuSeqlens = cu;
  cfg.seqLen = cu[3];
  cfg.numHeadsQ = 16;
  cfg.numHeadsKV = 4;
  cfg.headDimQK = 128;
  cfg.mask = cpattnMaskCausal;
  cpattnPlan_t plan;
  CHECK(cpattnPlanCreate(&plan, comm, &cfg));
  int64_t n;
  size_t ws_bytes;
  CHECK(cpattnPlanGetLocalTokenCount(plan, &n));
  CHECK(cpattnPlanGetWorkspaceSize(plan, &ws_bytes));

  /* the trainer's activations (here: random-ish bits; a real one has its own) */
  size_t nq = (size_t)n * 16 * 128, nk = (size_t)n * 4 * 128;
  void *q, *k, *v, *o, *dout, *dq, *dk, *dv, *ws;
  float *lse;
  cudaMalloc(&q, nq * 2); cudaMalloc(&k, nk * 2); cudaMalloc(&v, nk * 2); cudaMalloc(&o, nq * 2);
  cudaMalloc(&dout, nq * 2); cudaMalloc(&dq, nq * 2); cudaMalloc(&dk, nk * 2); cudaMalloc(&dv, nk * 2);
  cudaMalloc((void **)&lse, (size_t)n * 16 * 4);
  cudaMalloc(&ws, ws_bytes);
  cudaMemsetAsync(q, 0x3c, nq * 2, stream); /* bf16 0x3c3c ~ 0.0115: finite, not zero */
  cudaMemsetAsync(k, 0x3b, nk * 2, stream);
  cudaMemsetAsync(v, 0x3d, nk * 2, stream);
  cudaMemsetAsync(dout, 0x3a, nq * 2, stream);
  cpattnTensor_t tq, tk, tv, to, tdo, tdq, tdk, tdv;
  cpattnTensorInit(&tq, q, cfg.dtype, cfg.layout, 1, n, 16, 128);
  cpattnTensorInit(&tk, k, cfg.dtype, cfg.layout, 1, n, 4, 128);
  cpattnTensorInit(&tv, v, cfg.dtype, cfg.layout, 1, n, 4, 128);
  cpattnTensorInit(&to, o, cfg.dtype, cfg.layout, 1, n, 16, 128);
  cpattnTensorInit(&tdo, dout, cfg.dtype, cfg.layout, 1, n, 16, 128);
  cpattnTensorInit(&tdq, dq, cfg.dtype, cfg.layout, 1, n, 16, 128);
  cpattnTensorInit(&tdk, dk, cfg.dtype, cfg.layout, 1, n, 4, 128);
  cpattnTensorInit(&tdv, dv, cfg.dtype, cfg.layout, 1, n, 4, 128);

  /* a training step: forward and backward enqueued on the trainer's stream */
  CHECK(cpattnForward(plan, &tq, &tk, &tv, &to, lse, ws, ws_bytes, stream));
  CHECK(cpattnBackward(plan, &tq, &tk, &tv, &to, &tdo, lse, &tdq, &tdk, &tdv, ws, ws_bytes, stream));
  cudaError_t e = cudaStreamSynchronize(stream); /* the trainer's choice of when to wait */
  if (rank == 0) printf("borrow_nccl: %d rank(s), %lld local tokens on rank 0: %s\n", world, (long long)n,
                        cudaGetErrorString(e));

  cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(dout);
  cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(lse); cudaFree(ws);
  CHECK(cpattnPlanDestroy(plan));
  CHECK(cpattnCommDestroy(comm)); /* the NCCL communicator stays the trainer's */
  ncclCommDestroy(nccl);
  cudaStreamDestroy(stream);
  MPI_Finalize();
  return e == cudaSuccess ? 0 : 1;
}
