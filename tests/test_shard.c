/*
 * test_shard.c -- the sharding helpers: shard then gather on every rank rebuilds the
 * full tensor exactly (BSHD, SBHD, THD with random lengths, zigzag and contiguous, bf16
 * and fp32, a strided full tensor), the LSE helpers likewise, and each local row holds
 * the token cpattnGetLocalPositions says it does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "cpattn.h"

static uint64_t rng = 12345;
static uint32_t rnd(uint32_t n) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng >> 33) % n;
}

static void round_trip(cpattnLayout_t layout, cpattnBalance_t bal, int P, cpattnDataType_t dt, int strided) {
  int32_t cu[6] = {0};
  int batch = layout == cpattnLayoutTHD ? 5 : 3;
  if (layout == cpattnLayoutTHD)
    for (int b = 0; b < batch; ++b) cu[b + 1] = cu[b] + (int32_t)rnd(b == 1 ? 2 : 40);
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  c.layout = layout;
  c.dtype = dt;
  c.executor = cpattnExecutorHost;
  c.batch = batch;
  c.numHeadsQ = 3;
  c.numHeadsKV = 3;
  c.headDimQK = 5;
  c.seqLen = layout == cpattnLayoutTHD ? cu[batch] : 2 * P + (int64_t)rnd(50);
  c.cuSeqlens = layout == cpattnLayoutTHD ? cu : NULL;
  c.balance = bal;
  if (c.seqLen == 0) return;
  int64_t S = c.seqLen, H = 3, D = 5, tokens = layout == cpattnLayoutTHD ? S : (int64_t)batch * S;
  size_t es = dt == cpattnFloat32 ? 4 : 2;
  /* A strided full tensor: every token row padded by 7 elements. */
  int64_t row = H * D + (strided ? 7 : 0);
  size_t n = (size_t)(tokens * row);
  unsigned char *full = malloc(n * es), *back = calloc(n, es);
  for (size_t i = 0; i < n * es; ++i) full[i] = (unsigned char)rnd(256);
  cpattnTensor_t tf, tb;
  cpattnTensorInit(&tf, full, dt, layout, batch, S, H, D);
  if (strided) {
    if (layout == cpattnLayoutTHD) tf.strides[0] = row;
    else if (layout == cpattnLayoutBSHD) { tf.strides[1] = row; tf.strides[0] = S * row; }
    else { tf.strides[1] = row; tf.strides[0] = batch * row; }
  }
  tb = tf;
  tb.data = back;
  float *lse_full = malloc(sizeof(float) * (size_t)(tokens * H)), *lse_back = calloc((size_t)(tokens * H), 4);
  for (int64_t i = 0; i < tokens * H; ++i) lse_full[i] = (float)rnd(100000) - 50000.0f;
  int64_t total = 0;
  for (int r = 0; r < P; ++r) {
    int64_t nl;
    assert_int_equal(cpattnGetLocalTokenCount(&c, r, P, &nl), cpattnSuccess);
    total += nl;
    size_t ln = (size_t)((layout == cpattnLayoutTHD ? 1 : batch) * nl * H * D);
    unsigned char *loc = malloc(ln * es + 1);
    float *lse_loc = malloc(sizeof(float) * (size_t)((layout == cpattnLayoutTHD ? 1 : batch) * nl * H) + 4);
    cpattnTensor_t tl;
    cpattnTensorInit(&tl, loc, dt, layout, batch, nl, H, D);
    assert_int_equal(cpattnShardHost(&c, r, P, &tf, &tl), cpattnSuccess);
    /* local row i of batch 0 is the full row at its position */
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)(nl + 1));
    int32_t *sq = malloc(sizeof(int32_t) * (size_t)(nl + 1));
    assert_int_equal(cpattnGetLocalPositions(&c, r, P, pos, sq), cpattnSuccess);
    for (int64_t i = 0; i < nl; ++i) {
      int64_t ft = (layout == cpattnLayoutTHD ? cu[sq[i]] : 0) + pos[i];
      int64_t foff = layout == cpattnLayoutSBHD ? ft * tf.strides[0] : ft * tf.strides[layout == cpattnLayoutTHD ? 0 : 1];
      int64_t loff = layout == cpattnLayoutSBHD ? i * tl.strides[0] : i * tl.strides[layout == cpattnLayoutTHD ? 0 : 1];
      assert_memory_equal(loc + loff * (int64_t)es, full + foff * (int64_t)es, (size_t)(H * D) * es);
    }
    assert_int_equal(cpattnGatherHost(&c, r, P, &tl, &tb), cpattnSuccess);
    assert_int_equal(cpattnShardLseHost(&c, r, P, lse_full, lse_loc), cpattnSuccess);
    assert_int_equal(cpattnGatherLseHost(&c, r, P, lse_loc, lse_back), cpattnSuccess);
    free(pos);
    free(sq);
    free(loc);
    free(lse_loc);
  }
  assert_int_equal(total, S);
  /* every real element came back (padding stays as it was: zero) */
  for (int64_t t = 0; t < tokens; ++t)
    assert_memory_equal(back + (size_t)(t * row) * es, full + (size_t)(t * row) * es, (size_t)(H * D) * es);
  assert_memory_equal(lse_back, lse_full, sizeof(float) * (size_t)(tokens * H));
  free(full);
  free(back);
  free(lse_full);
  free(lse_back);
}

static void test_shard_gather_round_trip(void **state) {
  (void)state;
  for (int layout = cpattnLayoutBSHD; layout <= cpattnLayoutTHD; ++layout)
    for (int bal = cpattnBalanceZigzag; bal <= cpattnBalanceContiguous; ++bal)
      for (int P = 1; P <= 5; ++P)
        for (int strided = 0; strided < 2; ++strided) {
          round_trip((cpattnLayout_t)layout, (cpattnBalance_t)bal, P, cpattnFloat32, strided);
          round_trip((cpattnLayout_t)layout, (cpattnBalance_t)bal, P, cpattnBFloat16, strided);
        }
}

static void test_shard_rejects_mismatched_tensors(void **state) {
  (void)state;
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  c.dtype = cpattnFloat32;
  c.executor = cpattnExecutorHost;
  c.numHeadsQ = c.numHeadsKV = 2;
  c.headDimQK = 4;
  c.seqLen = 8;
  float full[64], loc[64];
  cpattnTensor_t tf, tl;
  cpattnTensorInit(&tf, full, cpattnFloat32, cpattnLayoutBSHD, 1, 8, 2, 4);
  cpattnTensorInit(&tl, loc, cpattnFloat32, cpattnLayoutBSHD, 1, 3, 2, 4); /* rank 0 of 2 holds 4 */
  assert_int_equal(cpattnShardHost(&c, 0, 2, &tf, &tl), cpattnInvalidArgument);
  assert_non_null(strstr(cpattnGetLastError(), "local->dims[1]"));
  tl.dims[1] = 4;
  tl.dims[2] = 3;
  assert_int_equal(cpattnShardHost(&c, 0, 2, &tf, &tl), cpattnInvalidArgument);
  assert_non_null(strstr(cpattnGetLastError(), "heads"));
  assert_int_equal(cpattnShardHost(&c, 2, 2, &tf, &tl), cpattnInvalidArgument);
  assert_non_null(strstr(cpattnGetLastError(), "rank = 2"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shard_gather_round_trip),
      cmocka_unit_test(test_shard_rejects_mismatched_tensors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
