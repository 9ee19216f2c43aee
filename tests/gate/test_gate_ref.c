/* Routing gate, CPU parts (suite unit): the reference against hand-built
 * cases for every rule, against an independent sort-based oracle on random
 * inputs full of ties, the sigmoid against double precision, and the
 * argument checks of both entry points (which run before any CUDA call). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off") /* the oracle rounds like the reference */
#endif
#include "vt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gate_common.h"
#include "vcoll/gate.h"

static vcollMoeGateParams_t mkParams(int E, int G, int tg, int topk, int nf, int renorm, int scaleIn, float rsf) {
  vcollMoeGateParams_t p = {E, G, tg, topk, nf, renorm, scaleIn, rsf};
  return p;
}

static uint32_t bitsOf(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Runs the reference on one token of fp32 logits; ids/weights sized K. */
static void gate1(const float* x, const float* bias, const vcollMoeGateParams_t* p, int32_t* ids, float* w) {
  assert_int_equal(vcollMoeGateRef(x, vcollFloat32, bias, 1, p, ids, w), vcollSuccess);
}

/* ---------------------------------------------------------------- sigmoid */

/* With E = 2, one group, topk 2 and no renormalization, the weights are the
 * two experts' sigmoids: check them against double precision. */
static void test_sigmoid_accuracy(void** state) {
  (void)state;
  vtRng rng = vtRngMake(vtSeed(), 1);
  const vcollMoeGateParams_t p = mkParams(2, 1, 1, 2, 0, 0, 0, 1.0f);
  const size_t T = 20000;
  float* x = malloc(T * 2 * sizeof(float));
  int32_t* ids = malloc(T * 2 * sizeof(int32_t));
  float* w = malloc(T * 2 * sizeof(float));
  for (size_t i = 0; i < 2 * T; i++) {
    double u = vtUniform(&rng);
    /* mostly the range that matters, plus the tails and exact points */
    x[i] = i % 4 == 0 ? (float)(u * 200.0 - 100.0) : (float)(u * 40.0 - 20.0);
  }
  x[0] = 0.0f; x[1] = -0.0f; x[2] = 20.0f; x[3] = -80.0f; x[4] = INFINITY; x[5] = -INFINITY;
  x[6] = 1e-30f; x[7] = -1e-30f;
  assert_int_equal(vcollMoeGateRef(x, vcollFloat32, NULL, T, &p, ids, w), vcollSuccess);
  const float sigMin = (float)(1.0 / (1.0 + exp(80.0)));
  uint32_t worst = 0;
  for (size_t t = 0; t < T; t++) {
    assert_true((ids[2 * t] == 0 && ids[2 * t + 1] == 1) || (ids[2 * t] == 1 && ids[2 * t + 1] == 0));
    for (int j = 0; j < 2; j++) {
      float xi = x[2 * t + ids[2 * t + j]];
      float got = w[2 * t + j];
      if (xi < -80.0f) {
        /* saturated: the value at -80, within the same 2 ulp */
        assert_true(fabsf(got - sigMin) <= 2.0f * (nextafterf(sigMin, 1.0f) - sigMin));
        continue;
      }
      double ref = 1.0 / (1.0 + exp(-(double)xi));
      float rf = (float)ref;
      uint32_t d = bitsOf(got) > bitsOf(rf) ? bitsOf(got) - bitsOf(rf) : bitsOf(rf) - bitsOf(got);
      if (d > worst) worst = d;
      if (d > 2) fail_msg("sigmoid(%a) = %a, exact %a (%u ulp)", (double)xi, (double)got, ref, d);
    }
    if (t > 0) continue;
    assert_true(w[0] == 0.5f && w[1] == 0.5f); /* sigmoid(+-0) is exactly 1/2 */
  }
  print_message("# sigmoid: worst error %u ulp over %zu values\n", worst, 2 * T);
  free(x); free(ids); free(w);
}

/* ---------------------------------------------------------------- hand-built cases */

/* Logits 0 make every s exactly 1/2, so b = 1/2 + bias and ties are exact. */
static void test_group_tie_lower_index(void** state) {
  (void)state;
  const float x[8] = {0};
  const float bias[8] = {0.0f, 0.0f, 0.125f, 0.0f, 0.125f, 0.0f, 0.0f, 0.0f};
  int32_t ids[4];
  float w[4];
  /* groups 1 and 2 tie (0.625 + 0.5): group 1 is kept. */
  vcollMoeGateParams_t p = mkParams(8, 4, 1, 1, 0, 0, 0, 1.0f);
  gate1(x, bias, &p, ids, w);
  assert_int_equal(ids[0], 2);
  assert_true(w[0] == 0.5f);
  /* both kept: equal biased scores 2 and 4, the lower expert first; then
   * 3 and 5 tie at 0.5 with the kept groups' other expert. */
  p = mkParams(8, 4, 2, 4, 0, 0, 0, 1.0f);
  gate1(x, bias, &p, ids, w);
  assert_int_equal(ids[0], 2);
  assert_int_equal(ids[1], 4);
  assert_int_equal(ids[2], 3);
  assert_int_equal(ids[3], 5);
}

static void test_group_score_is_top2_sum(void** state) {
  (void)state;
  const float x[8] = {0};
  /* b: group 0 {0.875, 0.125} (max 0.875, sum 1.0); group 1 {0.75, 0.75}
   * (sum 1.5); group 2 {0.5, 0.25} (0.75); group 3 {0.5, 0.5} (1.0, ties
   * group 0). Group 1 wins though expert 0 is the best. */
  const float bias[8] = {0.375f, -0.375f, 0.25f, 0.25f, 0.0f, -0.25f, 0.0f, 0.0f};
  int32_t ids[4];
  float w[4];
  vcollMoeGateParams_t p = mkParams(8, 4, 1, 2, 0, 0, 0, 1.0f);
  gate1(x, bias, &p, ids, w);
  assert_int_equal(ids[0], 2);
  assert_int_equal(ids[1], 3);
  /* two groups kept: 1, then 0 (1.0, ties group 3 and has the lower
   * index). Order by b: 0 (0.875), 2, 3 (0.75), 1. */
  p = mkParams(8, 4, 2, 4, 0, 0, 0, 1.0f);
  gate1(x, bias, &p, ids, w);
  assert_int_equal(ids[0], 0);
  assert_int_equal(ids[1], 2);
  assert_int_equal(ids[2], 3);
  assert_int_equal(ids[3], 1);
  /* expert ties across groups: lower index first. */
  const float b2[8] = {0.0f, 0.25f, 0.25f, 0.0f, 0.25f, 0.0f, 0.0f, 0.25f};
  p = mkParams(8, 4, 4, 4, 0, 0, 0, 1.0f);
  int32_t ids4[4];
  float w4[4];
  gate1(x, b2, &p, ids4, w4);
  assert_int_equal(ids4[0], 1);
  assert_int_equal(ids4[1], 2);
  assert_int_equal(ids4[2], 4);
  assert_int_equal(ids4[3], 7);
}

/* The bias chooses, the unbiased sigmoid weighs; renormalize, shared
 * experts and scaling in or out of the kernel. */
static void test_weights_shared_scaling(void** state) {
  (void)state;
  const float x[4] = {2.0f, 0.0f, -1.0f, 3.0f};
  const float bias[4] = {-1.0f, 0.0f, 0.75f, -2.0f};
  /* b = s - 1 (~ -0.12), 0.5, ~1.02, ~ -1.05: order 2, 1, 0, 3. */
  const float rsf = 2.5f;
  int32_t ids[8];
  float w[8];
  vcollMoeGateParams_t p = mkParams(4, 1, 1, 3, 0, 0, 0, rsf);
  gate1(x, bias, &p, ids, w);
  assert_int_equal(ids[0], 2);
  assert_int_equal(ids[1], 1);
  assert_int_equal(ids[2], 0);
  const float s2 = w[0], s1 = w[1], s0 = w[2];
  assert_true(s1 == 0.5f);
  assert_true(fabs(s0 - 1.0 / (1.0 + exp(-2.0))) < 1e-7);
  assert_true(fabs(s2 - 1.0 / (1.0 + exp(1.0))) < 1e-7);
  const float sum = (s2 + s1) + s0;

  for (int nf = 0; nf <= 2; nf++)
    for (int renorm = 0; renorm <= 1; renorm++)
      for (int scaleIn = 0; scaleIn <= 1; scaleIn++) {
        p = mkParams(4, 1, 1, 3, nf, renorm, scaleIn, rsf);
        vtPoison(ids, sizeof(ids));
        vtPoison(w, sizeof(w));
        gate1(x, bias, &p, ids, w);
        const float s[3] = {s2, s1, s0};
        for (int r = 0; r < 3; r++) {
          float e = renorm ? s[r] / sum : s[r];
          if (scaleIn) e = e * rsf;
          assert_true(bitsOf(w[r]) == bitsOf(e));
        }
        if (renorm && !scaleIn) assert_true(fabsf(w[0] + w[1] + w[2] - 1.0f) < 3e-7f);
        for (int j = 0; j < nf; j++) {
          assert_int_equal(ids[3 + j], 4 + j);
          assert_true(w[3 + j] == (scaleIn ? 1.0f : 1.0f / rsf));
        }
        /* nothing past K = 3 + nf */
        assert_true(vtIsPoisoned(ids + 3 + nf, sizeof(ids) - (3 + nf) * 4));
        assert_true(vtIsPoisoned(w + 3 + nf, sizeof(w) - (3 + nf) * 4));
      }
}

/* bf16 logits equal to fp32 ones route identically; NULL bias is zero bias. */
static void test_bf16_and_null_bias(void** state) {
  (void)state;
  vtRng rng = vtRngMake(vtSeed(), 2);
  const int E = 64, T = 50;
  const vcollMoeGateParams_t p = mkParams(E, 8, 3, 6, 1, 1, 0, 2.5f);
  const int K = 7;
  float x[50 * 64], zero[64] = {0};
  uint16_t xb[50 * 64];
  for (int i = 0; i < T * E; i++) {
    xb[i] = (uint16_t)(bitsOf((float)vtNormal(&rng)) >> 16); /* truncation: bf16-exact */
    uint32_t u = (uint32_t)xb[i] << 16;
    memcpy(&x[i], &u, 4);
  }
  int32_t i1[50 * 7], i2[50 * 7], i3[50 * 7];
  float w1[50 * 7], w2[50 * 7], w3[50 * 7];
  assert_int_equal(vcollMoeGateRef(x, vcollFloat32, NULL, T, &p, i1, w1), vcollSuccess);
  assert_int_equal(vcollMoeGateRef(xb, vcollBfloat16, NULL, T, &p, i2, w2), vcollSuccess);
  assert_int_equal(vcollMoeGateRef(x, vcollFloat32, zero, T, &p, i3, w3), vcollSuccess);
  assert_memory_equal(i1, i2, sizeof(i1));
  assert_memory_equal(w1, w2, sizeof(w1));
  assert_memory_equal(i1, i3, sizeof(i1));
  assert_memory_equal(w1, w3, sizeof(w1));
  (void)K;
}

/* ---------------------------------------------------------------- oracle */

typedef struct { uint32_t key; int idx; } Item;
static int byKeyThenIdx(const void* a, const void* b) {
  const Item *x = a, *y = b;
  if (x->key != y->key) return x->key > y->key ? -1 : 1;
  return x->idx - y->idx;
}

/* Sort-based, written separately from the reference's argmax scans. */
static void oracle(const float* x, const float* bias, size_t T, const vcollMoeGateParams_t* p, int32_t* ids,
                   float* w) {
  const int E = p->numExperts, G = p->numExpertGroup, gs = E / G, K = p->topk + p->numFusedSharedExperts;
  for (size_t t = 0; t < T; t++) {
    float s[512];
    Item it[512], grp[256];
    for (int e = 0; e < E; e++) {
      s[e] = vgSigmoid(x[t * E + e]);
      it[e].key = vgKey(s[e] + (bias ? bias[e] : 0.0f));
      it[e].idx = e;
    }
    for (int g = 0; g < G; g++) {
      Item tmp[512];
      memcpy(tmp, it + g * gs, gs * sizeof(Item));
      qsort(tmp, gs, sizeof(Item), byKeyThenIdx);
      grp[g].key = vgGroupKey(tmp[0].key, tmp[1].key);
      grp[g].idx = g;
    }
    qsort(grp, G, sizeof(Item), byKeyThenIdx);
    Item cand[512];
    int n = 0;
    for (int i = 0; i < p->topkGroup; i++)
      for (int e = grp[i].idx * gs; e < (grp[i].idx + 1) * gs; e++) cand[n++] = it[e];
    qsort(cand, n, sizeof(Item), byKeyThenIdx);
    float sum = 0.0f;
    for (int r = 0; r < p->topk; r++) sum += s[cand[r].idx];
    for (int r = 0; r < p->topk; r++) {
      float v = s[cand[r].idx];
      if (p->renormalize) v = v / sum;
      if (p->applyScalingInKernel) v = v * p->routedScalingFactor;
      ids[t * K + r] = cand[r].idx;
      w[t * K + r] = v;
    }
    for (int j = 0; j < p->numFusedSharedExperts; j++) {
      ids[t * K + p->topk + j] = E + j;
      w[t * K + p->topk + j] = p->applyScalingInKernel ? 1.0f : 1.0f / p->routedScalingFactor;
    }
  }
}

static const int shapes[][2] = {{2, 1},   {6, 3},   {8, 4},   {64, 8},  {96, 4},  {160, 5}, {256, 8},
                                {256, 1}, {384, 1}, {384, 12}, {512, 2}, {512, 256}, {100, 10}, {72, 36}};

static void test_random_vs_oracle(void** state) {
  (void)state;
  vtRng rng = vtRngMake(vtSeed(), 3);
  const size_t T = 40;
  float* x = malloc(T * 512 * sizeof(float));
  float bias[512];
  int32_t *i1 = malloc(T * 520 * 4), *i2 = malloc(T * 520 * 4);
  float *w1 = malloc(T * 520 * 4), *w2 = malloc(T * 520 * 4);
  for (size_t c = 0; c < sizeof(shapes) / sizeof(shapes[0]); c++) {
    for (int rep = 0; rep < 12; rep++) {
      const int E = shapes[c][0], G = shapes[c][1], gs = E / G;
      const int tg = (int)vtRange(&rng, 1, G);
      const int topk = (int)vtRange(&rng, 1, tg * gs < 40 ? tg * gs : 40);
      const vcollMoeGateParams_t p = mkParams(E, G, tg, topk, (int)vtRange(&rng, 0, 2), (int)vtRange(&rng, 0, 1),
                                              (int)vtRange(&rng, 0, 1), (float)(0.5 + 3.0 * vtUniform(&rng)));
      const int K = p.topk + p.numFusedSharedExperts;
      /* rep % 3: continuous; coarse grid (many exact ties); huge range */
      for (size_t i = 0; i < T * E; i++) {
        double v = vtNormal(&rng) * 2.0;
        x[i] = rep % 3 == 1 ? (float)(floor(v * 2.0) / 2.0) : rep % 3 == 2 ? (float)(v * 40.0) : (float)v;
      }
      for (int e = 0; e < E; e++) {
        double v = vtNormal(&rng) * 0.1;
        bias[e] = rep % 3 == 1 ? (float)(floor(v * 8.0) / 8.0) : (float)v;
      }
      const float* b = rep % 4 == 3 ? NULL : bias;
      vtPoison(i1, T * K * 4);
      vtPoison(w1, T * K * 4);
      assert_int_equal(vcollMoeGateRef(x, vcollFloat32, b, T, &p, i1, w1), vcollSuccess);
      oracle(x, b, T, &p, i2, w2);
      for (size_t i = 0; i < T * K; i++) {
        if (i1[i] != i2[i] || bitsOf(w1[i]) != bitsOf(w2[i]))
          fail_msg("E %d G %d tg %d topk %d rep %d: token %zu slot %zu: ref id %d w %a, oracle id %d w %a", E, G,
                   tg, topk, rep, i / K, i % K, i1[i], (double)w1[i], i2[i], (double)w2[i]);
      }
      /* ids of a token are distinct and come from kept groups (oracle agrees) */
      for (size_t t = 0; t < T; t++)
        for (int r = 0; r < p.topk; r++)
          for (int q = 0; q < r; q++) assert_int_not_equal(i1[t * K + r], i1[t * K + q]);
    }
  }
  free(x); free(i1); free(i2); free(w1); free(w2);
}

/* ---------------------------------------------------------------- arguments */

typedef vcollResult_t (*GateFn)(const void*, vcollDataType_t, const float*, size_t, const vcollMoeGateParams_t*,
                                int32_t*, float*);
static vcollResult_t gateDev(const void* l, vcollDataType_t ty, const float* b, size_t T,
                             const vcollMoeGateParams_t* p, int32_t* ids, float* w) {
  return vcollMoeGate(l, ty, b, T, p, ids, w, 0);
}

static void expectErr(GateFn fn, const char* name, const void* l, vcollDataType_t ty, const float* b, size_t T,
                      const vcollMoeGateParams_t* p, int32_t* ids, float* w, const char* arg) {
  assert_int_equal(fn(l, ty, b, T, p, ids, w), vcollInvalidArgument);
  const char* msg = vcollGetLastError(NULL);
  if (strstr(msg, name) == NULL || strstr(msg, arg) == NULL)
    fail_msg("error message \"%s\" should name %s and %s", msg, name, arg);
}

static void test_invalid_arguments(void** state) {
  (void)state;
  enum { T = 4, E = 16 };
  float x[T * E] = {0}, bias[E] = {0};
  static float biasAndMore[E + T * 40];
  static int32_t ids[T * 40];
  static float w[T * 40];
  const GateFn fns[2] = {vcollMoeGateRef, gateDev};
  const char* names[2] = {"vcollMoeGateRef", "vcollMoeGate"};
  for (int f = 0; f < 2; f++) {
    GateFn fn = fns[f];
    const char* nm = names[f];
    const vcollMoeGateParams_t ok = mkParams(E, 4, 2, 4, 1, 1, 0, 2.5f);
    vcollMoeGateParams_t p;
    vtPoison(ids, sizeof(ids));
    vtPoison(w, sizeof(w));
#define BAD(field, val, arg) do { p = ok; p.field = (val); expectErr(fn, nm, x, vcollFloat32, bias, T, &p, ids, w, arg); } while (0)
    expectErr(fn, nm, x, vcollFloat32, bias, T, NULL, ids, w, "params");
    BAD(numExperts, 1, "numExperts");
    BAD(numExperts, 513, "numExperts");
    BAD(numExperts, 18, "numExpertGroup"); /* 18 % 4 != 0 */
    BAD(numExpertGroup, 0, "numExpertGroup");
    BAD(numExpertGroup, 3, "numExpertGroup");
    BAD(numExpertGroup, 16, "numExpertGroup"); /* groups of one expert */
    BAD(topkGroup, 0, "topkGroup");
    BAD(topkGroup, 5, "topkGroup");
    BAD(topk, 0, "topk");
    BAD(topk, 9, "topk"); /* 2 kept groups of 4 */
    BAD(numFusedSharedExperts, -1, "numFusedSharedExperts");
    BAD(numFusedSharedExperts, 1025, "numFusedSharedExperts 1025 (must be in 0..1024)");
    BAD(renormalize, 2, "renormalize");
    BAD(applyScalingInKernel, -1, "applyScalingInKernel");
    BAD(routedScalingFactor, 0.0f, "routedScalingFactor");
    BAD(routedScalingFactor, -1.0f, "routedScalingFactor");
    BAD(routedScalingFactor, NAN, "routedScalingFactor");
    BAD(routedScalingFactor, INFINITY, "routedScalingFactor");
#undef BAD
    expectErr(fn, nm, x, vcollFloat16, bias, T, &ok, ids, w, "logitsType");
    expectErr(fn, nm, x, (vcollDataType_t)99, bias, T, &ok, ids, w, "logitsType");
    expectErr(fn, nm, NULL, vcollFloat32, bias, T, &ok, ids, w, "logits");
    expectErr(fn, nm, x, vcollFloat32, bias, T, &ok, NULL, w, "ids");
    expectErr(fn, nm, x, vcollFloat32, bias, T, &ok, ids, NULL, "weights");
    expectErr(fn, nm, (const char*)x + 2, vcollFloat32, bias, T, &ok, ids, w, "logits");
    expectErr(fn, nm, x, vcollFloat32, (const float*)((const char*)bias + 1), T, &ok, ids, w, "bias");
    expectErr(fn, nm, x, vcollFloat32, bias, T, &ok, (int32_t*)((char*)ids + 2), w, "ids");
    expectErr(fn, nm, x, vcollFloat32, bias, T, &ok, ids, (float*)((char*)w + 2), "weights");
    expectErr(fn, nm, x, vcollFloat32, bias, T, &ok, ids, (float*)(ids + 3), "and weights");
    /* weights starting on ids' last slot */
    expectErr(fn, nm, x, vcollFloat32, bias, T, &ok, ids,
              (float*)(ids + T * (ok.topk + ok.numFusedSharedExperts) - 1), "overlap");
    expectErr(fn, nm, x, vcollFloat32, bias, T, &ok, (int32_t*)(x + 8), w, "overlap logits");
    /* weights inside a buffer whose first E floats are the bias (a separate
     * bias array would leave weights running past it into other memory) */
    expectErr(fn, nm, x, vcollFloat32, biasAndMore, T, &ok, ids, biasAndMore + 2, "overlap bias");
    expectErr(fn, nm, x, vcollFloat32, bias, (size_t)1 << 62, &ok, ids, w, "overflow the logits size");
    { /* more slots than experts: 2^56 tokens of 16 fp32 logits fit, their 1032 slots do not */
      vcollMoeGateParams_t many = ok;
      many.numFusedSharedExperts = 1024;
      expectErr(fn, nm, x, vcollFloat32, bias, (size_t)1 << 56, &many, ids, w, "slots overflow the output size");
    }
    assert_true(vtIsPoisoned(ids, sizeof(ids)));
    assert_true(vtIsPoisoned(w, sizeof(w)));
    /* T = 0 is a no-op, NULL buffers allowed */
    assert_int_equal(fn(NULL, vcollBfloat16, NULL, 0, &ok, NULL, NULL), vcollSuccess);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sigmoid_accuracy),       cmocka_unit_test(test_group_tie_lower_index),
      cmocka_unit_test(test_group_score_is_top2_sum), cmocka_unit_test(test_weights_shared_scaling),
      cmocka_unit_test(test_bf16_and_null_bias),     cmocka_unit_test(test_random_vs_oracle),
      cmocka_unit_test(test_invalid_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
