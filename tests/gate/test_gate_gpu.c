/* Routing gate kernel against the CPU reference (suite gpu). Fresh random
 * inputs every run; ids must match exactly and weights within 1 ulp (the
 * kernel is built to match bit for bit; mismatching bits are counted and
 * printed). Outputs are poisoned, with a guard after them that must stay
 * poisoned. Without a GPU every test is skipped and the program exits 77. */
#include "vt.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll/gate.h"
#include "vcoll_hostfloat.h"

#define CUDA_OK(call)                                                                        \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess) fail_msg("%s failed: %s", #call, cudaGetErrorString(e_));         \
  } while (0)

enum { kGuard = 256 }; /* poisoned bytes checked after each output */

int gateTestSigmoidApprox(float* maxErr, uint32_t* worstX, unsigned long long* nanMismatch, float* bound);


typedef struct {
  int E, G, tg, topk, nf, renorm, scaleIn;
  vcollDataType_t type;
  size_t T;
  int ties;     /* logits and bias on a coarse grid: many exact ties */
  int noBias;
  int offset;   /* logits start this many elements into the allocation */
  int nearTies; /* with ties: each bias moved by 0..40 ulp, so that scores differ in their last bits only */
  int nans;     /* about one logit in 64 is NaN (in about one token in 8) */
  int biasMode; /* 1: every bias >= 0; 2: as 1, and -0.0;
                 * 3: one bias NaN; 4: one bias +inf, one -inf; 5: spread over about +-300 and 6: all
                 * near 1500 (both: the segment kernel's 8-bit-class keys with finite biases); 7: N(0, 2)
                 * (fixed-point keys in a wider binade); 8: all near 1000 (fixed-point keys with the
                 * exact scores' rounding, 2^-14, as their largest error) */
  int wide;     /* logits 40 times wider in about one token in 4 (past the sigmoid's clamps) */
  int nanKinds; /* with nans: NaNs of both signs and with payloads */
} Case;

