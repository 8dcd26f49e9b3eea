/*
 * params.c -- every environment variable cpattn reads, declared in one table with its
 * default and a line of help (the README's table is generated from the same words).
 * Values are read once, on first use, and never change afterwards.
 */
#include <pthread.h>
#include <stdlib.h>

#include "core.h"

typedef struct {
  const char *name;
  const char *dflt;
  const char *help;
} cpaParamDecl;

static const cpaParamDecl kParams[CPA_PARAM_COUNT] = {
    [CPA_PARAM_DEBUG] = {"CPATTN_DEBUG", "WARN",
                         "log level: NONE, WARN, INFO (prints each plan once) or TRACE (every step)"},
    [CPA_PARAM_DEBUG_FILE] = {"CPATTN_DEBUG_FILE", "",
                              "write the log to this file instead of stderr; %h becomes the host name, "
                              "%p the pid"},
    [CPA_PARAM_TIMEOUT_MS] = {"CPATTN_TIMEOUT", "300000",
                              "milliseconds a communication may wait before the call fails with "
                              "cpattnTimeout (used when cpattnConfig_t.timeoutMs is 0)"},
    [CPA_PARAM_NVTX] = {"CPATTN_NVTX", "1", "1: NVTX ranges on public calls and schedule steps; 0: none"},
    [CPA_PARAM_LIGHT_ACC] = {"CPATTN_LIGHT_ACC", "1",
                             "1: where no query row gets more than two partial results in the output "
                             "dtype (two ranks), O and dQ hold the first one themselves, with no fp32 "
                             "accumulator (the same result in less memory); 0: always the accumulator"},
    [CPA_PARAM_PROFILE_CALLS] = {"CPATTN_PROFILE_CALLS", "0",
                                 "1: the CUDA executor times every op of each forward and backward with CUDA "
                                 "events and prints a per-call report to stderr (synchronizes; diagnostic only)"},
};

static pthread_once_t params_once = PTHREAD_ONCE_INIT;
static const char *param_values[CPA_PARAM_COUNT];

static void params_read(void) {
  for (int i = 0; i < CPA_PARAM_COUNT; ++i) {
    const char *v = getenv(kParams[i].name);
    param_values[i] = (v && v[0]) ? v : kParams[i].dflt;
  }
}

const char *cpaParamString(cpaParamId id) {
  pthread_once(&params_once, params_read);
  return param_values[id];
}

int64_t cpaParamInt(cpaParamId id) {
  const char *s = cpaParamString(id);
  char *end = NULL;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end != '\0') { /* a bad value falls back to the default, with a warning */
    CPA_WARN("%s=\"%s\" is not an integer; using the default %s", kParams[id].name, s, kParams[id].dflt);
    v = strtoll(kParams[id].dflt, NULL, 10);
  }
  return (int64_t)v;
}

void cpaParamInfo(int i, const char **name, const char **dflt, const char **help) {
  *name = kParams[i].name;
  *dflt = kParams[i].dflt;
  *help = kParams[i].help;
}
