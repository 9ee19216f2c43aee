/* MoE dispatch/combine: the small kernels of dispatch.cu, called from
 * dispatch.c. Each enqueues on `stream`, checks its launch, and records
 * an error naming `op` on failure. Element counts are 64-bit. */
#ifndef VCOLL_MOE_DISPATCH_H_
#define VCOLL_MOE_DISPATCH_H_

#include <stddef.h>
#include <stdint.h>

#include "vcoll.h"

#ifdef __cplusplus
extern "C" {
#endif

/* *amaxBits = bits of the largest |x| over the finite values of x[n] (bf16),
 * 0 when there is none (non-negative floats order like their bits). One
 * kernel (a memset when n is 0); acc: two uint32 of scratch that are 0
 * before and after it. */
vcollResult_t vcollMoeAmaxBf16(vcollComm_t comm, const char* op, const void* x, size_t n, uint32_t* acc, uint32_t* amaxBits,
                               cudaStream_t stream);
/* dst[n] fp32 = src[n] bf16, exact. */
vcollResult_t vcollMoeBf16ToF32(vcollComm_t comm, const char* op, const void* src, float* dst, size_t n, cudaStream_t stream);
/* dst[n] bf16 = src[n] fp32 rounded to nearest even. */
vcollResult_t vcollMoeF32ToBf16(vcollComm_t comm, const char* op, const float* src, void* dst, size_t n, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* VCOLL_MOE_DISPATCH_H_ */
