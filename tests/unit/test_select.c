/* The NCCL backend's automatic algorithm choice (vcollAgvSelect,
 * vcollRsvSelect), forcing (vcollAlgoChoose) and checked mode's agreement on
 * it, on communicators that exist only on the host: no GPU, no NCCL
 * communicator. Checks the rules
 * that do not come from measurements: one rank, one rank holding almost
 * everything, the NCCL 2.29 table, and avg kept away from ncclReduceScatter
 * from NCCL 2.31 on (docs/algorithms.md, "NCCL releases"). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vcoll.h"
#include "vcoll_internal.h"
#include "vt.h"

static const struct vcollBackendOps fakeOps = {.name = "nccl (host-only test)"};

static vcollComm_t makeComm(int nranks, int ncclVersion) {
  vcollComm_t c = NULL;
  assert_int_equal(vcollCommCreateCommon(0, nranks, vcollBackendNccl, &fakeOps, &c), vcollSuccess);
  c->ncclVersion = ncclVersion;
  return c;
}

/* counts of `rows` per rank, or all rows on rank 0 when `one`. */
static struct vcollRsvCall rsvCall(vcollComm_t c, size_t* counts, size_t rows, size_t width, int one,
                                   vcollDataType_t t, vcollRedOp_t op) {
  struct vcollRsvCall k;
  memset(&k, 0, sizeof(k));
  for (int r = 0; r < c->nranks; r++) counts[r] = one ? (r == 0 ? rows * c->nranks : 0) : rows;
  k.counts = counts;
  k.totalRows = rows * c->nranks;
  k.maxRows = one ? k.totalRows : rows;
  k.width = width;
  k.rowBytes = width * vcollTypeSize(t);
  k.datatype = t;
  k.op = op;
  return k;
}

static const char* rsvAuto(vcollComm_t c, const struct vcollRsvCall* k) {
  return vcollAlgoName(vcollCollReduceScatterV, vcollRsvSelect(c, k));
}

/* What runs with `forced` set on the communicator. */
static const char* rsvForced(vcollComm_t c, const struct vcollRsvCall* k, const char* forced) {
  assert_int_equal(vcollCommSetAlgo(c, vcollCollReduceScatterV, forced), vcollSuccess);
  const char* ran =
      vcollAlgoName(vcollCollReduceScatterV, vcollAlgoChoose(c, vcollCollReduceScatterV, k, vcollRsvSelect(c, k)));
  assert_int_equal(vcollCommSetAlgo(c, vcollCollReduceScatterV, NULL), vcollSuccess);
  return ran;
}

static int isPad(const char* a) { return strcmp(a, "pad") == 0 || strcmp(a, "pad_symm") == 0; }

static void test_rsv_avg_by_nccl_version(void** state) {
  (void)state;
  size_t counts[8];
  /* 4 ranks, equal, 64 KB per rank of float: the table's padded rows. */
  for (int v = 0; v < 5; v++) {
    const int version = (int[]){22803, 22907, 23007, 23102, 23203}[v];
    vcollComm_t c = makeComm(4, version);
    struct vcollRsvCall sum = rsvCall(c, counts, 256, 64, 0, vcollFloat32, vcollSum);
    struct vcollRsvCall avg = rsvCall(c, counts, 256, 64, 0, vcollFloat32, vcollAvg);
    assert_true(isPad(rsvAuto(c, &sum)));
    assert_string_equal(rsvForced(c, &sum, "native"), "native");
    assert_string_equal(rsvForced(c, &sum, "pad"), "pad");
    if (version < 23100) {
      assert_true(isPad(rsvAuto(c, &avg)));
      assert_string_equal(rsvForced(c, &avg, "native"), "native");
      assert_string_equal(rsvForced(c, &avg, "pad"), "pad");
    } else {
      /* ncclReduceScatter's avg is not trusted: every path to it declines. */
      assert_string_equal(rsvAuto(c, &avg), "reduce");
      assert_string_equal(rsvForced(c, &avg, "native"), "reduce");
      assert_string_equal(rsvForced(c, &avg, "pad"), "reduce");
      assert_string_equal(rsvForced(c, &avg, "pad_symm"), "reduce");
    }
    /* The paths that never hand avg to ncclReduceScatter run when forced. */
    assert_string_equal(rsvForced(c, &avg, "p2p"), "p2p");
    assert_string_equal(rsvForced(c, &avg, "reduce"), "reduce");
    /* VCOLL_NCCL_AVG=1 trusts NCCL's avg again (read at every such call). */
    setenv("VCOLL_NCCL_AVG", "1", 1);
    assert_true(isPad(rsvAuto(c, &avg)));
    assert_string_equal(rsvForced(c, &avg, "native"), "native");
    setenv("VCOLL_NCCL_AVG", "0", 1);
    assert_true(version < 23100 || strcmp(rsvAuto(c, &avg), "reduce") == 0);
    unsetenv("VCOLL_NCCL_AVG");
    vcollCommFreeCommon(c);
  }
}

