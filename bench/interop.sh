#!/bin/sh
# bench/interop.sh: files cross between moeq and llama.cpp. moeq's
# asym-2bitexp and Q4_K_M files (plain, with Hessian-aware rounding from
# `imatrix --hessian`, and an importance-steered --target-size allocation)
# are run by llama-perplexity, moeq's imatrix (.dat) steers llama-quantize,
# and llama-quantize's output is run by moeq; perplexities from both engines
# on the same files (tiny-a, wiki.test.raw, 20 chunks of 512).
#
#   LLAMA_PERPLEXITY=/path/llama-perplexity LLAMA_QUANTIZE=/path/llama-quantize sh bench/interop.sh [THREADS]
set -e
cd "$(dirname "$0")/.."
T=${1:-$(nproc)}
S=${MOEQ_SHARED:-../shared}
M=./moeq
[ -x "${LLAMA_PERPLEXITY:-}" ] && [ -x "${LLAMA_QUANTIZE:-}" ] ||
  { echo "bench/interop.sh: set LLAMA_PERPLEXITY and LLAMA_QUANTIZE to reference binaries" >&2; exit 1; }
OUT=bench/out/interop
mkdir -p "$OUT"
TA=$S/models/tiny-a
TXT=$S/data/text/wiki.test.raw
$M quantize -q --allow-requantize --imatrix "$TA/imatrix.dat" --recipe asym-2bitexp "$TA/tiny-a-q8_0.gguf" "$OUT/moeq-asym.gguf" "$T" > /dev/null 2>&1
$M quantize -q --allow-requantize --imatrix "$TA/imatrix.dat" "$TA/tiny-a-q8_0.gguf" "$OUT/moeq-q4km.gguf" Q4_K_M "$T" > /dev/null 2>&1
$M imatrix -m "$TA/tiny-a-f16.gguf" -f "$S/data/text/calibration_datav3.txt" -c 512 --chunks 32 --no-ppl -o "$OUT/moeq-imatrix.dat" -t "$T" 2> /dev/null
$M imatrix -q -m "$TA/tiny-a-q8_0.gguf" -f "$S/data/text/calibration_datav3.txt" -c 512 --chunks 32 --no-ppl \
    -o "$OUT/moeq-im.gguf" --hessian "$OUT/moeq-hessian.gguf" -t "$T" 2> /dev/null
$M quantize -q --allow-requantize --imatrix "$OUT/moeq-im.gguf" --hessian "$OUT/moeq-hessian.gguf" --recipe asym-2bitexp \
    "$TA/tiny-a-q8_0.gguf" "$OUT/moeq-asym-hessian.gguf" "$T" > /dev/null 2>&1
$M quantize -q --allow-requantize --imatrix "$OUT/moeq-im.gguf" --hessian "$OUT/moeq-hessian.gguf" \
    "$TA/tiny-a-q8_0.gguf" "$OUT/moeq-q4km-hessian.gguf" Q4_K_M "$T" > /dev/null 2>&1
$M quantize -q --allow-requantize --imatrix "$TA/imatrix.dat" --target-size 13204800 \
    "$TA/tiny-a-q8_0.gguf" "$OUT/moeq-alloc.gguf" "$T" > /dev/null 2>&1
"$LLAMA_QUANTIZE" --allow-requantize --imatrix "$OUT/moeq-imatrix.dat" "$TA/tiny-a-q8_0.gguf" "$OUT/ref-q4km-moeq-imatrix.gguf" Q4_K_M "$T" > "$OUT/ref-quantize.log" 2>&1
ref_ppl() { "$LLAMA_PERPLEXITY" -m "$1" -f "$TXT" -c 512 --chunks 20 -t "$T" 2>&1 | sed -n 's/.*Final estimate: PPL.* = \([0-9.]*\) +\/- .*/\1/p'; }
our_ppl() { $M perplexity -m "$1" -f "$TXT" -c 512 --chunks 20 -t "$T" 2>/dev/null | sed -n 's/^Final estimate: PPL = \([0-9.]*\).*/\1/p'; }
R=$OUT/interop.md
{
echo "## Interoperability with llama.cpp (bench/interop.sh)"
echo
echo "Reference binaries: ik_llama.cpp (the implementation behind ../shared's numbers), CPU build."
echo "Perplexity on wiki.test.raw, 20 chunks of 512 tokens, by both engines on the same file."
echo
echo "| file | written by | llama-perplexity | moeq perplexity |"
echo "|---|---|---:|---:|"
for f in "moeq-asym.gguf:moeq quantize --recipe asym-2bitexp" "moeq-q4km.gguf:moeq quantize Q4_K_M" \
         "moeq-asym-hessian.gguf:moeq quantize --recipe asym-2bitexp --hessian" \
         "moeq-q4km-hessian.gguf:moeq quantize Q4_K_M --hessian" \
         "moeq-alloc.gguf:moeq quantize --target-size 13204800" \
         "ref-q4km-moeq-imatrix.gguf:llama-quantize Q4_K_M with moeq's imatrix .dat"; do
  file=${f%%:*}; by=${f#*:}
  echo "| $file | $by | $(ref_ppl "$OUT/$file") | $(our_ppl "$OUT/$file") |"
done
echo
echo "llama-quantize on moeq's imatrix: $(grep -m1 'loaded .* importance matrix entries' "$OUT/ref-quantize.log" | sed 's/^[^:]*: //')."
echo
echo "Produced by \`LLAMA_PERPLEXITY=... LLAMA_QUANTIZE=... sh bench/interop.sh $T\` on $(date -u +%Y-%m-%d)."
} > "$R"
sh bench/section.sh interop "$R"
cat "$R"
