/*
 * fuzz_schedule.c -- libFuzzer target for the scheduler (src/schedule.h), through the
 * internal API: the bytes pick a small problem (world 1..8, every schedule, mask,
 * balance and layout, sequences up to ~64 tokens, empty THD sequences included), and for
 * every rank of it cpaProblemInit + cpaScheduleBuild must either refuse the problem with
 * a status or produce a schedule for which:
 *   - over all steps, the calls cover every (query, key) pair that the mask makes
 *     visible exactly once, and no other pair (the schedule's central property, as
 *     tests/test_schedule.c states it; reimplemented here on its own terms);
 *   - every entry is a non-empty rectangle inside its query set and K/V block, of one
 *     sequence, that sees at least one key; a call's entries are in increasing sequence
 *     order; a causal mask never needs a BAND call (the fast path);
 *   - the permute maps are permutations, and the head split gives every query head of
 *     an all-to-all member the KV head that GQA pairs it with;
 *   - the config digest (the cross-rank agreement check) is the same on every rank.
 * Any crash, leak, UBSan report or broken property (a trap) fails the run.
 *
 * Build and run: .ci/fuzz.sh.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpattn.h"
#include "fuzz_input.h"
#include "problem.h"
#include "schedule.h"
#include "tokens.h"

#define MAX_WORLD 8
#define MAX_SEQ 64

/* (sequence, position) of every row of a token set, from its chunks. */
static void set_rows(const cpaTokenSet *ts, int32_t *seq, int64_t *pos) {
  for (int b = 0; b < ts->nseq; ++b)
    for (int i = ts->chunk_off[b]; i < ts->chunk_off[b + 1]; ++i) {
      const cpaChunk *ch = &ts->chunks[i];
      FUZZ_CHECK(ch->len > 0 && ch->row >= 0 && ch->row + ch->len <= ts->rows);
      for (int64_t t = 0; t < ch->len; ++t) {
        seq[ch->row + t] = b;
        pos[ch->row + t] = ch->pos + t;
      }
    }
}

/* The mask on positions (same sequence), from the resolved band. */
static int sees(const cpaProblem *pb, int64_t q, int64_t k) {
  return (pb->band_lo == CPA_UNBOUNDED || k >= q - pb->band_lo) && (pb->band_hi == CPA_UNBOUNDED || k <= q + pb->band_hi);
}

/* Whether rectangle cell (i, j) of an entry is computed, by the call's kind. */
static int computes(const cpaProblem *pb, cpaKind kind, const cpaEntry *e, int64_t i, int64_t j) {
  switch (kind) {
    case CPA_KIND_NONE: return 1;
    case CPA_KIND_CAUSAL: return j <= i;
    case CPA_KIND_BAND: {
      int64_t d = e->delta + i - j; /* query position minus key position */
      return (pb->band_lo == CPA_UNBOUNDED || d <= pb->band_lo) && (pb->band_hi == CPA_UNBOUNDED || -d <= pb->band_hi);
    }
  }
  FUZZ_CHECK(0);
  return 0;
}

static void check_permutation(const int64_t *map, int64_t n) {
  uint8_t *hit = calloc((size_t)n + 1, 1);
  for (int64_t i = 0; i < n; ++i) {
    FUZZ_CHECK(map[i] >= 0 && map[i] < n && !hit[map[i]]);
    hit[map[i]] = 1;
  }
  free(hit);
}

/* First/last touch (the engine's fill-free routing): in range, first <= last, and every
 * query row covered, since every mask shows a query its own key. */
static void check_touch(const cpaSchedule *s) {
  cpaTouch t;
  FUZZ_CHECK(cpaScheduleTouch(s, &t) == cpattnSuccess);
  FUZZ_CHECK(t.q_clean);
  for (int64_t r = 0; r < t.nq; ++r)
    FUZZ_CHECK(t.q_first[r] >= 0 && t.q_first[r] <= t.q_last[r] && t.q_last[r] < s->ncalls_total);
  for (int64_t r = 0; r < t.nk; ++r)
    FUZZ_CHECK(t.k_first[r] >= -1 && (s->nsteps == 0 || t.k_first[r] < s->steps[0].ncalls));
  cpaTouchFree(&t);
}

