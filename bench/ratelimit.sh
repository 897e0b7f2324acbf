#!/usr/bin/env bash
# bench/ratelimit.sh -- issue 4's benchmark: the same route without rate limiting and with the
# Redis token bucket keyed by ip (bench/apigate-ratelimit-redis.yaml), one worker each, measured
# by bench/run.sh (PEERS="nginx apigate"), in alternating runs. Starts its own redis-server on
# 127.0.0.1:$REDIS_PORT (pinned with the load generator and upstream to CPU $LOADCPU) and stops
# it by pid on exit. Prints the apigate req/s of each run and how many checks one Redis round
# trip carried on average, from Redis' own counters: EVALSHA calls / reads processed
# (each pipelined batch arrives in one read; the gateway is Redis' only client here).
# Knobs: RUNS=2 (pairs), REDIS_PORT=19451, plus everything bench/run.sh reads.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-2}
REDIS_PORT=${REDIS_PORT:-19451}
LOADCPU=${LOADCPU:-0}
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }
if ss -Hltn "sport = :$REDIS_PORT" | grep -q .; then echo "port $REDIS_PORT is busy" >&2; exit 1; fi
OUT=bench/results/ratelimit-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
taskset -c "$LOADCPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  >"$OUT/redis.log" 2>&1 </dev/null &
REDIS_PID=$!
trap 'kill "$REDIS_PID" 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
stat() { # a counter from INFO (evalsha: cmdstat_evalsha calls); awk reads all input (no SIGPIPE)
  redis-cli -p "$REDIS_PORT" info all | tr -d '\r' | awk -F'[:=,]' -v k="$1" '
    $1 == k && !v { v = $2 } $1 == "cmdstat_evalsha" && k == "evalsha" { v = $3 } END { print v + 0 }'
}
export APIGATE_BENCH_REDIS=redis://127.0.0.1:$REDIS_PORT/0
for r in $(seq "$RUNS"); do
  for cfg in bench/apigate-bench.yaml bench/apigate-ratelimit-redis.yaml; do
    e0=$(stat evalsha); e0=${e0:-0}; r0=$(stat total_reads_processed)
    PEERS="nginx apigate" APIGATE_BENCH_CONFIG=$cfg bench/run.sh >"$OUT/run.$r.$(basename "$cfg" .yaml).txt" 2>&1 || true
    e1=$(stat evalsha); e1=${e1:-0}; r1=$(stat total_reads_processed)
    rps=$(awk '$1 == "apigate" && $2 ~ /^[0-9]+$/ { print $2; exit }' "$OUT/run.$r.$(basename "$cfg" .yaml).txt")
    ngx=$(awk '$1 == "nginx" && $2 ~ /^[0-9]+$/ { print $2; exit }' "$OUT/run.$r.$(basename "$cfg" .yaml).txt")
    per=$(awk -v e=$((e1 - e0)) -v n=$((r1 - r0)) 'BEGIN { if (n > 0) printf "%.1f", e / n; else print "-" }')
    echo "run $r $(basename "$cfg" .yaml): apigate ${rps:-?} req/s, nginx ${ngx:-?} req/s, evalsha $((e1 - e0)), redis reads $((r1 - r0)), checks/round trip $per" | tee -a "$OUT/summary.txt"
  done
done
echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
