#!/usr/bin/env bash
# Builds, tests and benchmarks vcoll on a multi-GPU machine in one go.
# Everything it prints also lands under $OUT (default /tmp/vcoll-gpu), and
# all logs are packed into $OUT/results.tgz.
#
#   scripts/gpu_session.sh [quick|full] [bench-name ...]
#     quick: build, all test suites, benchmarks with their quick settings
#     full:  build, all test suites, every benchmark in bench/run_gpu.d/
#   bench names pick benchmarks (bench/run_gpu.d/NAME.sh); "none" runs none.
#   VCOLL_SHARE_GPU=1 runs the multi-rank suites and benchmarks with their
#   ranks sharing the GPU(s) (vcollCommInitMPI gives each rank an NCCL host
#   id of its own, and NCCL moves data over sockets on loopback): checks the
#   multi-rank algorithms and kernels on a one-GPU machine; times meaningless.
#   VCOLL_NCCL_PKG=archive (from scripts/nccl_pkg.py; carry that one file) or
#   VCOLL_NCCL_HOME=prefix builds and runs everything against that NCCL
#   instead of the system's (meson -Dnccl_home, LD_LIBRARY_PATH).
#   VCOLL_MESON_ARGS adds options to meson setup (e.g. the coverage build of
#   scripts/coverage.py, with BUILD_DIR naming a build folder of its own).
#   VCOLL_SKIP_TESTS=1 skips the test suites, VCOLL_TEST_SUITES picks them
#   (default "unit mpi gpu"), VCOLL_TESTS names tests instead (e.g.
#   "collectives_nccl_np2 moe_nccl_np4"), VCOLL_TEST_TIMEOUT (s, default
#   300) bounds them (VCOLL_TEST_TIMEOUT_MULT scales each test's own limit), VCOLL_BENCH_TIMEOUT (s, default 420) each benchmark.
#
# The GPU machine of this project has no cmocka: carry .deps/debs (the
# Debian packages libcmocka0 and libcmocka-dev) and this script unpacks them.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-full}
shift || true
OUT=${OUT:-/tmp/vcoll-gpu}
LOG=$OUT/logs
mkdir -p "$LOG" "$OUT/bench"
exec > >(tee -a "$LOG/session.txt") 2>&1 # everything printed below also in logs/session.txt
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH
export VCOLL_BENCH_MODE=$MODE
if [ "${VCOLL_SHARE_GPU:-0}" = 1 ]; then
  export VCOLL_SHARE_GPU NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo} NCCL_IB_DISABLE=1
fi

. scripts/cmocka_debs.sh
. scripts/nccl_env.sh

if [ -n "${VCOLL_NCCL_PKG:-}" ]; then
  VCOLL_NCCL_HOME=$(nccl_unpack "$VCOLL_NCCL_PKG") || { echo "gpu_session: cannot unpack $VCOLL_NCCL_PKG"; exit 1; }
fi
if [ -n "${VCOLL_NCCL_HOME:-}" ]; then
  export LD_LIBRARY_PATH=$VCOLL_NCCL_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

nccl_ver() {
  local h
  for h in ${VCOLL_NCCL_HOME:+$VCOLL_NCCL_HOME/include/nccl.h} /usr/include/nccl.h /usr/local/cuda/include/nccl.h; do
    [ -f "$h" ] && { awk '/define NCCL_(MAJOR|MINOR|PATCH) /{printf "%s%s", s, $3; s="."}' "$h"; echo " ($h)"; return; }
  done
}
{
  echo "# vcoll GPU session: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "# commit: ${VCOLL_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "# mode: $MODE${VCOLL_SHARE_GPU:+, VCOLL_SHARE_GPU=$VCOLL_SHARE_GPU (ranks share GPUs, NCCL over sockets)}"
  echo "# NCCL headers: $(nccl_ver)"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | sed 's/^/# gpu: /'
  nvidia-smi topo -m 2>/dev/null | sed 's/^/# topo: /'
  echo "# nvcc: $(nvcc --version | tail -1)"
  echo "# mpirun: $(mpirun --version 2>/dev/null | head -1)"
  echo "# meson: $(meson --version)"
} | tee "$LOG/header.txt"

