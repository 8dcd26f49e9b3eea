/*
 * cpattn_mpi.h -- the optional MPI side of cpattn (library cpattn_mpi).
 *
 * Kept apart from cpattn.h so that a trainer that brings its own NCCL communicator never
 * needs mpi.h or links MPI. Include it after mpi.h is available; link cpattn_mpi (the
 * CMake target cpattn::cpattn_mpi does both).
 *
 * The library never initializes or finalizes MPI: that belongs to the program.
 */
#ifndef CPATTN_MPI_H_
#define CPATTN_MPI_H_

#include <mpi.h>

#include "cpattn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A communicator for the host executor: data moves through MPI point-to-point calls on a
 * duplicate of `mpiComm` (so cpattn's messages never match the caller's). Collective over
 * mpiComm. Waits are bounded by the plan's timeout: a rank whose peer stalls returns
 * cpattnTimeout instead of hanging. */
CPATTN_API cpattnResult_t cpattnCommInitMpi(cpattnComm_t *comm, MPI_Comm mpiComm);

/* A communicator for the CUDA executor that cpattn creates and owns: the NCCL unique id
 * is broadcast over mpiComm, and the NCCL communicator is created non-blocking on
 * cudaDevice so that waits can be bounded and a stalled peer turns into cpattnTimeout
 * (the communicator is then aborted and must be destroyed). Collective over mpiComm.
 * cudaDevice < 0 picks the node-local rank modulo the visible device count. */
CPATTN_API cpattnResult_t cpattnCommInitNcclFromMpi(cpattnComm_t *comm, MPI_Comm mpiComm, int cudaDevice);

/* The node-local rank of the calling process in mpiComm (MPI_Comm_split_type with
 * MPI_COMM_TYPE_SHARED), the usual choice of GPU. */
CPATTN_API cpattnResult_t cpattnMpiLocalRank(MPI_Comm mpiComm, int *localRank, int *localSize);

#ifdef __cplusplus
}
#endif

#endif /* CPATTN_MPI_H_ */
