/* weight_layout_perf: preparing one MoE layer's FP4 weights (w13 and w2 of
 * every expert, payload and scales) for the fused MoE GEMM, timed four
 * ways in the same run:
 *   copy       cudaMemcpyAsync (device to device) of the layer's bytes
 *   warm       vcollWeightPrepareLayer, permutations cached and on the device
 *   cold       the same after vcollWeightCacheClear (computes and uploads them)
 *   recompute  what runtimes did before caching: for every expert, compute
 *              the permutation on the host, upload it (copy + stream sync,
 *              as a pageable tensor's .to(device)), then vcollWeightApply
 *              on that one expert
 * and the same for a whole model of -L layers (one layer's buffers reused).
 *
 *   weight_layout_perf [-f nvfp4|mxfp4] [-l swizzled|linear] [-t tile]
 *                      [-E experts] [-H hidden] [-I intermediate]
 *                      [-n iters] [-w warmup] [-r recompute reps] [-L layers] [-c 0|1]
 *
 * Defaults: DeepSeek-V3 (NVFP4, 256 experts, w13 [2*2048, 7168], w2 [7168,
 * 2048], swizzled scales, tile 128, 58 layers). Each row is the median of
 * its samples, each sample timed with CUDA events (host gaps included).
 *   bytes = the layer's input bytes (payload + linear scales)
 *   GB/s  = bytes / time; x copy = time / copy time
 * Weights are random (never zeros). -c 1 (default) checks the first, a
 * middle and the last expert of w13 and w2 against vcollWeightApplyRef. */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vcoll/weight_layout.h"
#include "bench_util.h"


static void* xmalloc(size_t n) {
  void* p = malloc(n);
  if (p == NULL) {
    fprintf(stderr, "out of host memory (%zu bytes)\n", n);
    exit(1);
  }
  return p;
}

/* The layer: w13, w13 scales, w2, w2 scales (inputs, packed by expert) and outputs. */
typedef struct {
  vcollWeightLayer_t L;
  size_t M[2], K[2];        /* w13, w2 */
  size_t in[4], out[4];     /* per-expert bytes */
  size_t inBytes, outBytes; /* whole layer */
  uint8_t *src, *dst;       /* one arena each */
  int32_t* dPerm;           /* recompute: uploaded indices */
  int32_t* hPerm;
} Bench;

static cudaStream_t stream;
static cudaEvent_t ev0, ev1;

static float elapsedMs(void) {
  float ms;
  CUDACHECK(cudaEventSynchronize(ev1));
  CUDACHECK(cudaEventElapsedTime(&ms, ev0, ev1));
  return ms;
}

static void runCopy(const Bench* b) {
  CUDACHECK(cudaMemcpyAsync(b->dst, b->src, b->inBytes, cudaMemcpyDeviceToDevice, stream));
}

static void runRecompute(Bench* b) {
  const vcollWeightLayer_t* L = &b->L;
  const void* in[4] = {L->w13, L->w13Scales, L->w2, L->w2Scales};
  void* out[4] = {L->w13Out, L->w13ScalesOut, L->w2Out, L->w2ScalesOut};
  for (int w = 0; w < 2; w++) {
    for (size_t e = 0; e < (size_t)L->numExperts; e++) {
      VCOLLCHECK(vcollWeightPermutation(w ? vcollWeightW2 : vcollWeightW13, b->M[w], L->tile, b->hPerm));
      CUDACHECK(cudaMemcpyAsync(b->dPerm, b->hPerm, b->M[w] * 4, cudaMemcpyHostToDevice, stream));
      CUDACHECK(cudaStreamSynchronize(stream));
      vcollWeightExpert_t x = {(const uint8_t*)in[2 * w] + e * b->in[2 * w],
                               (const uint8_t*)in[2 * w + 1] + e * b->in[2 * w + 1],
                               (uint8_t*)out[2 * w] + e * b->out[2 * w], (uint8_t*)out[2 * w + 1] + e * b->out[2 * w + 1]};
      VCOLLCHECK(vcollWeightApply(b->dPerm, b->M[w], b->K[w], L->format, L->scaleLayout, &x, 1, stream));
    }
  }
}

