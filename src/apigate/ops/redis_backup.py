"""Redis backups: a consistent snapshot over the network, checked, uploaded with its checksum.

Why `redis-cli --rdb` and not the guide's BGSAVE + `kubectl cp`: it asks the server for
the snapshot it would send a new replica (REPLCONF rdb-only + SYNC) and streams it here,
so it needs no access to the Redis host's disk, no kubectl, and it cannot copy a
half-written dump.rdb. (The guide's loop also compares LASTSAVE with a `$LASTSAVE` it
never set, and LASTSAVE has one-second resolution; docs/OPERATIONS.md lists the fixes.)

What gets uploaded, under the destination prefix, in this order:

    redis-backup-YYYYmmdd-HHMMSS.rdb          the snapshot (metadata: sha256, keys, taken)
    redis-backup-YYYYmmdd-HHMMSS.rdb.sha256   `sha256sum -c` format
    redis-backup-latest.rdb (+ .sha256)       a server-side copy: what a restore takes by default

Each object is one PUT, so a failure leaves no partial object; if the sidecar fails, the
snapshot just uploaded is deleted again; "latest" moves only after both are there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from apigate.ops.errors import OpsError, one_line, redact_url
from apigate.ops.s3 import S3, S3Url, parse_s3_url, sha256_file

BACKUP_PREFIX = "redis-backup-"
LATEST_NAME = "redis-backup-latest.rdb"
TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
SNAPSHOT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RedisBackup:
    url: S3Url
    latest: S3Url
    size: int
    keys: int
    sha256: str
    taken_at: float  # time.time() when the snapshot had arrived


def tool(name: str, env: str) -> str:
    """A Redis tool's path: $REDIS_CLI / $REDIS_CHECK_RDB, else PATH, else /usr/bin."""
    path = (
        os.environ.get(env)
        or shutil.which(name)
        or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    )
    if path is None:
        raise OpsError(f"{name} not found (install redis-tools, or set {env})")
    return path


def cli_args(redis_url: str) -> tuple[list[str], dict[str, str]]:
    """redis-cli arguments for a URL, and the environment that carries its password.

    The password goes in REDISCLI_AUTH, never on the command line where `ps` shows it.
    """
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise OpsError(f"not a Redis URL: {redact_url(redis_url)!r} (expected redis://HOST:PORT[/DB])")
    env = dict(os.environ)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    if parts.password is not None:
        env["REDISCLI_AUTH"] = parts.password
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return ["-u", clean], env


def count_keys(redis_url: str) -> int:
    """Keys in every database (INFO keyspace); an unreachable Redis is an OpsError."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        info = client.info("keyspace")
    except redis.RedisError as e:
        raise OpsError(f"cannot reach Redis at {redact_url(redis_url)}: {e}") from e
    finally:
        client.close()
    return sum(int(db.get("keys", 0)) for db in info.values() if isinstance(db, dict))


def run_tool(
    cmd: list[str], what: str, timeout_s: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a Redis tool; not finishing within `timeout_s` is an OpsError naming `what`."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        raise OpsError(f"{what} did not finish within {timeout_s:g}s") from e


def snapshot(redis_url: str, dest: Path, timeout_s: float = SNAPSHOT_TIMEOUT_S) -> None:
    """Stream an RDB snapshot of the server into `dest` (redis-cli --rdb)."""
    args, env = cli_args(redis_url)
    what = f"snapshot of {redact_url(redis_url)}"
    out = run_tool([tool("redis-cli", "REDIS_CLI"), *args, "--rdb", str(dest)], what, timeout_s, env)
    if out.returncode != 0 or not dest.exists() or dest.stat().st_size == 0:
        raise OpsError(f"{what} failed: {one_line(out.stderr + out.stdout)}")


def check_rdb(path: Path) -> None:
    """redis-check-rdb must say the file is a complete, valid RDB."""
    cmd = [tool("redis-check-rdb", "REDIS_CHECK_RDB"), str(path)]
    out = run_tool(cmd, f"redis-check-rdb {path.name}", SNAPSHOT_TIMEOUT_S)
    if out.returncode != 0:
        raise OpsError(f"redis-check-rdb rejected {path.name}: {one_line(out.stdout + out.stderr)}")


def sidecar(sha256: str, name: str) -> bytes:
    return f"{sha256}  {name}\n".encode()


def backup_redis(redis_url: str, dest: str, endpoint_url: str | None = None) -> RedisBackup:
    """Snapshot, check and upload; returns what was uploaded. Raises OpsError on any failure."""
    prefix = parse_s3_url(dest)
    keys = count_keys(redis_url)
    s3 = S3(endpoint_url)
    with tempfile.TemporaryDirectory(prefix="apigate-redis-backup-") as tmp:
        rdb = Path(tmp) / "dump.rdb"
        snapshot(redis_url, rdb)
        taken_at = time.time()
        check_rdb(rdb)
        digest = sha256_file(rdb)
        name = BACKUP_PREFIX + time.strftime(TIMESTAMP_FORMAT, time.gmtime(taken_at)) + ".rdb"
        target = prefix.child(name)
        meta = {"keys": str(keys), "taken-at": f"{taken_at:.3f}"}
        s3.put_file(target, rdb, digest, meta)
        try:
            s3.put_bytes(prefix.child(name + ".sha256"), sidecar(digest, name))
        except OpsError:
            s3.delete(target)
            raise
        latest = prefix.child(LATEST_NAME)
        s3.copy(target, latest)
        s3.put_bytes(prefix.child(LATEST_NAME + ".sha256"), sidecar(digest, LATEST_NAME))
        return RedisBackup(target, latest, rdb.stat().st_size, keys, digest, taken_at)
