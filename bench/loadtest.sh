#!/usr/bin/env bash
# bench/loadtest.sh -- how fast is `apigate loadtest`? One run on loopback against nginx:
#
#   wrk      closed loop: wrk -t1 -c64 (the most nginx answers to one wrk thread)
#   open-1   the highest rate `apigate loadtest --workers 1` holds with p99 < 10 ms,
#            no errors and achieved >= 98 % of the target (a search over rates)
#   open-2   the same with --workers 2
#
# nginx (1 worker, `return 200` of a fixed 52-byte body, keep-alive) is pinned to CPU $SERVERCPU.
# With PIN_LOAD=1, wrk and the 1-worker generator are pinned to CPU $LOADCPU; by default they
# float (on a 2-core machine shared with other work, a pinned client cannot move away from a
# busy core, and the figures then measure the neighbours). Two workers are never pinned.
# Everything listens on 127.0.0.1; the processes started here are stopped by pid on exit.
# Knobs: STEP_S=5 (seconds per probe)  P99_MS=10  CONNS=64  PORT=19111  LOADCPU=0  SERVERCPU=1  PIN_LOAD=0
#        START=2000 (first rate probed)  RESULTS=bench/results/loadtest-<stamp>
set -euo pipefail
# shellcheck source=bench/upstream.sh
source "$(dirname "$0")/upstream.sh"

cd "$(dirname "$0")/.."
REPO=$PWD
STEP_S=${STEP_S:-5}
P99_MS=${P99_MS:-10}
CONNS=${CONNS:-64}
PORT=${PORT:-19111}
LOADCPU=${LOADCPU:-0}
SERVERCPU=${SERVERCPU:-1}
START=${START:-2000}
PIN_LOAD=${PIN_LOAD:-0}
RES=${RESULTS:-$REPO/bench/results/loadtest-$(date +%Y%m%d-%H%M%S)}
APIGATE=$REPO/.venv/bin/apigate
BODY='{"id":4,"name":"bench-user","email":"u@example.org"}'

log() { echo "[$(date +%T)] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}
for knob in STEP_S P99_MS CONNS PORT LOADCPU SERVERCPU START PIN_LOAD; do
  [[ ${!knob} =~ ^[0-9]+$ ]] && [ "${!knob}" -ge 0 ] || die "$knob must be a whole number, got '${!knob}'"
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx not found (apt-get install nginx-light; or: make test-deps)"
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk; or: make test-deps)"
[ -x "$APIGATE" ] || die "$APIGATE not found (make install)"
if ss -Hltn "sport = :$PORT" | grep -q .; then die "port $PORT is in use; set PORT"; fi
NCPU=$(nproc)
[ "$LOADCPU" -lt "$NCPU" ] && [ "$SERVERCPU" -lt "$NCPU" ] || die "this machine has $NCPU CPUs"

mkdir -p "$RES/run"
upstream_conf "$RES/run" "$RES/nginx.err" "$PORT" "$BODY" >"$RES/nginx.conf"
taskset -c "$SERVERCPU" "$NGINX" -e "$RES/nginx.err" -p "$RES/run" -c "$RES/nginx.conf" -g 'daemon off;' \
  </dev/null >"$RES/nginx.log" 2>&1 &
