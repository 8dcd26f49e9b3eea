/*
 * test_schedule.c -- the scheduler's pure functions: chunking, token sets, permute maps,
 * and the central property of the schedule: over all steps, the calls of a rank cover
 * every (query, key) pair its mask makes visible exactly once, and nothing else.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpattn.h"
#include "problem.h"
#include "schedule.h"
#include "test_configs.h"
#include "tokens.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 11) % n;
}

static void test_chunk_bounds_cover_sequence(void **state) {
  (void)state;
  for (int64_t L = 0; L < 200; ++L)
    for (int n = 1; n <= 16; ++n) {
      int64_t at = 0, mn = L, mx = 0;
      for (int i = 0; i < n; ++i) {
        int64_t s, l;
        cpaChunkBounds(L, n, i, &s, &l);
        assert_int_equal(s, at);
        at += l;
        if (l < mn) mn = l;
        if (l > mx) mx = l;
      }
      assert_int_equal(at, L);
      assert_true(mx - mn <= 1); /* balanced to one token, whatever L is */
    }
}

/* (sequence, position) of every row of a token set. */
static void rows_of(const cpaTokenSet *ts, int32_t *seq, int64_t *pos) {
  for (int b = 0; b < ts->nseq; ++b)
    for (int i = ts->chunk_off[b]; i < ts->chunk_off[b + 1]; ++i)
      for (int64_t t = 0; t < ts->chunks[i].len; ++t) {
        seq[ts->chunks[i].row + t] = b;
        pos[ts->chunks[i].row + t] = ts->chunks[i].pos + t;
      }
}

static int visible(const cpaProblem *pb, int64_t q, int64_t k) {
  if (pb->band_lo != CPA_UNBOUNDED && k < q - pb->band_lo) return 0;
  if (pb->band_hi != CPA_UNBOUNDED && k > q + pb->band_hi) return 0;
  return 1;
}

/* The first/last-touch tables against their definition: for each row, the smallest and
 * the largest id among the calls covering it (ids grow in schedule order), key rows
 * from step 0's calls only; clean exactly when no row is left at -1. */
static void check_touch(const cpaSchedule *s) {
  cpaTouch t;
  assert_int_equal(cpaScheduleTouch(s, &t), cpattnSuccess);
  assert_int_equal(t.nq, s->q_set.rows);
  int q_clean = 1, k_clean = 1;
  for (int side = 0; side < 2; ++side) {
    int64_t n = side ? t.nk : t.nq;
    for (int64_t r = 0; r < n; ++r) {
      int lo = -1, hi = -1;
      for (int st = 0; st < (side ? (s->nsteps > 0) : s->nsteps); ++st)
        for (int c = 0; c < s->steps[st].ncalls; ++c)
          for (int e = 0; e < s->steps[st].calls[c].nentries; ++e) {
            const cpaEntry *en = &s->steps[st].calls[c].entries[e];
            int64_t r0 = side ? en->k_row : en->q_row, len = side ? en->k_len : en->q_len;
            if (r < r0 || r >= r0 + len) continue;
            int id = s->steps[st].calls[c].id;
            if (lo < 0 || id < lo) lo = id;
            if (id > hi) hi = id;
          }
      if (side) {
        assert_int_equal(t.k_first[r], lo);
        k_clean &= lo >= 0;
      } else {
        assert_int_equal(t.q_first[r], lo);
        assert_int_equal(t.q_last[r], hi);
        q_clean &= lo >= 0;
      }
    }
  }
  assert_int_equal(t.q_clean, q_clean);
  assert_int_equal(t.k_clean, k_clean);
  cpaTouchFree(&t);
}

