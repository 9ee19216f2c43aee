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

/* A flag variable, read once into *cache (-1: unread): a number (nonzero:
 * on) or yes/no, true/false, on/off; anything else is off, with a notice. */
static int envFlag(const char* name, int* cache) {
  if (*cache < 0) {
    const char* s = envOrNull(name);
    char* end = NULL;
    int v = 0;
    if (s) {
      const long long n = strtoll(s, &end, 0);
      if (end != s && *end == '\0') v = n != 0;
      else if (!strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcasecmp(s, "on")) v = 1;
      else if (!strcasecmp(s, "no") || !strcasecmp(s, "false") || !strcasecmp(s, "off")) v = 0;
      else VCOLL_NOTICE("%s=%s is not a number or yes/no, true/false, on/off; taken as 0 (off)", name, s);
    }
    *cache = v;
  }
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
  const char* s = envOrNull("VCOLL_NCCL_AVG");
  return s && strtoll(s, NULL, 0) != 0;
}
