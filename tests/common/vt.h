/* vcoll test helpers: seeds, random numbers, poison, GPU detection, and
 * running cmocka groups under MPI. Include after <cmocka.h>'s prerequisites:
 *   #include <stdarg.h> <stddef.h> <stdint.h> <setjmp.h> <cmocka.h> */
#ifndef VCOLL_TESTS_VT_H_
#define VCOLL_TESTS_VT_H_

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>

/* Seed of this run: VCOLL_TEST_SEED if set, else from the clock; with MPI
 * initialized it is broadcast from rank 0, so all ranks agree. Printed once. */
uint64_t vtSeed(void);

/* splitmix64: a small, fast, deterministic generator. */
typedef struct { uint64_t s; } vtRng;
static inline vtRng vtRngMake(uint64_t seed, uint64_t stream) {
  vtRng r = {seed ^ (0x9e3779b97f4a7c15ull * (stream + 1))};
  return r;
}
static inline uint64_t vtNext(vtRng* r) {
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
/* Uniform integer in [lo, hi]. */
static inline int64_t vtRange(vtRng* r, int64_t lo, int64_t hi) {
  return lo + (int64_t)(vtNext(r) % (uint64_t)(hi - lo + 1));
}
/* Uniform float in [0, 1). */
static inline double vtUniform(vtRng* r) { return (double)(vtNext(r) >> 11) * (1.0 / 9007199254740992.0); }
/* Standard normal (Box-Muller). */
double vtNormal(vtRng* r);

/* Fills n bytes with the poison pattern 0xA5 (host memory). */
void vtPoison(void* p, size_t n);
/* 1 if all n bytes still hold the poison pattern. */
int vtIsPoisoned(const void* p, size_t n);

/* 1 if a CUDA device is visible to this process. */
int vtHaveGpu(void);
/* In a cmocka test: skip it (never pass it) when no GPU is visible. */
#define VT_REQUIRE_GPU()                                  \
  do {                                                    \
    if (!vtHaveGpu()) {                                   \
      skip();                                             \
    }                                                     \
  } while (0)

/* MPI-aware helpers (valid after vtMpiInit). */
void vtMpiInit(int* argc, char*** argv);
int vtMpiFinalize(int failed); /* returns the process exit code */
int vtRank(void);
int vtSize(void);
/* True on every rank iff cond is true on every rank (MPI_Allreduce). */
int vtAllTrue(int cond);
/* Asserts cond on every rank together: a rank that sees it false prints
 * msg to stderr, and every rank fails the test. */
#define VT_ASSERT_ALL(cond, ...)                                              \
  do {                                                                        \
    int ok_ = (cond) ? 1 : 0;                                                 \
    if (!ok_) { fprintf(stderr, "[rank %d] %s:%d: ", vtRank(), __FILE__, __LINE__); \
                fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); }       \
    assert_true(vtAllTrue(ok_));                                              \
  } while (0)

/* Runs a cmocka group on every rank; only rank 0 prints cmocka's report.
 * Returns the number of failed tests (same on all ranks). */
int vtRunGroup(const char* name, const struct CMUnitTest* tests, size_t n,
               CMFixtureFunction setup, CMFixtureFunction teardown);

#endif