NGINX_PID=$!
cleanup() {
  kill "$NGINX_PID" 2>/dev/null || true
  wait "$NGINX_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 100); do
  ss -Hltn "sport = :$PORT" | grep -q . && break
  kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited (see $RES/nginx.err)"
  sleep 0.1
done
URL=http://127.0.0.1:$PORT/api/users
[ "$(curl -s -m 5 "$URL")" = "$BODY" ] || die "nginx does not answer $URL"

{
  echo "date $(date -Is); host $(uname -n); cpus $NCPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'); wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo '?')"
  echo "apigate $("$APIGATE" --version); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "loadavg-before $(cut -d' ' -f1-3 /proc/loadavg); PIN_LOAD=$PIN_LOAD"
} >"$RES/versions.txt"
PIN=()
if [ "$PIN_LOAD" = 1 ]; then PIN=(taskset -c "$LOADCPU"); fi
log "results in ${RES#"$REPO"/}; nginx on CPU $SERVERCPU; clients ${PIN[*]:-not pinned}"

timeout -k 5 $((STEP_S + 30)) "${PIN[@]}" wrk -t1 -c"$CONNS" -d"${STEP_S}s" "$URL" >/dev/null 2>&1 || true
TIMEFORMAT='%U %S' # bash's `time`: the CPU seconds of wrk
{ time timeout -k 5 $((STEP_S + 30)) "${PIN[@]}" wrk -t1 -c"$CONNS" -d"${STEP_S}s" --latency "$URL" \
  >"$RES/wrk.txt" 2>&1; } 2>"$RES/wrk.cpu" || die "wrk failed (see $RES/wrk.txt)"
WRK_RPS=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$RES/wrk.txt")
WRK_N=$(awk '/requests in/ { print $1 }' "$RES/wrk.txt")
WRK_P99=$(awk '$1 == "99%" { print $2 }' "$RES/wrk.txt")
WRK_US=$(awk -v n="$WRK_N" '{ printf "%.1f", ($1 + $2) * 1e6 / n }' "$RES/wrk.cpu")
log "wrk closed loop: $WRK_RPS req/s (p99 $WRK_P99, $WRK_US us of CPU per request)"

# probe WORKERS RATE: 0 when the run held RATE (p99 < P99_MS, no errors, kept up)
probe() {
  local workers=$1 rate=$2 pin=() out=$RES/open-$1-$2.json
  if [ "$workers" = 1 ]; then pin=("${PIN[@]}"); fi
  timeout -k 5 $((STEP_S + 60)) "${pin[@]}" "$APIGATE" loadtest --url "$URL" --rps "$rate" --duration "${STEP_S}s" \
    --workers "$workers" --connections "$CONNS" --p99-ms "$P99_MS" --max-error-rate 0.0001 --timeout 5s \
    --report "$out" >"$RES/open-$workers-$rate.txt" 2>&1 || true
  [ -f "$out" ] || return 1
  "$REPO/.venv/bin/python" - "$out" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
ok = r["criteria"]["passed"] and r["generator"]["kept_up"] and r["errors"] == 0
print(f"  {r['target_rps']:.0f} req/s: achieved {r['achieved_rps']:.0f}, p99 {r['latency_ms']['p99']} ms, "
      f"max {r['latency_ms']['max']} ms, timer lag p99 {r['generator']['timer_lag_ms']['p99']} ms, "
      f"{r['generator']['cpu_us_per_request']} us of CPU per request -> "
      f"{'held' if ok else 'not held'}", file=sys.stderr)
sys.exit(0 if ok else 1)
PYEOF
}

# search WORKERS: double from START while held, then bisect to within 5 %
search() {
  local workers=$1 lo=0 hi=0 rate=$START mid
  log "open loop, $workers worker(s): searching"
  while probe "$workers" "$rate"; do
    lo=$rate
    rate=$((rate * 2))
    [ "$rate" -le 400000 ] || break
  done
  hi=$rate
  while [ $((hi - lo)) -gt $((hi / 20)) ]; do
    mid=$(((lo + hi) / 2))
    if probe "$workers" "$mid"; then lo=$mid; else hi=$mid; fi
  done
  echo "$lo"
}
OPEN1=$(search 1)
OPEN2=$(search 2)
echo "loadavg-after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/versions.txt"
cpu_of() { # WORKERS RATE: the generator's CPU per request in that probe
  [ -f "$RES/open-$1-$2.json" ] || { echo -; return; }
  "$REPO/.venv/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["generator"]["cpu_us_per_request"])' \
    "$RES/open-$1-$2.json"
}
{
  printf '%-34s %12s %14s\n' "generator (against nginx, loopback)" "req/s" "us CPU/req"
  printf '%-34s %12s %14s\n' "wrk -t1 -c$CONNS, closed loop (max)" "$WRK_RPS" "$WRK_US"
  printf '%-34s %12s %14s\n' "apigate loadtest, 1 worker" "$OPEN1" "$(cpu_of 1 "$OPEN1")"
  printf '%-34s %12s %14s\n' "apigate loadtest, 2 workers" "$OPEN2" "$(cpu_of 2 "$OPEN2")"
  echo "open loop: the highest rate held with p99 < $P99_MS ms (from the due time), no errors, achieved >= 98 %"
  cat "$RES/versions.txt"
} | tee "$RES/table.txt"
