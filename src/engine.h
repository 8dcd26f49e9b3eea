/*
 * engine.h -- walks a schedule (schedule.h) and drives an executor (executor.h) and a
 * transport (cpattn_transport.h). One engine for both executors.
 *
 * Plan time: cpaEngineInit lays out the workspace and then runs forward and backward
 * once as a *dry run*: every view and call is computed exactly as in a real call (with
 * packed stand-in user tensors and a fake workspace base), no data moves, and the
 * executor records what each call needs (the CUDA one builds its cuDNN plans there). So
 * the plans built are, by construction, the ones the real calls use.
 */
#ifndef CPATTN_SRC_ENGINE_H_
#define CPATTN_SRC_ENGINE_H_

#include <stddef.h>

#include "cpattn_transport.h"
#include "executor.h"
#include "problem.h"
#include "schedule.h"

/* Workspace regions (offsets from the workspace base, 256-byte aligned). */
typedef enum {
  /* forward */
  CPA_WS_KV0 = 0, CPA_WS_KV1, /* ring K/V blocks (K then V)                            */
  CPA_WS_KV_SEND,             /* all-gather: this rank's packed K/V                     */
  CPA_WS_OPART, CPA_WS_STATS, CPA_WS_ACC_O, CPA_WS_ACC_LSE,
  CPA_WS_A2A_SEND, CPA_WS_A2A_RECV, /* staging of the all-to-all (either direction)     */
  CPA_WS_QM, CPA_WS_KM, CPA_WS_VM,  /* member (post all-to-all) inputs                 */
  CPA_WS_OM, CPA_WS_DOM, CPA_WS_LSEM,
  /* backward */
  CPA_WS_DKV0, CPA_WS_DKV1,   /* travelling fp32 dK/dV accumulators (dK then dV)        */
  CPA_WS_DQ_ACC, CPA_WS_DQ_PART, CPA_WS_DK_PART, CPA_WS_DV_PART,
  CPA_WS_DKV_STAGE,           /* fp32 sums of replicated / reduce-scattered dK, dV      */
  CPA_WS_DKV_WIRE,            /* the last ring hop of dK/dV, rounded to the io dtype    */
  CPA_WS_EXEC,                /* the executor's own                                     */
  CPA_WS_COUNT
} cpaWsRegion;

typedef struct cpaEngine {
  cpaProblem pb;
  cpaSchedule sched;
  cpaExecutor ex;
  cpattnTransport_t *tr;
  size_t ws_off_fwd[CPA_WS_COUNT], ws_off_bwd[CPA_WS_COUNT];
  size_t ws_bytes;
  size_t part_bytes; /* element size of the executor's partial outputs */
  int dry;           /* inside the plan-time dry run                    */
  int profile;       /* cpattnProfile_t: skip exchanges or compute       */
  int tag;           /* next exchange tag                               */
  cpaRowMap perm, gather;
  cpaTouch touch;    /* first/last call over each row (schedule.h)      */
  int light_acc;     /* O and dQ are their own accumulators (engine.c)  */
} cpaEngine;

cpattnResult_t cpaEngineInit(cpaEngine *e, cpattnComm_t comm, cpattnTransport_t *tr, const cpattnConfig_t *config);
void cpaEngineFree(cpaEngine *e);

cpattnResult_t cpaEngineForward(cpaEngine *e, const cpattnTensor_t *q, const cpattnTensor_t *k,
                                const cpattnTensor_t *v, const cpattnTensor_t *o, float *lse, void *ws,
                                size_t ws_bytes, struct CUstream_st *stream);
cpattnResult_t cpaEngineBackward(cpaEngine *e, const cpattnTensor_t *q, const cpattnTensor_t *k,
                                 const cpattnTensor_t *v, const cpattnTensor_t *o, const cpattnTensor_t *dout,
                                 const float *lse, const cpattnTensor_t *dq, const cpattnTensor_t *dk,
                                 const cpattnTensor_t *dv, void *ws, size_t ws_bytes, struct CUstream_st *stream);

/* Validates a user tensor against the plan: name is how the message calls it ("q"),
 * heads/dim what it must hold. */
cpattnResult_t cpaCheckTensor(const cpaProblem *pb, const char *name, const cpattnTensor_t *t, int64_t tokens,
                              int heads, int dim);

#endif /* CPATTN_SRC_ENGINE_H_ */