/* Runs the coverage property for one config over every rank; returns the call count. */
static int check_coverage(const cpattnConfig_t *c, int P) {
  int calls_total = 0;
  for (int r = 0; r < P; ++r) {
    cpaProblem pb;
    cpattnResult_t res = cpaProblemInit(&pb, c, r, P, cpattnExecutorHost);
    if (res == cpattnNotSupported) return -1; /* e.g. heads that an all-to-all cannot split */
    assert_int_equal(res, cpattnSuccess);
    cpaSchedule s;
    assert_int_equal(cpaScheduleBuild(&pb, &s), cpattnSuccess);
    int64_t total = pb.seq_start[pb.nseq], nq = s.q_set.rows;
    int32_t *qseq = malloc(sizeof(int32_t) * (size_t)(nq + 1));
    int64_t *qpos = malloc(sizeof(int64_t) * (size_t)(nq + 1));
    int *count = calloc((size_t)(nq * total + 1), sizeof(int));
    rows_of(&s.q_set, qseq, qpos);
    check_touch(&s);
    for (int st = 0; st < s.nsteps; ++st) {
      const cpaStep *step = &s.steps[st];
      const cpaTokenSet *kv = &s.kv_sets[step->kv_member];
      int32_t *kseq = malloc(sizeof(int32_t) * (size_t)(kv->rows + 1));
      int64_t *kpos = malloc(sizeof(int64_t) * (size_t)(kv->rows + 1));
      rows_of(kv, kseq, kpos);
      for (int ci = 0; ci < step->ncalls; ++ci) {
        const cpaCall *cl = &step->calls[ci];
        ++calls_total;
        if (pb.causal) assert_int_not_equal(cl->kind, CPA_KIND_BAND); /* the fast path only */
        for (int e = 0; e < cl->nentries; ++e) {
          const cpaEntry *en = &cl->entries[e];
          if (e > 0) assert_true(en->seq > cl->entries[e - 1].seq); /* ragged: one per sequence, in order */
          assert_true(en->q_len > 0 && en->k_len > 0);
          int any = 0;
          for (int64_t i = 0; i < en->q_len; ++i)
            for (int64_t j = 0; j < en->k_len; ++j) {
              int64_t qr = en->q_row + i, kr = en->k_row + j;
              assert_int_equal(qseq[qr], en->seq);
              assert_int_equal(kseq[kr], en->seq);
              int vis = cl->kind == CPA_KIND_NONE     ? 1
                        : cl->kind == CPA_KIND_CAUSAL ? j <= i
                                                      : visible(&pb, en->delta + i - j + kpos[kr], kpos[kr]);
              if (cl->kind == CPA_KIND_BAND) assert_int_equal(en->delta, qpos[en->q_row] - kpos[en->k_row]);
              if (!vis) continue;
              any = 1;
              count[qr * total + pb.seq_start[kseq[kr]] + kpos[kr]]++;
            }
          assert_true(any); /* empty rectangles are skipped, never computed */
        }
      }
      free(kseq);
      free(kpos);
    }
    for (int64_t qr = 0; qr < nq; ++qr)
      for (int64_t g = 0; g < total; ++g) {
        int b = 0;
        while (pb.seq_start[b + 1] <= g) ++b;
        int want = b == qseq[qr] && visible(&pb, qpos[qr], g - pb.seq_start[b]);
        if (count[qr * total + g] != want) {
          print_error("rank %d/%d query row %lld (seq %d pos %lld) key %lld: covered %d times, want %d\n", r, P,
                      (long long)qr, qseq[qr], (long long)qpos[qr], (long long)g, count[qr * total + g], want);
          fail();
        }
      }
    free(qseq);
    free(qpos);
    free(count);
    cpaScheduleFree(&s);
    cpaProblemFree(&pb);
  }
  return calls_total;
}

