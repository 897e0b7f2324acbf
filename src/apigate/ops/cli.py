"""`apigate backup|restore|diagnose|capacity`: the operations commands.

Registered on cli.py's subparsers by `add_commands`; each sets `ops(args) -> int`, which
needs no gateway configuration file (the commands talk to Redis, S3, kubectl and a
running gateway). Exit codes: 0 done, 1 a step failed (one line on stderr naming it, no
traceback, no password), 2 bad usage; `diagnose` has its own (see ops/diagnose.py).
The scripts in scripts/ are thin bash wrappers around these commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apigate.ops.errors import OpsError

EXIT_FAILED = 1
EXIT_USAGE = 2
Handler = Callable[[argparse.Namespace], int]


def _guarded(name: str, fn: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except OpsError as e:
            print(f"{name}: {e}", file=sys.stderr)
            return EXIT_FAILED
        except BrokenPipeError:  # `... | head` closed the pipe: nothing more to say
            sys.stderr.close()
            return EXIT_FAILED
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # an unforeseen failure still gets one line, not a traceback
            from apigate.ops.errors import one_line

            print(f"{name}: {type(e).__name__}: {one_line(str(e))}", file=sys.stderr)
            return EXIT_FAILED

    return run


def _endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (MinIO, moto...); default: AWS S3")


def add_commands(sub: Any) -> None:
    """Register backup, restore, diagnose and capacity on cli.py's subparsers."""
    from apigate.ops import capacity, diagnose

    p = sub.add_parser(
        "backup",
        help="back up Redis or the Kubernetes config to S3; prune old backups",
        description="Backups to S3 (docs/OPERATIONS.md, Backup and recovery).",
    )
    kinds = p.add_subparsers(dest="backup_kind", metavar="KIND", required=True)
    r = kinds.add_parser(
        "redis",
        help="snapshot a live Redis (redis-cli --rdb), check it, upload it",
        description="Stream a consistent RDB snapshot from a live Redis, check it with "
        "redis-check-rdb and upload it as redis-backup-YYYYmmdd-HHMMSS.rdb and "
        "redis-backup-latest.rdb, each with its SHA-256. Wrapped by scripts/backup-redis.sh.",
    )
    r.add_argument("--redis-url", required=True, metavar="URL", help="redis://[:PASSWORD@]HOST:PORT[/DB]")
    r.add_argument("--dest", required=True, metavar="S3URL", help="s3://BUCKET/PREFIX/")
    _endpoint(r)
    r.set_defaults(ops=_guarded("backup-redis", cmd_backup_redis))
    from apigate.ops import config_backup, prune

    config_backup.add_command(kinds, _guarded, _endpoint)
    prune.add_command(kinds, _guarded, _endpoint)

    p = sub.add_parser(
        "restore",
        help="restore Redis from a backup; verify; run the recovery drill",
        description="Restores (docs/RUNBOOK.md, Redis Recovery).",
    )
    kinds = p.add_subparsers(dest="restore_kind", metavar="KIND", required=True)
    r = kinds.add_parser(
        "redis",
        help="download, verify and install a Redis backup",
        description="Download a backup, verify its SHA-256 and redis-check-rdb, and install "
        "it as dump.rdb into a data directory (Redis stopped) or into a pod through kubectl "
        "(the gateway is scaled to 0 meanwhile). Wrapped by scripts/restore-redis.sh.",
    )
    r.add_argument(
        "--source",
        required=True,
        metavar="S3URL",
        help="s3://BUCKET/PREFIX/redis-backup-latest.rdb or a timestamped backup",
    )
    _endpoint(r)
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, metavar="DIR", help="Redis data directory (Redis stopped)")
    where.add_argument(
        "--pod", metavar="NAMESPACE/POD", help="e.g. production/redis-master-0 (uses $KUBECTL)"
    )
    r.add_argument(
        "--appendonly",
        choices=("auto", "yes", "no"),
        default="auto",
        help="--data-dir only: will the Redis loading it run with AOF? (auto: if the directory "
        "had an AOF) yes seeds a new AOF from the snapshot",
    )
    r.set_defaults(ops=_guarded("restore-redis", cmd_restore_redis))
    v = kinds.add_parser(
        "verify",
        help="check a restored Redis (DBSIZE); optionally switch AOF back on",
        description="Count the keys of a restored Redis against the backup's count and, with "
        "--enable-aof, run CONFIG SET appendonly yes and wait for the AOF rewrite.",
    )
    v.add_argument("--redis-url", required=True, metavar="URL")
    v.add_argument(
        "--expect-keys", type=int, metavar="N", help="keys in the backup (restore redis prints it)"
    )
    v.add_argument(
        "--enable-aof", action="store_true", help="CONFIG SET appendonly yes and wait for the rewrite"
    )
    v.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS", help="for the rewrite (300)")
    v.set_defaults(ops=_guarded("restore-verify", cmd_restore_verify))
    from apigate.ops import drill

    drill.add_command(kinds, _guarded, _endpoint)
    diagnose.add_command(sub, _guarded)
    capacity.add_command(sub, _guarded)


def cmd_backup_redis(args: argparse.Namespace) -> int:
    from apigate.ops.redis_backup import backup_redis

    done = backup_redis(args.redis_url, args.dest, args.endpoint_url)
    print(
        f"uploaded {done.url} ({done.size} bytes, {done.keys} keys, sha256 {done.sha256}) and {done.latest}"
    )
    return 0


def cmd_restore_redis(args: argparse.Namespace) -> int:
    from apigate.ops.redis_restore import restore_redis

    restore_redis(args.source, args.endpoint_url, args.data_dir, args.pod, args.appendonly)
    return 0


def cmd_restore_verify(args: argparse.Namespace) -> int:
    from apigate.ops.redis_restore import verify_redis

    for line in verify_redis(args.redis_url, args.expect_keys, args.enable_aof, args.timeout):
        print(line)
    return 0
