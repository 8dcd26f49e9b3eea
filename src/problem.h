/*
 * problem.h -- a validated config in the form the scheduler works with.
 *
 * The public config says what the user wants; cpaProblem says it once, resolved: the
 * auto choices made, the mask as a band of positions, the sequences as lengths, the head
 * split of the all-to-all groups. Everything downstream (token sets, schedules, engine)
 * reads this and never the raw config.
 */
#ifndef CPATTN_SRC_PROBLEM_H_
#define CPATTN_SRC_PROBLEM_H_

#include <stdint.h>

#include "core.h"

/* A bound of the band that does not exist (no mask on that side). */
#define CPA_UNBOUNDED (-1)

typedef struct {
  cpattnConfig_t cfg;   /* the caller's config, cuSeqlens pointing at our own copy      */
  int32_t *cu_seqlens;  /* owned copy (THD), else NULL                                  */

  /* Sequences. BSHD/SBHD have one "template" sequence of length seqLen that every batch
   * element repeats (so the scheduler works on one and the batch rides along as a
   * tensor dimension); THD has `batch` sequences of their own lengths and batch_mult 1. */
  int nseq;
  const int32_t *seq_start; /* [nseq+1] global token offsets in the packed THD input   */
  int64_t *seq_len;         /* [nseq]                                                  */
  int batch_mult;           /* BSHD/SBHD: config batch; THD: 1                         */

  int hq, hkv, dqk, dv;
  float scale;

  /* Mask as a band of positions: key k is visible to query q (same sequence) iff
   *   (lo == CPA_UNBOUNDED || k >= q - lo) && (hi == CPA_UNBOUNDED || k <= q + hi).
   * causal is the exact (lo unbounded, hi 0) case, whose chunk pairs can all run as
   * unmasked or top-left causal calls (the fast cuDNN path). */
  int64_t band_lo, band_hi;
  int causal;
  int masked; /* any bound at all */

  cpattnSchedule_t schedule; /* resolved: never Auto                                    */
  cpattnBalance_t balance;   /* resolved: never Auto                                    */
  cpattnExecutor_t executor; /* resolved: never Auto                                    */

  /* World and the 2-D split: P = pa * pr ranks; groups of pa consecutive ranks trade
   * heads for tokens by all-to-all, pr groups form the ring. Ring: pa = 1; AllToAll:
   * pr = 1; AllGather: pa = 1, pr = 1 (K/V gathered instead). */
  int world, rank, pa, pr;
  int hq_local, hkv_local; /* heads one rank works on after the all-to-all             */
  int64_t timeout_ms;
} cpaProblem;

/* Checks every field of config (world size unknown); the message names the field. */
cpattnResult_t cpaConfigCheck(const cpattnConfig_t *config);

/* Validates config for (rank, world), resolves it into *pb (owning copies). The
 * executor kind of the communicator decides executor Auto. On failure *pb is empty. */
cpattnResult_t cpaProblemInit(cpaProblem *pb, const cpattnConfig_t *config, int rank, int world,
                              cpattnExecutor_t comm_kind);
void cpaProblemFree(cpaProblem *pb);

/* First kv head and kv head count that all-to-all group member `a` works on (with
 * replication when hkv < pa). Query heads are [a*hq_local, (a+1)*hq_local). */
void cpaProblemKvHeads(const cpaProblem *pb, int a, int *first, int *count);

/* Values that must agree across ranks, one int64 per named field, for the collective
 * check in cpattnPlanCreate. n_out receives the count (<= CPA_DIGEST_MAX). */
#define CPA_DIGEST_MAX 32
void cpaProblemDigest(const cpaProblem *pb, int64_t *vals, const char **names, int *n_out);

#endif /* CPATTN_SRC_PROBLEM_H_ */
