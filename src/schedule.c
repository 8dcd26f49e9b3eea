/*
 * schedule.c -- chunk-pair decomposition and the step lists (see schedule.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schedule.h"

/* ---------------------------------------------------------------------------------- */
/* Pieces: rectangles of one sequence, before they are grouped into calls              */
/* ---------------------------------------------------------------------------------- */

typedef struct {
  cpaKind kind;
  cpaEntry e;
} cpaPiece;

typedef struct {
  cpaPiece *p;
  int n, cap;
} cpaPieceList;

static int piece_push(cpaPieceList *l, cpaKind kind, int32_t seq, int64_t q_row, int64_t q_len, int64_t k_row,
                      int64_t k_len, int64_t delta) {
  if (q_len <= 0 || k_len <= 0) return 0;
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 16;
    cpaPiece *p = realloc(l->p, sizeof(cpaPiece) * (size_t)cap);
    if (!p) return -1;
    l->p = p;
    l->cap = cap;
  }
  cpaPiece pc = {kind, {seq, q_row, q_len, k_row, k_len, delta}};
  l->p[l->n++] = pc;
  return 0;
}

/* Whether sequence b has the same runs (positions and lengths) in both sets: then q and
 * k rows are the same tokens in the same increasing order, so "key row <= query row" is
 * exactly "key position <= query position" and one top-left causal rectangle covers the
 * whole sequence, however many chunks it has. */
static int same_runs(const cpaTokenSet *q, const cpaTokenSet *k, int b) {
  int nq = q->run_off[b + 1] - q->run_off[b], nk = k->run_off[b + 1] - k->run_off[b];
  if (nq != nk) return 0;
  for (int i = 0; i < nq; ++i) {
    const cpaChunk *x = &q->runs[q->run_off[b] + i], *y = &k->runs[k->run_off[b] + i];
    if (x->pos != y->pos || x->len != y->len) return 0;
  }
  return 1;
}

/* The pieces one pair of runs (query positions [qs,qe), key positions [ks,ke)) needs. */
static int pair_pieces(const cpaProblem *pb, int32_t b, const cpaChunk *q, const cpaChunk *k, cpaPieceList *l) {
  int64_t qs = q->pos, qe = q->pos + q->len, ks = k->pos, ke = k->pos + k->len;
  int64_t lo = pb->band_lo, hi = pb->band_hi;
  int hi_b = hi != CPA_UNBOUNDED, lo_b = lo != CPA_UNBOUNDED;
  /* Empty: the first key is right of every query's window, or the last is left of it. */
  if ((hi_b && ks > qe - 1 + hi) || (lo_b && ke - 1 < qs - lo)) return 0;
  int full = (!hi_b || ke - 1 <= qs + hi) && (!lo_b || ks >= qe - 1 - lo);
  if (full) return piece_push(l, CPA_KIND_NONE, b, q->row, q->len, k->row, k->len, qs - ks);
  if (pb->causal) {
    /* Keys left of the whole query run are fully visible; the keys overlapping it form a
     * top-left causal rectangle starting at their common first position. Query rows
     * before that position see none of the overlap, and keys after qe none at all. */
    int64_t full_end = cpaMin64(ke, qs);
    if (piece_push(l, CPA_KIND_NONE, b, q->row, q->len, k->row, full_end - ks, qs - ks)) return -1;
    int64_t start = cpaMax64(qs, ks), end = cpaMin64(ke, qe);
    return piece_push(l, CPA_KIND_CAUSAL, b, q->row + (start - qs), qe - start, k->row + (start - ks), end - start,
                      0);
  }
  return piece_push(l, CPA_KIND_BAND, b, q->row, q->len, k->row, k->len, qs - ks);
}

/* Unmasked rectangles that touch along a side become one: fewer, larger calls (zigzag's
 * "all queries x first key chunk" and "second query chunk x all keys"). Positions do not
 * matter for NONE, only rows, and rows never cross a sequence. */
