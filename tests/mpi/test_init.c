/* vcollCommInitMPI when the ranks ask for different things: every rank
 * gets an error (and no rank hangs) when the backend argument, VCOLL_BACKEND
 * or VCOLL_CHECK differs between ranks; agreeing ranks get a communicator.
 * Host backend (no GPU needed); rank 0 is the one that differs. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll.h"
#include "vcoll_mpi.h"
#include "vt.h"

static int rank_, nranks_;

static void expectInitError(vcollBackend_t backend, const char* needle) {
  vcollComm_t comm = (vcollComm_t)0x1;
  vcollResult_t res = vcollCommInitMPI(MPI_COMM_WORLD, backend, &comm);
  const char* msg = vcollGetLastError(NULL);
  int ok = res == vcollInvalidUsage && comm == NULL && strstr(msg, needle) != NULL;
  if (!ok) fprintf(stderr, "[rank %d] got %d (%s), want vcollInvalidUsage with '%s'\n", rank_, res, msg, needle);
  VT_ASSERT_ALL(ok, "vcollCommInitMPI accepted ranks that disagree (%s)", needle);
}

/* VCOLL_CHECK=1 on rank 0 only (set before vcoll first reads it). */
static void test_checked_mode_differs(void** state) {
  (void)state;
  if (nranks_ < 2) skip();
  if (rank_ == 0) setenv("VCOLL_CHECK", "1", 1);
  expectInitError(vcollBackendHost, "VCOLL_CHECK");
}

/* The backend argument: rank 0 asks for nccl, the others for host. Then
 * VCOLL_BACKEND with vcollBackendAuto: rank 0 nccl, the others host. Both
 * are checked before any NCCL initialization, so this runs without a GPU. */
static void test_backend_differs(void** state) {
  (void)state;
  if (nranks_ < 2) skip();
  expectInitError(rank_ == 0 ? vcollBackendNccl : vcollBackendHost, "different backends");
  setenv("VCOLL_BACKEND", rank_ == 0 ? "nccl" : "host", 1);
  expectInitError(vcollBackendAuto, "different backends");
  unsetenv("VCOLL_BACKEND");
}

/* Ranks that agree: a working communicator (one allgatherv checks it). */
static void test_agreeing_ranks(void** state) {
  (void)state;
  setenv("VCOLL_BACKEND", "host", 1);
  vcollComm_t comm = NULL;
  assert_int_equal(vcollCommInitMPI(MPI_COMM_WORLD, vcollBackendAuto, &comm), vcollSuccess);
  int mine = 100 + rank_, all[64] = {0};
  size_t counts[64];
  for (int r = 0; r < nranks_; r++) counts[r] = 1;
  vcollTensor_t t = {&mine, all, 1, vcollInt32};
  assert_int_equal(vcollAllGatherV(&t, 1, counts, comm, 0), vcollSuccess);
  for (int r = 0; r < nranks_; r++) assert_int_equal(all[r], 100 + r);
  assert_int_equal(vcollCommDestroy(comm), vcollSuccess);
}

/* vcoll reads VCOLL_CHECK once per process: one case per run,
 * `test_init check|backend|agree`. */
int main(int argc, char** argv) {
  vtMpiInit(&argc, &argv);
  rank_ = vtRank();
  nranks_ = vtSize();
  const char* which = argc > 1 ? argv[1] : "agree";
  struct CMUnitTest tests[1];
  if (strcmp(which, "check") == 0) tests[0] = (struct CMUnitTest)cmocka_unit_test(test_checked_mode_differs);
  else if (strcmp(which, "backend") == 0) tests[0] = (struct CMUnitTest)cmocka_unit_test(test_backend_differs);
  else tests[0] = (struct CMUnitTest)cmocka_unit_test(test_agreeing_ranks);
  return vtMpiFinalize(vtRunGroup(which, tests, 1, NULL, NULL));
}
