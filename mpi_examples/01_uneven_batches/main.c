/* vcoll's main job: every rank holds a different number of tokens; gather
 * the counts, then the tokens (hidden states and routing ids in one call),
 * then reduce-scatter per-token partial results back to their owners, and
 * check both.
 *
 *   mpirun -np 4 ./uneven_batches [--tokens MAX] [--hidden H] [--backend auto|nccl|host]
 *
 * Runs on GPUs (NCCL backend, one GPU per rank) when every rank sees one,
 * and on the MPI host backend otherwise. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <mpi.h>

#include "vcoll.h"
#include "vcoll_mpi.h"
#include "cli_args.h" /* bench/common: strict numbers from the command line */

#define VCHECK(call)                                                                     \
  do {                                                                                   \
    vcollResult_t r_ = (call);                                                           \
    if (r_ != vcollSuccess) {                                                            \
      fprintf(stderr, "%s failed: %s (%s)\n", #call, vcollGetErrorString(r_),           \
              vcollGetLastError(NULL));                                                  \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                      \
    }                                                                                    \
  } while (0)

static int gpu;
static void outOfMemory(size_t n, const char* where) {
  fprintf(stderr, "uneven_batches: cannot allocate %zu bytes of %s memory\n", n, where);
  MPI_Abort(MPI_COMM_WORLD, 2);
}
static void* hostAlloc(size_t n) {
  void* p = malloc(n ? n : 1);
  if (p == NULL) outOfMemory(n, "host");
  return p;
}
/* Device memory on the NCCL backend, host memory on the host backend. */
static void* alloc(size_t n) {
  void* p = NULL;
  if (!gpu) return hostAlloc(n);
  if (cudaMalloc(&p, n ? n : 1) != cudaSuccess) outOfMemory(n, "device");
  return p;
}
static void put(void* d, const void* s, size_t n) { if (gpu) cudaMemcpy(d, s, n, cudaMemcpyHostToDevice); else memcpy(d, s, n); }
static void get(void* d, const void* s, size_t n) { if (gpu) cudaMemcpy(d, s, n, cudaMemcpyDeviceToHost); else memcpy(d, s, n); }
static void release(void* p) { if (gpu) cudaFree(p); else free(p); }

/* Rank r's token count: rank 1 none, the last rank the most. */
static size_t tokensOf(int r, int nranks, size_t maxTokens) {
  return r == 1 ? 0 : (maxTokens * (size_t)(r + 1)) / (size_t)nranks + (size_t)r * 3;
}

