/* A toy MoE layer around vcoll's dispatch and combine, checked against a
 * single-process bf16 reference of the same layer.
 *
 *   mpirun -np 4 ./moe_layer [--tokens T] [--hidden H] [--ffn F] [--experts E] [--topk K]
 *                            [--backend auto|nccl|host] [--seed S]
 *
 * Every rank holds an uneven number of bf16 tokens (about T; every third
 * rank none) and routes them itself (router logits, top-k, softmax over the
 * chosen k). The E experts are split across ranks in contiguous blocks;
 * expert e computes W2_e silu(W1_e x). One layer step:
 *   dispatch (NVFP4, global scale computed over all ranks' tokens, one
 *   all-gather of payload, scales, ids, weights) -> dequantize -> local
 *   experts on every gathered token -> combine (fp32-accumulated
 *   reduce-scatter of the [N, H] bf16 partial outputs).
 * Runs on GPUs (NCCL backend, one per rank) when every rank sees one, else
 * on the MPI host backend with the same API.
 *
 * Reported (relative Frobenius norms over all ranks' tokens):
 *   err       |y - y_ref| / |y_ref|, y_ref the layer on the bf16 tokens
 *   err_quant |y_q - y_ref| / |y_ref|, y_q the same reference layer on the
 *             NVFP4-dequantized tokens: the error NVFP4 quantization of the
 *             activations alone explains
 *   err_rest  |y - y_q| / |y_ref|: what is left (bf16 partial outputs and
 *             result, fp32 summation order)
 * The run passes when err <= err_quant + 2^-7 (two bf16 roundings of
 * 2^-9 relative each, with margin) and err_rest <= 2^-7. */
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
#include "cli_args.h" /* bench/common: strict numbers from the command line */

int moeExpertsGpu(const float* x, const int32_t* ids, const float* w, size_t N, int H, int F, int topk,
                  int firstExpert, int numLocal, const float* W1, const float* W2, void* partials,
                  cudaStream_t stream);

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

static int gpu;
static void* hostAlloc(size_t n) {
  void* p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "moe_layer: cannot allocate %zu bytes of host memory\n", n);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return p;
}
/* Device memory on the NCCL backend, host memory on the host backend. */
static void* alloc(size_t n) {
  void* p = NULL;
  if (!gpu) return hostAlloc(n);
  CUCHECK(cudaMalloc(&p, n ? n : 1));
  return p;
}
static void put(void* d, const void* s, size_t n) {
  if (gpu) CUCHECK(cudaMemcpy(d, s, n, cudaMemcpyHostToDevice));
  else memcpy(d, s, n);
}
static void get(void* d, const void* s, size_t n) {
  if (gpu) CUCHECK(cudaMemcpy(d, s, n, cudaMemcpyDeviceToHost));
  else memcpy(d, s, n);
}
static void release(void* p) {
  if (gpu) cudaFree(p);
  else free(p);
}

/* ---- deterministic random numbers (the same on every rank) ---------------- */

static uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double normal(uint64_t key) { /* Box-Muller from two hashes */
  double u1 = ((mix(key) >> 11) + 1) * (1.0 / 9007199254740993.0), u2 = (mix(key ^ 0xabcdef) >> 11) * (1.0 / 9007199254740992.0);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
static uint64_t key(uint64_t seed, uint64_t what, uint64_t a, uint64_t b) {
  return mix(seed ^ mix(what ^ mix(a ^ mix(b))));
}

static uint16_t toBf16(float f) { /* round to nearest even (inputs are finite) */
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float fromBf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* ---- the layer ------------------------------------------------------------- */

struct layer {
  int H, F, E, K;
  float *Wg, *W1, *W2; /* router [E, H]; W1 [E, F, H]; W2 [E, H, F] (host, all experts) */
};

static float siluf(float v) { return v / (1.0f + expf(-v)); }

/* Routing of token x: top-k of the router logits, softmax over the chosen k. */
static void route(const struct layer* L, const float* x, int32_t* ids, float* w) {
  float logit[256];
  for (int e = 0; e < L->E; e++) {
    float s = 0;
    for (int j = 0; j < L->H; j++) s += L->Wg[(size_t)e * L->H + j] * x[j];
    logit[e] = s;
  }
  for (int k = 0; k < L->K; k++) {
    int best = -1;
    for (int e = 0; e < L->E; e++) {
      int taken = 0;
      for (int q = 0; q < k; q++) taken |= ids[q] == e;
      if (!taken && (best < 0 || logit[e] > logit[best])) best = e;
    }
    ids[k] = best;
  }
  float mx = logit[ids[0]], sum = 0;
  for (int k = 0; k < L->K; k++) sum += w[k] = expf(logit[ids[k]] - mx);
  for (int k = 0; k < L->K; k++) w[k] /= sum;
}

/* acc[H] += sum over k of w_k * expert_{ids_k}(x) for experts in [e0, e1). */
static void experts(const struct layer* L, const float* x, const int32_t* ids, const float* w, int e0, int e1,
                    float* acc, float* h) {
  for (int k = 0; k < L->K; k++) {
    int e = ids[k];
    if (e < e0 || e >= e1) continue;
    const float* w1 = L->W1 + (size_t)e * L->F * L->H;
    const float* w2 = L->W2 + (size_t)e * L->H * L->F;
    for (int f = 0; f < L->F; f++) {
      float s = 0;
      for (int j = 0; j < L->H; j++) s += w1[(size_t)f * L->H + j] * x[j];
      h[f] = siluf(s);
    }
    for (int j = 0; j < L->H; j++) {
      float s = 0;
      for (int f = 0; f < L->F; f++) s += w2[(size_t)j * L->F + f] * h[f];
      acc[j] += w[k] * s;
    }
  }
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, nranks;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  size_t tokens = 40;
  struct layer L = {256, 128, 8, 2, NULL, NULL, NULL};
  uint64_t seed = 2024;
  vcollBackend_t backend = vcollBackendAuto;
  for (int i = 1; i < argc; i += 2) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (i + 1 >= argc) {
      if (rank == 0) fprintf(stderr, "option %s has no value\n", a);
      MPI_Abort(MPI_COMM_WORLD, 2);
    } else if (!strcmp(a, "--tokens") || !strcmp(a, "--hidden") || !strcmp(a, "--ffn") ||
               !strcmp(a, "--experts") || !strcmp(a, "--topk") || !strcmp(a, "--seed")) {
      unsigned long long u = 0;
      int ok = !strcmp(a, "--tokens")    ? cliSize(v, 2, (size_t)1 << 20, &tokens)
               : !strcmp(a, "--hidden")  ? cliInt(v, 16, 1 << 16, &L.H)
               : !strcmp(a, "--ffn")     ? cliInt(v, 1, 1 << 16, &L.F)
               : !strcmp(a, "--experts") ? cliInt(v, 1, 256, &L.E)
               : !strcmp(a, "--topk")    ? cliInt(v, 1, 256, &L.K)
                                         : cliU64(v, 0, ~0ull, &u);
      if (!strcmp(a, "--seed")) seed = u;
      if (!ok) {
        if (rank == 0)
          fprintf(stderr, "%s: bad value '%s' (--tokens 2..2^20, --hidden 16..65536 a multiple of 16, --ffn 1..65536, "
                          "--experts 1..256, --topk 1..experts, --seed an unsigned integer)\n", a, v);
        MPI_Abort(MPI_COMM_WORLD, 2);
      }
    } else if (!strcmp(a, "--backend") && (!strcmp(v, "nccl") || !strcmp(v, "host") || !strcmp(v, "auto")))
      backend = !strcmp(v, "nccl") ? vcollBackendNccl : !strcmp(v, "host") ? vcollBackendHost : vcollBackendAuto;
    else {
      if (rank == 0)
        fprintf(stderr, "unknown option %s %s (--tokens, --hidden, --ffn, --experts, --topk, --seed, "
                        "--backend nccl|host|auto)\n", a, v);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  if (L.H < 16 || L.H % 16 || L.F < 1 || L.E < 1 || L.E > 256 || L.K < 1 || L.K > L.E) {
    if (rank == 0) fprintf(stderr, "need hidden a multiple of 16, 1 <= topk <= experts <= 256, ffn >= 1\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  /* --backend nccl without one GPU per rank: exit 77 on every rank (Meson: SKIP). */
  int ndev = 0, localSize = 1;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess) ndev = 0;
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
  MPI_Comm_size(local, &localSize);
  MPI_Comm_free(&local);
  /* VCOLL_SHARE_GPU, tests only: ranks share GPUs (README: Environment; read as the library does) */
  const int shared = cliEnvFlag("VCOLL_SHARE_GPU");
  int noGpu = ndev < localSize && !(ndev > 0 && shared), someNoGpu;
  MPI_Allreduce(&noGpu, &someNoGpu, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (backend == vcollBackendNccl && someNoGpu) {
    if (rank == 0) printf("moe layer: --backend nccl needs one GPU per rank (%d visible here): skipped\n", ndev);
    MPI_Finalize();
    return 77;
  }
  vcollComm_t comm;
  VCHECK(vcollCommInitMPI(MPI_COMM_WORLD, backend, &comm));
  vcollBackend_t be;
  VCHECK(vcollCommBackend(comm, &be));
  gpu = be == vcollBackendNccl;
  const size_t H = (size_t)L.H, F = (size_t)L.F;
  const int K = L.K, e0 = rank * L.E / nranks, e1 = (rank + 1) * L.E / nranks;

  /* Weights, the same on every rank (each rank uses the router and its own experts). */
  L.Wg = hostAlloc(sizeof(float) * L.E * H);
  L.W1 = hostAlloc(sizeof(float) * L.E * F * H);
  L.W2 = hostAlloc(sizeof(float) * L.E * H * F);
  for (size_t i = 0; i < (size_t)L.E * H; i++) L.Wg[i] = (float)(normal(key(seed, 1, i, 0)) / sqrt((double)H));
  for (size_t i = 0; i < (size_t)L.E * F * H; i++) {
    L.W1[i] = (float)(normal(key(seed, 2, i, 0)) / sqrt((double)H));
    L.W2[i] = (float)(normal(key(seed, 3, i, 0)) / sqrt((double)F));
  }

  /* This rank's tokens: uneven counts, every third rank none. */
  const size_t n = rank % 3 == 1 ? 0 : tokens / 2 + tokens * (size_t)rank / (size_t)nranks + (size_t)rank;
  uint16_t* x = hostAlloc(n * H * 2);
  float* xf = hostAlloc(n * H * 4);
  int32_t* ids = hostAlloc(n * K * 4);
  float* w = hostAlloc(n * K * 4);
  for (size_t t = 0; t < n; t++) {
    double mag = 0.5 + 4.0 * ((mix(key(seed, 4, (uint64_t)rank, t)) >> 11) * (1.0 / 9007199254740992.0));
    for (size_t j = 0; j < H; j++) {
      x[t * H + j] = toBf16((float)(mag * normal(key(seed, 5, (uint64_t)rank << 32 | t, j))));
      xf[t * H + j] = fromBf16(x[t * H + j]);
    }
    route(&L, xf + t * H, ids + t * K, w + t * K);
  }

  /* Counts from every rank's local count, then a workspace for this N. */
  size_t* counts = hostAlloc(sizeof(size_t) * nranks);
  VCHECK(vcollMoeGatherCounts(comm, n, counts, 0));
  size_t N = 0, displ = 0;
  for (int r = 0; r < nranks; r++) {
    if (r == rank) displ = N;
    N += counts[r];
  }
  vcollMoeConfig_t cfg = {0};
  cfg.hidden = H;
  cfg.format = vcollMoeFp4;
  cfg.routing = vcollMoeRoutingTopk;
  cfg.topk = K;
  cfg.scale = vcollMoeScaleComputed;
  cfg.accum = vcollMoeAccumFp32;
  cfg.allocBuffers = 1;
  vcollMoeWorkspace_t ws;
  VCHECK(vcollMoeWorkspaceCreate(comm, &cfg, N ? N : 1, &ws));
  vcollMoeBuffers_t b;
  VCHECK(vcollMoeWorkspaceBuffers(ws, &b));

  void* dX = alloc(n * H * 2);
  void* dIds = alloc(n * K * 4);
  void* dW = alloc(n * K * 4);
  put(dX, x, n * H * 2);
  put(dIds, ids, n * K * 4);
  put(dW, w, n * K * 4);

  /* 1. dispatch: quantize + one all-gather. */
  vcollMoeLocal_t in = {dX, dIds, dW, NULL, NULL};
  VCHECK(vcollMoeDispatch(ws, counts, &in, &b.tokens, 0));

  /* 2. dequantize all N tokens to fp32, 3. local experts, 4. combine. */
  float* dXq = alloc(N * H * 4);
  if (gpu) {
    float *dW1 = alloc((size_t)(e1 - e0) * F * H * 4), *dW2 = alloc((size_t)(e1 - e0) * H * F * 4);
    put(dW1, L.W1 + (size_t)e0 * F * H, (size_t)(e1 - e0) * F * H * 4);
    put(dW2, L.W2 + (size_t)e0 * H * F, (size_t)(e1 - e0) * H * F * 4);
    VCHECK(vcollNvfp4Dequantize(b.tokens.hidden, b.tokens.scales, vcollScaleLinear, b.tokens.globalScale, N, H, dXq,
                                vcollFloat32, 0));
    CUCHECK(moeExpertsGpu(dXq, b.tokens.topkIds, b.tokens.topkWeights, N, L.H, L.F, K, e0, e1 - e0, dW1, dW2,
                          b.partials, 0));
    VCHECK(vcollMoeCombine(ws, counts, b.partials, b.combined, 0));
    CUCHECK(cudaDeviceSynchronize());
    release(dW1);
    release(dW2);
  } else {
    VCHECK(vcollNvfp4DequantizeRef(b.tokens.hidden, b.tokens.scales, vcollScaleLinear, b.tokens.globalScale, N, H,
                                   dXq, vcollFloat32));
    float* acc = hostAlloc(H * 4);
    float* h = hostAlloc(F * 4);
    uint16_t* part = b.partials;
    for (size_t t = 0; t < N; t++) {
      memset(acc, 0, H * 4);
      experts(&L, dXq + t * H, b.tokens.topkIds + t * K, b.tokens.topkWeights + t * K, e0, e1, acc, h);
      for (size_t j = 0; j < H; j++) part[t * H + j] = toBf16(acc[j]);
    }
    free(acc);
    free(h);
    VCHECK(vcollMoeCombine(ws, counts, b.partials, b.combined, 0));
  }
  uint16_t* y = hostAlloc(n * H * 2);
  get(y, b.combined, n * H * 2);
  float gs;
  get(&gs, b.tokens.globalScale, 4);

  /* References for this rank's tokens: the layer with all experts on the
   * bf16 tokens (y_ref) and on the same tokens quantized with the same
   * global scale and dequantized (y_q). */
  double s[4] = {0, 0, 0, 0}; /* |y_ref|^2, |y - y_ref|^2, |y_q - y_ref|^2, |y - y_q|^2 */
  {
    uint8_t* payload = hostAlloc(n * H / 2);
    uint8_t* scales = hostAlloc(n * H / 16);
    float* xq = hostAlloc(n * H * 4);
    float* acc = hostAlloc(H * 4);
    float* accq = hostAlloc(H * 4);
    float* h = hostAlloc(F * 4);
    VCHECK(vcollNvfp4QuantizeRef(x, vcollBfloat16, n, H, &gs, 0, payload, scales, vcollScaleLinear));
    VCHECK(vcollNvfp4DequantizeRef(payload, scales, vcollScaleLinear, &gs, n, H, xq, vcollFloat32));
    for (size_t t = 0; t < n; t++) {
      memset(acc, 0, H * 4);
      memset(accq, 0, H * 4);
      experts(&L, xf + t * H, ids + t * K, w + t * K, 0, L.E, acc, h);
      experts(&L, xq + t * H, ids + t * K, w + t * K, 0, L.E, accq, h);
      for (size_t j = 0; j < H; j++) {
        double ref = fromBf16(toBf16(acc[j])), q = fromBf16(toBf16(accq[j])), got = fromBf16(y[t * H + j]);
        s[0] += ref * ref;
        s[1] += (got - ref) * (got - ref);
        s[2] += (q - ref) * (q - ref);
        s[3] += (got - q) * (got - q);
      }
    }
    free(payload); free(scales); free(xq); free(acc); free(accq); free(h);
  }
  double tot[4];
  MPI_Allreduce(s, tot, 4, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  const double norm = sqrt(tot[0]) > 0 ? sqrt(tot[0]) : 1;
  const double err = sqrt(tot[1]) / norm, errQ = sqrt(tot[2]) / norm, errRest = sqrt(tot[3]) / norm;
  const double tolBf16 = ldexp(1.0, -7);
  const int pass = err <= errQ + tolBf16 && errRest <= tolBf16 && isfinite(err) && N > 0;

  printf("rank %d: %zu tokens (rows [%zu, %zu) of %zu), experts [%d, %d)\n", rank, n, displ, displ + n, N, e0, e1);
  fflush(stdout);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    printf("moe layer: %d ranks, backend %s, N %zu tokens, hidden %zu, ffn %zu, %d experts, top-%d, "
           "NVFP4 dispatch (global scale %g, computed), fp32-accumulated combine\n",
           nranks, gpu ? "nccl" : "host", N, H, F, L.E, K, gs);
    printf("  bytes per token on the wire: %zu (bf16 would be %zu) + routing %d\n", H / 2 + H / 16, H * 2, K * 8);
    printf("  err       |y - y_ref| / |y_ref|   = %.3e\n", err);
    printf("  err_quant |y_q - y_ref| / |y_ref| = %.3e  (NVFP4 quantization of the activations alone)\n", errQ);
    printf("  err_rest  |y - y_q| / |y_ref|     = %.3e  (bf16 partials and output, summation order)\n", errRest);
    printf("check: %s (err <= err_quant + 2^-7 and err_rest <= 2^-7)\n", pass ? "OK" : "FAILED");
  }
  release(dX); release(dIds); release(dW); release(dXq);
  free(x); free(xf); free(ids); free(w); free(y); free(counts);
  free(L.Wg); free(L.W1); free(L.W2);
  VCHECK(vcollMoeWorkspaceDestroy(ws));
  vcollCommDestroy(comm);
  MPI_Finalize();
  return pass ? 0 : 1;
}
