/* gate_perf: time per vcollMoeGate call against a device-to-device copy of
 * the logits, measured in the same run.
 *
 *   gate_perf [-t f32|bf16|all] [-b minT] [-e maxT] [-n iters] [-w warmup]
 *             [-E experts -G groups -g topkGroup -k topk -s shared] [-B biasSd] [-S seed] [-c 0|1]
 *
 * Defaults: DeepSeek-V3's gate (E 256, 8 groups, topk_group 4, topk 8, one
 * fused shared expert, renormalized), T = 1, 2, 4, ... 65536, both types.
 * Logits are normal with standard deviation 2, the bias normal with 0.1
 * (some biased scores negative) or -B biasSd (the segment kernel takes its
 * fixed-point keys up to a bias spread of about 110, its 8-bit-class keys
 * beyond: -B 100 measures those). -S seed draws other inputs (default: the
 * same every run, so that tables compare; the few tokens whose near-ties
 * send a segment to the exact selection move with the seed).
 * Every sample is one call timed with CUDA events; the table shows medians.
 *   bytes   = logits + bias read + ids + weights written
 *   GB/s    = bytes / median time
 *   copy    = cudaMemcpyAsync of the logits bytes (device to device); its
 *             bandwidth counts read + write (2 x bytes / time)
 *   %copy   = GB/s / copy GB/s
 *   graph   = time per call inside a CUDA graph of 20 back-to-back calls
 *             (median over replays / 20): the per-call device time without
 *             the launch gap of an isolated call, as a runtime that
 *             captures its decode step sees it
 *   copyG   = the copy the same way (20 copies in one graph), and %copyG
 *             the graph bandwidth over it: the ratio of device times,
 *             without either launch gap
 * -c 1 (default) checks each size against vcollMoeGateRef (ids exact,
 * weights within 1 ulp) and prints the count of wrong slots. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vcoll/gate.h"
#include "bench_util.h"

enum { kGraphCalls = 20 };

/* Time per operation of a graph of kGraphCalls operations: the median over
 * replays (after 3 warm-up replays) divided by kGraphCalls. */
static float graphTime(cudaGraph_t graph, cudaStream_t stream, cudaEvent_t ev0, cudaEvent_t ev1, int iters,
                       float* samples) {
  cudaGraphExec_t exec;
  float ms;
  CUDACHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; i++) CUDACHECK(cudaGraphLaunch(exec, stream));
  const int n = iters < 50 ? iters : 50;
  for (int i = 0; i < n; i++) {
    CUDACHECK(cudaEventRecord(ev0, stream));
    CUDACHECK(cudaGraphLaunch(exec, stream));
    CUDACHECK(cudaEventRecord(ev1, stream));
    CUDACHECK(cudaEventSynchronize(ev1));
    CUDACHECK(cudaEventElapsedTime(&ms, ev0, ev1));
    samples[i] = ms * 1000.0f / kGraphCalls;
  }
  CUDACHECK(cudaGraphExecDestroy(exec));
  CUDACHECK(cudaGraphDestroy(graph));
  return benchMedian(samples, n);
}

