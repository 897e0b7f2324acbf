#!/usr/bin/env bash
# bench/peers_full.sh -- apigate "full" (cached HS256 JWT, Redis token bucket per user, metrics
# scraped every second, every access event to a file: bench/peers-apigate-full.yaml) as the extra
# peer of ../shared/bench/peers.sh with EXTRA_AUTH=1, next to nginx and fast-gateway (issue 18).
#
# Redis runs on CPU 0 with the load generator and the upstream (the harness pins apigate to CPU 1);
# its CPU is not in apigate's CPU per request. This script starts and stops Redis and the scraper.
# Knobs: LEASES=1 (rate_limiting.leases: true)  PEERS="direct nginx fastgw_jwt_rl apigate"
#        REDIS_PORT=19451 METRICS_PORT=19390, and peers.sh's own (DURATION, ROUNDS, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
REDIS_PORT=${REDIS_PORT:-19451} METRICS_PORT=${METRICS_PORT:-19390}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/apigate-peers-full.XXXXXX")
CONFIG=$PWD/bench/peers-apigate-full.yaml
if [ "${LEASES:-0}" = 1 ]; then
  sed 's/^  failure_mode: fail_closed$/&\n  leases: true/' "$CONFIG" >"$OUT/full-leases.yaml"
  grep -q '^  leases: true' "$OUT/full-leases.yaml" || { echo "no failure_mode line to add leases after" >&2; exit 1; }
  CONFIG=$OUT/full-leases.yaml
fi
taskset -c 0 redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
  --pidfile "$OUT/redis.pid" --logfile "$OUT/redis.log" --dir "$OUT"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG || { echo "redis-server did not start: $OUT/redis.log" >&2; exit 1; }
(while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics" || true; done) &
SCRAPER=$!
stop() { # the scraper, then Redis, waited for: the port is free for the next run
  kill "$SCRAPER" 2>/dev/null || true
  local pid; pid=$(cat "$OUT/redis.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}
trap stop EXIT
export APIGATE_BENCH_REDIS=redis://127.0.0.1:$REDIS_PORT/0 APIGATE_BENCH_LOG=$OUT/access.log \
  APIGATE_BENCH_METRICS_PORT=$METRICS_PORT APIGATE_BENCH_SPOOL=$OUT/spool
echo "apigate config: $CONFIG (leases ${LEASES:-0})" >&2
EXTRA_NAME=apigate EXTRA_PORT=9301 EXTRA_AUTH=1 EXTRA_CMD="$PWD/.venv/bin/apigate serve --config $CONFIG" \
  PEERS=${PEERS:-direct nginx fastgw_jwt_rl apigate} ../shared/bench/peers.sh