static void test_rsv_fixed_rules(void** state) {
  (void)state;
  size_t counts[8];
  vcollComm_t c = makeComm(1, 22803);
  struct vcollRsvCall k = rsvCall(c, counts, 100, 16, 0, vcollBfloat16, vcollAvg);
  assert_string_equal(rsvAuto(c, &k), "native"); /* one rank: a copy */
  vcollCommFreeCommon(c);
  c = makeComm(8, 22803);
  k = rsvCall(c, counts, 100, 16, 1, vcollBfloat16, vcollSum); /* one rank holds all */
  assert_string_equal(rsvAuto(c, &k), "reduce");
  k = rsvCall(c, counts, 0, 16, 0, vcollBfloat16, vcollSum); /* nothing to move */
  assert_string_equal(rsvAuto(c, &k), "native");
  /* ... with avg where native declines it: an algorithm that accepts the call. */
  c->ncclVersion = 23102;
  k = rsvCall(c, counts, 0, 16, 0, vcollBfloat16, vcollAvg);
  assert_string_equal(rsvAuto(c, &k), "reduce");
  assert_string_equal(rsvForced(c, &k, "native"), "reduce");
  vcollCommFreeCommon(c);
  c = makeComm(1, 23102);
  k = rsvCall(c, counts, 100, 16, 0, vcollBfloat16, vcollAvg);
  assert_string_equal(rsvAuto(c, &k), "reduce");
  vcollCommFreeCommon(c);
}

/* Counts that differ by one row: the ratio max * n / total is within 1e-9 of
 * 1 (a billion rows) or rounds to exactly 1 in double (2^54 rows), but the
 * table's rows for equal counts (native: ncclAllGather / ncclReduceScatter
 * of maxRows per rank) must not match. */
static void test_nearly_equal_is_not_equal(void** state) {
  (void)state;
  const size_t big = (size_t)1 << 53;
  const size_t cases[2][2] = {{500000000, 499999999}, {big, big - 1}};
  for (int v = 0; v < 4; v++) {
    const size_t* rows = cases[v / 2];
    vcollComm_t c = makeComm(2, v % 2 ? 22907 : 22803);
    vcollTensor_t t = {NULL, NULL, 1, vcollUint8};
    struct vcollAgvCall a;
    memset(&a, 0, sizeof(a));
    a.tensors = &t;
    a.ntensors = 1;
    a.counts = rows;
    a.totalRows = rows[0] + rows[1];
    a.maxRows = rows[0];
    a.totalBytes = a.totalRows;
    const char* agv = vcollAlgoName(vcollCollAllGatherV, vcollAgvSelect(c, &a));
    assert_string_not_equal(agv, "native");
    assert_string_equal(agv, v % 2 ? "bcast" : "pad");
    struct vcollRsvCall r;
    memset(&r, 0, sizeof(r));
    r.counts = rows;
    r.totalRows = a.totalRows;
    r.maxRows = rows[0];
    r.width = 1;
    r.rowBytes = 4;
    r.datatype = vcollFloat32;
    r.op = vcollSum;
    assert_string_equal(rsvAuto(c, &r), "pad");
    /* Should a table ever pick an algorithm that declines the call, the
     * baseline runs instead. */
    assert_string_equal(vcollAlgoName(vcollCollAllGatherV, vcollAlgoChoose(c, vcollCollAllGatherV, &a,
                                                                            vcollAlgoFind(vcollCollAllGatherV, "native"))),
                        "bcast");
    assert_string_equal(vcollAlgoName(vcollCollReduceScatterV,
                                      vcollAlgoChoose(c, vcollCollReduceScatterV, &r,
                                                      vcollAlgoFind(vcollCollReduceScatterV, "native"))),
                        "reduce");
    vcollCommFreeCommon(c);
  }
}

/* Registered buffers: only the bytes a rank reads and writes must lie in a
 * window (reducescatterv's recvbuff holds this rank's rows, maybe none). */
