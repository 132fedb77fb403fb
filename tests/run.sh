#!/bin/sh
# Runs the test suites (release, then ASan+UBSan) and ends with one summary
# line over both: "total: N passed, N failed, N skipped".
# MOEQ_SUITES selects suites ("release asan" by default); arguments after
# make's are not passed, use MOEQ_FILTER to select tests by name.
suites=${MOEQ_SUITES:-"release asan"}
tp=0; tf=0; ts=0; rc=0
for s in $suites; do
  dir=build/$s
  bin=$PWD/$dir/moeq; [ "$s" = release ] && bin=$PWD/moeq
  log=$(mktemp)
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
  MOEQ_SUITE=$s MOEQ_BIN=$bin ./$dir/moeq-tests $MOEQ_FILTER 2>&1 | tee "$log"
  line=$(grep -E "^$s: [0-9]+ passed, [0-9]+ failed" "$log" | tail -n 1)
  if [ -z "$line" ]; then
    echo "$s: test runner did not finish"; rc=1; tf=$((tf + 1))
  else
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    k=$(echo "$line" | sed -E 's/.* ([0-9]+) skipped.*/\1/')
    tp=$((tp + p)); tf=$((tf + f)); ts=$((ts + k))
  fi
  rm -f "$log"
done
[ $tf -ne 0 ] && rc=1
echo "total: $tp passed, $tf failed, $ts skipped"
exit $rc
