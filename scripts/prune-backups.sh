#!/usr/bin/env bash
# Apply the backup retention policy (guide §4.5).
#
#   scripts/prune-backups.sh --dest s3://BUCKET/PREFIX/ [--endpoint-url URL] [--dry-run]
#
# Keeps the newest backup per hour for 7 days, per day for 30 days, per month for a year;
# deletes the rest. deploy/backup/s3-lifecycle.json expires whatever is older than that.
#
# The logic is `apigate backup prune` (src/apigate/ops/); this script only finds apigate and runs it.
# --help lists every option. Exit 0 done; 1 a step failed (one line on stderr names it);
# 2 bad usage. docs/OPERATIONS.md explains the procedure, docs/RUNBOOK.md when to use it.
set -euo pipefail
# shellcheck source=scripts/lib/apigate.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apigate.sh"
run_apigate backup prune "$@"
