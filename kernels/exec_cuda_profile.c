/*
 * exec_cuda_profile.c -- per-call profile of the CUDA executor (exec_cuda_profile.h).
 *
 * Events rather than a profiler tool: the lent GPU machines have no working nsys, and a
 * report that names the schedule's own calls (step, mask, chunk shape, exact visible
 * pairs) is what tells a slow call from a slow shape. Every op gets its own pair of
 * events, so "other" (the pass minus its ops) is exactly the time the stream ran none
 * of them: launch gaps and waits on the exchange stream.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/core.h"
#include "../src/pairs.h"
#include "exec_cuda_profile.h"

#define PROF_CUDA(call)                                                                                    \
  do {                                                                                                     \
    cudaError_t e_ = (call);                                                                               \
    if (e_ != cudaSuccess)                                                                                 \
      return cpaError(cpattnCudaError, "%s:%d %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
  } while (0)

typedef struct {
  cpaProfOp op;
  int ev0, ev1;        /* indices into the event pool; ev1 = -1 until closed */
  const cpaCall *call; /* attention ops only                                  */
} cpaProfRec;

struct cpaProfiler {
  const cpaProblem *pb;
  int *step_of; /* step of each call id (plan time)                               */
  int ncalls, nsteps;
  cudaEvent_t *ev; /* the pool: created on demand, reused by every pass           */
  int nev, used;
  cpaProfRec *rec;
  int nrec, cap;
  int open;     /* the record waiting for its Close, -1 when none                 */
  int begin_ev;
  int active;   /* this pass is recorded (not during graph capture)                */
  int pass;     /* passes begun, numbering the reports                             */
  int warned;
};

static const char *const kOpName[CPA_PROF_NOPS] = {"attn_fwd", "attn_bwd", "merge",      "accumulate", "fill",
                                                   "copy",     "add",      "lse_gather", "meta"};

cpattnResult_t cpaProfilerCreate(cpaProfiler **prof, const cpaProblem *pb) {
  cpaProfiler *p = calloc(1, sizeof *p);
  if (!p) return cpaError(cpattnOutOfMemory, "no host memory for the call profiler");
  p->pb = pb;
  p->open = -1;
  *prof = p;
  CPA_INFO("CPATTN_PROFILE_CALLS=1: every forward and backward waits for its stream and prints a report");
  return cpattnSuccess;
}

void cpaProfilerDestroy(cpaProfiler *p) {
  if (!p) return;
  for (int i = 0; i < p->nev; ++i) cudaEventDestroy(p->ev[i]);
  free(p->ev);
  free(p->rec);
  free(p->step_of);
  free(p);
}

cpattnResult_t cpaProfilerSchedule(cpaProfiler *p, const cpaSchedule *s) {
  free(p->step_of);
  p->ncalls = s->ncalls_total;
  p->nsteps = s->nsteps;
  p->step_of = malloc(sizeof(int) * (size_t)(p->ncalls ? p->ncalls : 1));
  if (!p->step_of) return cpaError(cpattnOutOfMemory, "no host memory for the call profiler");
  for (int i = 0; i < p->ncalls; ++i) p->step_of[i] = -1;
  for (int st = 0; st < s->nsteps; ++st)
    for (int c = 0; c < s->steps[st].ncalls; ++c) {
      int id = s->steps[st].calls[c].id;
      if (id >= 0 && id < p->ncalls) p->step_of[id] = st;
    }
  return cpattnSuccess;
}

/* The next event of the pool, recorded on stream. The pool grows by doubling until it
 * holds a whole pass; later passes allocate nothing. */
static cpattnResult_t record(cpaProfiler *p, struct CUstream_st *stream, int *idx) {
  if (p->used == p->nev) {
    int n = p->nev ? 2 * p->nev : 64;
    cudaEvent_t *ev = realloc(p->ev, sizeof *ev * (size_t)n);
    if (!ev) return cpaError(cpattnOutOfMemory, "no host memory for %d profile events", n);
    p->ev = ev;
    for (; p->nev < n; ++p->nev) PROF_CUDA(cudaEventCreate(&p->ev[p->nev]));
  }
  *idx = p->used++;
  PROF_CUDA(cudaEventRecord(p->ev[*idx], stream));
  return cpattnSuccess;
}

