/*
 * fuzz_config.c -- libFuzzer target for the public entry points that take a raw config:
 * cpattnConfigValidate, cpattnGetLocalTokenCount, cpattnGetLocalPositions and the host
 * shard/gather helpers (cpattnShardHost, cpattnGatherHost and their LSE twins).
 *
 * The bytes become a config (any field may be garbage), a cuSeqlens array for THD, and a
 * (rank, world size). Whatever they say, no call may crash, leak or trip UBSan (the
 * build runs ASan and UBSan). And when a config passes validation:
 *   - every rank of the world accepts it (validity cannot depend on the rank);
 *   - the ranks' positions partition each sequence: every (sequence, position) held by
 *     exactly one rank, each rank's tokens sequence by sequence, increasing positions;
 *   - shard on every rank then gather on every rank gives back the full tensor (and
 *     the full LSE) bit for bit;
 *   - a descriptor with one thing wrong (ndim, token or batch dim, heads, inner stride,
 *     dtype, a NULL pointer) is rejected, never copied through.
 * A broken invariant traps (FUZZ_CHECK), so libFuzzer keeps the input.
 *
 * Build and run: .ci/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpattn.h"
#include "fuzz_input.h"

/* Limits on what one input may make the target allocate or loop over: keeps each run
 * in microseconds, so the fuzzer explores instead of waiting. */
#define MAX_THD_BATCH 64
#define MAX_TOKENS 4096        /* tokens per sequence (BSHD) or in all (THD) to check  */
#define MAX_WORLD_CHECKED 64   /* worlds whose every rank is checked                  */
#define MAX_ELEMS (1 << 15)    /* elements of a full tensor in the shard round trip   */

typedef struct {
  cpattnConfig_t c;
  int32_t *cu; /* exactly batch+1 entries (THD), so that ASan sees any read past them */
  int rank, world;
  int heads, dim; /* of the tensors of the shard round trip */
  int corrupt;    /* which descriptor field to spoil in the rejection check (0: none) */
} Case;

static int64_t fz_seqlen(FuzzIn *in) {
  static const int64_t edges[8] = {INT64_MIN, -1, 0, 1, INT32_MAX, (int64_t)INT32_MAX + 1, INT64_MAX, 1 << 20};
  uint8_t b = fz_byte(in);
  if (b >= 248) return edges[b - 248];
  return 1 + fz_byte(in) + (b & 1) * 256; /* 1..512 */
}

static void make_case(FuzzIn *in, Case *k) {
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  memset(k, 0, sizeof *k);
  uint8_t hdr = fz_byte(in);
  if (hdr == 255) c.size = fz_u32(in);    /* the struct-size handshake, broken */
  if (hdr == 254) c.version = (int)fz_u32(in);
  c.layout = (cpattnLayout_t)fz_enum(in, 3);
  c.dtype = (cpattnDataType_t)fz_enum(in, 3);
  c.executor = (cpattnExecutor_t)fz_enum(in, 3);
  int thd = c.layout == cpattnLayoutTHD;
  c.batch = fz_int(in, 1, thd ? 6 : 3);
  c.numHeadsKV = fz_int(in, 1, 4);
  /* Products in 64 bits: an edge value times a factor must not overflow in here. */
  c.numHeadsQ = c.numHeadsKV > 0 && c.numHeadsKV < 64 ? (int)((int64_t)c.numHeadsKV * fz_int(in, 1, 4) % INT_MAX)
                                                      : fz_int(in, 1, 8);
  c.headDimQK = (int)((int64_t)fz_int(in, 1, 32) * (fz_byte(in) & 1 ? 8 : 1) % INT_MAX);
  c.headDimV = fz_byte(in) & 1 ? fz_int(in, 0, 64) : 0;
  c.seqLen = fz_seqlen(in);
  if (thd && c.batch >= 0 && c.batch <= MAX_THD_BATCH) {
    /* The header's contract: batch+1 entries. Mostly a valid prefix sum (empty
     * sequences included); sometimes a raw value anywhere. */
    k->cu = malloc(sizeof(int32_t) * (size_t)(c.batch + 1));
    int32_t at = 0;
    for (int i = 0; i <= c.batch; ++i) {
      uint8_t b = fz_byte(in);
      if (b >= 250) {
        k->cu[i] = (int32_t)fz_u32(in);
      } else {
        if (i > 0) at += b % 3 == 0 ? 0 : b % 80; /* 0 often: empty sequences */
        k->cu[i] = at;
      }
    }
    c.cuSeqlens = k->cu;
    if (!(fz_byte(in) & 7)) c.seqLen = fz_seqlen(in); /* usually the true total */
    else c.seqLen = k->cu[c.batch];
  } else if (thd && fz_byte(in) & 1) {
    c.cuSeqlens = NULL; /* THD without cuSeqlens: must be rejected */
  }
  c.mask = (cpattnMask_t)fz_enum(in, 3);
  if (c.mask == cpattnMaskSlidingWindow || fz_byte(in) == 7) {
    c.windowLeft = fz_int(in, -1, 40);
    c.windowRight = fz_int(in, -1, 40);
  }
  uint8_t s = fz_byte(in);
  if (s >= 250) {
    uint32_t bits = fz_u32(in);
    memcpy(&c.softmaxScale, &bits, sizeof bits); /* NaN, inf, negative, denormal */
  } else {
    c.softmaxScale = (float)s / 64.0f;
  }
  c.schedule = (cpattnSchedule_t)fz_enum(in, 5);
  c.a2aGroupSize = c.schedule == cpattnScheduleHybrid || fz_byte(in) == 3 ? fz_int(in, 0, 8) : 0;
  c.balance = (cpattnBalance_t)fz_enum(in, 3);
  c.deterministic = fz_int(in, 0, 1);
  c.timeoutMs = fz_int(in, -1, 1000);
  k->world = fz_int(in, 1, 8);
  k->rank = fz_int(in, 0, 7);
  k->heads = 1 + fz_byte(in) % 3;
  k->dim = 1 + fz_byte(in) % 4;
  k->corrupt = fz_byte(in) % 10;
  k->c = c;
}

