/*
 * cpattn_bench.c -- cpattn's scaling driver and main job.
 *
 *   mpirun -np 4 cpattn-bench                 a small causal ring problem, checked (CPU)
 *   mpirun -np 2 cpattn-bench --seq 131072    on GPUs where present (one rank per GPU)
 *
 * Makes random inputs from a seed (each rank only its own shard), runs forward and
 * backward, and prints per-rank time, TFLOP/s per rank, the compute / communication
 * split with the share of communication hidden behind compute, and memory; --json
 * prints the same as one JSON object. --check also runs single-rank attention on the
 * whole sequence and compares every rank's O, LSE, dQ, dK and dV with it.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_data.h"
#include "bench_device.h"
#include "cpattn.h"
#include "cpattn_mpi.h"

typedef struct {
  cpattnConfig_t cfg;
  int32_t *cu;
  int64_t doc_min, doc_max;
  int iters, warmup, check, json, profile, explicit_exec, progress;
  uint64_t seed;
  char fault[64];
} Args;

static int g_rank, g_world;
static int g_progress;     /* --progress: each rank stamps its phases on stderr */
static double g_start_s;   /* when main started (CLOCK_MONOTONIC)                */

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A long run (a million tokens and more) is silent until its table: with --progress
 * each rank says where it is, so a run that is slow or stuck shows where. */
static void progress(const char *what, int it) {
  if (!g_progress) return;
  if (it >= -1000)
    fprintf(stderr, "cpattn-bench: rank %d: %8.2f s: %s %d\n", g_rank, mono_s() - g_start_s, what, it);
  else
    fprintf(stderr, "cpattn-bench: rank %d: %8.2f s: %s\n", g_rank, mono_s() - g_start_s, what);
  fflush(stderr);
}
#define NO_IT (-100000)

#define ROOT_PRINTF(...)                  \
  do {                                    \
    if (g_rank == 0) fprintf(stdout, __VA_ARGS__); \
  } while (0)

static void usage(void) {
  ROOT_PRINTF(
      "usage: mpirun -np P cpattn-bench [options]\n"
      "  --schedule ring|a2a|allgather|hybrid   (ring)      --a2a-group N   hybrid group size (node size)\n"
      "  --mask none|causal|window             (causal)    --window L,R    sliding window (256,0)\n"
      "  --layout bshd|sbhd|thd                (bshd)      --balance auto|zigzag|contiguous\n"
      "  --batch B  --seq S (tokens per sequence; THD: of the whole packed batch)\n"
      "  --doc-min N --doc-max N   THD document lengths, log-uniform (S/64 .. S/2)\n"
      "  --heads H  --kv-heads H  --head-dim D  --head-dim-v D  --dtype bf16|fp16|fp32\n"
      "  --executor host|cuda   (cuda where a GPU is present, else host)\n"
      "  --iters N --warmup N  --seed N  --deterministic  --timeout-ms N\n"
      "  --check / --no-check   compare with single-rank attention (default: on for host)\n"
      "  --profile / --no-profile  time compute-only and comm-only runs too (default on)\n"
      "  --json                 one JSON object on stdout instead of the table\n"
      "  --progress             each rank stamps its phases (setup, each run) on stderr\n"
      "  --fault stall:RANK:ITER | exit:RANK:ITER   fault injection (tests of timeouts)\n");
}

static int parse_enum(const char *v, const char *const *names, int n) {
  for (int i = 0; i < n; ++i)
    if (strcmp(v, names[i]) == 0) return i;
  return -1;
}