/* Median of `reps` timed runs of `what` (0 copy, 1 warm, 2 cold, 3 recompute), after `warmup` untimed ones. */
static float timeIt(Bench* b, int what, int reps, int warmup, float* samples) {
  for (int i = -warmup; i < reps; i++) {
    if (what == 2) VCOLLCHECK(vcollWeightCacheClear());
    CUDACHECK(cudaEventRecord(ev0, stream));
    switch (what) {
      case 0: runCopy(b); break;
      case 3: runRecompute(b); break;
      default: VCOLLCHECK(vcollWeightPrepareLayer(&b->L, stream)); break;
    }
    CUDACHECK(cudaEventRecord(ev1, stream));
    const float ms = elapsedMs();
    if (i >= 0) samples[i] = ms;
  }
  return benchMedian(samples, reps);
}

/* A model of `layers` layers on the same buffers, one timed run. */
static float timeModel(Bench* b, int what, int layers) {
  if (what == 2) VCOLLCHECK(vcollWeightCacheClear()); /* the model starts cold */
  CUDACHECK(cudaEventRecord(ev0, stream));
  for (int l = 0; l < layers; l++) {
    switch (what) {
      case 0: runCopy(b); break;
      case 3: runRecompute(b); break;
      default: VCOLLCHECK(vcollWeightPrepareLayer(&b->L, stream)); break;
    }
  }
  CUDACHECK(cudaEventRecord(ev1, stream));
  return elapsedMs();
}

/* Wrong bytes of experts 0, E/2, E-1 of w13 and w2 against the CPU version. */
static long check(const Bench* b) {
  const vcollWeightLayer_t* L = &b->L;
  const uint8_t* in[4] = {L->w13, L->w13Scales, L->w2, L->w2Scales};
  const uint8_t* out[4] = {L->w13Out, L->w13ScalesOut, L->w2Out, L->w2ScalesOut};
  const size_t E = (size_t)L->numExperts, sample[3] = {0, E / 2, E - 1};
  long wrong = 0;
  for (int w = 0; w < 2; w++) {
    int32_t* P = xmalloc(b->M[w] * 4);
    VCOLLCHECK(vcollWeightPermutation(w ? vcollWeightW2 : vcollWeightW13, b->M[w], L->tile, P));
    for (int s = 0; s < 3; s++) {
      uint8_t *h[4], *got[2];
      for (int t = 0; t < 2; t++) {
        const int i = 2 * w + t;
        h[t] = xmalloc(b->in[i]);
        h[2 + t] = xmalloc(b->out[i]);
        got[t] = xmalloc(b->out[i]);
        CUDACHECK(cudaMemcpy(h[t], in[i] + sample[s] * b->in[i], b->in[i], cudaMemcpyDeviceToHost));
        CUDACHECK(cudaMemcpy(got[t], out[i] + sample[s] * b->out[i], b->out[i], cudaMemcpyDeviceToHost));
      }
      vcollWeightExpert_t x = {h[0], h[1], h[2], h[3]};
      VCOLLCHECK(vcollWeightApplyRef(P, b->M[w], b->K[w], L->format, L->scaleLayout, &x, 1));
      for (int t = 0; t < 2; t++) {
        for (size_t k = 0; k < b->out[2 * w + t]; k++) wrong += got[t][k] != h[2 + t][k];
        free(h[t]);
        free(h[2 + t]);
        free(got[t]);
      }
    }
    free(P);
  }
  return wrong;
}

