#!/usr/bin/env bash
# NVFP4 quantization benchmark on GPU 0: bf16 rows 1 .. 16384 x 7168 with
# linear and swizzled scales, fp16 and fp32 up to 4096 rows; given and
# computed global scale, dequantization, and a device copy of the same bytes
# beside each; every size checked against the CPU reference. Raw table in
# OUT_DIR/nvfp4.txt.
#   bench/run_gpu.d/nvfp4.sh BUILD_DIR OUT_DIR
set -uo pipefail
BUILD=${1:?usage: nvfp4.sh BUILD_DIR OUT_DIR}
OUT=${2:?usage: nvfp4.sh BUILD_DIR OUT_DIR}
mkdir -p "$OUT"
TXT=$OUT/nvfp4.txt
BIN=$BUILD/bench/quant/nvfp4_perf
t0=$SECONDS
rc=0
: >"$TXT"
for args in "-t bf16 -l linear" "-t bf16 -l swizzled" "-t fp16 -e 4096" "-t f32 -e 4096"; do
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=0 "$BIN" $args -n 100 -w 10 >>"$TXT" 2>&1 || rc=$?
done
echo "# nvfp4_perf exit $rc, took $((SECONDS - t0)) s" >>"$TXT"
cat "$TXT"
exit $rc
