/* Input patterns and result checks of the collective benchmarks, on the
 * device (NCCL backend) or the host (host backend), from one definition.
 * allgatherv: every byte of a tensor's gathered buffer is a function of its
 *   offset in that buffer, so a rank fills its rows from their offset and
 *   any row that lands in the wrong place is caught.
 * reducescatterv: small integers (exact in every type) of (rank, row, col);
 *   the expected reduction is recomputed element by element. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bench.h"

#define HD __host__ __device__

static HD inline uint32_t mix32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return (uint32_t)x;
}

static HD inline uint8_t agvByte(size_t g, int tensor) {
  return (uint8_t)(mix32(g * 0x9e3779b97f4a7c15ull + (uint64_t)tensor * 0x632be59bd9b4e019ull) >> 11);
}

/* Element (row, col) of rank r's input. prod: 2 on at most two ranks per
 * element (which ones varies with the element, so every rank's data counts
 * somewhere), 1 elsewhere: products stay <= 4. sum/avg: 0 .. span - 1, so
 * every partial sum over up to 8 ranks is an integer the type holds
 * exactly (span 2 for e5m2: integers up to 8). */
static HD inline double rsvValue(int rank, int nranks, size_t row, size_t col, int op, int span) {
  uint32_t h = mix32(((uint64_t)rank << 48) ^ (row * 0x9e3779b97f4a7c15ull) ^ (col * 0xc2b2ae3d27d4eb4full));
  if (op == vcollProd)
    return (rank == (int)((row + col) % (size_t)nranks) || rank == (int)((row + 3 * col + 1) % (size_t)nranks)) ? 2.0
                                                                                                                  : 1.0;
  if (op == vcollMax || op == vcollMin) return (double)(h % 5);
  return (double)(h % (uint32_t)span);
}

template <typename T> struct Conv;
#define INT_CONV(T)                                                      \
  template <> struct Conv<T> {                                           \
    static HD T enc(double v) { return (T)v; }                           \
    static HD double dec(T x) { return (double)x; }                      \
    static HD double tol(int op) { (void)op; return 0.0; }              \
    static const int span = 3;                                           \
    static constexpr double exactInt = 1e300;                            \
  };
INT_CONV(int8_t)
INT_CONV(uint8_t)
INT_CONV(int32_t)
INT_CONV(uint32_t)
INT_CONV(int64_t)
INT_CONV(uint64_t)
template <> struct Conv<float> {
  static HD float enc(double v) { return (float)v; }
  static HD double dec(float x) { return x; }
  static HD double tol(int op) { return op == vcollAvg ? 1e-5 : 0.0; }
  static const int span = 3;
  static constexpr double exactInt = 1e300;
};
template <> struct Conv<double> {
  static HD double enc(double v) { return v; }
  static HD double dec(double x) { return x; }
  static HD double tol(int op) { return op == vcollAvg ? 1e-12 : 0.0; }
  static const int span = 3;
  static constexpr double exactInt = 1e300;
};
template <> struct Conv<__half> {
  static HD __half enc(double v) { return __float2half((float)v); }
  static HD double dec(__half x) { return __half2float(x); }
  static HD double tol(int op) { return op == vcollAvg ? 5e-3 : 0.0; }
  static const int span = 3;
  static constexpr double exactInt = 1e300;
};
template <> struct Conv<__nv_bfloat16> {
  static HD __nv_bfloat16 enc(double v) { return __float2bfloat16((float)v); }
  static HD double dec(__nv_bfloat16 x) { return __bfloat162float(x); }
  static HD double tol(int op) { return op == vcollAvg ? 2e-2 : 0.0; }
  static const int span = 3;
  static constexpr double exactInt = 1e300;
};
/* fp8: sums are exact while every partial sum is an integer up to
 * exactInt (16 for e4m3, 8 for e5m2): no tolerance there. Past it (more than
 * 8 ranks) and for avg, results round at every step of NCCL's reduction
 * order (avg pre-multiplies by 1/n): a relative tolerance. */
