#!/bin/sh
# bench/engine.sh: engine speed (pp512, tg128 tokens/s as llama-bench
# reports them) and peak RSS with `moeq bench`, on the tiny models in
# ../shared and on the full qwen3-30b-a3b shape in the asym-2bitexp recipe
# (random weights from `moeq synth`: real speed and memory at real scale).
# Results go to stdout as Markdown rows, for the engine section of
# bench/RESULTS.md.
#
#   sh bench/engine.sh [-t THREADS] [-r REPS] [-p N] [-n N]
#
# Environment:
#   MOEQ_BIN     the moeq binary (default ./moeq)
#   MOEQ_SHARED  the shared data folder (default ../shared)
#   LLAMA_BENCH  a reference llama-bench binary: when set, it runs on the
#                same files with the same threads and the ratio
#                moeq / reference is reported per test
#   BENCH_FULL   0 skips the full-size model (it needs ~12 GiB of disk,
#                written to a temporary folder and deleted afterwards)
set -eu
bin=${MOEQ_BIN:-./moeq}
shared=${MOEQ_SHARED:-../shared}
threads=$(nproc)
reps=3
pp=512
tg=128
while [ $# -gt 0 ]; do
  case $1 in
    -t) threads=$2; shift 2 ;;
    -r) reps=$2; shift 2 ;;
    -p) pp=$2; shift 2 ;;
    -n) tg=$2; shift 2 ;;
    *) echo "bench/engine.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "bench/engine.sh: $bin not built (run make)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/moeq-engine-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# "mean" of a llama-bench / moeq bench row "| ... | 123.45 ± 1.23 |"
tps() { sed -n "s/.*| *$1 *| *\([0-9.]*\) ± .*/\1/p" | head -n 1; }

bench_one() {
  file=$1
  name=$(basename "$file")
  out=$("$bin" bench -m "$file" -p "$pp" -n "$tg" -r "$reps" -t "$threads" 2>&1) || {
    echo "| $name | failed: $(echo "$out" | tail -n 1) |"; return; }
  rss=$(echo "$out" | sed -n 's/^peak RSS: //p')
  echo "$out" | grep -E "\| (pp|tg)[0-9]+ \|" | while IFS= read -r row; do
    test=$(echo "$row" | awk -F'|' '{ gsub(/ /, "", $6); print $6 }')
    val=$(echo "$row" | awk -F'|' '{ print $7 }' | sed 's/^ *//; s/ *$//')
    ref=""
    if [ -n "${LLAMA_BENCH:-}" ]; then
      r=$("$LLAMA_BENCH" -m "$file" -p "$pp" -n "$tg" -r "$reps" -t "$threads" 2>/dev/null | tps "$test" || true)
      m=$(echo "$val" | sed 's/ ±.*//')
      [ -n "$r" ] && ref=" | $r | $(awk -v a="$m" -v b="$r" 'BEGIN { printf "%.2f", a / b }')"
    fi
    echo "| $name | $threads | $test | $val | $rss$ref |"
  done
}

echo "moeq $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, $(date -u +%Y-%m-%d)"
echo
if [ -n "${LLAMA_BENCH:-}" ]; then
  echo "| model | threads | test | moeq t/s | peak RSS | reference t/s | ratio |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
else
  echo "| model | threads | test | moeq t/s | peak RSS |"
  echo "| --- | ---: | ---: | ---: | ---: |"
fi
for f in tiny-a-asym tiny-a-q4_k_m tiny-a-q8_0 tiny-a-f16; do
  p=$shared/models/tiny-a/$f.gguf
  [ -r "$p" ] && bench_one "$p"
done
if [ "${BENCH_FULL:-1}" != 0 ]; then
  avail=$(df -Pk "$tmp" | awk 'NR==2 { print $4 }')
  if [ "$avail" -lt 12582912 ]; then
    echo "(full-size model skipped: need 12 GiB free in $tmp)"
  else
    full=$tmp/qwen3-30b-a3b-asym.gguf
    "$bin" synth --preset qwen3-30b-a3b --recipe asym-2bitexp -o "$full" >/dev/null 2>&1
    bench_one "$full"
  fi
fi