step() { echo "=== $* ($(date -u +%H:%M:%S))"; }

step build
B=${BUILD_DIR:-build-gpu}
# --reconfigure on a build folder left by an earlier run: its options (another NCCL) take effect.
RECONF=$([ -d "$B/meson-private" ] && echo --reconfigure)
{ meson setup $RECONF "$B" -Dgpu_arch=90 -Dnccl_home="${VCOLL_NCCL_HOME:-}" ${VCOLL_MESON_ARGS:-} && ninja -C "$B" -j "$(nproc)"; } >"$LOG/build.txt" 2>&1
build_rc=$?
tail -5 "$LOG/build.txt"
# The NCCL the library loads, and the version it reports at run time.
echo "libvcoll loads: $(ldd "$B/src/libvcoll.so" 2>/dev/null | grep -o 'libnccl[^ ]* => [^ ]*')"
echo "NCCL run-time version: $(nccl_version)"
if [ $build_rc -ne 0 ]; then
  grep -E "error|FAILED" "$LOG/build.txt" | head -40
  tar czf "$OUT/results.tgz" -C "$OUT" logs bench
  exit 1
fi

if [ "${VCOLL_SHARE_GPU:-0}" = 1 ]; then
  # Two ranks on one GPU first: if NCCL does not take it (or hangs), the
  # suites run without sharing rather than each waiting for its timeout.
  step "share-gpu smoke"
  NCCL_DEBUG=${NCCL_DEBUG:-WARN} timeout 90 mpirun --oversubscribe -np 2 "$B/mpi_examples/uneven_batches" --backend nccl \
    >"$LOG/share-smoke.txt" 2>&1
  smoke_rc=$?
  tail -15 "$LOG/share-smoke.txt"
  if [ $smoke_rc -ne 0 ]; then
    echo "share-gpu smoke failed (exit $smoke_rc): VCOLL_SHARE_GPU unset, multi-rank suites skip"
    unset VCOLL_SHARE_GPU
  else
    for np in 3 4; do
      echo "--- moe_layer example, $np ranks sharing the GPU(s)"
      timeout 120 mpirun --oversubscribe -np $np "$B/mpi_examples/moe_layer" --backend nccl 2>&1 | tail -12
      echo "exit ${PIPESTATUS[0]}"
    done
  fi
fi

step tests
if [ "${VCOLL_SKIP_TESTS:-0}" != 1 ]; then
  suites=""
  for s in ${VCOLL_TEST_SUITES:-unit mpi gpu}; do suites="$suites --suite $s"; done
  [ -n "${VCOLL_TESTS:-}" ] && suites=$VCOLL_TESTS # test names instead of suites
  timeout "${VCOLL_TEST_TIMEOUT:-300}" meson test -C "$B" $suites --print-errorlogs \
    --timeout-multiplier "${VCOLL_TEST_TIMEOUT_MULT:-1}" --num-processes 1 >"$LOG/tests.txt" 2>&1
  echo "meson test exit $?"
  grep -E "^ *[0-9]+/[0-9]+ " "$LOG/tests.txt" | sed 's/  */ /g'
  cp "$B/meson-logs/testlog.txt" "$LOG/testlog.txt" 2>/dev/null
fi

step benchmarks
for s in bench/run_gpu.d/*.sh; do
  name=$(basename "$s" .sh)
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$name"; then continue; fi
  step "bench $name"
  timeout "${VCOLL_BENCH_TIMEOUT:-420}" bash "$s" "$B" "$OUT/bench" >"$LOG/bench-$name.txt" 2>&1
  echo "bench $name exit $?"
  tail -26 "$LOG/bench-$name.txt"
done

step done
tar czf "$OUT/results.tgz" -C "$OUT" logs bench
# The device tool brings back at most 8 files: keep the archive and the test log.
if [ "${VCOLL_KEEP_LOOSE:-0}" != 1 ]; then
  cp "$LOG/tests.txt" "$OUT/tests.txt" 2>/dev/null
  rm -rf "$LOG" "$OUT/bench"
fi
ls -la "$OUT"