int main(int argc, char** argv) {
  size_t minT = 1, maxT = 65536;
  int iters = 100, warmup = 10, check = 1, types = 3;
  double biasSd = 0.1;
  unsigned long long seed = 0;
  vcollMoeGateParams_t p = {256, 8, 4, 8, 1, 1, 0, 2.5f};
  int opt;
  while ((opt = getopt(argc, argv, "t:b:e:n:w:E:G:g:k:s:B:S:c:h")) != -1) {
    switch (opt) {
      case 't': types = !strcmp(optarg, "f32") ? 1 : !strcmp(optarg, "bf16") ? 2 : 3; break;
      case 'b': minT = strtoull(optarg, NULL, 0); break;
      case 'e': maxT = strtoull(optarg, NULL, 0); break;
      case 'n': iters = atoi(optarg); break;
      case 'w': warmup = atoi(optarg); break;
      case 'E': p.numExperts = atoi(optarg); break;
      case 'G': p.numExpertGroup = atoi(optarg); break;
      case 'g': p.topkGroup = atoi(optarg); break;
      case 'k': p.topk = atoi(optarg); break;
      case 's': p.numFusedSharedExperts = atoi(optarg); break;
      case 'B': biasSd = atof(optarg); break;
      case 'S': seed = strtoull(optarg, NULL, 0); break;
      case 'c': check = atoi(optarg); break;
      default:
        fprintf(stderr, "usage: %s [-t f32|bf16|all] [-b minT] [-e maxT] [-n iters] [-w warmup] "
                        "[-E experts -G groups -g topkGroup -k topk -s shared] [-B biasSd] [-S seed] [-c 0|1]\n", argv[0]);
        return opt == 'h' ? 0 : 2;
    }
  }
  if (minT < 1 || maxT < minT || iters < 1 || warmup < 0 || !(biasSd >= 0)) { fprintf(stderr, "bad sizes or counts\n"); return 2; }
  const size_t E = (size_t)p.numExperts, K = (size_t)(p.topk + p.numFusedSharedExperts);

  int dev;
  struct cudaDeviceProp prop;
  CUDACHECK(cudaGetDevice(&dev));
  CUDACHECK(cudaGetDeviceProperties(&prop, dev));
  benchRngState ^= (uint64_t)seed * 0x9e3779b97f4a7c15ull; /* seed 0: the default stream */
  printf("# gate_perf: %s, E %zu groups %d topk_group %d topk %d shared %d renormalize %d, bias N(0,%g), seed %llu, %d iters "
         "(%d warm-up)\n",
         prop.name, E, p.numExpertGroup, p.topkGroup, p.topk, p.numFusedSharedExperts, p.renormalize,
         biasSd, seed, iters, warmup);
  printf("# %5s %8s %12s %10s %9s %10s %9s %10s %9s %6s %9s %6s %6s\n", "type", "T", "bytes", "time(us)", "GB/s",
         "graph(us)", "GB/s", "copy(us)", "copyGB/s", "%copy", "copyG(us)", "%copyG", "#wrong");

  /* One allocation for the largest size; random normal logits, never zeros. */
  const size_t inMax = maxT * E * 4;
  float* hX = malloc(maxT * E * 4);
  uint16_t* hXb = malloc(maxT * E * 2);
  float* hBias = malloc(E * 4);
  int32_t *hIds = malloc(maxT * K * 4), *rIds = malloc(maxT * K * 4);
  float *hW = malloc(maxT * K * 4), *rW = malloc(maxT * K * 4);
  float* samples = malloc((size_t)iters * sizeof(float));
  if (!hX || !hXb || !hBias || !hIds || !rIds || !hW || !rW || !samples) { fprintf(stderr, "out of memory\n"); return 1; }
  for (size_t i = 0; i < maxT * E; i++) {
    hX[i] = (float)(benchNormal() * 2.0);
    hXb[i] = vcollF32ToBf16(hX[i]);
  }
  for (size_t e = 0; e < E; e++) hBias[e] = (float)(benchNormal() * biasSd);

  void *dX, *dXb, *dCopy, *dBias, *dIds, *dW;
  CUDACHECK(cudaMalloc(&dX, inMax));
  CUDACHECK(cudaMalloc(&dXb, maxT * E * 2));
  CUDACHECK(cudaMalloc(&dCopy, inMax));
  CUDACHECK(cudaMalloc(&dBias, E * 4));
  CUDACHECK(cudaMalloc(&dIds, maxT * K * 4));
  CUDACHECK(cudaMalloc(&dW, maxT * K * 4));
  CUDACHECK(cudaMemcpy(dX, hX, inMax, cudaMemcpyHostToDevice));
  CUDACHECK(cudaMemcpy(dXb, hXb, maxT * E * 2, cudaMemcpyHostToDevice));
  CUDACHECK(cudaMemcpy(dBias, hBias, E * 4, cudaMemcpyHostToDevice));

  cudaStream_t stream;
  cudaEvent_t ev0, ev1;
  CUDACHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDACHECK(cudaEventCreate(&ev0));
  CUDACHECK(cudaEventCreate(&ev1));

  int anyWrong = 0;
  for (int ti = 0; ti < 2; ti++) {
    if (!(types & (1 << ti))) continue;
    const vcollDataType_t type = ti == 0 ? vcollFloat32 : vcollBfloat16;
    const size_t esz = ti == 0 ? 4 : 2;
    const void* dIn = ti == 0 ? dX : dXb;
    const void* hIn = ti == 0 ? (const void*)hX : (const void*)hXb;
    for (size_t T = minT; T <= maxT; T *= 2) {
      const size_t inBytes = T * E * esz;
      const double bytes = (double)inBytes + (double)E * 4 + (double)T * K * 8;
      float ms;
      for (int i = 0; i < warmup; i++) VCOLLCHECK(vcollMoeGate(dIn, type, dBias, T, &p, dIds, dW, stream));
      for (int i = 0; i < iters; i++) {
        CUDACHECK(cudaEventRecord(ev0, stream));
        VCOLLCHECK(vcollMoeGate(dIn, type, dBias, T, &p, dIds, dW, stream));
        CUDACHECK(cudaEventRecord(ev1, stream));
        CUDACHECK(cudaEventSynchronize(ev1));
        CUDACHECK(cudaEventElapsedTime(&ms, ev0, ev1));
        samples[i] = ms * 1000.0f;
      }
      const float tGate = benchMedian(samples, iters);
      /* The same call, kGraphCalls times back to back in one CUDA graph. */
      cudaGraph_t graph;
      CUDACHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < kGraphCalls; i++) VCOLLCHECK(vcollMoeGate(dIn, type, dBias, T, &p, dIds, dW, stream));
      CUDACHECK(cudaStreamEndCapture(stream, &graph));
      const float tGraph = graphTime(graph, stream, ev0, ev1, iters, samples);
      CUDACHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < kGraphCalls; i++)
        CUDACHECK(cudaMemcpyAsync(dCopy, dIn, inBytes, cudaMemcpyDeviceToDevice, stream));
      CUDACHECK(cudaStreamEndCapture(stream, &graph));
      const float tCopyGraph = graphTime(graph, stream, ev0, ev1, iters, samples);
      for (int i = 0; i < warmup; i++)
        CUDACHECK(cudaMemcpyAsync(dCopy, dIn, inBytes, cudaMemcpyDeviceToDevice, stream));
      for (int i = 0; i < iters; i++) {
        CUDACHECK(cudaEventRecord(ev0, stream));
        CUDACHECK(cudaMemcpyAsync(dCopy, dIn, inBytes, cudaMemcpyDeviceToDevice, stream));
        CUDACHECK(cudaEventRecord(ev1, stream));
        CUDACHECK(cudaEventSynchronize(ev1));
        CUDACHECK(cudaEventElapsedTime(&ms, ev0, ev1));
        samples[i] = ms * 1000.0f;
      }
      const float tCopy = benchMedian(samples, iters);
      long wrong = -1;
      if (check) {
        CUDACHECK(cudaMemcpy(hIds, dIds, T * K * 4, cudaMemcpyDeviceToHost));
        CUDACHECK(cudaMemcpy(hW, dW, T * K * 4, cudaMemcpyDeviceToHost));
        VCOLLCHECK(vcollMoeGateRef(hIn, type, hBias, T, &p, rIds, rW));
        wrong = 0;
        for (size_t i = 0; i < T * K; i++) {
          uint32_t a, b;
          memcpy(&a, &hW[i], 4);
          memcpy(&b, &rW[i], 4);
          if (hIds[i] != rIds[i] || (a > b ? a - b : b - a) > 1) wrong++;
        }
        if (wrong) anyWrong = 1;
      }
      const double gbs = bytes / (tGate * 1e3), copyGbs = 2.0 * (double)inBytes / (tCopy * 1e3);
      const double graphGbs = bytes / (tGraph * 1e3), copyGraphGbs = 2.0 * (double)inBytes / (tCopyGraph * 1e3);
      printf("  %5s %8zu %12.0f %10.2f %9.1f %10.2f %9.1f %10.2f %9.1f %5.1f%% %9.2f %5.1f%% %6ld\n",
             ti == 0 ? "f32" : "bf16", T, bytes, tGate, gbs, tGraph, graphGbs, tCopy, copyGbs, 100.0 * gbs / copyGbs,
             tCopyGraph, 100.0 * graphGbs / copyGraphGbs, wrong);
      fflush(stdout);
      if (T > maxT / 2) break; /* T *= 2 would overflow past maxT */
    }
  }
  CUDACHECK(cudaEventDestroy(ev0));
  CUDACHECK(cudaEventDestroy(ev1));
  CUDACHECK(cudaStreamDestroy(stream));
  cudaFree(dX); cudaFree(dXb); cudaFree(dCopy); cudaFree(dBias); cudaFree(dIds); cudaFree(dW);
  free(hX); free(hXb); free(hBias); free(hIds); free(rIds); free(hW); free(rW); free(samples);
  if (anyWrong) { printf("# FAILED: kernel and reference disagree\n"); return 1; }
  return 0;
}
