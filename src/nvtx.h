/*
 * nvtx.h -- NVTX ranges on public calls and schedule steps, so that an Nsight Systems
 * timeline shows where attention time goes (compute and communication apart). Built on
 * NVTX 3, which is header-only and costs a branch when no profiler is attached; compiled
 * out when the headers are missing, switched off at run time by CPATTN_NVTX=0.
 */
#ifndef CPATTN_SRC_NVTX_H_
#define CPATTN_SRC_NVTX_H_

void cpaNvtxPush(const char *name);
void cpaNvtxPop(void);

#endif /* CPATTN_SRC_NVTX_H_ */