/* Token t of rank r: its hidden values, its expert ids, its partial output. */
static uint16_t hiddenVal(int r, size_t t, size_t j) { return (uint16_t)(0x3f80 + ((r * 131 + t * 7 + j) % 64)); }
static int32_t idVal(int r, size_t t, int k) { return (int32_t)((r * 17 + t * 3 + k) % 256); }
static float partialVal(int r, size_t tok, size_t j) { return (float)((r + 1) * ((tok + j) % 5)); }

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, nranks;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  size_t maxTokens = 300, hidden = 512;
  vcollBackend_t backend = vcollBackendAuto;
  for (int i = 1; i < argc; i += 2) {
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v && !strcmp(argv[i], "--tokens") && cliSize(v, 0, (size_t)1 << 20, &maxTokens)) continue;
    else if (v && !strcmp(argv[i], "--hidden") && cliSize(v, 1, (size_t)1 << 16, &hidden)) continue;
    else if (v && !strcmp(argv[i], "--backend") && (!strcmp(v, "nccl") || !strcmp(v, "host") || !strcmp(v, "auto")))
      backend = !strcmp(v, "nccl") ? vcollBackendNccl : !strcmp(v, "host") ? vcollBackendHost : vcollBackendAuto;
    else {
      if (rank == 0)
        fprintf(stderr, "%s %s: usage: uneven_batches [--tokens 0..2^20] [--hidden 1..65536] [--backend nccl|host|auto]\n",
                argv[i], v ? v : "(no value)");
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  vcollComm_t comm;
  VCHECK(vcollCommInitMPI(MPI_COMM_WORLD, backend, &comm));
  vcollBackend_t be;
  VCHECK(vcollCommBackend(comm, &be));
  gpu = be == vcollBackendNccl;

  /* Uneven token counts: rank 1 has none, the last rank the most. Each rank
   * knows only its own, as in a serving runtime; vcollGatherCounts gives
   * every rank all of them (one small collective, a host synchronization). */
  const size_t mine = tokensOf(rank, nranks, maxTokens);
  size_t* counts = hostAlloc(sizeof(size_t) * nranks);
  VCHECK(vcollGatherCounts(comm, mine, counts, 0));
  size_t total = 0, displ = 0, badCounts = 0;
  for (int r = 0; r < nranks; r++) {
    badCounts += counts[r] != tokensOf(r, nranks, maxTokens);
    if (r < rank) displ += counts[r];
    total += counts[r];
  }
  if (badCounts) {
    fprintf(stderr, "rank %d: vcollGatherCounts returned %zu wrong counts\n", rank, badCounts);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  const int topk = 8;

  /* Local inputs. */
  uint16_t* hHidden = hostAlloc(mine * hidden * 2 + 2);
  int32_t* hIds = hostAlloc(mine * topk * 4 + 4);
  for (size_t t = 0; t < mine; t++) {
    for (size_t j = 0; j < hidden; j++) hHidden[t * hidden + j] = hiddenVal(rank, t, j);
    for (int k = 0; k < topk; k++) hIds[t * topk + k] = idVal(rank, t, k);
  }
  void* dHidden = alloc(mine * hidden * 2);
  void* dIds = alloc(mine * topk * 4);
  void* gHidden = alloc(total * hidden * 2);
  void* gIds = alloc(total * topk * 4);
  put(dHidden, hHidden, mine * hidden * 2);
  put(dIds, hIds, mine * topk * 4);

  /* 1. allgatherv: both tensors in one call, one NCCL group. */
  vcollTensor_t tensors[2] = {
      {dHidden, gHidden, hidden, vcollBfloat16},
      {dIds, gIds, (size_t)topk, vcollInt32},
  };
  VCHECK(vcollAllGatherV(tensors, 2, counts, comm, 0));

  /* 2. reducescatterv: every rank contributes partial outputs for all
   * tokens; each receives the sum over ranks for its own tokens. */
  float* hPartial = hostAlloc(total * hidden * 4 + 4);
  for (size_t t = 0; t < total; t++)
    for (size_t j = 0; j < hidden; j++) hPartial[t * hidden + j] = partialVal(rank, t, j);
  void* dPartial = alloc(total * hidden * 4);
  void* dOut = alloc(mine * hidden * 4);
  put(dPartial, hPartial, total * hidden * 4);
  VCHECK(vcollReduceScatterV(dPartial, dOut, counts, hidden, vcollFloat32, vcollSum, comm, 0));
  if (gpu) cudaDeviceSynchronize();

  /* Check every element against what each rank must have sent. */
  size_t wrong = 0;
  uint16_t* gh = hostAlloc(total * hidden * 2 + 2);
  int32_t* gi = hostAlloc(total * topk * 4 + 4);
  float* out = hostAlloc(mine * hidden * 4 + 4);
  get(gh, gHidden, total * hidden * 2);
  get(gi, gIds, total * topk * 4);
  get(out, dOut, mine * hidden * 4);
  size_t row = 0;
  for (int r = 0; r < nranks; r++)
    for (size_t t = 0; t < counts[r]; t++, row++) {
      for (size_t j = 0; j < hidden; j++) wrong += gh[row * hidden + j] != hiddenVal(r, t, j);
      for (int k = 0; k < topk; k++) wrong += gi[row * topk + k] != idVal(r, t, k);
    }
  for (size_t t = 0; t < mine; t++)
    for (size_t j = 0; j < hidden; j++) {
      float want = 0;
      for (int r = 0; r < nranks; r++) want += partialVal(r, displ + t, j);
      wrong += out[t * hidden + j] != want;
    }
  unsigned long long w = wrong, allWrong = 0;
  MPI_Reduce(&w, &allWrong, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
  printf("rank %d: %zu tokens (gathered %zu, rows [%zu, %zu)), backend %s, allgatherv algo %s, reducescatterv algo %s, %zu wrong\n",
         rank, mine, total, displ, displ + mine, gpu ? "nccl" : "host", vcollCommLastAlgo(comm, vcollCollAllGatherV),
         vcollCommLastAlgo(comm, vcollCollReduceScatterV), wrong);
  fflush(stdout);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) printf("check: %s (%d ranks, %zu tokens, hidden %zu)\n", allWrong ? "FAILED" : "OK", nranks, total, hidden);

  release(dHidden); release(dIds); release(gHidden); release(gIds); release(dPartial); release(dOut);
  free(hHidden); free(hIds); free(hPartial); free(gh); free(gi); free(out); free(counts);
  vcollCommDestroy(comm);
  MPI_Finalize();
  return allWrong ? 1 : 0;
}
