/*
 * shard.c -- tensor descriptors and the host-side sharding helpers of cpattn.h.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "problem.h"
#include "tokens.h"

CPATTN_API cpattnResult_t cpattnTensorInit(cpattnTensor_t *t, void *data, cpattnDataType_t dtype,
                                           cpattnLayout_t layout, int64_t batch, int64_t seq, int64_t heads,
                                           int64_t dim) {
  cpaClearError();
  CPA_REQUIRE(t != NULL, "t must not be NULL");
  CPA_REQUIRE(batch >= 1 || layout == cpattnLayoutTHD, "batch = %lld must be >= 1", (long long)batch);
  CPA_REQUIRE(seq >= 0 && heads >= 1 && dim >= 1, "seq = %lld, heads = %lld, dim = %lld: seq >= 0, others >= 1",
              (long long)seq, (long long)heads, (long long)dim);
  memset(t, 0, sizeof *t);
  t->data = data;
  t->dtype = dtype;
  switch (layout) {
    case cpattnLayoutBSHD:
      t->ndim = 4;
      t->dims[0] = batch; t->dims[1] = seq; t->dims[2] = heads; t->dims[3] = dim;
      t->strides[3] = 1; t->strides[2] = dim; t->strides[1] = heads * dim; t->strides[0] = seq * heads * dim;
      break;
    case cpattnLayoutSBHD:
      t->ndim = 4;
      t->dims[0] = seq; t->dims[1] = batch; t->dims[2] = heads; t->dims[3] = dim;
      t->strides[3] = 1; t->strides[2] = dim; t->strides[1] = heads * dim; t->strides[0] = batch * heads * dim;
      break;
    case cpattnLayoutTHD:
      t->ndim = 3;
      t->dims[0] = seq; t->dims[1] = heads; t->dims[2] = dim;
      t->strides[2] = 1; t->strides[1] = dim; t->strides[0] = heads * dim;
      break;
    default: return cpaError(cpattnInvalidArgument, "layout = %d is not a cpattnLayout_t", (int)layout);
  }
  return cpattnSuccess;
}

/* Every helper validates the config as a plan would, for this (rank, world). */
static cpattnResult_t problem_for(const cpattnConfig_t *config, int rank, int world, cpaProblem *pb) {
  CPA_REQUIRE(world >= 1, "worldSize = %d must be >= 1", world);
  CPA_REQUIRE(rank >= 0 && rank < world, "rank = %d must be in [0, worldSize = %d)", rank, world);
  cpattnExecutor_t kind = config && config->executor == cpattnExecutorCuda ? cpattnExecutorCuda : cpattnExecutorHost;
  return cpaProblemInit(pb, config, rank, world, kind);
}

CPATTN_API cpattnResult_t cpattnGetLocalTokenCount(const cpattnConfig_t *config, int rank, int worldSize,
                                                   int64_t *count) {
  cpaClearError();
  CPA_REQUIRE(count != NULL, "count must not be NULL");
  cpaProblem pb;
  CPA_CHECK(problem_for(config, rank, worldSize, &pb));
  *count = cpaRankRows(&pb, rank);
  cpaProblemFree(&pb);
  return cpattnSuccess;
}

CPATTN_API cpattnResult_t cpattnGetLocalPositions(const cpattnConfig_t *config, int rank, int worldSize,
                                                  int64_t *position, int32_t *seqIndex) {
  cpaClearError();
  CPA_REQUIRE(position != NULL, "position must not be NULL");
  cpaProblem pb;
  CPA_CHECK(problem_for(config, rank, worldSize, &pb));
  cpaRankPositions(&pb, rank, position, seqIndex);
  cpaProblemFree(&pb);
  return cpattnSuccess;
}

/* Element offset of (batch b, token-in-batch t, head h, 0) in a tensor of the layout. */
static int64_t elem_offset(const cpattnTensor_t *x, cpattnLayout_t layout, int64_t b, int64_t t, int64_t h) {
  if (layout == cpattnLayoutTHD) return t * x->strides[0] + h * x->strides[1];
  if (layout == cpattnLayoutBSHD) return b * x->strides[0] + t * x->strides[1] + h * x->strides[2];
  return t * x->strides[0] + b * x->strides[1] + h * x->strides[2];
}

static cpattnResult_t check_pair(const cpaProblem *pb, const cpattnTensor_t *full, const cpattnTensor_t *local,
                                 int64_t full_tokens, int64_t local_tokens) {
  const cpattnConfig_t *c = &pb->cfg;
  int thd = c->layout == cpattnLayoutTHD, nd = thd ? 3 : 4, tok = c->layout == cpattnLayoutBSHD ? 1 : 0;
  const cpattnTensor_t *ts[2] = {full, local};
  const char *names[2] = {"full", "local"};
  int64_t toks[2] = {full_tokens, local_tokens};
  for (int i = 0; i < 2; ++i) {
    const cpattnTensor_t *t = ts[i];
    CPA_REQUIRE(t != NULL, "%s must not be NULL", names[i]);
    CPA_REQUIRE(t->data != NULL || toks[i] == 0, "%s->data must not be NULL", names[i]);
    CPA_REQUIRE(t->ndim == nd, "%s->ndim = %d, the layout needs %d", names[i], t->ndim, nd);
    CPA_REQUIRE(t->dtype == full->dtype, "full and local must have the same dtype");
    CPA_REQUIRE(t->dtype == cpattnFloat32 || t->dtype == cpattnBFloat16 || t->dtype == cpattnFloat16,
                "%s->dtype = %d is not a cpattnDataType_t", names[i], (int)t->dtype);
    CPA_REQUIRE(t->dims[tok] == toks[i], "%s->dims[%d] = %lld, expected %lld tokens", names[i], tok,
                (long long)t->dims[tok], (long long)toks[i]);
    if (!thd) CPA_REQUIRE(t->dims[1 - tok] == c->batch, "%s batch dim = %lld, config->batch = %d", names[i],
                          (long long)t->dims[1 - tok], c->batch);
    CPA_REQUIRE(t->strides[nd - 1] == 1, "%s->strides[%d] must be 1", names[i], nd - 1);
  }
  CPA_REQUIRE(full->dims[nd - 2] == local->dims[nd - 2] && full->dims[nd - 1] == local->dims[nd - 1],
              "full and local must have the same heads and dim");
  return cpattnSuccess;
}

