#!/bin/sh
# bench/pareto.sh: mean KLD against bits per weight on tiny-a, the
# importance-steered allocation (quantize --target-size, measured
# sensitivity factors) at seven budgets, with and without Hessian-aware
# rounding (--hessian), against the fixed mixes IQ2_M (IQ2_S-based), IQ3_S,
# asym-2bitexp, Q4_K_M, Q5_K_M and Q6_K by moeq and the same mixes by the
# reference quantizer: its asym-2bitexp and Q4_K_M are ../shared's files,
# and with LLAMA_QUANTIZE naming a reference llama-quantize binary it makes
# IQ2_M (attn_v held at Q4_K), IQ3_S, Q5_K_M and Q6_K itself (else they
# are skipped, said in one line). All from the Q8_0 file with the reference
# imatrix; KLD against F16 on wiki.test.raw. Results: a Markdown table in
# the pareto section of bench/RESULTS.md, with each reference mix checked
# against the allocated files of equal or smaller size, and the plot
# bench/pareto.svg.
#
#   [LLAMA_QUANTIZE=/path/llama-quantize] sh bench/pareto.sh [CHUNKS] [THREADS]
#                                              (default 100 chunks, all cores)
set -eu
cd "$(dirname "$0")/.."
N=${1:-100}
T=${2:-$(nproc)}
OUT=bench/out/pareto
. bench/tiny-a.sh
IM=$TA/imatrix.dat
[ -f "$OUT/hessian.gguf" ] || "$M" imatrix -q -m "$Q8" -f "$C" -c 512 --chunks 128 --no-ppl --process-output -o "$OUT/im.gguf" --hessian "$OUT/hessian.gguf" -t "$T"
kld_base
pts=$OUT/points.tsv
: > "$pts"
# point SERIES LABEL FILE: bits per weight and mean KLD of FILE
point() {
  bpw=$("$M" info "$3" | sed -n 's/.*, \([0-9.]*\) bits per weight.*/\1/p' | tail -n 1)
  kld=$(kld_of "$3" | awk '{ print $1 }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(wc -c < "$3" | tr -d ' ')" "$bpw" "$kld" >> "$pts"
  echo "  $1 $2: $bpw bpw, KLD $kld" >&2
}
for mix in IQ2_M IQ3_S Q4_K_M Q5_K_M Q6_K; do
  "$M" quantize -q --allow-requantize --imatrix "$IM" "$Q8" "$OUT/$mix.gguf" "$mix" "$T"
  point "moeq fixed" "$mix" "$OUT/$mix.gguf"
done
"$M" quantize -q --allow-requantize --imatrix "$IM" --recipe asym-2bitexp "$Q8" "$OUT/asym.gguf" "$T"
point "moeq fixed" asym-2bitexp "$OUT/asym.gguf"
point "reference fixed" asym-2bitexp "$TA/tiny-a-asym.gguf"
point "reference fixed" Q4_K_M "$TA/tiny-a-q4_k_m.gguf"
LQ=${LLAMA_QUANTIZE:-}
[ -x "$LQ" ] || LQ=
if [ -n "$LQ" ]; then
  for mix in IQ2_M IQ3_S Q5_K_M Q6_K; do
    # ik_llama.cpp's IQ2_M gives attn_v its own IQ4_K, which moeq does not read: Q4_K as mainline's and moeq's
    cq=; [ "$mix" = IQ2_M ] && cq="--custom-q attn_v=q4_K"
    "$LQ" --allow-requantize --imatrix "$IM" $cq "$Q8" "$OUT/ref-$mix.gguf" "$mix" "$T" > "$OUT/ref-$mix.log" 2>&1 ||
      { echo "$0: $LQ failed on $mix, see $OUT/ref-$mix.log" >&2; exit 1; }
    point "reference fixed" "$mix" "$OUT/ref-$mix.gguf"
  done
else
  echo "$0: LLAMA_QUANTIZE unset (or not executable): the reference's IQ2_M, IQ3_S, Q5_K_M and Q6_K skipped" >&2
fi
sens=$OUT/tiny-a.sens
for size in 10500000 13204800 15000000 17000000 19021120 23000000 27000000; do
  "$M" quantize -q --allow-requantize --imatrix "$IM" --target-size "$size" --measure-kld 4 --calib "$C" \
      --sensitivity "$sens" "$Q8" "$OUT/alloc-$size.gguf" "$T"
  point "moeq allocated" "$size" "$OUT/alloc-$size.gguf"
  "$M" quantize -q --allow-requantize --imatrix "$IM" --hessian "$OUT/hessian.gguf" --target-size "$size" \
      --sensitivity "$sens" "$Q8" "$OUT/allocg-$size.gguf" "$T"
  point "moeq allocated + Hessian" "$size" "$OUT/allocg-$size.gguf"
done
tab=$OUT/pareto.md
{
  echo "| series | file | bytes | bits/weight | mean KLD |"
  echo "|---|---|---:|---:|---:|"
  sort -t "$(printf '\t')" -k4,4n "$pts" | awk -F '\t' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }'
  echo
  echo "tiny-a, Q8_0 source, the reference imatrix; mean KLD against F16 over $N chunks of 512 tokens of wiki.test.raw."
  echo "Allocated files: the size in the file column is the --target-size budget (whole file). Plot: bench/pareto.svg."
  echo "Reference fixed: asym-2bitexp and Q4_K_M are ../shared's files; the others, if listed, by \`\$LLAMA_QUANTIZE\` from the same source and imatrix (IQ2_M with \`--custom-q attn_v=q4_K\`: ik_llama.cpp's own mix puts attn_v in its IQ4_K, 4.5 bits as Q4_K, which moeq does not read)."
  echo
  echo "Each reference mix against moeq's own file of the same mix, then against the largest allocated file of equal or smaller size (bytes), per series; \"dominated\": that file's KLD is lower."
  echo
  awk -F '\t' '
    $1 == "reference fixed" { r[++nr] = $0 }
    $1 ~ /^moeq allocated/ { a[++na] = $0 }
    $1 == "moeq fixed" { f[$2] = $5 }
    END {
      for (i = 1; i <= nr; i++) {
        split(r[i], R, "\t")
        line = sprintf("- reference %s (%s bytes, KLD %s):", R[2], R[3], R[5])
        if (R[2] in f) line = line sprintf(" moeq fixed %s, KLD %s (%s, moeq/reference %.3f);", R[2], f[R[2]], f[R[2]] + 0 < R[5] + 0 ? "lower" : "NOT lower", f[R[2]] / R[5])
        for (s = 0; s < 2; s++) {
          ser = s ? "moeq allocated + Hessian" : "moeq allocated"
          bb = -1
          for (j = 1; j <= na; j++) {
            split(a[j], A, "\t")
            if (A[1] == ser && A[3] + 0 <= R[3] + 0 && A[3] + 0 > bb) { bb = A[3] + 0; bk = A[5] }
          }
          if (bb < 0) txt = "no file of equal or smaller size"
          else txt = sprintf("%d bytes, KLD %s, %s (reference/allocated KLD %.2f)", bb, bk, bk + 0 < R[5] + 0 ? "dominated" : "NOT dominated", (R[5] + 0) / bk)
          line = line sprintf(" %s %s%s", ser, txt, s ? "." : ";")
        }
        print line
      }
    }' "$pts"
  echo
  echo "Command: \`${LQ:+LLAMA_QUANTIZE=... }sh bench/pareto.sh $N $T\` ($(date -u +%Y-%m-%d))."
} > "$tab"
python3 - "$pts" bench/pareto.svg <<'PY'
import sys, math
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
W, H, L, B = 720, 460, 70, 50
xs = [float(r[3]) for r in rows]; ys = [math.log10(float(r[4])) for r in rows]
x0, x1 = min(xs) - 0.2, max(xs) + 0.2; y0, y1 = min(ys) - 0.1, max(ys) + 0.1
X = lambda v: L + (v - x0) / (x1 - x0) * (W - L - 20)
Y = lambda v: H - B - (v - y0) / (y1 - y0) * (H - B - 20)
col = {"moeq fixed": "#1f77b4", "reference fixed": "#d62728", "moeq allocated": "#2ca02c", "moeq allocated + Hessian": "#9467bd"}
o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
     '<rect width="100%" height="100%" fill="white"/>',
     '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, H - B, W - 20, H - B),
     '<line x1="%d" y1="20" x2="%d" y2="%d" stroke="black"/>' % (L, L, H - B),
     '<text x="%d" y="%d" text-anchor="middle">bits per weight</text>' % ((L + W) / 2, H - 10),
     '<text x="15" y="%d" transform="rotate(-90 15 %d)" text-anchor="middle">mean KLD vs F16 (log)</text>' % (H / 2, H / 2)]
