#!/bin/sh
# bench/fullshape.sh: the whole pipeline on all 48 layers of the
# Qwen3-30B-A3B shape, measured, not extrapolated (bench/realmodel.sh
# extrapolates from a few layers): synth writes the 32 GB Q8_0 source, then
# imatrix, the allocation's measurement pass (--fit 16G -c 16384 --dry-run,
# engine-measured factors for a sample of units, saved with --sensitivity),
# the --fit file written from that measurement and checked by `moeq fit`,
# the fixed recipe asym-2bitexp, then perplexity, a short generation and one
# served chat request on the asym file. Each step's wall time, peak RSS
# and peak anonymous memory (bench/measure.sh) go to bench/out/fullshape.md and
# the "fullshape" section of bench/RESULTS.md.
#
#   sh bench/fullshape.sh [THREADS] [IMATRIX_CHUNKS]   (default: all cores, 8)
#   FROM=STEP resumes at a step (FROM=report: only the report);
#   QUANTIZE=0 writes neither quantized file
#   needs about 45 GB of disk; the source is removed at the end
set -e
cd "$(dirname "$0")/.."
T=${1:-$(nproc)}
NC=${2:-8}
LAYERS=${LAYERS:-48}   # fewer only to try the script
M=${MOEQ:-./moeq}
OUT=bench/out/fullshape
d=$OUT
mkdir -p "$OUT"
R=bench/out/fullshape.md
TXT=${TXT:-data/calibration.txt}   # any text; data/calibration.txt holds 4 chunks of 512
PORT=${PORT:-18089}
[ -x "$M" ] || { echo "bench/fullshape.sh: $M not built (run make)" >&2; exit 1; }
. bench/measure.sh
Q="--allow-requantize --ignore-imatrix-rules --imatrix $d/imatrix.gguf"
FIT="--fit 16G -c 16384"

echo "bench/fullshape.sh: $LAYERS layers of the Qwen3-30B-A3B shape, $T threads" >&2
# FROM=STEP resumes at STEP with the earlier steps' files and times kept;
# QUANTIZE=0 leaves out writing the two quantized files (half an hour to
# an hour each here) and has synth write the asym-2bitexp file for the rest
FROM=${FROM:-synth}
QUANTIZE=${QUANTIZE:-1}
on=0
want() { [ "$1" = "$FROM" ] && on=1; [ "$on" = 1 ]; }
[ "$FROM" = synth ] && : > "$OUT/times"
if want synth; then
  measure synth $M synth -o "$d/q8.gguf" --preset qwen3-30b-a3b --layers "$LAYERS" --recipe Q8_0
fi
if want imatrix; then
  measure imatrix $M imatrix -m "$d/q8.gguf" -f "$TXT" -c 512 --chunks "$NC" -t "$T" -o "$d/imatrix.gguf"
fi
if want measure; then
  rm -f "$d/sens.dat"
  measure measure $M quantize $Q $FIT --measure-kld 2 --measure-units 12 --calib "$TXT" \
      --sensitivity "$d/sens.dat" --dry-run "$d/q8.gguf" "$d/fit16.gguf" "$T"
fi
if want quantize_fit && [ "$QUANTIZE" = 1 ]; then
  measure quantize_fit $M quantize $Q $FIT --sensitivity "$d/sens.dat" "$d/q8.gguf" "$d/fit16.gguf" "$T"
fi
if want fit_fit16 && [ "$QUANTIZE" = 1 ]; then
  measure fit_fit16 sh -c "$M fit -m $d/fit16.gguf -c 16384 --budget 16G; echo exit status \$?"
fi
if want quantize_asym && [ "$QUANTIZE" = 1 ]; then
  measure quantize_asym $M quantize -q $Q --recipe asym-2bitexp "$d/q8.gguf" "$d/asym.gguf" "$T"
