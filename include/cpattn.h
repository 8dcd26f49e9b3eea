/*
 * cpattn.h -- context-parallel attention: the public C API (C99, no CUDA, NCCL or MPI
 * headers needed to include it).
 *
 * cpattn computes exact scaled-dot-product attention, forward and backward, for one long
 * sequence (or a packed batch of them) whose tokens are split across the ranks of a job.
 * Every rank calls the same functions with its own slice ("shard") of Q, K and V; the
 * result on each rank is O, and the softmax log-sum-exp (LSE), for its own query tokens,
 * equal (to rounding) to single-device attention over the whole sequence.
 *
 * Naming: functions and types are cpattnCamelCase, types end in _t, enumerators are
 * cpattnCamelCase too (as in NCCL). Only symbols starting with "cpattn" are exported.
 *
 * The objects, in the order a program meets them:
 *   cpattnConfig_t   plain struct: the problem (layout, sizes, mask, schedule, executor).
 *   cpattnComm_t     a communicator handle. It borrows an ncclComm_t (GPU executor, this
 *                    header) or an MPI communicator (host executor, cpattn_mpi.h).
 *   cpattnPlan_t     made from a communicator and a config, collectively (every rank of
 *                    the communicator calls cpattnPlanCreate with an equal config). All
 *                    validation, cross-rank agreement, scheduling and cuDNN plan building
 *                    happen here; forward and backward only enqueue work.
 *   cpattnTensor_t   non-owning descriptor of a caller's buffer: pointer, dtype, dims and
 *                    strides (in elements).
 *
 * Threading: a plan may be used by one thread at a time. Different plans may be used
 * concurrently from different threads if they do not share a communicator.
 *
 * Errors: every call returns a cpattnResult_t. On failure, cpattnGetLastError() returns
 * a message (thread-local, valid until the next cpattn call on this thread) that names the
 * argument and the rule it broke. cpattnNotSupported means "valid request this build,
 * executor or backend cannot run": a caller may fall back to something else.
 */
#ifndef CPATTN_H_
#define CPATTN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CPATTN_VERSION_MAJOR 0
#define CPATTN_VERSION_MINOR 1
#define CPATTN_VERSION_PATCH 0
/* One integer that orders versions: 100 * (100 * major + minor) + patch. */
#define CPATTN_VERSION_CODE (CPATTN_VERSION_MAJOR * 10000 + CPATTN_VERSION_MINOR * 100 + CPATTN_VERSION_PATCH)

#if defined(_WIN32)
#define CPATTN_API
#elif defined(__GNUC__)
#define CPATTN_API __attribute__((visibility("default")))
#else
#define CPATTN_API
#endif

/* Opaque handle types. The CUDA and NCCL handle types are spelled as the structs they
 * point to, so this header needs neither cuda_runtime.h nor nccl.h: a cudaStream_t or an
 * ncclComm_t converts to these without a cast. */
struct CUstream_st;
struct ncclComm;
typedef struct cpattnComm *cpattnComm_t;
typedef struct cpattnPlan *cpattnPlan_t;

/* ------------------------------------------------------------------------------------ */
/* Status                                                                                */
/* ------------------------------------------------------------------------------------ */

typedef enum {
  cpattnSuccess = 0,
  cpattnInvalidArgument = 1,   /* a config field, descriptor or pointer breaks a rule     */
  cpattnNotSupported = 2,      /* valid, but this build / executor / backend can't run it */
  cpattnInvalidUsage = 3,      /* wrong call order, plan used on another device, ...      */
  cpattnConfigMismatch = 4,    /* ranks passed different configs to cpattnPlanCreate     */
  cpattnWorkspaceTooSmall = 5, /* workspace smaller than cpattnPlanGetWorkspaceSize       */
  cpattnOutOfMemory = 6,       /* host or device allocation failed                        */
  cpattnTimeout = 7,           /* a communication did not complete within the timeout    */
  cpattnRemoteError = 8,       /* another rank failed (or died); this rank stopped too    */
  cpattnSystemError = 9,       /* OS or MPI call failed                                   */
  cpattnCudaError = 10,        /* CUDA runtime call failed                                */
  cpattnCudnnError = 11,       /* cuDNN call failed                                       */
  cpattnNcclError = 12,        /* NCCL call failed                                        */
  cpattnInternalError = 13,    /* a bug in cpattn: please report it with the message      */
  cpattnNumResults = 14
} cpattnResult_t;

