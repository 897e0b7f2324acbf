#!/usr/bin/env bash
# scripts/load-test.sh -- the guide's §3.7 load tests (apigate loadtest under the guide's name).
#
#   ./load-test.sh --rps 5000 --duration 10m                       # baseline
#   ./load-test.sh --rps 20000 --duration 30m                      # capacity: 2x peak
#   ./load-test.sh --rps-start 1000 --rps-max 50000 --ramp-up 5m   # stress: find the breaking point
#   ./load-test.sh --rps 5000 --spike-rps 25000 --spike-duration 2m  # spike
#
# Open loop (latency counted from each request's due time), judged by p99 < --p99-ms (500)
# and errors < --max-error-rate % (0.1). Exit 0 PASS, 1 FAIL, 2 bad arguments. `--help` lists
# every flag; docs/LOAD_TESTING.md explains the method and the JSON report.
#
# Runs the apigate of this checkout (.venv/bin/apigate, `make install`), else `apigate` on PATH.
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")") # also through a symlink (./load-test.sh)
py=$here/../.venv/bin/python
if [ ! -x "$py" ]; then
  apigate=$(command -v apigate || true)
  if [ -z "$apigate" ]; then
    echo "load-test.sh: error: apigate is not installed (run 'make install' in the repository)" >&2
    exit 2
  fi
  py=$(head -1 "$apigate" | sed 's/^#!//')
fi
APIGATE_LOADTEST_PROG=${APIGATE_LOADTEST_PROG:-load-test.sh} exec "$py" -c \
  'import sys; from apigate.loadtest.cli import main; sys.exit(main())' "$@"