static void test_every_visible_pair_covered_once(void **state) {
  (void)state;
  const int masks[][3] = {{cpattnMaskNone, -1, -1},         {cpattnMaskCausal, -1, -1},
                          {cpattnMaskSlidingWindow, 5, 0},  {cpattnMaskSlidingWindow, 3, 7},
                          {cpattnMaskSlidingWindow, -1, 4}, {cpattnMaskSlidingWindow, 9, -1}};
  const int scheds[][2] = {{cpattnScheduleRing, 0},      {cpattnScheduleAllToAll, 0},
                           {cpattnScheduleAllGather, 0}, {cpattnScheduleHybrid, 2}};
  int runs = 0;
  for (int P = 1; P <= 5; ++P)
    for (int m = 0; m < 6; ++m)
      for (int sc = 0; sc < 4; ++sc)
        for (int bal = cpattnBalanceAuto; bal <= cpattnBalanceContiguous; ++bal)
          for (int thd = 0; thd < 2; ++thd) {
            int a2a = scheds[sc][0] == cpattnScheduleHybrid ? (P % 2 == 0 ? 2 : 1) : 0;
            int32_t cu[6] = {0};
            int batch = 5;
            for (int b = 0; b < batch; ++b) cu[b + 1] = cu[b] + (int32_t)rnd(b == 2 ? 2 : 23); /* 0s and 1s too */
            int64_t seq = 2 * P + rnd(30);
            cpattnConfig_t c = test_config(thd, thd ? batch : 2, cu, seq, masks[m][0], masks[m][1], masks[m][2],
                                           scheds[sc][0], a2a, bal);
            if (thd && cu[batch] == 0) continue;
            if (check_coverage(&c, P) >= 0) ++runs;
          }
  assert_true(runs > 400);
}

/* Zigzag causal ring: every step is one call (TE's diagonal / lower / upper triangle). */
static void test_zigzag_causal_ring_is_one_call_per_step(void **state) {
  (void)state;
  for (int P = 1; P <= 8; ++P) {
    cpattnConfig_t c = test_config(0, 1, NULL, 16 * P + 3, cpattnMaskCausal, -1, -1, cpattnScheduleRing, 0, 0);
    for (int r = 0; r < P; ++r) {
      cpaProblem pb;
      cpaSchedule s;
      assert_int_equal(cpaProblemInit(&pb, &c, r, P, cpattnExecutorHost), cpattnSuccess);
      assert_int_equal(pb.balance, cpattnBalanceZigzag);
      assert_int_equal(cpaScheduleBuild(&pb, &s), cpattnSuccess);
      assert_int_equal(s.nsteps, P);
      assert_int_equal(s.steps[0].ncalls, 1);
      assert_int_equal(s.steps[0].calls[0].kind, CPA_KIND_CAUSAL);
      for (int st = 1; st < P; ++st) {
        assert_int_equal(s.steps[st].ncalls, 1);
        assert_int_equal(s.steps[st].calls[0].kind, CPA_KIND_NONE);
      }
      cpaScheduleFree(&s);
      cpaProblemFree(&pb);
    }
  }
}