static void check_schedule(const cpaProblem *pb, const cpaSchedule *s) {
  int64_t total = pb->seq_start[pb->nseq], nq = s->q_set.rows;
  int32_t *qseq = malloc(sizeof(int32_t) * (size_t)(nq + 1));
  int64_t *qpos = malloc(sizeof(int64_t) * (size_t)(nq + 1));
  int *count = calloc((size_t)(nq * total + 1), sizeof(int)); /* [query row][global key] */
  set_rows(&s->q_set, qseq, qpos);
  FUZZ_CHECK(s->nsteps >= 1 && s->nkv >= 1);
  for (int st = 0; st < s->nsteps; ++st) {
    const cpaStep *step = &s->steps[st];
    FUZZ_CHECK(step->kv_member >= 0 && step->kv_member < s->nkv);
    const cpaTokenSet *kv = &s->kv_sets[step->kv_member];
    FUZZ_CHECK(kv->rows <= s->max_kv_rows);
    int32_t *kseq = malloc(sizeof(int32_t) * (size_t)(kv->rows + 1));
    int64_t *kpos = malloc(sizeof(int64_t) * (size_t)(kv->rows + 1));
    set_rows(kv, kseq, kpos);
    for (int ci = 0; ci < step->ncalls; ++ci) {
      const cpaCall *cl = &step->calls[ci];
      FUZZ_CHECK(cl->nentries >= 1 && cl->nentries <= pb->nseq);
      FUZZ_CHECK(!(pb->causal && cl->kind == CPA_KIND_BAND));
      for (int ei = 0; ei < cl->nentries; ++ei) {
        const cpaEntry *e = &cl->entries[ei];
        FUZZ_CHECK(ei == 0 || e->seq > cl->entries[ei - 1].seq);
        FUZZ_CHECK(e->seq >= 0 && e->seq < pb->nseq);
        FUZZ_CHECK(e->q_len > 0 && e->k_len > 0 && e->q_len <= cl->max_q && e->k_len <= cl->max_k);
        FUZZ_CHECK(e->q_row >= 0 && e->q_row + e->q_len <= nq);
        FUZZ_CHECK(e->k_row >= 0 && e->k_row + e->k_len <= kv->rows);
        if (cl->kind == CPA_KIND_BAND) FUZZ_CHECK(e->delta == qpos[e->q_row] - kpos[e->k_row]);
        int any = 0;
        for (int64_t i = 0; i < e->q_len; ++i)
          for (int64_t j = 0; j < e->k_len; ++j) {
            int64_t qr = e->q_row + i, kr = e->k_row + j;
            FUZZ_CHECK(qseq[qr] == e->seq && kseq[kr] == e->seq);
            if (!computes(pb, cl->kind, e, i, j)) continue;
            any = 1;
            count[qr * total + pb->seq_start[e->seq] + kpos[kr]]++;
          }
        FUZZ_CHECK(any); /* empty rectangles are skipped, never computed */
      }
    }
    free(kseq);
    free(kpos);
  }
  for (int64_t qr = 0; qr < nq; ++qr)
    for (int b = 0; b < pb->nseq; ++b)
      for (int64_t k = 0; k < pb->seq_len[b]; ++k) {
        int want = b == qseq[qr] && sees(pb, qpos[qr], k);
        FUZZ_CHECK(count[qr * total + pb->seq_start[b] + k] == want);
      }
  if (s->perm_map) check_permutation(s->perm_map, s->perm_n);
  if (s->gather_map) check_permutation(s->gather_map, s->gather_n);
  free(qseq);
  free(qpos);
  free(count);
}

/* Member a of an all-to-all group computes query heads [a*hq_local, (a+1)*hq_local);
 * GQA pairs query head h with KV head h / (hq / hkv), which must be among its KV heads. */
