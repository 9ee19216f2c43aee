/* The driver shared by allgatherv_perf and reducescatterv_perf: flags,
 * shapes of the per-rank row counts, timing, checking, table and JSON.
 *
 * Timing: CUDA events around every iteration (or every graph launch of -G
 * iterations), warm-up first, the median over iterations on each rank, and
 * the time of a point is the maximum of the ranks' medians. The number of
 * iterations is capped by a time budget per measurement (-B) so a full
 * 1K..256M sweep stays short. Every algorithm is forced in turn with
 * vcollCommSetAlgo on the same buffers, and a device-to-device cudaMemcpy of
 * the gathered bytes is timed alongside as a reference. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <mpi.h>

#include "bench.h"
#include "cli_args.h"
#include "vcoll_mpi.h"

#define MAX_ALGOS 16
#define MAX_ITERS 1000

enum { SHAPE_EQUAL, SHAPE_SKEW, SHAPE_ONE, SHAPE_RANDOM, SHAPE_MOE, SHAPE_COUNT };
static const char* shapeNames[SHAPE_COUNT] = {"equal", "skew", "one", "random", "moe"};

struct opts {
  size_t minBytes, maxBytes, stepFactor;
  int iters, warmup, check, graph, registered, inplace, selection;
  double budgetMs;
  vcollDataType_t type;
  vcollRedOp_t op;
  size_t width; /* 0: from the size */
  int ntensors;
  int shapes[SHAPE_COUNT], nshapes;
  unsigned long long seed;
  const char* json;
  const char* algos; /* comma list, NULL: all */
  vcollBackend_t backend;
};

static int rank_, nranks_;
static const struct benchColl* C;
static vcollComm_t comm;
static cudaStream_t stream;
static int onDev;
static cudaEvent_t events[MAX_ITERS + 1];
static struct opts O;

static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[rank %d] %s: ", rank_, C ? C->name : "bench");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

#define VCHECK(call)                                                                          \
  do {                                                                                        \
    vcollResult_t r_ = (call);                                                                \
    if (r_ != vcollSuccess) die("%s failed: %s (%s)", #call, vcollGetErrorString(r_), vcollGetLastError(comm)); \
  } while (0)
#define CUCHECK(call)                                                                         \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess) die("%s failed: %s", #call, cudaGetErrorString(e_));               \
  } while (0)

/* ---- flags --------------------------------------------------------------- */

/* Flag values, strictly (cli_args.h): a bad one names the flag. */
#define MAX_BYTES ((size_t)1 << 40) /* per rank */
static size_t argBytes(int flag, const char* s) {
  size_t v;
  if (!cliBytes(s, 1, MAX_BYTES, &v)) die("-%c: bad size '%s' (bytes per rank, 1..1T, e.g. 4096, 64K, 1.5M, 1G)", flag, s);
  return v;
}
static int argInt(int flag, const char* s, int lo, int hi) {
  int v;
  if (!cliInt(s, lo, hi, &v)) die("-%c: bad value '%s' (an integer in %d..%d)", flag, s, lo, hi);
  return v;
}

static void usage(void) {
  if (rank_ == 0)
    printf("usage: mpirun -np N %s_perf [options]\n"
           "  -b MINBYTES -e MAXBYTES -f FACTOR  bytes per rank (mean), e.g. -b 1K -e 256M -f 4\n"
           "  -n ITERS (20) -w WARMUP (5) -B BUDGET_MS per measurement (30)\n"
           "  -c 0|1 check results (1)   -d TYPE (bfloat16)   -o OP (sum; reducescatterv)\n"
           "  -G N  time CUDA graphs of N calls (0: eager)   -R 0|1 buffers from vcollMemAlloc (0)\n"
           "  -p 0|1 also time in place (1)   -k WIDTH elements per row (0: from the size)\n"
           "  -t NTENSORS tensors per call (allgatherv, 1)   -a ALGOS comma list|all (all)\n"
           "  -s SHAPES equal,skew,one,random,moe|all (equal)   -S SEED (1)\n"
           "  -J FILE JSON output   -x  selection mode (fastest algorithm per shape and size)\n"
           "  --backend nccl|host|auto (auto)\n",
           C->name);
}

