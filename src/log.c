/*
 * log.c -- NCCL_DEBUG-style logging: one line per event, prefixed with the host, pid,
 * rank and device so that the merged output of a multi-node job can be read.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core.h"

static pthread_once_t log_once = PTHREAD_ONCE_INIT;
static cpaLogLevel log_level = CPA_LOG_WARN;
static FILE *log_file = NULL;
static char log_host[64] = "?";
static pthread_mutex_t log_mutex = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local int log_rank = -1;
static _Thread_local int log_device = -1;

/* CPATTN_DEBUG_FILE may contain %h (host) and %p (pid), so that ranks write apart. */
static void expand_path(const char *pattern, char *out, size_t len) {
  size_t n = 0;
  for (const char *p = pattern; *p && n + 1 < len; ++p) {
    if (p[0] == '%' && (p[1] == 'h' || p[1] == 'p')) {
      int w = p[1] == 'h' ? snprintf(out + n, len - n, "%s", log_host)
                          : snprintf(out + n, len - n, "%d", (int)getpid());
      if (w > 0) n += (size_t)w < len - n ? (size_t)w : len - n - 1;
      ++p;
    } else {
      out[n++] = *p;
    }
  }
  out[n] = '\0';
}

static void log_init(void) {
  const char *lvl = cpaParamString(CPA_PARAM_DEBUG);
  if (strcasecmp(lvl, "NONE") == 0) log_level = CPA_LOG_NONE;
  else if (strcasecmp(lvl, "INFO") == 0) log_level = CPA_LOG_INFO;
  else if (strcasecmp(lvl, "TRACE") == 0) log_level = CPA_LOG_TRACE;
  else log_level = CPA_LOG_WARN;
  if (gethostname(log_host, sizeof log_host) != 0) strcpy(log_host, "?");
  log_host[sizeof log_host - 1] = '\0';
  const char *path = cpaParamString(CPA_PARAM_DEBUG_FILE);
  if (path[0]) {
    char expanded[512];
    expand_path(path, expanded, sizeof expanded);
    log_file = fopen(expanded, "a");
  }
}

cpaLogLevel cpaLogLevelGet(void) {
  pthread_once(&log_once, log_init);
  return log_level;
}

void cpaLogSetRank(int rank, int device) {
  log_rank = rank;
  log_device = device;
}

void cpaLog(cpaLogLevel level, const char *file, int line, const char *fmt, ...) {
  if (cpaLogLevelGet() < level || level == CPA_LOG_NONE) return;
  static const char *const names[] = {"NONE", "WARN", "INFO", "TRACE"};
  const char *base = strrchr(file, '/');
  char msg[1536];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  FILE *out = log_file ? log_file : stderr;
  /* One fprintf per line under a mutex: lines from threads never interleave. */
  pthread_mutex_lock(&log_mutex);
  fprintf(out, "%s:%d:%d [%d] cpattn %s %s:%d %s\n", log_host, (int)getpid(), log_rank, log_device,
          names[level], base ? base + 1 : file, line, msg);
  fflush(out);
  pthread_mutex_unlock(&log_mutex);
}
