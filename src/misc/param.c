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
const char* vcollParamGateKernel(void) { return envOrNull("VCOLL_GATE_KERNEL"); }
const char* vcollParamMoeCombine32(void) { return envOrNull("VCOLL_MOE_COMBINE32"); }

int vcollParamNcclAvg(void) {
  return parseFlag("VCOLL_NCCL_AVG", envOrNull("VCOLL_NCCL_AVG")); /* read per call (tests change it) */
}
