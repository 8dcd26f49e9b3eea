/*
 * loopback.h -- a one-rank transport through the public transport interface, so that
 * single-process tests can make plans without MPI. Sends to rank 0 land in the receive
 * posted for rank 0 with the same position in the exchange.
 */
#ifndef CPATTN_TESTS_LOOPBACK_H_
#define CPATTN_TESTS_LOOPBACK_H_

#include <string.h>

#include "cpattn_transport.h"

static cpattnResult_t loopback_exchange(cpattnTransport_t *t, const cpattnXfer_t *s, int ns, const cpattnXfer_t *r,
                                        int nr, int tag, struct CUstream_st *stream, int *handle) {
  (void)t;
  (void)tag;
  (void)stream;
  if (ns != nr) return cpattnTransportSetError(cpattnInternalError, "loopback: %d sends, %d receives", ns, nr);
  for (int i = 0; i < ns; ++i) {
    if (s[i].bytes != r[i].bytes)
      return cpattnTransportSetError(cpattnInternalError, "loopback: send %zu bytes, receive %zu", s[i].bytes,
                                     r[i].bytes);
    if (s[i].bytes) memmove(r[i].buf, s[i].buf, s[i].bytes);
  }
  *handle = 0;
  return cpattnSuccess;
}

static cpattnResult_t loopback_wait(cpattnTransport_t *t, int h, struct CUstream_st *stream, int64_t timeout) {
  (void)t;
  (void)h;
  (void)stream;
  (void)timeout;
  return cpattnSuccess;
}

static cpattnResult_t loopback_minmax(cpattnTransport_t *t, const int64_t *v, int n, int64_t *mn, int64_t *mx,
                                      int64_t timeout) {
  (void)t;
  (void)timeout;
  memcpy(mn, v, sizeof(int64_t) * (size_t)n);
  memcpy(mx, v, sizeof(int64_t) * (size_t)n);
  return cpattnSuccess;
}

static cpattnResult_t loopback_comm(cpattnComm_t *comm) {
  cpattnTransport_t t;
  memset(&t, 0, sizeof t);
  t.kind = cpattnExecutorHost;
  t.rank = 0;
  t.size = 1;
  t.device = -1;
  t.exchange = loopback_exchange;
  t.wait = loopback_wait;
  t.minmax = loopback_minmax;
  return cpattnCommInitTransport(comm, &t);
}

#endif /* CPATTN_TESTS_LOOPBACK_H_ */