static void check_heads(const cpaProblem *pb) {
  FUZZ_CHECK(pb->hq_local * pb->pa == pb->hq);
  int group = pb->hq / pb->hkv;
  for (int a = 0; a < pb->pa; ++a) {
    int first = -1, n = 0;
    cpaProblemKvHeads(pb, a, &first, &n);
    FUZZ_CHECK(first >= 0 && n >= 1 && first + n <= pb->hkv && n == pb->hkv_local);
    for (int h = a * pb->hq_local; h < (a + 1) * pb->hq_local; ++h)
      FUZZ_CHECK(h / group >= first && h / group < first + n);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  FuzzIn in = {data, size};
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  c.dtype = cpattnFloat32;
  c.executor = cpattnExecutorHost;
  int world = 1 + fz_byte(&in) % MAX_WORLD;
  uint8_t shape = fz_byte(&in);
  c.layout = (cpattnLayout_t)(shape % 3);
  int32_t cu[9] = {0};
  if (c.layout == cpattnLayoutTHD) {
    c.batch = 1 + (shape >> 2) % 8;
    for (int b = 0; b < c.batch; ++b) {
      uint8_t l = fz_byte(&in);
      cu[b + 1] = cu[b] + (l % 4 == 0 ? 0 : l % (MAX_SEQ / 2 + 1)); /* empty sequences often */
    }
    c.seqLen = cu[c.batch];
    c.cuSeqlens = cu;
    if (c.seqLen == 0) return 0; /* no tokens at all is rejected by validation */
  } else {
    c.batch = 1 + (shape >> 2) % 3;
    c.seqLen = 1 + fz_byte(&in) % MAX_SEQ;
  }
  static const int kv_heads[] = {1, 2, 3, 4, 8};
  c.numHeadsKV = kv_heads[fz_byte(&in) % 5];
  c.numHeadsQ = c.numHeadsKV * (1 + fz_byte(&in) % 4);
  c.headDimQK = 8;
  c.mask = (cpattnMask_t)(fz_byte(&in) % 3);
  if (c.mask == cpattnMaskSlidingWindow) {
    c.windowLeft = (int)(fz_byte(&in) % (MAX_SEQ + 8)) - 1; /* -1 = unbounded .. past the sequence */
    c.windowRight = (int)(fz_byte(&in) % (MAX_SEQ + 8)) - 1;
  }
  c.schedule = (cpattnSchedule_t)(fz_byte(&in) % 5);
  if (c.schedule == cpattnScheduleHybrid) c.a2aGroupSize = 1 + fz_byte(&in) % world; /* may not divide */
  c.balance = (cpattnBalance_t)(fz_byte(&in) % 3);

  int64_t digest0[CPA_DIGEST_MAX];
  int ndigest0 = -1;
  for (int r = 0; r < world; ++r) {
    cpaProblem pb;
    cpattnResult_t res = cpaProblemInit(&pb, &c, r, world, cpattnExecutorHost);
    if (res != cpattnSuccess) {
      /* Refusals are for the whole problem (heads that do not split, a group size that
       * does not divide, BSHD too short for the chunks), never for one rank. */
      FUZZ_CHECK(r == 0);
      FUZZ_CHECK(res == cpattnInvalidArgument || res == cpattnNotSupported);
      return 0;
    }
    FUZZ_CHECK(pb.pa * pb.pr == world || (pb.schedule == cpattnScheduleAllGather && pb.pa == 1 && pb.pr == 1));
    check_heads(&pb);
    int64_t digest[CPA_DIGEST_MAX];
    const char *names[CPA_DIGEST_MAX];
    int nd = 0;
    cpaProblemDigest(&pb, digest, names, &nd);
    FUZZ_CHECK(nd > 0 && nd <= CPA_DIGEST_MAX);
    if (ndigest0 < 0) {
      memcpy(digest0, digest, sizeof digest);
      ndigest0 = nd;
    }
    FUZZ_CHECK(nd == ndigest0 && memcmp(digest, digest0, sizeof(int64_t) * (size_t)nd) == 0);
    cpaSchedule s;
    FUZZ_CHECK(cpaScheduleBuild(&pb, &s) == cpattnSuccess); /* a valid problem always schedules */
    check_schedule(&pb, &s);
    check_touch(&s);
    char buf[512];
    cpaScheduleDescribe(&s, buf, sizeof buf);
    FUZZ_CHECK(memchr(buf, '\0', sizeof buf) != NULL);
    cpaScheduleFree(&s);
    cpaProblemFree(&pb);
  }
  return 0;
}