/* First/last touch of the 32k zigzag causal ring (the 2xH200 benchmark's schedule). */
static void test_touch_zigzag_causal(void **state) {
  (void)state;
  for (int P = 2; P <= 4; P += 2) {
    cpattnConfig_t c = test_config(0, 1, NULL, 32768, cpattnMaskCausal, -1, -1, cpattnScheduleRing, 0, 0);
    for (int r = 0; r < P; ++r) {
      cpaProblem pb;
      cpaSchedule s;
      cpaTouch t;
      assert_int_equal(cpaProblemInit(&pb, &c, r, P, cpattnExecutorHost), cpattnSuccess);
      assert_int_equal(cpaScheduleBuild(&pb, &s), cpattnSuccess);
      assert_int_equal(cpaScheduleTouch(&s, &t), cpattnSuccess);
      int64_t c2 = 32768 / (2 * P); /* a zigzag chunk: a rank holds two */
      assert_int_equal(t.nq, 2 * c2);
      assert_true(t.q_clean);
      assert_true(t.k_clean);
      /* Step 0 (the causal diagonal) covers every query and key row first. */
      const cpaCall *diag = &s.steps[0].calls[0];
      int kind0 = cpaTouchCallKind(&t, diag, 0);
      assert_true(kind0 & CPA_TOUCH_FIRST);
      assert_int_equal(cpaTouchCallKind(&t, diag, 1), CPA_TOUCH_FIRST);
      /* The last step's call finishes every row it covers. */
      const cpaCall *last = &s.steps[P - 1].calls[0];
      assert_int_equal(cpaTouchCallKind(&t, last, 0), CPA_TOUCH_LAST);
      if (r == 0) {
        /* Rank 0's early chunk sees no other block: the diagonal finishes it, while its
         * late chunk goes on to the last step. So routing is per row, not per call. */
        assert_int_equal(kind0, CPA_TOUCH_FIRST | CPA_TOUCH_SOME_LAST);
        for (int64_t i = 0; i < c2; ++i) assert_int_equal(t.q_last[i], 0);
        for (int64_t i = c2; i < 2 * c2; ++i) assert_int_equal(t.q_last[i], P - 1);
      }
      if (r == P - 1) { /* every call covers every row: the middle steps merge */
        assert_int_equal(kind0, CPA_TOUCH_FIRST);
        for (int st = 1; st < P - 1; ++st) assert_int_equal(cpaTouchCallKind(&t, &s.steps[st].calls[0], 0), 0);
      }
      cpaTouchFree(&t);
      cpaScheduleFree(&s);
      cpaProblemFree(&pb);
    }
  }
}

/* Schedules the first/last routing must refuse or split. */
static void test_touch_not_clean(void **state) {
  (void)state;
  /* All-gather, causal: rank 1 of 2 (zigzag chunks 1 and 2) sees no key of chunk 3, so
   * step 0's dK/dV accumulator keeps its fill. */
  cpattnConfig_t c = test_config(0, 1, NULL, 64, cpattnMaskCausal, -1, -1, cpattnScheduleAllGather, 0, 0);
  cpaProblem pb;
  cpaSchedule s;
  cpaTouch t;
  assert_int_equal(cpaProblemInit(&pb, &c, 1, 2, cpattnExecutorHost), cpattnSuccess);
  assert_int_equal(cpaScheduleBuild(&pb, &s), cpattnSuccess);
  assert_int_equal(cpaScheduleTouch(&s, &t), cpattnSuccess);
  assert_true(t.q_clean);
  assert_false(t.k_clean);
  cpaTouchFree(&t);
  cpaScheduleFree(&s);
  cpaProblemFree(&pb);

  /* Hand-made: 10 query rows; call 0 covers rows 0-4, call 1 rows 3-7 (partly covered
   * before: first on 5-7 only), rows 8-9 by nobody: not clean. */
  cpaEntry e0 = {0, 0, 5, 0, 10, 0}, e1 = {0, 3, 5, 0, 4, 0};
  cpaCall calls[2] = {{CPA_KIND_NONE, 1, &e0, 5, 10, 0}, {CPA_KIND_NONE, 1, &e1, 5, 4, 1}};
  cpaTokenSet kv;
  memset(&kv, 0, sizeof kv);
  kv.rows = 10;
  cpaStep step = {0, 2, calls};
  cpaSchedule h;
  memset(&h, 0, sizeof h);
  h.q_set.rows = 10;
  h.nkv = 1;
  h.kv_sets = &kv;
  h.nsteps = 1;
  h.steps = &step;
  h.ncalls_total = 2;
  assert_int_equal(cpaScheduleTouch(&h, &t), cpattnSuccess);
  assert_false(t.q_clean);
  assert_true(t.k_clean);
  assert_int_equal(t.q_first[9], -1);
  assert_int_equal(cpaTouchCallKind(&t, &calls[0], 0), CPA_TOUCH_FIRST | CPA_TOUCH_SOME_LAST);
  assert_int_equal(cpaTouchCallKind(&t, &calls[1], 0), CPA_TOUCH_SOME_FIRST | CPA_TOUCH_LAST);
  assert_int_equal(cpaTouchCallKind(&t, &calls[1], 1), 0); /* keys 0-3: call 0's first */
  cpaTouchFree(&t);
  e1.q_len = 7; /* now rows 3-9: all covered, call 1 still mixed (routed row by row) */
  assert_int_equal(cpaScheduleTouch(&h, &t), cpattnSuccess);
  assert_true(t.q_clean);
  assert_int_equal(t.q_first[4], 0);
  assert_int_equal(t.q_first[5], 1);
  assert_int_equal(t.q_last[2], 0);
  assert_int_equal(t.q_last[3], 1);
  cpaTouchFree(&t);
}