static int runCase(const Case* c, vtRng* rng, cudaStream_t stream) {
  const vcollMoeGateParams_t p = {c->E, c->G, c->tg, c->topk, c->nf, c->renorm, c->scaleIn, 2.5f};
  const size_t T = c->T, E = (size_t)c->E, K = (size_t)(c->topk + c->nf);
  const size_t esz = c->type == vcollFloat32 ? 4 : 2;
  const size_t inBytes = (T * E + (size_t)c->offset) * esz, outBytes = T * K * 4;
  unsigned char* hIn = malloc(inBytes);
  float* hBias = malloc(E * 4);
  int32_t *hIds = malloc(outBytes + kGuard), *rIds = malloc(outBytes);
  float *hW = malloc(outBytes + kGuard), *rW = malloc(outBytes);
  assert_non_null(hIn); assert_non_null(hIds); assert_non_null(hW); assert_non_null(rIds); assert_non_null(rW);
  for (size_t i = 0; i < T * E + (size_t)c->offset; i++) {
    double v = vtNormal(rng) * 2.0;
    if (c->wide && ((i / E) % 4) == 1) v *= 40.0;
    float f = c->ties ? (float)(floor(v * 2.0) / 2.0) : (float)v;
    if (c->nans && ((i / E) % 8) == 3 && (vtNext(rng) & 63) == 0) {
      f = NAN;
      if (c->nanKinds) { /* sign and payload: the GPU's fp32 arithmetic makes every NaN the canonical one */
        uint32_t u = 0x7f800001u + (uint32_t)(vtNext(rng) % 0x7fffffu) + ((vtNext(rng) & 1) ? 0x80000000u : 0u);
        memcpy(&f, &u, 4);
      }
    }
    if (esz == 4) memcpy(hIn + i * 4, &f, 4);
    else { uint16_t h = vcollF32ToBf16(f); memcpy(hIn + i * 2, &h, 2); }
  }
  for (size_t e = 0; e < E; e++) {
    double v = vtNormal(rng) * 0.1;
    hBias[e] = c->ties ? (float)(floor(v * 8.0) / 8.0) : (float)v;
    if (c->nearTies)
      for (int u = (int)(vtNext(rng) % 41); u > 0; u--) hBias[e] = nextafterf(hBias[e], 1.0f);
    if (c->biasMode != 0) hBias[e] = fabsf(hBias[e]);
    if (c->biasMode == 2 && e % 7 == 3) hBias[e] = -0.0f;
    if (c->biasMode == 5) hBias[e] = (float)(vtNormal(rng) * 100.0);
    if (c->biasMode == 6) hBias[e] = 1500.0f + hBias[e];
    if (c->biasMode == 7) hBias[e] = (float)(vtNormal(rng) * 2.0);
    if (c->biasMode == 8) hBias[e] = 1000.0f + hBias[e];
  }
  if (c->biasMode == 3) hBias[vtNext(rng) % E] = NAN;
  if (c->biasMode == 4) {
    hBias[vtNext(rng) % E] = INFINITY;
    hBias[vtNext(rng) % E] = -INFINITY;
  }
  const float* biasArg = NULL;
  void *dIn, *dBias, *dIds, *dW;
  CUDA_OK(cudaMalloc(&dIn, inBytes));
  CUDA_OK(cudaMalloc(&dBias, E * 4));
  CUDA_OK(cudaMalloc(&dIds, outBytes + kGuard));
  CUDA_OK(cudaMalloc(&dW, outBytes + kGuard));
  CUDA_OK(cudaMemcpy(dIn, hIn, inBytes, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dBias, hBias, E * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(dIds, 0xA5, outBytes + kGuard));
  CUDA_OK(cudaMemset(dW, 0xA5, outBytes + kGuard));
  if (!c->noBias) biasArg = dBias;
  const void* dLogits = (const unsigned char*)dIn + (size_t)c->offset * esz;
  assert_int_equal(vcollMoeGate(dLogits, c->type, biasArg, T, &p, dIds, dW, stream), vcollSuccess);
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaMemcpy(hIds, dIds, outBytes + kGuard, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(hW, dW, outBytes + kGuard, cudaMemcpyDeviceToHost));
  assert_int_equal(vcollMoeGateRef(hIn + (size_t)c->offset * esz, c->type, c->noBias ? NULL : hBias, T, &p, rIds,
                                   rW),
                   vcollSuccess);

  size_t badIds = 0, ulp1 = 0, badW = 0;
  for (size_t i = 0; i < T * K; i++) {
    if (hIds[i] != rIds[i]) {
      if (badIds++ < 5)
        print_error("E %d G %d: token %zu slot %zu: gpu id %d, ref id %d\n", c->E, c->G, i / K, i % K, hIds[i],
                    rIds[i]);
      continue;
    }
    if (isnan(hW[i]) && isnan(rW[i])) continue; /* NaN logits: NaN weights, payloads may differ */
    uint32_t a = vcollF32Bits(hW[i]), b = vcollF32Bits(rW[i]);
    uint32_t d = a > b ? a - b : b - a;
    if (d == 1) ulp1++;
    else if (d > 1) {
      if (badW++ < 5)
        print_error("E %d G %d: token %zu slot %zu: gpu weight %a, ref %a\n", c->E, c->G, i / K, i % K,
                    (double)hW[i], (double)rW[i]);
    }
  }
  int guardOk = vtIsPoisoned((char*)hIds + outBytes, kGuard) && vtIsPoisoned((char*)hW + outBytes, kGuard);
  const char* kernel = getenv("VCOLL_GATE_KERNEL");
  print_message("# E %d G %d tg %d topk %d nf %d renorm %d scaleIn %d %s T %zu ties %d near %d nan %d/%d bias %d/%d "
                "wide %d offset %d kernel %s: %zu id mismatches, %zu weights 1 ulp off, %zu beyond\n",
                c->E, c->G, c->tg, c->topk, c->nf, c->renorm, c->scaleIn, vcollTypeName(c->type), T, c->ties,
                c->nearTies, c->nans, c->nanKinds, !c->noBias, c->biasMode, c->wide, c->offset,
                kernel ? kernel : "auto", badIds, ulp1, badW);
  CUDA_OK(cudaFree(dIn)); CUDA_OK(cudaFree(dBias)); CUDA_OK(cudaFree(dIds)); CUDA_OK(cudaFree(dW));
  free(hIn); free(hBias); free(hIds); free(rIds); free(hW); free(rW);
  if (!guardOk) print_error("output guard overwritten\n");
  return badIds == 0 && badW == 0 && guardOk;
}

static void runCases(const Case* cases, size_t n, uint64_t stream_) {
  VT_REQUIRE_GPU();
  vtRng rng = vtRngMake(vtSeed(), stream_);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int ok = 1;
  for (size_t i = 0; i < n; i++) ok &= runCase(&cases[i], &rng, stream);
  CUDA_OK(cudaStreamDestroy(stream));
  assert_true(ok);
}

/* The segment kernel selects with an approximate sigmoid and a bound on its
 * distance to the exact one: the bound must hold for all 2^32 floats (and
 * both must agree on which inputs give NaN). */
static void test_sigmoid_approx_bound(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  float maxErr = 0.0f, bound = 0.0f;
  uint32_t worst = 0;
  unsigned long long nanBad = 0;
  CUDA_OK((cudaError_t)gateTestSigmoidApprox(&maxErr, &worst, &nanBad, &bound));
  float wx;
  memcpy(&wx, &worst, 4);
  print_message("# approximate sigmoid vs exact recipe, all 2^32 floats: max |difference| %.3g (2^%.2f) at x = %a; "
                "bound %.3g (2^%.0f); %llu NaN disagreements\n",
                (double)maxErr, log2((double)maxErr), (double)wx, (double)bound, log2((double)bound), nanBad);
  assert_true(maxErr <= bound);
  assert_true(nanBad == 0);
}

/* DeepSeek-V3's shape (groups are whole 32-expert rows) at every size class. */
static void test_deepseek(void** state) {
  (void)state;
  const Case cases[] = {
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 1, 0, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 1, vcollFloat32, 3, 0, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollBfloat16, 1024, 0, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 0, 0, vcollFloat32, 65536, 0, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollBfloat16, 65536, 0, 0, 1, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 0, 1, 1, vcollFloat32, 5000, 1, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 2, 1, 0, vcollBfloat16, 5000, 1, 1, 3, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 65536, 0, 0, 0, 0, 0, 1, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollBfloat16, 65536, 0, 0, 0, 0, 1, 0, 1, 1},
  };
  runCases(cases, sizeof(cases) / sizeof(cases[0]), 10);
}

