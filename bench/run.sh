#!/usr/bin/env bash
# bench/run.sh -- side-by-side loopback benchmark: upstream direct / nginx proxy / apigate.
#
# One run measures, with wrk on the same route (GET /api/users) and concurrency:
#   direct   the upstream itself (nginx returning a fixed 52-byte JSON body), no proxy
#   nginx    nginx as a plain reverse proxy: 1 worker, proxy_pass + upstream keepalive
#   apigate  .venv/bin/apigate serve --config bench/apigate-bench.yaml (1 worker, proxy only)
# wrk and the upstream are pinned to CPU $LOADCPU, the proxy under test to CPU $PEERCPU (taskset).
# Rounds alternate the order (reversed on even rounds); each measurement follows a warmup.
# Method of ../shared/bench/peers.sh; see bench/README.md.
#
# Knobs (environment): DURATION=10 (s per measurement)  CONNS=64  THREADS=1  ROUNDS=3  WARMUP=2
#   PEERS="direct nginx apigate" (subset/order)  LOADCPU=0  PEERCPU=1
#   APIGATE="$PWD/.venv/bin/apigate"  APIGATE_BENCH_CONFIG=bench/apigate-bench.yaml
#   UP_PORT=19101  NGINX_PORT=19201  APIGATE_PORT=19301 (apigate gets them as APIGATE_BENCH_PORT and
#   APIGATE_BENCH_UPSTREAM, which bench/apigate-bench.yaml reads)
# Everything listens on 127.0.0.1 only. Every process started here is recorded (pid + start time)
# and stopped by pid on exit, Ctrl-C included. Raw results: bench/results/<timestamp>/.
set -euo pipefail
# shellcheck source=bench/upstream.sh
source "$(dirname "$0")/upstream.sh"
# shellcheck source=bench/procs.sh
source "$(dirname "$0")/procs.sh"

cd "$(dirname "$0")/.."
REPO=$PWD

DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
PEERS=${PEERS:-direct nginx apigate}
LOADCPU=${LOADCPU:-0}
PEERCPU=${PEERCPU:-1}
APIGATE=${APIGATE:-$REPO/.venv/bin/apigate}
APIGATE_BENCH_CONFIG=${APIGATE_BENCH_CONFIG:-bench/apigate-bench.yaml}

UP_PORT=${UP_PORT:-19101}
NGINX_PORT=${NGINX_PORT:-19201}
APIGATE_PORT=${APIGATE_PORT:-19301}
ROUTE=/api/users
BODY='{"id":4,"name":"bench-user","email":"u@example.org"}' # 52 bytes, as in peers.sh

RESULTS=$REPO/bench/results
RES=$RESULTS/$(date +%Y%m%d-%H%M%S)
GEN=$RES/gen
RUN=$RES/run
LOGS=$RES/logs
PIDFILE=$RESULTS/.running.$$.pids # this run's servers; an interrupted run's file outlives its pid

log() { echo "[$(date +%T)] $*" >&2; }