static void coalesce(cpaPieceList *l, int from) {
  int merged = 1;
  while (merged) {
    merged = 0;
    for (int i = from; i < l->n && !merged; ++i)
      for (int j = from; j < l->n && !merged; ++j) {
        cpaPiece *x = &l->p[i], *y = &l->p[j];
        if (i == j || x->kind != CPA_KIND_NONE || y->kind != CPA_KIND_NONE) continue;
        if (x->e.q_row == y->e.q_row && x->e.q_len == y->e.q_len && x->e.k_row + x->e.k_len == y->e.k_row) {
          x->e.k_len += y->e.k_len;
        } else if (x->e.k_row == y->e.k_row && x->e.k_len == y->e.k_len && x->e.q_row + x->e.q_len == y->e.q_row) {
          x->e.q_len += y->e.q_len;
        } else {
          continue;
        }
        l->p[j] = l->p[--l->n];
        merged = 1;
      }
  }
}

void cpaCallsFree(cpaCall *calls, int ncalls) {
  for (int i = 0; calls && i < ncalls; ++i) free(calls[i].entries);
  free(calls);
}

/* Group pieces into calls: same kind, at most one entry per sequence (so the entries of
 * a ragged call never share query rows), sequences in increasing order (so ragged
 * offsets increase). BSHD has one sequence: one call per piece. */
static cpattnResult_t group_calls(const cpaPieceList *l, int nseq, cpaCall **out, int *nout) {
  cpaCall *calls = NULL;
  int n = 0;
  for (int i = 0; i < l->n; ++i) {
    const cpaPiece *pc = &l->p[i];
    int c = 0;
    for (; c < n; ++c) {
      if (calls[c].kind != pc->kind) continue;
      const cpaCall *cl = &calls[c];
      if (cl->entries[cl->nentries - 1].seq < pc->e.seq) break; /* pieces come in sequence order */
    }
    if (c == n) {
      cpaCall *nc = realloc(calls, sizeof(cpaCall) * (size_t)(n + 1));
      cpaEntry *e = nc ? malloc(sizeof(cpaEntry) * (size_t)nseq) : NULL;
      if (!nc || !e) {
        free(e);
        cpaCallsFree(nc ? nc : calls, n);
        return cpaError(cpattnOutOfMemory, "no host memory for the schedule's calls");
      }
      calls = nc;
      memset(&calls[n], 0, sizeof(cpaCall));
      calls[n].kind = pc->kind;
      calls[n].entries = e;
      ++n;
    }
    cpaCall *cl = &calls[c];
    cl->entries[cl->nentries++] = pc->e;
    cl->max_q = cpaMax64(cl->max_q, pc->e.q_len);
    cl->max_k = cpaMax64(cl->max_k, pc->e.k_len);
  }
  *out = calls;
  *nout = n;
  return cpattnSuccess;
}

cpattnResult_t cpaScheduleCalls(const cpaProblem *pb, const cpaTokenSet *q, const cpaTokenSet *k, cpaCall **calls,
                                int *ncalls) {
  cpaPieceList l = {NULL, 0, 0};
  *calls = NULL;
  *ncalls = 0;
  for (int b = 0; b < q->nseq; ++b) {
    int from = l.n, rc = 0;
    if (pb->causal && same_runs(q, k, b)) {
      int64_t qn = q->seq_row[b + 1] - q->seq_row[b];
      rc = piece_push(&l, CPA_KIND_CAUSAL, b, q->seq_row[b], qn, k->seq_row[b], qn, 0);
    } else {
      for (int i = q->run_off[b]; i < q->run_off[b + 1] && !rc; ++i)
        for (int j = k->run_off[b]; j < k->run_off[b + 1] && !rc; ++j)
          rc = pair_pieces(pb, b, &q->runs[i], &k->runs[j], &l);
    }
    if (rc) {
      free(l.p);
      return cpaError(cpattnOutOfMemory, "no host memory for the schedule's pieces");
    }
    coalesce(&l, from);
  }
  cpattnResult_t res = group_calls(&l, q->nseq, calls, ncalls);
  free(l.p);
  return res;
}