/* Copies rows between the full tensor and the local one: to_local selects the direction. */
static cpattnResult_t shard_copy(const cpattnConfig_t *config, int rank, int world, const cpattnTensor_t *full,
                                 const cpattnTensor_t *local, int to_local) {
  cpaProblem pb;
  CPA_CHECK(problem_for(config, rank, world, &pb));
  int64_t R = cpaRankRows(&pb, rank), full_tokens = pb.cfg.seqLen;
  cpattnResult_t res = check_pair(&pb, full, local, full_tokens, R);
  int64_t *pos = malloc(sizeof(int64_t) * (size_t)(R ? R : 1));
  int32_t *seq = malloc(sizeof(int32_t) * (size_t)(R ? R : 1));
  if (res == cpattnSuccess && (!pos || !seq)) res = cpaError(cpattnOutOfMemory, "no host memory for %lld rows", (long long)R);
  if (res == cpattnSuccess) {
    cpaRankPositions(&pb, rank, pos, seq);
    int nd = full->ndim;
    int64_t heads = full->dims[nd - 2], dim = full->dims[nd - 1], B = pb.batch_mult;
    size_t es = cpaDtypeSize(full->dtype);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < R; ++t) {
        int64_t ft = pb.seq_start[seq[t]] + pos[t]; /* token index in the full tensor */
        for (int64_t h = 0; h < heads; ++h) {
          char *f = (char *)full->data + (size_t)elem_offset(full, pb.cfg.layout, b, ft, h) * es;
          char *l = (char *)local->data + (size_t)elem_offset(local, pb.cfg.layout, b, t, h) * es;
          if (to_local) memcpy(l, f, (size_t)dim * es);
          else memcpy(f, l, (size_t)dim * es);
        }
      }
  }
  free(pos);
  free(seq);
  cpaProblemFree(&pb);
  return res;
}

CPATTN_API cpattnResult_t cpattnShardHost(const cpattnConfig_t *config, int rank, int worldSize,
                                          const cpattnTensor_t *full, cpattnTensor_t *local) {
  cpaClearError();
  return shard_copy(config, rank, worldSize, full, local, 1);
}

CPATTN_API cpattnResult_t cpattnGatherHost(const cpattnConfig_t *config, int rank, int worldSize,
                                           const cpattnTensor_t *local, cpattnTensor_t *full) {
  cpaClearError();
  return shard_copy(config, rank, worldSize, full, local, 0);
}

/* The LSE in its fixed layout is a tensor with dim 1: [b][h][s] has strides (h*s, 1, s)
 * for (b, s, h); [t][h] has strides (h, 1). */
static void lse_tensor(const cpaProblem *pb, float *data, int64_t tokens, cpattnTensor_t *t) {
  memset(t, 0, sizeof *t);
  t->data = data;
  t->dtype = cpattnFloat32;
  int64_t H = pb->hq;
  if (pb->cfg.layout == cpattnLayoutTHD) {
    t->ndim = 3;
    t->dims[0] = tokens; t->dims[1] = H; t->dims[2] = 1;
    t->strides[0] = H; t->strides[1] = 1; t->strides[2] = 1;
  } else {
    int tok = pb->cfg.layout == cpattnLayoutBSHD ? 1 : 0;
    t->ndim = 4;
    t->dims[tok] = tokens; t->dims[1 - tok] = pb->cfg.batch; t->dims[2] = H; t->dims[3] = 1;
    t->strides[tok] = 1; t->strides[1 - tok] = H * tokens; t->strides[2] = tokens; t->strides[3] = 1;
  }
}

static cpattnResult_t lse_copy(const cpattnConfig_t *config, int rank, int world, const float *full_lse,
                               const float *local_lse, int to_local) {
  CPA_REQUIRE(full_lse != NULL && local_lse != NULL, "fullLse and localLse must not be NULL");
  cpaProblem pb;
  CPA_CHECK(problem_for(config, rank, world, &pb));
  cpattnTensor_t full, local;
  lse_tensor(&pb, (float *)full_lse, pb.cfg.seqLen, &full);
  lse_tensor(&pb, (float *)local_lse, cpaRankRows(&pb, rank), &local);
  /* The tensor form is always fp32; the config's dtype does not apply to the LSE. */
  cpattnConfig_t c = pb.cfg;
  c.cuSeqlens = config->cuSeqlens;
  cpaProblemFree(&pb);
  return shard_copy(&c, rank, world, &full, &local, to_local);
}

CPATTN_API cpattnResult_t cpattnShardLseHost(const cpattnConfig_t *config, int rank, int worldSize,
                                             const float *fullLse, float *localLse) {
  cpaClearError();
  return lse_copy(config, rank, worldSize, fullLse, localLse, 1);
}

CPATTN_API cpattnResult_t cpattnGatherLseHost(const cpattnConfig_t *config, int rank, int worldSize,
                                              const float *localLse, float *fullLse) {
  cpaClearError();
  return lse_copy(config, rank, worldSize, fullLse, localLse, 0);
}
