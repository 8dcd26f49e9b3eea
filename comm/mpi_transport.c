/*
 * mpi_transport.c -- the host executor's transport: MPI point-to-point on host buffers.
 *
 * Exchanges are non-blocking (Irecv/Isend) so the engine can compute while a block
 * travels; waits poll with MPI_Testall against a deadline, so a stalled or dead peer
 * becomes cpattnTimeout instead of a hang. After a timeout the communicator is marked
 * broken: every later call fails at once (its peers are in an unknown state).
 */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpattn_mpi.h"
#include "cpattn_transport.h"

/* Errors go through the transport interface's exported setter: this library is not
 * part of libcpattn and cannot reach its internals. */
#define cpaError cpattnTransportSetError
#define CPA_REQUIRE(cond, ...)                                                  \
  do {                                                                          \
    if (!(cond)) return cpattnTransportSetError(cpattnInvalidArgument, __VA_ARGS__); \
  } while (0)
#define CPA_CHECK(call)                          \
  do {                                           \
    cpattnResult_t cpa_res_ = (call);            \
    if (cpa_res_ != cpattnSuccess) return cpa_res_; \
  } while (0)

#define CPA_MPI_SLOTS 64
/* MPI counts are int: larger transfers go as several messages of at most this size,
 * matched in order (same source, tag and communicator never overtake). */
#define CPA_MPI_PIECE ((size_t)1 << 30)

typedef struct {
  MPI_Request *reqs;
  int n, cap, used;
} cpaMpiSlot;

typedef struct {
  MPI_Comm comm;
  int broken;
  cpaMpiSlot slots[CPA_MPI_SLOTS];
} cpaMpiState;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static cpattnResult_t mpi_error(int rc, const char *what) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return cpaError(cpattnSystemError, "%s failed: %s", what, msg);
}

static int pieces(size_t bytes) { return bytes == 0 ? 1 : (int)((bytes + CPA_MPI_PIECE - 1) / CPA_MPI_PIECE); }

static cpattnResult_t slot_reserve(cpaMpiSlot *s, int n) {
  if (n > s->cap) {
    MPI_Request *r = realloc(s->reqs, sizeof(MPI_Request) * (size_t)n);
    if (!r) return cpaError(cpattnOutOfMemory, "no host memory for %d MPI requests", n);
    s->reqs = r;
    s->cap = n;
  }
  s->n = 0;
  return cpattnSuccess;
}

static cpattnResult_t post(cpaMpiState *m, cpaMpiSlot *s, const cpattnXfer_t *x, int tag, int is_send) {
  for (size_t off = 0; off < x->bytes || (off == 0 && x->bytes == 0); off += CPA_MPI_PIECE) {
    size_t n = x->bytes - off < CPA_MPI_PIECE ? x->bytes - off : CPA_MPI_PIECE;
    char *p = (char *)x->buf + off;
    int rc = is_send ? MPI_Isend(p, (int)n, MPI_BYTE, x->peer, tag, m->comm, &s->reqs[s->n])
                     : MPI_Irecv(p, (int)n, MPI_BYTE, x->peer, tag, m->comm, &s->reqs[s->n]);
    if (rc != MPI_SUCCESS) return mpi_error(rc, is_send ? "MPI_Isend" : "MPI_Irecv");
    s->n++;
    if (x->bytes == 0) break;
  }
  return cpattnSuccess;
}

static cpattnResult_t mpi_exchange(cpattnTransport_t *t, const cpattnXfer_t *sends, int nsends,
                                   const cpattnXfer_t *recvs, int nrecvs, int tag, struct CUstream_st *stream,
                                   int *handle) {
  (void)stream;
  cpaMpiState *m = t->state;
  if (m->broken) return cpaError(cpattnRemoteError, "the MPI communicator is unusable after an earlier timeout or error");
  int slot = 0;
  while (slot < CPA_MPI_SLOTS && m->slots[slot].used) ++slot;
  if (slot == CPA_MPI_SLOTS) return cpaError(cpattnInternalError, "more than %d exchanges in flight", CPA_MPI_SLOTS);
  cpaMpiSlot *s = &m->slots[slot];
  int need = 0;
  for (int i = 0; i < nsends; ++i) need += pieces(sends[i].bytes);
  for (int i = 0; i < nrecvs; ++i) need += pieces(recvs[i].bytes);
  CPA_CHECK(slot_reserve(s, need));
  /* Receives first: an early sender then finds its match posted (no unexpected-message
   * buffering of large blocks). */
  for (int i = 0; i < nrecvs; ++i) CPA_CHECK(post(m, s, &recvs[i], tag, 0));
  for (int i = 0; i < nsends; ++i) CPA_CHECK(post(m, s, &sends[i], tag, 1));
  s->used = 1;
  *handle = slot;
  return cpattnSuccess;
}

/* Polls until every request completes or the deadline passes. MPI_Testall also drives
 * MPI's progress engine, which is what moves large messages along. */