/* A constant string for each status ("cpattnInvalidArgument: invalid argument", ...). */
CPATTN_API const char *cpattnGetErrorString(cpattnResult_t result);

/* The detailed message of the last failed cpattn call on this thread ("" if none). The
 * pointer stays valid until the next cpattn call on this thread. */
CPATTN_API const char *cpattnGetLastError(void);

/* Version of the library actually linked, as CPATTN_VERSION_CODE. */
CPATTN_API cpattnResult_t cpattnGetVersion(int *version);

/* ------------------------------------------------------------------------------------ */
/* Enumerations                                                                          */
/* ------------------------------------------------------------------------------------ */

typedef enum {
  cpattnFloat32 = 0,  /* host executor only                                              */
  cpattnBFloat16 = 1, /* both executors (the host computes in fp32, stores 16 bits)      */
  cpattnFloat16 = 2   /* CUDA executor only                                             */
} cpattnDataType_t;

/* Memory layout of Q, K, V, O and their gradients. Dims and strides of a cpattnTensor_t
 * are always given in the layout's own order:
 *   BSHD: (batch, seq, heads, dim)     -- 4 dims
 *   SBHD: (seq, batch, heads, dim)     -- 4 dims
 *   THD:  (tokens, heads, dim)         -- 3 dims; sequences packed back to back, described
 *                                         by cuSeqlens (cumulative lengths, int32, batch+1)
 * The innermost (dim) stride must be 1; other strides are free (interleaved QKV works). */
typedef enum { cpattnLayoutBSHD = 0, cpattnLayoutSBHD = 1, cpattnLayoutTHD = 2 } cpattnLayout_t;

/* Which keys a query may see; always evaluated on global token positions within the same
 * sequence (a key never sees across a THD sequence boundary).
 *   None:          every key of the sequence.
 *   Causal:        keys at position <= the query's position.
 *   SlidingWindow: keys at position in [q - windowLeft, q + windowRight]; windowLeft or
 *                  windowRight = -1 means unbounded on that side, so (-1, 0) is causal and
 *                  (W, 0) is the causal sliding window of Mistral-style models. */
typedef enum { cpattnMaskNone = 0, cpattnMaskCausal = 1, cpattnMaskSlidingWindow = 2 } cpattnMask_t;

/* How the ranks share the work.
 *   Ring:      pass-KV ring; K/V slices travel rank to rank while the current one is used.
 *   AllToAll:  Ulysses; an all-to-all trades "all heads, S/P tokens" for "H/P heads, all
 *              tokens". Needs numHeadsQ % P == 0 and numHeadsKV % P == 0 or P % numHeadsKV
 *              == 0 (KV heads are then replicated, not rejected).
 *   AllGather: gather all of K/V once, then local attention; simple and good with GQA.
 *   Hybrid:    all-to-all inside groups of a2aGroupSize consecutive ranks (one node, NVLink),
 *              ring across the groups.
 *   Auto:      Ring (a cost model may choose otherwise in later versions). */
typedef enum {
  cpattnScheduleAuto = 0,
  cpattnScheduleRing = 1,
  cpattnScheduleAllToAll = 2,
  cpattnScheduleAllGather = 3,
  cpattnScheduleHybrid = 4
} cpattnSchedule_t;

/* Which global tokens a rank holds (see cpattnGetLocalPositions).
 *   Zigzag:     each sequence is cut into 2P chunks; rank r holds chunks r and 2P-1-r, so
 *               every rank does the same causal work.
 *   Contiguous: each sequence is cut into P chunks; rank r holds chunk r.
 *   Auto:       Zigzag for causal masks, Contiguous otherwise.
 * Chunk i of a sequence of length L is [floor(i*L/n), floor((i+1)*L/n)) for n chunks, so
 * no length has to divide by anything: chunks differ by at most one token, and may be
 * empty when L < n. */