/* DeepSeek-V3's shape through the 8-lanes-per-token kernel (the default
 * for E 256 in 8 groups, topk <= 8, 16-byte aligned logits, from 4096
 * tokens, built for 5 blocks per SM for fp32 from 32768; forced here with
 * VCOLL_GATE_KERNEL=seg) and through the
 * one-warp-per-token kernel (VCOLL_GATE_KERNEL=warp), with the inputs that
 * send the segment kernel to its exact 64-bit selection: exact ties, scores
 * equal in all but their last bits, NaN logits. */
static void test_segment_kernel(void** state) {
  (void)state;
  const Case cases[] = {
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 4097, 0, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollBfloat16, 4097, 0, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 3001, 1, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 3001, 1, 0, 0, 1, 0, 0, 0, 0},
      {256, 8, 4, 8, 2, 1, 1, vcollBfloat16, 3001, 1, 0, 0, 1, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 2050, 0, 0, 0, 0, 1, 0, 0, 0},
      {256, 8, 1, 8, 0, 0, 0, vcollFloat32, 2050, 0, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 3, 5, 1, 1, 0, vcollBfloat16, 2050, 1, 1, 0, 1, 0, 0, 0, 0},
      {256, 8, 8, 8, 1, 1, 0, vcollFloat32, 2050, 0, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 8, 1, 0, 0, 1, vcollFloat32, 2050, 1, 0, 0, 1, 1, 0, 0, 0},
      {256, 8, 2, 6, 9, 1, 0, vcollFloat32, 7, 0, 0, 0, 0, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 1000, 0, 0, 4, 0, 0, 0, 0, 0}, /* 16-byte misaligned: warp kernel */
      /* biases >= 0 (the segment kernel's other key path), -0.0 biases, NaN and infinite biases */
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 4097, 0, 0, 0, 0, 0, 1, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollBfloat16, 4097, 0, 0, 0, 0, 0, 2, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 3001, 1, 0, 0, 1, 0, 1, 0, 0},
      {256, 8, 2, 7, 1, 0, 1, vcollBfloat16, 3001, 1, 0, 0, 1, 1, 2, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 2050, 0, 0, 0, 0, 1, 1, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 1000, 0, 0, 0, 0, 0, 3, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollBfloat16, 1000, 0, 0, 0, 0, 0, 4, 0, 0},
      {256, 8, 8, 8, 1, 1, 0, vcollFloat32, 1000, 0, 0, 0, 0, 0, 4, 0, 0},
      /* finite biases the fixed-point keys do not take (spread, size); a wider binade */
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 3001, 0, 0, 0, 0, 0, 5, 0, 0},
      {256, 8, 3, 6, 1, 1, 0, vcollBfloat16, 3001, 1, 0, 0, 1, 0, 6, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 3001, 0, 0, 0, 0, 1, 6, 1, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 3001, 0, 0, 0, 0, 0, 7, 0, 0},
      {256, 8, 8, 8, 1, 1, 0, vcollBfloat16, 3001, 1, 0, 0, 1, 0, 7, 0, 0},
      {256, 8, 2, 8, 1, 1, 0, vcollFloat32, 3001, 0, 0, 0, 0, 1, 7, 1, 1},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 3001, 0, 0, 0, 0, 0, 8, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollBfloat16, 3001, 1, 0, 0, 1, 1, 8, 0, 0},
      /* logits past the sigmoid's clamps; NaNs of both signs and with payloads */
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 3001, 0, 0, 0, 0, 0, 0, 1, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollBfloat16, 3001, 0, 0, 0, 0, 0, 1, 1, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 3001, 0, 0, 0, 0, 1, 0, 1, 1},
      {256, 8, 4, 8, 1, 1, 0, vcollBfloat16, 3001, 0, 0, 0, 0, 1, 1, 0, 1},
      {256, 8, 1, 3, 2, 1, 1, vcollFloat32, 3001, 1, 0, 0, 0, 1, 1, 1, 1},
      /* fp32 from 32768 tokens: the 5-blocks-per-SM build of the kernel */
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 32771, 1, 0, 0, 1, 0, 0, 0, 0},
      {256, 8, 4, 8, 1, 1, 0, vcollFloat32, 32771, 0, 0, 0, 0, 1, 5, 0, 0},
      {256, 8, 3, 6, 1, 1, 1, vcollFloat32, 40000, 0, 0, 0, 0, 0, 8, 1, 0},
  };
  const size_t n = sizeof(cases) / sizeof(cases[0]);
  setenv("VCOLL_GATE_KERNEL", "seg", 1);
  runCases(cases, n, 20);
  setenv("VCOLL_GATE_KERNEL", "warp", 1);
  runCases(cases, n, 21);
  unsetenv("VCOLL_GATE_KERNEL");
}

