#!/bin/sh
# bench/engine.sh: engine speed (tokens/s as llama-bench reports them) and
# peak RSS with `moeq bench`, side by side with the reference's llama-bench
# at its best settings, on the tiny models in ../shared and on the full
# qwen3-30b-a3b shape in the asym-2bitexp recipe and the Q4_K_M mix (random
# weights from `moeq synth`: real speed and memory at real scale).
#
# The tests: pp512 and tg128 from an empty cache, a 4096-token prompt
# (pp4096), and generation of 64 tokens after DEPTH tokens already in the
# cache (moeq `bench -d DEPTH`, the reference's `-gp DEPTH,64`) for each
# depth of DEPTHS; each with every KV cache type of KV_TYPES (K and V both).
# The reference runs twice per round, with its defaults (which in
# ik_llama.cpp are flash attention and fused MoE on) and with run-time
# repacking (-rtr 1); the faster of the two means is the reference a
# ratio is taken against. Every test is ROUNDS rounds of one moeq run,
# then one run of each reference setting, so that a slow spell of this
# shared machine hits all of them alike; mean ± standard deviation over the
# rounds, ratio = moeq mean / best reference mean.
# Results go to stdout as Markdown rows, for the engine section of
# bench/RESULTS.md.
#
#   sh bench/engine.sh [-t THREADS] [-r ROUNDS]
#
# Environment:
#   MOEQ_BIN     the moeq binary (default ./moeq)
#   MOEQ_SHARED  the shared data folder (default ../shared)
#   LLAMA_BENCH  the reference llama-bench binary: when set, it runs on the
#                same files with the same threads
#   DEPTHS       cache depths for generation (default "4096 16384"; "" none)
#   KV_TYPES     KV cache types (default "f16 q8_0")
#   TESTS        which of pp512 tg128 pp4096 gen to run (default all)
#   NO_WARMUP    1: no untimed warm-up run before each test (moeq
#                --no-warmup, the reference -w 0), for the long tests at
#                full size; the files are read into the page cache first
#   TINY         0 skips the tiny models
#   BENCH_FULL   0 skips the full-size models (~11 and ~18 GiB of disk,
#                written to a temporary folder and deleted afterwards)
#   FULL_DIR     keep the full-size files in this folder and reuse them
#   BENCH_Q4K    0 skips the full-size Q4_K_M model
set -eu
bin=${MOEQ_BIN:-./moeq}
shared=${MOEQ_SHARED:-../shared}
threads=$(nproc)
rounds=3
depths=${DEPTHS-4096 16384}
kvs=${KV_TYPES:-f16 q8_0}
tests=${TESTS:-pp512 tg128 pp4096 gen}
mwarm=; rwarm=
[ "${NO_WARMUP:-0}" = 1 ] && { mwarm=--no-warmup; rwarm="-w 0"; }
while [ $# -gt 0 ]; do
  case $1 in
    -t) threads=$2; shift 2 ;;
    -r) rounds=$2; shift 2 ;;
    *) echo "bench/engine.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "bench/engine.sh: $bin not built (run make)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/moeq-engine-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# The mean of a llama-bench / moeq bench row "| ... | TEST | 123.45 ± 1.23 |".
tps() { sed -n "s/.*| *$1 *| *\([0-9.]*\) ± .*/\1/p" | head -n 1; }

# Read a file so that the engine about to run starts from the page cache.
# Before every run, not once per file: the reference's -rtr 1 holds a
# repacked copy of the weights in its own memory, which on a machine with
# little more RAM than two copies pushes the file out of the page cache,
# and the run after it would then read from disk (seen at full size with
# 24 GiB: moeq tg128 with a Q8_0 cache read 4.84 ± 1.17 t/s at a peak RSS
# of 5.5 GiB, against 7.25 ± 0.20 t/s and 7.8 GiB with F16 just before).
warm_file() { cat "$1" > /dev/null 2>&1 || true; }

# mean ± sd of the numbers in a file, then the bare mean
stats() {
  awk '$1 != "" { s += $1; q += $1 * $1; n++ }
    END { if (n) { mu = s / n; v = q / n - mu * mu; if (v < 0) v = 0;
                   printf "%.2f ± %.2f %.4f", mu, sqrt(v * n / (n > 1 ? n - 1 : 1)), mu } }' "$1"
}

