#!/usr/bin/env bash
# vcoll developer entry point. On a fresh Debian 12 machine it installs what
# is missing (apt, and Meson from PyPI into .deps/venv), builds, and runs.
#
#   scripts/dev.sh example   build, then the main job under mpirun -np 4
#   scripts/dev.sh test      build, then every test suite (unit, mpi, gpu), then
#                            the unit and mpi suites of an ASan+UBSan build
#                            (BUILD_DIR-san; SANITIZE=0 skips it)
#   scripts/dev.sh build     build only
#   scripts/dev.sh deps      install dependencies only
#
# GPU suites run when GPUs are visible and report SKIP otherwise.
# Environment: BUILD_DIR (default build), NP (ranks for the example, 4),
# MESON_ARGS (extra arguments for meson setup, e.g. -Dgpu_arch=90,100a).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-build}
NP=${NP:-4}

export PATH="$ROOT/.deps/venv/bin:/usr/local/cuda/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export NCCL_NVLS_ENABLE=0

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

deps() {
  local need=()
  command -v mpicc >/dev/null || need+=(libopenmpi-dev openmpi-bin)
  command -v pkg-config >/dev/null || need+=(pkg-config)
  pkg-config --exists cmocka 2>/dev/null || need+=(libcmocka-dev)
  command -v ninja >/dev/null || need+=(ninja-build)
  command -v cmake >/dev/null || need+=(cmake) # the install test's CMake consumer
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv python3-pip)
  if [ ${#need[@]} -gt 0 ]; then
    echo "# installing with apt: ${need[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  if ! [ -x .deps/venv/bin/meson ] || ! .deps/venv/bin/python -c 'import numpy, ml_dtypes, matplotlib' 2>/dev/null; then
    echo "# installing meson, numpy, ml_dtypes, matplotlib from PyPI into .deps/venv"
    python3 -m venv .deps/venv
    .deps/venv/bin/python -m pip install -q --disable-pip-version-check 'meson>=1.1' numpy ml_dtypes matplotlib
  fi
  if ! command -v nvcc >/dev/null; then
    echo "error: the CUDA toolkit (nvcc, with NCCL) is needed to build vcoll; expected under /usr/local/cuda" >&2
    exit 1
  fi
}

build() {
  deps
  if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    # shellcheck disable=SC2086
    meson setup "$BUILD_DIR" ${MESON_ARGS:-}
  else
    # Programs (python3 with numpy, ml_dtypes and matplotlib for tests) are found on this
    # script's PATH, also when an earlier regeneration ran with another one.
    # shellcheck disable=SC2086
    meson setup --reconfigure "$BUILD_DIR" ${MESON_ARGS:-} >/dev/null
  fi
  ninja -C "$BUILD_DIR"
}

# One plain summary line from Meson's log, for humans and CI.
summary() {
  python3 - "$1/meson-logs/testlog.json" "$2" <<'PY'
import json, sys
res = [json.loads(l)["result"] for l in open(sys.argv[1]) if l.strip()]
ok = sum(r in ("OK", "EXPECTEDFAIL") for r in res)
skip = sum(r == "SKIP" for r in res)
bad = len(res) - ok - skip
print(f"{sys.argv[2]}: {ok} passed, {bad} failed, {skip} skipped")
PY
}

case "${1:-test}" in
  deps) deps ;;
  build) build ;;
  example)
    build
    mpirun --oversubscribe -x NCCL_NVLS_ENABLE -np "$NP" "$BUILD_DIR/mpi_examples/uneven_batches"
    ;;
  test)
    build
    status=0
    meson test -C "$BUILD_DIR" --print-errorlogs --suite unit --suite mpi --suite gpu || status=$?
    summary "$BUILD_DIR" "vcoll tests"
    if [ "${SANITIZE:-1}" = 1 ]; then
      # The unit and host-backend suites again, built with ASan and UBSan
      # (signed overflow, out-of-bounds, use after free abort the test).
      # Leak checks off: MPI's own allocations at exit are not vcoll's.
      SAN_DIR=${BUILD_DIR}-san
      if [ ! -f "$SAN_DIR/build.ninja" ]; then
        # shellcheck disable=SC2086
        meson setup "$SAN_DIR" -Db_sanitize=address,undefined -Db_lundef=false ${MESON_ARGS:-} >/dev/null
      fi
      ninja -C "$SAN_DIR" >"$SAN_DIR/ninja.log" || { tail -30 "$SAN_DIR/ninja.log"; exit 1; }
      ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C "$SAN_DIR" --print-errorlogs --suite unit --suite mpi || status=$?
      summary "$SAN_DIR" "vcoll tests (ASan+UBSan build, unit and mpi suites)"
    fi
    exit $status
    ;;
  *) echo "usage: $0 [deps|build|example|test]" >&2; exit 2 ;;
esac
