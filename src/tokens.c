/*
 * tokens.c -- chunking and token sets (see tokens.h).
 */
#include <stdlib.h>
#include <string.h>

#include "tokens.h"

void cpaChunkBounds(int64_t L, int n, int i, int64_t *start, int64_t *len) {
  /* floor(i*L/n) keeps every chunk within one token of L/n whatever L is, so no length
   * has to divide by the number of chunks and nobody has to pad. */
  int64_t a = L * i / n, b = L * (i + 1) / n;
  *start = a;
  *len = b - a;
}

static int chunk_count(const cpaProblem *pb) {
  return pb->balance == cpattnBalanceZigzag ? 2 * pb->world : pb->world;
}

/* The chunk indices rank r holds, in increasing position. */
static int rank_chunks(const cpaProblem *pb, int r, int idx[2]) {
  if (pb->balance == cpattnBalanceZigzag) {
    idx[0] = r;
    idx[1] = 2 * pb->world - 1 - r;
    return 2;
  }
  idx[0] = r;
  return 1;
}

int64_t cpaRankRows(const cpaProblem *pb, int rank) {
  int idx[2], n = rank_chunks(pb, rank, idx), nc = chunk_count(pb);
  int64_t rows = 0;
  for (int b = 0; b < pb->nseq; ++b)
    for (int i = 0; i < n; ++i) {
      int64_t s, l;
      cpaChunkBounds(pb->seq_len[b], nc, idx[i], &s, &l);
      rows += l;
    }
  return rows;
}

void cpaRankPositions(const cpaProblem *pb, int rank, int64_t *pos, int32_t *seq) {
  int idx[2], n = rank_chunks(pb, rank, idx), nc = chunk_count(pb);
  int64_t row = 0;
  for (int b = 0; b < pb->nseq; ++b)
    for (int i = 0; i < n; ++i) {
      int64_t s, l;
      cpaChunkBounds(pb->seq_len[b], nc, idx[i], &s, &l);
      for (int64_t t = 0; t < l; ++t, ++row) {
        if (pos) pos[row] = s + t;
        if (seq) seq[row] = b;
      }
    }
}

void cpaTokenSetFree(cpaTokenSet *ts) {
  free(ts->seq_row);
  free(ts->chunk_off);
  free(ts->chunks);
  free(ts->run_off);
  free(ts->runs);
  memset(ts, 0, sizeof *ts);
}

static int cmp_chunk_pos(const void *a, const void *b) {
  const cpaChunk *x = a, *y = b;
  return x->pos < y->pos ? -1 : x->pos > y->pos;
}

cpattnResult_t cpaTokenSetBuild(const cpaProblem *pb, const int *ranks, int nranks, cpaTokenSet *ts) {
  memset(ts, 0, sizeof *ts);
  int nc = chunk_count(pb), per = pb->balance == cpattnBalanceZigzag ? 2 : 1;
  size_t cap = (size_t)pb->nseq * (size_t)nranks * (size_t)per;
  ts->nseq = pb->nseq;
  ts->seq_row = calloc((size_t)pb->nseq + 1, sizeof(int64_t));
  ts->chunk_off = calloc((size_t)pb->nseq + 1, sizeof(int));
  ts->run_off = calloc((size_t)pb->nseq + 1, sizeof(int));
  ts->chunks = calloc(cap ? cap : 1, sizeof(cpaChunk));
  ts->runs = calloc(cap ? cap : 1, sizeof(cpaChunk));
  int64_t *src_row = calloc((size_t)nranks, sizeof(int64_t)); /* next row of each rank */
  if (!ts->seq_row || !ts->chunk_off || !ts->run_off || !ts->chunks || !ts->runs || !src_row) {
    free(src_row);
    cpaTokenSetFree(ts);
    return cpaError(cpattnOutOfMemory, "no host memory for a token set of %zu chunks", cap);
  }
  int nchunks = 0, nruns = 0;
  int64_t row = 0;
  for (int b = 0; b < pb->nseq; ++b) {
    ts->seq_row[b] = row;
    ts->chunk_off[b] = nchunks;
    ts->run_off[b] = nruns;
    int first = nchunks;
    for (int p = 0; p < nranks; ++p) {
      int idx[2], n = rank_chunks(pb, ranks[p], idx);
      for (int i = 0; i < n; ++i) {
        int64_t s, l;
        cpaChunkBounds(pb->seq_len[b], nc, idx[i], &s, &l);
        if (l == 0) continue;
        cpaChunk ch = {s, l, 0, ranks[p], src_row[p]};
        ts->chunks[nchunks++] = ch;
        src_row[p] += l;
      }
    }
    qsort(ts->chunks + first, (size_t)(nchunks - first), sizeof(cpaChunk), cmp_chunk_pos);
    for (int i = first; i < nchunks; ++i) {
      ts->chunks[i].row = row;
      row += ts->chunks[i].len;
      cpaChunk *last = nruns > ts->run_off[b] ? &ts->runs[nruns - 1] : NULL;
      if (last && last->pos + last->len == ts->chunks[i].pos) {
        last->len += ts->chunks[i].len; /* rows are consecutive too: sorted order */
      } else {
        ts->runs[nruns] = ts->chunks[i];
        ts->runs[nruns].src_rank = -1;
        ts->runs[nruns].src_row = -1;
        ++nruns;
      }
    }
  }
  ts->seq_row[pb->nseq] = row;
  ts->chunk_off[pb->nseq] = nchunks;
  ts->run_off[pb->nseq] = nruns;
  ts->rows = row;
  free(src_row);
  return cpattnSuccess;
}

cpattnResult_t cpaTokenSetPermuteMap(const cpaProblem *pb, const cpaTokenSet *ts, const int *ranks, int nranks,
                                     int64_t **map_out, int64_t *n_out) {
  int64_t B = pb->batch_mult, total = ts->rows * B;
  int64_t *block = calloc((size_t)nranks + 1, sizeof(int64_t)); /* rank-major block starts */
  int64_t *map = malloc(sizeof(int64_t) * (size_t)(total ? total : 1));
  if (!block || !map) {
    free(block);
    free(map);
    return cpaError(cpattnOutOfMemory, "no host memory for a permute map of %lld rows", (long long)total);
  }
  for (int p = 0; p < nranks; ++p) block[p + 1] = block[p] + cpaRankRows(pb, ranks[p]) * B;
  for (int i = 0; i < ts->chunk_off[ts->nseq]; ++i) {
    const cpaChunk *ch = &ts->chunks[i];
    int p = 0;
    while (ranks[p] != ch->src_rank) ++p;
    int64_t rows_p = (block[p + 1] - block[p]) / B;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < ch->len; ++t)
        map[b * ts->rows + ch->row + t] = block[p] + b * rows_p + ch->src_row + t;
  }
  free(block);
  *map_out = map;
  *n_out = total;
  return cpattnSuccess;
}
