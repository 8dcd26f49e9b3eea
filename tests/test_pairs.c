/*
 * test_pairs.c -- cpaVisiblePairs (src/pairs.h), the count behind every TF/s the CUDA
 * executor's per-call profile prints, against brute force: every (i, j) of the entry
 * tested with the mask rule as cudnn_sdpa.h states it. Random shapes, offsets and bands,
 * with empty rectangles, fully masked entries and unbounded sides on purpose; then the
 * closed forms at sizes brute force cannot reach, and real schedules: summed over every
 * rank's calls, the counts make up the whole sequence's visible pairs exactly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>

#include "cpattn.h"
#include "pairs.h"
#include "problem.h"
#include "schedule.h"
#include "test_configs.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint32_t rnd(uint32_t n) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 11) % n;
}

/* The rule of cudnn_sdpa.h, pair by pair. */
static int brute_visible(cpaKind kind, int64_t i, int64_t j, int64_t delta, int64_t lo, int64_t hi) {
  if (kind == CPA_KIND_NONE) return 1;
  if (kind == CPA_KIND_CAUSAL) return j <= i;
  int64_t r = i + delta;
  return (lo == CPA_UNBOUNDED || j >= r - lo) && (hi == CPA_UNBOUNDED || j <= r + hi);
}

static int64_t brute_pairs(cpaKind kind, int64_t q, int64_t k, int64_t delta, int64_t lo, int64_t hi) {
  int64_t n = 0;
  for (int64_t i = 0; i < q; ++i)
    for (int64_t j = 0; j < k; ++j) n += brute_visible(kind, i, j, delta, lo, hi);
  return n;
}

/* A bound: unbounded a quarter of the time, 0 often (causal-like edges), else small or
 * wider than any rectangle here. */
static int64_t random_bound(void) {
  switch (rnd(8)) {
  case 0:
  case 1: return CPA_UNBOUNDED;
  case 2: return 0;
  case 3: return 1000000;
  default: return rnd(60);
  }
}

static void check_one(cpaKind kind, int64_t q, int64_t k, int64_t delta, int64_t lo, int64_t hi, int64_t *zero,
                      int64_t *full) {
  int64_t want = brute_pairs(kind, q, k, delta, lo, hi), got = cpaVisiblePairs(kind, q, k, delta, lo, hi);
  if (got != want)
    fail_msg("kind %d q_len %lld k_len %lld delta %lld band_lo %lld band_hi %lld: %lld pairs, brute force %lld",
             (int)kind, (long long)q, (long long)k, (long long)delta, (long long)lo, (long long)hi, (long long)got,
             (long long)want);
  *zero += want == 0;
  *full += want == q * k && q * k > 0;
}

static void test_random_entries_match_brute_force(void **state) {
  (void)state;
  int64_t zero = 0, full = 0, partial_band = 0;
  for (int it = 0; it < 30000; ++it) {
    cpaKind kind = (cpaKind)rnd(3);
    int64_t q = rnd(6) == 0 ? 0 : rnd(48), k = rnd(6) == 0 ? 0 : rnd(48);
    /* offsets mostly where the band cuts the rectangle, sometimes well past either
     * side, so that whole entries fall outside it */
    int64_t delta = rnd(4) == 0 ? (int64_t)rnd(241) - 120 : (int64_t)rnd(97) - 48;
    int64_t lo = random_bound(), hi = random_bound();
    int64_t before = zero + full;
    check_one(kind, q, k, delta, lo, hi, &zero, &full);
    partial_band += kind == CPA_KIND_BAND && zero + full == before;
  }
  /* the draw must reach every regime, or the comparison proves little */
  assert_true(zero > 2000);
  assert_true(full > 2000);
  printf("entries: %lld with no visible pair, %lld all visible, %lld band cuts\n", (long long)zero, (long long)full, (long long)partial_band);
  assert_true(partial_band > 2000);
}

/* Every offset and small band around a fixed rectangle, tall and wide: each corner and
 * edge case of the closed form (the window entering, crossing and leaving the rectangle). */
static void test_band_sweep_matches_brute_force(void **state) {
  (void)state;
  const int64_t shapes[][2] = {{1, 1}, {1, 9}, {9, 1}, {7, 7}, {5, 13}, {13, 5}, {16, 3}, {0, 4}, {4, 0}};
  const int64_t bounds[] = {CPA_UNBOUNDED, 0, 1, 2, 5, 12, 30};
  int64_t zero = 0, full = 0;
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; ++s)
    for (int64_t delta = -40; delta <= 40; ++delta)
      for (size_t a = 0; a < sizeof bounds / sizeof bounds[0]; ++a)
        for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; ++b)
          for (int kind = 0; kind < 3; ++kind)
            check_one((cpaKind)kind, shapes[s][0], shapes[s][1], delta, bounds[a], bounds[b], &zero, &full);
  assert_true(zero > 0 && full > 0);
}

/* Sizes of the GPU runs (a 64k-token chunk, a million-token sequence): the closed forms,
 * and a band at large offsets by the diagonals it spans. */
