#!/usr/bin/env bash
# Setup warnings that must not pass unseen (VCOLL_NOTICE): with VCOLL_DEBUG
# unset they reach stderr, not stdout; VCOLL_DEBUG=NONE silences them;
# VCOLL_DEBUG=VERSION too, and logs the version line;
# VCOLL_DEBUG=WARN (or TRACE) sends them to the log (stdout); a value it does
# not know is said on stderr and ignored. Runs the uneven_batches
# example on one rank of the host backend with an unreadable VCOLL_BACKEND,
# VCOLL_CHECK and VCOLL_ALGO, and with a VCOLL_DEBUG_FILE that cannot be
# opened.
#   notice_test.sh MPIRUN EXAMPLE
set -uo pipefail
MPIRUN=$1 EX=$2
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
run() { # VCOLL_DEBUG value ("" = unset); stdout to $D/out, stderr to $D/err
  (unset VCOLL_DEBUG VCOLL_DEBUG_FILE; [ -n "$1" ] && export VCOLL_DEBUG=$1
   VCOLL_BACKEND=bogus VCOLL_CHECK=maybe VCOLL_ALGO=allgatherv=pda "$MPIRUN" -x VCOLL_BACKEND -x VCOLL_CHECK -x VCOLL_ALGO \
     ${VCOLL_DEBUG:+-x VCOLL_DEBUG} \
     -np 1 "$EX" --backend auto >"$D/out" 2>"$D/err") || { echo "notice_test: the example failed (VCOLL_DEBUG=$1)"; cat "$D/out" "$D/err"; exit 1; }
}
fail() { echo "notice_test: $*"; echo "--- stdout"; cat "$D/out"; echo "--- stderr"; cat "$D/err"; exit 1; }
want='VCOLL_BACKEND=bogus is not nccl, host or auto'
want2='VCOLL_CHECK=maybe is not a number'
want3="VCOLL_ALGO=allgatherv=pda: 'allgatherv=pda' names no algorithm" # the host backend has none, but a typo shows
run ""
grep -q "$want" "$D/err" && grep -q "$want2" "$D/err" && grep -q "$want3" "$D/err" ||
  fail "VCOLL_DEBUG unset: the notices are not on stderr"
grep -q "VCOLL WARN" "$D/out" && fail "VCOLL_DEBUG unset: a notice reached stdout"
grep -q "check: OK" "$D/out" || fail "VCOLL_DEBUG unset: the example's output is missing"
run NONE
grep -q "VCOLL WARN" "$D/out" "$D/err" && fail "VCOLL_DEBUG=NONE: a notice was printed"
run VERSION
grep -q "VCOLL WARN" "$D/out" "$D/err" && fail "VCOLL_DEBUG=VERSION: a notice was printed"
grep -q "VCOLL VERSION vcoll version [0-9]*\.[0-9]*\.[0-9]*, backend host (MPI), 1 rank$" "$D/out" ||
  fail "VCOLL_DEBUG=VERSION: no version line in the log"
run WARN
grep -q "$want" "$D/out" && grep -q "$want2" "$D/out" && grep -q "$want3" "$D/out" ||
  fail "VCOLL_DEBUG=WARN: the notices are not in the log (stdout)"
run TRACE
grep -q "$want" "$D/out" && grep -q "$want2" "$D/out" && grep -q "$want3" "$D/out" && grep -q "VCOLL INFO" "$D/out" ||
  fail "VCOLL_DEBUG=TRACE: the notices or INFO lines are not in the log"
# A value it does not know: said, then ignored (the notices on stderr as when unset).
run LOUD
grep -q "VCOLL_DEBUG=LOUD is not NONE, VERSION, WARN, INFO or TRACE; ignored" "$D/err" ||
  fail "VCOLL_DEBUG=LOUD: no notice that the value is ignored"
grep -q "$want" "$D/err" && ! grep -q "VCOLL WARN" "$D/out" || fail "VCOLL_DEBUG=LOUD: the notices are not on stderr alone"
# A VCOLL_DEBUG_FILE that cannot be opened: said on stderr, the log on stdout.
(unset VCOLL_BACKEND VCOLL_CHECK; VCOLL_DEBUG=INFO VCOLL_DEBUG_FILE="$D/no/such/dir/log" \
   "$MPIRUN" -x VCOLL_DEBUG -x VCOLL_DEBUG_FILE -np 1 "$EX" --backend host >"$D/out" 2>"$D/err") ||
  fail "VCOLL_DEBUG_FILE unopenable: the example failed"
grep -q "VCOLL_DEBUG_FILE: cannot open $D/no/such/dir/log" "$D/err" || fail "VCOLL_DEBUG_FILE unopenable: no notice on stderr"
grep -q "VCOLL INFO" "$D/out" || fail "VCOLL_DEBUG_FILE unopenable: the log is not on stdout"
echo "notice_test: OK"
