#!/usr/bin/env bash
# Shows that a GPU test can fail: builds a copy of this tree with one line
# broken on purpose and runs one test program against it; the test must
# FAIL (a cmocka "[  FAILED  ]" line and a nonzero exit, within 300 s) for
# the check to pass. A crash, a hang or a launch failure is not a catch.
#
#   scripts/gpu_mutant.sh FILE 'SED-EXPRESSION' TARGET NP -- TEST-ARGS...
#     FILE: the source file to break; SED-EXPRESSION must change it (else
#     the check fails: the mutant would be the original); TARGET: the ninja
#     target of the test program (e.g. tests/moe/test_moe); NP: mpirun's
#     rank count; TEST-ARGS: the program's arguments.
# Ranks share the GPU as under VCOLL_SHARE_GPU=1 (scripts/gpu_session.sh).
# Output in $OUT/logs/mutant-<basename of FILE>-<n>.txt (default /tmp/vcoll-gpu),
# n counting the mutants of that file.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 5 ] && [ "$5" = "--" ] || { echo "usage: $0 FILE SED-EXPRESSION TARGET NP -- TEST-ARGS..."; exit 2; }
FILE=$1 EXPR=$2 TARGET=$3 NP=$4
shift 5
LOGD=${OUT:-/tmp/vcoll-gpu}/logs
mkdir -p "$LOGD"
n=1
while [ -e "$LOGD/mutant-$(basename "$FILE")-$n.txt" ]; do n=$((n + 1)); done
LOG=$LOGD/mutant-$(basename "$FILE")-$n.txt
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export VCOLL_SHARE_GPU=1 NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo} NCCL_IB_DISABLE=1
. scripts/cmocka_debs.sh
M=/tmp/vcoll-mutant
rm -rf "$M" && mkdir -p "$M"
tar --exclude='./build*' --exclude='./ab' -cf - . | tar -xf - -C "$M"
{
  echo "# mutant of $FILE: sed -e '$EXPR'"
  sed -i -e "$EXPR" "$M/$FILE"
  if cmp -s "$FILE" "$M/$FILE"; then echo "gpu_mutant: the expression changed nothing in $FILE"; exit 1; fi
  diff -u "$FILE" "$M/$FILE" | sed 's/^/# /'
  (cd "$M" && meson setup bm -Dgpu_arch=90 -Dexamples=false >"$M/build.txt" 2>&1 &&
    ninja -C bm "$TARGET" >>"$M/build.txt" 2>&1) ||
    { echo "gpu_mutant: the mutant does not build"; tail -20 "$M/build.txt"; exit 1; }
  timeout 300 mpirun --oversubscribe -np "$NP" -x VCOLL_SHARE_GPU -x NCCL_SOCKET_IFNAME -x NCCL_IB_DISABLE \
    -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH "$M/bm/$TARGET" "$@" >"$M/test.txt" 2>&1
  rc=$?
  tail -40 "$M/test.txt"
  echo "# test exit code: $rc"
  if [ "$rc" = 0 ] || [ "$rc" = 77 ]; then echo "gpu_mutant: FAIL (the test passed or skipped against the mutant)"; exit 1; fi
  if [ "$rc" = 124 ] || ! grep -q '\[  FAILED  \]' "$M/test.txt"; then
    echo "gpu_mutant: FAIL (no test failed: a timeout, crash or launch failure is not a catch)"; exit 1
  fi
  echo "gpu_mutant: OK (the test fails against the mutant)"
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