fi
rm -f "$d/q8.gguf" "$d/fit16.gguf"
# the rest runs the asym-2bitexp file; with QUANTIZE=0 synth writes it (the
# same tensors, types and sizes as quantize's, random weights: the same work)
if want synth_asym && [ "$QUANTIZE" = 0 ]; then
  measure synth_asym $M synth -o "$d/asym.gguf" --preset qwen3-30b-a3b --layers "$LAYERS" --recipe asym-2bitexp
fi
if want fit_asym; then
  measure fit_asym sh -c "$M fit -m $d/asym.gguf -c 16384 --budget 16G; echo exit status \$?"
fi
if want perplexity; then
  measure perplexity $M perplexity -m "$d/asym.gguf" -f "$TXT" -c 512 --chunks 2 -t "$T"
fi
if want run; then
  measure run $M run -m "$d/asym.gguf" -p "The sea" -n 32 --temp 0 -t "$T"
fi
# serve: load, /health, one chat request of 16 tokens, SIGTERM
if want serve; then
  measure serve sh -c "$M serve -m $d/asym.gguf -c 16384 --port $PORT -t $T & sp=\$!
    until curl -sf http://127.0.0.1:$PORT/health >/dev/null; do kill -0 \$sp || exit 1; sleep 1; done
    echo ready \$(date +%s.%N)
    curl -sf http://127.0.0.1:$PORT/v1/chat/completions -H 'Content-Type: application/json' \
      -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}],\"max_tokens\":16,\"temperature\":0}' || exit 1
    echo; echo answered \$(date +%s.%N)
    kill \$sp; wait \$sp || true"
fi


val() { awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$OUT/times"; }
plan() { grep -o "plan: .*" "$OUT/$1.log" | head -1; }
{
  echo "### The pipeline on all $LAYERS layers of the Qwen3-30B-A3B shape ($T threads)"
  echo
  echo "Measured on the $LAYERS-layer file, not extrapolated (\`QUANTIZE=$QUANTIZE sh bench/fullshape.sh $T $NC\`): imatrix over"
  echo "$(grep -o "chunks 0\.\.[0-9]*" "$OUT/imatrix.log" | head -1 | awk -F. '{ print $NF + 1 }') chunks of 512 tokens, the allocation's measurement with factors from 12 units over 2 chunks, then perplexity over 2"
  echo "chunks, 32 generated tokens and one served request of 16 tokens on the asym-2bitexp file (written by synth when QUANTIZE=0). Peak anon is the memory the step allocated itself"
  echo "(RssAnon sampled each second); peak RSS adds the resident pages of the mapped model."
  echo
  echo "| step | wall time | peak RSS | peak anon |"
  echo "|---|---:|---:|---:|"
  for s in synth imatrix measure quantize_fit fit_fit16 quantize_asym synth_asym fit_asym perplexity run serve; do
    [ -n "$(val $s 2)" ] || continue
    printf "| %s | %s s | %.0f MiB | %.0f MiB |\n" "$s" "$(val $s 2)" "$(val $s 3 | awk '{ print $1 / 1024 }')" \
      "$(val $s 4 | awk '{ print $1 / 1024 }')"
  done
  echo
  echo "- measurement: $(plan measure)"
  if [ -n "$(val quantize_fit 2)" ]; then
    echo "- the written --fit file: $(plan quantize_fit);"
    echo "  \`moeq fit -m fit16.gguf -c 16384 --budget 16G\`: $(tail -3 "$OUT/fit_fit16.log" | tr '\n' ' ')"
  fi
  echo "- \`moeq fit -m asym.gguf -c 16384 --budget 16G\`: $(tail -3 "$OUT/fit_asym.log" | tr '\n' ' ')"
  echo "- serve: $(awk '/^ready/ { r = $2 } /^answered/ { printf "answered %.1f s after /health", $2 - r }' "$OUT/serve.log")"
  echo
  echo "Run on $(date -u +%Y-%m-%d) with \`QUANTIZE=$QUANTIZE sh bench/fullshape.sh $T $NC\`."
} > "$R"
cat "$R"
sh bench/section.sh fullshape "$R"