static void test_registered_ranges(void** state) {
  (void)state;
  enum { ROW = 64 };
  static char buf[(48 + 64 + 64 + 16) * ROW];
  struct vcollWindow w = {buf, sizeof(buf), NULL, 0, NULL};
  size_t counts[4] = {48, 64, 64, 16};
  const size_t displ3 = 48 + 64 + 64;
  vcollComm_t c = NULL;
  assert_int_equal(vcollCommCreateCommon(3, 4, vcollBackendNccl, &fakeOps, &c), vcollSuccess);
  c->ncclVersion = 22803;
  c->windows = &w;
  struct vcollRsvCall r;
  memset(&r, 0, sizeof(r));
  r.counts = counts;
  r.totalRows = 192;
  r.maxRows = 64;
  r.width = ROW / 4;
  r.rowBytes = ROW;
  r.datatype = vcollFloat32;
  r.op = vcollSum;
  r.sendbuff = buf;
  r.recvbuff = buf + displ3 * ROW; /* in place, the window's last 16 rows */
  assert_true(vcollRsvAllRegistered(c, &r));
  r.recvbuff = buf + sizeof(buf) - 8 * ROW; /* half of this rank's rows outside */
  assert_false(vcollRsvAllRegistered(c, &r));
  counts[3] = 0; /* a rank without rows may pass recvbuff NULL */
  counts[0] = 64;
  r.recvbuff = NULL;
  assert_true(vcollRsvAllRegistered(c, &r));
  r.sendbuff = buf + ROW; /* sendbuff runs past the window */
  assert_false(vcollRsvAllRegistered(c, &r));
  r.sendbuff = buf;
  r.totalRows = 0; /* nothing moves */
  assert_false(vcollRsvAllRegistered(c, &r));

  vcollTensor_t t = {buf + 8 * ROW, buf, ROW, vcollUint8};
  size_t acounts[4] = {0, 0, 0, 8};
  struct vcollAgvCall a;
  memset(&a, 0, sizeof(a));
  a.tensors = &t;
  a.ntensors = 1;
  a.counts = acounts;
  a.totalRows = 8;
  a.maxRows = 8;
  assert_true(vcollAgvAllRegistered(c, &a));
  t.recvbuff = buf + sizeof(buf) - 4 * ROW;
  assert_false(vcollAgvAllRegistered(c, &a));
  c->windows = NULL;
  vcollCommFreeCommon(c);
}

/* allgatherv: one float tensor, rank r holding rows[r]. */
static const char* agvAuto(vcollComm_t c, const size_t* rows, size_t width) {
  static vcollTensor_t t;
  memset(&t, 0, sizeof(t));
  t.datatype = vcollFloat32;
  t.width = width;
  struct vcollAgvCall k;
  memset(&k, 0, sizeof(k));
  k.tensors = &t;
  k.ntensors = 1;
  k.counts = rows;
  for (int r = 0; r < c->nranks; r++) {
    k.totalRows += rows[r];
    if (rows[r] > k.maxRows) k.maxRows = rows[r];
  }
  k.totalBytes = k.totalRows * width * 4;
  return vcollAlgoName(vcollCollAllGatherV, vcollAgvSelect(c, &k));
}

static void test_agv_tables_by_nccl_version(void** state) {
  (void)state;
  /* 4 ranks, 1 MB per rank on average, imbalance 1.75 (7:5:3:1 x 512 rows of 512 bytes). */
  const size_t skew[4] = {7 * 512, 5 * 512, 3 * 512, 1 * 512};
  vcollComm_t c = makeComm(4, 22803);
  assert_true(isPad(agvAuto(c, skew, 128))); /* agvRules: skew 1 MB -> pad_symm */
  c->ncclVersion = 22907;
  assert_string_equal(agvAuto(c, skew, 128), "bcast"); /* agvRules229: the fused AllGatherV */
  c->ncclVersion = 22900; /* from 2.29.0 on */
  assert_string_equal(agvAuto(c, skew, 128), "bcast");
  c->ncclVersion = 22907;
  const size_t one[4] = {4096, 0, 0, 0};
  assert_string_equal(agvAuto(c, one, 256), "bcast");
  const size_t none[4] = {0, 0, 0, 0};
  assert_string_equal(agvAuto(c, none, 256), "native");
  vcollCommFreeCommon(c);
  c = makeComm(1, 22907);
  const size_t solo[1] = {77};
  assert_string_equal(agvAuto(c, solo, 3), "native");
  vcollCommFreeCommon(c);
}

/* Thresholds that do not come from measurements: one rank holding almost
 * everything (imbalance >= 3/4 nranks) goes to the baseline; ops without
 * NCCL symmetric kernels skip the rows marked for them; a forced algorithm
 * that cannot run the call gives the automatic choice; VCOLL_ALGO's forms. */