/* ---------------------------------------------------------------------------------- */
/* Whole schedules                                                                     */
/* ---------------------------------------------------------------------------------- */

void cpaScheduleFree(cpaSchedule *s) {
  for (int i = 0; s->steps && i < s->nsteps; ++i) cpaCallsFree(s->steps[i].calls, s->steps[i].ncalls);
  free(s->steps);
  for (int i = 0; s->kv_sets && i < s->nkv; ++i) cpaTokenSetFree(&s->kv_sets[i]);
  free(s->kv_sets);
  cpaTokenSetFree(&s->q_set);
  free(s->group_ranks);
  free(s->group_rows);
  free(s->perm_map);
  free(s->all_ranks);
  free(s->all_rows);
  free(s->gather_map);
  memset(s, 0, sizeof *s);
}

static cpattnResult_t member_set(const cpaProblem *pb, int group, cpaTokenSet *ts) {
  int ranks[1024];
  int pa = pb->pa;
  if (pa > (int)(sizeof ranks / sizeof ranks[0]))
    return cpaError(cpattnNotSupported, "all-to-all groups of more than 1024 ranks are not supported");
  for (int a = 0; a < pa; ++a) ranks[a] = group * pa + a;
  return cpaTokenSetBuild(pb, ranks, pa, ts);
}

cpattnResult_t cpaScheduleBuild(const cpaProblem *pb, cpaSchedule *s) {
  cpattnResult_t res = cpattnSuccess;
  memset(s, 0, sizeof *s);
  s->pb = pb;
  int P = pb->world, pa = pb->pa, pr = pb->pr;
  s->group = pb->rank / pa;
  s->a = pb->rank % pa;
  s->group_base = s->group * pa;
  s->group_ranks = malloc(sizeof(int) * (size_t)pa);
  s->group_rows = malloc(sizeof(int64_t) * (size_t)pa);
  if (!s->group_ranks || !s->group_rows) {
    res = cpaError(cpattnOutOfMemory, "no host memory for the schedule");
    goto fail;
  }
  for (int a = 0; a < pa; ++a) {
    s->group_ranks[a] = s->group_base + a;
    s->group_rows[a] = cpaRankRows(pb, s->group_base + a);
  }
  s->send_to = s->recv_from = -1;

  if (pb->schedule == cpattnScheduleAllGather) {
    s->pre = P > 1 ? CPA_PRE_ALLGATHER : CPA_PRE_NONE;
    s->all_ranks = malloc(sizeof(int) * (size_t)P);
    s->all_rows = malloc(sizeof(int64_t) * (size_t)P);
    s->kv_sets = calloc(1, sizeof(cpaTokenSet));
    if (!s->all_ranks || !s->all_rows || !s->kv_sets) {
      res = cpaError(cpattnOutOfMemory, "no host memory for the schedule");
      goto fail;
    }
    for (int p = 0; p < P; ++p) {
      s->all_ranks[p] = p;
      s->all_rows[p] = cpaRankRows(pb, p);
    }
    s->nkv = 1;
    CPA_CHECK_GOTO(cpaTokenSetBuild(pb, &pb->rank, 1, &s->q_set), res, fail);
    CPA_CHECK_GOTO(cpaTokenSetBuild(pb, s->all_ranks, P, &s->kv_sets[0]), res, fail);
    CPA_CHECK_GOTO(cpaTokenSetPermuteMap(pb, &s->kv_sets[0], s->all_ranks, P, &s->gather_map, &s->gather_n), res,
                   fail);
  } else {
    s->pre = pa > 1 ? CPA_PRE_ALLTOALL : CPA_PRE_NONE;
    s->kv_sets = calloc((size_t)pr, sizeof(cpaTokenSet));
    if (!s->kv_sets) {
      res = cpaError(cpattnOutOfMemory, "no host memory for the schedule");
      goto fail;
    }
    s->nkv = pr;
    for (int g = 0; g < pr; ++g) CPA_CHECK_GOTO(member_set(pb, g, &s->kv_sets[g]), res, fail);
    CPA_CHECK_GOTO(member_set(pb, s->group, &s->q_set), res, fail);
    if (pa > 1)
      CPA_CHECK_GOTO(cpaTokenSetPermuteMap(pb, &s->q_set, s->group_ranks, pa, &s->perm_map, &s->perm_n), res, fail);
    if (pr > 1) { /* the block at step s came from group g - s; pass it to g + 1 */
      s->send_to = ((s->group + 1) % pr) * pa + s->a;
      s->recv_from = ((s->group + pr - 1) % pr) * pa + s->a;
    }
  }
  for (int i = 0; i < s->nkv; ++i) s->max_kv_rows = cpaMax64(s->max_kv_rows, s->kv_sets[i].rows);

  s->nsteps = s->pre == CPA_PRE_ALLGATHER || pb->schedule == cpattnScheduleAllGather ? 1 : pr;
  s->steps = calloc((size_t)s->nsteps, sizeof(cpaStep));
  if (!s->steps) {
    res = cpaError(cpattnOutOfMemory, "no host memory for the schedule");
    goto fail;
  }
  for (int st = 0; st < s->nsteps; ++st) {
    cpaStep *step = &s->steps[st];
    step->kv_member = pb->schedule == cpattnScheduleAllGather ? 0 : (s->group - st + pr) % pr;
    CPA_CHECK_GOTO(cpaScheduleCalls(pb, &s->q_set, &s->kv_sets[step->kv_member], &step->calls, &step->ncalls), res,
                   fail);
    for (int c = 0; c < step->ncalls; ++c) step->calls[c].id = s->ncalls_total++;
  }
  return cpattnSuccess;
fail:
  cpaScheduleFree(s);
  return res;
}

