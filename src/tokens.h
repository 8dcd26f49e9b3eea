/*
 * tokens.h -- which global tokens a rank (or a group of ranks) holds, and in what order.
 *
 * A sequence of length L cut into n chunks: chunk i is [floor(i*L/n), floor((i+1)*L/n)).
 * Zigzag: n = 2P, rank r holds chunks r and 2P-1-r. Contiguous: n = P, rank r holds chunk
 * r. A rank's local order is: sequence by sequence, its chunks by increasing position.
 *
 * A token set is that for one rank, or the union for a group of ranks in sorted order
 * (what an all-to-all group or an all-gather holds after its permute). Rows are "local
 * rows": for BSHD/SBHD within one batch element (every element has the same structure),
 * for THD the packed rows across sequences.
 */
#ifndef CPATTN_SRC_TOKENS_H_
#define CPATTN_SRC_TOKENS_H_

#include <stdint.h>

#include "problem.h"

typedef struct {
  int64_t pos;     /* first global position (within its sequence)                    */
  int64_t len;     /* > 0: empty chunks are never stored                              */
  int64_t row;     /* first row in this set's order                                  */
  int src_rank;    /* the rank that holds it in the input sharding (-1 for a merged run) */
  int64_t src_row; /* its first row in that rank's local order                        */
} cpaChunk;

typedef struct {
  int nseq;
  int64_t rows;          /* total rows                                                */
  int64_t *seq_row;      /* [nseq+1] first row of each sequence                       */
  int *chunk_off;        /* [nseq+1] chunks of sequence b: chunks[chunk_off[b] ..]    */
  cpaChunk *chunks;      /* as held by ranks (for permute maps)                        */
  int *run_off;          /* [nseq+1]                                                  */
  cpaChunk *runs;        /* position-contiguous chunks merged (for the scheduler)      */
} cpaTokenSet;

/* [start, start+len) of chunk i of n of a sequence of length L. */
void cpaChunkBounds(int64_t L, int n, int i, int64_t *start, int64_t *len);

/* Local rows of `rank` (per batch element for BSHD/SBHD). */
int64_t cpaRankRows(const cpaProblem *pb, int rank);

/* The set held by ranks[0..nranks) together, sorted by position. */
cpattnResult_t cpaTokenSetBuild(const cpaProblem *pb, const int *ranks, int nranks, cpaTokenSet *out);
void cpaTokenSetFree(cpaTokenSet *ts);

/* Position of each row of `rank`'s local order, and its sequence index (either may be NULL). */
void cpaRankPositions(const cpaProblem *pb, int rank, int64_t *pos, int32_t *seq);

/* Permute map from "rank-major" order (the rows of ranks[0], then of ranks[1], ..., each
 * in its own local order: what an all-to-all or all-gather receives) to the set's sorted
 * order: map[t] = rank-major row of sorted row t, for t in [0, rows * batch_mult). For
 * BSHD the rank-major blocks hold all batch elements: block p is [batch][rows_p]. */
cpattnResult_t cpaTokenSetPermuteMap(const cpaProblem *pb, const cpaTokenSet *ts, const int *ranks, int nranks,
                                     int64_t **map, int64_t *n);

#endif /* CPATTN_SRC_TOKENS_H_ */
