#!/usr/bin/env bash
# MoE FP4 weight-layout benchmark on GPU 0: a DeepSeek-V3 layer (NVFP4,
# 256 experts, w13 [4096, 7168], w2 [7168, 2048]) with swizzled and with
# linear scales, and a gpt-oss-20b-sized MXFP4 layer (32 experts, 2880
# rounded up to 3072); each with cache warm / cold / per-expert recompute
# against a device copy, the 58-layer (DeepSeek) or 24-layer (gpt-oss)
# model total, and a check against the CPU version. Raw table in
# OUT_DIR/weights.txt.
#   bench/run_gpu.d/weights.sh BUILD_DIR OUT_DIR
set -uo pipefail
BUILD=${1:?usage: weights.sh BUILD_DIR OUT_DIR}
OUT=${2:?usage: weights.sh BUILD_DIR OUT_DIR}
mkdir -p "$OUT"
TXT=$OUT/weights.txt
BIN=$BUILD/bench/weights/weight_layout_perf
t0=$SECONDS
rc=0
: >"$TXT"
for args in "-f nvfp4 -l swizzled" "-f nvfp4 -l linear -L 0" "-f mxfp4 -l linear -E 32 -H 3072 -I 3072 -L 24" \
            "-f mxfp4 -l swizzled -E 32 -H 3072 -I 3072 -L 0"; do
  echo "## weight_layout_perf $args" >>"$TXT"
  CUDA_VISIBLE_DEVICES=0 timeout 120 "$BIN" $args >>"$TXT" 2>&1 || rc=$?
  echo >>"$TXT"
done
echo "# weights.sh exit $rc, took $((SECONDS - t0)) s" >>"$TXT"
cat "$TXT"
exit $rc
