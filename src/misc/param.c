/* Environment tunables, each read once. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vcoll_internal.h"


static const char* envOrNull(const char* name) {
  const char* s = getenv(name);
  return (s && *s) ? s : NULL;
}

/* A flag value: a number (nonzero: on) or yes/no, true/false, on/off;
 * anything else is off, with a notice naming the variable. */
static int parseFlag(const char* name, const char* s) {
  if (s == NULL) return 0;
  char* end = NULL;
  const long long n = strtoll(s, &end, 0);
  if (end != s && *end == '\0') return n != 0;
  if (!strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcasecmp(s, "on")) return 1;
  if (!strcasecmp(s, "no") || !strcasecmp(s, "false") || !strcasecmp(s, "off")) return 0;
  VCOLL_NOTICE("%s=%s is not a number or yes/no, true/false, on/off; taken as 0 (off)", name, s);
  return 0;
}

/* A flag variable, read once into *cache (-1: unread; a benign race: every
 * thread stores the same value, the notice may print twice). */
static int envFlag(const char* name, int* cache) {
  if (*cache < 0) *cache = parseFlag(name, envOrNull(name));
  return *cache;
}

int64_t vcollParamCheck(void) {
  static int value = -1;
  return envFlag("VCOLL_CHECK", &value);
}

int vcollParamShareGpu(void) {
  static int value = -1;
  return envFlag("VCOLL_SHARE_GPU", &value);
}

const char* vcollParamAlgo(void) { return envOrNull("VCOLL_ALGO"); }

size_t vcollParamStagingMax(void) {
  const char* s = envOrNull("VCOLL_STAGING_MAX");
  if (s == NULL || !strcasecmp(s, "none")) return SIZE_MAX;
  char* end = NULL;
  errno = 0;
  const unsigned long long n = strtoull(s, &end, 10);
  int shift = 0;
  const char* p = end;
  switch (*p) {
    case 'K': case 'k': shift = 10; p++; break;
    case 'M': case 'm': shift = 20; p++; break;
    case 'G': case 'g': shift = 30; p++; break;
    case 'T': case 't': shift = 40; p++; break;
    default: break;
  }
  if (*p == 'B' || *p == 'b') p++; /* 64MB, 1024B */
  if (end == s || strchr(s, '-') != NULL || errno != 0 || *p != '\0') shift = -1;
  if (shift < 0) {
    VCOLL_NOTICE("VCOLL_STAGING_MAX=%s is not a size (bytes, or a number with K, M, G or T); no staging limit", s);
    return SIZE_MAX;
  }
  if (shift > 0 && n > (SIZE_MAX >> shift)) {
    VCOLL_NOTICE("VCOLL_STAGING_MAX=%s is more than a size_t holds; no staging limit", s);
    return SIZE_MAX;
  }
  return (size_t)n << shift;
}
const char* vcollParamBackend(void) { return envOrNull("VCOLL_BACKEND"); }
/* 0: auto (unset or "auto"), 1: warp, 2: seg; another value is auto, with
 * one notice (read at every call: tests switch it). */
int vcollParamGateKernel(void) {
  static int warned = 0;
  const char* s = envOrNull("VCOLL_GATE_KERNEL");
  if (s == NULL || !strcasecmp(s, "auto")) return 0;
  if (!strcasecmp(s, "warp")) return 1;
  if (!strcasecmp(s, "seg")) return 2;
  if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED)) /* one notice, also across threads */
    VCOLL_NOTICE("VCOLL_GATE_KERNEL=%s is not warp, seg or auto; taken as auto", s);
  return 0;
}
const char* vcollParamMoeCombine32(void) { return envOrNull("VCOLL_MOE_COMBINE32"); }

int vcollParamNcclAvg(void) {
  return parseFlag("VCOLL_NCCL_AVG", envOrNull("VCOLL_NCCL_AVG")); /* read per call (tests change it) */
}