static void test_large_entries_closed_forms(void **state) {
  (void)state;
  const int64_t n = 65536, m = 1 << 20;
  assert_int_equal(cpaVisiblePairs(CPA_KIND_NONE, n, m, 0, 0, 0), n * m);
  assert_int_equal(cpaVisiblePairs(CPA_KIND_CAUSAL, m, m, 0, 0, 0), m * (m + 1) / 2);
  /* tall causal: the first n rows form a triangle, every later row sees all n keys */
  assert_int_equal(cpaVisiblePairs(CPA_KIND_CAUSAL, m, n, 0, 0, 0), n * (n + 1) / 2 + (m - n) * n);
  assert_int_equal(cpaVisiblePairs(CPA_KIND_CAUSAL, n, m, 0, 0, 0), n * (n + 1) / 2);
  /* causal as a band: the same count at every size */
  assert_int_equal(cpaVisiblePairs(CPA_KIND_BAND, m, m, 0, CPA_UNBOUNDED, 0), m * (m + 1) / 2);
  /* a window of w keys (lo = w - 1, hi = 0) in a square: rows 0 .. w-2 see i + 1 keys, the rest w */
  int64_t w = 4096;
  assert_int_equal(cpaVisiblePairs(CPA_KIND_BAND, m, m, 0, w - 1, 0), (w - 1) * w / 2 + (m - (w - 1)) * w);
  /* the window wholly above or below the rectangle: nothing */
  assert_int_equal(cpaVisiblePairs(CPA_KIND_BAND, n, n, 3 * n, w, 0), 0);
  assert_int_equal(cpaVisiblePairs(CPA_KIND_BAND, n, n, -3 * n, w, 0), 0);
  /* unbounded on both sides is every pair */
  assert_int_equal(cpaVisiblePairs(CPA_KIND_BAND, n, m, 12345, CPA_UNBOUNDED, CPA_UNBOUNDED), n * m);
}

/* Visible pairs of one whole sequence of length L under the problem's band. */
static int64_t sequence_pairs(const cpaProblem *pb, int64_t L) {
  int64_t n = 0;
  for (int64_t q = 0; q < L; ++q)
    for (int64_t k = 0; k < L; ++k)
      n += (pb->band_lo == CPA_UNBOUNDED || k >= q - pb->band_lo) && (pb->band_hi == CPA_UNBOUNDED || k <= q + pb->band_hi);
  return n;
}

/* Ring and all-gather split a rank's query rows among calls without overlap (the
 * property test_schedule checks), so the calls of all ranks add up to the whole: the
 * totals the profile's per-call rates rest on are the totals cpattn-bench divides by. */
static void test_schedules_add_up_to_the_sequence(void **state) {
  (void)state;
  const int masks[][3] = {{cpattnMaskNone, -1, -1},        {cpattnMaskCausal, -1, -1},
                          {cpattnMaskSlidingWindow, 5, 0}, {cpattnMaskSlidingWindow, 3, 7},
                          {cpattnMaskSlidingWindow, -1, 4}, {cpattnMaskSlidingWindow, 9, -1}};
  const int scheds[] = {cpattnScheduleRing, cpattnScheduleAllGather};
  int runs = 0;
  for (int P = 1; P <= 4; ++P)
    for (int m = 0; m < 6; ++m)
      for (int sc = 0; sc < 2; ++sc)
        for (int thd = 0; thd < 2; ++thd) {
          int32_t cu[5] = {0};
          int batch = thd ? 4 : 1;
          for (int b = 0; thd && b < batch; ++b) cu[b + 1] = cu[b] + (int32_t)rnd(b == 1 ? 2 : 41);
          if (thd && cu[batch] == 0) continue;
          cpattnConfig_t c = test_config(thd, batch, cu, 2 * P + rnd(60), masks[m][0], masks[m][1], masks[m][2],
                                         scheds[sc], 0, -1);
          int64_t got = 0, want = 0;
          for (int r = 0; r < P; ++r) {
            cpaProblem pb;
            cpaSchedule s;
            assert_int_equal(cpaProblemInit(&pb, &c, r, P, cpattnExecutorHost), cpattnSuccess);
            assert_int_equal(cpaScheduleBuild(&pb, &s), cpattnSuccess);
            for (int st = 0; st < s.nsteps; ++st)
              for (int k = 0; k < s.steps[st].ncalls; ++k)
                got += cpaCallVisiblePairs(&s.steps[st].calls[k], pb.band_lo, pb.band_hi);
            if (r == 0)
              for (int b = 0; b < pb.nseq; ++b) want += sequence_pairs(&pb, pb.seq_len[b]);
            cpaScheduleFree(&s);
            cpaProblemFree(&pb);
          }
          if (got != want)
            fail_msg("P %d mask %d (%d,%d) schedule %d thd %d: calls sum to %lld pairs, the sequence has %lld", P,
                     masks[m][0], masks[m][1], masks[m][2], scheds[sc], thd, (long long)got, (long long)want);
          ++runs;
        }
  assert_true(runs > 80);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_random_entries_match_brute_force),
      cmocka_unit_test(test_band_sweep_matches_brute_force),
      cmocka_unit_test(test_large_entries_closed_forms),
      cmocka_unit_test(test_schedules_add_up_to_the_sequence),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
