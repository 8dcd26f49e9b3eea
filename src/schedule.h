/*
 * schedule.h -- for a problem, a rank and a world size: the small list of steps that the
 * engine walks, identical for both executors.
 *
 * Shape of every schedule: an optional pre-phase that changes which rows and heads a rank
 * works on (all-to-all inside a group of pa ranks, or an all-gather of K/V), then a ring
 * over pr members (pr = 1: a single step), then the inverse of the pre-phase.
 *
 * A step names the K/V block it uses and the attention calls it makes on it. A call is
 * one kind of mask over one or more entries; an entry is a rectangle of query rows x key
 * rows of one sequence (for BSHD/SBHD it applies to every batch element, and a call has
 * one entry; for THD a call has at most one entry per sequence, so the entries of a call
 * never share query rows and can run as one ragged launch). Kinds:
 *   NONE    every key of the rectangle is visible
 *   CAUSAL  key j visible to query i iff j <= i, rows counted from the rectangle's corner
 *   BAND    the window rule on positions: q - band_lo <= k <= q + band_hi, with
 *           q - k = delta + i - j inside the rectangle
 * Pairs of chunks whose mask is empty produce no entry at all, and causal pairs are
 * always split into NONE and CAUSAL rectangles (the fast cuDNN backward), never BAND.
 */
#ifndef CPATTN_SRC_SCHEDULE_H_
#define CPATTN_SRC_SCHEDULE_H_

#include <stdint.h>

#include "problem.h"
#include "tokens.h"

typedef enum { CPA_KIND_NONE = 0, CPA_KIND_CAUSAL = 1, CPA_KIND_BAND = 2 } cpaKind;

typedef struct {
  int32_t seq;
  int64_t q_row, q_len; /* rows in the query set                                        */
  int64_t k_row, k_len; /* rows in the step's K/V block                                 */
  int64_t delta;        /* position of query row q_row minus that of key row k_row      */
} cpaEntry;

typedef struct {
  cpaKind kind;
  int nentries;
  cpaEntry *entries;
  int64_t max_q, max_k; /* largest entry extents                                        */
  int id;               /* index of this call in the whole schedule (executor metadata) */
} cpaCall;

typedef struct {
  int kv_member; /* which K/V block: index into cpaSchedule.kv_sets                      */
  int ncalls;
  cpaCall *calls;
} cpaStep;

typedef enum { CPA_PRE_NONE = 0, CPA_PRE_ALLTOALL = 1, CPA_PRE_ALLGATHER = 2 } cpaPrePhase;

typedef struct {
  const cpaProblem *pb;
  cpaPrePhase pre;

  /* All-to-all group: ranks group_base .. group_base+pa-1; this rank is member a. */
  int group, a, group_base;
  int *group_ranks;      /* [pa]                                                        */
  int64_t *group_rows;   /* [pa] local rows of each group rank (per batch element)       */
  int64_t *perm_map;     /* a2a: rank-major -> sorted rows of q_set (tokens.h)          */
  int64_t perm_n;

  /* All-gather: every rank's K/V, sorted into the whole sequence. */
  int *all_ranks;        /* [world]                                                     */
  int64_t *all_rows;     /* [world]                                                     */
  int64_t *gather_map;
  int64_t gather_n;

  cpaTokenSet q_set;     /* the rows this rank computes queries for in the ring phase  */
  int nkv;
  cpaTokenSet *kv_sets;  /* K/V blocks: one per ring member, or the whole set           */
  int64_t max_kv_rows;   /* largest kv set (buffer size)                                */

  int nsteps;
  cpaStep *steps;
  int ncalls_total;
  int send_to, recv_from; /* ring neighbours (world ranks); -1 when pr == 1             */
} cpaSchedule;

cpattnResult_t cpaScheduleBuild(const cpaProblem *pb, cpaSchedule *s);
void cpaScheduleFree(cpaSchedule *s);

/* The calls attention of q against k needs (one step's worth), exported for tests.
 * *calls is malloc'ed, each call's entries too (cpaCallsFree). */
cpattnResult_t cpaScheduleCalls(const cpaProblem *pb, const cpaTokenSet *q, const cpaTokenSet *k, cpaCall **calls,
                                int *ncalls);
void cpaCallsFree(cpaCall *calls, int ncalls);

/* First and last touch of rows, from the call order (plan time). For each row of the
 * query set: the id (cpaCall.id) of the first and of the last call in schedule order
 * whose entries cover it, -1 where none does; for each key row of step 0's K/V block:
 * the first call of step 0 that covers it. Rows are per batch element (BSHD/SBHD calls
 * apply to every batch element alike). q_clean: every query row is covered; k_clean:
 * every key row of step 0's block is covered by a call of step 0. The engine uses them
 * so that the first call over a row stores instead of adding to a filled accumulator and
 * the last one writes the final output (engine.c, executor.h). q_max_touch: the most
 * calls over one query row (with two or fewer, the output itself can hold the first
 * partial result: engine.c, light accumulation). */
typedef struct {
  int32_t *q_first, *q_last;
  int64_t nq;
  int q_clean;
  int q_max_touch;
  int32_t *k_first;
  int64_t nk;
  int k_clean;
} cpaTouch;

#define CPA_TOUCH_FIRST 1
#define CPA_TOUCH_LAST 2
#define CPA_TOUCH_SOME_FIRST 4 /* first on some of its rows only                           */
#define CPA_TOUCH_SOME_LAST 8  /* last on some of its rows only                            */

cpattnResult_t cpaScheduleTouch(const cpaSchedule *s, cpaTouch *t);
void cpaTouchFree(cpaTouch *t);

/* How a call stands on its query rows (side 0) or, for a call of step 0, its key rows
 * (side 1): CPA_TOUCH_FIRST if it is the first call over every row it covers,
 * CPA_TOUCH_LAST the last (side 0 only), CPA_TOUCH_SOME_* if that holds on some of its
 * rows but not all. For logs and tests: the engine routes row by row. */
int cpaTouchCallKind(const cpaTouch *t, const cpaCall *call, int side);

/* Writes a readable summary (steps, calls, entries) into buf. */
void cpaScheduleDescribe(const cpaSchedule *s, char *buf, size_t len);

#endif /* CPATTN_SRC_SCHEDULE_H_ */