static void test_fixed_thresholds_and_overrides(void** state) {
  (void)state;
  vcollComm_t c = makeComm(4, 22803);
  const size_t below[4] = {7 * 64, 64, 64, 64}, above[4] = {13 * 64, 64, 64, 64}; /* imbalance 2.8, 3.25 */
  assert_string_not_equal(agvAuto(c, below, 256), "bcast");
  assert_string_equal(agvAuto(c, above, 256), "bcast");
  size_t counts[8];
  struct vcollRsvCall k = rsvCall(c, counts, 64, 256, 0, vcollFloat32, vcollSum);
  /* (reducescatterv's table also ends in reduce for imbalances this high) */
  const size_t rAbove[4] = {13 * 64, 64, 64, 64};
  k.counts = rAbove, k.totalRows = 16 * 64, k.maxRows = 13 * 64;
  assert_string_equal(rsvAuto(c, &k), "reduce");
  /* Equal counts, 64 KB per rank: float sum has symmetric kernels (pad_symm,
   * or pad without them); int32 sum and float max do not: native. */
  k = rsvCall(c, counts, 64, 256, 0, vcollFloat32, vcollSum);
  assert_true(isPad(rsvAuto(c, &k)));
  k = rsvCall(c, counts, 64, 256, 0, vcollInt32, vcollSum);
  assert_string_equal(rsvAuto(c, &k), "native");
  k = rsvCall(c, counts, 64, 256, 0, vcollFloat32, vcollMax);
  assert_string_equal(rsvAuto(c, &k), "native");
  /* Forced native on unequal counts: the automatic choice runs, not the baseline. */
  const size_t uneq[4] = {100, 90, 80, 70};
  k = rsvCall(c, counts, 64, 256, 0, vcollFloat32, vcollSum);
  k.counts = uneq, k.totalRows = 340, k.maxRows = 100;
  assert_string_equal(rsvForced(c, &k, "native"), rsvAuto(c, &k));
  assert_string_not_equal(rsvAuto(c, &k), "reduce");
  /* VCOLL_ALGO: "coll=name" for one collective, a bare name for every one that has it. */
  setenv("VCOLL_ALGO", "reducescatterv=p2p", 1);
  assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, vcollAlgoChoose(c, vcollCollReduceScatterV, &k,
                                                                             vcollRsvSelect(c, &k))), "p2p");
  setenv("VCOLL_ALGO", "allgatherv=p2p,reducescatterv=reduce", 1);
  assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, vcollAlgoChoose(c, vcollCollReduceScatterV, &k,
                                                                             vcollRsvSelect(c, &k))), "reduce");
  setenv("VCOLL_ALGO", "allfoo=p2p,reducescatt=reduce", 1); /* no such collectives: automatic */
  assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, vcollAlgoChoose(c, vcollCollReduceScatterV, &k,
                                                                             vcollRsvSelect(c, &k))), rsvAuto(c, &k));
  setenv("VCOLL_ALGO", "p2p", 1);
  assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, vcollAlgoChoose(c, vcollCollReduceScatterV, &k,
                                                                             vcollRsvSelect(c, &k))), "p2p");
  unsetenv("VCOLL_ALGO");
  vcollCommFreeCommon(c);
}

/* ---- every row of the measured tables, at its edges ---------------------
 * The tables' numbers come from measurements and are refitted from
 * benchmark output (bench/fit_rules.py), so they are not pinned here. What
 * is checked, through the tables themselves: every row can be reached (no
 * earlier row covers it), and at its inclusive edges (bytes per rank equal
 * to its bound; imbalance equal to its bound) the selection picks it. With
 * 4 ranks, counts {m, a, a, a} rows of w bytes: imbalance 4m / (m + 3a),
 * bytes per rank (m + 3a) w / 4, both exact. */
static int getRule(vcollCollective_t coll, int v, int i, size_t* B, double* I, const char** algo) {
  int symmOnly = 0;
  return coll == vcollCollAllGatherV ? vcollAgvRule(v, i, B, I, algo) : vcollRsvRule(v, i, B, I, &symmOnly, algo);
}

/* 1 if a row before row i matches (the calls below are float sums, for
 * which reducescatterv's symmetric-op rows apply too). */
static int coveredBefore(vcollCollective_t coll, int v, int i, size_t perRank, double imb) {
  size_t B;
  double I;
  const char* a;
  for (int k = 0; k < i && getRule(coll, v, k, &B, &I, &a); k++)
    if (perRank <= B && imb <= I) return 1;
  return 0;
}

/* The choice for counts {m, a, a, a} of float rows of w bytes (w a multiple of 4). */
static const char* selectAt(vcollComm_t c, vcollCollective_t coll, size_t m, size_t a, size_t w) {
  const size_t counts[4] = {m, a, a, a};
  if (coll == vcollCollAllGatherV) return agvAuto(c, counts, w / 4);
  struct vcollRsvCall k;
  memset(&k, 0, sizeof(k));
  k.counts = counts;
  k.totalRows = m + 3 * a;
  k.maxRows = m > a ? m : a;
  k.width = w / 4;
  k.rowBytes = w;
  k.datatype = vcollFloat32;
  k.op = vcollSum;
  return vcollAlgoName(vcollCollReduceScatterV, vcollRsvSelect(c, &k));
}