static void test_token_sets_partition_the_sequence(void **state) {
  (void)state;
  int32_t cu[5] = {0, 7, 7, 8, 40};
  for (int P = 1; P <= 6; ++P)
    for (int bal = cpattnBalanceZigzag; bal <= cpattnBalanceContiguous; ++bal) {
      cpattnConfig_t c = test_config(1, 4, cu, 0, cpattnMaskNone, -1, -1, cpattnScheduleRing, 0, bal);
      int *seen = calloc(40, sizeof(int));
      int64_t sum = 0;
      for (int r = 0; r < P; ++r) {
        int64_t n;
        assert_int_equal(cpattnGetLocalTokenCount(&c, r, P, &n), cpattnSuccess);
        int64_t *pos = malloc(sizeof(int64_t) * (size_t)(n + 1));
        int32_t *sq = malloc(sizeof(int32_t) * (size_t)(n + 1));
        assert_int_equal(cpattnGetLocalPositions(&c, r, P, pos, sq), cpattnSuccess);
        for (int64_t i = 0; i < n; ++i) {
          assert_true(pos[i] >= 0 && pos[i] < cu[sq[i] + 1] - cu[sq[i]]);
          if (i > 0 && sq[i] == sq[i - 1]) assert_true(pos[i] > pos[i - 1]); /* increasing within a sequence */
          seen[cu[sq[i]] + pos[i]]++;
        }
        sum += n;
        free(pos);
        free(sq);
      }
      assert_int_equal(sum, 40);
      for (int g = 0; g < 40; ++g) assert_int_equal(seen[g], 1);
      free(seen);
    }
}

static void test_permute_map_is_a_permutation(void **state) {
  (void)state;
  int32_t cu[4] = {0, 11, 12, 50};
  for (int P = 2; P <= 4; ++P) {
    cpattnConfig_t c = test_config(1, 3, cu, 0, cpattnMaskCausal, -1, -1, cpattnScheduleAllGather, 0, 0);
    cpaProblem pb;
    cpaSchedule s;
    assert_int_equal(cpaProblemInit(&pb, &c, 0, P, cpattnExecutorHost), cpattnSuccess);
    assert_int_equal(cpaScheduleBuild(&pb, &s), cpattnSuccess);
    assert_int_equal(s.gather_n, 50);
    int *hit = calloc(50, sizeof(int));
    for (int64_t i = 0; i < s.gather_n; ++i) hit[s.gather_map[i]]++;
    for (int i = 0; i < 50; ++i) assert_int_equal(hit[i], 1);
    /* Sorted order is the natural packed order: row t of the full set is token t. */
    assert_int_equal(s.kv_sets[0].rows, 50);
    free(hit);
    cpaScheduleFree(&s);
    cpaProblemFree(&pb);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_chunk_bounds_cover_sequence),
      cmocka_unit_test(test_token_sets_partition_the_sequence),
      cmocka_unit_test(test_permute_map_is_a_permutation),
      cmocka_unit_test(test_zigzag_causal_ring_is_one_call_per_step),
      cmocka_unit_test(test_every_visible_pair_covered_once),
      cmocka_unit_test(test_touch_zigzag_causal),
      cmocka_unit_test(test_touch_not_clean),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