/* All groups kept (one group, or topkGroup == groups), including topk > 32. */
static void test_all_kept(void** state) {
  (void)state;
  const Case cases[] = {
      {384, 1, 1, 8, 1, 1, 0, vcollBfloat16, 3000, 0, 0, 0, 0, 0, 0, 0, 0},
      {384, 1, 1, 8, 0, 1, 1, vcollFloat32, 3000, 1, 0, 1, 0, 0, 0, 0, 0},
      {128, 1, 1, 64, 3, 1, 0, vcollFloat32, 777, 0, 0, 0, 0, 0, 0, 0, 0},
      {512, 4, 4, 40, 1, 0, 1, vcollBfloat16, 777, 1, 1, 0, 0, 0, 0, 0, 0},
      {2, 1, 1, 2, 1, 1, 0, vcollFloat32, 1000, 0, 0, 0, 0, 0, 0, 0, 0},
      {37 * 2, 37, 37, 5, 0, 1, 0, vcollFloat32, 1000, 1, 0, 1, 0, 0, 0, 0, 0},
  };
  runCases(cases, sizeof(cases) / sizeof(cases[0]), 11);
}

/* Groups of several rows (E/G a multiple of 32 above 32). */
static void test_row_groups(void** state) {
  (void)state;
  const Case cases[] = {
      {512, 2, 1, 8, 1, 1, 0, vcollFloat32, 2000, 0, 0, 0, 0, 0, 0, 0, 0},
      {512, 8, 3, 33, 1, 1, 1, vcollBfloat16, 2000, 1, 0, 0, 0, 0, 0, 0, 0},
      {160, 5, 2, 6, 1, 1, 0, vcollFloat32, 2000, 0, 0, 0, 0, 0, 0, 0, 0},
      {384, 4, 2, 8, 0, 0, 0, vcollBfloat16, 2000, 1, 1, 0, 0, 0, 0, 0, 0},
      {64, 2, 1, 32, 0, 1, 0, vcollFloat32, 2000, 1, 0, 0, 0, 0, 0, 0, 0},
  };
  runCases(cases, sizeof(cases) / sizeof(cases[0]), 12);
}

