#!/bin/sh
# bench/gptq.sh: Hessian-aware rounding against the diagonal (imatrix)
# rounding on tiny-a, per type: every weight tensor quantized to one type
# (--pure) from the F16 model, once with the imatrix alone and once with
# --hessian, both from the first half of the calibration text; the layer
# output error sum tr((W - Q) H (W - Q)^T) / tokens over all tensors is
# measured with H from the other half (held-out tokens), by moeq compare.
# Then the asym-2bitexp recipe both ways, mean KLD against F16 on
# wiki.test.raw. Results: a Markdown table on stdout and in the gptq
# section of bench/RESULTS.md.
#
#   sh bench/gptq.sh [KLD_CHUNKS] [THREADS]     (default 20 chunks, all cores)
#   GPTQ_REUSE=1 sh bench/gptq.sh ...           keep the last run's statistics
set -eu
cd "$(dirname "$0")/.."
N=${1:-20}
T=${2:-$(nproc)}
OUT=bench/out/gptq
. bench/tiny-a.sh
if [ -z "${GPTQ_REUSE:-}" ] || [ ! -f "$OUT/test-h.gguf" ]; then
"$M" imatrix -q -m "$F16" -f "$C" -c 512 --chunks 64 --no-ppl -o "$OUT/train-im.gguf" --hessian "$OUT/train-h.gguf" -t "$T"
"$M" imatrix -q -m "$F16" -f "$C" -c 512 --chunk 64 --chunks 64 --no-ppl -o "$OUT/test-im.gguf" --hessian "$OUT/test-h.gguf" -t "$T"
fi
tab=$OUT/table.md
{
  echo "| type | output error, imatrix | output error, Hessian-aware | ratio |"
  echo "|---|---:|---:|---:|"
} > "$tab"
# the row's type, and the llama.cpp mix whose --pure base type it is (the
# IQ2_S mix is IQ2_XS-based, as in llama-quantize; IQ2_M is IQ2_S-based)
for row in Q8_0:Q8_0 Q6_K:Q6_K Q5_K:Q5_K_M Q4_K:Q4_K_M Q3_K:Q3_K_M Q2_K:Q2_K IQ4_XS:IQ4_XS IQ4_NL:IQ4_NL \
           IQ3_S:IQ3_S IQ3_XXS:IQ3_XXS IQ2_S:IQ2_M IQ2_XS:IQ2_XS IQ2_XXS:IQ2_XXS; do
  ty=${row%%:*}; mix=${row#*:}
  "$M" quantize -q --pure --imatrix "$OUT/train-im.gguf" "$F16" "$OUT/diag.gguf" "$mix" "$T"
  "$M" quantize -q --pure --imatrix "$OUT/train-im.gguf" --hessian "$OUT/train-h.gguf" "$F16" "$OUT/hess.gguf" "$mix" "$T"
  "$M" compare "$F16" "$OUT/diag.gguf" "$OUT/hess.gguf" --hessian "$OUT/test-h.gguf" > "$OUT/compare-$ty.txt"
  grep -q "ffn_up_exps.weight  *$ty " "$OUT/compare-$ty.txt" ||
    { echo "bench/gptq.sh: the $mix mix did not give $ty experts" >&2; exit 1; }
  awk -v ty="$ty" '$1 == "all" { printf "| %s | %.4g | %.4g | %.3f |\n", ty, $8, $9, $10 }' "$OUT/compare-$ty.txt" >> "$tab"
done
kld_base
kld() { kld_of "$1" | awk '{ printf "%s +- %s", $1, $2 }'; }
"$M" quantize -q --allow-requantize --imatrix "$OUT/train-im.gguf" --recipe asym-2bitexp "$Q8" "$OUT/asym.gguf" "$T"
"$M" quantize -q --allow-requantize --imatrix "$OUT/train-im.gguf" --hessian "$OUT/train-h.gguf" --recipe asym-2bitexp "$Q8" "$OUT/asym-h.gguf" "$T"
{
  echo
  echo "asym-2bitexp from the Q8_0 file, mean KLD against F16 over $N chunks of wiki.test.raw:"
  echo "imatrix $(kld "$OUT/asym.gguf"), Hessian-aware $(kld "$OUT/asym-h.gguf")."
  echo
  echo "Statistics from calibration chunks 0-63, output error on chunks 64-127 (held out), 512 tokens each."
  echo "Command: \`sh bench/gptq.sh $N $T\` ($(date -u +%Y-%m-%d))."
} >> "$tab"
cat "$tab"
sh bench/section.sh gptq "$tab"
