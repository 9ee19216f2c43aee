/* moe_dispatch_perf: MoE dispatch and combine as DP-attention + EP runtimes
 * call them, one GPU per rank (NCCL backend).
 *
 *   mpirun -np N moe_dispatch_perf [-b 1] [-e 16384] [-f 2] [-H 7168] [-k 8] [-E 256]
 *                                  [-s equal,skew,moe] [-n 30] [-w 5] [-c 1] [-G 0]
 *
 * For every shape of per-rank token counts and every nominal tokens-per-rank
 * T in -b..-e (times -f), it times:
 *   fp4      NVFP4 dispatch, quantize included, given (static) global scale,
 *            kept in the output's globalScale (no copy)
 *   fp4c     NVFP4 dispatch with the global scale computed over all ranks
 *   bf16     bf16 dispatch (same API, no quantization)
 *   comb     combine, bf16 reduce-scatter of [N, H] bf16 partials
 *   comb32   combine with fp32 accumulation (widen: fp32 reduce-scatter)
 *   c32p     the same with VCOLL_MOE_COMBINE32=p2p: the bf16 partials
 *            through the p2p reducescatterv, summed in fp32 in its kernel
 *            (at one rank the same as comb32: p2p needs 2 or more)
 *   d2d      cudaMemcpy device to device of the bytes bf16 dispatch receives
 *            (N x bf16 row), the local-memory reference
 *   quant    vcollNvfp4Quantize of this rank's tokens alone (given scale): the
 *            part of fp4 that bf16 does not do; bf16 / (fp4 - quant) is
 *            the speedup a free quantize would give
 * Each time: per iteration, host barrier, CUDA events around one call, the
 * max over ranks; the median over -n iterations after -w warm-up ones.
 * Those events also enclose the host's time to issue the call, which at a
 * few tokens is most of it. -G n (n > 0) instead captures n back-to-back
 * calls in one CUDA graph (after the eager warm-up) and times its replays,
 * per call: device time without launch gaps, as a runtime that captures
 * its decode step sees it.
 * Inputs are non-zero pseudo-random data; with -c 1 every output of every
 * point is checked on the device (#wrong, summed over ranks).
 * Shapes (mean T tokens per rank): equal; skew, a linear ramp (rank r:
 * 2T(r+1)/(n+1)); moe, uneven with idle ranks (factors 1.7 0.3 1.0 0.0 1.4
 * 0.6 1.2 0.8, normalized to mean 1). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <mpi.h>

#include "vcoll.h"
#include "vcoll/moe.h"
#include "vcoll/nvfp4.h"
#include "vcoll_mpi.h"
#include "cli_args.h"

int benchMoeFill(void* dst, size_t n, uint64_t seed, int partial, cudaStream_t s);
int benchMoeFillWords(void* dst, size_t n, uint64_t seed, uint32_t mod, cudaStream_t s);
int benchMoeDiff(const void* a, const void* b, size_t n, unsigned long long* wrong, cudaStream_t s);
int benchMoeCheckHidden(const void* got, size_t n, uint64_t seed, unsigned long long* wrong, cudaStream_t s);
int benchMoeCheckCombine(const void* got, size_t n, size_t e0, uint64_t seed0, int nranks, unsigned long long* wrong,
                         cudaStream_t s);

#define VCHECK(call)                                                                                 \
  do {                                                                                               \
    vcollResult_t r_ = (call);                                                                       \
    if (r_ != vcollSuccess) {                                                                        \
      fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,                     \
              vcollGetErrorString(r_), vcollGetLastError(NULL));                                     \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                                  \
    }                                                                                                \
  } while (0)
#define CUCHECK(call)                                                                                \
  do {                                                                                               \
    cudaError_t e_ = (cudaError_t)(call);                                                            \
    if (e_ != cudaSuccess) {                                                                         \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                                  \
    }                                                                                                \
  } while (0)

enum { V_FP4, V_FP4C, V_BF16, V_COMB, V_COMB32, V_COMB32P, V_D2D, V_QUANT, NV };

static int rank, nranks, iters = 30, warmup = 5, check = 1, graphCalls = 0;
static size_t H = 7168;
static int topk = 8, nExperts = 256;
static cudaStream_t stream;
static cudaEvent_t ev0, ev1;

#define SEED_HIDDEN 1000u
#define SEED_PARTIAL 2000u
#define SEED_IDS 3000u
#define SEED_W 4000u

static void makeCounts(const char* shape, size_t T, size_t* counts) {
  static const double moe[8] = {1.7, 0.3, 1.0, 0.0, 1.4, 0.6, 1.2, 0.8};
  double f[64], sum = 0;
  for (int r = 0; r < nranks; r++) {
    if (!strcmp(shape, "equal")) f[r] = 1;
    else if (!strcmp(shape, "skew")) f[r] = 2.0 * (r + 1) / (nranks + 1);
    else f[r] = moe[r % 8];
    sum += f[r];
  }
  for (int r = 0; r < nranks; r++) counts[r] = (size_t)llround((double)T * f[r] * nranks / sum);
}

/* Median over iterations of the max over ranks of one call's time (us). */
typedef void (*runFn)(void* ctx);
static double timeIt(runFn fn, void* ctx) {
  double* t = malloc(sizeof(double) * (size_t)iters);
  double* tmax = malloc(sizeof(double) * (size_t)iters);
  cudaGraphExec_t exec = NULL;
  for (int i = -warmup; i < iters; i++) {
    if (i == 0 && graphCalls > 0) { /* the eager warm-up grew every buffer: capture now */
      cudaGraph_t graph;
      CUCHECK(cudaStreamSynchronize(stream));
      MPI_Barrier(MPI_COMM_WORLD);
      CUCHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
      for (int k = 0; k < graphCalls; k++) fn(ctx);
      CUCHECK(cudaStreamEndCapture(stream, &graph));
      CUCHECK(cudaGraphInstantiate(&exec, graph, 0));
      CUCHECK(cudaGraphDestroy(graph));
      CUCHECK(cudaGraphLaunch(exec, stream)); /* warm-up replay */
    }
    CUCHECK(cudaStreamSynchronize(stream));
    MPI_Barrier(MPI_COMM_WORLD);
    CUCHECK(cudaEventRecord(ev0, stream));
    if (exec) CUCHECK(cudaGraphLaunch(exec, stream));
    else fn(ctx);
    CUCHECK(cudaEventRecord(ev1, stream));
    CUCHECK(cudaEventSynchronize(ev1));
    float ms;
    CUCHECK(cudaEventElapsedTime(&ms, ev0, ev1));
    if (i >= 0) t[i] = ms * 1000.0 / (exec ? graphCalls : 1);
  }
  if (exec) CUCHECK(cudaGraphExecDestroy(exec));
  MPI_Allreduce(t, tmax, iters, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  for (int i = 1; i < iters; i++) /* insertion sort: iters is small */
    for (int j = i; j > 0 && tmax[j] < tmax[j - 1]; j--) {
      double x = tmax[j];
      tmax[j] = tmax[j - 1];
      tmax[j - 1] = x;
    }
  double med = iters % 2 ? tmax[iters / 2] : 0.5 * (tmax[iters / 2 - 1] + tmax[iters / 2]);
  free(t);
  free(tmax);
  return med;
}

struct ctx {
  const size_t* counts;
  vcollMoeWorkspace_t wsFp4, wsFp4c, wsBf16;
  vcollMoeBuffers_t bFp4, bFp4c, bBf16;
  vcollMoeLocal_t in;
  void *copySrc, *copyDst;
  size_t copyBytes;
};

static void runFp4(void* p) {
  struct ctx* c = p;
  VCHECK(vcollMoeDispatch(c->wsFp4, c->counts, &c->in, &c->bFp4.tokens, stream));
}
static void runFp4c(void* p) {
  struct ctx* c = p;
  VCHECK(vcollMoeDispatch(c->wsFp4c, c->counts, &c->in, &c->bFp4c.tokens, stream));
}
static void runBf16(void* p) {
  struct ctx* c = p;
  VCHECK(vcollMoeDispatch(c->wsBf16, c->counts, &c->in, &c->bBf16.tokens, stream));
}
/* Both combines read the same partials (filled once in bFp4.partials). */
static void runComb(void* p) {
  struct ctx* c = p;
  VCHECK(vcollMoeCombine(c->wsFp4, c->counts, c->bFp4.partials, c->bFp4.combined, stream));
}
static void runComb32(void* p) {
  struct ctx* c = p;
  VCHECK(vcollMoeCombine(c->wsBf16, c->counts, c->bFp4.partials, c->bBf16.combined, stream));
}
static void runD2d(void* p) {
  struct ctx* c = p;
  CUCHECK(cudaMemcpyAsync(c->copyDst, c->copySrc, c->copyBytes, cudaMemcpyDeviceToDevice, stream));
}

/* Wrong bytes/elements of the outputs of the call just run (device checks). */
static unsigned long long* dWrong;
static float* dScratchGs;
static void *dScratchX, *dScratchP, *dScratchS;

/* The quantize step of runFp4 alone, into the checks' scratch (its result is
 * not used; the checks run after it on the same stream). */
static void runQuant(void* p) {
  struct ctx* c = p;
  VCHECK(vcollNvfp4Quantize(c->in.hidden, vcollBfloat16, c->counts[rank], H, c->bFp4.tokens.globalScale, 0,
                            dScratchP, dScratchS, vcollScaleLinear, stream));
}

static void checkFp4(const size_t* counts, const vcollMoeTokens_t* t, int computed) {
  size_t row = 0;
  float gs, minGs = INFINITY;
  CUCHECK(cudaMemcpy(&gs, t->globalScale, 4, cudaMemcpyDeviceToHost));
  for (int r = 0; r < nranks; r++) {
    size_t n = counts[r];
    if (n) {
      CUCHECK(benchMoeFill(dScratchX, n * H, SEED_HIDDEN + (uint64_t)r, 0, stream));
      if (computed) { /* this rank's own scale: the gathered one is their minimum */
        float g;
        VCHECK(vcollNvfp4Quantize(dScratchX, vcollBfloat16, n, H, dScratchGs, 1, dScratchP, dScratchS,
                                  vcollScaleLinear, stream));
        CUCHECK(cudaMemcpyAsync(&g, dScratchGs, 4, cudaMemcpyDeviceToHost, stream));
        CUCHECK(cudaStreamSynchronize(stream));
        minGs = g < minGs ? g : minGs;
      }
      VCHECK(vcollNvfp4Quantize(dScratchX, vcollBfloat16, n, H, t->globalScale, 0, dScratchP, dScratchS,
                                vcollScaleLinear, stream));
      CUCHECK(benchMoeDiff(dScratchP, (char*)t->hidden + row * (H / 2), n * (H / 2), dWrong, stream));
      CUCHECK(benchMoeDiff(dScratchS, (char*)t->scales + row * (H / 16), n * (H / 16), dWrong, stream));
    }
    row += n;
  }
  if (computed && row > 0 && gs != minGs) {
    unsigned long long one = 1, w;
    /* on `stream`, after the diff kernels above */
    CUCHECK(cudaMemcpyAsync(&w, dWrong, 8, cudaMemcpyDeviceToHost, stream));
    CUCHECK(cudaStreamSynchronize(stream));
    w += one;
    CUCHECK(cudaMemcpyAsync(dWrong, &w, 8, cudaMemcpyHostToDevice, stream));
    CUCHECK(cudaStreamSynchronize(stream));
  }
}

/* Poisons the outputs variant v writes (all N rows), so that the check after
 * its timed calls cannot pass on what an earlier size or shape left there.
 * Not fp4's global scale: the static scale lives in the output. */
static void poisonOutputs(int v, struct ctx* c, size_t N) {
  const size_t mine = c->counts[rank];
  const vcollMoeTokens_t* t = v == V_FP4 ? &c->bFp4.tokens : v == V_FP4C ? &c->bFp4c.tokens : &c->bBf16.tokens;
  if (v == V_FP4 || v == V_FP4C || v == V_BF16) {
    CUCHECK(cudaMemsetAsync(t->hidden, 0xA5, v == V_BF16 ? N * H * 2 : N * (H / 2), stream));
    if (v != V_BF16) CUCHECK(cudaMemsetAsync(t->scales, 0xA5, N * (H / 16), stream));
    if (v == V_FP4C) CUCHECK(cudaMemsetAsync(t->globalScale, 0xA5, 4, stream));
    CUCHECK(cudaMemsetAsync(t->topkIds, 0xA5, N * topk * 4, stream));
    CUCHECK(cudaMemsetAsync(t->topkWeights, 0xA5, N * topk * 4, stream));
  } else if (v == V_COMB || v == V_COMB32 || v == V_COMB32P) {
    CUCHECK(cudaMemsetAsync(v == V_COMB ? c->bFp4.combined : c->bBf16.combined, 0xA5, mine * H * 2, stream));
  }
}

/* Routing rows: rank r's ids and weights are its fill. */
static void checkRouting(const size_t* counts, const vcollMoeTokens_t* t) {
  size_t row = 0;
  for (int r = 0; r < nranks; r++) {
    size_t n = counts[r];
    if (n) {
      CUCHECK(benchMoeFillWords(dScratchP, n * topk, SEED_IDS + (uint64_t)r, (uint32_t)nExperts, stream));
      CUCHECK(benchMoeDiff(dScratchP, (char*)t->topkIds + row * topk * 4, n * topk * 4, dWrong, stream));
      CUCHECK(benchMoeFillWords(dScratchP, n * topk, SEED_W + (uint64_t)r, 0, stream));
      CUCHECK(benchMoeDiff(dScratchP, (char*)t->topkWeights + row * topk * 4, n * topk * 4, dWrong, stream));
    }
    row += n;
  }
}

static void checkBf16(const size_t* counts, const vcollMoeTokens_t* t) {
  size_t row = 0;
  for (int r = 0; r < nranks; r++) {
    CUCHECK(benchMoeCheckHidden((char*)t->hidden + row * H * 2, counts[r] * H, SEED_HIDDEN + (uint64_t)r, dWrong,
                                stream));
    row += counts[r];
  }
}

static void checkCombine(const size_t* counts, const void* out) {
  size_t displ = 0;
  for (int r = 0; r < rank; r++) displ += counts[r];
  CUCHECK(benchMoeCheckCombine(out, counts[rank] * H, displ * H, SEED_PARTIAL, nranks, dWrong, stream));
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  size_t tMin = 1, tMax = 16384, factor = 2;
  char shapes[128] = "equal,skew,moe";
  /* Every flag takes a value, read strictly (cli_args.h); a bad one is named. */
  for (int i = 1; i < argc; i += 2) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    int ok = 1;
    if (v == NULL) {
      if (rank == 0) fprintf(stderr, "%s: no value (every option takes one)\n", a);
      MPI_Abort(MPI_COMM_WORLD, 2);
    } else if (!strcmp(a, "-b")) ok = cliSize(v, 1, (size_t)1 << 24, &tMin);
    else if (!strcmp(a, "-e")) ok = cliSize(v, 1, (size_t)1 << 24, &tMax);
    else if (!strcmp(a, "-f")) ok = cliSize(v, 2, 1024, &factor);
    else if (!strcmp(a, "-H")) ok = cliSize(v, 16, (size_t)1 << 20, &H) && H % 16 == 0;
    else if (!strcmp(a, "-k")) ok = cliInt(v, 1, 1024, &topk);
    else if (!strcmp(a, "-E")) ok = cliInt(v, 1, 1 << 20, &nExperts);
    else if (!strcmp(a, "-s")) ok = snprintf(shapes, sizeof(shapes), "%s", v) < (int)sizeof(shapes);
    else if (!strcmp(a, "-n")) ok = cliInt(v, 1, 1 << 20, &iters);
    else if (!strcmp(a, "-w")) ok = cliInt(v, 0, 1 << 20, &warmup);
    else if (!strcmp(a, "-c")) ok = cliInt(v, 0, 1, &check);
    else if (!strcmp(a, "-G")) ok = cliInt(v, 0, 1 << 16, &graphCalls);
    else {
      if (rank == 0) fprintf(stderr, "unknown option %s (see the comment at the top of moe_dispatch_perf.c)\n", a);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
    if (!ok) {
      if (rank == 0)
        fprintf(stderr, "%s: bad value '%s' (-b/-e 1..2^24 tokens per rank, -f 2..1024, -H a multiple of 16, "
                        "-k 1..1024, -E >= 1, -n >= 1, -w >= 0, -c 0|1, -G >= 0)\n", a, v ? v : "(none)");
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  {
    char list[128];
    int n = 0;
    snprintf(list, sizeof(list), "%s", shapes);
    for (char* sh = strtok(list, ","); sh; sh = strtok(NULL, ","), n++)
      if (strcmp(sh, "equal") && strcmp(sh, "skew") && strcmp(sh, "moe")) {
        if (rank == 0) fprintf(stderr, "-s: unknown shape '%s' (equal, skew, moe)\n", sh);
        MPI_Abort(MPI_COMM_WORLD, 2);
      }
    if (n == 0) {
      if (rank == 0) fprintf(stderr, "-s names no shape\n");
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  if (tMin > tMax || topk > nExperts || (graphCalls > 0 && warmup < 1) || nranks > 64) {
    if (rank == 0) fprintf(stderr, "bad options (need -b <= -e, -k <= -E, -w >= 1 with -G, at most 64 ranks)\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  vcollComm_t comm;
  VCHECK(vcollCommInitMPI(MPI_COMM_WORLD, vcollBackendNccl, &comm));
  CUCHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUCHECK(cudaEventCreate(&ev0));
  CUCHECK(cudaEventCreate(&ev1));

  /* Largest sizes over the sweep. */
  size_t counts[64], maxN = 1, maxMine = 1;
  char shapeList[128];
  snprintf(shapeList, sizeof(shapeList), "%s", shapes);
  for (char* s = strtok(shapeList, ","); s; s = strtok(NULL, ","))
    for (size_t T = tMin; T <= tMax; T *= factor) {
      makeCounts(s, T, counts);
      size_t N = 0;
      for (int r = 0; r < nranks; r++) N += counts[r];
      maxN = N > maxN ? N : maxN;
      maxMine = counts[rank] > maxMine ? counts[rank] : maxMine;
    }

  struct ctx c;
  memset(&c, 0, sizeof(c));
  vcollMoeConfig_t cfg = {0};
  cfg.hidden = H;
  cfg.format = vcollMoeFp4;
  cfg.routing = vcollMoeRoutingTopk;
  cfg.topk = topk;
  cfg.scale = vcollMoeScaleGiven;
  cfg.accum = vcollMoeAccumBf16;
  cfg.allocBuffers = 1;
  VCHECK(vcollMoeWorkspaceCreate(comm, &cfg, maxN, &c.wsFp4));
  cfg.scale = vcollMoeScaleComputed;
  VCHECK(vcollMoeWorkspaceCreate(comm, &cfg, maxN, &c.wsFp4c));
  cfg.format = vcollMoeBf16;
  cfg.accum = vcollMoeAccumFp32;
  VCHECK(vcollMoeWorkspaceCreate(comm, &cfg, maxN, &c.wsBf16));
  VCHECK(vcollMoeWorkspaceBuffers(c.wsFp4, &c.bFp4));
  VCHECK(vcollMoeWorkspaceBuffers(c.wsFp4c, &c.bFp4c));
  VCHECK(vcollMoeWorkspaceBuffers(c.wsBf16, &c.bBf16));

  /* Inputs: this rank's tokens and routing, the partials, a static scale
   * calibrated for the data (|x| < 4: 448 * 6 / 4). */
  void *dX, *dIds, *dW;
  CUCHECK(cudaMalloc(&dX, maxMine * H * 2));
  CUCHECK(cudaMalloc(&dIds, maxMine * topk * 4));
  CUCHECK(cudaMalloc(&dW, maxMine * topk * 4));
  const float gs = 2688.0f / 4.0f;
  CUCHECK(benchMoeFill(dX, maxMine * H, SEED_HIDDEN + (uint64_t)rank, 0, stream));
  CUCHECK(benchMoeFillWords(dIds, maxMine * topk, SEED_IDS + (uint64_t)rank, (uint32_t)nExperts, stream));
  CUCHECK(benchMoeFillWords(dW, maxMine * topk, SEED_W + (uint64_t)rank, 0, stream));
  CUCHECK(benchMoeFill(c.bFp4.partials, maxN * H, SEED_PARTIAL + (uint64_t)rank, 1, stream));
  /* The static scale lives in the output's globalScale, as a server keeps it:
   * in->globalScale == out->globalScale, so dispatch does not copy it. */
  CUCHECK(cudaMemcpy(c.bFp4.tokens.globalScale, &gs, 4, cudaMemcpyHostToDevice));
  c.in = (vcollMoeLocal_t){dX, dIds, dW, NULL, c.bFp4.tokens.globalScale};
  const size_t bf16Row = H * 2 + (size_t)topk * 8, fp4Row = H / 2 + H / 16 + (size_t)topk * 8;
  CUCHECK(cudaMalloc(&c.copySrc, maxN * bf16Row));
  CUCHECK(cudaMalloc(&c.copyDst, maxN * bf16Row));
  CUCHECK(benchMoeFill(c.copySrc, maxN * bf16Row / 2, 77, 0, stream));
  CUCHECK(cudaMalloc((void**)&dWrong, 8));
  CUCHECK(cudaMalloc((void**)&dScratchGs, 4));
  CUCHECK(cudaMalloc(&dScratchX, maxN * H * 2 > 0 ? maxN * H * 2 : 1));
  CUCHECK(cudaMalloc(&dScratchP, maxN * (H / 2 > (size_t)topk * 4 ? H / 2 : (size_t)topk * 4)));
  CUCHECK(cudaMalloc(&dScratchS, maxN * (H / 16)));
  CUCHECK(cudaStreamSynchronize(stream));

  if (rank == 0) {
    int ver = 0;
    vcollGetVersion(&ver);
    printf("# moe_dispatch_perf: %d ranks, H %zu, top-%d, %d experts, iters %d, warmup %d, check %d, vcoll %d\n",
           nranks, H, topk, nExperts, iters, warmup, check, ver);
    printf("# bytes per token: fp4 %zu (payload %zu + scales %zu + routing %d), bf16 %zu (hidden %zu + routing %d)\n",
           fp4Row, H / 2, H / 16, topk * 8, bf16Row, H * 2, topk * 8);
    printf("# times in us: median over iterations of the max over ranks; speedup = bf16 / fp4 (fp4c: computed scale)\n");
    if (graphCalls > 0)
      printf("# timing: per call inside a CUDA graph of %d back-to-back calls (replays after eager warm-up)\n",
             graphCalls);
    else
      printf("# timing: one eager call between two events (includes the host's time to issue it)\n");
    printf("# d2d: cudaMemcpy of the bytes bf16 dispatch gathers (N x %zu) on one GPU\n", bf16Row);
    printf("# quant: the quantize of this rank's tokens alone (max over ranks); spd_q = bf16 / (fp4 - quant)\n");
    printf("#%7s %7s %8s %7s %12s %12s %9s %9s %9s %8s %8s %9s %9s %9s %9s %8s %7s %-8s %-8s %6s\n", "shape",
           "tok/rk", "N", "maxrk", "fp4_bytes", "bf16_bytes", "fp4", "fp4c", "bf16", "speedup", "spd_c", "comb",
           "comb32", "c32p", "d2d", "quant", "spd_q", "agv_fp4", "agv_bf16", "#wrong");
  }
  const char* userCombine32 = getenv("VCOLL_MOE_COMBINE32");
  if (userCombine32) userCombine32 = strdup(userCombine32);
  double minSpeedAll = INFINITY, minSpeed1k = INFINITY, minSpeedCAll = INFINITY;
  unsigned long long wrongTotal = 0;
  snprintf(shapeList, sizeof(shapeList), "%s", shapes);
  for (char* s = strtok(shapeList, ","); s; s = strtok(NULL, ","))
    for (size_t T = tMin; T <= tMax; T *= factor) {
      makeCounts(s, T, counts);
      size_t N = 0, mx = 0;
      for (int r = 0; r < nranks; r++) {
        N += counts[r];
        mx = counts[r] > mx ? counts[r] : mx;
      }
      c.counts = counts;
      c.copyBytes = N * bf16Row;
      double t[NV];
      const runFn fns[NV] = {runFp4, runFp4c, runBf16, runComb, runComb32, runComb32, runD2d, runQuant};
      char agvFp4[24] = "-", agvBf16[24] = "-";
      CUCHECK(cudaMemsetAsync(dWrong, 0, 8, stream));
      for (int v = 0; v < NV; v++) {
        if (check && N > 0) poisonOutputs(v, &c, N);
        /* comb32 pinned to widen, c32p to p2p (read at each call; set outside the timing) */
        if (v == V_COMB32 || v == V_COMB32P) setenv("VCOLL_MOE_COMBINE32", v == V_COMB32 ? "widen" : "p2p", 1);
        t[v] = timeIt(fns[v], &c);
        if (v == V_COMB32 || v == V_COMB32P) {
          if (userCombine32) setenv("VCOLL_MOE_COMBINE32", userCombine32, 1);
          else unsetenv("VCOLL_MOE_COMBINE32");
        }
        if (v == V_FP4 || v == V_BF16) {
          const char* a = vcollCommLastAlgo(comm, vcollCollAllGatherV);
          snprintf(v == V_FP4 ? agvFp4 : agvBf16, 24, "%s", a ? a : "-");
        }
        if (!check || N == 0) continue;
        if (v == V_FP4) { checkFp4(counts, &c.bFp4.tokens, 0); checkRouting(counts, &c.bFp4.tokens); }
        if (v == V_FP4C) { checkFp4(counts, &c.bFp4c.tokens, 1); checkRouting(counts, &c.bFp4c.tokens); }
        if (v == V_BF16) { checkBf16(counts, &c.bBf16.tokens); checkRouting(counts, &c.bBf16.tokens); }
        if (v == V_COMB) checkCombine(counts, c.bFp4.combined);
        if (v == V_COMB32 || v == V_COMB32P) checkCombine(counts, c.bBf16.combined);
      }
      unsigned long long w = 0, wAll = 0;
      /* the check kernels run on the non-blocking `stream`: wait for them */
      CUCHECK(cudaStreamSynchronize(stream));
      CUCHECK(cudaMemcpy(&w, dWrong, 8, cudaMemcpyDeviceToHost));
      MPI_Allreduce(&w, &wAll, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
      wrongTotal += wAll;
      double sp = t[V_BF16] / t[V_FP4], spc = t[V_BF16] / t[V_FP4C];
      if (N > 0) {
        minSpeedAll = sp < minSpeedAll ? sp : minSpeedAll;
        minSpeedCAll = spc < minSpeedCAll ? spc : minSpeedCAll;
        if (T >= 1024) minSpeed1k = sp < minSpeed1k ? sp : minSpeed1k;
      }
      if (rank == 0) {
        char spq[16] = "-"; /* the difference of two medians: only meaningful when the gather dominates */
        if (t[V_FP4] > t[V_QUANT]) snprintf(spq, sizeof(spq), "%.2f", t[V_BF16] / (t[V_FP4] - t[V_QUANT]));
        printf(" %7s %7zu %8zu %7zu %12zu %12zu %9.1f %9.1f %9.1f %8.2f %8.2f %9.1f %9.1f %9.1f %9.1f %8.1f %7s"
               " %-8s %-8s %6s\n",
               s, T, N, mx, N * fp4Row, N * bf16Row, t[V_FP4], t[V_FP4C], t[V_BF16], sp, spc, t[V_COMB], t[V_COMB32],
               t[V_COMB32P], t[V_D2D], t[V_QUANT], spq, agvFp4, agvBf16, check ? (wAll ? "WRONG" : "0") : "-");
        if (check && wAll) printf("#   ^ %llu wrong bytes/elements\n", wAll);
        fflush(stdout);
      }
    }
  if (rank == 0) {
    /* INFINITY: no point measured in that range (e.g. -e below 1024). */
    char all[32] = "-", from1k[32] = "-", allC[32] = "-";
    if (minSpeedAll != INFINITY) snprintf(all, sizeof(all), "%.2f", minSpeedAll);
    if (minSpeed1k != INFINITY) snprintf(from1k, sizeof(from1k), "%.2f", minSpeed1k);
    if (minSpeedCAll != INFINITY) snprintf(allC, sizeof(allC), "%.2f", minSpeedCAll);
    printf("# min speedup fp4/bf16 dispatch (given scale): %s over all sizes, %s from 1024 tokens/rank up\n", all,
           from1k);
    printf("# min speedup fp4/bf16 dispatch (computed scale): %s over all sizes\n", allC);
    printf("# check: %s (%llu wrong)\n", check ? (wrongTotal ? "FAILED" : "OK") : "off", wrongTotal);
  }
  cudaFree(dX); cudaFree(dIds); cudaFree(dW); cudaFree(c.copySrc); cudaFree(c.copyDst);
  cudaFree(dWrong); cudaFree(dScratchGs); cudaFree(dScratchX); cudaFree(dScratchP); cudaFree(dScratchS);
  vcollMoeWorkspaceDestroy(c.wsFp4);
  vcollMoeWorkspaceDestroy(c.wsFp4c);
  vcollMoeWorkspaceDestroy(c.wsBf16);
  vcollCommDestroy(comm);
  MPI_Finalize();
  return wrongTotal ? 1 : 0;
}