t = math.ceil(x0 * 2) / 2
while t <= x1:
    o.append('<text x="%.1f" y="%d" text-anchor="middle">%.1f</text>' % (X(t), H - B + 16, t)); t += 0.5
for e in range(math.floor(y0), math.ceil(y1) + 1):
    for m in (1, 2, 5):
        v = math.log10(m) + e
        if y0 <= v <= y1:
            o.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (L - 4, Y(v) + 4, m * 10 ** e))
            o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (L, Y(v), W - 20, Y(v)))
for s, c in col.items():
    pts = sorted((float(r[3]), math.log10(float(r[4])), r[1]) for r in rows if r[0] == s)
    if len(pts) > 1 and "allocated" in s:
        o.append('<polyline fill="none" stroke="%s" points="%s"/>' % (c, " ".join("%.1f,%.1f" % (X(a), Y(b)) for a, b, _ in pts)))
    for a, b, name in pts:
        o.append('<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>' % (X(a), Y(b), c))
        if "fixed" in s:  # the reference's labels below the point, moeq's above: the same mix sits at the same x
            o.append('<text x="%.1f" y="%.1f" fill="%s">%s</text>' % (X(a) + 6, Y(b) + (16 if s.startswith("reference") else -6), c, name))
for i, (s, c) in enumerate(col.items()):
    o.append('<circle cx="%d" cy="%d" r="4" fill="%s"/><text x="%d" y="%d">%s</text>' % (W - 200, 30 + 16 * i, c, W - 190, 34 + 16 * i, s))
o.append("</svg>")
open(sys.argv[2], "w").write("\n".join(o) + "\n")
PY
cat "$tab"
sh bench/section.sh pareto "$tab"
