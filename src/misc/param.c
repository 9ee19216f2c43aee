/* Environment tunables, each read once. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll_internal.h"


static const char* envOrNull(const char* name) {
  const char* s = getenv(name);
  return (s && *s) ? s : NULL;
}

/* A flag variable (nonzero number: on), read once into *cache (-1: unread). */
static int envFlag(const char* name, int* cache) {
  if (*cache < 0) {
    const char* s = envOrNull(name);
    *cache = s ? (strtoll(s, NULL, 0) != 0) : 0;
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
