/* Environment tunables, each read once. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll_internal.h"


static const char* envOrNull(const char* name) {
  const char* s = getenv(name);
  return (s && *s) ? s : NULL;
}

int64_t vcollParamCheck(void) {
  static int64_t value = -1;
  if (value < 0) {
    const char* s = envOrNull("VCOLL_CHECK");
    value = s ? (strtoll(s, NULL, 0) != 0) : 0;
  }
  return value;
}

int vcollParamShareGpu(void) {
  static int value = -1;
  if (value < 0) {
    const char* s = envOrNull("VCOLL_SHARE_GPU");
    value = s ? (strtol(s, NULL, 0) != 0) : 0;
  }
  return value;
}

const char* vcollParamAlgo(void) { return envOrNull("VCOLL_ALGO"); }
const char* vcollParamBackend(void) { return envOrNull("VCOLL_BACKEND"); }
const char* vcollParamGateKernel(void) { return envOrNull("VCOLL_GATE_KERNEL"); }
