/*
 * problem.c -- config validation and resolution (see problem.h).
 *
 * Every rule lives here once, and every failure message names the field, its value and
 * the rule, because the user reading it has a config struct in front of them.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "problem.h"

static int in_range(int v, int lo, int hi) { return v >= lo && v <= hi; }

cpattnResult_t cpaConfigCheck(const cpattnConfig_t *c) {
  CPA_REQUIRE(c != NULL, "config must not be NULL");
  CPA_REQUIRE(c->size == sizeof(cpattnConfig_t),
              "config->size = %zu, expected sizeof(cpattnConfig_t) = %zu: start from "
              "CPATTN_CONFIG_INITIALIZER",
              c->size, sizeof(cpattnConfig_t));
  CPA_REQUIRE(c->version / 100 == CPATTN_VERSION_CODE / 100,
              "config->version = %d was compiled against cpattn %d.%d, this library is %d.%d", c->version,
              c->version / 10000, c->version / 100 % 100, CPATTN_VERSION_MAJOR, CPATTN_VERSION_MINOR);
  CPA_REQUIRE(in_range(c->layout, cpattnLayoutBSHD, cpattnLayoutTHD),
              "config->layout = %d is not a cpattnLayout_t", (int)c->layout);
  CPA_REQUIRE(in_range(c->dtype, cpattnFloat32, cpattnFloat16), "config->dtype = %d is not a cpattnDataType_t",
              (int)c->dtype);
  CPA_REQUIRE(c->batch >= 1, "config->batch = %d must be >= 1", c->batch);
  CPA_REQUIRE(c->numHeadsQ >= 1, "config->numHeadsQ = %d must be >= 1", c->numHeadsQ);
  CPA_REQUIRE(c->numHeadsKV >= 1, "config->numHeadsKV = %d must be >= 1", c->numHeadsKV);
  CPA_REQUIRE(c->numHeadsQ % c->numHeadsKV == 0,
              "config->numHeadsKV = %d must divide config->numHeadsQ = %d (MHA, GQA or MQA)", c->numHeadsKV,
              c->numHeadsQ);
  CPA_REQUIRE(in_range(c->headDimQK, 1, 256), "config->headDimQK = %d must be in 1..256", c->headDimQK);
  CPA_REQUIRE(c->headDimV == 0 || in_range(c->headDimV, 1, 256),
              "config->headDimV = %d must be 0 (same as headDimQK) or in 1..256", c->headDimV);
  if (c->layout == cpattnLayoutTHD) {
    CPA_REQUIRE(c->cuSeqlens != NULL, "config->cuSeqlens must not be NULL for layout THD");
    CPA_REQUIRE(c->cuSeqlens[0] == 0, "config->cuSeqlens[0] = %d must be 0", (int)c->cuSeqlens[0]);
    for (int i = 0; i < c->batch; ++i)
      CPA_REQUIRE(c->cuSeqlens[i + 1] >= c->cuSeqlens[i],
                  "config->cuSeqlens must be non-decreasing: cuSeqlens[%d] = %d < cuSeqlens[%d] = %d", i + 1,
                  (int)c->cuSeqlens[i + 1], i, (int)c->cuSeqlens[i]);
    CPA_REQUIRE(c->seqLen >= 1, "config->seqLen = %lld must be >= 1 (the total token count for THD)",
                (long long)c->seqLen);
    CPA_REQUIRE(c->cuSeqlens[c->batch] == c->seqLen,
                "config->cuSeqlens[batch=%d] = %d must equal config->seqLen = %lld (the total token count)",
                c->batch, (int)c->cuSeqlens[c->batch], (long long)c->seqLen);
  } else {
    CPA_REQUIRE(c->cuSeqlens == NULL, "config->cuSeqlens must be NULL unless layout is THD");
    CPA_REQUIRE(c->seqLen >= 1, "config->seqLen = %lld must be >= 1", (long long)c->seqLen);
    CPA_REQUIRE(c->seqLen <= INT32_MAX, "config->seqLen = %lld must be <= %d", (long long)c->seqLen,
                (int)INT32_MAX);
  }
  CPA_REQUIRE(in_range(c->mask, cpattnMaskNone, cpattnMaskSlidingWindow), "config->mask = %d is not a cpattnMask_t",
              (int)c->mask);
  if (c->mask == cpattnMaskSlidingWindow) {
    CPA_REQUIRE(c->windowLeft >= -1, "config->windowLeft = %d must be >= -1 (-1 = unbounded)", c->windowLeft);
    CPA_REQUIRE(c->windowRight >= -1, "config->windowRight = %d must be >= -1 (-1 = unbounded)", c->windowRight);
  } else {
    CPA_REQUIRE(c->windowLeft == -1 && c->windowRight == -1,
                "config->windowLeft = %d / windowRight = %d are set but config->mask is not "
                "cpattnMaskSlidingWindow (leave them -1)",
                c->windowLeft, c->windowRight);
  }
  CPA_REQUIRE(isfinite(c->softmaxScale) && c->softmaxScale >= 0.0f,
              "config->softmaxScale = %g must be finite and >= 0 (0 = 1/sqrt(headDimQK))", (double)c->softmaxScale);
  CPA_REQUIRE(in_range(c->schedule, cpattnScheduleAuto, cpattnScheduleHybrid),
              "config->schedule = %d is not a cpattnSchedule_t", (int)c->schedule);
  if (c->schedule == cpattnScheduleHybrid)
    CPA_REQUIRE(c->a2aGroupSize >= 1, "config->a2aGroupSize = %d must be >= 1 for schedule Hybrid", c->a2aGroupSize);
  else
    CPA_REQUIRE(c->a2aGroupSize == 0, "config->a2aGroupSize = %d must be 0 unless schedule is Hybrid",
                c->a2aGroupSize);
  CPA_REQUIRE(in_range(c->balance, cpattnBalanceAuto, cpattnBalanceContiguous),
              "config->balance = %d is not a cpattnBalance_t", (int)c->balance);
  CPA_REQUIRE(in_range(c->executor, cpattnExecutorAuto, cpattnExecutorCuda),
              "config->executor = %d is not a cpattnExecutor_t", (int)c->executor);
  CPA_REQUIRE(c->deterministic == 0 || c->deterministic == 1, "config->deterministic = %d must be 0 or 1",
              c->deterministic);
  CPA_REQUIRE(c->timeoutMs >= -1, "config->timeoutMs = %d must be >= -1 (0 = CPATTN_TIMEOUT, -1 = forever)",
              c->timeoutMs);
  if (c->executor == cpattnExecutorHost && c->dtype == cpattnFloat16)
    return cpaError(cpattnNotSupported, "config->dtype = fp16 is not supported by the host executor (use fp32 or bf16)");
  if (c->executor == cpattnExecutorCuda && c->dtype == cpattnFloat32)
    return cpaError(cpattnNotSupported, "config->dtype = fp32 is not supported by the CUDA executor (use bf16 or fp16)");
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnConfigValidate(const cpattnConfig_t *config) {
  cpaClearError();
  return cpaConfigCheck(config);
}

void cpaProblemFree(cpaProblem *pb) {
  free(pb->cu_seqlens);
  free(pb->seq_len);
  memset(pb, 0, sizeof *pb);
}

/* Which split of the world the schedule uses, and whether the heads allow it. */
static cpattnResult_t resolve_split(cpaProblem *pb) {
  const cpattnConfig_t *c = &pb->cfg;
  int P = pb->world;
  switch (pb->schedule) {
    case cpattnScheduleRing: pb->pa = 1; pb->pr = P; break;
    case cpattnScheduleAllGather: pb->pa = 1; pb->pr = 1; break;
    case cpattnScheduleAllToAll: pb->pa = P; pb->pr = 1; break;
    case cpattnScheduleHybrid:
      CPA_REQUIRE(P % c->a2aGroupSize == 0,
                  "config->a2aGroupSize = %d must divide the communicator size %d", c->a2aGroupSize, P);
      pb->pa = c->a2aGroupSize;
      pb->pr = P / c->a2aGroupSize;
      break;
    default: return cpaError(cpattnInternalError, "schedule %d unresolved", (int)pb->schedule);
  }
  const char *who = pb->schedule == cpattnScheduleHybrid ? "config->a2aGroupSize" : "the communicator size";
  if (pb->pa > 1) {
    if (pb->hq % pb->pa != 0)
      return cpaError(cpattnNotSupported,
                      "config->numHeadsQ = %d must be a multiple of %s = %d for an all-to-all over heads "
                      "(use schedule Ring or AllGather)",
                      pb->hq, who, pb->pa);
    if (pb->hkv % pb->pa != 0 && pb->pa % pb->hkv != 0)
      return cpaError(cpattnNotSupported,
                      "config->numHeadsKV = %d and %s = %d: one must divide the other for the all-to-all "
                      "(KV heads are replicated when numHeadsKV < %d)",
                      pb->hkv, who, pb->pa, pb->pa);
  }
  pb->hq_local = pb->hq / pb->pa;
  pb->hkv_local = pb->hkv >= pb->pa ? pb->hkv / pb->pa : 1;
  return cpattnSuccess;
}