/* ---------------------------------------------------------------------------------- */
/* First and last touch of rows                                                        */
/* ---------------------------------------------------------------------------------- */

void cpaTouchFree(cpaTouch *t) {
  free(t->q_first);
  free(t->q_last);
  free(t->k_first);
  memset(t, 0, sizeof *t);
}

static int all_covered(const int32_t *first, int64_t n) {
  for (int64_t r = 0; r < n; ++r)
    if (first[r] < 0) return 0;
  return 1;
}

cpattnResult_t cpaScheduleTouch(const cpaSchedule *s, cpaTouch *t) {
  memset(t, 0, sizeof *t);
  t->nq = s->q_set.rows;
  t->nk = s->nsteps > 0 ? s->kv_sets[s->steps[0].kv_member].rows : 0;
  t->q_first = malloc(sizeof(int32_t) * (size_t)(t->nq + 1));
  t->q_last = malloc(sizeof(int32_t) * (size_t)(t->nq + 1));
  t->k_first = malloc(sizeof(int32_t) * (size_t)(t->nk + 1));
  if (!t->q_first || !t->q_last || !t->k_first) {
    cpaTouchFree(t);
    return cpaError(cpattnOutOfMemory, "no host memory for the first/last touch of %lld rows",
                    (long long)(t->nq + t->nk));
  }
  int32_t *count = calloc((size_t)(t->nq + 1), sizeof(int32_t));
  if (!count) {
    cpaTouchFree(t);
    return cpaError(cpattnOutOfMemory, "no host memory for the touch counts of %lld rows", (long long)t->nq);
  }
  for (int64_t r = 0; r < t->nq; ++r) t->q_first[r] = t->q_last[r] = -1;
  for (int64_t r = 0; r < t->nk; ++r) t->k_first[r] = -1;
  for (int st = 0; st < s->nsteps; ++st)
    for (int c = 0; c < s->steps[st].ncalls; ++c) {
      const cpaCall *call = &s->steps[st].calls[c];
      for (int e = 0; e < call->nentries; ++e) {
        const cpaEntry *en = &call->entries[e];
        for (int64_t r = en->q_row; r < en->q_row + en->q_len; ++r) {
          if (t->q_first[r] < 0) t->q_first[r] = call->id;
          t->q_last[r] = call->id;
          if (++count[r] > t->q_max_touch) t->q_max_touch = count[r];
        }
        if (st == 0)
          for (int64_t r = en->k_row; r < en->k_row + en->k_len; ++r)
            if (t->k_first[r] < 0) t->k_first[r] = call->id;
      }
    }
  free(count);
  t->q_clean = all_covered(t->q_first, t->nq);
  t->k_clean = all_covered(t->k_first, t->nk);
  return cpattnSuccess;
}

