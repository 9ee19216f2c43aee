/* nvfp4_perf: NVFP4 quantization throughput against a device-to-device copy
 * of the same bytes, measured in the same run.
 *
 *   nvfp4_perf [-t bf16|fp16|f32] [-c cols] [-b minRows] [-e maxRows]
 *              [-l linear|swizzled] [-n iters] [-w warmup] [-k 0|1]
 *
 * Defaults: bf16, cols 7168, rows 1, 2, 4, ... 16384, linear scales, 100
 * timed calls after 10 warm-up calls. Inputs are random normal (never all
 * zeros). Every sample is one call timed with CUDA events; the table shows
 * medians. Successive calls use successive slots of 256 MB pools (inputs,
 * payloads, scales, outputs, copy destinations), so that no call finds its
 * data in the L2 cache (50 MB on an H200) from the one before: every
 * operation, the copy too, is timed from and to device memory.
 *   bytes    = input read + payload and scales written
 *   quant    = vcollNvfp4Quantize with a given global scale
 *   qcomp    = the same computing the global scale on the device (the
 *              input is read twice; GB/s still counts `bytes`)
 *   dequant  = vcollNvfp4Dequantize back to the input type (same bytes)
 *   copy     = cudaMemcpyAsync of bytes / 2 (device to device), so it
 *              moves `bytes` in all: GB/s = bytes / time
 *   %copy    = quant GB/s / copy GB/s (and qcomp's)
 * -k 1 (default) checks payload, scales and the computed scale of each size
 * against vcollNvfp4QuantizeRef and prints the count of wrong bytes. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vcoll/nvfp4.h"
#include "bench_util.h"



typedef enum { kQuant = 0, kQuantComputed, kDequant, kCopy, kNumOps } Op;

int main(int argc, char** argv) {
  size_t minRows = 1, maxRows = 16384, cols = 7168;
  int iters = 100, warmup = 10, check = 1;
  vcollDataType_t type = vcollBfloat16;
  vcollScaleLayout_t layout = vcollScaleLinear;
  int opt;
  while ((opt = getopt(argc, argv, "t:c:b:e:l:n:w:k:h")) != -1) {
    switch (opt) {
      case 't': type = !strcmp(optarg, "f32") ? vcollFloat32 : !strcmp(optarg, "fp16") ? vcollFloat16 : vcollBfloat16; break;
      case 'c': cols = strtoull(optarg, NULL, 0); break;
      case 'b': minRows = strtoull(optarg, NULL, 0); break;
      case 'e': maxRows = strtoull(optarg, NULL, 0); break;
      case 'l': layout = !strcmp(optarg, "swizzled") ? vcollScaleSwizzled128x4 : vcollScaleLinear; break;
      case 'n': iters = atoi(optarg); break;
      case 'w': warmup = atoi(optarg); break;
      case 'k': check = atoi(optarg); break;
      default:
        fprintf(stderr, "usage: %s [-t bf16|fp16|f32] [-c cols] [-b minRows] [-e maxRows] [-l linear|swizzled] "
                        "[-n iters] [-w warmup] [-k 0|1]\n", argv[0]);
        return opt == 'h' ? 0 : 2;
    }
  }
  if (minRows < 1 || maxRows < minRows || iters < 1 || warmup < 0 || cols == 0 || cols % 16) {
    fprintf(stderr, "bad sizes or counts\n");
    return 2;
  }
  const size_t es = vcollTypeSize(type);
  int dev;
  struct cudaDeviceProp prop;
  CUDACHECK(cudaGetDevice(&dev));
  CUDACHECK(cudaGetDeviceProperties(&prop, dev));
  printf("# nvfp4_perf: %s, %s x %zu cols, %s scales, %d iters (%d warm-up), medians\n", prop.name, vcollTypeName(type),
         cols, layout == vcollScaleLinear ? "linear" : "swizzled", iters, warmup);
  printf("# %6s %11s %9s %8s %9s %8s %9s %8s %9s %8s %6s %6s %6s\n", "rows", "bytes", "quant(us)", "GB/s", "qcomp(us)",
         "GB/s", "deq(us)", "GB/s", "copy(us)", "GB/s", "%copy", "%copyC", "#wrong");

  const size_t nMax = maxRows * cols;
  const size_t pMax = vcollNvfp4PayloadBytes(maxRows, cols), sMax = vcollNvfp4ScaleBytes(maxRows, cols, layout);
  unsigned char* hx = malloc(nMax * es);
  uint8_t *hp = malloc(pMax), *rp = malloc(pMax), *hs = malloc(sMax), *rs = malloc(sMax);
  float* samples = malloc((size_t)iters * sizeof(float));
  if (!hx || !hp || !rp || !hs || !rs || !samples) { fprintf(stderr, "out of memory\n"); return 1; }
  float amax = 0.0f;
  for (size_t i = 0; i < nMax; i++) {
    float f = (float)benchNormal();
    if (type == vcollFloat32) memcpy(hx + 4 * i, &f, 4);
    else {
      const uint16_t h = type == vcollBfloat16 ? vcollF32ToBf16(f) : vcollF32ToF16(f);
      memcpy(hx + 2 * i, &h, 2);
    }
    if (fabsf(f) > amax) amax = fabsf(f);
  }
  const float gsGiven = 2688.0f / amax; /* as a calibrated static scale would be */

  /* Pools of kPool bytes or more (twice the largest size), filled with the
   * input pattern; call i of a size uses slot i mod slots. */
  const size_t kPool = (size_t)256 << 20;
  const size_t xPool = 2 * nMax * es > kPool ? 2 * nMax * es : kPool;
  const size_t pPool = 2 * pMax > kPool ? 2 * pMax : kPool, sPool = 2 * sMax > kPool ? 2 * sMax : kPool;
  const size_t cPool = xPool;
  unsigned char *dx, *dp, *ds, *dout, *dcopy;
  float *dgs, *dgsC;
  CUDACHECK(cudaMalloc((void**)&dx, xPool));
  CUDACHECK(cudaMalloc((void**)&dp, pPool));
  CUDACHECK(cudaMalloc((void**)&ds, sPool));
  CUDACHECK(cudaMalloc((void**)&dout, xPool));
  CUDACHECK(cudaMalloc((void**)&dcopy, cPool));
  CUDACHECK(cudaMalloc((void**)&dgs, 4));
  CUDACHECK(cudaMalloc((void**)&dgsC, 4));
  CUDACHECK(cudaMemcpy(dx, hx, nMax * es, cudaMemcpyHostToDevice));
  for (size_t off = nMax * es; off < xPool; off += nMax * es)
    CUDACHECK(cudaMemcpy(dx + off, dx, off + nMax * es <= xPool ? nMax * es : xPool - off, cudaMemcpyDeviceToDevice));
  CUDACHECK(cudaMemcpy(dgs, &gsGiven, 4, cudaMemcpyHostToDevice));
  cudaStream_t stream;
  cudaEvent_t ev0, ev1;
  CUDACHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDACHECK(cudaEventCreate(&ev0));
  CUDACHECK(cudaEventCreate(&ev1));

  int failed = 0;
  for (size_t rows = minRows; rows <= maxRows; rows *= 2) {
    const size_t n = rows * cols, pB = vcollNvfp4PayloadBytes(rows, cols), sB = vcollNvfp4ScaleBytes(rows, cols, layout);
    const size_t bytes = n * es + pB + sB;
    float t[kNumOps];
    /* Slot strides rounded up to 256 bytes; slots: as many as every pool holds. */
    const size_t xs = (n * es + 255) & ~(size_t)255, ps = (pB + 255) & ~(size_t)255, ss = (sB + 255) & ~(size_t)255;
    const size_t cs = (bytes / 2 + 255) & ~(size_t)255;
    size_t slots = xPool / xs;
    if (pPool / ps < slots) slots = pPool / ps;
    if (sPool / ss < slots) slots = sPool / ss;
    if (cPool / cs < slots) slots = cPool / cs;
    for (int op = 0; op < kNumOps; op++) {
      for (int it = -warmup; it < iters; it++) {
        const size_t k = (size_t)(it + warmup) % slots;
        unsigned char *x = dx + k * xs, *pay = dp + k * ps, *sc = ds + k * ss;
        CUDACHECK(cudaEventRecord(ev0, stream));
        switch (op) {
          case kQuant: VCOLLCHECK(vcollNvfp4Quantize(x, type, rows, cols, dgs, 0, pay, sc, layout, stream)); break;
          case kQuantComputed:
            VCOLLCHECK(vcollNvfp4Quantize(x, type, rows, cols, dgsC, 1, pay, sc, layout, stream));
            break;
          case kDequant:
            VCOLLCHECK(vcollNvfp4Dequantize(pay, sc, layout, dgs, rows, cols, dout + k * xs, type, stream));
            break;
          default: CUDACHECK(cudaMemcpyAsync(dcopy + k * cs, x, bytes / 2, cudaMemcpyDeviceToDevice, stream)); break;
        }
        CUDACHECK(cudaEventRecord(ev1, stream));
        CUDACHECK(cudaEventSynchronize(ev1));
        float ms;
        CUDACHECK(cudaEventElapsedTime(&ms, ev0, ev1));
        if (it >= 0) samples[it] = ms * 1000.0f;
      }
      t[op] = benchMedian(samples, iters);
    }
    long wrong = -1;
    if (check) { /* one more quantize with the computed scale, from slot 0 (the input as on the host) */
      float gsDev, gsRef;
      VCOLLCHECK(vcollNvfp4Quantize(dx, type, rows, cols, dgsC, 1, dp, ds, layout, stream));
      CUDACHECK(cudaStreamSynchronize(stream));
      CUDACHECK(cudaMemcpy(&gsDev, dgsC, 4, cudaMemcpyDeviceToHost));
      CUDACHECK(cudaMemcpy(hp, dp, pB, cudaMemcpyDeviceToHost));
      CUDACHECK(cudaMemcpy(hs, ds, sB, cudaMemcpyDeviceToHost));
      VCOLLCHECK(vcollNvfp4QuantizeRef(hx, type, rows, cols, &gsRef, 1, rp, rs, layout));
      wrong = memcmp(&gsDev, &gsRef, 4) != 0;
      for (size_t i = 0; i < pB; i++) wrong += hp[i] != rp[i];
      for (size_t i = 0; i < sB; i++) wrong += hs[i] != rs[i];
      failed |= wrong != 0;
    }
    const double gb = (double)bytes * 1e-3; /* bytes / us -> GB/s */
    printf("  %6zu %11zu %9.2f %8.1f %9.2f %8.1f %9.2f %8.1f %9.2f %8.1f %5.1f%% %5.1f%% %6ld\n", rows, bytes, t[kQuant],
           gb / t[kQuant], t[kQuantComputed], gb / t[kQuantComputed], t[kDequant], gb / t[kDequant], t[kCopy],
           gb / t[kCopy], 100.0 * t[kCopy] / t[kQuant], 100.0 * t[kCopy] / t[kQuantComputed], wrong);
    fflush(stdout);
  }
  CUDACHECK(cudaEventDestroy(ev0));
  CUDACHECK(cudaEventDestroy(ev1));
  CUDACHECK(cudaStreamDestroy(stream));
  CUDACHECK(cudaFree(dx)); CUDACHECK(cudaFree(dp)); CUDACHECK(cudaFree(ds)); CUDACHECK(cudaFree(dout));
  CUDACHECK(cudaFree(dcopy)); CUDACHECK(cudaFree(dgs)); CUDACHECK(cudaFree(dgsC));
  free(hx); free(hp); free(rp); free(hs); free(rs); free(samples);
  return failed;
}