void cpaProblemKvHeads(const cpaProblem *pb, int a, int *first, int *count) {
  /* hkv >= pa: a contiguous slice; hkv < pa: pa/hkv consecutive members share one head,
   * which holds every query head of theirs because hq_local divides the group size. */
  *first = (int)((int64_t)a * pb->hkv / pb->pa);
  *count = pb->hkv_local;
}

cpattnResult_t cpaProblemInit(cpaProblem *pb, const cpattnConfig_t *config, int rank, int world,
                              cpattnExecutor_t comm_kind) {
  memset(pb, 0, sizeof *pb);
  CPA_CHECK(cpaConfigCheck(config));
  CPA_REQUIRE(world >= 1 && rank >= 0 && rank < world, "rank %d / world size %d are inconsistent", rank, world);
  CPA_REQUIRE(world <= INT32_MAX / 2, "world size %d must be <= %d (zigzag: 2 * world chunks)", world, INT32_MAX / 2);
  pb->cfg = *config;
  pb->world = world;
  pb->rank = rank;
  const cpattnConfig_t *c = &pb->cfg;

  pb->executor = c->executor == cpattnExecutorAuto ? comm_kind : c->executor;
  if (pb->executor != comm_kind)
    return cpaError(cpattnInvalidArgument,
                    "config->executor = %s but the communicator is a %s communicator (use cpattnCommInitMpi "
                    "for the host executor, an NCCL communicator for the CUDA executor)",
                    pb->executor == cpattnExecutorHost ? "Host" : "Cuda",
                    comm_kind == cpattnExecutorHost ? "host (MPI)" : "CUDA (NCCL)");
  if (pb->executor == cpattnExecutorHost && c->dtype == cpattnFloat16)
    return cpaError(cpattnNotSupported, "config->dtype = fp16 is not supported by the host executor (use fp32 or bf16)");
  if (pb->executor == cpattnExecutorCuda && c->dtype == cpattnFloat32)
    return cpaError(cpattnNotSupported, "config->dtype = fp32 is not supported by the CUDA executor (use bf16 or fp16)");

  pb->hq = c->numHeadsQ;
  pb->hkv = c->numHeadsKV;
  pb->dqk = c->headDimQK;
  pb->dv = c->headDimV ? c->headDimV : c->headDimQK;
  pb->scale = c->softmaxScale > 0.0f ? c->softmaxScale : 1.0f / sqrtf((float)pb->dqk);
  pb->cfg.headDimV = pb->dv;

  if (c->mask == cpattnMaskCausal) {
    pb->band_lo = CPA_UNBOUNDED;
    pb->band_hi = 0;
  } else if (c->mask == cpattnMaskSlidingWindow) {
    pb->band_lo = c->windowLeft;
    pb->band_hi = c->windowRight;
  } else {
    pb->band_lo = pb->band_hi = CPA_UNBOUNDED;
  }
  pb->causal = pb->band_lo == CPA_UNBOUNDED && pb->band_hi == 0;
  pb->masked = pb->band_lo != CPA_UNBOUNDED || pb->band_hi != CPA_UNBOUNDED;

  pb->schedule = c->schedule == cpattnScheduleAuto ? cpattnScheduleRing : c->schedule;
  /* Zigzag only pays where the work per position grows along the sequence (causal);
   * windows do the same work everywhere, and contiguous keeps their halos short. */
  pb->balance = c->balance != cpattnBalanceAuto ? c->balance
                : pb->causal                    ? cpattnBalanceZigzag
                                                : cpattnBalanceContiguous;
  pb->timeout_ms = c->timeoutMs == 0 ? cpaParamInt(CPA_PARAM_TIMEOUT_MS) : c->timeoutMs;
  CPA_CHECK(resolve_split(pb));

  if (c->layout == cpattnLayoutTHD) {
    pb->nseq = c->batch;
    pb->batch_mult = 1;
    pb->cu_seqlens = malloc(sizeof(int32_t) * (size_t)(c->batch + 1));
    pb->seq_len = malloc(sizeof(int64_t) * (size_t)c->batch);
    if (!pb->cu_seqlens || !pb->seq_len) {
      cpaProblemFree(pb);
      return cpaError(cpattnOutOfMemory, "no host memory for %d sequence lengths", c->batch);
    }
    memcpy(pb->cu_seqlens, c->cuSeqlens, sizeof(int32_t) * (size_t)(c->batch + 1));
    for (int i = 0; i < c->batch; ++i) pb->seq_len[i] = pb->cu_seqlens[i + 1] - pb->cu_seqlens[i];
    pb->cfg.cuSeqlens = pb->cu_seqlens;
    pb->seq_start = pb->cu_seqlens;
  } else {
    int chunks = pb->balance == cpattnBalanceZigzag ? 2 * world : world;
    if (c->seqLen < chunks)
      return cpaError(cpattnInvalidArgument,
                      "config->seqLen = %lld is shorter than the %d chunks a %s split over %d ranks needs: every "
                      "rank must hold at least one token of a BSHD/SBHD sequence",
                      (long long)c->seqLen, chunks, pb->balance == cpattnBalanceZigzag ? "zigzag" : "contiguous",
                      world);
    pb->nseq = 1;
    pb->batch_mult = c->batch;
    pb->seq_len = malloc(sizeof(int64_t));
    pb->cu_seqlens = malloc(sizeof(int32_t) * 2);
    if (!pb->seq_len || !pb->cu_seqlens) {
      cpaProblemFree(pb);
      return cpaError(cpattnOutOfMemory, "no host memory");
    }
    pb->seq_len[0] = c->seqLen;
    pb->cu_seqlens[0] = 0;
    pb->cu_seqlens[1] = (int32_t)c->seqLen;
    pb->seq_start = pb->cu_seqlens;
  }
  return cpattnSuccess;
}

