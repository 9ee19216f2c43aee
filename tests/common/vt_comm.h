/* The part the multi-rank test programs (tests/mpi, tests/moe) share: their
 * command line, buffers on the backend's side and the cmocka group fixtures
 * that create the communicator.
 * Include after vt.h. */
#ifndef VCOLL_TESTS_VT_COMM_H_
#define VCOLL_TESTS_VT_COMM_H_

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "vcoll.h"
#include "vcoll_mpi.h"

/* The backend of the run (--backend; vtParseCommArgs) and buffers on its
 * side: device memory on the NCCL backend, host memory on the host
 * backend. Failures fail the running cmocka test. */
static vcollBackend_t backend = vcollBackendHost;

static inline int onGpu(void) { return backend == vcollBackendNccl; }

static inline void* bufAlloc(size_t n) {
  void* p = NULL;
  if (n == 0) n = 1;
  if (onGpu()) assert_int_equal(cudaMalloc(&p, n), cudaSuccess);
  else assert_non_null(p = malloc(n));
  return p;
}
static inline void bufFree(void* p) {
  if (onGpu()) cudaFree(p);
  else free(p);
}
static inline void bufPut(void* dst, const void* src, size_t n) {
  if (n == 0) return;
  if (onGpu()) assert_int_equal(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice), cudaSuccess);
  else memcpy(dst, src, n);
}
static inline void bufGet(void* dst, const void* src, size_t n) {
  if (n == 0) return;
  if (onGpu()) assert_int_equal(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost), cudaSuccess);
  else memcpy(dst, src, n);
}
/* Fills n bytes with the poison pattern (vtPoison's 0xA5). */
static inline void bufPoison(void* p, size_t n) {
  if (n == 0 || p == NULL) return;
  if (onGpu()) assert_int_equal(cudaMemset(p, 0xA5, n), cudaSuccess);
  else vtPoison(p, n);
}
/* 1 when all n bytes still hold the poison. */
static inline int bufPoisoned(const void* p, size_t n) {
  if (n == 0 || p == NULL) return 1;
  void* h = malloc(n);
  assert_non_null(h);
  bufGet(h, p, n);
  int ok = vtIsPoisoned(h, n);
  free(h);
  return ok;
}
static inline void sync(void) {
  if (onGpu()) assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
}

/* --backend nccl|host (anything else: host) and --iters N. */
static inline void vtParseCommArgs(int argc, char** argv, vcollBackend_t* backend, int* iters) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) {
      i++;
      *backend = strcmp(argv[i], "nccl") == 0 ? vcollBackendNccl : vcollBackendHost;
    } else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
      *iters = atoi(argv[++i]);
    }
  }
}

/* The run's communicator, created and destroyed by the cmocka group
 * fixtures: vtRunGroup(name, tests, n, vtGroupSetup, vtGroupTeardown). */
static vcollComm_t comm = NULL;

/* A communicator over MPI_COMM_WORLD on `backend`; none (and success: the
 * GPU tests then skip) for the NCCL backend without one GPU per rank.
 * Returns 0, or -1 with the error printed. */
static inline int vtGroupSetup(void** state) {
  (void)state;
  if (backend == vcollBackendNccl && !vtHaveGpu()) return 0;
  vcollResult_t res = vcollCommInitMPI(MPI_COMM_WORLD, backend, &comm);
  if (res != vcollSuccess) fprintf(stderr, "vcollCommInitMPI: %s\n", vcollGetLastError(NULL));
  return res == vcollSuccess ? 0 : -1;
}

static inline int vtGroupTeardown(void** state) {
  (void)state;
  vcollCommDestroy(comm);
  comm = NULL;
  return 0;
}

/* Fixtures of a test that needs a communicator of its own (fresh staging
 * buffers): `comm` is a new one over MPI_COMM_WORLD during the test, the
 * group's afterwards. */
static vcollComm_t vtGroupComm = NULL;

static inline int vtFreshCommSetup(void** state) {
  (void)state;
  if (backend == vcollBackendNccl && !vtHaveGpu()) return 0;
  vcollComm_t fresh = NULL;
  if (vcollCommInitMPI(MPI_COMM_WORLD, backend, &fresh) != vcollSuccess) {
    fprintf(stderr, "vcollCommInitMPI: %s\n", vcollGetLastError(NULL));
    return -1;
  }
  vtGroupComm = comm;
  comm = fresh;
  return 0;
}

static inline int vtFreshCommTeardown(void** state) {
  (void)state;
  if (vtGroupComm == NULL) return 0;
  vcollCommDestroy(comm);
  comm = vtGroupComm;
  vtGroupComm = NULL;
  return 0;
}

#endif /* VCOLL_TESTS_VT_COMM_H_ */
