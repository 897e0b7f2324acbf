"""`apigate backup prune`: the §4.5 retention (wrapped by scripts/prune-backups.sh).

Keeps the newest backup of each hour for 7 days, of each day for 30 days and of each
month for a year; deletes the rest. A "backup" is every object whose key carries the same
`YYYYmmdd-HHMMSS` stamp (a Redis snapshot and its .sha256, or one config export's
files); objects without a stamp (redis-backup-latest.rdb) are never touched. The S3
lifecycle rules in deploy/backup/s3-lifecycle.json are the backstop: they expire
anything older than a year even if this never runs.
"""

from __future__ import annotations

import argparse
import calendar
import re
import time
from collections.abc import Callable
from typing import Any

from apigate.ops.errors import OpsError
from apigate.ops.redis_backup import TIMESTAMP_FORMAT
from apigate.ops.s3 import S3, S3Url, parse_s3_url

STAMP = re.compile(r"(\d{8}-\d{6})")
DAY = 86400
TIERS = ((7 * DAY, "%Y%m%d%H"), (30 * DAY, "%Y%m%d"), (365 * DAY, "%Y%m"))  # (max age, bucket)


def parse_stamp(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, TIMESTAMP_FORMAT)))


def plan_prune(stamps: list[str], now: float) -> tuple[set[str], set[str]]:
    """(keep, delete) among the backup stamps: the newest per hour/day/month in each tier."""
    keep: set[str] = set()
    seen: set[tuple[int, str]] = set()
    for stamp in sorted(set(stamps), reverse=True):  # newest first: it claims its bucket
        t = parse_stamp(stamp)
        age = now - t
        if age < 0:
            keep.add(stamp)
            continue
        for tier, (max_age, fmt) in enumerate(TIERS):
            if age <= max_age:
                bucket = (tier, time.strftime(fmt, time.gmtime(t)))
                if bucket not in seen:
                    seen.add(bucket)
                    keep.add(stamp)
                break
    return keep, set(stamps) - keep


def prune(
    dest: str, endpoint_url: str | None, dry_run: bool, now: float, say: Callable[[str], None] = print
) -> list[str]:
    prefix = parse_s3_url(dest)
    s3 = S3(endpoint_url)
    keys = s3.list(prefix)
    by_stamp: dict[str, list[str]] = {}
    for key in keys:
        m = STAMP.search(key[len(prefix.key) :])
        if m is not None:
            by_stamp.setdefault(m.group(1), []).append(key)
    keep, delete = plan_prune(list(by_stamp), now)
    deleted: list[str] = []
    for stamp in sorted(delete):
        for key in sorted(by_stamp[stamp]):
            say(("would delete " if dry_run else "deleting ") + f"s3://{prefix.bucket}/{key}")
            if not dry_run:
                s3.delete(S3Url(prefix.bucket, key))
            deleted.append(key)
    say(
        f"kept {len(keep)} backup(s), {'would delete' if dry_run else 'deleted'} {len(delete)} "
        f"({len(deleted)} object(s)) under {prefix}"
    )
    return deleted


def cmd_prune(args: argparse.Namespace) -> int:
    now = time.time()
    if args.now:
        try:
            now = parse_stamp(args.now)
        except ValueError:
            raise OpsError(f"--now must be YYYYmmdd-HHMMSS (UTC), got {args.now!r}") from None
    prune(args.dest, args.endpoint_url, args.dry_run, now)
    return 0


def add_command(kinds: Any, guarded: Callable[..., Any], endpoint: Callable[[Any], None]) -> None:
    c = kinds.add_parser(
        "prune",
        help="delete old backups: hourly for 7 days, daily for 30, monthly for a year",
        description="Apply the retention policy (guide §4.5) to the backups under a prefix. "
        "Wrapped by scripts/prune-backups.sh.",
    )
    c.add_argument("--dest", required=True, metavar="S3URL", help="s3://BUCKET/PREFIX/ holding the backups")
    endpoint(c)
    c.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    c.add_argument("--now", metavar="YYYYmmdd-HHMMSS", help="pretend it is this time (UTC)")
    c.set_defaults(ops=guarded("prune-backups", cmd_prune))