static void checkTableEdges(vcollCollective_t coll, int v) {
  vcollComm_t c = makeComm(4, v);
  size_t B;
  double I;
  const char* algo;
  const size_t unit = 4; /* row bytes: whole floats (selectAt's calls are of floats) */
  for (int i = 0; getRule(coll, v, i, &B, &I, &algo); i++) {
    char where[96];
    snprintf(where, sizeof(where), "%s table (NCCL %d) row %d", coll == vcollCollAllGatherV ? "allgatherv" : "reducescatterv", v, i);
    int checked = 0;
    /* Bytes edge: per rank exactly B (rows without a bound: 2^40 bytes, past
     * every bound), at the largest exact imbalance <= I (and < 3, where one
     * rank holds almost everything) of the first T that has one no earlier
     * row covers. */
    {
      const size_t Bx = B == SIZE_MAX ? (size_t)1 << 40 : B;
      int found = 0;
      for (int j = 2; j <= 14 && !found; j++) {
        const size_t T = (size_t)1 << j;
        for (size_t m = T; m >= T / 4 && !found; m--) {
          if ((T - m) % 3 != 0 || Bx % (T / 4 * unit) != 0) continue; /* rows of Bx / (T/4) bytes */
          const size_t a = (T - m) / 3;
          const double x = 4.0 * (double)m / (double)T;
          if (x > I || x >= 3.0 || (x > 1.0) != (I > 1.0) || coveredBefore(coll, v, i, Bx, x)) continue;
          found = 1;
          const char* got = selectAt(c, coll, m, a, Bx / (T / 4));
          if (strcmp(got, algo) != 0)
            fail_msg("%s (%s): %zu bytes/rank, imbalance %g picks %s", where, algo, Bx, x, got);
        }
      }
      checked += found;
    }
    /* Imbalance edge: imbalance exactly I = p/q, m = 3p, a = 4q - p, so
     * m + 3a = 12q; bytes per rank 3q w, as large as the row allows. */
    if (I > 1.0 && I < 3.0) {
      long long p = llround(I * 1000), q = 1000, g0, g1;
      if ((double)p / (double)q > I) p--; /* a bound off the 0.001 grid: the grid point below it */
      g0 = p, g1 = q;
      while (g1) { long long t = g0 % g1; g0 = g1; g1 = t; }
      p /= g0, q /= g0;
      const double Ix = (double)p / (double)q; /* the imbalance the call has */
      const size_t bound = B == SIZE_MAX ? (size_t)1 << 40 : B;
      const size_t w = bound / (3 * (size_t)q) / unit * unit;
      const size_t perRank = 3 * (size_t)q * w;
      if (w > 0 && !coveredBefore(coll, v, i, perRank, Ix)) {
        const char* got = selectAt(c, coll, 3 * (size_t)p, 4 * (size_t)q - (size_t)p, w);
        if (strcmp(got, algo) != 0) fail_msg("%s (%s): %zu bytes/rank, imbalance %.17g picks %s", where, algo, perRank, Ix, got);
        checked++;
      }
    }
    if (!checked) fail_msg("%s (%s): no point reaches it (an earlier row covers it)", where, algo);
  }
  vcollCommFreeCommon(c);
}

static void test_table_rows_at_their_edges(void** state) {
  (void)state;
  /* The accessors: no row -1; each table ends in a row that matches every call. */
  const int vs[3][2] = {{vcollCollAllGatherV, 22803}, {vcollCollAllGatherV, 22907}, {vcollCollReduceScatterV, 22803}};
  for (int k = 0; k < 3; k++) {
    size_t B = 0;
    double I = 0;
    const char* a = NULL;
    assert_int_equal(getRule((vcollCollective_t)vs[k][0], vs[k][1], -1, &B, &I, &a), 0);
    int i = 0;
    while (getRule((vcollCollective_t)vs[k][0], vs[k][1], i, &B, &I, &a)) i++;
    assert_true(i > 0);
    assert_int_equal(getRule((vcollCollective_t)vs[k][0], vs[k][1], i - 1, &B, &I, &a), 1);
    assert_true(B == SIZE_MAX && I == DBL_MAX);
  }
  /* reducescatterv's symmOpOnly as the selection applies it: there are such
   * rows; an int32 sum at one's bytes edge (equal counts) never takes it, a
   * float sum does where no earlier row covers the point. */
  {
    vcollComm_t c = makeComm(4, 22803);
    size_t B;
    double I;
    int symmOnly, nSymm = 0;
    const char* algo;
    for (int i = 0; vcollRsvRule(22803, i, &B, &I, &symmOnly, &algo); i++) {
      if (!symmOnly) continue;
      nSymm++;
      size_t counts[4];
      struct vcollRsvCall k = rsvCall(c, counts, 4, B / 16, 0, vcollInt32, vcollSum); /* 4 rows of B/4 bytes per rank */
      assert_string_not_equal(rsvAuto(c, &k), algo);
      k = rsvCall(c, counts, 4, B / 16, 0, vcollFloat32, vcollSum);
      if (!coveredBefore(vcollCollReduceScatterV, 22803, i, B, 1.0)) assert_string_equal(rsvAuto(c, &k), algo);
    }
    assert_true(nSymm > 0);
    vcollCommFreeCommon(c);
  }
  checkTableEdges(vcollCollAllGatherV, 22803);
  checkTableEdges(vcollCollAllGatherV, 22907);
  checkTableEdges(vcollCollReduceScatterV, 22803);
}

