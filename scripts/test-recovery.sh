#!/usr/bin/env bash
# The disaster-recovery drill (guide §4.4).
#
#   scripts/test-recovery.sh --local [--endpoint-url URL]        everything on this machine
#   scripts/test-recovery.sh --config-source s3://BUCKET/PREFIX/  in namespace dr-test ($KUBECTL)
#
# --local backs up a live Redis with known data, restores it into a fresh redis-server,
# starts apigate on the restored configuration, checks /health/ready and sampled keys,
# prints the measured RPO and RTO, and cleans up.
#
# The logic is `apigate restore drill` (src/apigate/ops/); this script only finds apigate and runs it.
# --help lists every option. Exit 0 done; 1 a step failed (one line on stderr names it);
# 2 bad usage. docs/OPERATIONS.md explains the procedure, docs/RUNBOOK.md when to use it.
set -euo pipefail
# shellcheck source=scripts/lib/apigate.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apigate.sh"
run_apigate restore drill "$@"
