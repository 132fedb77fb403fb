#!/bin/sh
# bench/realmodel.sh: what the whole pipeline costs at the real
# Qwen3-30B-A3B shape on this machine, for the README's "Quantize
# Qwen3-30B-A3B yourself": wall time and peak RSS of synth (the Q8_0
# source), imatrix, quantize (asym-2bitexp and Q4_K_M), perplexity and a
# short generation, each measured on the full shape with L1 and L2 of its
# 48 layers and extrapolated to 48 by the straight line through the two
# (the embeddings and the output are in both, so they count once). Peak
# RSS is reported as measured at L2 and, for the steps that map the whole
# model, as the line's value at 48.
#
#   sh bench/realmodel.sh [THREADS] [L1] [L2]     (default: all cores, 2, 4)
#   results: bench/out/realmodel.md (a section for bench/RESULTS.md)
set -e
cd "$(dirname "$0")/.."
T=${1:-$(nproc)}
L1=${2:-2}
L2=${3:-4}
M=${MOEQ:-./moeq}
OUT=bench/out/realmodel
mkdir -p "$OUT"
R=bench/out/realmodel.md
TXT=data/calibration.txt
[ -x "$M" ] || { echo "bench/realmodel.sh: $M not built (run make)" >&2; exit 1; }
. bench/steps.sh

: > "$OUT/times"
for L in $L1 $L2; do
  d=$OUT/L$L
  mkdir -p "$d"
  echo "bench/realmodel.sh: $L layers of the Qwen3-30B-A3B shape" >&2
  step_synth synth_$L "$d/q8.gguf" "$L" Q8_0
  step_imatrix imatrix_$L "$d/q8.gguf" 2 "$d/imatrix.gguf"
  step_quantize quantize_asym_$L "$d/imatrix.gguf" -q --recipe asym-2bitexp "$d/q8.gguf" "$d/asym.gguf" "$T"
  step_quantize quantize_q4km_$L "$d/imatrix.gguf" -q "$d/q8.gguf" "$d/q4km.gguf" Q4_K_M "$T"
  # the allocation at the recipe's rate (--fit 16G -c 16384 gives about this at 48 layers)
  step_quantize quantize_alloc_$L "$d/imatrix.gguf" -q --target-bpw 2.99 "$d/q8.gguf" "$d/alloc.gguf" "$T"
  step_fit fit_$L "$d/asym.gguf"
  step_perplexity perplexity_$L "$d/asym.gguf"
  step_run run_$L "$d/asym.gguf"
  rm -f "$d/q8.gguf" "$d/q4km.gguf" "$d/alloc.gguf"
done

{
  echo "### The pipeline at the Qwen3-30B-A3B shape ($T threads)"
  echo
  echo "Measured on the full shape with $L1 and $L2 of the 48 layers (\`sh bench/realmodel.sh $T $L1 $L2\`),"
  echo "extrapolated to 48 layers along the line through the two; imatrix and perplexity over 2 chunks"
  echo "of 512 tokens (the time scales with the chunks: 128 chunks take 64 x as long), generation 32 tokens."
  echo
  echo "| step | $L1 layers | $L2 layers | 48 layers (extrapolated) | peak RSS at $L2 layers | peak RSS at 48 (extrapolated) |"
  echo "|---|---:|---:|---:|---:|---:|"
  for s in synth imatrix quantize_asym quantize_q4km quantize_alloc fit perplexity run; do
    t1=$(val ${s}_$L1 2); t2=$(val ${s}_$L2 2); m1=$(val ${s}_$L1 3); m2=$(val ${s}_$L2 3)
    printf "| %s | %s s | %s s | %s s | %.0f MiB | %.0f MiB |\n" "$s" "$t1" "$t2" "$(at48 "$t1" "$t2")" \
      "$(echo "$m2" | awk '{ print $1 / 1024 }')" "$(at48 "$m1" "$m2" | awk '{ print $1 / 1024 }')"
  done
} > "$R"
cat "$R"
