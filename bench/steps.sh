#!/bin/sh
# bench/steps.sh: the pipeline's steps as the bench scripts that cost it
# at the Qwen3-30B-A3B shape run them (bench/realmodel.sh on a few layers,
# bench/fullshape.sh on all 48), one definition each, each timed by
# bench/measure.sh. Sourced with OUT, M (the moeq binary), T (threads) and
# TXT (the calibration text) set; NAME is the row in $OUT/times.
#
#   step_synth NAME OUT.gguf LAYERS RECIPE     the synth source or file
#   step_imatrix NAME MODEL CHUNKS OUT         imatrix over TXT, chunks of 512
#                                              (CHUNKS all: the whole text)
#   step_quantize NAME IMATRIX ARGS...       quantize from a synth source
#   step_fit NAME MODEL                        moeq fit at -c 16384 on 16G
#   step_perplexity NAME MODEL                 2 chunks of 512 of TXT
#   step_run NAME MODEL                        32 greedy tokens
#   at48 V1 V2                                 the line through (L1, V1) and
#                                              (L2, V2) at 48 layers
. bench/measure.sh

step_synth() {
  measure "$1" $M synth -o "$2" --preset qwen3-30b-a3b --layers "$3" --recipe "$4"
}
step_imatrix() {
  if [ "$3" = all ]; then nc=; else nc="--chunks $3"; fi
  measure "$1" $M imatrix -m "$2" -f "$TXT" -c 512 $nc -t "$T" -o "$4"
}
# synth's router sends few tokens to its cold experts, so a short imatrix
# leaves some without data: --ignore-imatrix-rules quantizes those without
# it (the time is the same)
step_quantize() {
  n=$1; im=$2; shift 2
  measure "$n" $M quantize --allow-requantize --ignore-imatrix-rules --imatrix "$im" "$@"
}
# (the exit status goes to the log: 1 means it does not fit, not a failure)
step_fit() {
  measure "$1" sh -c "$M fit -m $2 -c 16384 --budget 16G; echo exit status \$?"
}
step_perplexity() {
  measure "$1" $M perplexity -m "$2" -f "$TXT" -c 512 --chunks 2 -t "$T"
}
step_run() {
  measure "$1" $M run -m "$2" -p "The sea" -n 32 --temp 0 -t "$T"
}
at48() {
  awk -v a="$1" -v b="$2" -v l1="$L1" -v l2="$L2" 'BEGIN { s = (b - a) / (l2 - l1); printf "%.0f", a + (48 - l1) * s }'
}