template <> struct Conv<__nv_fp8_e4m3> {
  static HD __nv_fp8_e4m3 enc(double v) { return __nv_fp8_e4m3((float)v); }
  static HD double dec(__nv_fp8_e4m3 x) { return (float)x; }
  static HD double tol(int op) { return (op == vcollSum || op == vcollAvg) ? 0.25 : 0.0; }
  static const int span = 3;
  static constexpr double exactInt = 16;
};
template <> struct Conv<__nv_fp8_e5m2> {
  static HD __nv_fp8_e5m2 enc(double v) { return __nv_fp8_e5m2((float)v); }
  static HD double dec(__nv_fp8_e5m2 x) { return (float)x; }
  static HD double tol(int op) { return (op == vcollSum || op == vcollAvg) ? 0.5 : 0.0; }
  static const int span = 2;
  static constexpr double exactInt = 8;
};

template <typename T>
static HD inline void rsvFillOne(T* p, size_t i, size_t width, size_t row0, int rank, int nranks, int op) {
  p[i] = Conv<T>::enc(rsvValue(rank, nranks, row0 + i / width, i % width, op, Conv<T>::span));
}

template <typename T>
static HD inline int rsvWrongOne(const T* p, size_t i, size_t width, size_t row0, int nranks, int op) {
  size_t row = row0 + i / width, col = i % width;
  double acc = rsvValue(0, nranks, row, col, op, Conv<T>::span);
  for (int r = 1; r < nranks; r++) {
    double v = rsvValue(r, nranks, row, col, op, Conv<T>::span);
    if (op == vcollProd) acc *= v;
    else if (op == vcollMax) acc = v > acc ? v : acc;
    else if (op == vcollMin) acc = v < acc ? v : acc;
    else acc += v;
  }
  if (op == vcollAvg) acc /= nranks;
  double expect = Conv<T>::dec(Conv<T>::enc(acc)), got = Conv<T>::dec(p[i]);
  double err = fabs(got - expect), scale = fabs(expect) > 1.0 ? fabs(expect) : 1.0;
  const double tol = (op == vcollSum && acc <= Conv<T>::exactInt) ? 0.0 : Conv<T>::tol(op);
  return !(err <= tol * scale); /* NaN counts as wrong */
}

/* ---- kernels ------------------------------------------------------------- */

static __global__ void agvFillKernel(uint8_t* p, size_t n, size_t g0, int tensor) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = agvByte(g0 + i, tensor);
}

static __global__ void agvCheckKernel(const uint8_t* p, size_t n, int tensor, unsigned long long* wrong) {
  unsigned long long w = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    w += p[i] != agvByte(i, tensor);
  if (w) atomicAdd(wrong, w);
}

template <typename T>
static __global__ void rsvFillKernel(T* p, size_t n, size_t width, int rank, int nranks, int op) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    rsvFillOne(p, i, width, 0, rank, nranks, op);
}

template <typename T>
static __global__ void rsvCheckKernel(const T* p, size_t n, size_t width, size_t row0, int nranks, int op,
                                      unsigned long long* wrong) {
  unsigned long long w = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    w += rsvWrongOne(p, i, width, row0, nranks, op);
  if (w) atomicAdd(wrong, w);
}

static unsigned gridFor(size_t n) {
  size_t b = (n + 255) / 256;
  return (unsigned)(b < 4096 ? (b ? b : 1) : 4096);
}

static unsigned long long* devCounter(void) {
  static unsigned long long* c = NULL;
  if (c == NULL && cudaMalloc(&c, sizeof(*c)) != cudaSuccess) return NULL;
  return c;
}

static long long readCounter(unsigned long long* c) {
  unsigned long long h = 0;
  if (cudaMemcpy(&h, c, sizeof(h), cudaMemcpyDeviceToHost) != cudaSuccess) return -1;
  return (long long)h;
}

/* ---- entry points ------------------------------------------------------- */

extern "C" int benchAgvFill(void* buf, size_t bytes, size_t g0, int tensor, int onDevice) {
  if (bytes == 0) return 0;
  if (onDevice) {
    agvFillKernel<<<gridFor(bytes), 256>>>((uint8_t*)buf, bytes, g0, tensor);
    return cudaDeviceSynchronize() == cudaSuccess ? 0 : -1;
  }
  for (size_t i = 0; i < bytes; i++) ((uint8_t*)buf)[i] = agvByte(g0 + i, tensor);
  return 0;
}

