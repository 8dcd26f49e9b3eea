/*
 * nccl_transport.c -- the CUDA executor's transport: NCCL point-to-point on its own
 * stream, ordered against the compute stream with events only.
 *
 * An exchange records an event on the caller's (compute) stream, makes the
 * communication stream wait for it (the data is ready), issues the grouped sends and
 * receives there and records a "done" event; waiting makes the compute stream wait for
 * that event. The host never blocks, so the exchange runs beside the compute that was
 * enqueued after it, and a whole forward or backward can be captured in a CUDA graph.
 *
 * With a non-blocking communicator (ncclConfig_t.blocking = 0, what
 * cpattnCommInitNcclFromMpi makes), NCCL calls may return ncclInProgress; the state is
 * then polled with ncclCommGetAsyncError against a deadline, and a communicator that
 * stalls past it is aborted and reported as cpattnTimeout.
 */
#define _POSIX_C_SOURCE 200809L
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/comm.h"
#include "../src/core.h"
#include "nccl_transport.h"

#define CPA_NCCL_SLOTS 64

typedef struct {
  ncclComm_t comm;
  int own, nonblocking, broken;
  cudaStream_t cs;
  cudaEvent_t ready[CPA_NCCL_SLOTS], done[CPA_NCCL_SLOTS];
  int next;
  int64_t *agree_buf; /* device scratch for minmax */
  struct cpattnComm *owner; /* the communicator holding this transport (its call_timeout_ms) */
} cpaNcclState;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Only the owner of a communicator may abort it: a borrowed one (cpattnCommInitNccl) is
 * the caller's, who may still hold and destroy it. Aborting ends our kernels that wait
 * for a peer that will never come. */
static void abort_if_owned(cpaNcclState *s) {
  if (s->own && s->comm) {
    ncclCommAbort(s->comm);
    s->comm = NULL;
  }
}

/* Waits until the communicator's pending non-blocking operation settles. */
static cpattnResult_t settle(cpaNcclState *s, ncclResult_t r, const char *what, int64_t timeout_ms) {
  double deadline = timeout_ms < 0 ? -1 : now_ms() + (double)timeout_ms;
  while (r == ncclInProgress) {
    if (deadline >= 0 && now_ms() > deadline) {
      s->broken = 1;
      abort_if_owned(s);
      return cpaError(cpattnTimeout, "%s: NCCL made no progress within %lld ms (a peer stalled or died); %s", what,
                      (long long)timeout_ms, s->own ? "the communicator was aborted" : "its owner must abort it");
    }
    if (ncclCommGetAsyncError(s->comm, &r) != ncclSuccess) break;
  }
  if (r != ncclSuccess) {
    s->broken = 1;
    return cpaError(r == ncclRemoteError ? cpattnRemoteError : cpattnNcclError, "%s: %s (%s)", what,
                    ncclGetErrorString(r), ncclGetLastError(s->comm));
  }
  return cpattnSuccess;
}

static cpattnResult_t nccl_exchange(cpattnTransport_t *t, const cpattnXfer_t *sends, int ns, const cpattnXfer_t *recvs,
                                    int nr, int tag, struct CUstream_st *stream, int *handle) {
  (void)tag; /* NCCL matches point-to-point operations by issue order */
  cpaNcclState *s = t->state;
  if (s->broken) return cpaError(cpattnRemoteError, "the NCCL communicator is unusable after an earlier error");
  int slot = s->next;
  s->next = (s->next + 1) % CPA_NCCL_SLOTS;
  cudaError_t ce = cudaEventRecord(s->ready[slot], stream);
  if (ce == cudaSuccess) ce = cudaStreamWaitEvent(s->cs, s->ready[slot], 0);
  if (ce != cudaSuccess) return cpaError(cpattnCudaError, "ordering an exchange: %s", cudaGetErrorString(ce));
  ncclResult_t r = ncclGroupStart();
  /* Zero-byte transfers are skipped on both sides (both compute the same sizes). */
  for (int i = 0; i < nr && r == ncclSuccess; ++i)
    if (recvs[i].bytes) r = ncclRecv(recvs[i].buf, recvs[i].bytes, ncclUint8, recvs[i].peer, s->comm, s->cs);
  for (int i = 0; i < ns && r == ncclSuccess; ++i)
    if (sends[i].bytes) r = ncclSend(sends[i].buf, sends[i].bytes, ncclUint8, sends[i].peer, s->comm, s->cs);
  ncclResult_t g = ncclGroupEnd();
  if (r == ncclSuccess) r = g;
  int64_t bound = s->owner && s->owner->call_timeout_ms ? s->owner->call_timeout_ms : cpaParamInt(CPA_PARAM_TIMEOUT_MS);
  CPA_CHECK(settle(s, r, "NCCL send/recv", bound));
  ce = cudaEventRecord(s->done[slot], s->cs);
  if (ce != cudaSuccess) return cpaError(cpattnCudaError, "ordering an exchange: %s", cudaGetErrorString(ce));
  *handle = slot;
  return cpattnSuccess;
}

