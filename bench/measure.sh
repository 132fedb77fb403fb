#!/bin/sh
# bench/measure.sh: the one place the bench scripts time a command. Sourced
# (`. bench/measure.sh`) with OUT set to the script's output folder, it
# defines measure NAME CMD...: runs CMD with its output in $OUT/NAME.log and
# appends "NAME seconds peak_rss_kib peak_anon_kib" to $OUT/times. Wall time
# and peak RSS come from /usr/bin/time; peak RSS counts the pages of every
# mapped file as well, so the anonymous part (RssAnon, what the command
# allocated itself, beyond the mapped model) is sampled once a second from
# /proc and reported beside it. val NAME FIELD reads a row back (2 seconds,
# 3 peak RSS, 4 peak anon).
[ -x /usr/bin/time ] || { echo "bench: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

# anon_peak PID: the largest RssAnon (KiB) of one of PID's children or
# grandchildren while PID runs
anon_peak() {
  set +e   # (a process may end between listing and reading: not an error)
  peak=0
  # (the finished command stays a zombie until measure waits for it)
  while [ -e "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; do
    kids=$(pgrep -P "$1")
    for p in $kids $(for k in $kids; do pgrep -P "$k"; done); do
      a=$(awk '/^RssAnon:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
      [ -n "$a" ] && [ "$a" -gt "$peak" ] && peak=$a
    done
    sleep 1
  done
  echo "$peak"
}

measure() {
  name=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/t.tmp" "$@" > "$OUT/$name.log" 2>&1 &
  tpid=$!
  anon=$(anon_peak "$tpid")
  wait "$tpid" || { echo "bench: $name failed (see $OUT/$name.log)" >&2; exit 1; }
  echo "$name $(cat "$OUT/t.tmp") $anon" >> "$OUT/times"
  echo "  $name: $(cat "$OUT/t.tmp") $anon (s, peak RSS KiB, peak anon KiB)" >&2
}

val() { awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$OUT/times"; }
