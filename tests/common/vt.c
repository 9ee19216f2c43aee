#include "vt.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <signal.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "cli_args.h" /* bench/common: cliEnvFlag */

static int mpiOn = 0;

uint64_t vtSeed(void) {
  static uint64_t seed = 0;
  static int done = 0;
  if (done) return seed;
  const char* env = getenv("VCOLL_TEST_SEED");
  if (env && *env) seed = strtoull(env, NULL, 0);
  else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = (uint64_t)ts.tv_sec * 1000003ull ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
  }
  if (mpiOn) MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  done = 1;
  if (!mpiOn || vtRank() == 0) fprintf(stderr, "# seed %llu (set VCOLL_TEST_SEED to repeat)\n", (unsigned long long)seed);
  return seed;
}

double vtNormal(vtRng* r) {
  double u1 = vtUniform(r), u2 = vtUniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void vtPoison(void* p, size_t n) { memset(p, 0xA5, n); }

int vtIsPoisoned(const void* p, size_t n) {
  const unsigned char* c = p;
  for (size_t i = 0; i < n; i++)
    if (c[i] != 0xA5) return 0;
  return 1;
}

int vtHaveGpu(void) {
  static int have = -1;
  if (have < 0) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); n = 0; }
    have = n > 0;
    if (have && mpiOn) {
      /* Multi-rank GPU tests need one GPU per rank on every node; decided
       * together so that all ranks skip or none does. */
      MPI_Comm local;
      int localSize = 1;
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
      MPI_Comm_size(local, &localSize);
      MPI_Comm_free(&local);
      /* VCOLL_SHARE_GPU=1 (README: Environment): ranks share the GPUs,
       * as vcollCommInitMPI then allows. */
      int ok = n >= localSize || cliEnvFlag("VCOLL_SHARE_GPU");
      MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
      if (!ok && vtRank() == 0)
        fprintf(stderr, "vt: %d GPU(s) for %d ranks on a node: the GPU tests need one GPU per rank, skipped\n", n,
                localSize);
      have = ok;
    }
  }
  return have;
}

void vtMpiInit(int* argc, char*** argv) {
  MPI_Init(argc, argv);
  mpiOn = 1;
  (void)vtHaveGpu(); /* collective the first time: every rank calls it here */
}

int vtMpiFinalize(int failed) {
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any ? 1 : 0;
}

int vtRank(void) {
  int r = 0;
  if (mpiOn) MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int vtSize(void) {
  int s = 1;
  if (mpiOn) MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

int vtAllTrue(int cond) {
  if (!mpiOn) return cond;
  int all = cond ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all;
}

/* Watchdog of the multi-rank groups: a rank stuck in a collective (another
 * rank failed, or a hang) ends the program after VT_TIMEOUT seconds
 * (default 240) with a message, instead of using up the harness's time; the
 * last "[ RUN ]" line of the log names the test. */
static void vtWatchdog(int sig) {
  (void)sig;
  static const char msg[] = "vt: watchdog: no result within VT_TIMEOUT seconds (a rank is stuck in a "
                            "collective?); exiting\n";
  ssize_t w = write(2, msg, sizeof(msg) - 1);
  (void)w;
  _exit(124);
}

int vtRunGroup(const char* name, const struct CMUnitTest* tests, size_t n, CMFixtureFunction setup,
               CMFixtureFunction teardown) {
  int saved = -1;
  const char* t = getenv("VT_TIMEOUT");
  unsigned timeout = t ? (unsigned)atoi(t) : 240u;
  if (timeout > 0) {
    signal(SIGALRM, vtWatchdog);
    alarm(timeout);
  }
  fflush(stdout);
  if (mpiOn && vtRank() != 0) { /* only rank 0 prints cmocka's report */
    saved = dup(1);
    FILE* devnull = freopen("/dev/null", "w", stdout);
    (void)devnull;
  }
  int failed = _cmocka_run_group_tests(name, tests, n, setup, teardown);
  alarm(0);
  fflush(stdout);
  if (saved >= 0) { dup2(saved, 1); close(saved); }
  return failed;
}
