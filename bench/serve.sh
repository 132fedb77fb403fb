#!/bin/sh
# bench/serve.sh: a bounded load test of `moeq serve` on loopback.
#
#   sh bench/serve.sh [MODEL|tiny|mid]
#
# MODEL is a GGUF file; "mid" (the default) and "tiny" synthesize one into a
# temporary folder: `moeq synth --preset tiny`, or a 0.83 B-parameter
# 64-expert Q4_K model (446 MiB, about 20 s to write) whose decode is
# memory-bound like the real ones.
#
# Starts the server on 127.0.0.1 with --parallel 8, then for 1, 2, 4 and 8
# concurrent users sends REQS requests per user (default 8), each a
# /v1/completions of MAXTOK generated tokens (default 32, ignore_eos so the
# count is fixed, greedy), one after another per user. Records requests/s,
# aggregate generated tokens/s, latency percentiles and failed requests,
# prints a table and writes it as the "serve" section of bench/RESULTS.md
# (replacing the previous one). Everything stops by itself: a fixed number
# of requests, a time limit on each, the server stopped on exit.
#
# Environment: MOEQ_BIN (default ./moeq), THREADS (default: all cores),
# REQS, MAXTOK, USERS (default "1 2 4 8").
set -eu
bin=${MOEQ_BIN:-./moeq}
reqs=${REQS:-8}
maxtok=${MAXTOK:-32}
users_list=${USERS:-"1 2 4 8"}
threads=${THREADS:-0}
[ -x "$bin" ] || { echo "bench/serve.sh: $bin not built (run make)" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench/serve.sh: curl is needed" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/moeq-serve-bench.XXXXXX")
pid=
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

model=${1:-mid}
case $model in
  tiny)
    model=$dir/tiny.gguf
    "$bin" synth --preset tiny -o "$model" >/dev/null 2>&1 ;;
  mid)
    # 8 layers, 64 experts (8 used) of 1024x512, Q4_K: 0.83 B parameters,
    # 446 MiB; decode is memory-bound as in the real models.
    model=$dir/mid.gguf
    "$bin" synth -o "$model" --layers 8 --n-embd 1024 --heads 16 --kv-heads 4 --head-dim 64 \
      --experts 64 --experts-used 8 --ff-exp 512 --type Q4_K >/dev/null 2>&1 ;;
esac

load=$(cut -d' ' -f1-3 /proc/loadavg)
max_users=8
for u in $users_list; do [ "$u" -gt "$max_users" ] && max_users=$u; done
"$bin" serve -m "$model" --host 127.0.0.1 --port 0 -np "$max_users" -c 1024 -t "$threads" \
  --timeout 120 >"$dir/server.log" 2>&1 &
pid=$!
port=
i=0
while [ $i -lt 600 ]; do
  port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/server.log" | head -n 1)
  if [ -n "$port" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ]; then break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  sleep 0.1
  i=$((i + 1))
done
[ $i -lt 600 ] || { echo "bench/serve.sh: server did not come up" >&2; cat "$dir/server.log" >&2; exit 1; }

now() { date +%s.%N; }

# One user: $reqs requests in a row; one line per request:
# http_code seconds completion_tokens
user_loop() {
  u=$1
  n=0
  while [ $n -lt "$reqs" ]; do
    printf '{"prompt":"User %s asks question %s: what is the weather like?","max_tokens":%s,"temperature":0,"ignore_eos":true}' \
      "$u" "$n" "$maxtok" >"$dir/req.$u"
    out=$(curl -s -m 120 -o "$dir/resp.$u" -w '%{http_code} %{time_total}' \
          --data-binary @"$dir/req.$u" -H 'Content-Type: application/json' \
          "http://127.0.0.1:$port/v1/completions" || echo "000 0")
    toks=$(sed -n 's/.*"completion_tokens":\([0-9]*\).*/\1/p' "$dir/resp.$u")
    echo "$out ${toks:-0}"
    n=$((n + 1))
  done
}