/* Checked mode compares the algorithm too: a backend whose collectives only
 * record the algorithm they were handed, and whose agreement step records
 * this rank's digest and can mix in another rank's. */
static int seenAlgo = -2;
static uint64_t seenDigest, otherDigest;
static vcollResult_t recAgv(vcollComm_t comm, const struct vcollAgvCall* call) {
  (void)comm;
  seenAlgo = call->algo;
  return vcollSuccess;
}
static vcollResult_t recRsv(vcollComm_t comm, const struct vcollRsvCall* call) {
  (void)comm;
  seenAlgo = call->algo;
  return vcollSuccess;
}
/* The agreement's values (per field a hash and its complement, then the
 * failing-rank word) seen so far, by the digest of their fields. */
enum { kMaxVals = 64, kSnaps = 32 };
static struct {
  uint64_t digest, vals[kMaxVals];
} snaps[kSnaps];
static int nSnaps;
static vcollResult_t recMax(vcollComm_t comm, uint64_t* vals, int n, cudaStream_t stream) {
  (void)comm; (void)stream;
  assert_int_equal(n, 19); /* always the same length: 9 fields, each hash and complement, the failing rank */
  seenDigest = 1469598103934665603ull; /* FNV-1a over the words */
  for (int i = 0; i < n - 1; i++) seenDigest = (seenDigest ^ vals[i]) * 1099511628211ull;
  int known = 0;
  for (int i = 0; i < nSnaps; i++) known |= snaps[i].digest == seenDigest;
  if (!known && nSnaps < kSnaps) {
    snaps[nSnaps].digest = seenDigest;
    memcpy(snaps[nSnaps++].vals, vals, sizeof(uint64_t) * (size_t)n);
  }
  if (otherDigest) { /* another rank whose fields had that digest */
    int k = 0;
    while (k < nSnaps && snaps[k].digest != otherDigest) k++;
    assert_true(k < nSnaps);
    for (int i = 0; i < n - 1; i++) vals[i] = vals[i] > snaps[k].vals[i] ? vals[i] : snaps[k].vals[i];
  }
  return vcollSuccess;
}
static const struct vcollBackendOps recOps = {
    .name = "nccl (recording)", .allgatherv = recAgv, .reducescatterv = recRsv, .allreduceMaxU64 = recMax};

