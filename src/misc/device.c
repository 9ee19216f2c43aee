#include "vcoll_internal.h"

vcollResult_t vcollResidentGrid(const void* kernel, int threads, size_t smem, int* resident, size_t need,
                                unsigned* grid) {
  int dev = 0, cap = 0;
  VCOLL_CUDACHECK(NULL, cudaGetDevice(&dev));
  if (dev < 64) cap = resident[dev];
  if (cap == 0) {
    int sms = 0, occ = 0;
    VCOLL_CUDACHECK(NULL, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    VCOLL_CUDACHECK(NULL, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, threads, smem));
    cap = (occ < 1 ? 1 : occ) * sms;
    if (dev < 64) resident[dev] = cap;
  }
  *grid = (unsigned)(need < (size_t)cap ? need : (size_t)cap);
  return vcollSuccess;
}