cpattnResult_t cpaProfilerBegin(cpaProfiler *p, struct CUstream_st *stream) {
  ++p->pass;
  p->active = 0;
  p->nrec = p->used = 0;
  p->open = -1;
  enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  PROF_CUDA(cudaStreamIsCapturing(stream, &cs));
  if (cs != cudaStreamCaptureStatusNone) {
    if (!p->warned) CPA_WARN("CPATTN_PROFILE_CALLS: passes captured into a CUDA graph are not profiled");
    p->warned = 1;
    return cpattnSuccess;
  }
  p->active = 1;
  return record(p, stream, &p->begin_ev);
}

cpattnResult_t cpaProfilerOpen(cpaProfiler *p, cpaProfOp op, const cpaCall *call, struct CUstream_st *stream) {
  if (!p->active) return cpattnSuccess;
  if (p->nrec == p->cap) {
    int n = p->cap ? 2 * p->cap : 32;
    cpaProfRec *r = realloc(p->rec, sizeof *r * (size_t)n);
    if (!r) return cpaError(cpattnOutOfMemory, "no host memory for %d profile records", n);
    p->rec = r;
    p->cap = n;
  }
  cpaProfRec *r = &p->rec[p->nrec];
  r->op = op;
  r->ev1 = -1;
  r->call = call;
  CPA_CHECK(record(p, stream, &r->ev0));
  p->open = p->nrec++;
  return cpattnSuccess;
}