static cpattnResult_t nccl_wait(cpattnTransport_t *t, int handle, struct CUstream_st *stream, int64_t timeout_ms) {
  (void)timeout_ms; /* the wait is on the device; the host never blocks here */
  cpaNcclState *s = t->state;
  if (handle < 0 || handle >= CPA_NCCL_SLOTS) return cpaError(cpattnInternalError, "wait on an unknown exchange %d", handle);
  cudaError_t ce = cudaStreamWaitEvent(stream, s->done[handle], 0);
  if (ce != cudaSuccess) return cpaError(cpattnCudaError, "waiting for an exchange: %s", cudaGetErrorString(ce));
  ncclResult_t ar = ncclSuccess;
  if (ncclCommGetAsyncError(s->comm, &ar) == ncclSuccess && ar != ncclSuccess && ar != ncclInProgress) {
    s->broken = 1;
    return cpaError(ar == ncclRemoteError ? cpattnRemoteError : cpattnNcclError, "NCCL reported: %s",
                    ncclGetErrorString(ar));
  }
  return cpattnSuccess;
}

/* Blocking (plan-time only): min and max of n int64 over ranks, through the device. */
static cpattnResult_t nccl_minmax(cpattnTransport_t *t, const int64_t *vals, int n, int64_t *mins, int64_t *maxs,
                                  int64_t timeout_ms) {
  cpaNcclState *s = t->state;
  if (s->broken) return cpaError(cpattnRemoteError, "the NCCL communicator is unusable after an earlier error");
  if (n > 64) return cpaError(cpattnInternalError, "minmax of %d values", n);
  cudaError_t ce = cudaMemcpyAsync(s->agree_buf, vals, sizeof(int64_t) * (size_t)n, cudaMemcpyHostToDevice, s->cs);
  if (ce != cudaSuccess) return cpaError(cpattnCudaError, "agreement check: %s", cudaGetErrorString(ce));
  ncclResult_t r = ncclGroupStart();
  if (r == ncclSuccess) r = ncclAllReduce(s->agree_buf, s->agree_buf + 64, (size_t)n, ncclInt64, ncclMin, s->comm, s->cs);
  if (r == ncclSuccess) r = ncclAllReduce(s->agree_buf, s->agree_buf + 128, (size_t)n, ncclInt64, ncclMax, s->comm, s->cs);
  ncclResult_t g = ncclGroupEnd();
  if (r == ncclSuccess) r = g;
  CPA_CHECK(settle(s, r, "agreement check (ncclAllReduce)", timeout_ms));
  /* Poll rather than synchronize, so a peer that never arrives becomes a timeout. */
  double deadline = timeout_ms < 0 ? -1 : now_ms() + (double)timeout_ms;
  while ((ce = cudaStreamQuery(s->cs)) == cudaErrorNotReady) {
    ncclResult_t ar = ncclSuccess;
    ncclCommGetAsyncError(s->comm, &ar);
    if (ar != ncclSuccess && ar != ncclInProgress) return settle(s, ar, "agreement check", timeout_ms);
    if (deadline >= 0 && now_ms() > deadline) {
      s->broken = 1;
      abort_if_owned(s);
      return cpaError(cpattnTimeout, "agreement check: a peer did not answer within %lld ms; %s",
                      (long long)timeout_ms, s->own ? "the communicator was aborted" : "its owner must abort it");
    }
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  if (ce != cudaSuccess) return cpaError(cpattnCudaError, "agreement check: %s", cudaGetErrorString(ce));
  if (cudaMemcpy(mins, s->agree_buf + 64, sizeof(int64_t) * (size_t)n, cudaMemcpyDeviceToHost) != cudaSuccess ||
      cudaMemcpy(maxs, s->agree_buf + 128, sizeof(int64_t) * (size_t)n, cudaMemcpyDeviceToHost) != cudaSuccess)
    return cpaError(cpattnCudaError, "agreement check: copy back failed");
  return cpattnSuccess;
}

/* cpattnCommSynchronize: poll the stream and NCCL's error state against a deadline. A
 * stalled or dead peer leaves our NCCL kernels spinning on the device; only an abort of
 * the communicator ends them, and only the owner of the communicator may do that. */
static cpattnResult_t nccl_sync(struct cpattnComm *c, struct CUstream_st *stream, int64_t timeout_ms) {
  cpaNcclState *s = c->tr.state;
  if (s->broken || !s->comm)
    return cpaError(cpattnRemoteError, "the NCCL communicator is unusable after an earlier error");
  double deadline = timeout_ms < 0 ? -1 : now_ms() + (double)timeout_ms;
  cudaError_t ce;
  struct timespec nap = {0, 50000};
  while ((ce = cudaStreamQuery(stream)) == cudaErrorNotReady) {
    ncclResult_t ar = ncclSuccess;
    if (ncclCommGetAsyncError(s->comm, &ar) == ncclSuccess && ar != ncclSuccess && ar != ncclInProgress) {
      s->broken = 1;
      abort_if_owned(s);
      return cpaError(ar == ncclRemoteError ? cpattnRemoteError : cpattnNcclError,
                      "cpattnCommSynchronize: NCCL reported %s%s", ncclGetErrorString(ar),
                      s->own ? "; the communicator was aborted" : "");
    }
    if (deadline >= 0 && now_ms() > deadline) {
      s->broken = 1;
      abort_if_owned(s);
      return cpaError(cpattnTimeout,
                      "cpattnCommSynchronize: the stream did not finish within %lld ms (a peer stalled or died); %s",
                      (long long)timeout_ms,
                      s->own ? "the communicator was aborted"
                             : "the NCCL communicator is borrowed: its owner must abort it (ncclCommAbort)");
    }
    nanosleep(&nap, NULL);
  }
  if (ce != cudaSuccess) return cpaError(cpattnCudaError, "cpattnCommSynchronize: %s", cudaGetErrorString(ce));
  return cpattnSuccess;
}

static void nccl_destroy(cpattnTransport_t *t) {
  cpaNcclState *s = t->state;
  if (!s) return;
  cudaSetDevice(t->device);
  if (s->cs && !s->broken) cudaStreamSynchronize(s->cs); /* broken: its kernels may never end */
  for (int i = 0; i < CPA_NCCL_SLOTS; ++i) {
    if (s->ready[i]) cudaEventDestroy(s->ready[i]);
    if (s->done[i]) cudaEventDestroy(s->done[i]);
  }
  if (s->agree_buf) cudaFree(s->agree_buf);
  if (s->cs) cudaStreamDestroy(s->cs);
  if (s->own && s->comm) {
    if (s->broken) ncclCommAbort(s->comm);
    else ncclCommDestroy(s->comm);
  }
  free(s);
  t->state = NULL;
}

cpattnResult_t cpaNcclTransportInit(cpattnComm_t *comm, ncclComm_t nccl, int device, int own, int nonblocking) {
  CPA_REQUIRE(comm != NULL, "comm must not be NULL");
  *comm = NULL;
  CPA_REQUIRE(nccl != NULL, "nccl must not be NULL");
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || device < 0 || device >= ndev)
    return cpaError(cpattnInvalidArgument, "cudaDevice = %d is not a visible CUDA device (%d visible)", device, ndev);
  cpaNcclState *s = calloc(1, sizeof *s);
  if (!s) return cpaError(cpattnOutOfMemory, "no host memory for the NCCL transport");
  s->comm = nccl;
  s->own = own;
  s->nonblocking = nonblocking;
  cpattnTransport_t t;
  memset(&t, 0, sizeof t);
  t.kind = cpattnExecutorCuda;
  t.device = device;
  t.state = s;
  t.exchange = nccl_exchange;
  t.wait = nccl_wait;
  t.minmax = nccl_minmax;
  t.destroy = nccl_destroy;
  cudaError_t ce = cudaSetDevice(device);
  /* A priority stream: exchanges that are ready should not queue behind attention. */
  int lo = 0, hi = 0;
  if (ce == cudaSuccess) ce = cudaDeviceGetStreamPriorityRange(&lo, &hi);
  if (ce == cudaSuccess) ce = cudaStreamCreateWithPriority(&s->cs, cudaStreamNonBlocking, hi);
  for (int i = 0; i < CPA_NCCL_SLOTS && ce == cudaSuccess; ++i) {
    ce = cudaEventCreateWithFlags(&s->ready[i], cudaEventDisableTiming);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&s->done[i], cudaEventDisableTiming);
  }
  if (ce == cudaSuccess) ce = cudaMalloc((void **)&s->agree_buf, sizeof(int64_t) * 192);
  if (ce != cudaSuccess) {
    s->own = 0; /* the caller keeps its communicator when we fail */
    nccl_destroy(&t);
    return cpaError(cpattnCudaError, "setting up the NCCL transport on device %d: %s", device, cudaGetErrorString(ce));
  }
  ncclResult_t r = ncclCommUserRank(nccl, &t.rank);
  if (r == ncclSuccess) r = ncclCommCount(nccl, &t.size);
  if (r != ncclSuccess) {
    s->own = 0;
    nccl_destroy(&t);
    return cpaError(cpattnNcclError, "querying the NCCL communicator: %s", ncclGetErrorString(r));
  }
  cpattnResult_t res = cpattnCommInitTransport(comm, &t);
  if (res == cpattnSuccess) {
    (*comm)->sync = nccl_sync;
    s->owner = *comm;
  }
  return res;
}

