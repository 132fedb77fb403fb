#!/bin/sh
# bench/quantize.sh: quantization quality and speed, moeq against the
# reference quantizer.
#
# Quality, per type: ../shared/testvectors/dequant/TYPE.gguf holds two
# tiny-a tensors as the reference quantized them with tiny-a's imatrix;
# moeq quantizes the same tensors from the F16 model with the same imatrix,
# and `moeq compare` reports both errors against the F16 weights (B/A < 1:
# moeq is better). Whole files: moeq's asym-2bitexp and Q4_K_M from the
# Q8_0 source against the reference's files, same imatrix.
# Speed: wall time of the whole-model asym-2bitexp quantization of tiny-a
# and of a synthesized model; with LLAMA_QUANTIZE=/path/to/llama-quantize the
# reference on the same input and threads, and the ratio; and the
# one-thread encode speed of each quantizer (moeq kbench --quantize).
#
#   sh bench/quantize.sh [THREADS]     (results: a section of bench/RESULTS.md)
set -e
cd "$(dirname "$0")/.."
T=${1:-$(nproc)}
S=${MOEQ_SHARED:-../shared}
M=./moeq
OUT=bench/out/quantize
mkdir -p "$OUT"
R=bench/out/quantize.md
IM=$S/models/tiny-a/imatrix.dat
F16=$S/models/tiny-a/tiny-a-f16.gguf
Q8=$S/models/tiny-a/tiny-a-q8_0.gguf
[ -f "$F16" ] || { echo "bench/quantize.sh: needs $S/models/tiny-a" >&2; exit 1; }
now() { date +%s.%N; }

