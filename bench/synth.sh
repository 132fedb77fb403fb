#!/bin/sh
# bench/synth.sh: write the full qwen3-30b-a3b shape in the asym-2bitexp
# recipe (about 11 GB) to a temporary folder, report wall time, peak RSS and
# size, then delete it. The issue's limits: peak RSS under 1 GB, a few
# minutes on 2 cores.
#
#   sh bench/synth.sh [extra moeq synth flags, e.g. -t 2]
#
# Needs about 12 GB free under $TMPDIR (default /tmp). Set MOEQ_BIN to test
# another binary.
#
# Measured 2026-11-26 on the 2-core dev VM (virtio disk, ~110 MB/s):
#   11,417,865,856 bytes, wall 1:42, user 20 s, sys 23 s, peak RSS 49 MiB.
# The disk is the limit: generation is about 20 CPU-seconds.
set -eu
bin=${MOEQ_BIN:-./moeq}
[ -x "$bin" ] || { echo "bench/synth.sh: $bin not built (run make)" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/moeq-synth-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM
avail=$(df -Pk "$dir" | awk 'NR==2 { print $4 }')
if [ "$avail" -lt 12582912 ]; then
  echo "bench/synth.sh: need 12 GiB free in $dir, have $((avail / 1048576)) GiB" >&2
  exit 1
fi
out=$dir/qwen3-30b-a3b-asym.gguf
log=$dir/time.log
if [ -x /usr/bin/time ]; then
  /usr/bin/time -v -o "$log" "$bin" synth --preset qwen3-30b-a3b --recipe asym-2bitexp -o "$out" "$@"
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$log")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")
  cpu_u=$(sed -n 's/.*User time (seconds): //p' "$log")
  cpu_s=$(sed -n 's/.*System time (seconds): //p' "$log")
  echo "synth qwen3-30b-a3b asym-2bitexp: wall $wall, user ${cpu_u}s, sys ${cpu_s}s, peak RSS $((rss / 1024)) MiB"
else
  # the tool itself prints time and max RSS on stderr
  "$bin" synth --preset qwen3-30b-a3b --recipe asym-2bitexp -o "$out" "$@"
fi
echo "size: $(wc -c < "$out") bytes, cores: $(nproc)"
