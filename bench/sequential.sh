#!/bin/sh
# bench/sequential.sh: Hessian-aware rounding on tiny-a with the statistics
# of each weight taken from the model with every weight before it already
# quantized (`quantize --calibration-text`, one run, GPTQ's order), against
# the same rounding with statistics from the unquantized model (`imatrix
# --hessian` then `quantize --hessian`) and against the diagonal (imatrix)
# rounding alone: asym-2bitexp and Q4_K_M from the Q8_0 file, the
# reference's imatrix.dat steering every block, statistics over the same
# 128 chunks of 512 tokens of the calibration text; mean KLD against F16
# over N chunks of wiki.test.raw, with issue 17's targets beside them.
# Results: a Markdown table on stdout and in the "sequential" section of
# bench/RESULTS.md.
#
#   sh bench/sequential.sh [KLD_CHUNKS] [THREADS]   (default 100 chunks, all cores)
set -eu
cd "$(dirname "$0")/.."
N=${1:-100}
T=${2:-$(nproc)}
OUT=bench/out/sequential
. bench/tiny-a.sh
IM=$TA/imatrix.dat
[ -x /usr/bin/time ] || { echo "bench/sequential.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
st=$(date +%s)
"$M" imatrix -q -m "$Q8" -f "$C" -c 512 --chunks 128 --no-ppl --process-output -o "$OUT/im.gguf" --hessian "$OUT/hessian.gguf" -t "$T"
imatrix_s=$(( $(date +%s) - st ))
kld_base
tab=$OUT/table.md
{
  echo "| mix | rounding | bytes | mean KLD | quantize time | target |"
  echo "|---|---|---:|---:|---:|---|"
} > "$tab"
# one MIX ROUNDING TARGET TYPE ARGS...: quantize (TYPE the positional mix,
# or empty with a --recipe in ARGS), time, KLD, one table row
one() {
  mix=$1; how=$2; target=$3; ty=$4; shift 4
  f=$OUT/$(echo "$mix-$how" | tr -c 'A-Za-z0-9_\n-' _).gguf
  /usr/bin/time -f %e -o "$OUT/t.tmp" "$M" quantize -q --allow-requantize --imatrix "$IM" "$@" "$Q8" "$f" $ty "$T"
  set -- $(kld_of "$f")
  printf "| %s | %s | %s | %s +- %s | %s s | %s |\n" "$mix" "$how" "$(wc -c < "$f" | tr -d ' ')" "$1" "$2" \
    "$(cat "$OUT/t.tmp")" "$target" >> "$tab"
  echo "  $mix $how: KLD $1" >&2
}
A="<= 0.00461 (0.75 x the reference's 0.006140)"
B="<= 0.002097 (0.8 x the reference's 0.002621)"
one asym-2bitexp diagonal "" "" --recipe asym-2bitexp
one asym-2bitexp "H from the unquantized model" "" "" --recipe asym-2bitexp --hessian "$OUT/hessian.gguf"
one asym-2bitexp "H layer by layer" "$A" "" --recipe asym-2bitexp --calibration-text "$C" --calibration-chunks 128
one Q4_K_M diagonal "" Q4_K_M
one Q4_K_M "H from the unquantized model" "" Q4_K_M --hessian "$OUT/hessian.gguf"
one Q4_K_M "H layer by layer" "$B" Q4_K_M --calibration-text "$C" --calibration-chunks 128
{
  echo
  echo "tiny-a from its Q8_0 file, the reference's imatrix.dat steering every block; statistics (imatrix --hessian,"
  echo "$imatrix_s s, and quantize --calibration-text) over the same 128 chunks of 512 tokens of calibration_datav3.txt;"
  echo "mean KLD against F16 over $N chunks of wiki.test.raw; quantize time on $T threads includes the layer-by-layer passes."
  echo "Command: \`sh bench/sequential.sh $N $T\` ($(date -u +%Y-%m-%d))."
} >> "$tab"
cat "$tab"
sh bench/section.sh sequential "$tab"
