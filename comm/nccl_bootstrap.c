/*
 * nccl_bootstrap.c -- an NCCL communicator made over MPI (libcpattn_mpi): rank 0's
 * unique id is broadcast, every rank joins on its GPU, and the communicator is created
 * non-blocking so that cpattn can bound its waits and abort it when a peer stalls.
 */
#define _POSIX_C_SOURCE 200809L
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdlib.h>
#include <time.h>

#include "cpattn_mpi.h"
#include "cpattn_transport.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

CPATTN_API cpattnResult_t cpattnCommInitNcclFromMpi(cpattnComm_t *comm, MPI_Comm mpiComm, int cudaDevice) {
  if (!comm) return cpattnTransportSetError(cpattnInvalidArgument, "comm must not be NULL");
  *comm = NULL;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized)
    return cpattnTransportSetError(cpattnInvalidArgument, "MPI is not initialized: call MPI_Init first");
  int rank, size, ndev = 0;
  MPI_Comm_rank(mpiComm, &rank);
  MPI_Comm_size(mpiComm, &size);
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0)
    return cpattnTransportSetError(cpattnCudaError, "no CUDA device is visible to rank %d", rank);
  if (cudaDevice < 0) {
    int lr = 0, ls = 1;
    cpattnMpiLocalRank(mpiComm, &lr, &ls);
    cudaDevice = lr % ndev;
  }
  if (cudaDevice >= ndev)
    return cpattnTransportSetError(cpattnInvalidArgument, "cudaDevice = %d, but %d devices are visible", cudaDevice,
                                   ndev);
  if (cudaSetDevice(cudaDevice) != cudaSuccess)
    return cpattnTransportSetError(cpattnCudaError, "cudaSetDevice(%d) failed", cudaDevice);
  ncclUniqueId id;
  ncclResult_t r = ncclSuccess;
  if (rank == 0) r = ncclGetUniqueId(&id);
  /* Every rank learns whether rank 0 got an id, so none waits for a broadcast in vain. */
  int ok = r == ncclSuccess, all_ok = 0;
  MPI_Bcast(&ok, 1, MPI_INT, 0, mpiComm);
  if (!ok) return cpattnTransportSetError(cpattnNcclError, "ncclGetUniqueId failed on rank 0");
  if (MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, mpiComm) != MPI_SUCCESS)
    return cpattnTransportSetError(cpattnSystemError, "MPI_Bcast of the NCCL unique id failed");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t nccl = NULL;
  r = ncclCommInitRankConfig(&nccl, size, id, rank, &config);
  double deadline = now_ms() + 300000.0;
  while (r == ncclInProgress && now_ms() < deadline) ncclCommGetAsyncError(nccl, &r);
  ok = r == ncclSuccess;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, mpiComm);
  if (!all_ok) {
    if (nccl) ncclCommAbort(nccl);
    return cpattnTransportSetError(ok ? cpattnRemoteError : cpattnNcclError,
                                   "ncclCommInitRankConfig failed %s: %s", ok ? "on another rank" : "here",
                                   ok ? "see that rank's error" : ncclGetErrorString(r));
  }
  return cpattnCommInitNcclOwned(comm, nccl, cudaDevice, 1);
}
