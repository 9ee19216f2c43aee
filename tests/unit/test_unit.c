/* Unit tests that need no communication: error strings, types, version,
 * NULL handling of the communicator API, the parsing of VCOLL_GATE_KERNEL,
 * and the host float conversions the host backend and the CPU references
 * rely on. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <stdio.h>
#include <unistd.h>

#include "vcoll.h"
#include "vcoll_hostfloat.h"
#include "vcoll_internal.h"
#include "vt.h"

/* What a test writes to stderr (fd 2) between Begin and End, into text. */
struct stderrCapture {
  FILE* file;
  int saved;
};
static struct stderrCapture stderrCaptureBegin(void) {
  struct stderrCapture c = {tmpfile(), -1};
  assert_non_null(c.file);
  fflush(stderr);
  c.saved = dup(2);
  assert_true(c.saved >= 0 && dup2(fileno(c.file), 2) == 2);
  return c;
}
static void stderrCaptureEnd(struct stderrCapture* c, char* text, size_t size) {
  fflush(stderr);
  dup2(c->saved, 2);
  close(c->saved);
  rewind(c->file);
  const size_t n = fread(text, 1, size - 1, c->file);
  text[n] = '\0';
  fclose(c->file);
}

static void test_error_strings(void** state) {
  (void)state;
  for (int r = 0; r < vcollNumResults; r++) {
    const char* s = vcollGetErrorString((vcollResult_t)r);
    assert_non_null(s);
    assert_string_not_equal(s, "unknown result code");
  }
  assert_string_equal(vcollGetErrorString((vcollResult_t)1234), "unknown result code");
}

static void test_types_and_version(void** state) {
  (void)state;
  static const size_t sizes[vcollNumTypes] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2, 1, 1};
  for (int t = 0; t < vcollNumTypes; t++) {
    assert_int_equal(vcollTypeSize((vcollDataType_t)t), sizes[t]);
    assert_string_not_equal(vcollTypeName((vcollDataType_t)t), "unknown");
  }
  assert_int_equal(vcollTypeSize((vcollDataType_t)vcollNumTypes), 0);
  assert_int_equal(vcollTypeSize((vcollDataType_t)-1), 0);
  int v = 0;
  assert_int_equal(vcollGetVersion(&v), vcollSuccess);
  assert_int_equal(v, VCOLL_VERSION_CODE);
  assert_int_equal(vcollGetVersion(NULL), vcollInvalidArgument);
  assert_non_null(strstr(vcollGetLastError(NULL), "vcollGetVersion"));
}

static void test_comm_api_null(void** state) {
  (void)state;
  vcollComm_t c = (vcollComm_t)0x1;
  int n;
  assert_int_equal(vcollCommInitNccl(NULL, &c), vcollInvalidArgument);
  assert_null(c); /* cleared on failure */
  assert_non_null(strstr(vcollGetLastError(NULL), "nccl"));
  assert_int_equal(vcollCommInitNccl(NULL, NULL), vcollInvalidArgument);
  assert_int_equal(vcollCommDestroy(NULL), vcollSuccess);
  assert_int_equal(vcollCommCount(NULL, &n), vcollInvalidArgument);
  assert_non_null(strstr(vcollGetLastError(NULL), "vcollCommCount : comm"));
  assert_int_equal(vcollCommUserRank(NULL, &n), vcollInvalidArgument);
  assert_int_equal(vcollCommSetAlgo(NULL, vcollCollAllGatherV, "bcast"), vcollInvalidArgument);
  assert_int_equal(vcollCommSetChecked(NULL, 1), vcollInvalidArgument);
  assert_int_equal(vcollCommSetStagingLimit(NULL, 0), vcollInvalidArgument);
  assert_non_null(strstr(vcollGetLastError(NULL), "vcollCommSetStagingLimit : comm"));
  size_t bytes = 7;
  assert_int_equal(vcollCommGetStagingBytes(NULL, &bytes), vcollInvalidArgument);
  assert_int_equal(bytes, 7);
  assert_null(vcollCommLastAlgo(NULL, vcollCollAllGatherV));
}

/* VCOLL_STAGING_MAX: bytes with an optional K/M/G/T (1024-based) and B;
 * unset or "none" is no limit; anything else is no limit with a notice
 * naming the variable and the value. */
