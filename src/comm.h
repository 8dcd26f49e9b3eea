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
  /* The bound of the forward/backward in progress (its plan's timeoutMs), set at the
   * start of each call. The NCCL exchange can block on the host: its first send/recv to
   * a peer sets up the connection, which needs that peer, and a non-blocking
   * communicator reports ncclInProgress until then; that wait must obey the plan's
   * bound, which the transport's exchange() is not given. 0 until the first call. */
  int64_t call_timeout_ms;
};

#endif /* CPATTN_SRC_COMM_H_ */