static void test_checked_mode_compares_algorithms(void** state) {
  (void)state;
  vcollComm_t c = NULL;
  assert_int_equal(vcollCommCreateCommon(0, 4, vcollBackendNccl, &recOps, &c), vcollSuccess);
  c->ncclVersion = 22803;
  static char send[4 * 64], recv[16 * 64]; /* never touched: the backend only records */
  size_t counts[4] = {4, 4, 4, 4};
  vcollTensor_t t = {send, recv, 16, vcollFloat32};

  /* Unchecked: the backend chooses (algo -1 handed over). */
  seenAlgo = -2;
  assert_int_equal(vcollAllGatherV(&t, 1, counts, c, 0), vcollSuccess);
  assert_int_equal(seenAlgo, -1);

  /* enable is 0 or 1 only. */
  assert_int_equal(vcollCommSetChecked(c, 2), vcollInvalidArgument);
  assert_non_null(strstr(vcollGetLastError(c), "vcollCommSetChecked : enable is 2"));
  assert_int_equal(vcollCommSetChecked(c, 1), vcollSuccess);
  /* Checked: chosen before the digest and handed over. */
  assert_int_equal(vcollAllGatherV(&t, 1, counts, c, 0), vcollSuccess);
  assert_true(seenAlgo >= 0);
  assert_true(isPad(vcollAlgoName(vcollCollAllGatherV, seenAlgo)));
  const uint64_t autoDigest = seenDigest;
  /* Another algorithm on this rank: another digest. */
  assert_int_equal(vcollCommSetAlgo(c, vcollCollAllGatherV, "bcast"), vcollSuccess);
  assert_int_equal(vcollAllGatherV(&t, 1, counts, c, 0), vcollSuccess);
  assert_string_equal(vcollAlgoName(vcollCollAllGatherV, seenAlgo), "bcast");
  assert_true(seenDigest != autoDigest);
  /* A rank that chose otherwise: mismatch, and the backend is not called. */
  otherDigest = autoDigest;
  seenAlgo = -2;
  assert_int_equal(vcollAllGatherV(&t, 1, counts, c, 0), vcollArgumentMismatch);
  assert_int_equal(seenAlgo, -2);
  assert_non_null(strstr(vcollGetLastError(c), "different algorithms"));
  otherDigest = 0;
  assert_int_equal(vcollCommSetAlgo(c, vcollCollAllGatherV, NULL), vcollSuccess);
  /* The digest covers every tensor's type (same width and element size) and
   * every rank's count, the last one included. */
  vcollTensor_t h16 = {send, recv, 16, vcollFloat16}, b16 = {send, recv, 16, vcollBfloat16};
  assert_int_equal(vcollAllGatherV(&h16, 1, counts, c, 0), vcollSuccess);
  const uint64_t dH = seenDigest;
  assert_int_equal(vcollAllGatherV(&b16, 1, counts, c, 0), vcollSuccess);
  assert_true(seenDigest != dH);
  assert_int_equal(vcollAllGatherV(&t, 1, counts, c, 0), vcollSuccess);
  const uint64_t dCounts = seenDigest;
  counts[3] = 3;
  assert_int_equal(vcollAllGatherV(&t, 1, counts, c, 0), vcollSuccess);
  assert_true(seenDigest != dCounts);
  counts[3] = 4;

  /* reducescatterv: avg on NCCL 2.32 with VCOLL_NCCL_AVG on one rank only. */
  c->ncclVersion = 23203;
  assert_int_equal(vcollReduceScatterV(recv, send, counts, 16, vcollFloat32, vcollAvg, c, 0), vcollSuccess);
  assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, seenAlgo), "reduce");
  const uint64_t guarded = seenDigest;
  setenv("VCOLL_NCCL_AVG", "1", 1);
  otherDigest = guarded; /* the other ranks kept the guard */
  assert_int_equal(vcollReduceScatterV(recv, send, counts, 16, vcollFloat32, vcollAvg, c, 0),
                   vcollArgumentMismatch);
  unsetenv("VCOLL_NCCL_AVG");
  otherDigest = 0;

  /* vcollReduceScatterVAlgo (the MoE fp32 combine's p2p way): the fixed
   * algorithm reaches the backend, unchecked and checked, whatever the
   * communicator forces, is the last algorithm, and is in the digest. */
  c->ncclVersion = 22803;
  assert_int_equal(vcollCommSetChecked(c, 0), vcollSuccess);
  assert_int_equal(vcollCommSetAlgo(c, vcollCollReduceScatterV, "native"), vcollSuccess);
  seenAlgo = -2;
  assert_int_equal(vcollReduceScatterVAlgo(recv, send, counts, 16, vcollBfloat16, vcollSum, c, 0, "p2p"), vcollSuccess);
  assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, seenAlgo), "p2p");
  assert_string_equal(vcollCommLastAlgo(c, vcollCollReduceScatterV), "p2p");
  assert_int_equal(vcollCommSetChecked(c, 1), vcollSuccess);
  assert_int_equal(vcollReduceScatterV(recv, send, counts, 16, vcollBfloat16, vcollSum, c, 0), vcollSuccess);
  assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, seenAlgo), "native");
  const uint64_t forcedNative = seenDigest;
  assert_int_equal(vcollReduceScatterVAlgo(recv, send, counts, 16, vcollBfloat16, vcollSum, c, 0, "p2p"), vcollSuccess);
  assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, seenAlgo), "p2p");
  assert_true(seenDigest != forcedNative);
  otherDigest = forcedNative; /* another rank ran the communicator's choice */
  assert_int_equal(vcollReduceScatterVAlgo(recv, send, counts, 16, vcollBfloat16, vcollSum, c, 0, "p2p"),
                   vcollArgumentMismatch);
  otherDigest = 0;
  /* An algorithm that cannot run the call is an internal error, not a silent substitute. */
  const size_t uneq[4] = {5, 4, 4, 3};
  seenAlgo = -2;
  assert_int_equal(vcollReduceScatterVAlgo(recv, send, uneq, 16, vcollBfloat16, vcollSum, c, 0, "native"),
                   vcollInternalError);
  assert_int_equal(seenAlgo, -2);
  /* ... and so is a name that is no algorithm. */
  assert_int_equal(vcollReduceScatterVAlgo(recv, send, counts, 16, vcollBfloat16, vcollSum, c, 0, "nonesuch"),
                   vcollInternalError);
  assert_int_equal(seenAlgo, -2);
  /* Every fixed algorithm, the table's first (index 0) too, survives the checked digest. */
  for (int a = 0; vcollAlgoName(vcollCollReduceScatterV, a); a++) {
    const char* name = vcollAlgoName(vcollCollReduceScatterV, a);
    seenAlgo = -2;
    const vcollResult_t r = vcollReduceScatterVAlgo(recv, send, counts, 16, vcollBfloat16, vcollSum, c, 0, name);
    if (r == vcollInternalError && seenAlgo == -2) continue; /* cannot run this call (pad_symm without windows) */
    assert_int_equal(r, vcollSuccess);
    assert_string_equal(vcollAlgoName(vcollCollReduceScatterV, seenAlgo), name);
  }
  assert_int_equal(vcollCommSetAlgo(c, vcollCollReduceScatterV, NULL), vcollSuccess);
  vcollCommFreeCommon(c);
}

