#!/usr/bin/env bash
# Routing gate benchmark on GPU 0: DeepSeek-V3's shape (E 256, 8 groups,
# topk_group 4, topk 8, one shared expert), T = 1 .. 65536, fp32 and bf16,
# each size checked against the CPU reference; then the same with each
# kernel forced: VCOLL_GATE_KERNEL=seg (8 lanes per token) and =warp (one
# warp per token), which the default picks between by token count; and
# the default with biases spread too widely for the segment kernel's
# fixed-point keys (-B 100: its 8-bit-class keys), from 1024 tokens. Raw
# tables in OUT_DIR/gate.txt.
#   bench/run_gpu.d/gate.sh BUILD_DIR OUT_DIR
set -uo pipefail
BUILD=${1:?usage: gate.sh BUILD_DIR OUT_DIR}
OUT=${2:?usage: gate.sh BUILD_DIR OUT_DIR}
mkdir -p "$OUT"
TXT=$OUT/gate.txt
t0=$SECONDS
: >"$TXT"
rc=0
for kernel in "" seg warp; do # "": the default selection
  if [ -z "$kernel" ]; then echo "# default kernel selection" >>"$TXT"; else echo "# VCOLL_GATE_KERNEL=$kernel" >>"$TXT"; fi
  VCOLL_GATE_KERNEL=$kernel CUDA_VISIBLE_DEVICES=0 "$BUILD/bench/gate/gate_perf" -n 200 -w 20 >>"$TXT" 2>&1 || rc=$?
done
echo "# default kernel selection, bias N(0,100) (-B 100)" >>"$TXT"
CUDA_VISIBLE_DEVICES=0 "$BUILD/bench/gate/gate_perf" -n 200 -w 20 -B 100 -b 1024 >>"$TXT" 2>&1 || rc=$?
echo "# gate_perf exit $rc, took $((SECONDS - t0)) s" >>"$TXT"
cat "$TXT"
exit $rc