static void test_env_staging_max(void** state) {
  (void)state;
  static const struct { const char* value; size_t want; } cases[] = {
      {"0", 0}, {"4096", 4096}, {"64K", (size_t)64 << 10}, {"64kb", (size_t)64 << 10}, {"2M", (size_t)2 << 20},
      {"3GB", (size_t)3 << 30}, {"1t", (size_t)1 << 40}, {"100B", 100}, {"none", SIZE_MAX}, {"NONE", SIZE_MAX},
      {"", SIZE_MAX}, {"-1", SIZE_MAX}, {"12Q", SIZE_MAX}, {"M", SIZE_MAX}, {"1.5G", SIZE_MAX},
      {"99999999999T", SIZE_MAX}, {"4MBB", SIZE_MAX},
  };
  struct stderrCapture cap = stderrCaptureBegin();
  unsetenv("VCOLL_STAGING_MAX");
  const size_t unset = vcollParamStagingMax();
  size_t got[sizeof(cases) / sizeof(cases[0])];
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    setenv("VCOLL_STAGING_MAX", cases[i].value, 1);
    got[i] = vcollParamStagingMax();
  }
  unsetenv("VCOLL_STAGING_MAX");
  char text[4096];
  stderrCaptureEnd(&cap, text, sizeof(text));
  assert_true(unset == SIZE_MAX);
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    if (got[i] != cases[i].want) fail_msg("VCOLL_STAGING_MAX=%s: %zu, want %zu", cases[i].value, got[i], cases[i].want);
  }
  assert_non_null(strstr(text, "VCOLL_STAGING_MAX=12Q is not a size"));
  assert_non_null(strstr(text, "VCOLL_STAGING_MAX=1.5G is not a size"));
  assert_non_null(strstr(text, "VCOLL_STAGING_MAX=-1 is not a size"));
  assert_non_null(strstr(text, "VCOLL_STAGING_MAX=99999999999T is more than a size_t holds"));
  assert_null(strstr(text, "VCOLL_STAGING_MAX=64K")); /* a size is no notice */
}

static void test_algorithm_names(void** state) {
  (void)state;
  /* The baselines exist under their documented names; names are unique. */
  int n[2] = {0, 0};
  for (int c = 0; c < 2; c++)
    while (vcollAlgoName((vcollCollective_t)c, n[c])) n[c]++;
  assert_true(n[0] >= 1 && n[1] >= 1);
  assert_string_equal(vcollAlgoName(vcollCollAllGatherV, 0), "bcast");
  assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, 0), "reduce");
  for (int c = 0; c < 2; c++)
    for (int i = 0; i < n[c]; i++)
      for (int j = 0; j < i; j++)
        assert_string_not_equal(vcollAlgoName((vcollCollective_t)c, i), vcollAlgoName((vcollCollective_t)c, j));
  assert_null(vcollAlgoName(vcollCollAllGatherV, -1));
  assert_null(vcollAlgoName((vcollCollective_t)7, 0));
}

/* VCOLL_GATE_KERNEL: warp, seg, auto (any case); another value is auto
 * with one notice on stderr that names the variable and the value. */
static void test_env_gate_kernel(void** state) {
  (void)state;
  static const struct { const char* value; int want; } cases[] = {
      {"warp", 1}, {"seg", 2}, {"SEG", 2}, {"auto", 0}, {"", 0}, {"segment", 0}, {"warp", 1}, {"bogus", 0},
  };
  struct stderrCapture cap = stderrCaptureBegin();
  unsetenv("VCOLL_GATE_KERNEL");
  const int unset = vcollParamGateKernel();
  int got[sizeof(cases) / sizeof(cases[0])];
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    setenv("VCOLL_GATE_KERNEL", cases[i].value, 1);
    got[i] = vcollParamGateKernel();
  }
  unsetenv("VCOLL_GATE_KERNEL");
  char text[1024];
  stderrCaptureEnd(&cap, text, sizeof(text));
  assert_int_equal(unset, 0);
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) assert_int_equal(got[i], cases[i].want);
  assert_non_null(strstr(text, "VCOLL_GATE_KERNEL=segment is not warp, seg or auto; taken as auto"));
  assert_null(strstr(text, "bogus")); /* one notice, not one per call */
}

/* fp16: compare with the compiler's _Float16 (an independent conversion). */
static void test_hostfloat_f16(void** state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    _Float16 x;
    uint16_t hh = (uint16_t)h;
    memcpy(&x, &hh, 2);
    float f = vcollF16ToF32(hh);
    if (isnan((float)x)) assert_true(isnan(f));
    else assert_true(f == (float)x);
  }
  vtRng g = vtRngMake(vtSeed(), 1);
  for (int i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)vtNext(&g);
    if (i % 4 == 0) u = (u & 0x807fffffu) | ((uint32_t)vtRange(&g, 100, 145) << 23); /* near half's range */
    float f = vcollBitsF32(u);
    _Float16 want = (_Float16)f;
    uint16_t got = vcollF32ToF16(f), w;
    memcpy(&w, &want, 2);
    if (isnan(f)) assert_true((got & 0x7c00) == 0x7c00 && (got & 0x3ff));
    else if (got != w) fail_msg("f32->f16 of %a (0x%08x): got 0x%04x want 0x%04x", f, u, got, w);
  }
  /* Every exact tie between two neighbouring finite halves (subnormal ones
   * included), both signs: ties go to the even code. */
  for (uint32_t h = 0; h < 0x7bff; h++)
    for (int s = 0; s < 2; s++) {
      const uint16_t lo = (uint16_t)(h | (s ? 0x8000 : 0)), hi = (uint16_t)((h + 1) | (s ? 0x8000 : 0));
      const float f = (float)(((double)vcollF16ToF32(lo) + (double)vcollF16ToF32(hi)) / 2); /* exact in fp32 */
      const uint16_t got = vcollF32ToF16(f), want = (h & 1) ? hi : lo;
      if (got != want) fail_msg("f32->f16 of the tie %a: got 0x%04x want 0x%04x", f, got, want);
    }
}

