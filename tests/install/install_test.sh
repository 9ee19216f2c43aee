#!/usr/bin/env bash
# What a user gets from `meson install`: installs the build into a
# temporary DESTDIR, checks that pkg-config resolves the installed vcoll_mpi
# (its requirements: vcoll and, when configure found it, the MPI's own
# package), builds tests/install/consumer.c with the flags pkg-config gives
# for vcoll and the MPI (plain C compiler; mpicc when vcoll_mpi names no MPI
# package), checks that libvcoll exports nothing but vcoll* symbols, runs
# the program under mpirun with 2 ranks (host backend), and builds and runs
# a small program from CMake through vcoll.pc (where cmake is installed;
# scripts/dev.sh installs it).
#   install_test.sh BUILD_DIR CONSUMER_C MPICC MPIRUN CUDA_LIBDIR
set -euo pipefail
BUILD=$1 SRC=$2 MPICC=$3 MPIRUN=$4 CUDA_LIB=$5
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
meson install -C "$BUILD" --destdir "$D" --no-rebuild >"$D/install.log" 2>&1 || { cat "$D/install.log"; exit 1; }
pc=$(find "$D" -name vcoll_mpi.pc | head -1)
[ -n "$pc" ] || { echo "install_test: no vcoll_mpi.pc installed"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
pkg-config --exists --print-errors vcoll_mpi || { echo "install_test: pkg-config cannot resolve vcoll_mpi"; exit 1; }
prefix=$(pkg-config --variable=prefix vcoll_mpi)
flags() { pkg-config --define-variable=prefix="$D$prefix" "$@" vcoll_mpi; }
libdir=$(flags --variable=libdir)
for h in vcoll.h vcoll_mpi.h vcoll/gate.h vcoll/moe.h vcoll/nvfp4.h vcoll/weight_layout.h; do
  [ -f "$D$prefix/include/$h" ] || { echo "install_test: $h not installed"; exit 1; }
done
# Only the public API (and the internal vcoll* entry points libvcoll_mpi uses) leaves the library.
leaks=$(nm -D --defined-only "$libdir/libvcoll.so" | awk '$2 ~ /[TDBR]/ {print $3}' | grep -v '^vcoll' | grep -vE '^_(init|fini|edata|end|_bss_start)$' || true)
[ -z "$leaks" ] || { echo "install_test: libvcoll exports non-vcoll symbols:"; echo "$leaks" | head -20; exit 1; }
# With the MPI's pkg-config name among vcoll_mpi's requirements (found at
# configure time), the plain C compiler and pkg-config's flags are enough.
# (The prefix moved into DESTDIR applies to vcoll's own files only: the
# MPI's flags come from its own, unmoved .pc file.)
cc=$MPICC
mpipc=$(pkg-config --print-requires vcoll_mpi | awk '$1 ~ /^(mpi-c|ompi-c|mpich)$/ {print $1}')
if [ -n "$mpipc" ]; then cc=${CC:-cc}; fi
echo "install_test: building the consumer with $cc${mpipc:+ (vcoll_mpi requires $mpipc)}"
# vcoll_mpi's own part (its Libs line names the library) by hand, vcoll's through its .pc.
grep -q '^Libs: .*-lvcoll_mpi' "$pc" || { echo "install_test: vcoll_mpi.pc does not link -lvcoll_mpi"; exit 1; }
vflags() {
  if [ "$1" = --libs ]; then echo "-L$libdir -lvcoll_mpi"; fi # before -lvcoll, which it needs
  pkg-config --define-variable=prefix="$D$prefix" "$@" vcoll
}
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Werror -o "$D/consumer" "$SRC" $(vflags --cflags) $(vflags --libs) \
  ${mpipc:+$(pkg-config --cflags --libs "$mpipc")}
LD_LIBRARY_PATH="$libdir:$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  "$MPIRUN" --oversubscribe -x LD_LIBRARY_PATH -np 2 "$D/consumer"

# CMake (what serving runtimes build their extensions with), through the
# installed vcoll.pc: pkg_check_modules' imported target, a program that
# needs no GPU and no MPI. PKG_CONFIG_ARGN (CMake >= 3.22) moves the
# prefix into DESTDIR, as flags() does above.
if ! command -v cmake >/dev/null; then
  echo "install_test: no cmake here, the CMake check did not run"
  exit 0
fi
mkdir -p "$D/cmk"
cat >"$D/cmk/CMakeLists.txt" <<'CMK'
cmake_minimum_required(VERSION 3.22)
project(vcoll_cmake_consumer C)
find_package(PkgConfig REQUIRED)
pkg_check_modules(VCOLL REQUIRED IMPORTED_TARGET vcoll)
add_executable(cmake_consumer main.c)
target_link_libraries(cmake_consumer PRIVATE PkgConfig::VCOLL)
CMK
cat >"$D/cmk/main.c" <<'SRC'
#include <stdio.h>
#include <string.h>
#include "vcoll.h"
int main(void) {
  int v = 0;
  if (vcollGetVersion(&v) != vcollSuccess || v <= 0) return 1;
  if (strstr(vcollGetErrorString(vcollArgumentMismatch), "checked mode") == NULL) return 1;
  printf("cmake consumer: OK (vcoll %d)\n", v);
  return 0;
}
SRC
cmake -S "$D/cmk" -B "$D/cmk/b" -DPKG_CONFIG_ARGN="--define-variable=prefix=$D$prefix" >"$D/cmake.log" 2>&1 &&
  cmake --build "$D/cmk/b" >>"$D/cmake.log" 2>&1 || { echo "install_test: the CMake consumer did not build"; cat "$D/cmake.log"; exit 1; }
LD_LIBRARY_PATH="$libdir:$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$D/cmk/b/cmake_consumer"
