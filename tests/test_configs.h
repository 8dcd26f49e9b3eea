/*
 * test_configs.h -- the host-executor configs the schedule tests build: THD with given
 * document lengths, or BSHD of one length; 4 query heads over 2 KV heads, fp32.
 */
#ifndef CPATTN_TESTS_TEST_CONFIGS_H_
#define CPATTN_TESTS_TEST_CONFIGS_H_

#include <stdint.h>

#include "cpattn.h"

/* cu: batch + 1 offsets (THD) or NULL; seq: the BSHD length. a2a: the all-to-all group
 * size (0: the default); balance < 0 keeps the default balance. */
static inline cpattnConfig_t test_config(int thd, int batch, const int32_t *cu, int64_t seq, int mask, int wl,
                                         int wr, int schedule, int a2a, int balance) {
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  c.layout = thd ? cpattnLayoutTHD : cpattnLayoutBSHD;
  c.dtype = cpattnFloat32;
  c.executor = cpattnExecutorHost;
  c.batch = batch;
  c.numHeadsQ = 4;
  c.numHeadsKV = 2;
  c.headDimQK = 8;
  c.seqLen = thd ? cu[batch] : seq;
  c.cuSeqlens = thd ? cu : NULL;
  c.mask = (cpattnMask_t)mask;
  if (mask == cpattnMaskSlidingWindow) {
    c.windowLeft = wl;
    c.windowRight = wr;
  }
  c.schedule = (cpattnSchedule_t)schedule;
  c.a2aGroupSize = a2a;
  if (balance >= 0) c.balance = (cpattnBalance_t)balance;
  return c;
}

#endif /* CPATTN_TESTS_TEST_CONFIGS_H_ */