# report DIR PEER...: the table, from DIR/wrk.<peer>.<round>.txt (also: bench/run.sh --report DIR)
report() {
  "$PY" - "$@" <<'PYEOF'
import glob, os, re, statistics as st, sys

res, peers = sys.argv[1], sys.argv[2:]
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse(path):
    t = open(path, encoding="utf-8", errors="replace").read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    if not m:
        return None
    d = {"rps": float(m.group(1))}
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        d["p" + q] = float(m.group(1)) * UNIT_MS[m.group(2)] if m else float("nan")
    m = re.search(r"(\d+) requests in", t)
    d["n"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    d["errs"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    d["errs"] += sum(map(int, m.groups())) if m else 0
    m = re.search(r"cpu_ticks (-?\d+) hz (\d+) wall ([\d.]+)", t)
    d["cpu_us"] = int(m.group(1)) / int(m.group(2)) / max(d["n"], 1) * 1e6 if m else float("nan")
    m2 = re.search(r"other_cpu_ticks (-?\d+)", t)
    d["other"] = max(int(m2.group(1)), 0) / int(m.group(2)) / float(m.group(3)) * 100 if m and m2 else float("nan")
    m = re.search(r"upstream_timewait_delta (-?\d+)", t)
    d["tw"] = int(m.group(1)) if m else 0
    return d


rows = {}
for p in peers:
    files = sorted(glob.glob(os.path.join(res, f"wrk.{p}.*.txt")))
    runs = [parse(f) for f in files]
    ok = [r for r in runs if r]
    if not files:
        continue
    if not ok:
        rows[p] = {"failed": len(runs)}
        continue
    med = lambda k: st.median(r[k] for r in ok)  # noqa: E731
    rows[p] = {
        "rps": med("rps"), "lo": min(r["rps"] for r in ok), "hi": max(r["rps"] for r in ok),
        "p50": med("p50"), "p99": med("p99"), "errs": sum(r["errs"] for r in ok),
        "cpu_us": med("cpu_us"), "tw": max(r["tw"] for r in ok), "rounds": len(ok),
        "other": med("other"), "other_max": max(r["other"] for r in ok),
        "failed": len(runs) - len(ok),
    }
ng = rows.get("nginx", {}).get("rps")
hdr = (f"{'peer':<9}{'req/s med':>11}{'(min-max)':>19}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}{'us/req':>8}"
       f"{'/nginx':>8}{'other%':>8}{'rounds':>7}")
print(hdr)
print("-" * len(hdr))
for p, r in rows.items():
    if "rps" not in r:
        print(f"{p:<9}  all {r['failed']} measurement(s) failed: see {res}/wrk.{p}.*.txt")
        continue
    rel = f"{r['rps'] / ng:.2f}" if ng else "-"
    other = "-" if r["other"] != r["other"] else f"{r['other']:.0f}"  # nan: not recorded
    rounds = f"{r['rounds']}" + (f"+{r['failed']}!" if r["failed"] else "")
    print(f"{p:<9}{r['rps']:>11.0f}{'(%.0f-%.0f)' % (r['lo'], r['hi']):>19}{r['p50']:>8.2f}{r['p99']:>8.2f}"
          f"{r['errs']:>8}{r['cpu_us']:>8.1f}{rel:>8}{other:>8}{rounds:>7}")
print()
print("req/s and latencies: median over rounds (min-max of req/s); errors: non-2xx + socket errors, all rounds;")
print("us/req: CPU time of the peer's processes per request (for 'direct': the upstream nginx, sharing CPU with wrk);")
print("/nginx: median req/s relative to the plain nginx proxy; rounds: measured (+N! = N failed wrk runs);")
print("other%: CPU used meanwhile by anything but wrk, upstream and peer: other work on the machine")
print("        (% of one core, from /proc/stat; a few % is bookkeeping noise).")
ag = rows.get("apigate", {}).get("rps")
if ag and ng:
    print(f"\napigate/nginx = {ag / ng:.2f}  (median req/s; issue target for the proxy-only gateway: >= 0.40)")
busy = {p: round(r["other_max"]) for p, r in rows.items() if r.get("other_max", 0) > 10}
if busy:
    print(f"warning: other work on the machine during some measurements (max other% {busy}): figures are noisy")
tw = {p: r["tw"] for p, r in rows.items() if p != "direct" and r.get("tw", 0) > 100}
if tw:
    print(f"warning: new TIME_WAIT sockets to the upstream during a run: {tw} (upstream keep-alive not reused?)")
PYEOF
}
die() {
  log "error: $*"
  exit 1
}

PY=$REPO/.venv/bin/python
[ -x "$PY" ] || PY=$(command -v python3) || die "python3 not found"
if [ "${1:-}" = "--report" ]; then # re-render the table of an earlier run
  [ -d "${2:-}" ] || die "usage: bench/run.sh --report bench/results/<timestamp> [peers...]"
  dir=$2
  shift 2
  if [ $# -eq 0 ]; then
    # shellcheck disable=SC2086  # peer list
    set -- $PEERS
  fi
  report "$dir" "$@"
  exit 0
fi
[ $# -eq 0 ] || die "usage: [KNOB=value ...] bench/run.sh | bench/run.sh --report DIR [peers...]"

# ------------------------------------------------------------------ argument checks
for knob in DURATION CONNS THREADS ROUNDS WARMUP LOADCPU PEERCPU UP_PORT NGINX_PORT APIGATE_PORT; do
  [[ ${!knob} =~ ^[0-9]+$ ]] || die "$knob must be a non-negative integer, got '${!knob}'"
done
if [ "$DURATION" -lt 1 ] || [ "$ROUNDS" -lt 1 ] || [ "$CONNS" -lt 1 ] || [ "$THREADS" -lt 1 ]; then
  die "DURATION, ROUNDS, CONNS and THREADS must be >= 1"
fi
[ "$CONNS" -ge "$THREADS" ] || die "CONNS ($CONNS) must be >= THREADS ($THREADS)"
for p in $PEERS; do
  case $p in direct | nginx | apigate) ;; *) die "unknown peer '$p' (direct, nginx, apigate)" ;; esac
done
[ -n "${PEERS// /}" ] || die "PEERS is empty"

NGINX=$(command -v nginx || true)
if [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ]; then NGINX=/usr/sbin/nginx; fi
[ -n "$NGINX" ] || die "nginx not found (apt-get install nginx-light; or: make test-deps)"
for tool in wrk taskset ss curl; do
  command -v "$tool" >/dev/null || die "$tool not found (wrk: apt-get install wrk; taskset: util-linux; ss: iproute2)"
done
REQUESTED_PEERS=$PEERS

NCPU=$(nproc)
if [ "$LOADCPU" -ge "$NCPU" ] || [ "$PEERCPU" -ge "$NCPU" ]; then
  if [ "$NCPU" -lt 2 ]; then
    log "warning: only $NCPU CPU: load generator, upstream and proxy all share CPU 0 (figures not comparable to 2-core runs)"
    LOADCPU=0 PEERCPU=0
  else
    die "LOADCPU=$LOADCPU / PEERCPU=$PEERCPU out of range (this machine has $NCPU CPUs)"
  fi
fi

# ------------------------------------------------------------------ process bookkeeping (bench/procs.sh)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "stopping everything started by this run"
  stop_recorded
  exit "$rc"
}
mkdir -p "$RESULTS" "$GEN" "$RUN" "$LOGS"
stop_leftovers "$RESULTS"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DROPPED=()
drop() {
  PEERS=$(echo " $PEERS " | sed "s/ $1 / /" | xargs)
  DROPPED+=("$1: $2")
  log "dropping $1: $2"
}
want() { [[ " $PEERS " == *" $1 "* ]]; }

for port in $UP_PORT $NGINX_PORT $APIGATE_PORT; do
  if port_busy "$port"; then
    ss -Hltnp "sport = :$port" >&2 || true
    die "port $port is already in use by something else; not touching it"
  fi
done

# ------------------------------------------------------------------ configs
upstream_conf "$RUN" "$LOGS/nginx-upstream.err" "$UP_PORT" "$BODY" >"$GEN/nginx-upstream.conf"
proxy_conf "$RUN" "$LOGS/nginx-proxy.err" "$NGINX_PORT" "$UP_PORT" "$ROUTE" >"$GEN/nginx-proxy.conf"

# ------------------------------------------------------------------ versions and machine
{
  echo "date $(date -Is)"
  echo "host $(uname -n); kernel $(uname -r); cpus $NCPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
  echo "wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || wrk -v 2>&1 | head -1)"
  if [ -x "$APIGATE" ]; then echo "apigate $("$APIGATE" --version 2>&1 | head -1 || true)"; fi
  echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "knobs DURATION=$DURATION CONNS=$CONNS THREADS=$THREADS ROUNDS=$ROUNDS WARMUP=$WARMUP LOADCPU=$LOADCPU PEERCPU=$PEERCPU ports $UP_PORT/$NGINX_PORT/$APIGATE_PORT"
  echo "peers $PEERS"
} >"$RES/versions.txt" 2>&1

LOAD1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$LOAD1" 'BEGIN { exit !(l > 0.5) }'; then
  log "warning: load average is $LOAD1 before the run: something else is busy; figures will be noisy"
fi
echo "loadavg-before $LOAD1" >>"$RES/versions.txt"

# ------------------------------------------------------------------ start
log "results in ${RES#"$REPO"/}; load+upstream on CPU $LOADCPU, proxy on CPU $PEERCPU"
"$NGINX" -t -q -e "$LOGS/nginx-upstream.err" -p "$RUN" -c "$GEN/nginx-upstream.conf" ||
  die "nginx rejected $GEN/nginx-upstream.conf"
start upstream "$LOADCPU" "$NGINX" -e "$LOGS/nginx-upstream.err" -p "$RUN" -c "$GEN/nginx-upstream.conf" -g 'daemon off;'
wait_port "$UP_PORT" "${PID_OF[upstream]}" || die "upstream nginx did not listen on $UP_PORT (see $LOGS)"
PID_OF[direct]=${PID_OF[upstream]}

if want nginx; then
  "$NGINX" -t -q -e "$LOGS/nginx-proxy.err" -p "$RUN" -c "$GEN/nginx-proxy.conf" ||
    die "nginx rejected $GEN/nginx-proxy.conf"
  start nginx "$PEERCPU" "$NGINX" -e "$LOGS/nginx-proxy.err" -p "$RUN" -c "$GEN/nginx-proxy.conf" -g 'daemon off;'
  wait_port "$NGINX_PORT" "${PID_OF[nginx]}" || die "nginx proxy did not listen on $NGINX_PORT (see $LOGS)"
fi

if want apigate; then
  if [ ! -x "$APIGATE" ]; then
    drop apigate "$APIGATE not found (make install)"
  else
    APIGATE_BENCH_PORT=$APIGATE_PORT APIGATE_BENCH_UPSTREAM=http://127.0.0.1:$UP_PORT \
      start apigate "$PEERCPU" "$APIGATE" serve --config "$APIGATE_BENCH_CONFIG"
    if ! wait_port "$APIGATE_PORT" "${PID_OF[apigate]}"; then
      tail -n 5 "$LOGS/apigate.log" >&2 || true
      drop apigate "did not listen on $APIGATE_PORT (see ${LOGS#"$REPO"/}/apigate.log)"
    fi
  fi
fi

url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$UP_PORT$ROUTE" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT$ROUTE" ;;
    apigate) echo "http://127.0.0.1:$APIGATE_PORT$ROUTE" ;;
  esac
}

