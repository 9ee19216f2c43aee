#!/usr/bin/env bash
# MoE dispatch/combine benchmark: moe_dispatch_perf on 8, 4, then 2 GPUs where visible
# (2: GPUs 0,1): H 7168, top-8, 1..16384 tokens per rank (x2), shapes equal,
# skew and moe; every point checked on the device. Raw tables in
# OUT_DIR/moe.txt.
#   bench/run_gpu.d/moe.sh BUILD_DIR OUT_DIR
# VCOLL_BENCH_NP="4" (default "8 4 2") picks the rank counts.
set -uo pipefail
BUILD=${1:?usage: moe.sh BUILD_DIR OUT_DIR}
OUT=${2:?usage: moe.sh BUILD_DIR OUT_DIR}
mkdir -p "$OUT"
TXT=$OUT/moe.txt
: >"$TXT"
MPI=(mpirun --allow-run-as-root --oversubscribe -x NCCL_NVLS_ENABLE=0 -x VCOLL_DEBUG=WARN)
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
rc=0
if [ "${VCOLL_SHARE_GPU:-0}" = 1 ] && [ "$NGPU" -ge 1 ]; then
  # Ranks share the GPU(s), NCCL over sockets (VCOLL_SHARE_GPU=1): results
  # checked on the device, times meaningless.
  echo "# VCOLL_SHARE_GPU=1: all ranks on $NGPU GPU(s), NCCL over sockets; times are not GPU times" | tee -a "$TXT"
  for np in 2 3 4; do
    echo "### moe_dispatch_perf -np $np shared ($(date -u +%H:%M:%S))" | tee -a "$TXT"
    timeout 120 "${MPI[@]}" -np "$np" "$BUILD/bench/moe/moe_dispatch_perf" \
      -b 1 -e 1024 -f 8 -H 7168 -k 8 -s equal,skew,moe -n 2 -w 1 -c 1 >>"$TXT" 2>&1 ||
      { echo "### moe_dispatch_perf -np $np FAILED (exit $?)" | tee -a "$TXT"; rc=1; }
  done
  grep -E "^# (min speedup|check)|^###" "$TXT"
  exit $rc
fi
for np in ${VCOLL_BENCH_NP:-8 4 2}; do
  if [ "$NGPU" -lt "$np" ]; then echo "# skipped -np $np: $NGPU GPUs" | tee -a "$TXT"; continue; fi
  devs=$(seq -s, 0 $((np - 1)))
  echo "### moe_dispatch_perf -np $np ($(date -u +%H:%M:%S))" | tee -a "$TXT"
  t0=$SECONDS
  CUDA_VISIBLE_DEVICES=$devs timeout 100 "${MPI[@]}" -np "$np" "$BUILD/bench/moe/moe_dispatch_perf" \
    -b 1 -e 16384 -f 2 -H 7168 -k 8 -s equal,skew,moe -n 30 -w 5 -c 1 >>"$TXT" 2>&1 ||
    { echo "### moe_dispatch_perf -np $np FAILED (exit $?)" | tee -a "$TXT"; rc=1; }
  echo "### moe_dispatch_perf -np $np took $((SECONDS - t0)) s" | tee -a "$TXT"
  # The same inside CUDA graphs of 10 calls: device time without launch gaps.
  echo "### moe_dispatch_perf -np $np -G 10 ($(date -u +%H:%M:%S))" | tee -a "$TXT"
  t0=$SECONDS
  CUDA_VISIBLE_DEVICES=$devs timeout 100 "${MPI[@]}" -np "$np" "$BUILD/bench/moe/moe_dispatch_perf" \
    -b 1 -e 16384 -f 4 -H 7168 -k 8 -s equal,moe -n 20 -w 3 -c 1 -G 10 >>"$TXT" 2>&1 ||
    { echo "### moe_dispatch_perf -np $np -G 10 FAILED (exit $?)" | tee -a "$TXT"; rc=1; }
  echo "### moe_dispatch_perf -np $np -G 10 took $((SECONDS - t0)) s" | tee -a "$TXT"
done
grep -E "^# (min speedup|check)|^###" "$TXT"
exit $rc
