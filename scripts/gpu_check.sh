#!/usr/bin/env bash
# Memory checking and profiling on one GPU, after scripts/gpu_session.sh has
# built BUILD_DIR (default build-gpu):
#   - compute-sanitizer memcheck and racecheck over the single-GPU test
#     programs (gate, weight layout, the one-rank NCCL collectives and MoE
#     suites) and over small checked benchmark runs of the NVFP4 kernels;
#   - Nsight Compute (ncu, clocks left alone) on the routing gate and the
#     NVFP4 quantize kernel at their largest benchmark sizes;
#   - SASS instruction counts of those kernels (cuobjdump);
#   - with VCOLL_SHARE_GPU=1, memcheck of the MoE suite at 2 and 3 ranks
#     sharing the GPU (NCCL kernels excluded).
# Logs under $OUT/check (default /tmp/vcoll-check). Each step is bounded.
#   scripts/gpu_check.sh
# CHECK_STEPS picks the steps (default "ncu san sass"; e.g. CHECK_STEPS=san
# for the sanitizers alone).
set -uo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build-gpu}
OUT=${OUT:-/tmp/vcoll-check}
D=$OUT/check
mkdir -p "$D"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PATH=/usr/local/cuda/bin:$PATH
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "# compute-sanitizer: ${CS:-none}; ncu: ${NCU:-none}"

STEPS=" ${CHECK_STEPS:-ncu san sass} "
if [ -n "$NCU" ] && [[ $STEPS == *" ncu "* ]]; then
  timeout 200 "$NCU" --clock-control none -k regex:moeGate --launch-skip 5 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section InstructionStats --section MemoryWorkloadAnalysis \
    "$B/bench/gate/gate_perf" -t f32 -b 65536 -e 65536 -n 3 -w 2 -c 0 >"$D/ncu-gate.txt" 2>&1
  echo "ncu gate: exit $?"
  timeout 200 "$NCU" --clock-control none -k regex:quantizeKernel --launch-skip 5 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis \
    "$B/bench/quant/nvfp4_perf" -t bf16 -b 16384 -e 16384 -n 3 -w 2 -k 0 >"$D/ncu-nvfp4.txt" 2>&1
  echo "ncu nvfp4: exit $?"
  grep -E "Duration|Throughput|Achieved Occupancy|Issue Slots Busy|Issued Ipc|No Eligible|Stall|Registers Per|Warp Cycles Per Issued" \
    "$D/ncu-gate.txt" "$D/ncu-nvfp4.txt" | sed 's/  */ /g' | head -60
fi

san() { # tool name cmd...
  local tool=$1 name=$2; shift 2
  timeout "${SAN_TIMEOUT:-60}" "$CS" --tool "$tool" --error-exitcode 9 "$@" >"$D/san-$tool-$name.txt" 2>&1
  local rc=$?
  echo "sanitizer $tool $name: exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$D/san-$tool-$name.txt" | tail -1)"
}
if [ -n "$CS" ] && [[ $STEPS == *" san "* ]]; then
  san memcheck gate "$B/tests/gate/test_gate_gpu"
  san racecheck gate "$B/tests/gate/test_gate_gpu"
  san memcheck weights "$B/tests/weights/test_weight_layout_gpu"
  san memcheck nvfp4_bf16 "$B/bench/quant/nvfp4_perf" -t bf16 -b 1 -e 300 -n 1 -w 0 -c 7168 -l swizzled
  san memcheck nvfp4_f32 "$B/bench/quant/nvfp4_perf" -t f32 -b 1 -e 129 -n 1 -w 0 -c 528 -l linear
  # VCOLL_TEST_NO_OOM: test_staging_out_of_memory's failed allocations would count as errors.
  san memcheck collectives_np1 mpirun -np 1 -x VCOLL_TEST_NO_OOM=1 "$B/tests/mpi/test_collectives" --backend nccl --iters 6
  san memcheck moe_np1 mpirun -np 1 "$B/tests/moe/test_moe" --backend nccl
  # Ranks sharing the GPU (NCCL over sockets): the multi-rank paths (a rank
  # with no tokens in the fused FP4 dispatch, every allgatherv algorithm
  # forced). NCCL's own kernels excluded (its LL kernels read past small
  # buffers by design); the ERROR SUMMARY also counts CUDA API errors that
  # NCCL's initialization meets and handles, so read the log, not the count.
  if [ "${VCOLL_SHARE_GPU:-0}" = 1 ]; then
    for np in 2 3; do
      timeout "${SAN_TIMEOUT_MPI:-240}" env NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 mpirun -np $np -x VCOLL_SHARE_GPU \
        -x NCCL_SOCKET_IFNAME -x NCCL_IB_DISABLE -x NCCL_NVLS_ENABLE "$CS" --tool memcheck \
        --kernel-name-exclude kns=ncclDevKernel "$B/tests/moe/test_moe" --backend nccl --iters 12 \
        >"$D/san-memcheck-moe_np$np.txt" 2>&1
      echo "sanitizer memcheck moe_np$np (shared GPU): exit $?; invalid accesses: $(grep -c 'Invalid __global__' "$D/san-memcheck-moe_np$np.txt"); $(grep -E 'PASSED|FAILED' "$D/san-memcheck-moe_np$np.txt" | sort | uniq -c | tr '\n' ' ')"
    done
  fi
fi

if command -v cuobjdump >/dev/null && [[ $STEPS == *" sass "* ]]; then
  for lib in "$B/src/libvcoll.so"; do
    cuobjdump --dump-sass "$lib" >"$D/sass.txt" 2>&1
  done
  awk '/Function :/{f=$3} /^ +\/\*[0-9a-f]+\*\//{n[f]++} END{for (k in n) print n[k], k}' "$D/sass.txt" |
    grep -E "moeGate|quantizeKernel" | sort -k2 | sed 's/^/sass instructions: /'
fi