cpattnResult_t cpaProfilerClose(cpaProfiler *p, struct CUstream_st *stream) {
  if (!p->active || p->open < 0) return cpattnSuccess;
  CPA_CHECK(record(p, stream, &p->rec[p->open].ev1));
  p->open = -1;
  return cpattnSuccess;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Polls rather than cudaEventSynchronize: a peer that stalls must not hang the report
 * (DESIGN.md, errors). 0: done; 1: still running at the plan's timeout. */
static cpattnResult_t wait_event(cpaProfiler *p, cudaEvent_t ev, int *late) {
  int64_t bound = p->pb->timeout_ms;
  double deadline = bound < 0 ? -1.0 : now_ms() + (double)bound;
  struct timespec nap = {0, 50000};
  cudaError_t ce;
  while ((ce = cudaEventQuery(ev)) == cudaErrorNotReady) {
    if (deadline >= 0 && now_ms() > deadline) {
      *late = 1;
      return cpattnSuccess;
    }
    nanosleep(&nap, NULL);
  }
  *late = 0;
  PROF_CUDA(ce);
  return cpattnSuccess;
}

static float elapsed(const cpaProfiler *p, int a, int b) {
  float ms = 0.0f;
  if (cudaEventElapsedTime(&ms, p->ev[a], p->ev[b]) != cudaSuccess) return 0.0f;
  return ms;
}

static const char *mask_name(cpaKind k) {
  return k == CPA_KIND_NONE ? "none" : k == CPA_KIND_CAUSAL ? "causal" : "band";
}

/* The report: a header, a line per attention call, the element-wise kernels by kind,
 * then the split of the whole pass. FLOPs follow launch/cpattn_bench.c: forward
 * 2 * (Dqk + Dv) * Hq per visible pair and batch element, backward 2.5 times that. */
static void report(const cpaProfiler *p, int end_ev, FILE *f) {
  const cpaProblem *pb = p->pb;
  int fwd = 0, bwd = 0, natt = 0;
  for (int i = 0; i < p->nrec; ++i) {
    fwd |= p->rec[i].op == CPA_PROF_ATTN_FWD;
    bwd |= p->rec[i].op == CPA_PROF_ATTN_BWD;
  }
  char pre[96];
  snprintf(pre, sizeof pre, "[cpattn profile] rank %d/%d pass %d %s:", pb->rank, pb->world, p->pass,
           fwd ? "fwd" : bwd ? "bwd" : "none");
  static const char *const sched[] = {"auto", "ring", "a2a", "allgather", "hybrid"};
  int si = (int)pb->schedule;
  fprintf(f, "%s %s, %d step(s), %s, b=%d hq=%d hkv=%d d=%d/%d (heads of this rank; rows and pairs per batch "
          "element)\n", pre, si >= 0 && si < 5 ? sched[si] : "?", p->nsteps,
          pb->cfg.dtype == cpattnFloat16 ? "fp16" : "bf16", pb->batch_mult, pb->hq_local, pb->hkv_local, pb->dqk,
          pb->dv);
  fprintf(f, "%s %4s %4s %-6s %7s %9s %9s %15s %9s %7s\n", pre, "step", "call", "mask", "entries", "q rows", "k rows",
          "pairs", "ms", "TF/s");
  double per_pair = 2.0 * (double)(pb->dqk + pb->dv) * (double)pb->hq_local * (double)pb->batch_mult;
  double ms_op[CPA_PROF_NOPS] = {0}, flop_att = 0;
  int n_op[CPA_PROF_NOPS] = {0};
  for (int i = 0; i < p->nrec; ++i) {
    const cpaProfRec *r = &p->rec[i];
    if (r->ev1 < 0) continue; /* an op whose launch failed */
    double ms = elapsed(p, r->ev0, r->ev1);
    ms_op[r->op] += ms;
    n_op[r->op] += 1;
    if (r->op != CPA_PROF_ATTN_FWD && r->op != CPA_PROF_ATTN_BWD) continue;
    const cpaCall *c = r->call;
    int64_t q = 0, k = 0, pairs = cpaCallVisiblePairs(c, pb->band_lo, pb->band_hi);
    for (int e = 0; e < c->nentries; ++e) {
      q += c->entries[e].q_len;
      k += c->entries[e].k_len;
    }
    double flop = per_pair * (double)pairs * (r->op == CPA_PROF_ATTN_BWD ? 2.5 : 1.0);
    flop_att += flop;
    ++natt;
    int step = c->id >= 0 && c->id < p->ncalls && p->step_of ? p->step_of[c->id] : -1;
    fprintf(f, "%s %4d %4d %-6s %7d %9lld %9lld %15lld %9.4f %7.1f\n", pre, step, c->id, mask_name(c->kind),
            c->nentries, (long long)q, (long long)k, (long long)pairs, ms, ms > 0 ? flop / (ms * 1e9) : 0.0);
  }
  double ew = 0;
  fprintf(f, "%s element-wise ms (launches):", pre);
  for (int op = CPA_PROF_MERGE; op < CPA_PROF_NOPS; ++op) {
    ew += ms_op[op];
    if (n_op[op]) fprintf(f, " %s %.4f (%d)", kOpName[op], ms_op[op], n_op[op]);
  }
  fprintf(f, "%s\n", ew > 0 ? "" : " none");
  double total = elapsed(p, p->begin_ev, end_ev), att = ms_op[CPA_PROF_ATTN_FWD] + ms_op[CPA_PROF_ATTN_BWD];
  double other = total - att - ew, pct = total > 0 ? 100.0 / total : 0.0;
  fprintf(f, "%s total %.4f ms = attention %.4f (%.1f%%, %d calls, %.1f TF/s) + element-wise %.4f (%.1f%%) + other "
          "%.4f (%.1f%%: launch gaps, exchange waits); whole pass %.1f TF/s\n", pre, total, att, att * pct, natt,
          att > 0 ? flop_att / (att * 1e9) : 0.0, ew, ew * pct, other, other * pct,
          total > 0 ? flop_att / (total * 1e9) : 0.0);
}

cpattnResult_t cpaProfilerEnd(cpaProfiler *p, struct CUstream_st *stream) {
  if (!p->active) return cpattnSuccess;
  p->active = 0;
  int end, late;
  CPA_CHECK(record(p, stream, &end));
  CPA_CHECK(wait_event(p, p->ev[end], &late));
  if (late) {
    CPA_WARN("CPATTN_PROFILE_CALLS: pass %d not finished after %lld ms; no report", p->pass,
             (long long)p->pb->timeout_ms);
    return cpattnSuccess;
  }
  /* One write for the whole report, so that the ranks' reports do not interleave
   * line by line in a merged log. */
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&buf, &len);
  if (!m) {
    report(p, end, stderr);
    return cpattnSuccess;
  }
  report(p, end, m);
  fclose(m);
  fwrite(buf, 1, len, stderr);
  fflush(stderr);
  free(buf);
  return cpattnSuccess;
}
