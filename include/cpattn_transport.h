/*
 * cpattn_transport.h -- the interface between cpattn's schedules and whatever moves the
 * bytes. cpattn ships two implementations (NCCL, inside libcpattn; MPI, in cpattn_mpi);
 * this header exists so that the MPI one can live in its own library, and so that a
 * program with its own transport (a custom fabric, a simulator) can plug one in.
 * Experimental: it may change between minor versions.
 *
 * Every operation the schedules need is an "exchange": a set of sends and receives,
 * started together, completed together. A ring step is one send and one receive, an
 * all-to-all is a send and a receive per peer, an all-gather likewise. Exchanges are
 * issued in the same order on every rank; a transport may rely on that.
 */
#ifndef CPATTN_TRANSPORT_H_
#define CPATTN_TRANSPORT_H_

#include <stddef.h>
#include <stdint.h>

#include "cpattn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  void *buf;    /* host or device memory, as the transport's kind says             */
  size_t bytes; /* 0 is allowed (nothing moves)                                     */
  int peer;     /* rank in the communicator; may be the caller's own rank          */
} cpattnXfer_t;

typedef struct cpattnTransport {
  cpattnExecutor_t kind; /* Host: host buffers, synchronous semantics; Cuda: device
                          * buffers, stream-ordered                                 */
  int rank, size;
  int device;            /* CUDA device (Cuda kind), -1 otherwise                   */
  void *state;           /* the implementation's own                                */

  /* Starts the sends and receives. Cuda kind: ordered after the work already enqueued
   * on `stream` (the data is ready then), without blocking the host. *handle identifies
   * the exchange for wait. `tag` distinguishes concurrent exchanges (a transport that
   * matches messages by tag must use it). */
  cpattnResult_t (*exchange)(struct cpattnTransport *t, const cpattnXfer_t *sends, int nsends,
                             const cpattnXfer_t *recvs, int nrecvs, int tag, struct CUstream_st *stream,
                             int *handle);

  /* Completes an exchange. Host kind: returns when the receives have arrived and the
   * sends' buffers may be reused, or with cpattnTimeout after timeoutMs (-1: never).
   * Cuda kind: makes `stream` wait for it (no host block), and may check for errors. */
  cpattnResult_t (*wait)(struct cpattnTransport *t, int handle, struct CUstream_st *stream, int64_t timeoutMs);

  /* Blocking element-wise min and max of n host int64 values over all ranks (for the
   * agreement checks at plan creation), bounded by timeoutMs. */
  cpattnResult_t (*minmax)(struct cpattnTransport *t, const int64_t *vals, int n, int64_t *mins, int64_t *maxs,
                           int64_t timeoutMs);

  /* Releases `state` (called by cpattnCommDestroy). */
  void (*destroy)(struct cpattnTransport *t);
} cpattnTransport_t;

/* For transport implementations: records fmt (printf-style) as this thread's last-error
 * message, so that cpattnGetLastError shows it, and returns result. */
CPATTN_API cpattnResult_t cpattnTransportSetError(cpattnResult_t result, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Makes a communicator that uses *transport (copied; the communicator owns its state
 * from now on and calls destroy when it is destroyed, also when this call fails). */
CPATTN_API cpattnResult_t cpattnCommInitTransport(cpattnComm_t *comm, const cpattnTransport_t *transport);

#ifdef __cplusplus
}
#endif

#endif /* CPATTN_TRANSPORT_H_ */