typedef enum { cpattnBalanceAuto = 0, cpattnBalanceZigzag = 1, cpattnBalanceContiguous = 2 } cpattnBalance_t;

/* Where the work runs.
 *   Host: CPU reference kernels and an MPI transport (cpattn_mpi.h). fp32 or bf16 data in
 *         host memory. Slow; it exists for testing every schedule without a GPU.
 *   Cuda: cuDNN fused attention per chunk, CUDA kernels and NCCL. bf16 or fp16 data in
 *         device memory of the communicator's device.
 *   Auto: the communicator's kind (an NCCL communicator means Cuda). */
typedef enum { cpattnExecutorAuto = 0, cpattnExecutorHost = 1, cpattnExecutorCuda = 2 } cpattnExecutor_t;

/* ------------------------------------------------------------------------------------ */
/* Configuration                                                                         */
/* ------------------------------------------------------------------------------------ */

/* The problem, identical on every rank (checked collectively by cpattnPlanCreate).
 * Start from CPATTN_CONFIG_INITIALIZER and set the fields you need; `size` and `version`
 * let later versions grow the struct without breaking old callers. */
typedef struct {
  size_t size;      /* sizeof(cpattnConfig_t), set by the initializer                  */
  int version;      /* CPATTN_VERSION_CODE the caller was compiled with                */
  cpattnLayout_t layout;
  cpattnDataType_t dtype;
  int batch;        /* BSHD/SBHD: sequences in the batch. THD: sequences packed         */
  int numHeadsQ;    /* query heads; a multiple of numHeadsKV (MHA, GQA, MQA)            */
  int numHeadsKV;
  int headDimQK;    /* head dim of Q and K: a multiple of 8, at most 256                */
  int headDimV;     /* head dim of V and O; 0 means headDimQK                           */
  int64_t seqLen;   /* BSHD/SBHD: global tokens of each sequence. THD: total tokens of
                     * the packed batch (must equal cuSeqlens[batch])                   */
  const int32_t *cuSeqlens; /* THD only: host array of batch+1 cumulative lengths,
                             * cuSeqlens[0] = 0, non-decreasing (empty sequences allowed).
                             * Copied by cpattnPlanCreate; NULL for BSHD/SBHD.          */
  cpattnMask_t mask;
  int windowLeft;   /* SlidingWindow only; -1 = unbounded                               */
  int windowRight;  /* SlidingWindow only; -1 = unbounded                               */
  float softmaxScale; /* 0 means 1/sqrt(headDimQK)                                      */
  cpattnSchedule_t schedule;
  int a2aGroupSize; /* Hybrid only: ranks per all-to-all group; divides the world size  */
  cpattnBalance_t balance;
  cpattnExecutor_t executor;
  int deterministic; /* 1: backward is bit-identical from run to run (cuDNN's
                      * deterministic backward, fixed summation order). Costs memory:
                      * cuDNN's deterministic workspace grows with s_q * s_kv.          */
  int timeoutMs;    /* bound on every communication wait; 0 = CPATTN_TIMEOUT (default
                     * 300000 ms); -1 = wait forever                                    */
} cpattnConfig_t;

#define CPATTN_CONFIG_INITIALIZER                                                                  \
  {                                                                                                \
    sizeof(cpattnConfig_t), CPATTN_VERSION_CODE, cpattnLayoutBSHD, cpattnBFloat16, 1, 0, 0, 0, 0, 0, \
        NULL, cpattnMaskNone, -1, -1, 0.0f, cpattnScheduleAuto, 0, cpattnBalanceAuto,               \
        cpattnExecutorAuto, 0, 0                                                                   \
  }

/* Checks every field of a config without a communicator (world size unknown: the
 * divisibility rules that need it are checked by cpattnPlanCreate). */
CPATTN_API cpattnResult_t cpattnConfigValidate(const cpattnConfig_t *config);