/* bf16: round to nearest even of the top 16 bits, checked against double
 * arithmetic on the representable neighbours. */
static void test_hostfloat_bf16(void** state) {
  (void)state;
  vtRng g = vtRngMake(vtSeed(), 2);
  for (int i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)vtNext(&g);
    if (i % 3 == 0) u = (u & 0xffff0000u) | 0x8000u; /* exact ties */
    float f = vcollBitsF32(u);
    uint16_t got = vcollF32ToBf16(f);
    if (isnan(f)) { assert_true(isnan(vcollBf16ToF32(got))); continue; }
    uint32_t lo = u & 0xffff0000u;
    double dlo = vcollBitsF32(lo), dhi = vcollBitsF32(lo + 0x10000u), d = f;
    if (isinf(f)) { assert_int_equal(got, u >> 16); continue; }
    double elo = fabs(d - dlo), ehi = isinf(dhi) ? INFINITY : fabs(dhi - d);
    if ((lo & 0x7fffffffu) == 0x7f7f0000u) ehi = fabs(d) - fabs(dlo) >= ldexp(1, 127 - 8) ? 0 : INFINITY;
    uint16_t want = elo < ehi ? (uint16_t)(lo >> 16) : elo > ehi ? (uint16_t)((lo >> 16) + 1)
                   : (((lo >> 16) & 1) ? (uint16_t)((lo >> 16) + 1) : (uint16_t)(lo >> 16));
    if (got != want) fail_msg("f32->bf16 of %a (0x%08x): got 0x%04x want 0x%04x", f, u, got, want);
  }
}

/* e4m3: hand-derived values, ties to even, saturation, NaN. */
static void test_hostfloat_e4m3(void** state) {
  (void)state;
  struct { float in; uint8_t code; } v[] = {
      {0.0f, 0x00}, {-0.0f, 0x80}, {1.0f, 0x38}, {1.125f, 0x39}, {1.0625f, 0x38} /* tie -> even */,
      {1.1875f, 0x3a} /* tie -> even */, {448.0f, 0x7e}, {480.0f, 0x7e}, {1e9f, 0x7e}, {-1e9f, 0xfe},
      {INFINITY, 0x7e}, {0.001953125f, 0x01} /* 2^-9, smallest subnormal */, {0.0009765625f, 0x00} /* tie -> 0 */,
      {0.0029296875f, 0x02} /* 1.5 * 2^-9: tie -> even (2) */, {0.015625f, 0x08} /* 2^-6, smallest normal */,
      {-2.5f, 0xc2}, {6.0f, 0x4c}, {240.0f, 0x77}, {232.0f, 0x76} /* between 224 and 240: tie -> even */};
  for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
    uint8_t got = vcollF32ToE4m3Sat(v[i].in);
    if (got != v[i].code) fail_msg("e4m3(%g): got 0x%02x want 0x%02x", v[i].in, got, v[i].code);
  }
  assert_true((vcollF32ToE4m3Sat(NAN) & 0x7f) == 0x7f);
  for (int c = 0; c < 256; c++) {
    float f = vcollE4m3ToF32((uint8_t)c);
    if ((c & 0x7f) == 0x7f) { assert_true(isnan(f)); continue; }
    assert_int_equal(vcollF32ToE4m3Sat(f), c); /* every code round-trips */
  }
  for (int c = 0; c < 256; c++) {
    float f = vcollE5m2ToF32((uint8_t)c);
    if ((c & 0x7c) == 0x7c) continue; /* inf/NaN */
    assert_int_equal(vcollF32ToE5m2Sat(f), c);
  }
}

int main(void) {
  /* test_env_gate_kernel reads the notice on stderr, where it goes only
   * with VCOLL_DEBUG unset (read once, at vcoll's first log call). */
  unsetenv("VCOLL_DEBUG");
  unsetenv("VCOLL_DEBUG_FILE");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_error_strings),     cmocka_unit_test(test_types_and_version),
      cmocka_unit_test(test_comm_api_null),     cmocka_unit_test(test_algorithm_names),
      cmocka_unit_test(test_hostfloat_f16),     cmocka_unit_test(test_hostfloat_bf16),
      cmocka_unit_test(test_hostfloat_e4m3),    cmocka_unit_test(test_env_gate_kernel),
      cmocka_unit_test(test_env_staging_max),
  };
  return cmocka_run_group_tests_name("unit", tests, NULL, NULL);
}