static int parse_args(int argc, char **argv, Args *a) {
  static const char *const scheds[] = {"auto", "ring", "a2a", "allgather", "hybrid"};
  static const char *const masks[] = {"none", "causal", "window"};
  static const char *const layouts[] = {"bshd", "sbhd", "thd"};
  static const char *const dtypes[] = {"fp32", "bf16", "fp16"};
  static const char *const execs[] = {"auto", "host", "cuda"};
  static const char *const bals[] = {"auto", "zigzag", "contiguous"};
  cpattnConfig_t c = CPATTN_CONFIG_INITIALIZER;
  memset(a, 0, sizeof *a);
  int gpus = bench_gpu_count();
  c.executor = gpus > 0 ? cpattnExecutorCuda : cpattnExecutorHost;
  c.schedule = cpattnScheduleRing;
  c.mask = cpattnMaskCausal;
  a->seed = 1234;
  a->check = -1;
  a->warmup = -1; /* unset; --warmup 0 is a real choice (a 2M-token backward takes 85 s) */
  a->profile = 1;
  int seq_set = 0, heads_set = 0, kv_set = 0, d_set = 0, dtype_set = 0, win_l = 256, win_r = 0;
  for (int i = 1; i < argc; ++i) {
    const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int idx;
#define NEED_VALUE                                         \
  if (!v) {                                                \
    ROOT_PRINTF("cpattn-bench: %s needs a value\n", k);    \
    return -1;                                             \
  }                                                        \
  ++i
#define ENUM_ARG(names, field, type)                                               \
  NEED_VALUE;                                                                      \
  if ((idx = parse_enum(v, names, (int)(sizeof names / sizeof names[0]))) < 0) {   \
    ROOT_PRINTF("cpattn-bench: %s %s: unknown value\n", k, v);                     \
    return -1;                                                                     \
  }                                                                                \
  field = (type)idx
    if (!strcmp(k, "--help") || !strcmp(k, "-h")) {
      usage();
      return 1;
    } else if (!strcmp(k, "--schedule")) {
      ENUM_ARG(scheds, c.schedule, cpattnSchedule_t);
    } else if (!strcmp(k, "--mask")) {
      ENUM_ARG(masks, c.mask, cpattnMask_t);
    } else if (!strcmp(k, "--layout")) {
      ENUM_ARG(layouts, c.layout, cpattnLayout_t);
    } else if (!strcmp(k, "--dtype")) {
      ENUM_ARG(dtypes, c.dtype, cpattnDataType_t);
      dtype_set = 1;
    } else if (!strcmp(k, "--executor")) {
      ENUM_ARG(execs, c.executor, cpattnExecutor_t);
      a->explicit_exec = 1;
    } else if (!strcmp(k, "--balance")) {
      ENUM_ARG(bals, c.balance, cpattnBalance_t);
    } else if (!strcmp(k, "--window")) {
      NEED_VALUE;
      if (sscanf(v, "%d,%d", &win_l, &win_r) != 2) {
        ROOT_PRINTF("cpattn-bench: --window L,R\n");
        return -1;
      }
    } else if (!strcmp(k, "--a2a-group")) { NEED_VALUE; c.a2aGroupSize = atoi(v);
    } else if (!strcmp(k, "--batch")) { NEED_VALUE; c.batch = atoi(v);
    } else if (!strcmp(k, "--seq")) { NEED_VALUE; c.seqLen = atoll(v); seq_set = 1;
    } else if (!strcmp(k, "--doc-min")) { NEED_VALUE; a->doc_min = atoll(v);
    } else if (!strcmp(k, "--doc-max")) { NEED_VALUE; a->doc_max = atoll(v);
    } else if (!strcmp(k, "--heads")) { NEED_VALUE; c.numHeadsQ = atoi(v); heads_set = 1;
    } else if (!strcmp(k, "--kv-heads")) { NEED_VALUE; c.numHeadsKV = atoi(v); kv_set = 1;
    } else if (!strcmp(k, "--head-dim")) { NEED_VALUE; c.headDimQK = atoi(v); d_set = 1;
    } else if (!strcmp(k, "--head-dim-v")) { NEED_VALUE; c.headDimV = atoi(v);
    } else if (!strcmp(k, "--iters")) { NEED_VALUE; a->iters = atoi(v);
    } else if (!strcmp(k, "--warmup")) { NEED_VALUE; a->warmup = atoi(v);
    } else if (!strcmp(k, "--seed")) { NEED_VALUE; a->seed = (uint64_t)atoll(v);
    } else if (!strcmp(k, "--timeout-ms")) { NEED_VALUE; c.timeoutMs = atoi(v);
    } else if (!strcmp(k, "--fault")) { NEED_VALUE; snprintf(a->fault, sizeof a->fault, "%s", v);
    } else if (!strcmp(k, "--deterministic")) { c.deterministic = 1;
    } else if (!strcmp(k, "--check")) { a->check = 1;
    } else if (!strcmp(k, "--no-check")) { a->check = 0;
    } else if (!strcmp(k, "--profile")) { a->profile = 1;
    } else if (!strcmp(k, "--no-profile")) { a->profile = 0;
    } else if (!strcmp(k, "--json")) { a->json = 1;
    } else if (!strcmp(k, "--progress")) { a->progress = 1;
    } else {
      ROOT_PRINTF("cpattn-bench: unknown option %s (see --help)\n", k);
      return -1;
    }
#undef ENUM_ARG
#undef NEED_VALUE
  }
  int cuda = c.executor == cpattnExecutorCuda;
  /* Defaults: a small problem the CPU checks in a second; a real one on GPUs. */
  if (!dtype_set) c.dtype = cuda ? cpattnBFloat16 : cpattnFloat32;
  if (!seq_set) c.seqLen = cuda ? 32768 : 512;
  if (!heads_set) c.numHeadsQ = cuda ? 32 : 8;
  if (!kv_set) c.numHeadsKV = cuda ? c.numHeadsQ : 4;
  if (!d_set) c.headDimQK = cuda ? 128 : 64;
  if (c.mask == cpattnMaskSlidingWindow) {
    c.windowLeft = win_l;
    c.windowRight = win_r;
  }
  if (c.schedule == cpattnScheduleHybrid && c.a2aGroupSize == 0) {
    int lr, ls;
    c.a2aGroupSize = cpattnMpiLocalRank(MPI_COMM_WORLD, &lr, &ls) == cpattnSuccess ? ls : 1;
  }
  if (a->check < 0) a->check = !cuda;
  if (a->iters <= 0) a->iters = cuda ? 10 : 3;
  if (a->warmup < 0) a->warmup = cuda ? 3 : 1;
  if (c.layout == cpattnLayoutTHD) {
    int64_t lo = a->doc_min ? a->doc_min : (c.seqLen / 64 > 0 ? c.seqLen / 64 : 1);
    int64_t hi = a->doc_max ? a->doc_max : (c.seqLen / 2 > 0 ? c.seqLen / 2 : 1);
    a->cu = malloc(sizeof(int32_t) * (size_t)(c.seqLen + 2));
    c.batch = bench_thd_lengths(a->seed, c.seqLen, lo, hi, a->cu);
    c.cuSeqlens = a->cu;
  } else if (c.batch == 0) {
    c.batch = 1;
  }
  a->cfg = c;
  return 0;
}