int cpaTouchCallKind(const cpaTouch *t, const cpaCall *call, int side) {
  int64_t rows = 0, first = 0, last = 0;
  for (int e = 0; e < call->nentries; ++e) {
    const cpaEntry *en = &call->entries[e];
    int64_t r0 = side ? en->k_row : en->q_row, n = side ? en->k_len : en->q_len;
    for (int64_t r = r0; r < r0 + n; ++r) {
      ++rows;
      first += (side ? t->k_first[r] : t->q_first[r]) == call->id;
      last += !side && t->q_last[r] == call->id;
    }
  }
  int kind = 0;
  if (rows > 0 && first == rows) kind |= CPA_TOUCH_FIRST;
  else if (first > 0) kind |= CPA_TOUCH_SOME_FIRST;
  if (rows > 0 && last == rows) kind |= CPA_TOUCH_LAST;
  else if (last > 0) kind |= CPA_TOUCH_SOME_LAST;
  return kind;
}

void cpaScheduleDescribe(const cpaSchedule *s, char *buf, size_t len) {
  static const char *const kinds[] = {"none", "causal", "band"};
  static const char *const pres[] = {"-", "all-to-all", "all-gather"};
  const cpaProblem *pb = s->pb;
  size_t n = 0;
#define PUT(...)                                                        \
  do {                                                                  \
    if (n < len) {                                                      \
      int w_ = snprintf(buf + n, len - n, __VA_ARGS__);                  \
      if (w_ > 0) n += (size_t)w_;                                       \
    }                                                                   \
  } while (0)
  PUT("rank %d/%d: pa=%d pr=%d pre=%s heads q/kv %d/%d, query rows %lld, %d step(s)", pb->rank, pb->world, pb->pa,
      pb->pr, pres[s->pre], pb->hq_local, pb->hkv_local, (long long)s->q_set.rows, s->nsteps);
  for (int st = 0; st < s->nsteps; ++st) {
    const cpaStep *step = &s->steps[st];
    PUT("\n  step %d: kv block %d (%lld rows)", st, step->kv_member, (long long)s->kv_sets[step->kv_member].rows);
    for (int c = 0; c < step->ncalls; ++c) {
      const cpaCall *cl = &step->calls[c];
      PUT("\n    call %d %s x%d:", cl->id, kinds[cl->kind], cl->nentries);
      for (int e = 0; e < cl->nentries && e < 4; ++e)
        PUT(" [s%d q%lld+%lld k%lld+%lld]", cl->entries[e].seq, (long long)cl->entries[e].q_row,
            (long long)cl->entries[e].q_len, (long long)cl->entries[e].k_row, (long long)cl->entries[e].k_len);
      if (cl->nentries > 4) PUT(" ...");
    }
  }
#undef PUT
  if (len) buf[n < len ? n : len - 1] = '\0';
}
