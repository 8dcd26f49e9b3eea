/*
 * plan.c -- the public communicator and plan entry points: thin wrappers that check
 * their arguments and hand over to the engine.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "engine.h"
#include "nvtx.h"

struct cpattnPlan {
  cpattnComm_t comm;
  cpaEngine eng;
};

CPATTN_API cpattnResult_t cpattnCommInitTransport(cpattnComm_t *comm, const cpattnTransport_t *transport) {
  cpaClearError();
  CPA_REQUIRE(transport != NULL, "transport must not be NULL");
  if (!comm) {
    if (transport->destroy) transport->destroy((cpattnTransport_t *)transport);
    return cpaError(cpattnInvalidArgument, "comm must not be NULL");
  }
  *comm = NULL;
  cpattnTransport_t t = *transport;
  if (!t.exchange || !t.wait || !t.minmax || t.size < 1 || t.rank < 0 || t.rank >= t.size ||
      (t.kind != cpattnExecutorHost && t.kind != cpattnExecutorCuda)) {
    if (t.destroy) t.destroy(&t);
    return cpaError(cpattnInvalidArgument,
                    "transport is incomplete: exchange, wait and minmax are required, rank %d must be in [0, size "
                    "%d), kind Host or Cuda",
                    t.rank, t.size);
  }
  struct cpattnComm *c = calloc(1, sizeof *c);
  if (!c) {
    if (t.destroy) t.destroy(&t);
    return cpaError(cpattnOutOfMemory, "no host memory for a communicator");
  }
  c->tr = t;
  cpaLogSetRank(t.rank, t.device);
  *comm = c;
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnCommDestroy(cpattnComm_t comm) {
  cpaClearError();
  if (!comm) return cpattnSuccess;
  if (comm->nplans > 0)
    return cpaError(cpattnInvalidUsage, "cpattnCommDestroy: %d plan(s) made from this communicator still exist; "
                    "destroy them first", comm->nplans);
  if (comm->cuda_shared_free) comm->cuda_shared_free(comm->cuda_shared);
  if (comm->tr.destroy) comm->tr.destroy(&comm->tr);
  free(comm);
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnCommSynchronize(cpattnComm_t comm, struct CUstream_st *stream, int64_t timeoutMs) {
  cpaClearError();
  CPA_REQUIRE(comm != NULL, "comm must not be NULL");
  CPA_REQUIRE(timeoutMs >= -1, "timeoutMs = %lld must be -1 (no bound), 0 (CPATTN_TIMEOUT) or positive",
              (long long)timeoutMs);
  if (comm->tr.kind == cpattnExecutorHost) return cpattnSuccess; /* host calls are already complete */
  if (!comm->sync)
    return cpaError(cpattnNotSupported, "cpattnCommSynchronize: this communicator's transport has no bounded wait; "
                    "use cudaStreamSynchronize");
  return comm->sync(comm, stream, timeoutMs == 0 ? cpaParamInt(CPA_PARAM_TIMEOUT_MS) : timeoutMs);
}

