#!/usr/bin/env bash
# Restore Redis from a backup (guide §4.3.3, done right).
#
#   scripts/restore-redis.sh --source s3://BUCKET/KEY [--endpoint-url URL] (--data-dir DIR | --pod NAMESPACE/POD)
#
# Downloads, verifies the SHA-256 and redis-check-rdb, installs dump.rdb into a stopped
# Redis's data directory, or into a pod through $KUBECTL (default kubectl) with the
# gateway scaled to 0 meanwhile. AOF is moved aside and re-seeded from the snapshot.
#
# The logic is `apigate restore redis` (src/apigate/ops/); this script only finds apigate and runs it.
# --help lists every option. Exit 0 done; 1 a step failed (one line on stderr names it);
# 2 bad usage. docs/OPERATIONS.md explains the procedure, docs/RUNBOOK.md when to use it.
set -euo pipefail
# shellcheck source=scripts/lib/apigate.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apigate.sh"
run_apigate restore redis "$@"