{
echo "### Quantization quality per type (tiny-a blk.0.attn_q + blk.1.attn_output, tiny-a imatrix)"
echo
echo "Imatrix-weighted RMSE against the F16 weights; ratio = moeq / reference (< 1: moeq lower)."
echo "moeq's default rescales i-quant and Q4_K blocks to be unbiased (lower KL divergence"
echo "of the model, see bench/quality.sh); \`--min-error\` stops at the least weighted error."
echo
echo "| type | reference wRMSE | moeq wRMSE | ratio | moeq --min-error wRMSE | ratio | reference RMSE | moeq RMSE | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$R"
for t in Q4_0 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ4_NL IQ4_XS; do
  $M quantize -q --imatrix "$IM" --tensor-type 'blk\.0\.attn_q\.|blk\.1\.attn_output\.='"$t" \
     "$F16" "$OUT/$t.gguf" F16 "$T" > /dev/null 2>&1
  $M quantize -q --min-error --imatrix "$IM" --tensor-type 'blk\.0\.attn_q\.|blk\.1\.attn_output\.='"$t" \
     "$F16" "$OUT/$t-me.gguf" F16 "$T" > /dev/null 2>&1
  $M compare "$F16" "$S/testvectors/dequant/$t.gguf" "$OUT/$t.gguf" --imatrix "$IM" > "$OUT/$t.txt"
  $M compare "$F16" "$S/testvectors/dequant/$t.gguf" "$OUT/$t-me.gguf" --imatrix "$IM" > "$OUT/$t-me.txt"
  me=$(awk '$1 == "all" { printf "%.4e | %.4f", $5, $7 }' "$OUT/$t-me.txt")
  awk -v t="$t" -v me="$me" '$1 == "all" { printf "| %s | %.4e | %.4e | %.4f | %s | %.4e | %.4e | %.4f |\n", t, $4, $5, $7, me, $2, $3, $6 }' \
     "$OUT/$t.txt" >> "$R"
done

{
echo
echo "### Whole files against the reference's (tiny-a, from the Q8_0 source, tiny-a imatrix)"
echo
echo "| recipe | reference bytes | moeq bytes | reference wRMSE | moeq wRMSE | ratio |"
echo "|---|---:|---:|---:|---:|---:|"
} >> "$R"
t0=$(now)
$M quantize -q --allow-requantize --imatrix "$IM" --recipe asym-2bitexp "$Q8" "$OUT/asym.gguf" "$T" > /dev/null 2>&1
t1=$(now)
$M quantize -q --allow-requantize --imatrix "$IM" "$Q8" "$OUT/q4km.gguf" Q4_K_M "$T" > /dev/null 2>&1
t2=$(now)
for pair in "asym-2bitexp:tiny-a-asym.gguf:asym.gguf" "Q4_K_M:tiny-a-q4_k_m.gguf:q4km.gguf"; do
  name=${pair%%:*}; rest=${pair#*:}; ref=${rest%%:*}; ours=${rest#*:}
  $M compare "$F16" "$S/models/tiny-a/$ref" "$OUT/$ours" --imatrix "$IM" > "$OUT/$ours.txt"
  rb=$(wc -c < "$S/models/tiny-a/$ref"); ob=$(wc -c < "$OUT/$ours")
  awk -v n="$name" -v rb="$rb" -v ob="$ob" '$1 == "all" { printf "| %s | %d | %d | %.4e | %.4e | %.4f |\n", n, rb, ob, $4, $5, $7 }' \
     "$OUT/$ours.txt" >> "$R"
done

{
echo
echo "### Quantization speed ($T threads, wall time)"
echo
echo "| input | moeq | reference | moeq speed / reference |"
echo "|---|---:|---:|---:|"
} >> "$R"
ta=$(echo "$t1 - $t0" | bc); tq=$(echo "$t2 - $t1" | bc)
ref_a="-"; ref_q="-"; ratio_a="-"; ratio_q="-"
if [ -n "$LLAMA_QUANTIZE" ] && [ -x "$LLAMA_QUANTIZE" ]; then
  cf="--custom-q ffn_gate_exps=iq2_s,ffn_up_exps=iq2_s,ffn_down_exps=iq3_s,attn_q=q4_K,attn_k=q4_K,attn_v=q4_K,attn_output=q4_K"
  r0=$(now)
  "$LLAMA_QUANTIZE" --allow-requantize --imatrix "$IM" $cf --token-embedding-type q6_K --output-tensor-type q6_K \
      "$Q8" "$OUT/ref-asym.gguf" IQ3_S "$T" > "$OUT/ref-asym.log" 2>&1
  r1=$(now)
  "$LLAMA_QUANTIZE" --allow-requantize --imatrix "$IM" "$Q8" "$OUT/ref-q4km.gguf" Q4_K_M "$T" > "$OUT/ref-q4km.log" 2>&1
  r2=$(now)
  ref_a=$(printf '%.2f s' "$(echo "$r1 - $r0" | bc)"); ref_q=$(printf '%.2f s' "$(echo "$r2 - $r1" | bc)")
  ratio_a=$(awk -v r="$r1" -v s="$r0" -v t="$ta" 'BEGIN { printf "%.2f", (r - s) / t }')
  ratio_q=$(awk -v r="$r2" -v s="$r1" -v t="$tq" 'BEGIN { printf "%.2f", (r - s) / t }')
fi
printf '| tiny-a Q8_0 -> asym-2bitexp | %.2f s | %s | %s |\n' "$ta" "$ref_a" "$ratio_a" >> "$R"
printf '| tiny-a Q8_0 -> Q4_K_M | %.2f s | %s | %s |\n' "$tq" "$ref_q" "$ratio_q" >> "$R"

# a synthesized model of a bigger shape (F32 source, 4 layers of 2048 x 768 x 32 experts)
$M synth -o "$OUT/synth-src.gguf" --layers 4 --n-embd 2048 --heads 16 --kv-heads 4 --head-dim 128 \
   --experts 32 --experts-used 4 --ff-exp 768 --vocab 4096 > /dev/null 2>&1
$M imatrix -m "$OUT/synth-src.gguf" -f "$S/data/text/calibration_datav3.txt" -c 512 --chunks 16 --no-ppl -o "$OUT/synth-im.gguf" -t "$T" > /dev/null 2>&1
s0=$(now)
# the synthetic router keeps some experts cold: tensors whose experts were
# never routed are dropped from the imatrix (llama-imatrix's rule), so allow
# those to be quantized without importance data
$M quantize -q --ignore-imatrix-rules --imatrix "$OUT/synth-im.gguf" --recipe asym-2bitexp "$OUT/synth-src.gguf" "$OUT/synth-asym.gguf" "$T" > /dev/null 2>&1
s1=$(now)
ts=$(echo "$s1 - $s0" | bc)
nw=$($M info "$OUT/synth-src.gguf" | sed -n 's/.*, \([0-9]*\) parameters.*/\1/p' | tail -n 1)
printf '| synth 4x2048x768x32 F32 (%s weights) -> asym-2bitexp | %.2f s | - | - |\n' "$nw" "$ts" >> "$R"
echo >> "$R"

# one-thread encode speed of each quantizer (was a test; a speed is a bench number)
{
echo "### Quantizer speed, one thread (\`moeq kbench --quantize\`)"
echo
echo "| type | M weights/s |"
echo "|---|---:|"
$M kbench --quantize --types Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,IQ2_XXS,IQ2_XS,IQ2_S,IQ3_XXS,IQ3_S,IQ4_NL,IQ4_XS |
  awk '$3 == "M" { printf "| %s | %s |\n", $1, $2 }'
} >> "$R"
echo >> "$R"
echo "Produced by \`sh bench/quantize.sh $T\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'))." >> "$R"
{ echo "## Quantization (bench/quantize.sh)"; echo; cat "$R"; } > "$R.section"
sh bench/section.sh quantize "$R.section"
cat "$R"