CPATTN_API cpattnResult_t cpattnCommGetRank(cpattnComm_t comm, int *rank) {
  cpaClearError();
  CPA_REQUIRE(comm != NULL && rank != NULL, "comm and rank must not be NULL");
  *rank = comm->tr.rank;
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnCommGetSize(cpattnComm_t comm, int *size) {
  cpaClearError();
  CPA_REQUIRE(comm != NULL && size != NULL, "comm and size must not be NULL");
  *size = comm->tr.size;
  return cpattnSuccess;
}

/* Every rank learns whether every other rank's config and plan creation went well. Each
 * rank contributes its status and the digest of its config; min/max per field tell
 * whether all agree, and which field differs first. Doing this even when the local
 * config failed validation is what keeps a bad rank from leaving the others hanging. */
static cpattnResult_t agree(cpattnComm_t comm, const cpaProblem *pb, cpattnResult_t local) {
  int64_t vals[CPA_DIGEST_MAX + 1], mins[CPA_DIGEST_MAX + 1], maxs[CPA_DIGEST_MAX + 1];
  const char *names[CPA_DIGEST_MAX];
  int n = 0;
  if (local == cpattnSuccess) cpaProblemDigest(pb, vals + 1, names, &n);
  else {
    /* Names come from a digest of nothing: the failing rank reports its own error. */
    n = 0;
  }
  int64_t timeout = local == cpattnSuccess ? pb->timeout_ms : cpaParamInt(CPA_PARAM_TIMEOUT_MS);
  /* A fixed-size vector: a failed rank sends a status and zeros, so sizes always match. */
  vals[0] = local;
  for (int i = n + 1; i <= CPA_DIGEST_MAX; ++i) vals[i] = 0;
  char saved[1024];
  snprintf(saved, sizeof saved, "%s", cpattnGetLastError());
  cpattnResult_t res = comm->tr.minmax(&comm->tr, vals, CPA_DIGEST_MAX + 1, mins, maxs, timeout);
  if (res != cpattnSuccess) return res;
  if (local != cpattnSuccess) return cpaError(local, "%s", saved);
  if (maxs[0] != cpattnSuccess || mins[0] != cpattnSuccess)
    return cpaError(cpattnRemoteError, "cpattnPlanCreate failed on another rank (status %lld); see that rank's error",
                    (long long)(maxs[0] != cpattnSuccess ? maxs[0] : mins[0]));
  for (int i = 0; i < n; ++i)
    if (mins[i + 1] != maxs[i + 1])
      return cpaError(cpattnConfigMismatch,
                      "ranks passed different configs to cpattnPlanCreate: %s differs (this rank: %lld, range "
                      "across ranks %lld..%lld)",
                      names[i], (long long)vals[i + 1], (long long)mins[i + 1], (long long)maxs[i + 1]);
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnPlanCreate(cpattnPlan_t *plan, cpattnComm_t comm, const cpattnConfig_t *config) {
  cpaClearError();
  CPA_REQUIRE(plan != NULL, "plan must not be NULL");
  *plan = NULL;
  CPA_REQUIRE(comm != NULL, "comm must not be NULL");
  cpaNvtxPush("cpattnPlanCreate");
  struct cpattnPlan *p = calloc(1, sizeof *p);
  cpattnResult_t res = p ? cpattnSuccess : cpaError(cpattnOutOfMemory, "no host memory for a plan");
  /* Validation only first (cheap, and it lets the agreement check run before any rank
   * builds cuDNN plans on a config that another rank rejected). */
  cpaProblem pb;
  memset(&pb, 0, sizeof pb);
  if (res == cpattnSuccess) res = cpaProblemInit(&pb, config, comm->tr.rank, comm->tr.size, comm->tr.kind);
  res = agree(comm, &pb, res);
  cpaProblemFree(&pb);
  if (res == cpattnSuccess) res = cpaEngineInit(&p->eng, comm, &comm->tr, config);
  if (res == cpattnSuccess) {
    p->comm = comm;
    comm->nplans++;
    *plan = p;
    if (cpaLogLevelGet() >= CPA_LOG_INFO) {
      char buf[4096];
      cpattnPlanDescribe(p, buf, sizeof buf);
      CPA_INFO("plan created:\n%s", buf);
    }
  } else {
    free(p);
  }
  cpaNvtxPop();
  return res;
}

CPATTN_API cpattnResult_t cpattnPlanDestroy(cpattnPlan_t plan) {
  cpaClearError();
  if (!plan) return cpattnSuccess;
  plan->comm->nplans--;
  cpaEngineFree(&plan->eng);
  free(plan);
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnPlanGetWorkspaceSize(cpattnPlan_t plan, size_t *bytes) {
  cpaClearError();
  CPA_REQUIRE(plan != NULL && bytes != NULL, "plan and bytes must not be NULL");
  *bytes = plan->eng.ws_bytes;
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnPlanGetLocalTokenCount(cpattnPlan_t plan, int64_t *count) {
  cpaClearError();
  CPA_REQUIRE(plan != NULL && count != NULL, "plan and count must not be NULL");
  *count = cpaRankRows(&plan->eng.pb, plan->eng.pb.rank);
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnPlanDescribe(cpattnPlan_t plan, char *buf, size_t len) {
  cpaClearError();
  CPA_REQUIRE(plan != NULL && buf != NULL && len > 0, "plan and buf must not be NULL, len > 0");
  static const char *const sched[] = {"auto", "ring", "all-to-all", "all-gather", "hybrid"};
  static const char *const bal[] = {"auto", "zigzag", "contiguous"};
  const cpaEngine *e = &plan->eng;
  int n = snprintf(buf, len, "cpattn %d.%d.%d, %s executor, schedule %s, %s balance, workspace %zu bytes\n",
                   CPATTN_VERSION_MAJOR, CPATTN_VERSION_MINOR, CPATTN_VERSION_PATCH, e->ex.ops->name,
                   sched[e->pb.schedule], bal[e->pb.balance], e->ws_bytes);
  if (n > 0 && (size_t)n < len) cpaScheduleDescribe(&e->sched, buf + n, len - (size_t)n);
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnPlanSetProfile(cpattnPlan_t plan, cpattnProfile_t mode) {
  cpaClearError();
  CPA_REQUIRE(plan != NULL, "plan must not be NULL");
  CPA_REQUIRE(mode >= cpattnProfileNormal && mode <= cpattnProfileCommOnly, "mode = %d is not a cpattnProfile_t",
              (int)mode);
  plan->eng.profile = mode;
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnForward(cpattnPlan_t plan, const cpattnTensor_t *q, const cpattnTensor_t *k,
                                        const cpattnTensor_t *v, const cpattnTensor_t *o, float *lse,
                                        void *workspace, size_t workspaceBytes, struct CUstream_st *stream) {
  cpaClearError();
  CPA_REQUIRE(plan != NULL, "plan must not be NULL");
  plan->comm->call_timeout_ms = plan->eng.pb.timeout_ms; /* for transports whose exchange may block */
  cpaNvtxPush("cpattnForward");
  cpattnResult_t res = cpaEngineForward(&plan->eng, q, k, v, o, lse, workspace, workspaceBytes, stream);
  cpaNvtxPop();
  return res;
}

CPATTN_API cpattnResult_t cpattnBackward(cpattnPlan_t plan, const cpattnTensor_t *q, const cpattnTensor_t *k,
                                         const cpattnTensor_t *v, const cpattnTensor_t *o,
                                         const cpattnTensor_t *do_, const float *lse, const cpattnTensor_t *dq,
                                         const cpattnTensor_t *dk, const cpattnTensor_t *dv, void *workspace,
                                         size_t workspaceBytes, struct CUstream_st *stream) {
  cpaClearError();
  CPA_REQUIRE(plan != NULL, "plan must not be NULL");
  plan->comm->call_timeout_ms = plan->eng.pb.timeout_ms; /* for transports whose exchange may block */
  cpaNvtxPush("cpattnBackward");
  cpattnResult_t res =
      cpaEngineBackward(&plan->eng, q, k, v, o, do_, lse, dq, dk, dv, workspace, workspaceBytes, stream);
  cpaNvtxPop();
  return res;
}
