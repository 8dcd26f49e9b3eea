/*
 * nvtx_probe.c -- an NVTX injection library that writes down the ranges a program pushes
 * and pops, so a test can check cpattn's NVTX ranges without Nsight Systems (which the
 * lent GPU machines lack) and without a GPU.
 *
 * NVTX loads the library named by NVTX_INJECTION64_PATH at the first NVTX call and calls
 * its InitializeInjectionNvtx2, which may replace entries of NVTX's function tables.
 * We take RangePushA and RangePop of the core module. Each process appends
 * "push NAME" / "pop" lines to NVTX_PROBE_FILE with ".<pid>" added.
 */
#define _POSIX_C_SOURCE 200809L
#include <nvtx3/nvToolsExt.h> /* also declares the injection types (nvtxDetail/nvtxTypes.h) */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static FILE *g_out;

static int probe_push(const char *message) {
  if (g_out) fprintf(g_out, "push %s\n", message ? message : "(null)");
  return 0;
}

static int probe_pop(void) {
  if (g_out) fprintf(g_out, "pop\n");
  return 0;
}

static void probe_close(void) {
  if (g_out) fclose(g_out);
}

__attribute__((visibility("default"))) int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_table) {
  const char *path = getenv("NVTX_PROBE_FILE");
  if (!path) return 0; /* 0: NVTX keeps its no-op implementation */
  char name[4096];
  snprintf(name, sizeof name, "%s.%ld", path, (long)getpid());
  g_out = fopen(name, "w");
  if (!g_out) return 0;
  atexit(probe_close);
  const NvtxExportTableCallbacks *cb = (const NvtxExportTableCallbacks *)get_table(NVTX_ETID_CALLBACKS);
  NvtxFunctionTable table = NULL;
  unsigned int size = 0;
  if (!cb || !cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, &table, &size) || !table ||
      size <= NVTX_CBID_CORE_RangePop)
    return 0;
  *table[NVTX_CBID_CORE_RangePushA] = (NvtxFunctionPointer)probe_push;
  *table[NVTX_CBID_CORE_RangePop] = (NvtxFunctionPointer)probe_pop;
  return 1;
}
