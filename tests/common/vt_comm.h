/* The part the multi-rank test programs (tests/mpi, tests/moe) share: their
 * command line and the cmocka group fixtures that create the communicator.
 * Include after vt.h. */
#ifndef VCOLL_TESTS_VT_COMM_H_
#define VCOLL_TESTS_VT_COMM_H_

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll.h"
#include "vcoll_mpi.h"

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

/* Group setup: a communicator over MPI_COMM_WORLD on `backend`; none (and
 * success: the GPU tests then skip) for the NCCL backend without one GPU per
 * rank. Returns 0, or -1 with the error printed. */
static inline int vtCommSetup(vcollBackend_t backend, vcollComm_t* comm) {
  if (backend == vcollBackendNccl && !vtHaveGpu()) return 0;
  vcollResult_t res = vcollCommInitMPI(MPI_COMM_WORLD, backend, comm);
  if (res != vcollSuccess) fprintf(stderr, "vcollCommInitMPI: %s\n", vcollGetLastError(NULL));
  return res == vcollSuccess ? 0 : -1;
}

static inline void vtCommTeardown(vcollComm_t* comm) {
  vcollCommDestroy(*comm);
  *comm = NULL;
}

#endif /* VCOLL_TESTS_VT_COMM_H_ */
