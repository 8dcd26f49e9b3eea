/*
 * nvtx.c -- see nvtx.h.
 */
#include "nvtx.h"

#include "core.h"

#ifdef CPATTN_HAVE_NVTX
#include <nvtx3/nvToolsExt.h>

static int nvtx_enabled(void) {
  static int enabled = -1; /* a benign race: every thread computes the same value */
  if (enabled < 0) enabled = cpaParamInt(CPA_PARAM_NVTX) != 0;
  return enabled;
}

void cpaNvtxPush(const char *name) {
  if (nvtx_enabled()) nvtxRangePushA(name);
}

void cpaNvtxPop(void) {
  if (nvtx_enabled()) nvtxRangePop();
}
#else
void cpaNvtxPush(const char *name) { (void)name; }
void cpaNvtxPop(void) {}
#endif
