#!/bin/sh
# make demo: the whole asym-2bitexp pipeline on an embedded default.
#
# Source model: ../shared/models/tiny-a (a trained qwen3moe, Q8_0) when it
# is there, else a model `moeq synth` writes (random weights: the numbers
# are then only a smoke test of the pipeline). Calibration and evaluation
# texts ship with the project (data/). Steps: imatrix -> quantize to
# asym-2bitexp and Q4_K_M -> perplexity and KL-divergence of both against
# the source -> memory fit of the full Qwen3-30B-A3B shape -> a short chat
# answer from the asym model. Everything lands in demo-out/.
set -e
M=./moeq
OUT=${DEMO_OUT:-demo-out}
SHARED=${MOEQ_SHARED:-../shared}
CTX=128
T=${DEMO_THREADS:-0}
[ "$T" -gt 0 ] 2>/dev/null || T=$(nproc 2>/dev/null || echo 2)
mkdir -p "$OUT"
start=$(date +%s)
step() { printf '\n== %s\n' "$*" >&2; }

if [ -f "$SHARED/models/tiny-a/tiny-a-q8_0.gguf" ]; then
  SRC="$SHARED/models/tiny-a/tiny-a-q8_0.gguf"
  WHAT="tiny-a (trained qwen3moe from ../shared, Q8_0 source)"
else
  step "synthesizing a tiny qwen3moe source model"
  $M synth -o "$OUT/source.gguf" --preset tiny
  SRC="$OUT/source.gguf"
  WHAT="synthesized tiny qwen3moe (random weights; ../shared absent)"
fi

step "imatrix over data/calibration.txt"
$M imatrix -m "$SRC" -f data/calibration.txt -c $CTX -t $T --no-ppl -o "$OUT/imatrix.gguf"

step "quantize: asym-2bitexp"
$M quantize -q --allow-requantize --imatrix "$OUT/imatrix.gguf" --recipe asym-2bitexp \
   "$SRC" "$OUT/model-asym.gguf" $T > "$OUT/quantize-asym.txt"
step "quantize: Q4_K_M"
$M quantize -q --allow-requantize --imatrix "$OUT/imatrix.gguf" \
   "$SRC" "$OUT/model-q4_k_m.gguf" Q4_K_M $T > "$OUT/quantize-q4_k_m.txt"

step "perplexity of the source on data/eval.txt (base log-probabilities)"
$M perplexity -m "$SRC" -f data/eval.txt -c $CTX -t $T --kl-divergence-base "$OUT/base.kld" > "$OUT/ppl-source.txt"
for q in asym q4_k_m; do
  step "perplexity and KL-divergence: $q"
  $M perplexity -m "$OUT/model-$q.gguf" -f data/eval.txt -t $T --kl-divergence-base "$OUT/base.kld" \
     --kl-divergence > "$OUT/kld-$q.txt"
done

step "memory fit of the full Qwen3-30B-A3B shape in asym-2bitexp"
$M fit --preset qwen3-30b-a3b --recipe asym-2bitexp -c 16384 --budget 16G > "$OUT/fit.txt"

step "chat with the asym model"
$M run -m "$OUT/model-asym.gguf" --chat -p "Write one sentence about the sea." -n 32 --temp 0 -t $T \
   > "$OUT/chat.txt" 2> "$OUT/chat-stderr.txt" || true

# ------------------------------------------------------------- summary
val() { sed -n "s/^$2 *: *\([-0-9.]*\).*/\1/p" "$1" | head -n 1; }
bpw() { sed -n 's/.*, \([0-9.]*\) bits per weight.*/\1/p' "$1" | tail -n 1; }
size() { wc -c < "$1" | tr -d ' '; }
ppl_src=$(sed -n 's/^Final estimate: PPL = \([0-9.]*\).*/\1/p' "$OUT/ppl-source.txt")
ppl_a=$(val "$OUT/kld-asym.txt" "Mean PPL(Q)")
ppl_q=$(val "$OUT/kld-q4_k_m.txt" "Mean PPL(Q)")
kld_a=$(val "$OUT/kld-asym.txt" "Mean    KLD")
kld_q=$(val "$OUT/kld-q4_k_m.txt" "Mean    KLD")
top_a=$(val "$OUT/kld-asym.txt" "Same top p")
top_q=$(val "$OUT/kld-q4_k_m.txt" "Same top p")

cat <<EOF

================================ moeq demo ================================
model: $WHAT

asym-2bitexp recipe, as written (group -> type -> count):
EOF
sed -n '/^group /,/^total:/p' "$OUT/quantize-asym.txt"
cat <<EOF

                      bits/weight        bytes        PPL   mean KLD  same top
  source              $(printf '%-12s %12s %10s' "-" "$(size "$SRC")" "$ppl_src")
  asym-2bitexp        $(printf '%-12s %12s %10s %10s %8s%%' "$(bpw "$OUT/quantize-asym.txt")" "$(size "$OUT/model-asym.gguf")" "$ppl_a" "$kld_a" "$top_a")
  Q4_K_M              $(printf '%-12s %12s %10s %10s %8s%%' "$(bpw "$OUT/quantize-q4_k_m.txt")" "$(size "$OUT/model-q4_k_m.gguf")" "$ppl_q" "$kld_q" "$top_q")
EOF
awk -v a="$ppl_a" -v q="$ppl_q" 'BEGIN { if (q > 0) printf "  PPL asym vs Q4_K_M: %+.2f%%  (eval text data/eval.txt, %s-token chunks)\n", 100 * (a / q - 1), '"$CTX"' }'
printf '\nmemory fit, full Qwen3-30B-A3B shape in asym-2bitexp, 16K context:\n'
sed 's/^/  /' "$OUT/fit.txt"
printf '\nchat (asym model, greedy): Write one sentence about the sea.\n  -> '
LC_ALL=C tr -c '[:print:]' ' ' < "$OUT/chat.txt"; echo
printf '\ndone in %ss; files in %s/\n' "$(( $(date +%s) - start ))" "$OUT"
