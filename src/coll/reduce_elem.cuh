/* Element-wise reduction of nsrc arrays into one, for the p2p
 * reducescatterv: shared by the device kernel (src/coll/reduce.cu) and the
 * host unit test (tests/unit/test_reduce_elem.cu), which runs the same
 * reduceRange on the host. Semantics as the host backend's: integers in
 * their own type (wrapping), fp16/bf16/fp8 in float with one rounding at
 * the end (fp8 saturating, as vcollF32ToE4m3Sat/E5m2Sat), float and double
 * in their own type; max and min return NaN when any source is NaN; avg
 * (floating-point types only) is the sum divided by
 * `divisor` in the accumulator's type. Sources are taken in order 0..nsrc-1. */
#ifndef VCOLL_REDUCE_ELEM_CUH_
#define VCOLL_REDUCE_ELEM_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stddef.h>
#include <stdint.h>
#include <type_traits>
#include <vector_types.h>

#include "vcoll.h"

/* Unrolled in the device pass; the host compiler has no such pragma. */
#if defined(__CUDA_ARCH__)
#define VCOLL_REDUCE_UNROLL _Pragma("unroll")
#else
#define VCOLL_REDUCE_UNROLL
#endif

namespace vcollReduce {

/* Accumulator type of T and the conversions to and from it. */
template <typename T>
struct Acc {
  typedef T type;
  static __host__ __device__ __forceinline__ type load(T v) { return v; }
  static __host__ __device__ __forceinline__ T store(type a) { return a; }
};
template <>
struct Acc<__half> {
  typedef float type;
  static __host__ __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __host__ __device__ __forceinline__ __half store(float a) { return __float2half_rn(a); }
};
template <>
struct Acc<__nv_bfloat16> {
  typedef float type;
  static __host__ __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __host__ __device__ __forceinline__ __nv_bfloat16 store(float a) { return __float2bfloat16_rn(a); }
};
/* fp8: float accumulator, saturating rounding back. */
template <typename F8, __nv_fp8_interpretation_t KIND>
struct AccFp8 {
  typedef float type;
  static __host__ __device__ __forceinline__ float load(F8 v) { return (float)v; }
  static __host__ __device__ __forceinline__ F8 store(float a) {
    F8 r;
    r.__x = __nv_cvt_float_to_fp8(a, __NV_SATFINITE, KIND);
    return r;
  }
};
template <>
struct Acc<__nv_fp8_e4m3> : AccFp8<__nv_fp8_e4m3, __NV_E4M3> {};
template <>
struct Acc<__nv_fp8_e5m2> : AccFp8<__nv_fp8_e5m2, __NV_E5M2> {};

/* Sum and product in A; integers wrap: computed in the unsigned type of the
 * same width, since signed overflow is undefined. */
template <typename A, bool kInt = std::is_integral<A>::value>
struct Arith {
  static __host__ __device__ __forceinline__ A add(A a, A b) { return (A)(a + b); }
  static __host__ __device__ __forceinline__ A mul(A a, A b) { return (A)(a * b); }
};
template <typename A>
struct Arith<A, true> {
  typedef typename std::make_unsigned<A>::type U;
  static __host__ __device__ __forceinline__ A add(A a, A b) { return (A)((U)a + (U)b); }
  static __host__ __device__ __forceinline__ A mul(A a, A b) { return (A)((U)a * (U)b); }
};

template <typename A>
__host__ __device__ __forceinline__ A applyOp(int op, A a, A b) {
  switch (op) {
    case vcollProd: return Arith<A>::mul(a, b);
    case vcollMax: return a != a ? a : b != b ? b : a > b ? a : b; /* NaN wins, in any order */
    case vcollMin: return a != a ? a : b != b ? b : a < b ? a : b;
    default: return Arith<A>::add(a, b); /* sum; avg divides afterwards */
  }
}

/* Calls f((T*)nullptr) with T the element type of `t` and returns true;
 * false for a type without one. The one mapping from vcoll types to C++
 * types, for the kernel's launch and the host test that checks it. */
template <typename F>
inline bool byType(vcollDataType_t t, F&& f) {
  switch (t) {
    case vcollInt8: f((int8_t*)nullptr); return true;
    case vcollUint8: f((uint8_t*)nullptr); return true;
    case vcollInt32: f((int32_t*)nullptr); return true;
    case vcollUint32: f((uint32_t*)nullptr); return true;
    case vcollInt64: f((int64_t*)nullptr); return true;
    case vcollUint64: f((uint64_t*)nullptr); return true;
    case vcollFloat16: f((__half*)nullptr); return true;
    case vcollFloat32: f((float*)nullptr); return true;
    case vcollFloat64: f((double*)nullptr); return true;
    case vcollBfloat16: f((__nv_bfloat16*)nullptr); return true;
    case vcollFloat8e4m3: f((__nv_fp8_e4m3*)nullptr); return true;
    case vcollFloat8e5m2: f((__nv_fp8_e5m2*)nullptr); return true;
    default: return false;
  }
}

/* dst[i] = op over k of srcs[k][i] for i = begin, begin + stride, ... < n. */
template <typename T>
__host__ __device__ void reduceRange(T* dst, const void* const* srcs, int nsrc, size_t n, int op, int divisor,
                                     size_t begin, size_t stride) {
  typedef typename Acc<T>::type A;
  for (size_t i = begin; i < n; i += stride) {
    A acc = Acc<T>::load(((const T*)srcs[0])[i]);
    for (int k = 1; k < nsrc; k++) acc = applyOp<A>(op, acc, Acc<T>::load(((const T*)srcs[k])[i]));
    if (op == vcollAvg) acc = (A)(acc / (A)divisor);
    dst[i] = Acc<T>::store(acc);
  }
}

/* The same in 16-byte vectors, for dst and sources all 16-byte aligned:
 * vector v of every source (elements V*v .. V*v+V-1, V = 16 / sizeof(T))
 * for v = begin, begin + stride, ... < n / V, then the last n % V elements
 * one by one (by the threads whose begin is below n % V). One 16-byte load
 * per source and one store per vector instead of V narrow ones. */
template <typename T>
__host__ __device__ void reduceRangeVec(T* dst, const void* const* srcs, int nsrc, size_t n, int op, int divisor,
                                        size_t begin, size_t stride) {
  typedef typename Acc<T>::type A;
  constexpr int V = 16 / sizeof(T);
  const size_t nv = n / V;
  union Vec {
    uint4 w;
    T x[V];
    __host__ __device__ Vec() {}
  };
  for (size_t v = begin; v < nv; v += stride) {
    A acc[V];
    Vec in;
    in.w = ((const uint4*)srcs[0])[v];
    VCOLL_REDUCE_UNROLL
    for (int j = 0; j < V; j++) acc[j] = Acc<T>::load(in.x[j]);
    for (int k = 1; k < nsrc; k++) {
      in.w = ((const uint4*)srcs[k])[v];
      VCOLL_REDUCE_UNROLL
      for (int j = 0; j < V; j++) acc[j] = applyOp<A>(op, acc[j], Acc<T>::load(in.x[j]));
    }
    Vec out;
    VCOLL_REDUCE_UNROLL
    for (int j = 0; j < V; j++) {
      if (op == vcollAvg) acc[j] = (A)(acc[j] / (A)divisor);
      out.x[j] = Acc<T>::store(acc[j]);
    }
    ((uint4*)dst)[v] = out.w;
  }
  reduceRange<T>(dst, srcs, nsrc, n, op, divisor, nv * V + begin, stride);
}

}  // namespace vcollReduce

#endif /* VCOLL_REDUCE_ELEM_CUH_ */
