/*
 * core.h -- what every cpattn source file shares: the error-reporting contract, logging
 * and environment parameters. Internal (never installed); internal symbols use the
 * prefix "cpa" and are hidden from the shared library's exports.
 */
#ifndef CPATTN_SRC_CORE_H_
#define CPATTN_SRC_CORE_H_

#include <stddef.h>
#include <stdint.h>

#include "cpattn.h"

#if defined(__GNUC__)
#define CPA_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define CPA_PRINTF(fmt_index, first_arg)
#endif

/* ---------------------------------------------------------------------------------- */
/* Errors                                                                              */
/* ---------------------------------------------------------------------------------- */

/* Records `fmt` as this thread's last-error message (prefixed by nothing: the message
 * itself must name the argument and the rule, e.g. "config->numHeadsKV = 3 does not
 * divide config->numHeadsQ = 8"), logs it at WARN, and returns res, so that
 *     return cpaError(cpattnInvalidArgument, "...", ...);
 * is the one way a failure leaves a function. */
cpattnResult_t cpaError(cpattnResult_t res, const char *fmt, ...) CPA_PRINTF(2, 3);

/* Clears the thread's message; called on entry of every public function. */
void cpaClearError(void);

/* Propagate a failure that already set its message. */
#define CPA_CHECK(call)                          \
  do {                                           \
    cpattnResult_t cpa_res_ = (call);            \
    if (cpa_res_ != cpattnSuccess) return cpa_res_; \
  } while (0)

/* Same, for functions that must free what they made: sets `res` and jumps to `label`,
 * where resources are released in reverse order. */
#define CPA_CHECK_GOTO(call, res, label) \
  do {                                   \
    (res) = (call);                      \
    if ((res) != cpattnSuccess) goto label; \
  } while (0)

/* Argument checks that name the argument: CPA_REQUIRE(cond, "config->batch = %d must be
 * >= 1", cfg->batch) returns cpattnInvalidArgument with that message when cond fails. */
#define CPA_REQUIRE(cond, ...)                                         \
  do {                                                                 \
    if (!(cond)) return cpaError(cpattnInvalidArgument, __VA_ARGS__);  \
  } while (0)

/* ---------------------------------------------------------------------------------- */
/* Logging (CPATTN_DEBUG=WARN|INFO|TRACE, CPATTN_DEBUG_FILE)                          */
/* ---------------------------------------------------------------------------------- */

typedef enum { CPA_LOG_NONE = 0, CPA_LOG_WARN = 1, CPA_LOG_INFO = 2, CPA_LOG_TRACE = 3 } cpaLogLevel;

/* Every line is prefixed "host:pid:rank [device] cpattn LEVEL file:line". The rank and
 * device are this thread's current values (cpaLogSetRank), -1 until known. */
void cpaLog(cpaLogLevel level, const char *file, int line, const char *fmt, ...) CPA_PRINTF(4, 5);
cpaLogLevel cpaLogLevelGet(void);
void cpaLogSetRank(int rank, int device);

#define CPA_WARN(...) cpaLog(CPA_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define CPA_INFO(...)                                                           \
  do {                                                                          \
    if (cpaLogLevelGet() >= CPA_LOG_INFO) cpaLog(CPA_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
#define CPA_TRACE(...)                                                           \
  do {                                                                           \
    if (cpaLogLevelGet() >= CPA_LOG_TRACE) cpaLog(CPA_LOG_TRACE, __FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

/* ---------------------------------------------------------------------------------- */
/* Environment parameters: declared once, in params.c, each with a default and help    */
/* ---------------------------------------------------------------------------------- */

typedef enum {
  CPA_PARAM_DEBUG = 0,      /* CPATTN_DEBUG                                          */
  CPA_PARAM_DEBUG_FILE,     /* CPATTN_DEBUG_FILE                                     */
  CPA_PARAM_TIMEOUT_MS,     /* CPATTN_TIMEOUT                                        */
  CPA_PARAM_NVTX,           /* CPATTN_NVTX                                           */
  CPA_PARAM_LIGHT_ACC,      /* CPATTN_LIGHT_ACC                                      */
  CPA_PARAM_PROFILE_CALLS,  /* CPATTN_PROFILE_CALLS                                  */
  CPA_PARAM_COUNT
} cpaParamId;

/* The value of a parameter (read from the environment once, thread-safe). */
const char *cpaParamString(cpaParamId id);
int64_t cpaParamInt(cpaParamId id);

/* Name, default and help line of parameter i (0 <= i < CPA_PARAM_COUNT); for --help
 * texts and the README. */
void cpaParamInfo(int i, const char **name, const char **dflt, const char **help);

/* ---------------------------------------------------------------------------------- */
/* Small helpers                                                                       */
/* ---------------------------------------------------------------------------------- */

static inline size_t cpaAlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }
static inline int64_t cpaMin64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t cpaMax64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline size_t cpaDtypeSize(cpattnDataType_t t) { return t == cpattnFloat32 ? 4 : 2; }
const char *cpaDtypeName(cpattnDataType_t t);

#endif /* CPATTN_SRC_CORE_H_ */