static cpattnResult_t wait_requests(cpaMpiState *m, MPI_Request *reqs, int n, int64_t timeout_ms, const char *what) {
  double deadline = timeout_ms < 0 ? -1.0 : now_ms() + (double)timeout_ms;
  for (unsigned spins = 0;; ++spins) {
    int done = 0;
    int rc = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      m->broken = 1;
      return mpi_error(rc, what);
    }
    if (done) return cpattnSuccess;
    if (deadline >= 0 && now_ms() > deadline) {
      m->broken = 1;
      return cpaError(cpattnTimeout, "%s: no progress within %lld ms (CPATTN_TIMEOUT / config->timeoutMs): a peer "
                      "stalled or died", what, (long long)timeout_ms);
    }
    if (spins > 1000) { /* after a short spin, stop burning the core the peers may need */
      struct timespec ts = {0, 50000};
      nanosleep(&ts, NULL);
    }
  }
}

static cpattnResult_t mpi_wait(cpattnTransport_t *t, int handle, struct CUstream_st *stream, int64_t timeout_ms) {
  (void)stream;
  cpaMpiState *m = t->state;
  if (handle < 0 || handle >= CPA_MPI_SLOTS || !m->slots[handle].used)
    return cpaError(cpattnInternalError, "wait on an unknown exchange %d", handle);
  cpaMpiSlot *s = &m->slots[handle];
  cpattnResult_t res = wait_requests(m, s->reqs, s->n, timeout_ms, "exchange");
  s->used = 0;
  return res;
}

static cpattnResult_t mpi_minmax(cpattnTransport_t *t, const int64_t *vals, int n, int64_t *mins, int64_t *maxs,
                                 int64_t timeout_ms) {
  cpaMpiState *m = t->state;
  if (m->broken) return cpaError(cpattnRemoteError, "the MPI communicator is unusable after an earlier timeout or error");
  MPI_Request reqs[2];
  int rc = MPI_Iallreduce(vals, mins, n, MPI_INT64_T, MPI_MIN, m->comm, &reqs[0]);
  if (rc == MPI_SUCCESS) rc = MPI_Iallreduce(vals, maxs, n, MPI_INT64_T, MPI_MAX, m->comm, &reqs[1]);
  if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Iallreduce");
  return wait_requests(m, reqs, 2, timeout_ms, "agreement check (MPI_Iallreduce)");
}

static void mpi_destroy(cpattnTransport_t *t) {
  cpaMpiState *m = t->state;
  if (!m) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  /* A broken communicator may have requests that will never complete: leave it to
   * MPI_Finalize / the abort that follows rather than block here. */
  if (!finalized && !m->broken) MPI_Comm_free(&m->comm);
  for (int i = 0; i < CPA_MPI_SLOTS; ++i) free(m->slots[i].reqs);
  free(m);
  t->state = NULL;
}

CPATTN_API cpattnResult_t cpattnCommInitMpi(cpattnComm_t *comm, MPI_Comm mpiComm) {
  CPA_REQUIRE(comm != NULL, "comm must not be NULL");
  *comm = NULL;
  int initialized = 0;
  MPI_Initialized(&initialized);
  CPA_REQUIRE(initialized, "MPI is not initialized: call MPI_Init before cpattnCommInitMpi");
  CPA_REQUIRE(mpiComm != MPI_COMM_NULL, "mpiComm must not be MPI_COMM_NULL");
  cpaMpiState *m = calloc(1, sizeof *m);
  if (!m) return cpaError(cpattnOutOfMemory, "no host memory for the MPI transport");
  int rc = MPI_Comm_dup(mpiComm, &m->comm);
  if (rc != MPI_SUCCESS) {
    free(m);
    return mpi_error(rc, "MPI_Comm_dup");
  }
  /* Errors come back as codes (so they become statuses) instead of aborting the job. */
  MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
  cpattnTransport_t t;
  memset(&t, 0, sizeof t);
  t.kind = cpattnExecutorHost;
  MPI_Comm_rank(m->comm, &t.rank);
  MPI_Comm_size(m->comm, &t.size);
  t.device = -1;
  t.state = m;
  t.exchange = mpi_exchange;
  t.wait = mpi_wait;
  t.minmax = mpi_minmax;
  t.destroy = mpi_destroy;
  return cpattnCommInitTransport(comm, &t);
}

CPATTN_API cpattnResult_t cpattnMpiLocalRank(MPI_Comm mpiComm, int *localRank, int *localSize) {
  CPA_REQUIRE(localRank != NULL && localSize != NULL, "localRank and localSize must not be NULL");
  MPI_Comm node;
  int rc = MPI_Comm_split_type(mpiComm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Comm_split_type");
  MPI_Comm_rank(node, localRank);
  MPI_Comm_size(node, localSize);
  MPI_Comm_free(&node);
  return cpattnSuccess;
}