static double median(double *v, int n) {
  for (int i = 1; i < n; ++i)
    for (int j = i; j > 0 && v[j] < v[j - 1]; --j) {
      double t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
  return n ? (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) : 0;
}

/* The rank's tensors (device or host memory) and their descriptors. */
typedef struct {
  void *q, *k, *v, *o, *dout, *dq, *dk, *dv, *ws;
  float *lse;
  cpattnTensor_t tq, tk, tv, to, tdo, tdq, tdk, tdv;
  size_t ws_bytes;
  int64_t tokens, lse_n;
  size_t nq, nk, nv, no; /* elements */
} Tensors;

static size_t esz(cpattnDataType_t t) { return t == cpattnFloat32 ? 4 : 2; }

static int tensors_make(BenchDev *dev, const cpattnConfig_t *c, cpattnPlan_t plan, int rank, int world, uint64_t seed,
                        Tensors *t) {
  memset(t, 0, sizeof *t);
  cpattnPlanGetLocalTokenCount(plan, &t->tokens);
  int64_t rows = c->layout == cpattnLayoutTHD ? t->tokens : (int64_t)c->batch * t->tokens;
  int hq = c->numHeadsQ, hkv = c->numHeadsKV, dqk = c->headDimQK, dv = c->headDimV ? c->headDimV : dqk;
  t->nq = (size_t)(rows * hq * dqk);
  t->nk = (size_t)(rows * hkv * dqk);
  t->nv = (size_t)(rows * hkv * dv);
  t->no = (size_t)(rows * hq * dv);
  t->lse_n = rows * hq;
  size_t es = esz(c->dtype);
  void **bufs[8] = {&t->q, &t->k, &t->v, &t->o, &t->dout, &t->dq, &t->dk, &t->dv};
  size_t sizes[8] = {t->nq, t->nk, t->nv, t->no, t->no, t->nq, t->nk, t->nv};
  for (int i = 0; i < 8; ++i)
    if (!(*bufs[i] = bench_alloc(dev, sizes[i] * es))) return -1;
  if (!(t->lse = bench_alloc(dev, (size_t)t->lse_n * 4))) return -1;
  cpattnPlanGetWorkspaceSize(plan, &t->ws_bytes);
  if (!(t->ws = bench_alloc(dev, t->ws_bytes))) return -1;
  cpattnTensorInit(&t->tq, t->q, c->dtype, c->layout, c->batch, t->tokens, hq, dqk);
  cpattnTensorInit(&t->tk, t->k, c->dtype, c->layout, c->batch, t->tokens, hkv, dqk);
  cpattnTensorInit(&t->tv, t->v, c->dtype, c->layout, c->batch, t->tokens, hkv, dv);
  cpattnTensorInit(&t->to, t->o, c->dtype, c->layout, c->batch, t->tokens, hq, dv);
  cpattnTensorInit(&t->tdo, t->dout, c->dtype, c->layout, c->batch, t->tokens, hq, dv);
  cpattnTensorInit(&t->tdq, t->dq, c->dtype, c->layout, c->batch, t->tokens, hq, dqk);
  cpattnTensorInit(&t->tdk, t->dk, c->dtype, c->layout, c->batch, t->tokens, hkv, dqk);
  cpattnTensorInit(&t->tdv, t->dv, c->dtype, c->layout, c->batch, t->tokens, hkv, dv);
  /* Inputs: staged on the host, uploaded once. */
  size_t stage_n = t->nq > t->no ? t->nq : t->no;
  void *stage = malloc(stage_n * es + 16);
  if (!stage) return -1;
  struct { int id, heads, dim; void *dst; size_t n; } in[4] = {
      {BENCH_Q, hq, dqk, t->q, t->nq}, {BENCH_K, hkv, dqk, t->k, t->nk},
      {BENCH_V, hkv, dv, t->v, t->nv}, {BENCH_DO, hq, dv, t->dout, t->no}};
  int rc = 0;
  for (int i = 0; i < 4 && rc == 0; ++i) {
    rc = bench_fill(c, rank, world, seed, in[i].id, in[i].heads, in[i].dim, stage);
    if (rc == 0) rc = bench_upload(dev, in[i].dst, stage, in[i].n * es);
  }
  free(stage);
  return rc;
}

static void tensors_free(BenchDev *dev, Tensors *t) {
  void *bufs[10] = {t->q, t->k, t->v, t->o, t->dout, t->dq, t->dk, t->dv, t->ws, t->lse};
  for (int i = 0; i < 10; ++i) bench_free(dev, bufs[i]);
}

static cpattnResult_t run_fwd(cpattnPlan_t p, Tensors *t, BenchDev *d) {
  return cpattnForward(p, &t->tq, &t->tk, &t->tv, &t->to, t->lse, t->ws, t->ws_bytes, d->stream);
}
static cpattnResult_t run_bwd(cpattnPlan_t p, Tensors *t, BenchDev *d) {
  return cpattnBackward(p, &t->tq, &t->tk, &t->tv, &t->to, &t->tdo, t->lse, &t->tdq, &t->tdk, &t->tdv, t->ws,
                        t->ws_bytes, d->stream);
}

/* Fault injection: this rank stalls (sleeps for an hour) or exits before iteration it. */
static void maybe_fault(const Args *a, int it) {
  char kind[16];
  int r = -1, at = -1;
  if (!a->fault[0] || sscanf(a->fault, "%15[^:]:%d:%d", kind, &r, &at) != 3 || r != g_rank || at != it) return;
  fprintf(stderr, "cpattn-bench: rank %d injects fault '%s' before iteration %d\n", g_rank, kind, it);
  fflush(stderr);
  if (!strcmp(kind, "exit")) _exit(3);
  struct timespec ts = {3600, 0};
  nanosleep(&ts, NULL);
}

/* MPI_Barrier with a deadline: the ranks line up before each timed run, and a peer that
 * stalled or died there must become an error, not a hang (the same bound cpattn uses). */
static int barrier_bounded(int64_t timeout_ms) {
  MPI_Request req;
  if (MPI_Ibarrier(MPI_COMM_WORLD, &req) != MPI_SUCCESS) return -1;
  struct timespec t0, now, nap = {0, 100000};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    int done = 0;
    if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return -1;
    if (done) return 0;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double ms = (now.tv_sec - t0.tv_sec) * 1e3 + (now.tv_nsec - t0.tv_nsec) * 1e-6;
    if (timeout_ms >= 0 && ms > (double)timeout_ms) return -1;
    nanosleep(&nap, NULL);
  }
}

