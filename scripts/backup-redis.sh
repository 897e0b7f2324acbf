#!/usr/bin/env bash
# Back up a live Redis to S3 (guide §4.2.1, done right).
#
#   scripts/backup-redis.sh --redis-url redis://HOST:PORT[/DB] --dest s3://BUCKET/PREFIX/ [--endpoint-url URL]
#
# Streams a consistent snapshot over the replication protocol (redis-cli --rdb: no access
# to the Redis host's disk), checks it with redis-check-rdb, uploads
# redis-backup-YYYYmmdd-HHMMSS.rdb with its SHA-256, then redis-backup-latest.rdb.
# Needs redis-cli and redis-check-rdb (Debian: redis-tools); S3 credentials from AWS_*.
#
# The logic is `apigate backup redis` (src/apigate/ops/); this script only finds apigate and runs it.
# --help lists every option. Exit 0 done; 1 a step failed (one line on stderr names it);
# 2 bad usage. docs/OPERATIONS.md explains the procedure, docs/RUNBOOK.md when to use it.
set -euo pipefail
# shellcheck source=scripts/lib/apigate.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apigate.sh"
run_apigate backup redis "$@"
