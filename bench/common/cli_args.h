/* Strict numbers from the command line, for the benchmarks, the
 * mpi_examples programs and the tests: the whole argument is the number, within the
 * range given, or the call returns 0 (empty, a sign or a space first,
 * trailing characters, out of range, inf or nan), so that a typo is an
 * error instead of a silent 0 from atoi. Header only. */
#ifndef VCOLL_CLI_ARGS_H_
#define VCOLL_CLI_ARGS_H_

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <strings.h>

/* Unsigned integer, decimal or 0x hex, in [lo, hi]. */
static inline int cliU64(const char* s, unsigned long long lo, unsigned long long hi, unsigned long long* out) {
  if (s == NULL || *s < '0' || *s > '9') return 0;
  char* end;
  errno = 0;
  const unsigned long long v = strtoull(s, &end, 0);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return 0;
  *out = v;
  return 1;
}

/* int in [lo, hi] (lo >= 0). */
static inline int cliInt(const char* s, int lo, int hi, int* out) {
  unsigned long long v;
  if (lo < 0 || !cliU64(s, (unsigned long long)lo, (unsigned long long)hi, &v)) return 0;
  *out = (int)v;
  return 1;
}

/* size_t in [lo, hi]. */
static inline int cliSize(const char* s, size_t lo, size_t hi, size_t* out) {
  unsigned long long v;
  if (!cliU64(s, lo, hi, &v)) return 0;
  *out = (size_t)v;
  return 1;
}

/* Finite decimal number in [lo, hi]. */
static inline int cliDouble(const char* s, double lo, double hi, double* out) {
  if (s == NULL || !((*s >= '0' && *s <= '9') || *s == '.')) return 0;
  char* end;
  const double v = strtod(s, &end);
  if (*end != '\0' || !isfinite(v) || v < lo || v > hi) return 0;
  *out = v;
  return 1;
}

/* Bytes: a decimal number with an optional K, M or G (powers of 1024),
 * e.g. 4096, 64K, 1.5M; whole bytes (the fraction dropped) in [lo, hi]. */
static inline int cliBytes(const char* s, size_t lo, size_t hi, size_t* out) {
  if (s == NULL || !((*s >= '0' && *s <= '9') || *s == '.')) return 0;
  char* end;
  double v = strtod(s, &end);
  switch (*end) {
    case 'K': case 'k': v *= 1024.0; end++; break;
    case 'M': case 'm': v *= 1024.0 * 1024; end++; break;
    case 'G': case 'g': v *= 1024.0 * 1024 * 1024; end++; break;
    default: break;
  }
  if (*end != '\0' || !isfinite(v) || v < (double)lo || v > (double)hi) return 0;
  *out = (size_t)v;
  return 1;
}

/* An environment flag read as the library reads its own (src/misc/param.c):
 * on for a nonzero number, yes, true or on (any case); off otherwise. */
static inline int cliEnvFlag(const char* name) {
  const char* s = getenv(name);
  if (s == NULL || *s == '\0') return 0;
  char* end = NULL;
  const long long n = strtoll(s, &end, 0);
  if (end != s && *end == '\0') return n != 0;
  return !strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcasecmp(s, "on");
}

#endif /* VCOLL_CLI_ARGS_H_ */