/* Any other grouping goes through shared memory. */
static void test_smem_groups(void** state) {
  (void)state;
  const Case cases[] = {
      {64, 8, 3, 6, 1, 1, 0, vcollFloat32, 3000, 0, 0, 0, 0, 0, 0, 0, 0},
      {64, 8, 3, 6, 1, 1, 0, vcollBfloat16, 3000, 1, 0, 1, 0, 0, 0, 0, 0},
      {96, 4, 2, 8, 1, 1, 1, vcollFloat32, 3000, 0, 0, 0, 0, 0, 0, 0, 0},
      {512, 256, 20, 40, 2, 1, 0, vcollFloat32, 500, 1, 0, 0, 0, 0, 0, 0, 0},
      {6, 3, 2, 3, 1, 1, 0, vcollBfloat16, 3000, 1, 0, 0, 0, 0, 0, 0, 0},
      {100, 10, 4, 12, 0, 0, 0, vcollFloat32, 3000, 0, 1, 0, 0, 0, 0, 0, 0},
      {480, 30, 7, 16, 1, 1, 0, vcollBfloat16, 1000, 0, 0, 0, 0, 0, 0, 0, 0},
  };
  runCases(cases, sizeof(cases) / sizeof(cases[0]), 13);
}

/* Captured in a CUDA graph (after one eager call) and replayed: same results. */
static void test_graph_capture(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  vtRng rng = vtRngMake(vtSeed(), 14);
  const vcollMoeGateParams_t p = {256, 8, 4, 8, 1, 1, 0, 2.5f};
  const size_t T = 333, E = 256, K = 9;
  float* hX = malloc(T * E * 4);
  float hBias[256];
  int32_t *hIds = malloc(T * K * 4), *rIds = malloc(T * K * 4);
  float *hW = malloc(T * K * 4), *rW = malloc(T * K * 4);
  for (size_t i = 0; i < T * E; i++) hX[i] = (float)vtNormal(&rng);
  for (size_t e = 0; e < E; e++) hBias[e] = (float)(vtNormal(&rng) * 0.1);
  void *dX, *dBias, *dIds, *dW;
  cudaStream_t stream;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDA_OK(cudaMalloc(&dX, T * E * 4));
  CUDA_OK(cudaMalloc(&dBias, E * 4));
  CUDA_OK(cudaMalloc(&dIds, T * K * 4));
  CUDA_OK(cudaMalloc(&dW, T * K * 4));
  CUDA_OK(cudaMemcpy(dX, hX, T * E * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dBias, hBias, E * 4, cudaMemcpyHostToDevice));
  assert_int_equal(vcollMoeGate(dX, vcollFloat32, dBias, T, &p, dIds, dW, stream), vcollSuccess);
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaMemset(dIds, 0xA5, T * K * 4));
  CUDA_OK(cudaMemset(dW, 0xA5, T * K * 4));
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  assert_int_equal(vcollMoeGate(dX, vcollFloat32, dBias, T, &p, dIds, dW, stream), vcollSuccess);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaMemcpy(hIds, dIds, T * K * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(hW, dW, T * K * 4, cudaMemcpyDeviceToHost));
  assert_int_equal(vcollMoeGateRef(hX, vcollFloat32, hBias, T, &p, rIds, rW), vcollSuccess);
  assert_memory_equal(hIds, rIds, T * K * 4);
  for (size_t i = 0; i < T * K; i++) {
    if (isnan(hW[i]) && isnan(rW[i])) continue; /* NaN logits: NaN weights, payloads may differ */
    uint32_t a = vcollF32Bits(hW[i]), b = vcollF32Bits(rW[i]);
    assert_true((a > b ? a - b : b - a) <= 1);
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(stream));
  CUDA_OK(cudaFree(dX)); CUDA_OK(cudaFree(dBias)); CUDA_OK(cudaFree(dIds)); CUDA_OK(cudaFree(dW));
  free(hX); free(hIds); free(rIds); free(hW); free(rW);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sigmoid_approx_bound),
      cmocka_unit_test(test_deepseek),
      cmocka_unit_test(test_segment_kernel),
      cmocka_unit_test(test_all_kept),
      cmocka_unit_test(test_row_groups),
      cmocka_unit_test(test_smem_groups),
      cmocka_unit_test(test_graph_capture),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  if (failed) return 1;
  return vtHaveGpu() ? 0 : 77; /* meson: skipped, never passed, without a GPU */
}
