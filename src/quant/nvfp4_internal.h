/* NVFP4: argument checks shared by the device entry points (nvfp4.cu) and
 * the CPU reference (nvfp4.c). Each returns vcollSuccess or records an
 * error naming `op` and the argument (vcollInvalidArgument). */
#ifndef VCOLL_NVFP4_INTERNAL_H_
#define VCOLL_NVFP4_INTERNAL_H_

#include "vcoll/nvfp4.h"

#ifdef __cplusplus
extern "C" {
#endif

vcollResult_t vcollNvfp4CheckQuantize(const char* op, const void* x, vcollDataType_t dtype, size_t rows,
                                      size_t cols, const float* globalScale, const void* payload,
                                      const void* scales, vcollScaleLayout_t layout);
vcollResult_t vcollNvfp4CheckDequantize(const char* op, const void* payload, const void* scales,
                                        vcollScaleLayout_t layout, const float* globalScale, size_t rows,
                                        size_t cols, const void* out, vcollDataType_t outType);
vcollResult_t vcollNvfp4CheckConvert(const char* op, const void* src, vcollScaleLayout_t srcLayout,
                                     const void* dst, vcollScaleLayout_t dstLayout, size_t rows, size_t cols);

/* vcollNvfp4Quantize plus up to VCOLL_NVFP4_MAX_SIDE_COPIES plain copies
 * (src and dst not overlapping; empty ones and src == dst skipped) in the
 * same launch, after the quantization; with rows = 0 only the copies (and a computed scale's 1.0).
 * amaxBits: NULL, or namax >= 1 amax bits (the MoE dispatch's gathered
 * amax of every rank): the kernel then derives the global scale
 * fminf(2688 / max, FLT_MAX) (1.0 when the max is 0) itself and writes it
 * to *globalScale, even with rows = 0 (computeGlobalScale must be 0);
 * amaxScratch (with amaxBits; may be NULL): two words the launch sets to 0
 * (the MoE amax kernel's counter, zeroed again after a caller overlapped
 * two amax kernels of one workspace). Reads *globalScale otherwise. No copy may write *globalScale, nor read
 * it when the kernel computes it: such a copy is vcollInternalError
 * (nvfp4.cu; device only). Errors name `op`. */
#define VCOLL_NVFP4_MAX_SIDE_COPIES 3
typedef struct {
  const void* src;
  void* dst;
  size_t bytes;
} vcollNvfp4SideCopy;
vcollResult_t vcollNvfp4QuantizeCopies(const char* op, const void* x, vcollDataType_t dtype, size_t rows,
                                       size_t cols, float* globalScale, int computeGlobalScale, void* payload,
                                       void* scales, vcollScaleLayout_t layout, const vcollNvfp4SideCopy* copies,
                                       int ncopies, const uint32_t* amaxBits, int namax, uint32_t* amaxScratch,
                                       cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* VCOLL_NVFP4_INTERNAL_H_ */