/* ------------------------------------------------------------------------------------ */
/* Tensors                                                                               */
/* ------------------------------------------------------------------------------------ */

/* Non-owning view of a caller's buffer. dims and strides are in elements, in the order of
 * the layout (see cpattnLayout_t); ndim is 4 for BSHD/SBHD, 3 for THD. Strides may be any
 * non-negative values that keep distinct elements apart (no overlap), with the innermost
 * stride 1. For the CUDA executor, data must be 16-byte aligned and so must every head
 * row (strides other than the innermost multiples of 8 elements). */
typedef struct {
  void *data;
  cpattnDataType_t dtype;
  int ndim;
  int64_t dims[4];
  int64_t strides[4];
} cpattnTensor_t;

/* Fills *t as a packed (contiguous) tensor of the given layout. For THD, batch is ignored
 * and seq is the token count. */
CPATTN_API cpattnResult_t cpattnTensorInit(cpattnTensor_t *t, void *data, cpattnDataType_t dtype,
                                           cpattnLayout_t layout, int64_t batch, int64_t seq,
                                           int64_t heads, int64_t dim);

/* The LSE is not a cpattnTensor_t: it is always fp32, packed, in one fixed layout:
 *   BSHD / SBHD: [batch][numHeadsQ][localSeq]    (as PyTorch's SDPA returns it)
 *   THD:         [localTokens][numHeadsQ]        (token-major, as cuDNN keeps it)
 * A query that sees no key (possible with sliding windows or empty chunks) has lse = -inf
 * and o = 0, never NaN. */

/* ------------------------------------------------------------------------------------ */
/* Sharding helpers (need no communicator)                                               */
/* ------------------------------------------------------------------------------------ */

/* Number of tokens rank `rank` of `worldSize` holds: for BSHD/SBHD the local sequence
 * length (the same for every sequence of the batch), for THD the local token count. */
CPATTN_API cpattnResult_t cpattnGetLocalTokenCount(const cpattnConfig_t *config, int rank, int worldSize,
                                                   int64_t *count);

/* For each local token, in local order: its position inside its own sequence (what RoPE
 * needs) and, if seqIndex is not NULL, the index of its sequence (THD; 0 for BSHD). Both
 * arrays hold cpattnGetLocalTokenCount entries. */
CPATTN_API cpattnResult_t cpattnGetLocalPositions(const cpattnConfig_t *config, int rank, int worldSize,
                                                  int64_t *position, int32_t *seqIndex);

/* Host-memory copies between a whole-sequence tensor and one rank's shard, for Q, K, V, O
 * and gradients (heads and dim as given by the descriptors). The full tensor has
 * seqLen tokens per sequence (THD: config->seqLen tokens); the local one has
 * cpattnGetLocalTokenCount. Shard copies this rank's rows out of `full`; Gather writes
 * them back into their places in `full` (call it on every rank's shard to rebuild it).
 * The LSE variants take the fixed LSE layout above (full: seqLen, local: local count). */
CPATTN_API cpattnResult_t cpattnShardHost(const cpattnConfig_t *config, int rank, int worldSize,
                                          const cpattnTensor_t *full, cpattnTensor_t *local);
CPATTN_API cpattnResult_t cpattnGatherHost(const cpattnConfig_t *config, int rank, int worldSize,
                                           const cpattnTensor_t *local, cpattnTensor_t *full);
CPATTN_API cpattnResult_t cpattnShardLseHost(const cpattnConfig_t *config, int rank, int worldSize,
                                             const float *fullLse, float *localLse);
CPATTN_API cpattnResult_t cpattnGatherLseHost(const cpattnConfig_t *config, int rank, int worldSize,
                                              const float *localLse, float *fullLse);

/* ------------------------------------------------------------------------------------ */
/* Communicators                                                                         */
/* ------------------------------------------------------------------------------------ */

