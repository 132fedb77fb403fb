#!/bin/sh
# bench/quality.sh: end-to-end quality of the recipe on tiny-a, moeq's files
# against the reference quantizer's, all measured here with moeq perplexity
# against the F16 model's log-probabilities (wiki.test.raw, 512-token chunks).
#
#   moeq asym (ref imatrix)   moeq quantize, the reference's imatrix.dat
#   moeq asym (moeq imatrix)  moeq imatrix over the same calibration text
#                             (128 x 512 tokens, as the reference), then quantize
#   ref asym / ref Q4_K_M     ../shared/models/tiny-a files
#
#   sh bench/quality.sh [CHUNKS] [THREADS]      (default 100 chunks)
#   QUALITY_REUSE=1 sh bench/quality.sh ...     re-tabulate the last run's outputs
set -e
cd "$(dirname "$0")/.."
N=${1:-100}
T=${2:-$(nproc)}
S=${MOEQ_SHARED:-../shared}
M=./moeq
OUT=bench/out/quality
mkdir -p "$OUT"
TXT=$S/data/text/wiki.test.raw
TA=$S/models/tiny-a
[ -f "$TA/tiny-a-f16.gguf" ] || { echo "bench/quality.sh: needs $TA" >&2; exit 1; }

if [ -z "$QUALITY_REUSE" ]; then
$M imatrix -m "$TA/tiny-a-f16.gguf" -f "$S/data/text/calibration_datav3.txt" -c 512 --chunks 128 --no-ppl \
   -o "$OUT/moeq-imatrix.dat" -t "$T" 2> "$OUT/imatrix.log"
$M quantize -q --allow-requantize --imatrix "$TA/imatrix.dat" --recipe asym-2bitexp "$TA/tiny-a-q8_0.gguf" "$OUT/moeq-asym-refim.gguf" "$T" > /dev/null 2>&1
$M quantize -q --allow-requantize --imatrix "$OUT/moeq-imatrix.dat" --recipe asym-2bitexp "$TA/tiny-a-q8_0.gguf" "$OUT/moeq-asym-moeqim.gguf" "$T" > /dev/null 2>&1
$M quantize -q --allow-requantize --imatrix "$TA/imatrix.dat" "$TA/tiny-a-q8_0.gguf" "$OUT/moeq-q4km.gguf" Q4_K_M "$T" > /dev/null 2>&1

$M perplexity -m "$TA/tiny-a-f16.gguf" -f "$TXT" -c 512 --chunks "$N" -t "$T" --kl-divergence-base "$OUT/base.kld" > "$OUT/f16.txt" 2>/dev/null
fi
get() { sed -n "s/^$2 *: *\([-0-9.]*\).*/\1/p" "$1" | head -n 1; }
ppl_f16=$(sed -n 's/^Final estimate: PPL = \([0-9.]*\).*/\1/p' "$OUT/f16.txt")
R=$OUT/quality.md
{
echo "## Quality on tiny-a (bench/quality.sh)"
echo
echo "wiki.test.raw, $N chunks of 512 tokens, second half of each scored; KLD against the F16 model."
echo "F16 perplexity: $ppl_f16."
echo
echo "| file | bytes | bits/weight | PPL | PPL / F16 | mean KLD | 99% KLD | same top |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
} > "$R"
row() {
  name=$1; f=$2; res=$OUT/$3.txt
  [ -n "$QUALITY_REUSE" ] && [ -s "$res" ] ||
    $M perplexity -m "$f" -f "$TXT" -t "$T" --kl-divergence-base "$OUT/base.kld" --kl-divergence > "$res" 2>/dev/null
  bpw=$($M info "$f" | sed -n 's/.*, \([0-9.]*\) bits per weight.*/\1/p' | tail -n 1)
  printf '| %s | %s | %s | %s | %s | %s | %s | %s%% |\n' "$name" "$(wc -c < "$f" | tr -d ' ')" "$bpw" \
    "$(get "$res" 'Mean PPL(Q)')" "$(get "$res" 'Mean PPL(Q)\/PPL(base)')" "$(get "$res" 'Mean    KLD')" \
    "$(get "$res" '99.0%   KLD')" "$(get "$res" 'Same top p')" >> "$R"
}
row "reference asym-2bitexp" "$TA/tiny-a-asym.gguf" ref-asym
row "moeq asym-2bitexp (reference imatrix)" "$OUT/moeq-asym-refim.gguf" moeq-asym-refim
row "moeq asym-2bitexp (moeq imatrix)" "$OUT/moeq-asym-moeqim.gguf" moeq-asym-moeqim
row "reference Q4_K_M" "$TA/tiny-a-q4_k_m.gguf" ref-q4km
row "moeq Q4_K_M (reference imatrix)" "$OUT/moeq-q4km.gguf" moeq-q4km
row "reference Q8_0" "$TA/tiny-a-q8_0.gguf" ref-q8
echo >> "$R"
echo "Produced by \`sh bench/quality.sh $N $T\` on $(date -u +%Y-%m-%d), $(nproc) cores." >> "$R"
sh bench/section.sh quality "$R"
cat "$R"