/* Median time of `iters` runs of fwd (which = 0) or bwd (1) after `warmup` runs. */
static int time_runs(const Args *a, cpattnComm_t comm, cpattnPlan_t plan, Tensors *t, BenchDev *d, int which,
                     double *ms) {
  double *v = malloc(sizeof(double) * (size_t)a->iters);
  for (int it = -a->warmup; it < a->iters; ++it) {
    /* the library's bound: config->timeoutMs, else CPATTN_TIMEOUT, else its default */
    const char *env = getenv("CPATTN_TIMEOUT");
    int64_t bound = a->cfg.timeoutMs > 0 ? a->cfg.timeoutMs
                    : a->cfg.timeoutMs < 0 ? -1
                    : env && *env ? atoll(env)
                                  : 300000;
    if (barrier_bounded(bound) != 0) {
      fprintf(stderr, "cpattn-bench: rank %d: the ranks did not line up within %lld ms (a peer stalled or died)\n",
              g_rank, (long long)bound);
      free(v);
      return -1;
    }
    /* After the barrier: the healthy ranks meet the fault inside the cpattn call. */
    maybe_fault(a, it + a->warmup);
    progress(which ? "backward run (negative: warm-up)" : "forward run (negative: warm-up)", it);
    bench_timer_start(d);
    cpattnResult_t res = which ? run_bwd(plan, t, d) : run_fwd(plan, t, d);
    bench_timer_stop(d);
    /* On a GPU the call only enqueued work: a peer that stalls shows up here, as NCCL
     * kernels that never end. The bounded wait turns that into cpattnTimeout. */
    if (res == cpattnSuccess) res = cpattnCommSynchronize(comm, d->stream, bound);
    double x = res == cpattnSuccess ? bench_timer_ms(d) : -1.0;
    if (res != cpattnSuccess || x < 0) {
      fprintf(stderr, "cpattn-bench: rank %d: %s failed: %s: %s\n", g_rank, which ? "cpattnBackward" : "cpattnForward",
              cpattnGetErrorString(res), res == cpattnSuccess ? "device error" : cpattnGetLastError());
      free(v);
      return -1;
    }
    if (it >= 0) v[it] = x;
  }
  *ms = median(v, a->iters);
  free(v);
  return 0;
}

