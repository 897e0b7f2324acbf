#!/usr/bin/env bash
# Back up the gateway's Kubernetes configuration to S3 (guide §4.1.2, done right).
#
#   scripts/backup-config.sh [--namespace production] --dest s3://BUCKET/PREFIX/ [--endpoint-url URL] [--dry-run]
#
# Exports the ConfigMap, Deployment, Services, HPA and PDB through $KUBECTL; Secrets are
# encrypted with openssl and $BACKUP_ENCRYPTION_KEY (or, with --secrets names, only their
# names and keys are kept). Uploads s3://.../YYYYmmdd-HHMMSS/ with SHA256SUMS.
#
# The logic is `apigate backup config` (src/apigate/ops/); this script only finds apigate and runs it.
# --help lists every option. Exit 0 done; 1 a step failed (one line on stderr names it);
# 2 bad usage. docs/OPERATIONS.md explains the procedure, docs/RUNBOOK.md when to use it.
set -euo pipefail
# shellcheck source=scripts/lib/apigate.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apigate.sh"
run_apigate backup config "$@"
