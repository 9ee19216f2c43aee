/* Logging and error recording. VCOLL_DEBUG=NONE|VERSION|WARN|INFO|TRACE
 * selects the level (quiet by default but for VCOLL_NOTICE);
 * VCOLL_DEBUG_FILE=path (%h host, %p pid) redirects it. */
#ifndef VCOLL_DEBUG_H_
#define VCOLL_DEBUG_H_

#include "vcoll.h"

typedef enum {
  VCOLL_LOG_NONE = 0,
  VCOLL_LOG_VERSION = 1,
  VCOLL_LOG_WARN = 2,
  VCOLL_LOG_INFO = 3,
  VCOLL_LOG_TRACE = 4
} vcollLogLevel_t;

VCOLL_API int vcollLogLevel(void);
VCOLL_API void vcollLog(vcollLogLevel_t level, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A warning about the setup that must not pass unseen (a fallback to the
 * host backend, an environment variable vcoll cannot read): logged as WARN
 * even when VCOLL_DEBUG is unset; VCOLL_DEBUG=NONE (or VERSION) silences it. */
VCOLL_API void vcollNotice(const char* file, int line, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

#define VCOLL_WARN(...) vcollLog(VCOLL_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define VCOLL_NOTICE(...) vcollNotice(__FILE__, __LINE__, __VA_ARGS__)
#define VCOLL_INFO(...)                                                  \
  do {                                                                   \
    if (vcollLogLevel() >= VCOLL_LOG_INFO)                               \
      vcollLog(VCOLL_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__);         \
  } while (0)
#define VCOLL_TRACE(...)                                                 \
  do {                                                                   \
    if (vcollLogLevel() >= VCOLL_LOG_TRACE)                              \
      vcollLog(VCOLL_LOG_TRACE, __FILE__, __LINE__, __VA_ARGS__);        \
  } while (0)

/* (These are exported for libvcoll_mpi; no public header declares them.) */

/* Records `fmt` as the last error of `comm` (may be NULL) and of the
 * calling thread, logs it at WARN, and returns `res`. */
VCOLL_API vcollResult_t vcollSetError(vcollComm_t comm, vcollResult_t res, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Argument errors: "<op> : <message>", vcollInvalidArgument. */
#define VCOLL_ARGERR(comm, op, ...) vcollArgError((comm), (op), __VA_ARGS__)
VCOLL_API vcollResult_t vcollArgError(vcollComm_t comm, const char* op, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* VCOLL_DEBUG_H_ */