CPATTN_API cpattnResult_t cpattnCommInitNccl(cpattnComm_t *comm, struct ncclComm *nccl, int cudaDevice) {
  cpaClearError();
  return cpaNcclTransportInit(comm, nccl, cudaDevice, 0, 0);
}

CPATTN_API cpattnResult_t cpattnCommInitNcclOwned(cpattnComm_t *comm, struct ncclComm *nccl, int cudaDevice,
                                                  int nonBlocking) {
  cpaClearError();
  return cpaNcclTransportInit(comm, nccl, cudaDevice, 1, nonBlocking);
}

CPATTN_API cpattnResult_t cpattnGetNcclUniqueId(void *id, size_t bytes) {
  cpaClearError();
  CPA_REQUIRE(id != NULL, "id must not be NULL");
  CPA_REQUIRE(bytes >= sizeof(ncclUniqueId), "bytes = %zu, an NCCL unique id needs %zu", bytes, sizeof(ncclUniqueId));
  ncclUniqueId u;
  ncclResult_t r = ncclGetUniqueId(&u);
  if (r != ncclSuccess) return cpaError(cpattnNcclError, "ncclGetUniqueId: %s", ncclGetErrorString(r));
  memcpy(id, &u, sizeof u);
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnCommInitNcclRank(cpattnComm_t *comm, int nranks, int rank, const void *id,
                                                 int cudaDevice) {
  cpaClearError();
  CPA_REQUIRE(comm != NULL && id != NULL, "comm and id must not be NULL");
  *comm = NULL;
  CPA_REQUIRE(nranks >= 1 && rank >= 0 && rank < nranks, "rank = %d must be in [0, nranks = %d)", rank, nranks);
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || cudaDevice < 0 || cudaDevice >= ndev)
    return cpaError(cpattnInvalidArgument, "cudaDevice = %d is not a visible CUDA device (%d visible)", cudaDevice,
                    ndev);
  if (cudaSetDevice(cudaDevice) != cudaSuccess) return cpaError(cpattnCudaError, "cudaSetDevice(%d) failed", cudaDevice);
  ncclUniqueId u;
  memcpy(&u, id, sizeof u);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0; /* so that waits can be bounded and a stalled peer aborted */
  ncclComm_t nccl = NULL;
  ncclResult_t r = ncclCommInitRankConfig(&nccl, nranks, u, rank, &config);
  double deadline = now_ms() + (double)cpaParamInt(CPA_PARAM_TIMEOUT_MS);
  while (r == ncclInProgress && now_ms() < deadline) ncclCommGetAsyncError(nccl, &r);
  if (r != ncclSuccess) {
    if (nccl) ncclCommAbort(nccl);
    return cpaError(r == ncclInProgress ? cpattnTimeout : cpattnNcclError,
                    "ncclCommInitRankConfig (rank %d of %d): %s", rank, nranks,
                    r == ncclInProgress ? "peers did not join in time" : ncclGetErrorString(r));
  }
  return cpaNcclTransportInit(comm, nccl, cudaDevice, 1, 1);
}