static void parseArgs(int argc, char** argv) {
  O = (struct opts){.minBytes = 1024, .maxBytes = 1 << 20, .stepFactor = 4, .iters = 20, .warmup = 5,
                    .check = 1, .inplace = 1, .budgetMs = 30, .type = vcollBfloat16, .op = vcollSum,
                    .ntensors = 1, .seed = 1, .backend = vcollBackendAuto};
  O.shapes[0] = SHAPE_EQUAL;
  O.nshapes = 1;
  static struct option longOpts[] = {{"backend", required_argument, 0, 1},
                                     {"selection", no_argument, 0, 'x'},
                                     {"help", no_argument, 0, 'h'},
                                     {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "b:e:f:n:w:B:c:d:o:G:R:p:k:t:a:s:S:J:xh", longOpts, NULL)) != -1) {
    switch (c) {
      case 'b': O.minBytes = argBytes(c, optarg); break;
      case 'e': O.maxBytes = argBytes(c, optarg); break;
      case 'f': O.stepFactor = (size_t)argInt(c, optarg, 2, 1 << 20); break;
      case 'n': O.iters = argInt(c, optarg, 1, MAX_ITERS); break;
      case 'w': O.warmup = argInt(c, optarg, 1, 1 << 20); break;
      case 'B':
        if (!cliDouble(optarg, 1e-3, 1e7, &O.budgetMs)) die("-B: bad value '%s' (milliseconds, 0.001..1e7)", optarg);
        break;
      case 'c': O.check = argInt(c, optarg, 0, 1); break;
      case 'G': O.graph = argInt(c, optarg, 0, 1 << 20); break;
      case 'R': O.registered = argInt(c, optarg, 0, 1); break;
      case 'p': O.inplace = argInt(c, optarg, 0, 1); break;
      case 'k':
        if (!cliSize(optarg, 0, MAX_BYTES, &O.width)) die("-k: bad value '%s' (elements per row, 0..2^40)", optarg);
        break;
      case 't': O.ntensors = argInt(c, optarg, 1, C->ntensorsMax); break;
      case 'a': O.algos = optarg; break;
      case 'S':
        if (!cliU64(optarg, 0, ~0ull, &O.seed)) die("-S: bad seed '%s' (an unsigned integer)", optarg);
        break;
      case 'J': O.json = optarg; break;
      case 'x': O.selection = 1; break;
      case 'd': {
        int found = 0;
        for (int t = 0; t < vcollNumTypes; t++)
          if (strcmp(optarg, vcollTypeName((vcollDataType_t)t)) == 0) { O.type = (vcollDataType_t)t; found = 1; }
        if (!found) die("unknown type '%s'", optarg);
        break;
      }
      case 'o': {
        int found = 0;
        for (int o = 0; o < vcollNumOps; o++)
          if (strcmp(optarg, vcollOpName((vcollRedOp_t)o)) == 0) { O.op = (vcollRedOp_t)o; found = 1; }
        if (!found) die("unknown op '%s'", optarg);
        break;
      }
      case 's': {
        O.nshapes = 0;
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", strcmp(optarg, "all") ? optarg : "equal,skew,one,random,moe");
        for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
          int s = 0;
          while (s < SHAPE_COUNT && strcmp(tok, shapeNames[s])) s++;
          if (s == SHAPE_COUNT) die("unknown shape '%s'", tok);
          O.shapes[O.nshapes++] = s;
          if (O.nshapes == SHAPE_COUNT) break;
        }
        break;
      }
      case 1:
        if (strcmp(optarg, "nccl") == 0) O.backend = vcollBackendNccl;
        else if (strcmp(optarg, "host") == 0) O.backend = vcollBackendHost;
        else if (strcmp(optarg, "auto") == 0) O.backend = vcollBackendAuto;
        else die("unknown backend '%s'", optarg);
        break;
      case 'h': usage(); MPI_Finalize(); exit(0);
      default: usage(); MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  if (optind < argc) die("unexpected argument '%s' (options only; -h lists them)", argv[optind]);
  if (O.minBytes > O.maxBytes) die("-b %zu is above -e %zu", O.minBytes, O.maxBytes);
  if (O.nshapes == 0) die("-s names no shape");
  if (!C->reduces) O.op = vcollSum;
}

