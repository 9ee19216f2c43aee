#!/usr/bin/env bash
# Collective benchmarks on the GPU machine: allgatherv_perf and
# reducescatterv_perf on 8, 4 and 2 GPUs where visible, all shapes, every algorithm, results
# checked; raw tables in OUT_DIR/coll.txt, JSON in OUT_DIR/coll_*.json,
# plots in OUT_DIR/coll_*.png.
#   bench/run_gpu.d/coll.sh BUILD_DIR OUT_DIR
# VCOLL_BENCH_MODE=quick runs a shorter sweep (64K..16M, three shapes);
# VCOLL_BENCH_NP="4" (default "8 4 2") picks the rank counts of the sweeps,
# so that a lease's 600 s calls can take them one at a time.
set -uo pipefail
BUILD=${1:?usage: coll.sh BUILD_DIR OUT_DIR}
OUT=${2:?usage: coll.sh BUILD_DIR OUT_DIR}
mkdir -p "$OUT"
TXT=$OUT/coll.txt
: >"$TXT"
MPI=(mpirun --allow-run-as-root --oversubscribe -x NCCL_NVLS_ENABLE=0 -x VCOLL_DEBUG=WARN)
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
SHARE=0
if [ "${VCOLL_SHARE_GPU:-0}" = 1 ] && [ "$NGPU" -ge 1 ]; then
  # Ranks share the GPU(s) and NCCL moves data over sockets (scripts/gpu_session.sh
  # with VCOLL_SHARE_GPU=1): results checked, times meaningless.
  SHARE=1 REALNGPU=$NGPU NGPU=8
  SWEEP=(-b 1K -e 1M -f 32 -s all -n 3 -w 1)
  echo "# VCOLL_SHARE_GPU=1: all ranks on $REALNGPU GPU(s), NCCL over sockets; times are not GPU times" | tee -a "$TXT"
elif [ "${VCOLL_BENCH_MODE:-full}" = quick ]; then
  SWEEP=(-b 64K -e 16M -f 4 -s equal,skew,one)
else
  SWEEP=(-b 1K -e 256M -f 4 -s all)
fi
rc=0
run() { # name np json-suffix args...
  local bin=$1 np=$2 tag=$3; shift 3
  local devs=$(seq -s, 0 $((np - 1)))
  [ "$SHARE" = 1 ] && devs=$(seq -s, 0 $((REALNGPU - 1)))
  if [ "$NGPU" -lt "$np" ]; then echo "# skipped $bin -np $np: $NGPU GPUs" | tee -a "$TXT"; return; fi
  echo "### $bin -np $np $* ($(date -u +%H:%M:%S))" | tee -a "$TXT"
  local t0=$SECONDS
  CUDA_VISIBLE_DEVICES=$devs "${MPI[@]}" -np "$np" "$BUILD/bench/coll/$bin" "$@" -J "$OUT/coll_${tag}.json" \
    >>"$TXT" 2>&1 || { echo "### $bin -np $np FAILED (exit $?)" | tee -a "$TXT"; rc=1; }
  echo "### $bin -np $np took $((SECONDS - t0)) s" | tee -a "$TXT"
}
for np in ${VCOLL_BENCH_NP:-8 4 2}; do
  run allgatherv_perf $np agv_np$np "${SWEEP[@]}" -d bfloat16 -c 1
  run reducescatterv_perf $np rsv_np$np "${SWEEP[@]}" -d bfloat16 -o sum -c 1
done
if [ "$SHARE" = 1 ]; then
  run allgatherv_perf 4 agv_np4_reg -b 1K -e 1M -f 32 -s equal,skew -R 1 -p 0 -c 1 -n 3 -w 1
  run allgatherv_perf 3 agv_np3_t4 -b 1K -e 1M -f 32 -s all -t 4 -c 1 -n 3 -w 1
  run reducescatterv_perf 3 rsv_np3 -b 1K -e 1M -f 32 -s all -d float -o max -c 1 -n 3 -w 1
  grep -E "^# (Out of bounds|Avg|Points)|^###" "$TXT"
  exit $rc
fi
# Registered user buffers (vcollMemAlloc) and CUDA graphs, 4 GPUs, equal and skewed sizes.
run allgatherv_perf 4 agv_np4_reg -b 64K -e 16M -f 4 -s equal,skew -R 1 -p 0 -c 1
run allgatherv_perf 4 agv_np4_graph -b 16K -e 4M -f 4 -s equal,skew -G 10 -p 0 -c 1
# A list of 4 tensors (one gather of a packed stream vs one op per tensor).
run allgatherv_perf 4 agv_np4_t4 -b 16K -e 16M -f 4 -s equal,moe -t 4 -p 0 -c 1
grep -E "^# (Out of bounds|Avg|Points)|^###" "$TXT"
# The recorded automatic choice against the fastest, and a fitted table, per collective.
for c in agv rsv; do
  ls "$OUT"/coll_${c}_np[0-9].json >/dev/null 2>&1 &&
    python3 "$(dirname "$0")/../fit_rules.py" "$OUT"/coll_${c}_np[0-9].json | tee "$OUT/fit_$c.txt"
done
if python3 -c 'import matplotlib' 2>/dev/null; then
  python3 "$(dirname "$0")/../plot_busbw.py" "$OUT"/coll_*.json --out "$OUT" || rc=1
else
  echo "# matplotlib not available: no plots"
fi
exit $rc
