#!/usr/bin/env bash
# Command lines that must fail with a message naming the bad flag or value,
# never run on with a silent default, crash or hang (and a few that must
# run): the collective
# benchmark, moe_dispatch_perf (its flags are read before it needs a GPU)
# and the two examples, on one rank of the host backend.
#   cli_test.sh MPIRUN ALLGATHERV_PERF MOE_DISPATCH_PERF UNEVEN_BATCHES MOE_LAYER
set -uo pipefail
MPIRUN=$1 AGV=$2 MOE=$3 UB=$4 ML=$5
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
bad=0
expect_fail() { # needle program args...
  local needle=$1; shift
  timeout 60 "$MPIRUN" -np 1 "$@" >"$D/out" 2>&1
  local rc=$?
  if [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$rc" -ge 128 ] || ! grep -qF -- "$needle" "$D/out"; then
    echo "cli_test: '${*:2}' of $(basename "$1"): exit $rc, want a failure saying '$needle'"
    tail -5 "$D/out"
    bad=1
  fi
}
expect_ok() { # program args...
  timeout 60 "$MPIRUN" -np 1 "$@" >"$D/out" 2>&1
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "cli_test: '${*:2}' of $(basename "$1"): exit $rc, want 0"
    tail -5 "$D/out"
    bad=1
  fi
}
H=(--backend host)
expect_fail "-b: bad size 'inf'" "$AGV" "${H[@]}" -b inf
expect_fail "-b: bad size '1T'" "$AGV" "${H[@]}" -b 1T -e 1T
expect_fail "-e: bad size '1X'" "$AGV" "${H[@]}" -e 1X
expect_fail "-b 1024 is above -e 512" "$AGV" "${H[@]}" -b 1K -e 512
expect_fail "-s names no shape" "$AGV" "${H[@]}" -s ,
expect_fail "-c: bad value 'abc'" "$AGV" "${H[@]}" -c abc
expect_fail "-f: bad value '1'" "$AGV" "${H[@]}" -f 1
expect_fail "-n: bad value '0'" "$AGV" "${H[@]}" -n 0
expect_fail "-B: bad value 'nan'" "$AGV" "${H[@]}" -B nan
expect_fail "-a: unknown algorithm 'bogus' for allgatherv (known: bcast," "$AGV" "${H[@]}" -a bogus
expect_fail "-a 3: -a names algorithms here; nccl-tests' -a" "$AGV" "${H[@]}" -a 3
expect_ok "$AGV" "${H[@]}" -b 1K -e 1K -n 1 -a all
expect_ok "$AGV" "${H[@]}" -b 1K -e 1K -n 1 -a bcast,p2p
expect_fail "-S: bad seed '-1'" "$AGV" "${H[@]}" -S -1
expect_fail "unexpected argument 'extra'" "$AGV" "${H[@]}" extra
if [ -w /dev/full ]; then expect_fail "writing /dev/full failed" "$AGV" "${H[@]}" -b 1K -e 1K -n 1 -J /dev/full; fi
expect_fail "-c: no value" "$MOE" -c
expect_fail "-s: unknown shape 'bogus'" "$MOE" -s bogus
expect_fail "-e: bad value '18446744073709551615'" "$MOE" -e 18446744073709551615
expect_fail "-k: bad value 'abc'" "$MOE" -k abc
expect_fail "--tokens -1: usage" "$UB" "${H[@]}" --tokens -1
expect_fail "--hidden 100000000: usage" "$UB" "${H[@]}" --hidden 100000000
expect_fail "--tokens: bad value '1'" "$ML" "${H[@]}" --tokens 1
expect_fail "--hidden: bad value '1000000000'" "$ML" "${H[@]}" --hidden 1000000000
expect_fail "--seed: bad value 'x'" "$ML" "${H[@]}" --seed x
[ "$bad" = 0 ] && echo "cli_test: OK"
exit $bad
