# bench/tiny-a.sh: sourced by the tiny-a quality benches (gptq.sh,
# pareto.sh) after they set N (chunks), T (threads) and OUT: the paths of
# ../shared's model and texts, the moeq binary, the F16 model's KL base
# over N chunks of wiki.test.raw (kld_base), and the mean KLD of a file
# against it (kld_of FILE prints "MEAN UNC").
S=${MOEQ_SHARED:-../shared}
M=${MOEQ_BIN:-./moeq}
TA=$S/models/tiny-a
C=$S/data/text/calibration_datav3.txt
W=$S/data/text/wiki.test.raw
F16=$TA/tiny-a-f16.gguf
Q8=$TA/tiny-a-q8_0.gguf
[ -f "$F16" ] && [ -f "$Q8" ] || { echo "$0: needs $TA (tiny-a-f16.gguf, tiny-a-q8_0.gguf)" >&2; exit 1; }
mkdir -p "$OUT"
kld_base() { "$M" perplexity -m "$F16" -f "$W" -c 512 --chunks "$N" --kl-divergence-base "$OUT/base.kld" -t "$T" > /dev/null 2>&1; }
kld_of() {
  "$M" perplexity -m "$1" -f "$W" -c 512 --chunks "$N" --kl-divergence-base "$OUT/base.kld" --kl-divergence --json -t "$T" 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin)["kld"]; print("%.6f %.6f" % (d["mean"], d["unc"]))'
}
