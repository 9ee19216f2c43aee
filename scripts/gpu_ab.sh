#!/usr/bin/env bash
# Same-run A/B of the routing gate (or any single-GPU benchmark) between the
# working tree and other revisions, for one lease of a GPU machine.
#
# Here (no GPU needed):
#   scripts/gpu_ab.sh pack REV...      .deps/snap = this working tree, with
#                                      ab/<rev>/ = each REV (git archive)
#                                      and .deps/debs (cmocka) for the tests
# On the GPU machine (the device tool, carry [".deps/snap"]):
#   cd .deps/snap && scripts/gpu_ab.sh run
#     builds "cur" (the working tree) and every ab/<rev>/ (gate_perf and
#     the gate GPU test), runs each build's gate test, then gate_perf of
#     every build interleaved (build order rotated each repetition), and
#     prints a summary: per build, type and T, every repetition's eager and
#     graph median. Raw output in $OUT/ab (default /tmp/vcoll-ab).
#   Environment: AB_ARGS (gate_perf arguments, default "-t all -b 2048 -e
#   65536 -n 200 -w 20"), AB_SEEDS (gate_perf -S seeds, default "0"),
#   AB_REPS (repetitions, default 2), AB_TESTS=0 skips the tests.
#   cd .deps/snap && scripts/gpu_ab.sh run-moe
#     the same for the MoE dispatch's fixed cost and the quantize kernel
#     (see run_moe below); raw output in $OUT/ab/moe-ab.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

pack() {
  local S=.deps/snap r
  rm -rf "$S" && mkdir -p "$S/.deps" "$S/ab"
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -x -C "$S"
  [ -d .deps/debs ] && cp -r .deps/debs "$S/.deps/"
  for r in "$@"; do
    mkdir -p "$S/ab/${r//\//_}"
    git archive "$r" | tar -x -C "$S/ab/${r//\//_}" || { echo "gpu_ab: cannot archive $r" >&2; exit 2; }
  done
  du -sh "$S"
}

