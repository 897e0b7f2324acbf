#!/usr/bin/env bash
# bench/callgrind_full.sh -- instructions per request of the full stack, feature by feature
# (issue 18; docs/PERFORMANCE.md). Deterministic to about 1 % on a busy machine, unlike req/s.
#
# Each configuration in bench/callgrind/ (proxy, jwt, jwt_rl, rl_metrics, full: each adds one
# feature to the one before) is driven through bench/callgrind_driver.py with CALLGRIND_FULL=K
# (K requests at a time on K connections, so rate-limit checks batch as under load), under
# valgrind at N1 and N2 requests; instructions per request = (total(N2) - total(N1)) / (N2 - N1),
# which removes start-up. Redis is real (a redis-server this script starts on 127.0.0.1 and stops);
# its own work is another process and not counted. The upstream and the clients are fake
# transports: no kernel, no sockets on the request path.
#
# Knobs: CONFIGS="proxy jwt jwt_rl rl_metrics full" (also jwt_rl_leases, full_leases: with
#   rate_limiting.leases)  N1=200 N2=600  K=20  REDIS_PORT=19851
#   APIGATE_PURE=1 (the interpreted build)  PYTHONHASHSEED=0 (dict costs depend on the seed)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIGS=${CONFIGS:-proxy jwt jwt_rl rl_metrics full}
N1=${N1:-200} N2=${N2:-600} K=${K:-20} REDIS_PORT=${REDIS_PORT:-19851}
export PYTHONHASHSEED=${PYTHONHASHSEED:-0}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/apigate-cg-full.XXXXXX")
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
  --pidfile "$OUT/redis.pid" --logfile "$OUT/redis.log" --dir "$OUT"
trap 'kill "$(cat "$OUT/redis.pid" 2>/dev/null)" 2>/dev/null || true' EXIT
sleep 0.5
if ! { [ -s "$OUT/redis.pid" ] && kill -0 "$(cat "$OUT/redis.pid")" 2>/dev/null; }; then
  echo "redis-server did not start (port $REDIS_PORT busy? set REDIS_PORT): $OUT/redis.log" >&2
  exit 1
fi

export JWT_SECRET=callgrind-full-hs256-secret-0123456789abcdef
TOKEN=$(.venv/bin/python -c 'import jwt, os, time
print(jwt.encode({"sub": "user-1", "exp": int(time.time()) + 86400}, os.environ["JWT_SECRET"], algorithm="HS256"))')
export PORT=19802 UPSTREAM=http://127.0.0.1:19801 APIGATE_BENCH_METRICS_PORT=19890 \
  APIGATE_BENCH_REDIS=redis://127.0.0.1:$REDIS_PORT/0 APIGATE_BENCH_SPOOL=$OUT/spool \
  CALLGRIND_FULL=$K CALLGRIND_HEADER="Authorization: Bearer $TOKEN"
echo "instructions per request (N=$N2 minus N=$N1, $K at a time; build: $(.venv/bin/apigate --version))"
for c in $CONFIGS; do
  for n in $N1 $N2; do
    APIGATE_BENCH_LOG=$OUT/$c.$n.log CALLGRIND_CONFIG=bench/callgrind/$c.yaml \
      valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$c.$n" \
      .venv/bin/python bench/callgrind_driver.py "$n" >"$OUT/$c.$n.out" 2>&1 \
      || { tail -20 "$OUT/$c.$n.out" >&2; exit 1; }
  done
  a=$(awk '/^(summary|totals):/{print $2; exit}' "$OUT/cg.$c.$N1")
  b=$(awk '/^(summary|totals):/{print $2; exit}' "$OUT/cg.$c.$N2")
  printf '%-11s %8d   (%s)\n' "$c" $(((b - a) / (N2 - N1))) "$(grep responses "$OUT/$c.$N2.out")"
  grep -q "^$N2 of $N2 responses" "$OUT/$c.$N2.out" || echo "  warning: not every response was a 200: the count is not the proxied path's" >&2
done
echo "callgrind files: $OUT (callgrind_annotate --inclusive=no cg.<config>.<n>)"