/* Tokens of sequence b in the full input (BSHD/SBHD: every sequence is seqLen long). */
static int64_t seq_len(const cpattnConfig_t *c, int b) {
  return c->layout == cpattnLayoutTHD ? (int64_t)c->cuSeqlens[b + 1] - c->cuSeqlens[b] : c->seqLen;
}
static int64_t seq_start(const cpattnConfig_t *c, int b) {
  return c->layout == cpattnLayoutTHD ? c->cuSeqlens[b] : 0;
}

/* Every rank's positions, checked to partition the sequences. */
static void check_partition(const cpattnConfig_t *c, int world, int64_t *counts) {
  int thd = c->layout == cpattnLayoutTHD, nseq = thd ? c->batch : 1;
  int64_t total = c->seqLen; /* THD: all tokens; else one sequence */
  uint8_t *seen = calloc((size_t)total, 1);
  for (int r = 0; r < world; ++r) {
    int64_t n = -1;
    FUZZ_CHECK(cpattnGetLocalTokenCount(c, r, world, &n) == cpattnSuccess);
    FUZZ_CHECK(n >= 0 && n <= total);
    counts[r] = n;
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)(n + 1)), *pos2 = malloc(sizeof(int64_t) * (size_t)(n + 1));
    int32_t *sq = malloc(sizeof(int32_t) * (size_t)(n + 1));
    FUZZ_CHECK(cpattnGetLocalPositions(c, r, world, pos, sq) == cpattnSuccess);
    FUZZ_CHECK(cpattnGetLocalPositions(c, r, world, pos2, NULL) == cpattnSuccess);
    for (int64_t i = 0; i < n; ++i) {
      FUZZ_CHECK(pos[i] == pos2[i]);
      FUZZ_CHECK(sq[i] >= 0 && sq[i] < nseq);
      FUZZ_CHECK(pos[i] >= 0 && pos[i] < seq_len(c, sq[i]));
      if (i > 0) {
        FUZZ_CHECK(sq[i] >= sq[i - 1]);                          /* sequence by sequence */
        FUZZ_CHECK(sq[i] > sq[i - 1] || pos[i] > pos[i - 1]);    /* increasing inside one */
      }
      int64_t g = seq_start(c, sq[i]) + pos[i];
      FUZZ_CHECK(seen[g] == 0); /* held by one rank only */
      seen[g] = 1;
    }
    free(pos);
    free(pos2);
    free(sq);
  }
  for (int64_t g = 0; g < total; ++g) FUZZ_CHECK(seen[g] == 1); /* and by some rank */
  free(seen);
}

/* Spoils one field that validation must catch; returns 0 when the spoiled descriptor is
 * still legal (a NULL pointer to zero tokens). */
static int spoil(cpattnTensor_t *t, int how, int tok_dim, int thd) {
  int nd = t->ndim;
  switch (how) {
    case 1: t->ndim = nd == 4 ? 3 : 4; return 1;
    case 2: t->dims[tok_dim] += 1; return 1;
    case 3: t->dims[nd - 2] += 1; return 1;              /* heads differ from the other side */
    case 4: t->strides[nd - 1] = 2; return 1;
    case 5: t->dtype = (cpattnDataType_t)7; return 1;
    case 6: if (thd) return 0; t->dims[1 - tok_dim] += 1; return 1; /* batch */
    case 7: t->data = NULL; return t->dims[tok_dim] > 0 && t->dims[nd - 2] > 0;
    default: return 0;
  }
}

