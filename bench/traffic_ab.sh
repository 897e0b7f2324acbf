#!/usr/bin/env bash
# bench/traffic_ab.sh -- the cost of each traffic feature (issue 15) on one route, in one run.
#
# Five apigate workers, identical but for the route /api/users (bench/traffic/<variant>.yaml):
#   base        proxy only
#   cors        cors: {allow_origins: [the Origin wrk sends], ...}   (actual requests: origin echoed, Vary)
#   iprules     ip_allow: [127.0.0.0/8, 2001:db8::/32], ip_deny: [10.0.0.0/8]
#   transforms  request_headers {set X-Tenant, add X-Client: $client_ip}, response_headers {add X-Served-By}
# The deterministic counterpart (instructions per request, unaffected by other load):
#   bench/traffic_ab.sh --callgrind   (bench/callgrind_driver.py on each config)
#   plugin      a no-op Python plugin (bench/noop_plugin.py)
# The nginx upstream (fixed 52-byte JSON) and wrk run on CPU $LOADCPU, every apigate on CPU $PEERCPU;
# variants are measured in turn, in a rotated order each round, so that drift hits all of them.
# Every request carries `Origin: http://app.example.test` (all variants alike).
# Reports req/s and the apigate process's CPU time per request (from /proc/<pid>/stat), the
# steadier figure on a shared machine, and each variant relative to base.
# Targets: cors, iprules, transforms <= 3 % each; plugin <= 5 %.
# Knobs: DURATION=8 ROUNDS=3 CONNS=64 WARMUP=2 LOADCPU=0 PEERCPU=1. Every process started here is
# stopped by pid on exit. Raw output: bench/results/traffic-<timestamp>/.
set -euo pipefail
# shellcheck source=bench/upstream.sh
source "$(dirname "$0")/upstream.sh"
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-64}; WARMUP=${WARMUP:-2}
LOADCPU=${LOADCPU:-0}; PEERCPU=${PEERCPU:-1}
UP=19131
VARIANTS=(base cors iprules transforms plugin)
declare -A PORT=([base]=19331 [cors]=19332 [iprules]=19333 [transforms]=19334 [plugin]=19335)
ORIGIN=http://app.example.test
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ "${1:-}" = --callgrind ]; then
  declare -A IR
  for v in base cors iprules transforms plugin; do
    for n in 1000 3000; do
      # A fixed hash seed: with a random one, str and bytes hashes, and so dict and set probe
      # lengths, change from run to run (±500 instructions/request between repeated runs).
      PYTHONHASHSEED=${PYTHONHASHSEED:-0} CALLGRIND_CONFIG=bench/traffic/$v.yaml CALLGRIND_HEADER="Origin: http://app.example.test" \
        valgrind --tool=callgrind --callgrind-out-file=/tmp/apigate-cg.$v.$n .venv/bin/python bench/callgrind_driver.py $n \
        2>&1 | grep -o 'Collected : [0-9]*' | awk '{print $3}' >/tmp/apigate-cg.$v.$n.total
    done
    IR[$v]=$(( ($(cat /tmp/apigate-cg.$v.3000.total) - $(cat /tmp/apigate-cg.$v.1000.total)) / 2000 ))
    echo "$v: ${IR[$v]} instructions/request ($(python3 -c "print(f'{${IR[$v]} / ${IR[base]} * 100 - 100:+.1f} %')") vs base)"
  done
  exit 0
fi
RES=bench/results/traffic-$(date -u +%Y%m%d-%H%M%S); mkdir -p "$RES/run"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
upstream_conf "$PWD/$RES/run" "$PWD/$RES/nginx.err" "$UP" '{"id":4,"name":"bench-user","email":"u@example.org"}' >"$RES/nginx.conf"
taskset -c "$LOADCPU" "$NGINX" -e "$PWD/$RES/nginx.err" -p "$PWD/$RES/run" -c "$PWD/$RES/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
declare -A PID_OF
for v in "${VARIANTS[@]}"; do
  APIGATE_BENCH_PORT=${PORT[$v]} APIGATE_BENCH_UPSTREAM=http://127.0.0.1:$UP \
    taskset -c "$PEERCPU" .venv/bin/apigate serve --config "bench/traffic/$v.yaml" >"$RES/$v.log" 2>&1 &
  PIDS+=($!); PID_OF[$v]=$!
done
for url in "$UP/" $(for v in "${VARIANTS[@]}"; do echo "${PORT[$v]}/api/users"; done); do
  for _ in $(seq 100); do curl -fso /dev/null -H "Origin: $ORIGIN" "http://127.0.0.1:$url" && break; sleep 0.1; done
done
for v in "${VARIANTS[@]}"; do # each answers as configured, or the run measures nothing
  curl -fsi -H "Origin: $ORIGIN" "http://127.0.0.1:${PORT[$v]}/api/users" >"$RES/check.$v.txt"
done
grep -qi '^access-control-allow-origin: http://app.example.test' "$RES/check.cors.txt"
grep -qi '^x-served-by: users' "$RES/check.transforms.txt"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # variant round
  local port=${PORT[$1]} before after
  taskset -c "$LOADCPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H "Origin: $ORIGIN" "http://127.0.0.1:$port/api/users" >/dev/null
  before=$(cpu_ticks "${PID_OF[$1]}")
  taskset -c "$LOADCPU" timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
    -H "Origin: $ORIGIN" "http://127.0.0.1:$port/api/users" >"$RES/wrk.$1.$2.txt"
  after=$(cpu_ticks "${PID_OF[$1]}")
  echo "$((after - before))" >"$RES/cpu.$1.$2.txt"
  echo "round $2 $1: $(awk '/Requests\/sec/ {print $2}' "$RES/wrk.$1.$2.txt") req/s"
}
n=${#VARIANTS[@]}
for r in $(seq "$ROUNDS"); do
  for i in $(seq 0 $((n - 1))); do measure "${VARIANTS[$(((i + r - 1) % n))]}" "$r"; done
done
python3 - "$RES" "${VARIANTS[@]}" <<'PY'
import glob, os, re, statistics as st, sys
res, variants = sys.argv[1], sys.argv[2:]
TICK = os.sysconf("SC_CLK_TCK")
rows = {}
for v in variants:
    rps, cpu = [], []
    for f in sorted(glob.glob(f"{res}/wrk.{v}.*.txt")):
        t = open(f).read()
        rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)))
        n = int(re.search(r"(\d+) requests in", t).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
        assert not bad, f"{f}: {bad.group(0)}"
        cpu.append(int(open(f.replace("/wrk.", "/cpu.")).read()) / TICK / n * 1e6)
    rows[v] = (st.median(rps), min(rps), max(rps), st.median(cpu))
base_rps, _, _, base_cpu = rows["base"]
print(f"{'variant':<11}{'req/s med':>11}{'(min-max)':>19}{'us/req':>8}{'cost (CPU)':>12}{'req/s vs base':>15}")
for v, (med, lo, hi, cpu) in rows.items():
    print(f"{v:<11}{med:>11.0f}{'(%.0f-%.0f)' % (lo, hi):>19}{cpu:>8.1f}{(cpu / base_cpu - 1) * 100:>+11.1f}%"
          f"{(med / base_rps - 1) * 100:>+14.1f}%")
print("cost (CPU): the apigate process's CPU time per request relative to base; targets <= 3 % (cors,")
print("iprules, transforms), <= 5 % (plugin).")
PY
echo "raw output: $RES"
