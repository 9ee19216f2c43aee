#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vcoll_internal.h"

static int logLevel = -1;
static int logSet = 0; /* VCOLL_DEBUG names a level (NONE included) */
static const char* logBadValue = NULL;
static const char* logFileError = NULL; /* VCOLL_DEBUG_FILE could not be used */
static char logFileErrorBuf[4200];
static FILE* logFile = NULL;
static pthread_once_t logOnce = PTHREAD_ONCE_INIT;
static pthread_mutex_t logLock = PTHREAD_MUTEX_INITIALIZER;
static char hostName[64] = "?";
static __thread char threadLastError[512];
static void logAt(vcollLogLevel_t level, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void logInit(void) {
  const char* env = getenv("VCOLL_DEBUG");
  int level = VCOLL_LOG_NONE;
  if (env && *env) {
    logSet = 1;
    if (strcasecmp(env, "NONE") == 0) level = VCOLL_LOG_NONE;
    else if (strcasecmp(env, "VERSION") == 0) level = VCOLL_LOG_VERSION;
    else if (strcasecmp(env, "WARN") == 0) level = VCOLL_LOG_WARN;
    else if (strcasecmp(env, "INFO") == 0) level = VCOLL_LOG_INFO;
    else if (strcasecmp(env, "TRACE") == 0) level = VCOLL_LOG_TRACE;
    else logSet = 0, logBadValue = env;
  }
  gethostname(hostName, sizeof(hostName) - 1);
  char* dot = strchr(hostName, '.');
  if (dot) *dot = '\0';
  logFile = stdout;
  const char* path = getenv("VCOLL_DEBUG_FILE");
  if (path && level > VCOLL_LOG_NONE) {
    char name[4096];
    size_t o = 0;
    int tooLong = 0;
    for (const char* p = path; *p && !tooLong; p++) {
      int w = 1;
      if (p[0] == '%' && p[1] == 'h') { w = snprintf(name + o, sizeof(name) - o, "%s", hostName); p++; }
      else if (p[0] == '%' && p[1] == 'p') { w = snprintf(name + o, sizeof(name) - o, "%d", (int)getpid()); p++; }
      else if (o < sizeof(name) - 1) name[o] = *p;
      if (w < 0 || (size_t)w >= sizeof(name) - o) tooLong = 1;
      else o += (size_t)w;
    }
    name[tooLong ? 0 : o] = '\0';
    FILE* f = tooLong ? NULL : fopen(name, "w");
    if (f) { setvbuf(f, NULL, _IOLBF, 0); logFile = f; }
    else if (tooLong) logFileError = "its file name is longer than 4095 bytes";
    else snprintf(logFileErrorBuf, sizeof(logFileErrorBuf), "cannot open %s: %s", name, strerror(errno)),
         logFileError = logFileErrorBuf;
  }
  logLevel = level;
  if (logFileError)
    logAt(VCOLL_LOG_WARN, __FILE__, __LINE__, "VCOLL_DEBUG_FILE: %s; the log goes to stdout", logFileError);
  if (logBadValue)
    logAt(VCOLL_LOG_WARN, __FILE__, __LINE__, "VCOLL_DEBUG=%s is not NONE, VERSION, WARN, INFO or TRACE; ignored",
          logBadValue);
}

int vcollLogLevel(void) {
  pthread_once(&logOnce, logInit);
  return logLevel;
}

/* To the log (stdout or VCOLL_DEBUG_FILE), or with toStderr to stderr. */
static void logTo(int toStderr, vcollLogLevel_t level, const char* file, int line, const char* fmt, va_list ap) {
  static const char* names[] = {"NONE", "VERSION", "WARN", "INFO", "TRACE"};
  FILE* out = toStderr ? stderr : logFile;
  char msg[1024];
  vsnprintf(msg, sizeof(msg), fmt, ap);
  const char* base = strrchr(file, '/');
  base = base ? base + 1 : file;
  pthread_mutex_lock(&logLock);
  if (level == VCOLL_LOG_WARN && line > 0) /* a warning of its own names its place; a recorded error does not */
    fprintf(out, "%s:%d:%ld [%s:%d] VCOLL WARN %s\n", hostName, (int)getpid(),
            (long)syscall(SYS_gettid), base, line, msg);
  else
    fprintf(out, "%s:%d:%ld VCOLL %s %s\n", hostName, (int)getpid(), (long)syscall(SYS_gettid),
            names[level], msg);
  fflush(out);
  pthread_mutex_unlock(&logLock);
}

void vcollLog(vcollLogLevel_t level, const char* file, int line, const char* fmt, ...) {
  if (vcollLogLevel() < (int)level) return;
  va_list ap;
  va_start(ap, fmt);
  logTo(0, level, file, line, fmt, ap);
  va_end(ap);
}

/* logInit's notice of a bad VCOLL_DEBUG: to stderr, like every notice
 * without a log level that shows warnings. */
static void logAt(vcollLogLevel_t level, const char* file, int line, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  logTo(1, level, file, line, fmt, ap);
  va_end(ap);
}

void vcollNotice(const char* file, int line, const char* fmt, ...) {
  const int level = vcollLogLevel();
  if (level < VCOLL_LOG_WARN && logSet) return; /* only an explicit NONE or VERSION silences it */
  va_list ap;
  va_start(ap, fmt);
  /* Without a log that shows warnings: to stderr, out of the program's output. */
  logTo(level < VCOLL_LOG_WARN, VCOLL_LOG_WARN, file, line, fmt, ap);
  va_end(ap);
}

static vcollResult_t recordError(vcollComm_t comm, vcollResult_t res, const char* fmt, va_list ap) {
  vsnprintf(threadLastError, sizeof(threadLastError), fmt, ap);
  if (comm) snprintf(comm->lastError, sizeof(comm->lastError), "%s", threadLastError);
  vcollLog(VCOLL_LOG_WARN, "", 0, "%s", threadLastError);
  return res;
}

vcollResult_t vcollSetError(vcollComm_t comm, vcollResult_t res, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  recordError(comm, res, fmt, ap);
  va_end(ap);
  return res;
}

vcollResult_t vcollArgError(vcollComm_t comm, const char* op, const char* fmt, ...) {
  char msg[448];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  return vcollSetError(comm, vcollInvalidArgument, "%s : %s", op, msg);
}

VCOLL_API const char* vcollGetLastError(vcollComm_t comm) {
  return comm ? comm->lastError : threadLastError;
}

VCOLL_API const char* vcollGetErrorString(vcollResult_t result) {
  switch (result) {
    case vcollSuccess: return "no error";
    case vcollUnhandledCudaError: return "unhandled cuda error (run with VCOLL_DEBUG=WARN for details)";
    case vcollSystemError: return "unhandled system error (run with VCOLL_DEBUG=WARN for details)";
    case vcollInternalError: return "internal error - please report this issue to the vcoll developers";
    case vcollInvalidArgument: return "invalid argument (see vcollGetLastError or run with VCOLL_DEBUG=WARN)";
    case vcollInvalidUsage: return "invalid usage (see vcollGetLastError or run with VCOLL_DEBUG=WARN)";
    case vcollArgumentMismatch: return "ranks passed different arguments (checked mode)";
    case vcollNcclError: return "NCCL error (see vcollGetLastError)";
    case vcollMpiError: return "MPI error (see vcollGetLastError)";
    case vcollNotSupported: return "not supported by this build or backend";
    default: return "unknown result code";
  }
}

VCOLL_API vcollResult_t vcollGetVersion(int* version) {
  if (version == NULL) return VCOLL_ARGERR(NULL, "vcollGetVersion", "version argument is NULL");
  *version = VCOLL_VERSION_CODE;
  return vcollSuccess;
}
