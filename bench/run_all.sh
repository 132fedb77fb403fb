#!/bin/sh
# make bench: every benchmark script; each records its section of
# bench/RESULTS.md. Reference tools are used when their paths are given:
# LLAMA_QUANTIZE, LLAMA_BENCH (see each script).
cd "$(dirname "$0")/.."
rc=0
for s in quantize quality interop fit engine serve synth; do
  [ -f bench/$s.sh ] || continue
  echo "== bench/$s.sh" >&2
  sh bench/$s.sh || { echo "bench/$s.sh failed" >&2; rc=1; }
done
exit $rc
