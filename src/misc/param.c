/* Environment tunables, each read once. */
#include <pthread.h>
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