/* ---- shapes -------------------------------------------------------------- */

static unsigned long long rngNext(unsigned long long* s) {
  unsigned long long z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double rngUniform(unsigned long long* s) { return (double)(rngNext(s) >> 11) / 9007199254740992.0; }

/* counts[] summing to n * rowsPerRank, the same on every rank. */
static void makeCounts(int shape, size_t rowsPerRank, unsigned long long seed, size_t* counts) {
  int n = nranks_;
  size_t total = rowsPerRank * (size_t)n, sum = 0;
  double w[1024], wsum = 0;
  unsigned long long s = seed;
  for (int r = 0; r < n; r++) {
    switch (shape) {
      case SHAPE_SKEW: w[r] = 2.0 * (n - r) - 1; break; /* 4 ranks: 1.75:1.25:0.75:0.25 */
      case SHAPE_ONE: w[r] = r == 0; break;
      case SHAPE_RANDOM: w[r] = rngUniform(&s); break;
      case SHAPE_MOE: { /* log-normal token counts (sigma 0.6); n / 8 ranks idle, below */
        double u1 = rngUniform(&s) + 1e-12, u2 = rngUniform(&s);
        w[r] = exp(0.6 * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
        break;
      }
      default: w[r] = 1; break;
    }
  }
  if (shape == SHAPE_MOE) /* exactly n / 8 idle ranks (none below 8 ranks), drawn from the seed */
    for (int k = 0; k < n / 8; k++) {
      int r = (int)(rngNext(&s) % (unsigned long long)n);
      while (w[r] == 0) r = (r + 1) % n;
      w[r] = 0;
    }
  for (int r = 0; r < n; r++) wsum += w[r];
  if (wsum <= 0) { w[0] = 1; wsum = 1; }
  for (int r = 0; r < n; r++) {
    counts[r] = (size_t)floor((double)total * w[r] / wsum);
    sum += counts[r];
  }
  for (int r = 0; sum < total; r = (r + 1) % n)
    if (w[r] > 0) { counts[r]++; sum++; } /* idle ranks stay idle */
}

/* ---- buffers ------------------------------------------------------------- */

static void* bufAlloc(size_t bytes) {
  void* p = NULL;
  if (bytes == 0) bytes = 16;
  if (!onDev) {
    if ((p = malloc(bytes)) == NULL) die("out of host memory (%zu bytes)", bytes);
  } else if (O.registered) {
    VCHECK(vcollMemAlloc(comm, bytes, &p));
  } else {
    CUCHECK(cudaMalloc(&p, bytes));
  }
  return p;
}

static void bufFree(void* p) {
  if (!onDev) free(p);
  else if (O.registered) VCHECK(vcollMemFree(comm, p));
  else CUCHECK(cudaFree(p));
}

/* ---- timing -------------------------------------------------------------- */

static int cmpDouble(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static void syncAll(void) {
  if (onDev) CUCHECK(cudaStreamSynchronize(stream));
}

static double maxOverRanks(double v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return v;
}

/* Median time in us of one call of `run` on this rank over `iters`. */
static double timeLoop(const struct benchPoint* p, const struct benchBufs* b, int iters) {
  double t[MAX_ITERS];
  if (!onDev) {
    for (int i = 0; i < iters; i++) {
      double t0 = MPI_Wtime();
      VCHECK(C->run(p, b, comm, stream));
      t[i] = (MPI_Wtime() - t0) * 1e6;
    }
  } else if (O.graph > 0) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUCHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int g = 0; g < O.graph; g++) VCHECK(C->run(p, b, comm, stream));
    CUCHECK(cudaStreamEndCapture(stream, &graph));
    CUCHECK(cudaGraphInstantiate(&exec, graph, 0));
    CUCHECK(cudaGraphLaunch(exec, stream)); /* warm-up of the graph itself */
    CUCHECK(cudaEventRecord(events[0], stream));
    for (int i = 0; i < iters; i++) {
      CUCHECK(cudaGraphLaunch(exec, stream));
      CUCHECK(cudaEventRecord(events[i + 1], stream));
    }
    syncAll();
    for (int i = 0; i < iters; i++) {
      float ms;
      CUCHECK(cudaEventElapsedTime(&ms, events[i], events[i + 1]));
      t[i] = ms * 1e3 / O.graph;
    }
    CUCHECK(cudaGraphExecDestroy(exec));
    CUCHECK(cudaGraphDestroy(graph));
  } else {
    CUCHECK(cudaEventRecord(events[0], stream));
    for (int i = 0; i < iters; i++) {
      VCHECK(C->run(p, b, comm, stream));
      CUCHECK(cudaEventRecord(events[i + 1], stream));
    }
    syncAll();
    for (int i = 0; i < iters; i++) {
      float ms;
      CUCHECK(cudaEventElapsedTime(&ms, events[i], events[i + 1]));
      t[i] = ms * 1e3;
    }
  }
  qsort(t, (size_t)iters, sizeof(double), cmpDouble);
  return iters % 2 ? t[iters / 2] : 0.5 * (t[iters / 2 - 1] + t[iters / 2]);
}

/* One measurement: forces `algo` (NULL: automatic), checks once, warms up,
 * times. Returns the time in us (max over ranks), or -1 when the forced
 * algorithm does not support the call. *chosen gets the algorithm run. */
static double measure(struct benchPoint* p, struct benchBufs* b, const char* algo, const char** chosen,
                      long long* wrong) {
  VCHECK(vcollCommSetAlgo(comm, C->coll, algo));
  if (C->prepare(p, b, onDev)) die("preparing inputs failed");
  VCHECK(C->run(p, b, comm, stream)); /* first call: may grow staging buffers */
  syncAll();
  const char* ran = vcollCommLastAlgo(comm, C->coll);
  *chosen = ran ? ran : "?";
  if (algo && ran && strcmp(algo, ran) != 0) {
    VCHECK(vcollCommSetAlgo(comm, C->coll, NULL));
    return -1; /* fell back: the forced algorithm cannot run this call (same on all ranks) */
  }
  *wrong = 0;
  if (O.check) {
    long long w = C->check(p, b, onDev);
    if (w < 0) die("result check failed to run");
    MPI_Allreduce(MPI_IN_PLACE, &w, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    *wrong = w;
    if (C->prepare(p, b, onDev)) die("preparing inputs failed");
  }
  /* One timed call sizes the warm-up and the iteration count to the budget. */
  double t1 = maxOverRanks(timeLoop(p, b, 1));
  double budgetUs = O.budgetMs * 1e3 / (O.graph > 0 ? O.graph : 1);
  int iters = t1 > 0 ? (int)(budgetUs / t1) : O.iters;
  if (iters > O.iters) iters = O.iters;
  if (iters < 3) iters = 3;
  int warm = t1 > 0 ? (int)(budgetUs / 4 / t1) : O.warmup;
  if (warm > O.warmup) warm = O.warmup;
  for (int i = 0; i < warm; i++) VCHECK(C->run(p, b, comm, stream));
  syncAll();
  MPI_Barrier(MPI_COMM_WORLD);
  double t = maxOverRanks(timeLoop(p, b, iters));
  VCHECK(vcollCommSetAlgo(comm, C->coll, NULL));
  return t;
}

/* Device-to-device cudaMemcpy of `bytes`, median us (max over ranks). */
static double timeMemcpy(void* dst, const void* src, size_t bytes) {
  if (!onDev || bytes == 0) return 0;
  double t[MAX_ITERS];
  int iters = O.iters < 10 ? O.iters : 10;
  CUCHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  CUCHECK(cudaEventRecord(events[0], stream));
  for (int i = 0; i < iters; i++) {
    CUCHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
    CUCHECK(cudaEventRecord(events[i + 1], stream));
  }
  syncAll();
  for (int i = 0; i < iters; i++) {
    float ms;
    CUCHECK(cudaEventElapsedTime(&ms, events[i], events[i + 1]));
    t[i] = ms * 1e3;
  }
  qsort(t, (size_t)iters, sizeof(double), cmpDouble);
  return maxOverRanks(t[iters / 2]);
}

/* ---- the sweep ------------------------------------------------------------ */

struct result {
  const char* algo;
  double us;
  long long wrong;
};

static double busbw(size_t bytes, double us) {
  return us > 0 ? (double)bytes / (us * 1e3) * (nranks_ - 1) / nranks_ : 0;
}

static void printHeader(const char** algos, int nalgos) {
  if (rank_ != 0) return;
  if (O.selection) {
    printf("#\n# %-7s %12s %10s %6s | %-9s %10s | %-9s %10s %8s\n", "shape", "bytes/rank", "size", "imbal",
           "fastest", "time(us)", "auto", "time(us)", "auto/best");
    return;
  }
  printf("#\n# %-7s %12s %12s %12s %9s %6s %5s %6s | %-9s %9s %7s %7s %6s | %-9s %9s %7s %7s %6s | %9s |",
         "shape", "size", "bytes/rank", "count", "type", "redop", "root", "imbal", "algo", "time", "algbw", "busbw",
         "#wrong", "algo", "time", "algbw", "busbw", "#wrong", "memcpy");
  for (int a = 0; a < nalgos; a++) printf(" %9s", algos[a]);
  printf(" | %6s %6s\n", "x_best", "x_base");
  printf("# %-7s %12s %12s %12s %9s %6s %5s %6s | %-9s %9s %7s %7s %6s | %-9s %9s %7s %7s %6s | %9s |", "", "(B)",
         "(B)", "(elements)", "", "", "", "", "out-of-place", "(us)", "(GB/s)", "(GB/s)", "", "in-place", "(us)",
         "(GB/s)", "(GB/s)", "", "(us)");
  for (int a = 0; a < nalgos; a++) printf(" %9s", "(us)");
  printf(" |\n");
}

int benchMain(int argc, char** argv, const struct benchColl* coll) {
  C = coll;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks_);
  if (nranks_ > 1024) die("at most 1024 ranks");
  parseArgs(argc, argv);
  VCHECK(vcollCommInitMPI(MPI_COMM_WORLD, O.backend, &comm));
  vcollBackend_t be;
  VCHECK(vcollCommBackend(comm, &be));
  onDev = be == vcollBackendNccl;
  if (onDev) {
    CUCHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (int i = 0; i <= MAX_ITERS; i++) CUCHECK(cudaEventCreate(&events[i]));
  } else {
    O.graph = 0;
    O.registered = 0;
  }

  /* -a picks algorithms of this collective (selected[index]); without it, all. */
  int selected[MAX_ALGOS];
  for (int a = 0; a < MAX_ALGOS; a++) selected[a] = O.algos == NULL;
  if (O.algos) {
    char buf[256];
    if (snprintf(buf, sizeof(buf), "%s", O.algos) >= (int)sizeof(buf)) die("-a: list too long");
    int n = 0;
    for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), n++) {
      if (strspn(tok, "0123456789") == strlen(tok))
        die("-a %s: -a names algorithms here; nccl-tests' -a (how the ranks' times combine) has no flag: the time is "
            "the maximum over ranks of each rank's median",
            tok);
      if (!strcmp(tok, "all")) { /* as -s all */
        for (int a = 0; a < MAX_ALGOS; a++) selected[a] = 1;
        continue;
      }
      int a = 0;
      while (vcollAlgoName(C->coll, a) && strcmp(vcollAlgoName(C->coll, a), tok)) a++;
      if (!vcollAlgoName(C->coll, a) || a >= MAX_ALGOS) {
        char names[256] = "";
        for (int b = 0; vcollAlgoName(C->coll, b) && b < MAX_ALGOS; b++)
          snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", b ? "," : "", vcollAlgoName(C->coll, b));
        die("-a: unknown algorithm '%s' for %s (known: %s, or all)", tok, C->name, names);
      }
      selected[a] = 1;
    }
    if (n == 0) die("-a names no algorithm");
  }

  /* Algorithms timed one by one (the host backend has only its own). */
  const char* algos[MAX_ALGOS];
  int nalgos = 0;
  for (int a = 0; onDev && a < MAX_ALGOS && vcollAlgoName(C->coll, a); a++)
    if (selected[a]) algos[nalgos++] = vcollAlgoName(C->coll, a);

  int ncclVer = 0;
  if (onDev) ncclGetVersion(&ncclVer);
  struct cudaDeviceProp prop;
  memset(&prop, 0, sizeof(prop));
  if (onDev) cudaGetDeviceProperties(&prop, 0);
  if (rank_ == 0) {
    printf("# vcoll %s_perf: nranks %d backend %s%s NCCL %d device %s\n", C->name, nranks_, onDev ? "nccl" : "host",
           O.registered ? " (registered buffers, vcollMemAlloc)" : "", ncclVer, onDev ? prop.name : "host");
    printf("# sizes %zu..%zu x%zu bytes per rank, type %s, op %s, tensors %d, iters <= %d, warmup <= %d, "
           "budget %.0f ms, graph %d, check %d, seed %llu\n",
           O.minBytes, O.maxBytes, O.stepFactor, vcollTypeName(O.type), C->reduces ? vcollOpName(O.op) : "none",
           O.ntensors, O.iters, O.warmup, O.budgetMs, O.graph, O.check, O.seed);
    printf("# time: median over iterations per rank, max over ranks; busbw = size/time x (n-1)/n, size = all rows\n");
  }
  FILE* json = NULL;
  int jsonFailed = 0;
  if (rank_ == 0 && O.json) {
    json = fopen(O.json, "w");
    if (!json) die("cannot open %s: %s", O.json, strerror(errno));
    fprintf(json, "{\"collective\": \"%s\", \"nranks\": %d, \"backend\": \"%s\", \"nccl\": %d, \"device\": \"%s\", "
                  "\"type\": \"%s\", \"op\": \"%s\", \"tensors\": %d, \"graph\": %d, \"registered\": %d, "
                  "\"baseline\": \"%s\", \"points\": [\n",
            C->name, nranks_, onDev ? "nccl" : "host", ncclVer, onDev ? prop.name : "host", vcollTypeName(O.type),
            C->reduces ? vcollOpName(O.op) : "none", O.ntensors, O.graph, O.registered, C->baseline);
  }

  size_t* counts = calloc((size_t)nranks_, sizeof(size_t));
  size_t* displs = calloc((size_t)nranks_ + 1, sizeof(size_t));
  size_t ts = vcollTypeSize(O.type);
  long long totalWrong = 0;
  double sumBusbw = 0, sumBase = 0;
  int npoints = 0, nbase = 0, nmiss = 0, nmissChoice = 0, firstJson = 1;
  printHeader(algos, nalgos);

  for (int si = 0; si < O.nshapes; si++) {
    int shape = O.shapes[si];
    for (size_t size = O.minBytes; size <= O.maxBytes; size *= O.stepFactor) {
      /* Row width: a row of about size/64 bytes (16 B..16 KiB) across all tensors. */
      size_t width = O.width;
      if (width == 0) {
        size_t rowTotal = 16;
        while (rowTotal * 2 <= size / 64 && rowTotal < 16384) rowTotal *= 2;
        width = rowTotal / ((size_t)O.ntensors * ts);
        if (width == 0) width = 1;
      }
      size_t rowBytesAll = width * ts * (size_t)O.ntensors;
      size_t rowsPerRank = size / rowBytesAll;
      if (rowsPerRank == 0) rowsPerRank = 1;
      /* The same weights at every size: a shape's curve varies only the size. */
      makeCounts(shape, rowsPerRank, O.seed * 1000003ull, counts);
      struct benchPoint p = {.rank = rank_, .nranks = nranks_, .counts = counts, .displs = displs, .width = width,
                             .type = O.type, .op = O.op, .ntensors = O.ntensors};
      p.totalRows = p.maxRows = 0;
      for (int r = 0; r < nranks_; r++) {
        displs[r] = p.totalRows;
        p.totalRows += counts[r];
        if (counts[r] > p.maxRows) p.maxRows = counts[r];
      }
      displs[nranks_] = p.totalRows;
      size_t totalBytes = p.totalRows * rowBytesAll;
      double imbal = (double)p.maxRows * nranks_ / (double)p.totalRows;

      struct benchBufs b;
      memset(&b, 0, sizeof(b));
      for (int t = 0; t < O.ntensors; t++) {
        b.send[t] = bufAlloc(C->sendBytes(&p, t, O.registered));
        b.recv[t] = bufAlloc(C->recvBytes(&p, t, O.registered));
      }
      /* Reference copy of the same bytes (all rows gathered), on non-zero data. */
      void *copySrc = NULL, *copyDst = NULL;
      if (onDev) {
        CUCHECK(cudaMalloc(&copySrc, totalBytes ? totalBytes : 16));
        CUCHECK(cudaMalloc(&copyDst, totalBytes ? totalBytes : 16));
        if (benchPoison(copySrc, totalBytes, 1)) die("cudaMemset failed");
      }

      struct result out = {0}, in = {0}, per[MAX_ALGOS];
      long long w = 0;
      p.inPlace = 0;
      out.us = measure(&p, &b, NULL, &out.algo, &out.wrong);
      double best = -1, base = -1;
      const char* bestAlgo = "-";
      for (int a = 0; a < nalgos; a++) {
        per[a].us = measure(&p, &b, algos[a], &per[a].algo, &per[a].wrong);
        w += per[a].us >= 0 ? per[a].wrong : 0;
        if (per[a].us >= 0 && (best < 0 || per[a].us < best)) { best = per[a].us; bestAlgo = algos[a]; }
        if (strcmp(algos[a], C->baseline) == 0) base = per[a].us;
      }
      if (O.inplace && !O.selection) {
        p.inPlace = 1;
        in.us = measure(&p, &b, NULL, &in.algo, &in.wrong);
        p.inPlace = 0;
      }
      double copyUs = onDev ? timeMemcpy(copyDst, copySrc, totalBytes) : 0;
      totalWrong += out.wrong + in.wrong + w;
      double xBest = best > 0 ? best / out.us : 0, xBase = base > 0 ? base / out.us : 0;
      npoints++;
      sumBusbw += busbw(totalBytes, out.us);
      if (size >= (256u << 10) && size <= (16u << 20) && xBase > 0) { sumBase += xBase; nbase++; }
      if (best > 0 && out.us > 1.05 * best) nmiss++;
      /* The choice judged by the forced runs' times (as fit_rules.py does):
       * free of the noise between two medians of the same algorithm. */
      double autoForced = -1;
      for (int a = 0; a < nalgos; a++)
        if (strcmp(algos[a], out.algo) == 0) autoForced = per[a].us;
      if (best > 0 && autoForced > 1.05 * best) nmissChoice++;

      if (rank_ == 0) {
        if (O.selection) {
          printf("  %-7s %12zu %10zu %6.2f | %-9s %10.1f | %-9s %10.1f %8.3f\n", shapeNames[shape], totalBytes / (size_t)nranks_,
                 totalBytes, imbal, bestAlgo, best, out.algo, out.us, best > 0 ? out.us / best : 0);
        } else {
          printf("  %-7s %12zu %12zu %12zu %9s %6s %5d %6.2f | %-9s %9.1f %7.2f %7.2f %6lld | ", shapeNames[shape],
                 totalBytes, totalBytes / (size_t)nranks_, p.totalRows * width * O.ntensors / nranks_, vcollTypeName(O.type),
                 C->reduces ? vcollOpName(O.op) : "none", -1, imbal, out.algo, out.us,
                 (double)totalBytes / (out.us * 1e3), busbw(totalBytes, out.us), out.wrong);
          if (O.inplace)
            printf("%-9s %9.1f %7.2f %7.2f %6lld | ", in.algo, in.us, (double)totalBytes / (in.us * 1e3),
                   busbw(totalBytes, in.us), in.wrong);
          else
            printf("%-9s %9s %7s %7s %6s | ", "-", "-", "-", "-", "-");
          printf("%9.1f |", copyUs);
          for (int a = 0; a < nalgos; a++) {
            if (per[a].us < 0) printf(" %9s", "-");
            else if (per[a].wrong) printf(" %8.1f!", per[a].us);
            else printf(" %9.1f", per[a].us);
          }
          printf(" | %6.2f %6.2f\n", xBest, xBase);
        }
        fflush(stdout);
        if (json) {
          fprintf(json, "%s  {\"shape\": \"%s\", \"bytes_per_rank\": %zu, \"size\": %zu, \"rows\": %zu, "
                        "\"max_rows\": %zu, \"width\": %zu, \"imbalance\": %.4f, \"auto\": \"%s\", \"time_us\": %.3f, "
                        "\"algbw\": %.4f, \"busbw\": %.4f, \"wrong\": %lld, \"inplace_auto\": \"%s\", "
                        "\"inplace_time_us\": %.3f, \"inplace_busbw\": %.4f, \"inplace_wrong\": %lld, "
                        "\"memcpy_us\": %.3f, \"best\": \"%s\", \"best_us\": %.3f, \"speedup_best\": %.4f, "
                        "\"speedup_baseline\": %.4f, \"auto_forced_us\": %.3f, \"algos\": {",
                  firstJson ? "" : ",\n", shapeNames[shape], totalBytes / (size_t)nranks_, totalBytes, p.totalRows, p.maxRows, width, imbal,
                  out.algo, out.us, (double)totalBytes / (out.us * 1e3), busbw(totalBytes, out.us), out.wrong,
                  O.inplace && !O.selection ? in.algo : "", in.us, busbw(totalBytes, in.us), in.wrong, copyUs,
                  bestAlgo, best, xBest, xBase, autoForced);
          int first = 1;
          for (int a = 0; a < nalgos; a++) {
            if (per[a].us < 0) continue;
            fprintf(json, "%s\"%s\": {\"time_us\": %.3f, \"busbw\": %.4f, \"wrong\": %lld}", first ? "" : ", ",
                    algos[a], per[a].us, busbw(totalBytes, per[a].us), per[a].wrong);
            first = 0;
          }
          fprintf(json, "}}");
          firstJson = 0;
        }
      }
      for (int t = 0; t < O.ntensors; t++) {
        bufFree(b.send[t]);
        bufFree(b.recv[t]);
      }
      if (onDev) {
        CUCHECK(cudaFree(copySrc));
        CUCHECK(cudaFree(copyDst));
      }
      if (size > O.maxBytes / O.stepFactor) break; /* no overflow of size *= factor */
    }
  }

  size_t staging = 0; /* what the padded algorithms left allocated (rank 0's; every rank holds the same) */
  VCHECK(vcollCommGetStagingBytes(comm, &staging));
  if (rank_ == 0) {
    printf("# Out of bounds values : %lld %s\n", totalWrong, totalWrong ? "FAILED" : "OK");
    printf("# Staging held at exit : %zu bytes (vcollCommGetStagingBytes)\n", staging);
    printf("# Avg bus bandwidth    : %.3f GB/s (automatic choice, out of place)\n",
           npoints ? sumBusbw / npoints : 0.0);
    if (nalgos > 0) {
      printf("# Avg speedup over %s at 256 KB-16 MB per rank: %.3f (%d points)\n", C->baseline,
             nbase ? sumBase / nbase : 0.0, nbase);
      printf("# Points where the automatic choice is > 5%% slower than the fastest: %d of %d (its own timed call); "
             "%d of %d (the chosen algorithm's forced time)\n", nmiss, npoints, nmissChoice, npoints);
    }
    if (json) {
      fprintf(json, "\n], \"staging_bytes\": %zu}\n", staging);
      const int bad = ferror(json);
      if (fclose(json) != 0 || bad) {
        fprintf(stderr, "error: writing %s failed: %s\n", O.json, strerror(errno));
        jsonFailed = 1;
      }
    }
  }
  MPI_Bcast(&jsonFailed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  free(counts);
  free(displs);
  VCHECK(vcollCommDestroy(comm));
  if (onDev) {
    for (int i = 0; i <= MAX_ITERS; i++) cudaEventDestroy(events[i]);
    cudaStreamDestroy(stream);
  }
  MPI_Finalize();
  return totalWrong || jsonFailed ? 1 : 0;
}
