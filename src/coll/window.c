/* Buffers allocated and registered through vcoll (NCCL symmetric windows). */
#include "vcoll_internal.h"

VCOLL_API vcollResult_t vcollMemAlloc(vcollComm_t comm, size_t size, void** ptr) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollMemAlloc"));
  (void)size; (void)ptr;
  return vcollSetError(comm, vcollNotSupported, "vcollMemAlloc : not implemented yet");
}

VCOLL_API vcollResult_t vcollMemFree(vcollComm_t comm, void* ptr) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollMemFree"));
  (void)ptr;
  return vcollSetError(comm, vcollNotSupported, "vcollMemFree : not implemented yet");
}

void vcollWindowsReleaseAll(vcollComm_t comm) { (void)comm; }

void vcollCollStateFree(vcollComm_t comm) { (void)comm; }
