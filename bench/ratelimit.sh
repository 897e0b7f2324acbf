#!/usr/bin/env bash
# bench/ratelimit.sh -- issue 4's benchmark: the same route (GET /api/users, one worker) without
# rate limiting (bench/apigate-bench.yaml) and with the Redis token bucket keyed by ip and a limit
# nothing reaches (bench/apigate-ratelimit-redis.yaml), measured alternately, ROUNDS times each.
#
# Method of bench/run.sh (bench/README.md): loopback only; wrk -t1 -c64 and the upstream (nginx,
# fixed 52-byte JSON, keep-alive) pinned to CPU $LOADCPU, apigate to CPU $PEERCPU; a WARMUP-second
# wrk run before each DURATION-second measurement; CPU time per request of apigate from /proc.
# Redis runs on CPU $LOADCPU too (it stands for a Redis on another machine). Self-contained: it
# does not use bench/run.sh's shared pid file, so it never stops another run's processes; every
# process it starts is stopped by pid on exit. Own ports (UP_PORT 19161, APIGATE_PORT 19361,
# REDIS_PORT 19461) so that it can run beside bench/run.sh.
#
# Printed per configuration: median req/s (min-max), median CPU us/req, non-2xx responses, and for
# Redis the checks per round trip as Redis sees them: EVALSHA calls / read events processed (each
# read event is answered by one write; a batch above Redis' 16 KiB read buffer takes more than
# one, two batches written back to back may share one). On a shared machine compare the CPU
# figures too: unlike req/s they do not depend on what else runs.
set -euo pipefail
# shellcheck source=bench/upstream.sh
source "$(dirname "$0")/upstream.sh"
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-3} CONNS=${CONNS:-64}
LOADCPU=${LOADCPU:-0} PEERCPU=${PEERCPU:-1}
UP_PORT=${UP_PORT:-19161} APIGATE_PORT=${APIGATE_PORT:-19361} REDIS_PORT=${REDIS_PORT:-19461}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in "$NGINX" wrk redis-server redis-cli taskset ss curl; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
for port in $UP_PORT $APIGATE_PORT $REDIS_PORT; do
  if ss -Hltn "sport = :$port" | grep -q .; then echo "port $port is busy; not touching it" >&2; exit 1; fi
done
OUT=$PWD/bench/results/ratelimit-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT/run"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.1; done; return 1; }

upstream_conf "$OUT/run" "$OUT/nginx.err" "$UP_PORT" '{"id":4,"name":"bench-user","email":"u@example.org"}' >"$OUT/upstream.conf"
taskset -c "$LOADCPU" "$NGINX" -e "$OUT/nginx.err" -p "$OUT/run" -c "$OUT/upstream.conf" -g 'daemon off;' &
PIDS+=($!)
taskset -c "$LOADCPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  >"$OUT/redis.log" 2>&1 </dev/null &
PIDS+=($!)
if ! wait_port "$UP_PORT" || ! wait_port "$REDIS_PORT"; then echo "upstream or redis did not start" >&2; exit 1; fi

stat() { # a counter from INFO (evalsha: cmdstat_evalsha calls); awk reads all input (no SIGPIPE)
  redis-cli -p "$REDIS_PORT" info all | tr -d '\r' | awk -F'[:=,]' -v k="$1" '
    $1 == k && !v { v = $2 } $1 == "cmdstat_evalsha" && k == "evalsha" { v = $3 } END { print v + 0 }'
}
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
export APIGATE_BENCH_PORT=$APIGATE_PORT APIGATE_BENCH_UPSTREAM=http://127.0.0.1:$UP_PORT
export APIGATE_BENCH_REDIS=redis://127.0.0.1:$REDIS_PORT/0
URL=http://127.0.0.1:$APIGATE_PORT/api/users
HZ=$(getconf CLK_TCK)
echo "date $(date -Is); git $(git rev-parse --short HEAD); loadavg-before $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/summary.txt"
for r in $(seq "$ROUNDS"); do
  order="bench/apigate-bench.yaml bench/apigate-ratelimit-redis.yaml"
  [ $((r % 2)) = 0 ] && order="bench/apigate-ratelimit-redis.yaml bench/apigate-bench.yaml"
  for cfg in $order; do
    name=$(basename "$cfg" .yaml)
    taskset -c "$PEERCPU" .venv/bin/apigate serve --config "$cfg" >"$OUT/$name.$r.log" 2>&1 </dev/null &
    pid=$!
    PIDS+=("$pid")
    wait_port "$APIGATE_PORT" || { echo "apigate ($cfg) did not start" >&2; exit 1; }
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL")" = 200 ] || { echo "preflight failed ($cfg)" >&2; exit 1; }
    timeout 60 taskset -c "$LOADCPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$URL" >/dev/null
    e0=$(stat evalsha) r0=$(stat total_reads_processed) c0=$(ticks "$pid")
    timeout 90 taskset -c "$LOADCPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$URL" >"$OUT/wrk.$name.$r.txt"
    c1=$(ticks "$pid") e1=$(stat evalsha) r1=$(stat total_reads_processed)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    while ss -Hltn "sport = :$APIGATE_PORT" | grep -q .; do sleep 0.1; done
    n=$(grep -oP '\d+(?= requests in)' "$OUT/wrk.$name.$r.txt")
    echo "$name $r rps $(grep -oP 'Requests/sec:\s+\K[\d.]+' "$OUT/wrk.$name.$r.txt")" \
      "us_per_req $(awk -v c=$((c1 - c0)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.1f", c / hz / n * 1e6 }')" \
      "non2xx $(grep -oP 'Non-2xx or 3xx responses: \K\d+' "$OUT/wrk.$name.$r.txt" || echo 0)" \
      "evalsha $((e1 - e0)) reads $((r1 - r0))" | tee -a "$OUT/rounds.txt"
  done
done
python3 - "$OUT/rounds.txt" <<'PY' | tee -a "$OUT/summary.txt"
import statistics as st, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append({f[i]: float(f[i + 1]) for i in range(2, len(f), 2)})
med = {}
for name, rs in rows.items():
    rps = [r["rps"] for r in rs]
    med[name] = (st.median(rps), st.median(r["us_per_req"] for r in rs))
    ev, rd = sum(r["evalsha"] for r in rs), sum(r["reads"] for r in rs)
    per = f", {ev / rd:.1f} checks per Redis round trip" if ev else ""
    print(f"{name:28} {med[name][0]:8.0f} req/s ({min(rps):.0f}-{max(rps):.0f})  {med[name][1]:6.1f} us/req CPU"
          f"  non-2xx {sum(int(r['non2xx']) for r in rs)}{per}")
a, b = med.get("apigate-bench"), med.get("apigate-ratelimit-redis")
if a and b:
    print(f"with/without rate limiting: req/s {b[0] / a[0]:.2f}, by CPU per request {a[1] / b[1]:.2f} (target >= 0.75)")
PY
echo "loadavg-after $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
