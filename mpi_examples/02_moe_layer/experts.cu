/* The toy expert layer on the GPU: for every gathered token, the sum over
 * its top-k experts owned by this rank of weight * W2 silu(W1 x), in fp32,
 * written as bf16 partial outputs (zeros for tokens none of whose experts
 * live here). One block per token; x, the hidden activation and the output
 * accumulator sit in shared memory. Naive on purpose: the example is about
 * the data movement around it. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

__global__ void __launch_bounds__(kThreads)
expertsKernel(const float* x, const int32_t* ids, const float* w, int H, int F, int topk, int firstExpert,
              int numLocal, const float* W1, const float* W2, __nv_bfloat16* partials) {
  extern __shared__ float smem[];
  float* sx = smem;        /* [H] */
  float* acc = sx + H;     /* [H] */
  float* sh = acc + H;     /* [F] */
  const size_t t = blockIdx.x;
  for (int j = threadIdx.x; j < H; j += kThreads) {
    sx[j] = x[t * H + j];
    acc[j] = 0.0f;
  }
  __syncthreads();
  for (int k = 0; k < topk; k++) {
    const int e = ids[t * topk + k] - firstExpert; /* the same for the whole block */
    if (e < 0 || e >= numLocal) continue;
    const float* w1 = W1 + (size_t)e * F * H;
    const float* w2 = W2 + (size_t)e * H * F;
    for (int f = threadIdx.x; f < F; f += kThreads) {
      float s = 0.0f;
      for (int j = 0; j < H; j++) s += w1[(size_t)f * H + j] * sx[j];
      sh[f] = silu(s);
    }
    __syncthreads();
    const float wk = w[t * topk + k];
    for (int j = threadIdx.x; j < H; j += kThreads) {
      float s = 0.0f;
      for (int f = 0; f < F; f++) s += w2[(size_t)j * F + f] * sh[f];
      acc[j] += wk * s;
    }
    __syncthreads();
  }
  for (int j = threadIdx.x; j < H; j += kThreads) partials[t * H + j] = __float2bfloat16_rn(acc[j]);
}

}  // namespace

/* Returns 0 on success, else a cudaError_t. */
extern "C" int moeExpertsGpu(const float* x, const int32_t* ids, const float* w, size_t N, int H, int F, int topk,
                             int firstExpert, int numLocal, const float* W1, const float* W2, void* partials,
                             cudaStream_t stream) {
  if (N == 0) return 0;
  const size_t smem = sizeof(float) * (2 * (size_t)H + (size_t)F);
  cudaError_t err = cudaFuncSetAttribute(expertsKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return (int)err;
  /* One block per token: N is at most a few hundred thousand, far below gridDim.x's limit. */
  expertsKernel<<<(unsigned)N, kThreads, smem, stream>>>(x, ids, w, H, F, topk, firstExpert, numLocal, W1, W2,
                                                         (__nv_bfloat16*)partials);
  return (int)cudaGetLastError();
}
