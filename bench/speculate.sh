#!/bin/sh
# bench/speculate.sh: speculative decoding against plain decoding, on
# tiny-a (../shared) and a synth model: a code-editing request (the prompt
# is a source file and the start of the same file with a small change, as
# when an agent rewrites a file) and plain prose (wiki.test.raw). For each:
# generated tokens/s plain, with --lookup, and with -md (a 1-layer synth
# draft for the synth model), the tokens per verification step, and the
# ratio to plain, alternating runs; greedy, so the texts must be equal
# (the script checks it). Results: a Markdown table on stdout and in the
# speculate section of bench/RESULTS.md.
#
#   sh bench/speculate.sh [-t THREADS] [-n TOKENS] [-r REPS]
set -eu
bin=${MOEQ_BIN:-./moeq}
shared=${MOEQ_SHARED:-../shared}
threads=1; n=256; reps=3
while [ $# -gt 0 ]; do
  case $1 in
    -t) threads=$2; shift 2 ;;
    -n) n=$2; shift 2 ;;
    -r) reps=$2; shift 2 ;;
    *) echo "bench/speculate.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
src=src/engine/pool.c
{ printf 'Here is a C source file:\n\n'; sed -n 1,60p "$src"
  printf '\n\nThe same file with every "pool" renamed to "team":\n\n'; sed -n 1,4p "$src" | sed 's/pool/team/g'; } > "$tmp/edit.txt"
if [ -f "$shared/data/text/wiki.test.raw" ]; then head -c 3000 "$shared/data/text/wiki.test.raw" > "$tmp/prose.txt"
else sed -n 1,40p README.md > "$tmp/prose.txt"; fi

"$bin" synth -o "$tmp/synth.gguf" --layers 4 --vocab 2048 --ctx 4096 --recipe Q8_0 2>/dev/null
"$bin" synth -o "$tmp/draft.gguf" --layers 1 --vocab 2048 --ctx 4096 --recipe Q8_0 --seed 3 2>/dev/null
models="synth:$tmp/synth.gguf"
[ -f "$shared/models/tiny-a/tiny-a-q8_0.gguf" ] && models="tiny-a:$shared/models/tiny-a/tiny-a-q8_0.gguf $models"

# tokens/s of generation and the tokens per step from run's stderr
rate() { sed -n 's/^generation: .*(\([0-9.]*\) tokens\/s)/\1/p' "$1"; }
per_step() { sed -n 's/.*(\([0-9.]*\) tokens per step)/\1/p' "$1"; }

out=$tmp/table.md
{
  echo "| model | workload | mode | tokens/s | tokens/step | x plain |"
  echo "|---|---|---|---:|---:|---:|"
} > "$out"
for m in $models; do
  name=${m%%:*}; file=${m#*:}
  for w in edit prose; do
    modes="plain lookup"; [ "$name" = synth ] && modes="plain lookup draft"
    for mode in $modes; do : > "$tmp/$mode.rates"; done
    i=0
    while [ $i -lt "$reps" ]; do
      for mode in $modes; do
        case $mode in
          plain) extra= ;;
          lookup) extra=--lookup ;;
          draft) extra="-md $tmp/draft.gguf" ;;
        esac
        # shellcheck disable=SC2086
        "$bin" run -m "$file" -f "$tmp/$w.txt" -n "$n" --temp 0 -t "$threads" $extra > "$tmp/$mode.out" 2> "$tmp/$mode.err"
        rate "$tmp/$mode.err" >> "$tmp/$mode.rates"
        cmp -s "$tmp/plain.out" "$tmp/$mode.out" || { echo "bench/speculate.sh: $name $w $mode: text differs from plain" >&2; exit 1; }
      done
      i=$((i + 1))
    done
    base=$(awk '{ s += $1 } END { printf "%.1f", s / NR }' "$tmp/plain.rates")
    for mode in $modes; do
      r=$(awk '{ s += $1 } END { printf "%.1f", s / NR }' "$tmp/$mode.rates")
      ps=-; [ "$mode" != plain ] && ps=$(per_step "$tmp/$mode.err")
      echo "| $name | $w | $mode | $r | $ps | $(awk -v a="$r" -v b="$base" 'BEGIN { printf "%.2f", a / b }') |" >> "$out"
    done
  done
done
{
  echo
  echo "Greedy (--temp 0), $n tokens, $threads thread(s), mean of $reps alternating runs; every text equals plain decoding's."
  echo "Command: \`sh bench/speculate.sh -t $threads -n $n -r $reps\` ($(date -u +%Y-%m-%d))."
} >> "$out"
cat "$out"
sh "$(dirname "$0")/section.sh" speculate "$out"
