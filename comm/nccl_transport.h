/*
 * nccl_transport.h -- internal entry of the NCCL transport (nccl_transport.c).
 */
#ifndef CPATTN_COMM_NCCL_TRANSPORT_H_
#define CPATTN_COMM_NCCL_TRANSPORT_H_

#include <nccl.h>

#include "cpattn.h"

/* A communicator over an NCCL communicator on `device`; own = 1 hands it over (destroyed
 * with the communicator), nonblocking = 1 if it was created with blocking = 0. */
cpattnResult_t cpaNcclTransportInit(cpattnComm_t *comm, ncclComm_t nccl, int device, int own, int nonblocking);

#endif /* CPATTN_COMM_NCCL_TRANSPORT_H_ */
