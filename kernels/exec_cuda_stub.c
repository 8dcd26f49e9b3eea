/*
 * exec_cuda_stub.c -- stands in for the CUDA executor in builds without CUDA, cuDNN or
 * NCCL, so that asking for it is a clean cpattnNotSupported rather than a link error.
 */
#include "../src/core.h"
#include "../src/executor.h"

cpattnResult_t cpaExecCudaCreate(cpaExecutor *ex, const cpaProblem *pb, cpattnComm_t comm) {
  (void)ex;
  (void)pb;
  (void)comm;
  return cpaError(cpattnNotSupported, "this cpattn was built without the CUDA executor (no CUDA, cuDNN or NCCL "
                  "found at build time)");
}

CPATTN_API cpattnResult_t cpattnCommInitNccl(cpattnComm_t *comm, struct ncclComm *nccl, int cudaDevice) {
  cpaClearError();
  (void)nccl;
  (void)cudaDevice;
  if (comm) *comm = NULL;
  return cpaError(cpattnNotSupported, "cpattnCommInitNccl: this cpattn was built without CUDA/NCCL");
}

CPATTN_API cpattnResult_t cpattnCommInitNcclOwned(cpattnComm_t *comm, struct ncclComm *nccl, int cudaDevice,
                                                  int nonBlocking) {
  cpaClearError();
  (void)nccl;
  (void)cudaDevice;
  (void)nonBlocking;
  if (comm) *comm = NULL;
  return cpaError(cpattnNotSupported, "cpattnCommInitNcclOwned: this cpattn was built without CUDA/NCCL");
}

CPATTN_API cpattnResult_t cpattnGetNcclUniqueId(void *id, size_t bytes) {
  cpaClearError();
  (void)id;
  (void)bytes;
  return cpaError(cpattnNotSupported, "cpattnGetNcclUniqueId: this cpattn was built without CUDA/NCCL");
}

CPATTN_API cpattnResult_t cpattnCommInitNcclRank(cpattnComm_t *comm, int nranks, int rank, const void *id,
                                                 int cudaDevice) {
  cpaClearError();
  (void)nranks;
  (void)rank;
  (void)id;
  (void)cudaDevice;
  if (comm) *comm = NULL;
  return cpaError(cpattnNotSupported, "cpattnCommInitNcclRank: this cpattn was built without CUDA/NCCL");
}