/* vcollAgvProduceSend: nothing without a producer; else the producer once,
 * with every tensor's sendbuff in order, and its error passed on. */
static int produced;
static void* producedDst[VCOLL_AGV_PRODUCE_MAX_TENSORS];
static vcollResult_t recProduce(void* ctx, void* const* dst, cudaStream_t stream) {
  (void)stream;
  produced++;
  for (int i = 0; i < 3; i++) producedDst[i] = dst[i];
  return *(vcollResult_t*)ctx;
}

static void test_produce_send(void** state) {
  (void)state;
  static char b[6][8];
  vcollTensor_t t[3] = {{b[0], b[1], 1, vcollUint8}, {b[2], b[3], 1, vcollUint8}, {b[4], b[5], 1, vcollUint8}};
  vcollResult_t ret = vcollSuccess;
  struct vcollAgvCall k;
  memset(&k, 0, sizeof(k));
  k.tensors = t;
  k.ntensors = 3;
  produced = 0;
  assert_int_equal(vcollAgvProduceSend(&k), vcollSuccess);
  assert_int_equal(produced, 0);
  k.produce = recProduce;
  k.produceCtx = &ret;
  assert_int_equal(vcollAgvProduceSend(&k), vcollSuccess);
  assert_int_equal(produced, 1);
  for (int i = 0; i < 3; i++) assert_ptr_equal(producedDst[i], t[i].sendbuff);
  ret = vcollInvalidArgument;
  assert_int_equal(vcollAgvProduceSend(&k), vcollInvalidArgument);
}

/* VCOLL_ALGO's parts that name nothing get a notice on stderr (VCOLL_DEBUG
 * unset), once per value; parts that name something get none, and the
 * forced algorithm is still found. stderr goes to a file meanwhile. */
static void test_algo_env_notices(void** state) {
  (void)state;
  if (getenv("VCOLL_DEBUG")) skip(); /* the notices would go to the log */
  vcollComm_t c = NULL;
  assert_int_equal(vcollCommCreateCommon(0, 4, vcollBackendNccl, &recOps, &c), vcollSuccess);
  c->ncclVersion = 22803;
  assert_int_equal(vcollCommSetChecked(c, 1), vcollSuccess); /* the algorithm is chosen before the backend */
  static char send[4 * 64], recv[16 * 64];
  size_t counts[4] = {4, 4, 4, 4};
  vcollTensor_t t = {send, recv, 16, vcollFloat32};
  char path[] = "/tmp/vcoll_notice_XXXXXX";
  const int fd = mkstemp(path);
  assert_true(fd >= 0);
  fflush(stderr);
  const int saved = dup(2);
  assert_true(saved >= 0 && dup2(fd, 2) == 2);
  setenv("VCOLL_ALGO", "bogus,allgatherv=nope;reducescatterv:reduce,allgatherv=bcast", 1);
  for (int i = 0; i < 2; i++) assert_int_equal(vcollAllGatherV(&t, 1, counts, c, 0), vcollSuccess);
  const int forced = seenAlgo;
  setenv("VCOLL_ALGO", "allgatherv=bcast,p2p", 1);
  assert_int_equal(vcollAllGatherV(&t, 1, counts, c, 0), vcollSuccess);
  const int forced2 = seenAlgo;
  unsetenv("VCOLL_ALGO");
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  char text[4096] = "";
  const ssize_t got = pread(fd, text, sizeof(text) - 1, 0);
  close(fd);
  unlink(path);
  assert_true(got >= 0);
  text[got] = '\0';
  /* allgatherv=nope decides for allgatherv (no forced algorithm: the choice is automatic, pad here). */
  assert_true(forced >= 0 && isPad(vcollAlgoName(vcollCollAllGatherV, forced)));
  assert_true(forced2 >= 0);
  assert_string_equal(vcollAlgoName(vcollCollAllGatherV, forced2), "bcast");
  int lines = 0;
  for (const char* q = text; (q = strstr(q, "VCOLL WARN")); q++) lines++;
  if (lines != 2 || !strstr(text, "'bogus' names no algorithm") || !strstr(text, "'allgatherv=nope' names no algorithm"))
    fail_msg("want two notices, for 'bogus' and 'allgatherv=nope', once each; stderr was:\n%s", text);
  vcollCommFreeCommon(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_algo_env_notices),
      cmocka_unit_test(test_rsv_avg_by_nccl_version),
      cmocka_unit_test(test_rsv_fixed_rules),
      cmocka_unit_test(test_agv_tables_by_nccl_version),
      cmocka_unit_test(test_nearly_equal_is_not_equal),
      cmocka_unit_test(test_registered_ranges),
      cmocka_unit_test(test_fixed_thresholds_and_overrides),
      cmocka_unit_test(test_table_rows_at_their_edges),
      cmocka_unit_test(test_checked_mode_compares_algorithms),
      cmocka_unit_test(test_produce_send),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
