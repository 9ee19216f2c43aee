#include "vcoll_internal.h"

vcollResult_t vcollResidentGrid(const void* kernel, int threads, size_t smem, int* perSm, size_t need,
                                unsigned* grid) {
  int dev = 0, sms = 0, occ = 0;
  VCOLL_CUDACHECK(NULL, cudaGetDevice(&dev));
  VCOLL_CUDACHECK(NULL, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (dev < 64) occ = perSm[dev];
  if (occ == 0) {
    VCOLL_CUDACHECK(NULL, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, threads, smem));
    if (occ < 1) occ = 1;
    if (dev < 64) perSm[dev] = occ;
  }
  const size_t cap = (size_t)occ * (size_t)sms;
  *grid = (unsigned)(need < cap ? need : cap);
  return vcollSuccess;
}