/* Whole-sequence attention on this rank alone (a one-rank plan over MPI_COMM_SELF), and
 * the worst relative errors of this rank's outputs against its shard of it. */
static int check(const Args *a, BenchDev *dev, Tensors *t, cpattnComm_t self, double err[5]) {
  /* The same problem on one rank: any schedule is one local call there. */
  cpattnConfig_t c = a->cfg;
  c.schedule = cpattnScheduleRing;
  c.a2aGroupSize = 0;
  cpattnPlan_t plan;
  if (cpattnPlanCreate(&plan, self, &c) != cpattnSuccess) {
    fprintf(stderr, "cpattn-bench: rank %d: reference plan: %s\n", g_rank, cpattnGetLastError());
    return -1;
  }
  Tensors f;
  if (tensors_make(dev, &c, plan, 0, 1, a->seed, &f) != 0) {
    fprintf(stderr, "cpattn-bench: rank %d: no memory for the whole-sequence reference\n", g_rank);
    return -1;
  }
  cpattnResult_t res = run_fwd(plan, &f, dev);
  if (res == cpattnSuccess) res = run_bwd(plan, &f, dev);
  if (res != cpattnSuccess || bench_sync(dev) != 0) {
    fprintf(stderr, "cpattn-bench: rank %d: reference run: %s\n", g_rank, cpattnGetLastError());
    return -1;
  }
  size_t es = esz(c.dtype);
  /* Download full and local results, shard the full ones like the inputs were. */
  struct { void *full, *loc; cpattnTensor_t *tf, *tl; size_t nf, nl; } out[4] = {
      {f.o, t->o, &f.to, &t->to, f.no, t->no}, {f.dq, t->dq, &f.tdq, &t->tdq, f.nq, t->nq},
      {f.dk, t->dk, &f.tdk, &t->tdk, f.nk, t->nk}, {f.dv, t->dv, &f.tdv, &t->tdv, f.nv, t->nv}};
  int idx[4] = {0, 2, 3, 4};
  for (int i = 0; i < 4; ++i) {
    void *hf = malloc(out[i].nf * es + 16), *hl = malloc(out[i].nl * es + 16), *he = malloc(out[i].nl * es + 16);
    bench_download(dev, hf, out[i].full, out[i].nf * es);
    bench_download(dev, hl, out[i].loc, out[i].nl * es);
    cpattnTensor_t tf = *out[i].tf, te = *out[i].tl;
    tf.data = hf;
    te.data = he;
    cpattnShardHost(&a->cfg, g_rank, g_world, &tf, &te);
    /* fp32: max-norm against 1e-5; 16-bit: ||err||/||ref|| against 1e-2, with every
     * element within 5e-2 of the largest (so corruption cannot hide in the norm). */
    double mx = bench_rel_err(hl, he, c.dtype, (int64_t)out[i].nl);
    err[idx[i]] = c.dtype == cpattnFloat32 || mx > 5e-2 ? mx : bench_rel_l2(hl, he, c.dtype, (int64_t)out[i].nl);
    free(hf);
    free(hl);
    free(he);
  }
  float *lf = malloc(sizeof(float) * (size_t)f.lse_n + 4), *ll = malloc(sizeof(float) * (size_t)t->lse_n + 4),
        *le = malloc(sizeof(float) * (size_t)t->lse_n + 4);
  bench_download(dev, lf, f.lse, (size_t)f.lse_n * 4);
  bench_download(dev, ll, t->lse, (size_t)t->lse_n * 4);
  cpattnShardLseHost(&a->cfg, g_rank, g_world, lf, le);
  err[1] = bench_rel_err_lse(ll, le, t->lse_n);
  free(lf);
  free(ll);
  free(le);
  tensors_free(dev, &f);
  cpattnPlanDestroy(plan);
  return 0;
}

