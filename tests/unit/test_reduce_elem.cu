/* The element arithmetic of the p2p reducescatterv's reduction kernel
 * (src/coll/reduce_elem.cuh), run on the host: the kernel calls the same
 * reduceRange with its thread index and grid stride, here every "thread"
 * of a few grid shapes is called in turn. Expected values from the spec
 * (integers: exact, wrapped to the type; floating point: the exact sum,
 * product, max or min of small exactly representable values, rounded once
 * to the type by vcoll_hostfloat.h's hand-written conversions, which are
 * independent of CUDA's), fresh random inputs every run, outputs poisoned
 * first, every element checked, in place and out of place. No GPU needed. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
extern "C" { /* cmocka 1.1.5's header has no C++ linkage of its own */
#include <cmocka.h>
}

#include "reduce_elem.cuh"
#include "vcoll_hostfloat.h"

static uint64_t rngState;
static uint64_t next64(void) {
  uint64_t z = (rngState += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static int range(int lo, int hi) { return lo + (int)(next64() % (uint64_t)(hi - lo + 1)); }

static size_t typeSize(vcollDataType_t t) {
  switch (t) {
    case vcollInt8: case vcollUint8: case vcollFloat8e4m3: case vcollFloat8e5m2: return 1;
    case vcollFloat16: case vcollBfloat16: return 2;
    case vcollInt32: case vcollUint32: case vcollFloat32: return 4;
    default: return 8;
  }
}
static int isFloat(vcollDataType_t t) { return t >= vcollFloat16; }

/* A small value exact in every type: integers in [-4, 4] (unsigned: 0..4),
 * for products of floating-point types powers of two only. */
static int bigValues; /* test_saturation: fp8 values whose sums pass the type's largest */
static int nanValues; /* test_nan_max_min: some inputs NaN */
static double pick(vcollDataType_t t, vcollRedOp_t op) {
  if (nanValues && isFloat(t) && range(0, 3) == 0) return NAN;
  if (bigValues && t == vcollFloat8e4m3) { static const double v[] = {64, 80, 96, -64}; return v[range(0, 3)]; }
  if (bigValues && t == vcollFloat8e5m2) { static const double v[] = {16384, 24576, -16384}; return v[range(0, 2)]; }
  if (isFloat(t) && op == vcollProd) {
    static const double v[] = {-2, -1, -0.5, 0.5, 1, 2};
    return v[range(0, 5)];
  }
  if (t == vcollUint8 || t == vcollUint32 || t == vcollUint64) return range(0, 4);
  return range(-4, 4);
}

static void encode(vcollDataType_t t, void* p, double v) {
  switch (t) {
    case vcollInt8: *(int8_t*)p = (int8_t)(int64_t)v; break;
    case vcollUint8: *(uint8_t*)p = (uint8_t)(int64_t)v; break;
    case vcollInt32: *(int32_t*)p = (int32_t)(int64_t)v; break;
    case vcollUint32: *(uint32_t*)p = (uint32_t)(int64_t)v; break;
    case vcollInt64: *(int64_t*)p = (int64_t)v; break;
    case vcollUint64: *(uint64_t*)p = (uint64_t)(int64_t)v; break;
    case vcollFloat16: *(uint16_t*)p = vcollF32ToF16((float)v); break;
    case vcollFloat32: *(float*)p = (float)v; break;
    case vcollFloat64: *(double*)p = v; break;
    case vcollBfloat16: *(uint16_t*)p = vcollF32ToBf16((float)v); break;
    case vcollFloat8e4m3: *(uint8_t*)p = vcollF32ToE4m3Sat((float)v); break;
    case vcollFloat8e5m2: *(uint8_t*)p = vcollF32ToE5m2Sat((float)v); break;
    default: fail();
  }
}

/* Expected bytes of op over vals[0..k): integers wrap (two's complement);
 * floating point: exact in double (small values), avg divided by k in the
 * type's accumulator (float for the 16- and 8-bit types), one rounding. */
static void expect(vcollDataType_t t, vcollRedOp_t op, const double* vals, int k, void* out) {
  if (!isFloat(t)) {
    int64_t acc = (int64_t)vals[0];
    for (int i = 1; i < k; i++) {
      const int64_t v = (int64_t)vals[i];
      switch (op) {
        case vcollProd: acc = (int64_t)((uint64_t)acc * (uint64_t)v); break;
        case vcollMax: acc = v > acc ? v : acc; break;
        case vcollMin: acc = v < acc ? v : acc; break;
        default: acc = (int64_t)((uint64_t)acc + (uint64_t)v); break;
      }
    }
    encode(t, out, (double)acc); /* narrowing through int64 wraps */
    if (t == vcollInt64 || t == vcollUint64) memcpy(out, &acc, 8);
    return;
  }
  double acc = vals[0];
  for (int i = 1; i < k; i++) {
    if (acc != acc || vals[i] != vals[i]) { /* NaN: sums and products stay NaN; max and min return it */
      acc = NAN;
      continue;
    }
    switch (op) {
      case vcollProd: acc *= vals[i]; break;
      case vcollMax: acc = vals[i] > acc ? vals[i] : acc; break;
      case vcollMin: acc = vals[i] < acc ? vals[i] : acc; break;
      default: acc += vals[i]; break;
    }
  }
  if (op == vcollAvg) {
    if (t == vcollFloat64) acc = acc / (double)k;
    else acc = (double)((float)acc / (float)k);
  }
  encode(t, out, acc);
}

/* Any NaN encoding of floating-point type t (the kernel and encode() may
 * pick different ones). */
static int isNanBytes(vcollDataType_t t, const void* p) {
  const unsigned char* b = (const unsigned char*)p;
  const unsigned h = b[0] | (typeSize(t) > 1 ? b[1] << 8 : 0);
  switch (t) {
    case vcollFloat16: return (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
    case vcollBfloat16: return (h & 0x7f80) == 0x7f80 && (h & 0x7f);
    case vcollFloat32: { float f; memcpy(&f, p, 4); return f != f; }
    case vcollFloat64: { double d; memcpy(&d, p, 8); return d != d; }
    case vcollFloat8e4m3: return (b[0] & 0x7f) == 0x7f;
    case vcollFloat8e5m2: return (b[0] & 0x7c) == 0x7c && (b[0] & 3);
    default: return 0;
  }
}

static int useVec; /* reduceRangeVec (16-byte vectors) instead of reduceRange */

/* 16-byte aligned, as the kernel's vector path requires. */
static unsigned char* alloc16(size_t bytes) { return (unsigned char*)aligned_alloc(16, (bytes + 16) / 16 * 16); }

template <typename T>
static void runT(vcollDataType_t t, vcollRedOp_t op, int nsrc, size_t n, int inPlace, int stride) {
  const size_t es = sizeof(T);
  assert_int_equal(es, typeSize(t));
  unsigned char* src[8];
  double* vals = (double*)malloc(sizeof(double) * n * (size_t)nsrc);
  for (int k = 0; k < nsrc; k++) {
    src[k] = alloc16(n * es + 1);
    for (size_t i = 0; i < n; i++) {
      vals[i * nsrc + k] = pick(t, op);
      encode(t, src[k] + i * es, vals[i * nsrc + k]);
    }
  }
  const int into = inPlace ? range(0, nsrc - 1) : -1;
  unsigned char* dst = inPlace ? src[into] : alloc16(n * es + 1);
  if (!inPlace) memset(dst, 0xa5, n * es); /* poison */
  const void* srcs[8];
  for (int k = 0; k < nsrc; k++) srcs[k] = src[k];
  for (int th = 0; th < stride; th++) /* every thread of a grid of `stride` threads */
    if (useVec) vcollReduce::reduceRangeVec<T>((T*)dst, srcs, nsrc, n, (int)op, nsrc, (size_t)th, (size_t)stride);
    else vcollReduce::reduceRange<T>((T*)dst, srcs, nsrc, n, (int)op, nsrc, (size_t)th, (size_t)stride);
  size_t wrong = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char want[8];
    expect(t, op, vals + i * nsrc, nsrc, want);
    if (isFloat(t) && isNanBytes(t, want) ? !isNanBytes(t, dst + i * es) : memcmp(want, dst + i * es, es) != 0) {
      if (wrong < 3)
        fprintf(stderr, "type %d op %d nsrc %d n %zu %s stride %d%s: element %zu wrong\n", (int)t, (int)op, nsrc, n,
                inPlace ? "in place" : "out of place", stride, useVec ? " (16-byte vectors)" : "", i);
      wrong++;
    }
  }
  for (int k = 0; k < nsrc; k++) free(src[k]);
  if (!inPlace) free(dst);
  free(vals);
  assert_int_equal(wrong, 0);
}

static void runType(vcollDataType_t t, vcollRedOp_t op, int nsrc, size_t n, int inPlace, int stride) {
  const bool known = vcollReduce::byType(
      t, [&](auto* tag) { runT<std::remove_pointer_t<decltype(tag)>>(t, op, nsrc, n, inPlace, stride); });
  if (!known) fail();
}

/* Every type and op (avg: floating point only), 1 to 8 sources, odd
 * lengths, several grid shapes, in place and out of place. */
static void test_every_type_and_op(void** state) {
  (void)state;
  for (int t = 0; t < vcollNumTypes; t++)
    for (int op = 0; op < vcollNumOps; op++) {
      if (op == vcollAvg && !isFloat((vcollDataType_t)t)) continue;
      for (int rep = 0; rep < 6; rep++) {
        const int nsrc = rep == 0 ? 1 : range(2, 8);
        const size_t n = (size_t)range(1, 700);
        const int stride = rep % 3 == 0 ? 1 : range(2, 97);
        runType((vcollDataType_t)t, (vcollRedOp_t)op, nsrc, n, rep & 1, stride);
      }
    }
}

/* The same through the 16-byte vector path: lengths with and without a
 * tail (n % (16 / size) elements done one by one), grids narrower and wider
 * than the vector count. */
static void test_every_type_and_op_vectors(void** state) {
  useVec = 1;
  test_every_type_and_op(state);
  for (int t = 0; t < vcollNumTypes; t++) {
    const size_t V = 16 / typeSize((vcollDataType_t)t);
    runType((vcollDataType_t)t, vcollSum, 3, 5 * V, 0, 2);        /* no tail */
    runType((vcollDataType_t)t, vcollMax, 4, 5 * V + V - 1, 1, 7); /* the longest tail */
    runType((vcollDataType_t)t, vcollMin, 2, V - 1, 0, 1);         /* tail only */
  }
  useVec = 0;
}

/* Sums that leave the small types' exact range round once, like the
 * reference's single rounding: fp8 e4m3 above 16 and e5m2 above 8. */
static void test_rounding_once(void** state) {
  (void)state;
  for (int rep = 0; rep < 20; rep++) {
    useVec = rep >= 10;
    runType(vcollFloat8e4m3, vcollSum, 8, 333, rep & 1, 7);
    runType(vcollFloat8e5m2, vcollSum, 8, 333, rep & 1, 7);
    runType(vcollFloat8e5m2, vcollAvg, 7, 333, rep & 1, 7);
  }
  useVec = 0;
}

/* fp8 sums past the largest finite value saturate to it (448 for e4m3,
 * 57344 for e5m2), as vcollF32ToE4m3Sat/E5m2Sat and NCCL's fp8 reductions. */
static void test_saturation(void** state) {
  (void)state;
  bigValues = 1;
  for (int rep = 0; rep < 10; rep++) {
    useVec = rep >= 5;
    runType(vcollFloat8e4m3, vcollSum, 8, 257, rep & 1, 5);
    runType(vcollFloat8e5m2, vcollSum, 8, 257, rep & 1, 5);
  }
  useVec = 0;
  bigValues = 0;
}

/* max and min return NaN when any source is NaN, whatever its position
 * (so the result does not depend on the order sources are combined in);
 * sums with a NaN stay NaN. */
static void test_nan_max_min(void** state) {
  (void)state;
  nanValues = 1;
  for (int rep = 0; rep < 8; rep++) {
    useVec = rep & 1;
    for (int t = 0; t < vcollNumTypes; t++) {
      if (!isFloat((vcollDataType_t)t)) continue;
      runType((vcollDataType_t)t, vcollMax, range(2, 8), (size_t)range(1, 300), rep & 2, range(1, 9));
      runType((vcollDataType_t)t, vcollMin, range(2, 8), (size_t)range(1, 300), rep & 2, range(1, 9));
      runType((vcollDataType_t)t, vcollSum, range(2, 8), (size_t)range(1, 300), rep & 2, range(1, 9));
    }
  }
  useVec = 0;
  nanValues = 0;
}

/* Sums and products that overflow the integer type wrap (two's
 * complement), expected values in uint64_t arithmetic narrowed to the type;
 * the signed types through unsigned ones, so a UBSan build
 * (-Db_sanitize=undefined) also fails on signed overflow in the kernel's
 * arithmetic. Operands near the type's extremes, fresh every run. */
template <typename T>
static void wrapCase(vcollRedOp_t op) {
  enum { kSrc = 3, kN = 37 };
  T in[kSrc][kN], out[kN];
  const void* srcs[kSrc] = {in[0], in[1], in[2]};
  uint64_t want[kN];
  for (size_t i = 0; i < kN; i++) {
    uint64_t acc = 0;
    for (int k = 0; k < kSrc; k++) {
      const uint64_t r = next64(), small = r >> 60, sign = (uint64_t)1 << (sizeof(T) * 8 - 1);
      const bool isSigned = (T)~(T)0 < 0;
      const uint64_t largest = isSigned ? sign - 1 : (uint64_t)(T)~(T)0, smallest = isSigned ? sign : 0;
      /* near the largest, near the smallest, or any bits */
      const T v = (T)(r % 3 == 0 ? largest - small : r % 3 == 1 ? smallest + small : r >> 8);
      in[k][i] = v;
      const uint64_t u = (uint64_t)(int64_t)v; /* sign-extended for signed T */
      acc = k == 0 ? u : op == vcollProd ? acc * u : acc + u;
    }
    want[i] = acc;
  }
  memset(out, 0xA5, sizeof(out));
  vcollReduce::reduceRange<T>(out, srcs, kSrc, kN, (int)op, kSrc, 0, 1);
  for (size_t i = 0; i < kN; i++)
    if (out[i] != (T)want[i])
      fail_msg("%s of %d %zu-byte integers, element %zu: got %llu, want %llu", op == vcollProd ? "prod" : "sum",
               kSrc, sizeof(T), i, (unsigned long long)(uint64_t)out[i], (unsigned long long)(T)want[i]);
}

static void test_integer_wrap(void** state) {
  (void)state;
  for (int rep = 0; rep < 16; rep++)
    for (vcollRedOp_t op : {vcollSum, vcollProd}) {
      wrapCase<int8_t>(op);
      wrapCase<uint8_t>(op);
      wrapCase<int32_t>(op);
      wrapCase<uint32_t>(op);
      wrapCase<int64_t>(op);
      wrapCase<uint64_t>(op);
    }
}

int main(void) {
  const char* env = getenv("VCOLL_TEST_SEED"); /* as the other suites: repeat a run with its printed seed */
  rngState = env && *env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
  printf("# test_reduce_elem seed %llu (set VCOLL_TEST_SEED to repeat)\n", (unsigned long long)rngState);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_type_and_op),
      cmocka_unit_test(test_every_type_and_op_vectors),
      cmocka_unit_test(test_rounding_once),
      cmocka_unit_test(test_saturation),
      cmocka_unit_test(test_nan_max_min),
      cmocka_unit_test(test_integer_wrap),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
