#!/usr/bin/env bash
# The multi-rank NCCL suites against several NCCL releases in one call of the
# GPU machine, one build each (only the test programs), ranks sharing the
# GPU(s) so 8 ranks fit on one (VCOLL_SHARE_GPU=1: each rank its own NCCL
# host, so NCCL may pick its one-GPU-per-node algorithms such as PAT).
#
#   scripts/nccl_matrix.sh ARCHIVE...    archives from scripts/nccl_pkg.py
#                                        ("system" for the machine's NCCL)
#   NPS ("2 8"): rank counts. Any VCOLL_* variable set here reaches the ranks
#   (e.g. VCOLL_NCCL_AVG=1 to see whether a release gets avg wrong).
#   PROBE=1: also, per release, 8 ranks of reducescatterv_perf with float avg
#   forced through ncclReduceScatter (native, VCOLL_NCCL_AVG=1) at 1 KB-1 MB
#   per rank, with NCCL's tuning log: which NCCL algorithm ran (PAT or Ring)
#   and whether the averages came back right (#wrong). This is the check of
#   reducescatterv.c's avg guard (docs/algorithms.md, "NCCL releases").
#   Logs under $OUT/matrix (default /tmp/vcoll-matrix); one summary line per
#   release, rank count and suite.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTD=${OUT:-/tmp/vcoll-matrix}/matrix
mkdir -p "$OUTD"
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export VCOLL_SHARE_GPU=1 NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo} NCCL_IB_DISABLE=1
. scripts/cmocka_debs.sh
. scripts/nccl_env.sh
base_ld=${LD_LIBRARY_PATH:-}
for pkg in "$@"; do
  name=$(basename "$pkg" .tar.xz)
  home=""
  if [ "$pkg" != system ]; then
    home=$(nccl_unpack "$pkg") || { echo "$name: cannot unpack $pkg"; continue; }
  fi
  export LD_LIBRARY_PATH=${home:+$home/lib:}$base_ld
  B=build-matrix-$name
  RECONF=$([ -d "$B/meson-private" ] && echo --reconfigure)
  PROBE_T=$([ "${PROBE:-0}" = 1 ] && echo bench/coll/reducescatterv_perf)
  if ! { meson setup $RECONF "$B" -Dgpu_arch=90 -Dnccl_home="$home" -Dexamples=false &&
         ninja -C "$B" tests/mpi/test_collectives tests/moe/test_moe $PROBE_T; } >"$OUTD/build-$name.txt" 2>&1; then
    echo "$name: build failed"; tail -15 "$OUTD/build-$name.txt"; continue
  fi
  ver=$(nccl_version)
  for np in ${NPS:-2 8}; do
    for t in mpi/test_collectives moe/test_moe; do
      log=$OUTD/$name-np$np-$(basename "$t").txt
      timeout 240 mpirun --oversubscribe -np "$np" "$B/tests/$t" --backend nccl >"$log" 2>&1
      rc=$?
      echo "$name (run-time $ver) np $np $(basename "$t"): exit $rc; $(grep -hE '^\[  (PASSED|FAILED)  \]' "$log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
      [ $rc -ne 0 ] && grep -hE "wrong|got .* want|mismatch" "$log" | sort | uniq -c | sort -rn | head -6
    done
  done
  if [ -n "$PROBE_T" ]; then
    log=$OUTD/$name-np8-avg-probe.txt
    VCOLL_NCCL_AVG=1 NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=TUNING timeout 240 mpirun --oversubscribe -np 8 \
      -x NCCL_DEBUG -x NCCL_DEBUG_SUBSYS "$B/$PROBE_T" -d float -o avg -s equal -a native \
      -b 1K -e 1M -f 8 -n 2 -w 1 -c 1 >"$log" 2>&1
    rc=$?
    echo "$name (run-time $ver) np 8 avg probe: exit $rc; NCCL's ReduceScatter algorithms (all ranks):" \
      "$(grep -E 'NCCL INFO ReduceScatter: .* Algo' "$log" | sed -E 's/.*Algo ([A-Z_]+).*/\1/' | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
    grep -E '^  equal ' "$log"
  fi
done