/* Shard on every rank, gather on every rank: the full tensor comes back bit for bit. */
static void check_round_trip(const Case *k, const int64_t *counts) {
  const cpattnConfig_t *c = &k->c;
  int thd = c->layout == cpattnLayoutTHD, tok = c->layout == cpattnLayoutBSHD ? 1 : 0;
  int64_t rows = thd ? c->seqLen : c->seqLen * c->batch;
  if (rows > MAX_ELEMS || c->numHeadsQ > MAX_ELEMS) return; /* bounds the products below */
  if (rows * k->heads * k->dim > MAX_ELEMS || (int64_t)c->numHeadsQ * rows > MAX_ELEMS) return;
  cpattnDataType_t dt = c->dtype;
  size_t es = dt == cpattnFloat32 ? 4 : 2, n_full = (size_t)(rows * k->heads * k->dim);
  unsigned char *full = malloc(n_full * es + 1), *back = calloc(n_full * es + 1, 1);
  for (size_t i = 0; i < n_full * es; ++i) full[i] = (unsigned char)(i * 131 + 7 + i / 251);
  cpattnTensor_t tf, tb;
  FUZZ_CHECK(cpattnTensorInit(&tf, full, dt, c->layout, c->batch, c->seqLen, k->heads, k->dim) == cpattnSuccess);
  FUZZ_CHECK(cpattnTensorInit(&tb, back, dt, c->layout, c->batch, c->seqLen, k->heads, k->dim) == cpattnSuccess);
  int64_t lse_full = (int64_t)c->numHeadsQ * rows;
  float *lf = malloc(sizeof(float) * (size_t)(lse_full + 1)), *lb = calloc((size_t)(lse_full + 1), sizeof(float));
  for (int64_t i = 0; i < lse_full; ++i) lf[i] = (float)i + 0.5f;
  for (int r = 0; r < k->world; ++r) {
    int64_t n_loc = thd ? counts[r] : counts[r] * c->batch;
    size_t n_local = (size_t)(n_loc * k->heads * k->dim);
    unsigned char *loc = malloc(n_local * es + 1);
    float *ll = malloc(sizeof(float) * (size_t)(n_loc * c->numHeadsQ + 1));
    cpattnTensor_t tl;
    FUZZ_CHECK(cpattnTensorInit(&tl, loc, dt, c->layout, c->batch, counts[r], k->heads, k->dim) == cpattnSuccess);
    if (r == k->rank % k->world && k->corrupt) {
      /* The same copy with one side spoiled must be refused. */
      cpattnTensor_t bad_l = tl, bad_f = tf;
      if (spoil(k->corrupt & 1 ? &bad_l : &bad_f, k->corrupt, tok, thd))
        FUZZ_CHECK(cpattnShardHost(c, r, k->world, &bad_f, &bad_l) != cpattnSuccess);
    }
    FUZZ_CHECK(cpattnShardHost(c, r, k->world, &tf, &tl) == cpattnSuccess);
    FUZZ_CHECK(cpattnGatherHost(c, r, k->world, &tl, &tb) == cpattnSuccess);
    FUZZ_CHECK(cpattnShardLseHost(c, r, k->world, lf, ll) == cpattnSuccess);
    FUZZ_CHECK(cpattnGatherLseHost(c, r, k->world, ll, lb) == cpattnSuccess);
    free(loc);
    free(ll);
  }
  FUZZ_CHECK(memcmp(full, back, n_full * es) == 0);
  FUZZ_CHECK(memcmp(lf, lb, sizeof(float) * (size_t)lse_full) == 0);
  free(full);
  free(back);
  free(lf);
  free(lb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  FuzzIn in = {data, size};
  Case k;
  make_case(&in, &k);
  const cpattnConfig_t *c = &k.c;

  cpattnResult_t v = cpattnConfigValidate(c);
  FUZZ_CHECK((int)v >= 0 && v < cpattnNumResults);
  FUZZ_CHECK(cpattnGetErrorString(v) != NULL && cpattnGetLastError() != NULL);
  FUZZ_CHECK(v != cpattnSuccess || cpattnGetLastError()[0] == '\0');
  FUZZ_CHECK(v == cpattnSuccess || cpattnGetLastError()[0] != '\0'); /* a failure names its rule */

  int64_t n = -1;
  cpattnResult_t res = cpattnGetLocalTokenCount(c, k.rank, k.world, &n);
  FUZZ_CHECK(cpattnGetLocalTokenCount(c, k.rank, k.world, NULL) != cpattnSuccess);
  /* Validation with a world size is stricter than without, never looser. */
  FUZZ_CHECK(res != cpattnSuccess || v == cpattnSuccess);
  if (res == cpattnSuccess) {
    FUZZ_CHECK(n >= 0);
    FUZZ_CHECK(cpattnGetLocalPositions(c, k.rank, k.world, NULL, NULL) != cpattnSuccess);
    if (n <= MAX_TOKENS) {
      int64_t *pos = malloc(sizeof(int64_t) * (size_t)(n + 1));
      FUZZ_CHECK(cpattnGetLocalPositions(c, k.rank, k.world, pos, NULL) == cpattnSuccess);
      free(pos);
    }
    if (k.world <= MAX_WORLD_CHECKED && c->seqLen <= MAX_TOKENS) {
      int64_t *counts = calloc((size_t)k.world, sizeof(int64_t));
      check_partition(c, k.world, counts);
      check_round_trip(&k, counts);
      free(counts);
    }
  }
  free(k.cu);
  return 0;
}
