#!/bin/sh
# bench/measurecost.sh: what the allocation's measurement pass costs beside
# `moeq imatrix` over the same text, at the Qwen3-30B-A3B shape (issue 13's
# "at most 1.5 x the time of imatrix, at most 2 GB beyond the mapped
# model"). Both run on the full shape with L1 and L2 of its 48 layers and
# are extrapolated to 48 along the line through the two, as
# bench/realmodel.sh does: imatrix over the first NC chunks of the text (a
# 128-chunk calibration by default, as llama.cpp users run it), then the
# measurement (sampled-row errors of every unit at every candidate type,
# engine-measured KL-divergence factors for 12 units over 2 chunks of the
# same text, saved with --sensitivity, --dry-run) at --target-bpw 2.99 (the
# budget only steers the solver, which runs after the measurement and takes
# well under a second). The measurement's work is fixed (2 chunks, 12
# units, 1024 sampled rows per unit) where imatrix's grows with the text.
#
#   sh bench/measurecost.sh [THREADS] [L1] [L2] [NC]   (default: all cores, 2, 4, 128)
#   TXT=FILE: the text (default ../shared's calibration_datav3.txt, else
#   data/calibration.txt); results: bench/out/measurecost.md and the
#   "measurecost" section of bench/RESULTS.md
set -e
cd "$(dirname "$0")/.."
T=${1:-$(nproc)}
L1=${2:-2}
L2=${3:-4}
NC=${4:-128}
M=${MOEQ:-./moeq}
OUT=bench/out/measurecost
mkdir -p "$OUT"
R=bench/out/measurecost.md
if [ -z "$TXT" ]; then
  TXT=../shared/data/text/calibration_datav3.txt
  [ -f "$TXT" ] || TXT=data/calibration.txt
fi
[ -x "$M" ] || { echo "bench/measurecost.sh: $M not built (run make)" >&2; exit 1; }
. bench/steps.sh

: > "$OUT/times"
for L in $L1 $L2; do
  d=$OUT/L$L
  mkdir -p "$d"
  echo "bench/measurecost.sh: $L layers of the Qwen3-30B-A3B shape, $T threads, text $TXT" >&2
  step_synth synth_$L "$d/q8.gguf" "$L" Q8_0
  step_imatrix imatrix_$L "$d/q8.gguf" "$NC" "$d/imatrix.gguf"
  rm -f "$d/sens.dat"
  step_quantize measure_$L "$d/imatrix.gguf" --target-bpw 2.99 --measure-kld 2 --measure-units 12 \
      --calib "$TXT" --sensitivity "$d/sens.dat" --dry-run "$d/q8.gguf" "$d/plan.gguf" "$T"
  rm -f "$d/q8.gguf"
done

mib() { awk '{ printf "%.0f", $1 / 1024 }'; }
chunks=$(grep -o "chunks 0\.\.[0-9]*" "$OUT/imatrix_$L1.log" | head -1 | awk -F. '{ print $NF + 1 }')
i1=$(val imatrix_$L1 2); i2=$(val imatrix_$L2 2); m1=$(val measure_$L1 2); m2=$(val measure_$L2 2)
i48=$(at48 "$i1" "$i2"); m48=$(at48 "$m1" "$m2")
a1=$(val measure_$L1 4); a2=$(val measure_$L2 4)
{
  echo "### The allocation's measurement beside imatrix over the same text ($T threads)"
  echo
  echo "Measured on the Qwen3-30B-A3B shape with $L1 and $L2 of the 48 layers and extrapolated to 48 along the"
  echo "line through the two (\`sh bench/measurecost.sh $T $L1 $L2 $NC\`): imatrix over $chunks chunks of 512 tokens of"
  echo "$(basename "$TXT"); the measurement over the same text (its KL-divergence factors use 2 of those chunks"
  echo "and 12 units, its errors 1024 sampled rows per unit: fixed work, where imatrix's grows with the text)."
  echo "Peak anon is what the step allocated itself, beyond the mapped model."
  echo
  echo "| step | $L1 layers | $L2 layers | 48 layers (extrapolated) | peak anon at $L2 layers | peak anon at 48 (extrapolated) |"
  echo "|---|---:|---:|---:|---:|---:|"
  for s in imatrix measure; do
    t1=$(val ${s}_$L1 2); t2=$(val ${s}_$L2 2); p1=$(val ${s}_$L1 4); p2=$(val ${s}_$L2 4)
    printf "| %s | %s s | %s s | %s s | %s MiB | %s MiB |\n" "$s" "$t1" "$t2" "$(at48 "$t1" "$t2")" \
      "$(echo "$p2" | mib)" "$(at48 "$p1" "$p2" | mib)"
  done
  echo
  echo "- measurement / imatrix at 48 layers: $(awk -v m="$m48" -v i="$i48" 'BEGIN { printf "%.2f", m / i }')x"
  echo "  (at $L1 layers $(awk -v m="$m1" -v i="$i1" 'BEGIN { printf "%.2f", m / i }')x, at $L2 layers $(awk -v m="$m2" -v i="$i2" 'BEGIN { printf "%.2f", m / i }')x)"
  echo "- the measurement's peak anon at 48 layers: $(at48 "$a1" "$a2" | mib) MiB (extrapolated)"
  echo
  echo "Run on $(date -u +%Y-%m-%d) with \`sh bench/measurecost.sh $T $L1 $L2 $NC\`."
} > "$R"
cat "$R"
sh bench/section.sh measurecost "$R"