# Sets OUTD, and names/dirs/bdirs: "cur" (the working tree) and every
# ab/<rev>/, each built in bdirs[i] (bab; for cur AB_CUR_BUILD, e.g.
# gpu_session.sh's build-gpu of an earlier call on the same machine, where
# it exists; a build directory that exists is reused), targets $@ only.
build_all() {
  OUTD=${OUT:-/tmp/vcoll-ab}/ab
  mkdir -p "$OUTD"
  export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH NCCL_NVLS_ENABLE=0
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
  . scripts/cmocka_debs.sh
  names=(cur) dirs=(.) bdirs=()
  local d i b
  for d in ab/*/; do [ -d "$d" ] && names+=("$(basename "$d")") && dirs+=("${d%/}"); done
  for i in "${!dirs[@]}"; do
    d=${dirs[$i]}
    b=bab
    [ "$i" = 0 ] && [ -n "${AB_CUR_BUILD:-}" ] && [ -d "$AB_CUR_BUILD" ] && b=$AB_CUR_BUILD
    bdirs+=("$d/$b")
    (cd "$d" && { [ -d "$b" ] || meson setup "$b" -Dgpu_arch=90 -Dexamples=false >"$OUTD/build-${names[$i]}.txt" 2>&1; } &&
      ninja -C "$b" "$@" >>"$OUTD/build-${names[$i]}.txt" 2>&1) ||
      { echo "gpu_ab: build of ${names[$i]} failed"; tail -20 "$OUTD/build-${names[$i]}.txt"; exit 1; }
  done
}

run() {
  build_all bench/gate/gate_perf tests/gate/test_gate_gpu
  local i
  if [ "${AB_TESTS:-1}" != 0 ]; then
    for i in "${!dirs[@]}"; do
      timeout 120 "${bdirs[$i]}/tests/gate/test_gate_gpu" >"$OUTD/test-${names[$i]}.txt" 2>&1
      echo "test_gate_gpu ${names[$i]}: exit $? $(grep -E 'PASSED|FAILED' "$OUTD/test-${names[$i]}.txt" | tr '\n' ' ')"
    done
  fi
  local R=$OUTD/ab.txt rep seed k
  : >"$R"
  for rep in $(seq 1 "${AB_REPS:-2}"); do
    for seed in ${AB_SEEDS:-0}; do
      for k in "${!dirs[@]}"; do
        i=$(((k + rep - 1) % ${#dirs[@]}))
        echo "## rep $rep seed $seed build ${names[$i]}" >>"$R"
        CUDA_VISIBLE_DEVICES=0 "${bdirs[$i]}/bench/gate/gate_perf" ${AB_ARGS:--t all -b 2048 -e 65536 -n 200 -w 20} \
          -S "$seed" 2>&1 | grep -v '^#' >>"$R"
        [ "${PIPESTATUS[0]}" = 0 ] || echo "gpu_ab: gate_perf of ${names[$i]} failed (rep $rep, seed $seed)"
      done
    done
  done
  python3 - "$R" <<'PY'
import collections, sys
d = collections.defaultdict(list)
key = None
for line in open(sys.argv[1]):
    if line.startswith("## "):
        f = line.split()
        key = (f[6], f[4])  # build, seed
        continue
    f = line.split()
    if len(f) >= 11 and f[0] in ("f32", "bf16") and f[1].isdigit():
        d[(f[0], int(f[1]), key[1], key[0])].append((f[3], f[5], f[-1]))
print("# type T seed build: eager(us) per repetition | graph(us) per repetition | #wrong")
for (t, T, seed, b), v in sorted(d.items()):
    print(f"{t:5s} {T:6d} {seed:>4s} {b:14s} " + " ".join(x[0] for x in v) + " | " + " ".join(x[1] for x in v)
          + " | " + ",".join(x[2] for x in v))
PY
}

# The MoE dispatch's fixed cost on one GPU, same run: every build's
# moe_dispatch_perf at one rank with the padded allgatherv forced (the
# algorithm small dispatches take; NCCL's one-rank all-gather is a local
# copy, so the times are vcoll's kernels, launches and host work), eager
# and in CUDA graphs, and nvfp4_perf (bf16, linear scales), builds
# interleaved. MOE_ARGS, NVFP4_ARGS, AB_REPS override the defaults.
run_moe() {
  build_all bench/moe/moe_dispatch_perf bench/quant/nvfp4_perf
  local i rep k g R=$OUTD/moe-ab.txt
  : >"$R"
  local MPI=(mpirun --allow-run-as-root -x NCCL_NVLS_ENABLE=0 -x VCOLL_ALGO=allgatherv=pad -np 1)
  for rep in $(seq 1 "${AB_REPS:-2}"); do
    for k in "${!dirs[@]}"; do
      i=$(((k + rep - 1) % ${#dirs[@]}))
      for g in 0 10; do
        echo "## rep $rep build ${names[$i]} moe_dispatch_perf -np 1 pad -G $g" | tee -a "$R"
        CUDA_VISIBLE_DEVICES=0 timeout 120 "${MPI[@]}" "${bdirs[$i]}/bench/moe/moe_dispatch_perf" \
          ${MOE_ARGS:--b 1 -e 4096 -f 4 -H 7168 -k 8 -s equal -n 50 -w 10 -c 1} -G $g >>"$R" 2>&1 ||
          echo "gpu_ab: moe_dispatch_perf of ${names[$i]} failed (rep $rep, -G $g)" | tee -a "$R"
      done
      echo "## rep $rep build ${names[$i]} nvfp4_perf" | tee -a "$R"
      CUDA_VISIBLE_DEVICES=0 timeout 120 "${bdirs[$i]}/bench/quant/nvfp4_perf" ${NVFP4_ARGS:--t bf16 -l linear -n 100 -w 10} \
        >>"$R" 2>&1 || echo "gpu_ab: nvfp4_perf of ${names[$i]} failed (rep $rep)" | tee -a "$R"
    done
  done
  cat "$R"
  python3 - "$R" <<'PY'
import collections,sys
d=collections.defaultdict(list); key=None
for line in open(sys.argv[1]):
    if line.startswith('## '):
        f=line.split(); key=(f[4], ' '.join(f[5:])); continue
    f=line.split()
    if line.startswith('#') and 'tok/rk' in line:
        cols = line[1:].split()  # column names (moe_dispatch_perf's header)
        continue
    if key and 'moe_dispatch' in key[1] and len(f)>15 and f[0]=='equal':
        d[('G'+key[1].split()[-1], int(f[1]), key[0])].append(tuple(f[cols.index(n)] for n in ('fp4', 'fp4c', 'bf16', 'quant')))
    if key and key[1]=='nvfp4_perf' and len(f)>=12 and f[0].isdigit():
        d[('nvfp4', int(f[0]), key[0])].append((f[2],f[8],f[10]))
print("# bench G, tokens/rows, build: per repetition (fp4 dispatch, fp4 with computed scale, bf16 dispatch, quant alone) us | nvfp4_perf: (quant, copy, %copy)")
for k in sorted(d): print(k[0], k[1], k[2], ' '.join('/'.join(x) for x in d[k]))
PY
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) run ;;
  run-moe) run_moe ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