void cpaProblemDigest(const cpaProblem *pb, int64_t *vals, const char **names, int *n_out) {
  const cpattnConfig_t *c = &pb->cfg;
  int n = 0;
#define DIGEST(name, value) \
  do {                      \
    names[n] = name;        \
    vals[n++] = (int64_t)(value); \
  } while (0)
  /* A float compared through its bits: ranks must pass the same scale, not a close one. */
  int32_t scale_bits;
  memcpy(&scale_bits, &pb->scale, sizeof scale_bits);
  /* cuSeqlens folded into one FNV-1a hash: lengths must agree exactly. */
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i <= (c->layout == cpattnLayoutTHD ? c->batch : 0); ++i) {
    h ^= (uint32_t)pb->cu_seqlens[i];
    h *= 1099511628211ull;
  }
  DIGEST("world size", pb->world);
  DIGEST("config->layout", c->layout);
  DIGEST("config->dtype", c->dtype);
  DIGEST("config->batch", c->batch);
  DIGEST("config->numHeadsQ", c->numHeadsQ);
  DIGEST("config->numHeadsKV", c->numHeadsKV);
  DIGEST("config->headDimQK", c->headDimQK);
  DIGEST("config->headDimV", pb->dv);
  DIGEST("config->seqLen", c->seqLen);
  DIGEST("config->cuSeqlens", (int64_t)(h >> 1));
  DIGEST("config->mask", c->mask);
  DIGEST("config->windowLeft", c->windowLeft);
  DIGEST("config->windowRight", c->windowRight);
  DIGEST("config->softmaxScale", scale_bits);
  DIGEST("config->schedule", pb->schedule);
  DIGEST("config->a2aGroupSize", c->a2aGroupSize);
  DIGEST("config->balance", pb->balance);
  DIGEST("config->executor", pb->executor);
  DIGEST("config->deterministic", c->deterministic);
  DIGEST("config->timeoutMs", pb->timeout_ms);
#undef DIGEST
  *n_out = n;
}
