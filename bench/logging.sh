#!/usr/bin/env bash
# bench/logging.sh -- issue 6's benchmark: the same route with logging off
# (bench/apigate-bench.yaml) and on (bench/apigate-logging.yaml: an access event per request,
# sampling_rate 1.0, to a file sink), one worker each, measured by bench/run.sh
# (PEERS="nginx apigate") in alternating runs. Prints each run's apigate req/s, the ratio
# logging on / logging off (issue target: >= 0.8), the lines written and the load average.
# Knobs: RUNS=2 (pairs), plus everything bench/run.sh reads.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-2}
OUT=bench/results/logging-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
export APIGATE_BENCH_LOG=$PWD/$OUT/gateway.log
echo "loadavg before $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
for r in $(seq "$RUNS"); do
  for cfg in bench/apigate-bench.yaml bench/apigate-logging.yaml; do
    name=$(basename "$cfg" .yaml)
    PEERS="nginx apigate" APIGATE_BENCH_CONFIG=$cfg bench/run.sh >"$OUT/run.$r.$name.txt" 2>&1 || true
    rps=$(awk '$1 == "apigate" && $2 ~ /^[0-9]+$/ { print $2; exit }' "$OUT/run.$r.$name.txt")
    ngx=$(awk '$1 == "nginx" && $2 ~ /^[0-9]+$/ { print $2; exit }' "$OUT/run.$r.$name.txt")
    other=$(awk '$1 == "apigate" && $2 ~ /^[0-9]+$/ { print $(NF-1); exit }' "$OUT/run.$r.$name.txt")
    cpu=$(awk '$1 == "apigate" && $2 ~ /^[0-9]+$/ { print $7; exit }' "$OUT/run.$r.$name.txt")
    echo "run $r $name: apigate ${rps:-?} req/s, nginx ${ngx:-?} req/s, apigate CPU ${cpu:-?} us/req, other% ${other:-?}" |
      tee -a "$OUT/summary.txt"
  done
done
lines=$(cat "$OUT"/gateway.log* 2>/dev/null | wc -l)
# Throughput ratio, and the same from CPU time per request (less sensitive to other work
# on the machine: what a dedicated core would give).
awk '/apigate-bench:/ { off += $5; c0 += $12; n++ } /apigate-logging:/ { on += $5; c1 += $12; m++ }
  END { if (n && m && off && c1) printf "logging on / off = %.2f req/s, %.2f from CPU us/req  (mean of %d runs each; issue target >= 0.80)\n", (on / m) / (off / n), (c0 / n) / (c1 / m), n }' \
  "$OUT/summary.txt" | tee -a "$OUT/summary.txt"
echo "access events written: $lines" | tee -a "$OUT/summary.txt"
rm -f "$OUT"/gateway.log*  # hundreds of MB; the count above is what matters
echo "loadavg after $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
