/*
 * exec_cuda_profile.h -- per-call profile of the CUDA executor (CPATTN_PROFILE_CALLS=1).
 *
 * A diagnostic, not a timer for benchmarks: it answers "where does a forward or a
 * backward spend its GPU time": each cuDNN attention call on its chunk shape, at what
 * rate; the element-wise kernels around them; and what is left, the launch gaps and the
 * waits for the exchange. The executor brackets every op it enqueues on its compute
 * stream with Open/Close (a CUDA event before and after), and at the end of the pass
 * this module waits for the stream and prints one report to stderr, every line
 * prefixed "[cpattn profile] rank R/P pass N fwd|bwd:" so that the reports of several
 * ranks and passes can be told apart in one merged log.
 *
 * Costs when on: two event records per op, a host wait at the end of every pass (the
 * next pass can no longer be enqueued behind this one) and the events' pool, grown on
 * the first passes and reused after. Off, the executor holds a NULL profiler and never
 * calls in here. A pass enqueued during CUDA graph capture is not profiled (events
 * there cannot be timed), with a warning once.
 */
#ifndef CPATTN_KERNELS_EXEC_CUDA_PROFILE_H_
#define CPATTN_KERNELS_EXEC_CUDA_PROFILE_H_

#include "../src/problem.h"
#include "../src/schedule.h"

struct CUstream_st; /* cudaStream_t */

typedef enum {
  CPA_PROF_ATTN_FWD = 0, /* cuDNN forward of one call                                   */
  CPA_PROF_ATTN_BWD,     /* cuDNN backward of one call                                  */
  CPA_PROF_MERGE,        /* the element-wise kernels of executor.h                      */
  CPA_PROF_ACCUMULATE,
  CPA_PROF_FILL,
  CPA_PROF_COPY,
  CPA_PROF_ADD,
  CPA_PROF_LSE_GATHER,   /* backward: the call's LSE slice packed for cuDNN             */
  CPA_PROF_META,         /* per-call ragged offsets and band deltas built on the device */
  CPA_PROF_NOPS
} cpaProfOp;

typedef struct cpaProfiler cpaProfiler;

/* A profiler for the executor of pb (pb must outlive it). */
cpattnResult_t cpaProfilerCreate(cpaProfiler **prof, const cpaProblem *pb);
void cpaProfilerDestroy(cpaProfiler *prof);

/* Plan time: the step of every call id, for the report (the schedule may be freed
 * afterwards; calls passed to Open must stay valid until that pass's End). */
cpattnResult_t cpaProfilerSchedule(cpaProfiler *prof, const cpaSchedule *s);

/* One pass (a forward or a backward) on stream: Begin, then Open/Close around each op
 * (call: the attention call, NULL for the others), then End, which waits for the stream
 * (at most the plan's timeout, pb->timeout_ms) and prints the report. A pass that failed
 * half-way is simply replaced by the next Begin. */
cpattnResult_t cpaProfilerBegin(cpaProfiler *prof, struct CUstream_st *stream);
cpattnResult_t cpaProfilerOpen(cpaProfiler *prof, cpaProfOp op, const cpaCall *call, struct CUstream_st *stream);
cpattnResult_t cpaProfilerClose(cpaProfiler *prof, struct CUstream_st *stream);
cpattnResult_t cpaProfilerEnd(cpaProfiler *prof, struct CUstream_st *stream);

#endif /* CPATTN_KERNELS_EXEC_CUDA_PROFILE_H_ */
