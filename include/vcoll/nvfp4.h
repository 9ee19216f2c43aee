/*
 * NVFP4 quantization (vcoll/nvfp4.h): E2M1 elements, two per byte (element
 * 2j in the low nibble of byte j), one unsigned E4M3 scale per 16
 * consecutive elements of a row, and one FP32 global scale per tensor.
 * See docs/nvfp4.md for the exact recipe.
 *
 * Device functions take device pointers and are ordered on `stream`
 * (no host synchronization). The *Ref functions are the CPU reference
 * (host pointers), written from the spec; the kernels match them bit for bit.
 */
#ifndef VCOLL_NVFP4_H_
#define VCOLL_NVFP4_H_

#include "vcoll.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  vcollScaleLinear = 0,        /* [rows, cols/16], row-major */
  vcollScaleSwizzled128x4 = 1  /* the 128x4 tiles matrix-multiply kernels read; rows padded to 128, cols/16 to 4 */
} vcollScaleLayout_t;

/* Bytes of the packed payload: rows * cols / 2. */
VCOLL_API size_t vcollNvfp4PayloadBytes(size_t rows, size_t cols);
/* Bytes of the scales in `layout` (padding included for the swizzled one). */
VCOLL_API size_t vcollNvfp4ScaleBytes(size_t rows, size_t cols, vcollScaleLayout_t layout);

/* Quantizes x [rows, cols] (vcollBfloat16, vcollFloat16 or vcollFloat32;
 * cols a multiple of 16) into payload [rows, cols/2] bytes and scales in
 * `layout`. globalScale is a device pointer to one float: read when
 * computeGlobalScale == 0, else computed on the device as 448*6/amax(x)
 * and written there first (1.0 when x is all zeros or rows == 0). */
VCOLL_API vcollResult_t vcollNvfp4Quantize(const void* x, vcollDataType_t dtype, size_t rows, size_t cols,
                                           float* globalScale, int computeGlobalScale, void* payload,
                                           void* scales, vcollScaleLayout_t layout, cudaStream_t stream);

/* out [rows, cols] (vcollBfloat16, vcollFloat16 or vcollFloat32) =
 * e2m1_value(q) * float(sf) / gs. */
VCOLL_API vcollResult_t vcollNvfp4Dequantize(const void* payload, const void* scales, vcollScaleLayout_t layout,
                                             const float* globalScale, size_t rows, size_t cols, void* out,
                                             vcollDataType_t outType, cudaStream_t stream);

/* Converts scales between layouts (device). Padding written as zeros. */
VCOLL_API vcollResult_t vcollNvfp4ConvertScales(const void* src, vcollScaleLayout_t srcLayout, void* dst,
                                                vcollScaleLayout_t dstLayout, size_t rows, size_t cols,
                                                cudaStream_t stream);

/* CPU reference versions: host pointers; globalScale is a host pointer. */
VCOLL_API vcollResult_t vcollNvfp4QuantizeRef(const void* x, vcollDataType_t dtype, size_t rows, size_t cols,
                                              float* globalScale, int computeGlobalScale, void* payload,
                                              void* scales, vcollScaleLayout_t layout);
VCOLL_API vcollResult_t vcollNvfp4DequantizeRef(const void* payload, const void* scales, vcollScaleLayout_t layout,
                                                const float* globalScale, size_t rows, size_t cols, void* out,
                                                vcollDataType_t outType);
VCOLL_API vcollResult_t vcollNvfp4ConvertScalesRef(const void* src, vcollScaleLayout_t srcLayout, void* dst,
                                                   vcollScaleLayout_t dstLayout, size_t rows, size_t cols);

#ifdef __cplusplus
}
#endif

#endif /* VCOLL_NVFP4_H_ */