# ------------------------------------------------------------------ preflight: 200 and the 52-byte body
: >"$RES/preflight.txt"
for p in $PEERS; do
  got=$(curl -s -m 5 -o "$RES/preflight.$p.body" -w '%{http_code}/%{size_download}' "$(url_of "$p")" || true)
  echo "$p $got" >>"$RES/preflight.txt"
  if [ "$got" != "200/${#BODY}" ] || [ "$(cat "$RES/preflight.$p.body")" != "$BODY" ]; then
    drop "$p" "preflight GET $ROUTE returned '$got', expected 200 with the ${#BODY}-byte body"
  fi
done
want direct || want nginx || want apigate || die "no peer left to measure"

# ------------------------------------------------------------------ rounds
WRK_TIMEOUT=$((WARMUP + DURATION + 30))
HZ=$(getconf CLK_TCK)
# busy time of all CPUs: user+nice+system+irq+softirq+steal (process times include the softirq
# work done in their context, so it must be counted here too)
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# `times` (a builtin, called in this shell, not in a $(...) subshell) writes the CPU time of the
# children this shell has waited for (wrk); children_ticks FILE converts its second line to ticks
children_ticks() {
  awk -v hz="$HZ" 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }
                             printf "%d\n", s * hz + 0.5 }' "$1"
}
run_wrk() { # peer round
  local p=$1 r=$2 u out c0 c1 up0 up1 b0 b1 w0 w1 t0 t1 tw0 tw1 ours
  u=$(url_of "$p")
  out=$RES/wrk.$p.$r.txt
  if [ "$WARMUP" -gt 0 ]; then
    timeout --foreground -k 5 "$WRK_TIMEOUT" taskset -c "$LOADCPU" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "$u" >/dev/null 2>&1 || true
  fi
  tw0=$(ss -Htn state time-wait "( dport = :$UP_PORT )" | wc -l)
  c0=$(cpu_ticks "${PID_OF[$p]}")
  up0=$(cpu_ticks "${PID_OF[upstream]}")
  b0=$(busy_ticks)
  times >"$RUN/times.0"
  t0=$EPOCHREALTIME
  if ! timeout --foreground -k 5 "$WRK_TIMEOUT" taskset -c "$LOADCPU" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$u" >"$out" 2>&1; then
    log "round $r $p: wrk failed (see ${out#"$REPO"/})"
  fi
  t1=$EPOCHREALTIME
  times >"$RUN/times.1"
  b1=$(busy_ticks)
  w0=$(children_ticks "$RUN/times.0")
  w1=$(children_ticks "$RUN/times.1")
  up1=$(cpu_ticks "${PID_OF[upstream]}")
  c1=$(cpu_ticks "${PID_OF[$p]}")
  tw1=$(ss -Htn state time-wait "( dport = :$UP_PORT )" | wc -l)
  # CPU used by anything but wrk, the upstream and the peer: other work on a shared machine
  ours=$(((up1 - up0) + (w1 - w0)))
  if [ "$p" != direct ]; then ours=$((ours + c1 - c0)); fi
  {
    echo "cpu_ticks $((c1 - c0)) hz $HZ wall $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
    echo "other_cpu_ticks $((b1 - b0 - ours))"
    echo "upstream_timewait_delta $((tw1 - tw0))"
  } >>"$out"
  log "round $r $p: $(grep -E 'Requests/sec' "$out" | xargs) $(grep -E 'Non-2xx|Socket errors' "$out" | xargs)"
}

for r in $(seq "$ROUNDS"); do
  order=$PEERS
  if [ $((r % 2)) = 0 ]; then order=$(echo "$PEERS" | tr ' ' '\n' | tac | xargs); fi
  for p in $order; do
    if ! alive "${PID_OF[$p]}"; then
      drop "$p" "process exited during the run (see ${LOGS#"$REPO"/})"
      continue
    fi
    run_wrk "$p" "$r"
  done
done

echo "loadavg-after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/versions.txt"

# ------------------------------------------------------------------ table
# shellcheck disable=SC2086  # peer list
report "$RES" $REQUESTED_PEERS | tee "$RES/table.txt"
echo
sed -n '1,4p' "$RES/versions.txt"
log "raw results in ${RES#"$REPO"/}"
if [ ${#DROPPED[@]} -gt 0 ]; then
  for d in "${DROPPED[@]}"; do log "not measured: $d"; done
  exit 1
fi
