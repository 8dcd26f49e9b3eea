/*
 * error.c -- status strings and the thread-local last-error message.
 */
#include <stdarg.h>
#include <stdio.h>

#include "core.h"
#include "cpattn_transport.h"

/* One message per thread: a caller reads it right after the failing call, and threads
 * using different plans must not see each other's errors. */
static _Thread_local char tls_message[1024];

static const char *const kResultNames[cpattnNumResults] = {
    "cpattnSuccess: no error",
    "cpattnInvalidArgument: invalid argument",
    "cpattnNotSupported: not supported by this build, executor or backend",
    "cpattnInvalidUsage: invalid usage",
    "cpattnConfigMismatch: ranks passed different configs",
    "cpattnWorkspaceTooSmall: workspace too small",
    "cpattnOutOfMemory: out of memory",
    "cpattnTimeout: communication timed out",
    "cpattnRemoteError: another rank failed",
    "cpattnSystemError: system or MPI error",
    "cpattnCudaError: CUDA error",
    "cpattnCudnnError: cuDNN error",
    "cpattnNcclError: NCCL error",
    "cpattnInternalError: internal error",
};

CPATTN_API const char *cpattnGetErrorString(cpattnResult_t result) {
  if ((int)result < 0 || result >= cpattnNumResults) return "cpattn: unknown result code";
  return kResultNames[result];
}

CPATTN_API const char *cpattnGetLastError(void) { return tls_message; }

CPATTN_API cpattnResult_t cpattnGetVersion(int *version) {
  cpaClearError();
  CPA_REQUIRE(version != NULL, "version must not be NULL");
  *version = CPATTN_VERSION_CODE;
  return cpattnSuccess;
}

/* Rejected arguments are the caller's to handle (a NotSupported may be a probe before a
 * fallback), so they log at INFO; faults that a caller did not provoke log at WARN. */
static void log_failure(cpattnResult_t res) {
  cpaLogLevel level = res == cpattnInvalidArgument || res == cpattnNotSupported || res == cpattnInvalidUsage ||
                              res == cpattnWorkspaceTooSmall || res == cpattnConfigMismatch
                          ? CPA_LOG_INFO
                          : CPA_LOG_WARN;
  if (cpaLogLevelGet() >= level) cpaLog(level, __FILE__, __LINE__, "%s: %s", cpattnGetErrorString(res), tls_message);
}

void cpaClearError(void) { tls_message[0] = '\0'; }

cpattnResult_t cpaError(cpattnResult_t res, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tls_message, sizeof tls_message, fmt, ap);
  va_end(ap);
  log_failure(res);
  return res;
}

const char *cpaDtypeName(cpattnDataType_t t) {
  switch (t) {
    case cpattnFloat32: return "fp32";
    case cpattnBFloat16: return "bf16";
    case cpattnFloat16: return "fp16";
  }
  return "?";
}

CPATTN_API cpattnResult_t cpattnTransportSetError(cpattnResult_t result, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tls_message, sizeof tls_message, fmt, ap);
  va_end(ap);
  log_failure(result);
  return result;
}
