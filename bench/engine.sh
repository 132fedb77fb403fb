#!/bin/sh
# bench/engine.sh: engine speed (pp512, tg128 tokens/s as llama-bench
# reports them) and peak RSS with `moeq bench`, on the tiny models in
# ../shared and on the full qwen3-30b-a3b shape in the asym-2bitexp recipe
# and the Q4_K_M mix (random weights from `moeq synth`: real speed and
# memory at real scale).
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
#   BENCH_FULL   0 skips the full-size models (~11 and ~18 GiB of disk,
#                written to a temporary folder and deleted afterwards)
#   FULL_DIR     keep the full-size files in this folder and reuse them
#   FULL_REPS    rounds at full size, moeq and reference alternating
#                (default 3)
#   BENCH_Q4K    0 skips the full-size Q4_K_M model
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

# Read a file once so that both engines start from the page cache.
warm_file() { cat "$1" > /dev/null 2>&1 || true; }

bench_one() {
  file=$1 r_reps=${2:-$reps}
  name=$(basename "$file")
  warm_file "$file"
  out=$("$bin" bench -m "$file" -p "$pp" -n "$tg" -r "$r_reps" -t "$threads" 2>&1) || {
    echo "| $name | failed: $(echo "$out" | tail -n 1) |"; return; }
  rss=$(echo "$out" | sed -n 's/^peak RSS: //p')
  refout=""
  if [ -n "${LLAMA_BENCH:-}" ]; then
    warm_file "$file"
    refout=$("$LLAMA_BENCH" -m "$file" -p "$pp" -n "$tg" -r "$r_reps" -t "$threads" 2>/dev/null || true)
  fi
  echo "$out" | grep -E "\| (pp|tg)[0-9]+ \|" | while IFS= read -r row; do
    test=$(echo "$row" | awk -F'|' '{ gsub(/ /, "", $6); print $6 }')
    val=$(echo "$row" | awk -F'|' '{ print $7 }' | sed 's/^ *//; s/ *$//')
    ref=""
    if [ -n "${LLAMA_BENCH:-}" ]; then
      r=$(echo "$refout" | tps "$test" || true)
      m=$(echo "$val" | sed 's/ ±.*//')
      [ -n "$r" ] && ref=" | $r | $(awk -v a="$m" -v b="$r" 'BEGIN { printf "%.2f", a / b }')"
    fi
    echo "| $name | $threads | $test | $val | $rss$ref |"
  done
}

# Full-size files: ROUNDS rounds of one moeq run then one reference run,
# so that a slow spell of this (shared) machine hits both engines alike;
# each engine's mean ± standard deviation over the rounds, and the ratio
# of the means.
bench_rounds() {
  file=$1 rounds=$2
  name=$(basename "$file")
  warm_file "$file"
  : > "$tmp/m.txt"; : > "$tmp/r.txt"
  i=0 rss=""
  while [ "$i" -lt "$rounds" ]; do
    out=$("$bin" bench -m "$file" -p "$pp" -n "$tg" -r 1 -t "$threads" 2>&1) || {
      echo "| $name | failed: $(echo "$out" | tail -n 1) |"; return; }
    rss=$(echo "$out" | sed -n 's/^peak RSS: //p')
    for test in "pp$pp" "tg$tg"; do
      echo "$test $(echo "$out" | tps "$test")" >> "$tmp/m.txt"
    done
    if [ -n "${LLAMA_BENCH:-}" ]; then
      refout=$("$LLAMA_BENCH" -m "$file" -p "$pp" -n "$tg" -r 1 -t "$threads" 2>/dev/null || true)
      for test in "pp$pp" "tg$tg"; do
        echo "$test $(echo "$refout" | tps "$test")" >> "$tmp/r.txt"
      done
    fi
    i=$((i + 1))
  done
  for test in "pp$pp" "tg$tg"; do
    m=$(awk -v t="$test" '$1 == t && $2 != "" { s += $2; q += $2 * $2; n++ }
      END { if (n) { mu = s / n; v = q / n - mu * mu; if (v < 0) v = 0;
                     printf "%.2f ± %.2f %.4f", mu, sqrt(v * n / (n > 1 ? n - 1 : 1)), mu } }' "$tmp/m.txt")
    ref=""
    if [ -n "${LLAMA_BENCH:-}" ]; then
      r=$(awk -v t="$test" '$1 == t && $2 != "" { s += $2; n++ } END { if (n) printf "%.2f", s / n }' "$tmp/r.txt")
      mu=${m##* }
      [ -n "$r" ] && ref=" | $r | $(awk -v a="$mu" -v b="$r" 'BEGIN { printf "%.2f", a / b }')"
    fi
    echo "| $name | $threads | $test | ${m% *} | $rss$ref |"
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
  # FULL_DIR keeps the full-size files between runs (they take minutes
  # to write); by default they go to the temporary folder.
  dir=${FULL_DIR:-$tmp}
  mkdir -p "$dir"
  avail=$(df -Pk "$dir" | awk 'NR==2 { print $4 }')
  full=$dir/qwen3-30b-a3b-asym.gguf
  q4k=$dir/qwen3-30b-a3b-q4_k_m.gguf
  if [ ! -s "$full" ] && [ "$avail" -lt 12582912 ]; then
    echo "(full-size models skipped: need 12 GiB free in $dir)"
  else
    [ -s "$full" ] || "$bin" synth --preset qwen3-30b-a3b --recipe asym-2bitexp -o "$full" >/dev/null 2>&1
    bench_rounds "$full" "${FULL_REPS:-3}"
    # Q4_K_M as moeq quantize (and llama-quantize) lays it out: Q4_K,
    # Q6_K ffn_down_exps in half the layers, the MoE bumps of attention.
    if [ "${BENCH_Q4K:-1}" != 0 ]; then
      avail=$(df -Pk "$dir" | awk 'NR==2 { print $4 }')
      if [ -s "$q4k" ] || [ "$avail" -ge 19922944 ]; then
        [ -s "$q4k" ] || "$bin" synth --preset qwen3-30b-a3b --recipe Q4_K_M -o "$q4k" >/dev/null 2>&1
        bench_rounds "$q4k" "${FULL_REPS:-3}"
      else
        echo "(full-size Q4_K_M model skipped: need 19 GiB free in $dir)"
      fi
    fi
  fi
fi
