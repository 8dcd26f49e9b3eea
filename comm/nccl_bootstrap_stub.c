/*
 * nccl_bootstrap_stub.c -- cpattnCommInitNcclFromMpi in builds without CUDA/NCCL.
 */
#include "cpattn_mpi.h"
#include "cpattn_transport.h"

CPATTN_API cpattnResult_t cpattnCommInitNcclFromMpi(cpattnComm_t *comm, MPI_Comm mpiComm, int cudaDevice) {
  (void)mpiComm;
  (void)cudaDevice;
  if (comm) *comm = NULL;
  return cpattnTransportSetError(cpattnNotSupported,
                                 "cpattnCommInitNcclFromMpi: this cpattn was built without CUDA/NCCL");
}