# one_test FILE KV LABEL "MOEQ ARGS" "MOEQ TEST" "REF ARGS" "REF TEST"
one_test() {
  file=$1 kv=$2 label=$3 margs=$4 mtest=$5 rargs=$6 rtest=$7
  name=$(basename "$file")
  : > "$tmp/m"; : > "$tmp/r0"; : > "$tmp/r1"
  i=0 rss=""
  while [ "$i" -lt "$rounds" ]; do
    warm_file "$file"
    # shellcheck disable=SC2086
    out=$("$bin" bench -m "$file" $margs $mwarm -ctk "$kv" -ctv "$kv" -r 1 -t "$threads" 2>&1) || {
      echo "| $name | $kv | $label | failed: $(echo "$out" | tail -n 1) |"; return; }
    rss=$(echo "$out" | sed -n 's/^peak RSS: //p')
    echo "$out" | tps "$mtest" >> "$tmp/m"
    if [ -n "${LLAMA_BENCH:-}" ]; then
      for rtr in 0 1; do
        warm_file "$file"
        # shellcheck disable=SC2086
        "$LLAMA_BENCH" -m "$file" $rargs $rwarm -ctk "$kv" -ctv "$kv" -rtr "$rtr" -r 1 -t "$threads" 2>/dev/null |
          tps "$rtest" >> "$tmp/r$rtr" || true
      done
    fi
    i=$((i + 1))
  done
  m=$(stats "$tmp/m")
  if [ -z "${LLAMA_BENCH:-}" ]; then
    echo "| $name | $kv | $label | ${m% *} | $rss |"
    return
  fi
  r0=$(stats "$tmp/r0"); r1=$(stats "$tmp/r1")
  best=$(awk -v a="${r0##* }" -v b="${r1##* }" 'BEGIN { printf "%s", (b + 0 > a + 0) ? b : a }')
  which=$(awk -v a="${r0##* }" -v b="${r1##* }" 'BEGIN { print (b + 0 > a + 0) ? "-rtr 1" : "default" }')
  ratio=$(awk -v a="${m##* }" -v b="$best" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
  echo "| $name | $kv | $label | ${m% *} | $rss | ${r0% *} | ${r1% *} | $which | $ratio |"
}

bench_file() {
  f=$1
  for kv in $kvs; do
    for t in $tests; do
      case $t in
        pp512) one_test "$f" "$kv" pp512 "-p 512 -n 0" pp512 "-p 512 -n 0" pp512 ;;
        tg128) one_test "$f" "$kv" tg128 "-p 0 -n 128" tg128 "-p 0 -n 128" tg128 ;;
        pp4096) one_test "$f" "$kv" pp4096 "-p 4096 -n 0" pp4096 "-p 4096 -n 0" pp4096 ;;
        gen)
          for d in $depths; do
            one_test "$f" "$kv" "tg64 @ d$d" "-p 0 -n 64 -d $d" "tg64 @ d$d" "-p 0 -n 0 -gp $d,64" "tg64@pp$d"
          done ;;
      esac
    done
  done
}

echo "moeq $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, $threads threads, $rounds rounds, $(date -u +%Y-%m-%d)"
echo
if [ -n "${LLAMA_BENCH:-}" ]; then
  echo "| model | KV | test | moeq t/s | peak RSS | reference default | reference -rtr 1 | best | ratio |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
else
  echo "| model | KV | test | moeq t/s | peak RSS |"
  echo "| --- | --- | ---: | ---: | ---: |"
fi
if [ "${TINY:-1}" != 0 ]; then
  for f in tiny-a-asym tiny-a-q4_k_m; do
    p=$shared/models/tiny-a/$f.gguf
    [ -r "$p" ] && bench_file "$p"
  done
fi
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
    bench_file "$full"
    # Q4_K_M as moeq quantize (and llama-quantize) lays it out: Q4_K,
    # Q6_K ffn_down_exps in half the layers, the MoE bumps of attention.
    if [ "${BENCH_Q4K:-1}" != 0 ]; then
      avail=$(df -Pk "$dir" | awk 'NR==2 { print $4 }')
      if [ -s "$q4k" ] || [ "$avail" -ge 19922944 ]; then
        [ -s "$q4k" ] || "$bin" synth --preset qwen3-30b-a3b --recipe Q4_K_M -o "$q4k" >/dev/null 2>&1
        bench_file "$q4k"
      else
        echo "(full-size Q4_K_M model skipped: need 19 GiB free in $dir)"
      fi
    fi
  fi
fi