/* Borrows an NCCL communicator (it is not destroyed by cpattnCommDestroy) for the CUDA
 * executor. cudaDevice is the device the communicator was created on; plans made from
 * this communicator must be used with that device current. Not collective. Issue no
 * other NCCL work on the same communicator concurrently with a cpattn call (NCCL's own
 * rule). Communication waits are bounded by timeoutMs only if the communicator was
 * created non-blocking (ncclConfig_t.blocking = 0); otherwise NCCL's own watchdog rules.
 * cpattnCommInitNcclFromMpi (cpattn_mpi.h) makes one that is. */
CPATTN_API cpattnResult_t cpattnCommInitNccl(cpattnComm_t *comm, struct ncclComm *nccl, int cudaDevice);

/* As cpattnCommInitNccl, but the NCCL communicator is handed over: cpattnCommDestroy
 * destroys it (or aborts it after a timeout). nonBlocking = 1 says it was created with
 * ncclConfig_t.blocking = 0, which lets cpattn bound its waits. */
CPATTN_API cpattnResult_t cpattnCommInitNcclOwned(cpattnComm_t *comm, struct ncclComm *nccl, int cudaDevice,
                                                  int nonBlocking);

/* For programs that have neither an NCCL communicator nor MPI (a Python binding that rides
 * on torch.distributed, say): one process fills `id` (bytes >= 128, NCCL's unique id) with
 * cpattnGetNcclUniqueId and hands it to the others by any means; then every process calls
 * cpattnCommInitNcclRank with the same id. The communicator is created non-blocking and
 * owned by cpattn (destroyed, or aborted after a timeout, by cpattnCommDestroy). The
 * second call is collective over the nranks processes. */
CPATTN_API cpattnResult_t cpattnGetNcclUniqueId(void *id, size_t bytes);
CPATTN_API cpattnResult_t cpattnCommInitNcclRank(cpattnComm_t *comm, int nranks, int rank, const void *id,
                                                 int cudaDevice);

/* Destroys the handle. Every plan made from it must be destroyed first. Does not destroy
 * a borrowed NCCL or MPI communicator. */
CPATTN_API cpattnResult_t cpattnCommDestroy(cpattnComm_t comm);

CPATTN_API cpattnResult_t cpattnCommGetRank(cpattnComm_t comm, int *rank);
CPATTN_API cpattnResult_t cpattnCommGetSize(cpattnComm_t comm, int *size);

/* Waits on the host, bounded, until the work enqueued on `stream` is done (a cpattn call's
 * included). cpattnForward/Backward on the CUDA executor only enqueue work: a peer that
 * stalled or died shows up later, as NCCL kernels that never finish, and a plain
 * cudaStreamSynchronize would hang on them. This polls the stream and the NCCL
 * communicator's asynchronous error instead, up to timeoutMs (0: CPATTN_TIMEOUT or its
 * default; -1: no bound), and returns:
 *   cpattnSuccess      the stream is idle;
 *   cpattnRemoteError  NCCL reported an error (a peer failed);
 *   cpattnTimeout      the bound passed. A communicator cpattn owns (cpattnCommInitNcclOwned,
 *                      cpattnCommInitNcclRank, cpattnCommInitNcclFromMpi) is aborted, which
 *                      ends its kernels; a borrowed one (cpattnCommInitNccl) is left to its
 *                      owner to abort (ncclCommAbort), since cpattn cannot know who else
 *                      uses it;
 *   cpattnCudaError    the stream failed.
 * After a Timeout or RemoteError the communicator is unusable: destroy its plans and it.
 * Host executor communicators: returns cpattnSuccess at once (their calls return only
 * when done, with their own bound). A custom CUDA transport (cpattn_transport.h) has no
 * hook for this: cpattnNotSupported. */
CPATTN_API cpattnResult_t cpattnCommSynchronize(cpattnComm_t comm, struct CUstream_st *stream, int64_t timeoutMs);

/* ------------------------------------------------------------------------------------ */
/* Plans                                                                                 */
/* ------------------------------------------------------------------------------------ */

/* Collective over the communicator. Validates the config (returning the first rule it
 * breaks), checks that every rank passed the same config (every rank then returns
 * cpattnConfigMismatch, naming the first field that differs), computes this rank's
 * schedule, and for the CUDA executor builds and caches every cuDNN plan and uploads the
 * schedule's metadata (the only device allocation a plan makes). May synchronize. */
