/*
 * comm.h -- the communicator object behind cpattnComm_t.
 */
#ifndef CPATTN_SRC_COMM_H_
#define CPATTN_SRC_COMM_H_

#include "core.h"
#include "cpattn_transport.h"

struct cpattnComm {
  cpattnTransport_t tr;
  int nplans; /* live plans made from it: destroying the comm first is a usage error   */
  /* State the CUDA executor shares between plans of this communicator (cuDNN handle and
   * plan cache); created by the first CUDA plan, released with the communicator. */
  void *cuda_shared;
  void (*cuda_shared_free)(void *);
  /* Bounded host wait on a stream (cpattnCommSynchronize); set by the transports that
   * can poll their own error state (the NCCL one), NULL otherwise. */
  cpattnResult_t (*sync)(struct cpattnComm *c, struct CUstream_st *stream, int64_t timeout_ms);
};

#endif /* CPATTN_SRC_COMM_H_ */