extern "C" long long benchAgvCheck(const void* buf, size_t bytes, int tensor, int onDevice) {
  if (bytes == 0) return 0;
  if (onDevice) {
    unsigned long long* c = devCounter();
    if (c == NULL || cudaMemset(c, 0, sizeof(*c)) != cudaSuccess) return -1;
    agvCheckKernel<<<gridFor(bytes), 256>>>((const uint8_t*)buf, bytes, tensor, c);
    return readCounter(c);
  }
  long long w = 0;
  for (size_t i = 0; i < bytes; i++) w += ((const uint8_t*)buf)[i] != agvByte(i, tensor);
  return w;
}

template <typename T>
static int rsvFillT(void* buf, size_t n, size_t width, int rank, int nranks, int op, int onDevice) {
  if (onDevice) {
    rsvFillKernel<T><<<gridFor(n), 256>>>((T*)buf, n, width, rank, nranks, op);
    return cudaDeviceSynchronize() == cudaSuccess ? 0 : -1;
  }
  for (size_t i = 0; i < n; i++) rsvFillOne((T*)buf, i, width, 0, rank, nranks, op);
  return 0;
}

template <typename T>
static long long rsvCheckT(const void* buf, size_t n, size_t width, size_t row0, int nranks, int op, int onDevice) {
  if (onDevice) {
    unsigned long long* c = devCounter();
    if (c == NULL || cudaMemset(c, 0, sizeof(*c)) != cudaSuccess) return -1;
    rsvCheckKernel<T><<<gridFor(n), 256>>>((const T*)buf, n, width, row0, nranks, op, c);
    return readCounter(c);
  }
  long long w = 0;
  for (size_t i = 0; i < n; i++) w += rsvWrongOne((const T*)buf, i, width, row0, nranks, op);
  return w;
}

#define DISPATCH(type, F, ...)                                   \
  switch (type) {                                                \
    case vcollInt8: return F<int8_t>(__VA_ARGS__);               \
    case vcollUint8: return F<uint8_t>(__VA_ARGS__);             \
    case vcollInt32: return F<int32_t>(__VA_ARGS__);             \
    case vcollUint32: return F<uint32_t>(__VA_ARGS__);           \
    case vcollInt64: return F<int64_t>(__VA_ARGS__);             \
    case vcollUint64: return F<uint64_t>(__VA_ARGS__);           \
    case vcollFloat16: return F<__half>(__VA_ARGS__);            \
    case vcollFloat32: return F<float>(__VA_ARGS__);             \
    case vcollFloat64: return F<double>(__VA_ARGS__);            \
    case vcollBfloat16: return F<__nv_bfloat16>(__VA_ARGS__);    \
    case vcollFloat8e4m3: return F<__nv_fp8_e4m3>(__VA_ARGS__);  \
    case vcollFloat8e5m2: return F<__nv_fp8_e5m2>(__VA_ARGS__);  \
    default: return -1;                                          \
  }

extern "C" int benchRsvFill(void* buf, size_t rows, size_t width, vcollDataType_t type, int rank, int nranks,
                            vcollRedOp_t op, int onDevice) {
  if (rows == 0) return 0;
  DISPATCH(type, rsvFillT, buf, rows * width, width, rank, nranks, (int)op, onDevice);
}

extern "C" long long benchRsvCheck(const void* buf, size_t rows, size_t row0, size_t width, vcollDataType_t type,
                                   int nranks, vcollRedOp_t op, int onDevice) {
  if (rows == 0) return 0;
  DISPATCH(type, rsvCheckT, buf, rows * width, width, row0, nranks, (int)op, onDevice);
}

extern "C" int benchPoison(void* buf, size_t bytes, int onDevice) {
  if (bytes == 0) return 0;
  if (onDevice) return cudaMemset(buf, 0xA5, bytes) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess ? 0 : -1;
  memset(buf, 0xA5, bytes);
  return 0;
}