CPATTN_API cpattnResult_t cpattnPlanCreate(cpattnPlan_t *plan, cpattnComm_t comm, const cpattnConfig_t *config);

/* Destroys a plan. The caller must make sure no forward or backward enqueued with it is
 * still running (synchronize the stream first). */
CPATTN_API cpattnResult_t cpattnPlanDestroy(cpattnPlan_t plan);

/* Bytes of workspace that cpattnForward and cpattnBackward need (one size covers both).
 * Host memory for the host executor, device memory for the CUDA executor; 256-byte
 * alignment is enough. The workspace may be reused between calls on the same stream. */
CPATTN_API cpattnResult_t cpattnPlanGetWorkspaceSize(cpattnPlan_t plan, size_t *bytes);

/* This rank's local token count (as cpattnGetLocalTokenCount). */
CPATTN_API cpattnResult_t cpattnPlanGetLocalTokenCount(cpattnPlan_t plan, int64_t *count);

/* A human-readable summary of the plan (schedule, steps, chunking, workspace, cuDNN
 * plans), written into buf (truncated to len bytes, always terminated). */
CPATTN_API cpattnResult_t cpattnPlanDescribe(cpattnPlan_t plan, char *buf, size_t len);

/* Benchmarking aid: what cpattnForward/cpattnBackward run. ComputeOnly skips every
 * exchange (the attention runs on stale K/V blocks: results are wrong, timing is that of
 * the compute alone); CommOnly skips the attention calls (results wrong, timing is that
 * of the data movement alone). cpattn-bench times all three to report how much of the
 * communication hides behind compute. Normal is the default; every rank must use the
 * same mode. */
typedef enum { cpattnProfileNormal = 0, cpattnProfileComputeOnly = 1, cpattnProfileCommOnly = 2 } cpattnProfile_t;
CPATTN_API cpattnResult_t cpattnPlanSetProfile(cpattnPlan_t plan, cpattnProfile_t mode);

/* ------------------------------------------------------------------------------------ */
/* Forward and backward                                                                  */
/* ------------------------------------------------------------------------------------ */

/* o = softmax(scale * q k^T + mask) v for this rank's query tokens, and lse (layout above).
 * q: (.., numHeadsQ, headDimQK), k: (.., numHeadsKV, headDimQK), v: (.., numHeadsKV,
 * headDimV), o: (.., numHeadsQ, headDimV), each with this rank's local token count.
 * q, k and v are read only; o and lse are written; none may alias another.
 * CUDA executor: all pointers are device memory, the work is enqueued on `stream`
 * (NULL = the legacy default stream) and the call returns without synchronizing; it does
 * no allocation and no host synchronization, so it can be captured in a CUDA graph.
 * Host executor: host memory, stream ignored, the call returns when done.
 * Collective: every rank of the plan's communicator must call it. */
CPATTN_API cpattnResult_t cpattnForward(cpattnPlan_t plan, const cpattnTensor_t *q, const cpattnTensor_t *k,
                                        const cpattnTensor_t *v, const cpattnTensor_t *o, float *lse,
                                        void *workspace, size_t workspaceBytes, struct CUstream_st *stream);

/* Gradients of the forward above: dq, dk, dv (shapes of q, k, v) from do_ (shape of o),
 * given the forward's q, k, v, o and lse. dq, dk and dv are overwritten (not
 * accumulated). Same memory, stream and collective rules as cpattnForward. */
CPATTN_API cpattnResult_t cpattnBackward(cpattnPlan_t plan, const cpattnTensor_t *q, const cpattnTensor_t *k,
                                         const cpattnTensor_t *v, const cpattnTensor_t *o,
                                         const cpattnTensor_t *do_, const float *lse, const cpattnTensor_t *dq,
                                         const cpattnTensor_t *dk, const cpattnTensor_t *dv, void *workspace,
                                         size_t workspaceBytes, struct CUstream_st *stream);

#ifdef __cplusplus
}
#endif

#endif /* CPATTN_H_ */