/* After a timeout or remote error: leave without the collective calls (gather, allreduce,
 * finalize) that a dead or stalled peer would never answer. MPI_Abort rather than exit:
 * it needs no answer from the peers and ends every rank of the job under any launcher
 * (srun, unlike mpirun, leaves the other tasks running when one exits non-zero), so a
 * stalled peer does not keep the job alive. */
static void give_up(void) {
  fprintf(stderr, "cpattn-bench: rank %d: giving up after the error above\n", g_rank);
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 4);
  _exit(4); /* MPI_Abort does not return; this is in case an MPI's does */
}

typedef struct {
  double fwd, bwd, fwd_comp, bwd_comp, fwd_comm, bwd_comm, mem;
} RankResult;

static double hidden_share(double total, double comp, double comm) {
  if (comm <= 0) return 1.0;
  double h = (comp + comm - total) / comm;
  return h < 0 ? 0 : h > 1 ? 1 : h;
}

int main(int argc, char **argv) {
  g_start_s = mono_s();
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world);
  Args a;
  int rc = parse_args(argc, argv, &a);
  if (rc != 0) {
    MPI_Finalize();
    return rc > 0 ? 0 : 2;
  }
  g_progress = a.progress;
  progress("started", NO_IT);
  cpattnConfig_t *c = &a.cfg;
  int cuda = c->executor == cpattnExecutorCuda;
  int local_rank = 0, local_size = 1;
  cpattnMpiLocalRank(MPI_COMM_WORLD, &local_rank, &local_size);
  BenchDev dev;
  int ngpu = cuda ? bench_gpu_count() : 0;
  if (cuda && ngpu == 0) {
    ROOT_PRINTF("cpattn-bench: --executor cuda but no GPU is visible\n");
    MPI_Finalize();
    return 2;
  }
  if (bench_dev_init(&dev, cuda, cuda ? local_rank % ngpu : -1) != 0) {
    fprintf(stderr, "cpattn-bench: rank %d: cannot set up the device\n", g_rank);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  cpattnComm_t comm = NULL, self = NULL;
  cpattnResult_t res = cuda ? cpattnCommInitNcclFromMpi(&comm, MPI_COMM_WORLD, dev.device)
                            : cpattnCommInitMpi(&comm, MPI_COMM_WORLD);
  if (res == cpattnSuccess && a.check)
    res = cuda ? cpattnCommInitNcclFromMpi(&self, MPI_COMM_SELF, dev.device) : cpattnCommInitMpi(&self, MPI_COMM_SELF);
  if (res != cpattnSuccess) {
    fprintf(stderr, "cpattn-bench: rank %d: communicator: %s: %s\n", g_rank, cpattnGetErrorString(res),
            cpattnGetLastError());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  progress("communicator ready", NO_IT);
  cpattnPlan_t plan;
  res = cpattnPlanCreate(&plan, comm, c);
  if (res != cpattnSuccess) {
    /* Every rank gets the same verdict from cpattnPlanCreate; print it once per rank. */
    fprintf(stderr, "cpattn-bench: rank %d: cpattnPlanCreate: %s: %s\n", g_rank, cpattnGetErrorString(res),
            cpattnGetLastError());
    cpattnCommDestroy(comm);
    if (self) cpattnCommDestroy(self);
    MPI_Finalize();
    return 2;
  }
  progress("plan created", NO_IT);
  Tensors t;
  if (tensors_make(&dev, c, plan, g_rank, g_world, a.seed, &t) != 0) {
    fprintf(stderr, "cpattn-bench: rank %d: out of memory for the inputs and workspace\n", g_rank);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }

  if (g_progress) {
    char what[96];
    snprintf(what, sizeof what, "inputs and workspace ready (%.1f GiB in use on this device)", bench_mem_gib(&dev));
    progress(what, NO_IT);
  }
  RankResult r;
  memset(&r, 0, sizeof r);
  int fail = time_runs(&a, comm, plan, &t, &dev, 0, &r.fwd) || time_runs(&a, comm, plan, &t, &dev, 1, &r.bwd);
  if (fail) give_up();
  double err[5] = {0, 0, 0, 0, 0};
  int check_failed = 0;
  if (a.check) {
    progress("checking against single-rank attention", NO_IT);
    check_failed = check(&a, &dev, &t, self, err) != 0;
  }
  /* Compute-only and comm-only runs last: they leave the outputs meaningless. */
  if (a.profile && g_world > 1) {
    Args b = a;
    b.warmup = 1;
    cpattnPlanSetProfile(plan, cpattnProfileComputeOnly);
    fail |= time_runs(&b, comm, plan, &t, &dev, 0, &r.fwd_comp) || time_runs(&b, comm, plan, &t, &dev, 1, &r.bwd_comp);
    cpattnPlanSetProfile(plan, cpattnProfileCommOnly);
    fail |= time_runs(&b, comm, plan, &t, &dev, 0, &r.fwd_comm) || time_runs(&b, comm, plan, &t, &dev, 1, &r.bwd_comm);
    cpattnPlanSetProfile(plan, cpattnProfileNormal);
    if (fail) give_up();
  } else {
    r.fwd_comp = r.fwd;
    r.bwd_comp = r.bwd;
  }
  r.mem = bench_mem_gib(&dev);

  RankResult *all = g_rank == 0 ? malloc(sizeof(RankResult) * (size_t)g_world) : NULL;
  MPI_Gather(&r, (int)(sizeof r / sizeof(double)), MPI_DOUBLE, all, (int)(sizeof r / sizeof(double)), MPI_DOUBLE, 0,
             MPI_COMM_WORLD);
  double gerr[5];
  MPI_Allreduce(err, gerr, 5, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  int any_check_failed;
  MPI_Allreduce(&check_failed, &any_check_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  double tol = c->dtype == cpattnFloat32 ? 1e-5 : 1e-2;
  int check_ok = !any_check_failed;
  for (int i = 0; i < 5; ++i) check_ok &= gerr[i] <= tol; /* NaN and inf fail too */

  if (g_rank == 0) {
    static const char *const sn[] = {"auto", "ring", "a2a", "allgather", "hybrid"};
    static const char *const mn[] = {"none", "causal", "window"};
    static const char *const ln[] = {"bshd", "sbhd", "thd"};
    static const char *const dn[] = {"fp32", "bf16", "fp16"};
    double pairs = bench_visible_pairs(c), dv = c->headDimV ? c->headDimV : c->headDimQK;
    double fwd_flop = 2.0 * (c->headDimQK + dv) * c->numHeadsQ * pairs, bwd_flop = 2.5 * fwd_flop;
    double fwd = 0, bwd = 0, fc = 0, bc = 0, fm = 0, bm = 0, mem = 0;
    for (int i = 0; i < g_world; ++i) { /* the slowest rank sets the pace */
      fwd = fmax(fwd, all[i].fwd); bwd = fmax(bwd, all[i].bwd);
      fc = fmax(fc, all[i].fwd_comp); bc = fmax(bc, all[i].bwd_comp);
      fm = fmax(fm, all[i].fwd_comm); bm = fmax(bm, all[i].bwd_comm);
      mem = fmax(mem, all[i].mem);
    }
    char devname[128];
    bench_dev_name(&dev, devname, sizeof devname);
    double tf_f = fwd_flop / g_world / (fwd * 1e9), tf_b = bwd_flop / g_world / (bwd * 1e9);
    if (a.json) {
      printf("{\"bench\":\"cpattn\",\"version\":\"%d.%d.%d\",\"device\":\"%s\",\"executor\":\"%s\",\"world\":%d,"
             "\"schedule\":\"%s\",\"a2a_group\":%d,\"mask\":\"%s\",\"window\":[%d,%d],\"layout\":\"%s\",\"dtype\":\"%s\","
             "\"batch\":%d,\"seq\":%lld,\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"head_dim_v\":%d,"
             "\"iters\":%d,\"fwd_ms\":%.4f,\"bwd_ms\":%.4f,\"fwd_tflops_per_rank\":%.2f,\"bwd_tflops_per_rank\":%.2f,"
             "\"fwd_compute_ms\":%.4f,\"fwd_comm_ms\":%.4f,\"fwd_hidden\":%.3f,"
             "\"bwd_compute_ms\":%.4f,\"bwd_comm_ms\":%.4f,\"bwd_hidden\":%.3f,\"mem_gib\":%.3f,\"ranks\":[",
             CPATTN_VERSION_MAJOR, CPATTN_VERSION_MINOR, CPATTN_VERSION_PATCH, devname, cuda ? "cuda" : "host",
             g_world, sn[c->schedule], c->a2aGroupSize, mn[c->mask], c->windowLeft, c->windowRight, ln[c->layout],
             dn[c->dtype], c->batch, (long long)c->seqLen, c->numHeadsQ, c->numHeadsKV, c->headDimQK, (int)dv,
             a.iters, fwd, bwd, tf_f, tf_b, fc, fm, hidden_share(fwd, fc, fm), bc, bm, hidden_share(bwd, bc, bm), mem);
      for (int i = 0; i < g_world; ++i)
        printf("%s{\"rank\":%d,\"fwd_ms\":%.4f,\"bwd_ms\":%.4f,\"mem_gib\":%.3f}", i ? "," : "", i, all[i].fwd,
               all[i].bwd, all[i].mem);
      printf("]");
      if (a.check)
        printf(",\"check\":{\"o\":%.3g,\"lse\":%.3g,\"dq\":%.3g,\"dk\":%.3g,\"dv\":%.3g,\"tol\":%g,\"pass\":%s}",
               gerr[0], gerr[1], gerr[2], gerr[3], gerr[4], tol, check_ok ? "true" : "false");
      printf("}\n");
    } else {
      printf("cpattn-bench %d.%d.%d: %d rank(s) on %s, %s executor\n", CPATTN_VERSION_MAJOR, CPATTN_VERSION_MINOR,
             CPATTN_VERSION_PATCH, g_world, devname, cuda ? "cuda" : "host");
      printf("  schedule %s%s, mask %s", sn[c->schedule], c->schedule == cpattnScheduleHybrid ? " (groups)" : "",
             mn[c->mask]);
      if (c->mask == cpattnMaskSlidingWindow) printf(" (%d,%d)", c->windowLeft, c->windowRight);
      printf(", layout %s, %s, batch %d, seq %lld, heads %d/%d, head dim %d\n", ln[c->layout], dn[c->dtype], c->batch,
             (long long)c->seqLen, c->numHeadsQ, c->numHeadsKV, c->headDimQK);
      printf("  %4s %10s %10s %10s %10s %9s\n", "rank", "fwd ms", "bwd ms", "fwd TF/s", "bwd TF/s", "mem GiB");
      for (int i = 0; i < g_world; ++i)
        printf("  %4d %10.3f %10.3f %10.4g %10.4g %9.2f\n", i, all[i].fwd, all[i].bwd, fwd_flop / g_world / (all[i].fwd * 1e9),
               bwd_flop / g_world / (all[i].bwd * 1e9), all[i].mem);
      printf("  %4s %10.3f %10.3f %10.4g %10.4g %9.2f   (slowest rank; TF/s per rank)\n", "all", fwd, bwd, tf_f, tf_b,
             mem);
      if (a.profile && g_world > 1)
        printf("  compute-only fwd %.3f / bwd %.3f ms, comm-only fwd %.3f / bwd %.3f ms, communication hidden: "
               "fwd %.0f%%, bwd %.0f%%\n",
               fc, bc, fm, bm, 100 * hidden_share(fwd, fc, fm), 100 * hidden_share(bwd, bc, bm));
      if (a.check)
        printf("  check vs single-rank attention on the whole sequence: O %.3g LSE %.3g dQ %.3g dK %.3g dV %.3g "
               "(%s, tolerance %g): %s\n",
               gerr[0], gerr[1], gerr[2], gerr[3], gerr[4], c->dtype == cpattnFloat32 ? "max-norm" : "L2",
               tol, check_ok ? "PASS" : "FAIL");
    }
    free(all);
  }
  tensors_free(&dev, &t);
  cpattnPlanDestroy(plan);
  cpattnCommDestroy(comm);
  if (self) cpattnCommDestroy(self);
  bench_dev_fini(&dev);
  free(a.cu);
  MPI_Finalize();
  return fail ? 4 : (a.check && !check_ok) ? 1 : 0;
}
