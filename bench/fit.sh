#!/bin/sh
# bench/fit.sh: moeq fit's prediction against the measured peak RSS of
# `moeq run` on the full Qwen3-30B-A3B shape in asym-2bitexp (synthesized:
# real sizes, random weights), at a 16K context with F16 KV and a 64K
# context with Q8_0 KV. Needs ~12 GB of disk in FIT_DIR (default: a
# temporary folder, removed at the end; an existing FIT_DIR/asym.gguf is
# reused).
#
#   sh bench/fit.sh [THREADS]
set -e
cd "$(dirname "$0")/.."
T=${1:-$(nproc)}
M=$PWD/moeq
keep=${FIT_DIR:+1}
D=${FIT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/moeq-fit.XXXXXX")}
[ -n "$keep" ] || trap 'rm -rf "$D"' EXIT INT TERM
mkdir -p "$D"
[ -f "$D/asym.gguf" ] || $M synth -o "$D/asym.gguf" --preset qwen3-30b-a3b --recipe asym-2bitexp -t "$T" 2> "$D/synth.log"
R=$D/fit.md
{
echo "## Memory: moeq fit against measured peak RSS (bench/fit.sh)"
echo
echo "Full Qwen3-30B-A3B shape in asym-2bitexp from \`moeq synth\` ($(wc -c < "$D/asym.gguf" | tr -d ' ') bytes)."
echo "Measured: \`/usr/bin/time -v moeq run -m asym.gguf -c CTX [-ctk/-ctv] -p <14 tokens> -n 8 --temp 0 -t $T\`."
echo "The KV cache is touched at session start, so it is resident in full; the mapped weights are resident only"
echo "as far as the run touched them (a short prompt routes to a part of the experts), so the measured RSS"
echo "stays below the prediction, which counts every weight."
echo
echo "| setting | predicted total | predicted KV | measured peak RSS | verdict for 16 GiB (1 GiB reserve) |"
echo "|---|---:|---:|---:|---|"
} > "$R"
for cfg in "16384 f16" "65536 q8_0"; do
  c=${cfg% *}; k=${cfg#* }
  /usr/bin/time -v $M run -m "$D/asym.gguf" -c "$c" -ctk "$k" -ctv "$k" -p "The harbour town woke before the sun." \
     -n 8 --temp 0 -t "$T" > "$D/run-$c.log" 2> "$D/run-$c.time"
  $M fit -m "$D/asym.gguf" -c "$c" -ctk "$k" -ctv "$k" -t "$T" --budget 16G > "$D/fit-$c.txt"
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$D/run-$c.time")
  tot=$(sed -n 's/^total *\([0-9.]*\) GiB.*/\1/p' "$D/fit-$c.txt")
  kv=$(sed -n 's/^kv cache *\([0-9.]*\) GiB.*/\1/p' "$D/fit-$c.txt")
  ver=$(sed -n 's/^verdict *//p' "$D/fit-$c.txt")
  awk -v c="$c" -v k="$k" -v t="$tot" -v kv="$kv" -v r="$rss" -v v="$ver" \
    'BEGIN { printf "| %s tokens, %s KV | %s GiB | %s GiB | %.3f GiB | %s |\n", c, k, t, kv, r / 1048576, v }' >> "$R"
done
grep '^max ctx' "$D/fit-16384.txt" | sed 's/^max ctx */\nLargest context that fits 16 GiB (predicted): /' >> "$R"
echo >> "$R"
echo "Produced by \`sh bench/fit.sh $T\` on $(date -u +%Y-%m-%d), $(nproc) cores." >> "$R"
sh bench/section.sh fit "$R"
cat "$R"
