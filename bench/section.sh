#!/bin/sh
# bench/section.sh NAME FILE: put FILE into bench/RESULTS.md between
# <!-- NAME:begin --> and <!-- NAME:end -->, replacing an earlier run's
# section or appending a new one. Every bench script records its results so.
name=$1; file=$2
results=$(dirname "$0")/RESULTS.md
sec=$(mktemp)
{ echo "<!-- $name:begin -->"; cat "$file"; echo "<!-- $name:end -->"; } > "$sec"
[ -f "$results" ] || printf '# moeq benchmark results\n\nEach section is written by the bench script named in it; the command and date are at its end.\n\n' > "$results"
if grep -q "<!-- $name:begin -->" "$results"; then
  awk -v sec="$sec" -v b="<!-- $name:begin -->" -v e="<!-- $name:end -->" '
    $0 == b { while ((getline l < sec) > 0) print l; skip = 1; next }
    $0 == e { skip = 0; next }
    !skip' "$results" > "$results.tmp" && mv "$results.tmp" "$results"
else
  { echo; cat "$sec"; } >> "$results"
fi
rm -f "$sec"