int main(int argc, char** argv) {
  vcollWeightFormat_t fmt = vcollWeightNvfp4;
  vcollScaleLayout_t lay = vcollScaleSwizzled128x4;
  int tile = 128, E = 256, iters = 20, warmup = 3, reps = 3, layers = 58, doCheck = 1;
  size_t H = 7168, I = 2048;
  int opt;
  while ((opt = getopt(argc, argv, "f:l:t:E:H:I:n:w:r:L:c:h")) != -1) {
    switch (opt) {
      case 'f': fmt = !strcmp(optarg, "mxfp4") ? vcollWeightMxfp4 : vcollWeightNvfp4; break;
      case 'l': lay = !strcmp(optarg, "linear") ? vcollScaleLinear : vcollScaleSwizzled128x4; break;
      case 't': tile = atoi(optarg); break;
      case 'E': E = atoi(optarg); break;
      case 'H': H = strtoull(optarg, NULL, 0); break;
      case 'I': I = strtoull(optarg, NULL, 0); break;
      case 'n': iters = atoi(optarg); break;
      case 'w': warmup = atoi(optarg); break;
      case 'r': reps = atoi(optarg); break;
      case 'L': layers = atoi(optarg); break;
      case 'c': doCheck = atoi(optarg); break;
      default:
        fprintf(stderr, "usage: %s [-f nvfp4|mxfp4] [-l swizzled|linear] [-t tile] [-E experts] [-H hidden] "
                        "[-I intermediate] [-n iters] [-w warmup] [-r recompute reps] [-L layers] [-c 0|1]\n", argv[0]);
        return opt == 'h' ? 0 : 2;
    }
  }
  if (E < 1 || iters < 1 || warmup < 0 || reps < 1 || layers < 0) {
    fprintf(stderr, "bad counts\n");
    return 2;
  }
  const size_t blk = fmt == vcollWeightMxfp4 ? 32 : 16;
  Bench b;
  memset(&b, 0, sizeof(b));
  b.M[0] = 2 * I; b.K[0] = H;
  b.M[1] = H;     b.K[1] = I;
  for (int w = 0; w < 2; w++) {
    b.in[2 * w] = b.out[2 * w] = b.M[w] * b.K[w] / 2;
    b.in[2 * w + 1] = b.M[w] * (b.K[w] / blk);
    b.out[2 * w + 1] = vcollWeightScaleBytes(fmt, b.M[w], b.K[w], lay);
    if (b.out[2 * w + 1] == 0) { fprintf(stderr, "bad shape\n"); return 2; }
  }
  size_t inOff[4], outOff[4];
  for (int i = 0; i < 4; i++) {
    inOff[i] = b.inBytes;
    outOff[i] = b.outBytes;
    b.inBytes += b.in[i] * (size_t)E;
    b.outBytes += b.out[i] * (size_t)E;
  }

  int dev;
  struct cudaDeviceProp prop;
  CUDACHECK(cudaGetDevice(&dev));
  CUDACHECK(cudaGetDeviceProperties(&prop, dev));
  printf("# weight_layout_perf: %s, %s, %s scales, tile %d, E %d, H %zu, I %zu: w13 [%zu, %zu], w2 [%zu, %zu]\n",
         prop.name, fmt == vcollWeightMxfp4 ? "MXFP4 (E8M0 scales / 32)" : "NVFP4 (E4M3 scales / 16)",
         lay == vcollScaleLinear ? "linear" : "128x4-swizzled", tile, E, H, I, b.M[0], b.K[0], b.M[1], b.K[1]);
  printf("# layer: %.3f GB in (payload %.3f GB), %.3f GB out; %d iters (%d warm-up), cold %d, recompute %d reps\n",
         b.inBytes / 1e9, (b.in[0] + b.in[2]) * (double)E / 1e9, b.outBytes / 1e9, iters, warmup, iters, reps);

  /* Random weights: one random block, repeated over the input arena. */
  const size_t blockBytes = (size_t)64 << 20;
  uint8_t* block = xmalloc(blockBytes);
  uint64_t z = 0x2545f4914f6cdd1dull;
  for (size_t i = 0; i < blockBytes / 8; i++) {
    uint64_t v = (z += 0x9e3779b97f4a7c15ull);
    v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ull;
    v = (v ^ (v >> 27)) * 0x94d049bb133111ebull;
    v ^= v >> 31;
    memcpy(block + 8 * i, &v, 8);
  }
  CUDACHECK(cudaMalloc((void**)&b.src, b.inBytes));
  CUDACHECK(cudaMalloc((void**)&b.dst, b.outBytes));
  CUDACHECK(cudaMalloc((void**)&b.dPerm, (b.M[0] > b.M[1] ? b.M[0] : b.M[1]) * 4));
  b.hPerm = xmalloc((b.M[0] > b.M[1] ? b.M[0] : b.M[1]) * 4);
  for (size_t o = 0; o < b.inBytes; o += blockBytes)
    CUDACHECK(cudaMemcpy(b.src + o, block, b.inBytes - o < blockBytes ? b.inBytes - o : blockBytes,
                         cudaMemcpyHostToDevice));
  CUDACHECK(cudaMemset(b.dst, 0xA5, b.outBytes));
  CUDACHECK(cudaDeviceSynchronize()); /* legacy-stream work done before the non-blocking stream starts */
  free(block);

  b.L = (vcollWeightLayer_t){fmt, lay, tile, E, H, I,
                             b.src + inOff[0], b.src + inOff[1], b.src + inOff[2], b.src + inOff[3],
                             b.dst + outOff[0], b.dst + outOff[1], b.dst + outOff[2], b.dst + outOff[3]};

  CUDACHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDACHECK(cudaEventCreate(&ev0));
  CUDACHECK(cudaEventCreate(&ev1));
  float* samples = xmalloc((size_t)(iters > reps ? iters : reps) * sizeof(float));

  const float tCopy = timeIt(&b, 0, iters, warmup, samples);
  const float tCold = timeIt(&b, 2, iters, warmup, samples);
  const float tWarm = timeIt(&b, 1, iters, warmup, samples); /* the cache is warm after the cold runs */
  const float tRe = timeIt(&b, 3, reps, 1, samples);

  long wrong = -1;
  if (doCheck) {
    CUDACHECK(cudaMemset(b.dst, 0xA5, b.outBytes));
    CUDACHECK(cudaDeviceSynchronize());
    VCOLLCHECK(vcollWeightPrepareLayer(&b.L, stream));
    CUDACHECK(cudaStreamSynchronize(stream));
    wrong = check(&b);
  }

  const double gb = b.inBytes / 1e9;
  printf("# %-12s %10s %9s %8s %12s\n", "path", "time(ms)", "GB/s", "x copy", "vs recompute");
  const char* names[4] = {"copy", "warm-cache", "cold-cache", "recompute"};
  const float t[4] = {tCopy, tWarm, tCold, tRe};
  for (int i = 0; i < 4; i++)
    printf("  %-12s %10.3f %9.1f %8.2f %11.1fx\n", names[i], t[i], gb / (t[i] * 1e-3), t[i] / tCopy, tRe / t[i]);

  if (layers > 0) {
    const float mCopy = timeModel(&b, 0, layers), mWarm = timeModel(&b, 2, layers), mRe = timeModel(&b, 3, layers);
    printf("# model, %d layers (%.1f GB): copy %.3f s, cache (cold at start) %.3f s, recompute %.3f s "
           "(%.1fx), per layer %.3f / %.3f / %.3f ms\n",
           layers, gb * layers, mCopy / 1e3, mWarm / 1e3, mRe / 1e3, mRe / mWarm, mCopy / layers, mWarm / layers,
           mRe / layers);
  }
  vcollWeightCacheStats_t st;
  VCOLLCHECK(vcollWeightCacheGetStats(&st));
  printf("# cache: %d entries, %llu hits, %llu misses, %llu uploads\n", st.entries, (unsigned long long)st.hits,
         (unsigned long long)st.misses, (unsigned long long)st.uploads);
  printf("# bar: warm >= 10x faster than recompute: %s (%.1fx); warm within 2x of copy: %s (%.2fx)\n",
         tRe >= 10 * tWarm ? "PASS" : "FAIL", tRe / tWarm, tWarm <= 2 * tCopy ? "PASS" : "FAIL", tWarm / tCopy);
  if (doCheck) printf("# check: experts 0, %d, %d of w13 and w2 vs vcollWeightApplyRef: %ld wrong bytes\n", E / 2, E - 1, wrong);

  CUDACHECK(cudaEventDestroy(ev0));
  CUDACHECK(cudaEventDestroy(ev1));
  CUDACHECK(cudaStreamDestroy(stream));
  CUDACHECK(cudaFree(b.src));
  CUDACHECK(cudaFree(b.dst));
  CUDACHECK(cudaFree(b.dPerm));
  free(b.hPerm);
  free(samples);
  if (wrong > 0) {
    printf("# FAILED: GPU and CPU versions disagree\n");
    return 1;
  }
  return 0;
}
