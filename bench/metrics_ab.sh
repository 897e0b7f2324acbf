#!/usr/bin/env bash
# bench/metrics_ab.sh -- throughput of one apigate worker with metrics off vs on (scraped every second).
#
# Same machine, same run: an nginx upstream (fixed 52-byte JSON, pinned to CPU $LOADCPU with wrk)
# and two apigate processes pinned to CPU $PEERCPU, measured alternately (off, on, on, off, ...) so
# drift hits both. While "on" is measured, /metrics is scraped once a second.
# Issue 5's target: on >= 0.9 x off. Knobs: DURATION=10 ROUNDS=4 CONNS=64 WARMUP=2 LOADCPU=0 PEERCPU=1
# STATUS=1 compares the status page instead (issue 17): metrics on in both, `observability.admin.
# status_enabled` false vs true, and while "on" is measured /status.json is read every 2 s (a viewer).
# Every process started here is stopped by pid on exit.
set -euo pipefail
# shellcheck source=bench/upstream.sh
source "$(dirname "$0")/upstream.sh"
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}; ROUNDS=${ROUNDS:-4}; CONNS=${CONNS:-64}; WARMUP=${WARMUP:-2}
LOADCPU=${LOADCPU:-0}; PEERCPU=${PEERCPU:-1}; STATUS=${STATUS:-0}
UP=19121; OFF=19321; ON=19322; MPORT=19391
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
RES=bench/results/metrics-$(date -u +%Y%m%d-%H%M%S); mkdir -p "$RES/run"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
upstream_conf "$PWD/$RES/run" "$PWD/$RES/nginx.err" "$UP" '{"users":[{"id":1,"name":"alice"},{"id":2,"name":"bob"}]}' >"$RES/nginx.conf"
taskset -c "$LOADCPU" "$NGINX" -e "$PWD/$RES/nginx.err" -p "$PWD/$RES/run" -c "$PWD/$RES/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
conf() { # port metrics_enabled
  local obs="{metrics_enabled: $2, metrics_port: $MPORT}"
  [ "$STATUS" = 1 ] && obs="{metrics_port: $((MPORT + ${3:-0})), admin: {status_enabled: $2}}"
  cat <<YAML
server: {bind_address: 127.0.0.1, port: $1, workers: 1}
logging: {level: WARNING, format: json, sinks: [{type: stdout, min_level: WARNING}]}
observability: $obs
upstreams: [{id: bench-upstream, base_url: "http://127.0.0.1:$UP", pool_max_idle_per_host: 128}]
routes: [{id: users, methods: [GET], path: /api/users, upstream_id: bench-upstream}]
YAML
}
conf $OFF false 1 >"$RES/off.yaml"; conf $ON true >"$RES/on.yaml"
SCRAPE=/metrics PERIOD=1
[ "$STATUS" = 1 ] && SCRAPE=/status.json PERIOD=2
for v in off on; do
  taskset -c "$PEERCPU" .venv/bin/apigate serve --config "$RES/$v.yaml" >"$RES/$v.log" 2>&1 &
  PIDS+=($!)
done
declare -A PID_OF=([off]=${PIDS[1]} [on]=${PIDS[2]})
for url in "$UP/" "$OFF/api/users" "$ON/api/users" "$MPORT/metrics"; do
  for _ in $(seq 100); do curl -fso /dev/null "http://127.0.0.1:$url" && break; sleep 0.1; done
done
curl -fs "http://127.0.0.1:$ON/api/users" >/dev/null && curl -fs "http://127.0.0.1:$OFF/api/users" >/dev/null
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of the apigate process
measure() { # variant round
  local port=$OFF scraper=
  [ "$1" = on ] && port=$ON
  taskset -c "$LOADCPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port/api/users" >/dev/null
  if [ "$1" = on ]; then
    ( while :; do curl -fso /dev/null "http://127.0.0.1:$MPORT$SCRAPE"; sleep $PERIOD; done ) &
    scraper=$!
  fi
  local before after
  before=$(cpu_ticks "${PID_OF[$1]}")
  taskset -c "$LOADCPU" timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
    "http://127.0.0.1:$port/api/users" >"$RES/wrk.$1.$2.txt"
  after=$(cpu_ticks "${PID_OF[$1]}")
  echo "$((after - before))" >"$RES/cpu.$1.$2.txt"
  [ -n "$scraper" ] && kill "$scraper" && wait "$scraper" 2>/dev/null || true
  echo "round $2 $1: $(awk '/Requests\/sec/ {print $2}' "$RES/wrk.$1.$2.txt") req/s"
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then measure off "$r"; measure on "$r"; else measure on "$r"; measure off "$r"; fi
done
curl -fs "http://127.0.0.1:$MPORT/metrics" | grep -E '^http_requests_total' >"$RES/scrape.txt" || true
python3 - "$RES" "$STATUS" <<'PY'
import glob, re, statistics, sys
res = sys.argv[1]
what, viewer = ("status page", "/status.json read every 2 s") if sys.argv[2] == "1" else ("metrics", "/metrics scraped every 1 s")
import os
TICK = os.sysconf("SC_CLK_TCK")
def rps(v):
    return [float(re.search(r"Requests/sec:\s+([\d.]+)", open(f).read()).group(1)) for f in sorted(glob.glob(f"{res}/wrk.{v}.*.txt"))]
def us_per_req(v):
    out = []
    for f in sorted(glob.glob(f"{res}/wrk.{v}.*.txt")):
        n = int(re.search(r"(\d+) requests in", open(f).read()).group(1))
        ticks = int(open(f.replace("/wrk.", "/cpu.")).read())
        out.append(ticks / TICK / n * 1e6)
    return out
off, on = rps("off"), rps("on")
coff, con = us_per_req("off"), us_per_req("on")
print(f"CPU per request (apigate process): off {statistics.median(coff):.1f} us, on {statistics.median(con):.1f} us"
      f" -> capacity on/off = {statistics.median(coff) / statistics.median(con):.3f}")
print(f"{what} off: median {statistics.median(off):,.0f} req/s  ({min(off):,.0f}-{max(off):,.0f})")
print(f"{what} on : median {statistics.median(on):,.0f} req/s  ({min(on):,.0f}-{max(on):,.0f}), {viewer}")
print(f"on/off = {statistics.median(on) / statistics.median(off):.3f}  (target >= 0.9)")
PY
echo "scrape at the end: $(cat "$RES/scrape.txt")"
echo "raw output: $RES"
