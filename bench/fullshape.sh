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
#   FROM=STEP resumes at a step (FROM=report: only the report), UNTIL=STEP
#   stops after one; QUANTIZE=0 writes neither quantized file; KLD=0 skips
#   the engine-measured factors; SECTION=NAME records the report under
#   another section name, keeping an earlier run's
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
. bench/steps.sh
FIT="--fit 16G -c 16384"

echo "bench/fullshape.sh: $LAYERS layers of the Qwen3-30B-A3B shape, $T threads" >&2
# FROM=STEP resumes at STEP with the earlier steps' files and times kept;
# QUANTIZE=0 leaves out writing the two quantized files (half an hour to
# an hour each here) and has synth write the asym-2bitexp file for the rest
# UNTIL=STEP stops after STEP (keeping the source); KLD=0 measures the
# allocation without engine-measured factors (the sampled-row errors alone,
# about 24 minutes less)
FROM=${FROM:-synth}
UNTIL=${UNTIL:-}
QUANTIZE=${QUANTIZE:-1}
KLD=${KLD:-2}
SECTION=${SECTION:-fullshape}   # the section of bench/RESULTS.md (another keeps an earlier run's)
CMD="$(env | grep -E '^(FROM|UNTIL|KLD|SECTION|TXT)=' | sort | tr '\n' ' ')QUANTIZE=$QUANTIZE sh bench/fullshape.sh $T $NC"
if [ "$KLD" = 0 ]; then MKLD=; else MKLD="--measure-kld $KLD --measure-units 12 --calib $TXT"; fi
on=0
past=0
want() {
  [ "$1" = "$FROM" ] && on=1
  [ "$on" = 1 ] && [ "$past" = 0 ] || return 1
  [ "$1" = "$UNTIL" ] && past=1
  return 0
}
[ "$FROM" = synth ] && : > "$OUT/times"
if want synth; then
  step_synth synth "$d/q8.gguf" "$LAYERS" Q8_0
fi
if want imatrix; then
  step_imatrix imatrix "$d/q8.gguf" "$NC" "$d/imatrix.gguf"
fi
if want measure; then
  rm -f "$d/sens.dat"
  step_quantize measure "$d/imatrix.gguf" $FIT $MKLD \
      --sensitivity "$d/sens.dat" --dry-run "$d/q8.gguf" "$d/fit16.gguf" "$T"
fi
if want quantize_fit && [ "$QUANTIZE" = 1 ]; then
  step_quantize quantize_fit "$d/imatrix.gguf" $FIT --sensitivity "$d/sens.dat" "$d/q8.gguf" "$d/fit16.gguf" "$T"
fi
if want fit_fit16 && [ "$QUANTIZE" = 1 ]; then
  step_fit fit_fit16 "$d/fit16.gguf"
fi
if want quantize_asym && [ "$QUANTIZE" = 1 ]; then
  step_quantize quantize_asym "$d/imatrix.gguf" -q --recipe asym-2bitexp "$d/q8.gguf" "$d/asym.gguf" "$T"
fi
[ "$past" = 1 ] || rm -f "$d/q8.gguf" "$d/fit16.gguf"
# the rest runs the asym-2bitexp file; with QUANTIZE=0 synth writes it (the
# same tensors, types and sizes as quantize's, random weights: the same work)
if want synth_asym && [ "$QUANTIZE" = 0 ]; then
  step_synth synth_asym "$d/asym.gguf" "$LAYERS" asym-2bitexp
fi
if want fit_asym; then
  step_fit fit_asym "$d/asym.gguf"
fi
if want perplexity; then
  step_perplexity perplexity "$d/asym.gguf"
fi
if want run; then
  step_run run "$d/asym.gguf"
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


plan() { grep -o "plan: .*" "$OUT/$1.log" | head -1; }
{
  echo "### The pipeline on all $LAYERS layers of the Qwen3-30B-A3B shape ($T threads)"
  echo
  echo "Measured on the $LAYERS-layer file, not extrapolated (\`$CMD\`): imatrix over $(basename "$TXT"),"
  if [ "$KLD" = 0 ]; then f="sampled-row errors alone (KLD=0)"; else f="factors from 12 units over $KLD chunks"; fi
  if [ -n "$UNTIL" ]; then rest="then the steps up to $UNTIL (the table's rows)"
  else rest="then perplexity over 2 chunks, 32 generated tokens and one served request of 16 tokens on the asym-2bitexp file (written by synth when QUANTIZE=0)"; fi
  if [ -n "$(val measure 2)" ]; then m=" the allocation's measurement with $f,"; else m=; fi
  echo "$(grep -o "chunks 0\.\.[0-9]*" "$OUT/imatrix.log" | head -1 | awk -F. '{ print $NF + 1 }') chunks of 512 tokens,$m"
  echo "$rest. Peak anon is the memory the step allocated itself"
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
  [ -z "$(val measure 2)" ] || echo "- measurement: $(plan measure)"
  if [ -n "$(val quantize_fit 2)" ]; then
    echo "- the written --fit file: $(plan quantize_fit);"
    echo "  \`moeq fit -m fit16.gguf -c 16384 --budget 16G\`: $(tail -3 "$OUT/fit_fit16.log" | tr '\n' ' ')"
  fi
  [ -z "$(val fit_asym 2)" ] ||
    echo "- \`moeq fit -m asym.gguf -c 16384 --budget 16G\`: $(tail -3 "$OUT/fit_asym.log" | tr '\n' ' ')"
  [ -z "$(val serve 2)" ] ||
    echo "- serve: $(awk '/^ready/ { r = $2 } /^answered/ { printf "answered %.1f s after /health", $2 - r }' "$OUT/serve.log")"
  echo
  echo "Run on $(date -u +%Y-%m-%d) with \`$CMD\`."
} > "$R"
cat "$R"
sh bench/section.sh "$SECTION" "$R"