# Warm up before measuring: the first touches of the weights (page
# faults) and of every session's KV cells would otherwise land in the first
# row of the table.
u=0
pids=
while [ $u -lt "$max_users" ]; do
  curl -s -m 120 -o /dev/null --data-binary "{\"prompt\":\"warm up $u\",\"max_tokens\":16,\"ignore_eos\":true}" \
    "http://127.0.0.1:$port/v1/completions" &
  pids="$pids $!"
  u=$((u + 1))
done
for j in $pids; do wait "$j" || true; done

table=$dir/table.md
{
  echo "| users | requests | failed | wall s | req/s | gen tok/s | p50 s | p90 s | p99 s | max s |"
  echo "|------:|---------:|-------:|-------:|------:|----------:|------:|------:|------:|------:|"
} >"$table"
for users in $users_list; do
  : >"$dir/all.txt"
  t0=$(now)
  u=0
  pids=
  while [ $u -lt "$users" ]; do
    user_loop "$u" >"$dir/lat.$u" &
    pids="$pids $!"
    u=$((u + 1))
  done
  for j in $pids; do wait "$j" || true; done
  t1=$(now)
  cat "$dir"/lat.* >"$dir/all.txt"
  rm -f "$dir"/lat.*
  sort -n -k2 "$dir/all.txt" | awk -v users="$users" -v t0="$t0" -v t1="$t1" '
    { n++; code[n] = $1; lat[n] = $2; if ($1 != 200) fail++; else tok += $3 }
    function pct(p,   k) { k = int(p * n + 0.999999); if (k < 1) k = 1; if (k > n) k = n; return lat[k] }
    END {
      wall = t1 - t0
      printf "| %d | %d | %d | %.2f | %.2f | %.1f | %.3f | %.3f | %.3f | %.3f |\n",
             users, n, fail, wall, n / wall, tok / wall, pct(0.50), pct(0.90), pct(0.99), lat[n]
    }' >>"$table"
done
cat "$table"

metrics=$(curl -s "http://127.0.0.1:$port/metrics" | grep -E '^moeq_(decode_batch_mean|generated_tokens_total|requests_rejected_total) ' || true)
kill -TERM "$pid"
wait "$pid" || { echo "bench/serve.sh: server exited with an error" >&2; exit 1; }
pid=

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
section=$dir/section.md
{
  echo "## moeq serve: load test (bench/serve.sh)"
  echo
  echo "Model ${1:-mid} ($(basename "$model"), $(wc -c <"$model") bytes); server --parallel $max_users -c 1024"
  echo "-t $threads (0 = all cores) on $(nproc) cores ($cpu). Each user sends $reqs /v1/completions"
  echo "requests in a row, $maxtok generated tokens each (greedy, ignore_eos), over loopback with"
  echo "curl; latency is the whole request. Load average before the run: $load (a shared machine"
  echo "is noisy)."
  echo
  cat "$table"
  echo
  echo "Batching pays where sequences share weights: the dense parts are read once per step for"
  echo "all users, but with 64 experts and 8 used per token two sequences share few experts, so a"
  echo "batch of 2 reads almost twice the expert weights of one; the gain grows with more users as"
  echo "their experts overlap (moeq_decode_batch_mean below is the mean sequences per step)."
  echo
  echo "Server metrics at the end:"
  echo
  echo '```'
  echo "$metrics"
  echo '```'
  echo
  echo "Command: \`REQS=$reqs MAXTOK=$maxtok THREADS=$threads USERS=\"$users_list\" sh bench/serve.sh ${1:-mid}\`, $(date -u '+%Y-%m-%d %H:%M UTC')."
} >"$section"
sh "$(dirname "$0")/section.sh" serve "$section"
echo "bench/serve.sh: wrote the serve section of $(dirname "$0")/RESULTS.md"
