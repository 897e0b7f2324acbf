"""Redis restores: download, verify (checksum and redis-check-rdb), install, check.

Two traps the guide's §4.3.3 walks into, and how they are handled here:

* With AOF on, Redis loads the AOF at startup and ignores dump.rdb; with AOF on and no
  AOF at all, Redis 7 starts *empty* and writes an empty AOF base. So the AOF directory
  is moved aside (kept as `<name>.pre-restore-<time>`), and when the Redis that will
  load the data runs with `appendonly yes`, a new AOF is seeded whose base *is* the
  restored snapshot (Redis 7 multi-part AOF: `<appendfilename>.1.base.rdb` plus a
  one-line manifest). The manual alternative (start with `--appendonly no`, check
  DBSIZE, `CONFIG SET appendonly yes`, wait for the rewrite) is `restore verify
  --enable-aof`.
* A running Redis saves on shutdown (and on its `save` points) over a dump.rdb copied in
  under it. In a data directory the Redis must be stopped; in a pod, saving and AOF are
  switched off with CONFIG SET before the file is moved into place, and the server is
  stopped with SHUTDOWN NOSAVE (the container restarts on the restored file).

Pod restores go through `$KUBECTL` (default `kubectl`; a test puts a recording stand-in
there): the gateway is scaled to 0 first (§4.3.3; an HPA does not act on a Deployment at
0 replicas) and back to its previous replica count at the end.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apigate.ops.errors import OpsError, one_line, redact_url
from apigate.ops.redis_backup import TIMESTAMP_FORMAT, check_rdb
from apigate.ops.s3 import S3, S3Url, parse_s3_url, sha256_file

AOF_MODES = ("auto", "yes", "no")
POD_TIMEOUT_S = 180


@dataclass(frozen=True)
class Fetched:
    path: Path
    source: S3Url
    sha256: str
    keys: int | None  # as counted when the backup was taken
    taken_at: float | None


def fetch_verified(source: str, directory: Path, endpoint_url: str | None = None) -> Fetched:
    """Download the snapshot into `directory` and prove it is the one that was uploaded."""
    url = parse_s3_url(source)
    if not url.key or url.key.endswith("/"):
        raise OpsError(f"--source must name an object, not a prefix: {source}")
    s3 = S3(endpoint_url)
    path = directory / "dump.rdb.download"
    meta = s3.download(url, path)
    expected = meta.get("sha256")
    if expected is None:  # uploaded by something else: fall back to the sidecar
        side = directory / "dump.rdb.sha256"
        s3.download(S3Url(url.bucket, url.key + ".sha256"), side)
        expected = side.read_text().split()[0] if side.read_text().strip() else ""
    actual = sha256_file(path)
    if actual != expected:
        raise OpsError(f"checksum mismatch for {url}: expected {expected}, got {actual}")
    check_rdb(path)
    keys = int(meta["keys"]) if meta.get("keys", "").isdigit() else None
    taken = float(meta["taken-at"]) if meta.get("taken-at") else None
    return Fetched(path, url, actual, keys, taken)


def seed_aof(directory: Path, rdb: Path, appendfilename: str) -> None:
    """A Redis 7 AOF directory whose base is `rdb`, so that `appendonly yes` loads it."""
    directory.mkdir()
    base = f"{appendfilename}.1.base.rdb"
    with open(rdb, "rb") as src, open(directory / base, "wb") as dst:
        while chunk := src.read(1024 * 1024):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    (directory / f"{appendfilename}.manifest").write_text(f"file {base} seq 1 type b\n")


def install_into_dir(
    rdb: Path,
    data_dir: Path,
    appendonly: str = "auto",
    dbfilename: str = "dump.rdb",
    appenddirname: str = "appendonlydir",
    appendfilename: str = "appendonly.aof",
) -> list[str]:
    """Install `rdb` as the data directory's snapshot (Redis must be stopped). Returns what was done.

    appendonly: "yes" the Redis that loads it runs with AOF (seed an AOF from the snapshot),
    "no" it does not, "auto" yes when the directory already holds an AOF.
    """
    if appendonly not in AOF_MODES:
        raise OpsError(f"--appendonly must be one of {', '.join(AOF_MODES)}")
    data_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime(TIMESTAMP_FORMAT, time.gmtime())
    done: list[str] = []
    had_aof = False
    for name in (appenddirname, appendfilename):  # Redis 7 directory, Redis <= 6 single file
        old = data_dir / name
        if old.exists():
            had_aof = True
            aside = data_dir / f"{name}.pre-restore-{stamp}"
            old.rename(aside)
            done.append(f"moved {old} aside to {aside.name}")
    target = data_dir / dbfilename
    if target.exists():
        aside = data_dir / f"{dbfilename}.pre-restore-{stamp}"
        target.rename(aside)
        done.append(f"moved the old {dbfilename} aside to {aside.name}")
    tmp = data_dir / f".{dbfilename}.restore-tmp"
    with open(rdb, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(1024 * 1024):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    tmp.rename(target)
    done.append(f"installed {target}")
    if appendonly == "yes" or (appendonly == "auto" and had_aof):
        seed_aof(data_dir / appenddirname, target, appendfilename)
        done.append(f"seeded {data_dir / appenddirname} from the snapshot (for appendonly yes)")
    return done


# --------------------------------------------------------------------------- verify
def info(client: object, section: str) -> dict[str, object]:
    import redis

    assert isinstance(client, redis.Redis)
    result: dict[str, object] = client.info(section)
    return result


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise OpsError(f"{what} did not happen within {timeout_s:g}s")
        time.sleep(0.1)


def verify_redis(redis_url: str, expect_keys: int | None, enable_aof: bool, timeout_s: float) -> list[str]:
    """DBSIZE (over all databases) against the backup's count; optionally switch AOF on."""
    import redis

    from apigate.ops.redis_backup import count_keys

    report: list[str] = []
    have = count_keys(redis_url)
    report.append(f"keys: {have}" + (f" (the backup had {expect_keys})" if expect_keys is not None else ""))
    if expect_keys is not None and have < expect_keys:
        # Keys with a TTL may have expired since the snapshot; none at all is a failed restore.
        if have == 0:
            raise OpsError(f"Redis at {redact_url(redis_url)} has 0 keys; the backup had {expect_keys}")
        report.append(f"warning: {expect_keys - have} fewer keys than the backup (expired TTLs?)")
    if not enable_aof:
        return report
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        client.config_set("appendonly", "yes")

        def rewritten() -> bool:
            p = info(client, "persistence")
            return (
                p.get("aof_enabled") == 1
                and p.get("aof_rewrite_in_progress") == 0
                and p.get("aof_rewrite_scheduled") == 0
            )

        wait_for(rewritten, timeout_s, "the AOF rewrite")
        status = info(client, "persistence").get("aof_last_bgrewrite_status")
        if status != "ok":
            raise OpsError(f"AOF rewrite on {redact_url(redis_url)} ended with status {status}")
        report.append("AOF enabled and rewritten from the restored data")
        try:
            client.config_rewrite()
            report.append("CONFIG REWRITE: appendonly yes saved in the server's config file")
        except redis.ResponseError:
            report.append("no config file: start this Redis with --appendonly yes from now on")
    except redis.RedisError as e:
        raise OpsError(f"cannot enable AOF on {redact_url(redis_url)}: {e}") from e
    finally:
        client.close()
    return report


# --------------------------------------------------------------------------- pods
class Kubectl:
    """`$KUBECTL` (may hold arguments, e.g. "kubectl --context prod") in one namespace."""

    def __init__(self, namespace: str) -> None:
        self.base = shlex.split(os.environ.get("KUBECTL", "kubectl"))
        self.namespace = namespace

    def __call__(self, *args: str, timeout: float = POD_TIMEOUT_S) -> str:
        cmd = [*self.base, "-n", self.namespace, *args]
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError as e:
            raise OpsError(f"{self.base[0]} not found (install kubectl or set KUBECTL)") from e
        except subprocess.TimeoutExpired as e:
            raise OpsError(f"kubectl {args[0]} did not finish within {timeout:g}s") from e
        if out.returncode != 0:
            raise OpsError(f"kubectl {' '.join(args[:2])} failed: {one_line(out.stderr + out.stdout)}")
        return out.stdout


# Runs inside the Redis container (sh -c). $1 = the uploaded file's name in Redis's dir.
POD_INSTALL = r"""
set -eu
if [ -n "${REDIS_PASSWORD:-}" ]; then export REDISCLI_AUTH="$REDIS_PASSWORD"; fi
get() { redis-cli --raw CONFIG GET "$1" | sed -n 2p; }
dir=$(get dir); db=$(get dbfilename); aof=$(get appendonly)
adir=$(get appenddirname); afile=$(get appendfilename)
cd "$dir"
if [ "$aof" = yes ] && [ -z "$adir" ]; then
  echo "this Redis has AOF on but no appenddirname (Redis < 7): restore it by hand, see docs/RUNBOOK.md" >&2
  exit 1
fi
redis-cli CONFIG SET save "" >/dev/null
redis-cli CONFIG SET appendonly no >/dev/null
stamp=$(date -u +%Y%m%d-%H%M%S)
for f in "$adir" "$afile" "$db"; do
  if [ -n "$f" ] && [ -e "$f" ]; then mv "$f" "$f.pre-restore-$stamp"; fi
done
mv "$1" "$db"
if [ "$aof" = yes ]; then
  mkdir "$adir"
  cp "$db" "$adir/$afile.1.base.rdb"
  printf 'file %s seq 1 type b\n' "$afile.1.base.rdb" >"$adir/$afile.manifest"
fi
echo "installed $dir/$db (appendonly $aof); stopping Redis without saving"
redis-cli SHUTDOWN NOSAVE >/dev/null 2>&1 || true
"""


def restore_into_pod(
    fetched: Fetched,
    target: str,
    deployment: str = "api-gateway",
    selector: str = "app=api-gateway",
    timeout_s: float = POD_TIMEOUT_S,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Install the snapshot into NAMESPACE/POD's Redis and restart it on the restored file."""
    namespace, _, pod = target.partition("/")
    if not namespace or not pod:
        raise OpsError(f"--pod must be NAMESPACE/POD, e.g. production/redis-master-0 (got {target!r})")
    k = Kubectl(namespace)
    replicas = k("get", f"deployment/{deployment}", "-o", "jsonpath={.spec.replicas}").strip() or "0"
    say(f"scaling deployment/{deployment} from {replicas} to 0 replicas (no writes during the restore)")
    k("scale", f"deployment/{deployment}", "--replicas=0")
    try:
        _wait_gone(k, selector, timeout_s)
        redis_dir = k("exec", pod, "--", "redis-cli", "--raw", "CONFIG", "GET", "dir").split()[-1]
        name = "dump.rdb.restore"
        say(f"copying {fetched.source} into {namespace}/{pod}:{redis_dir}/{name}")
        k("cp", str(fetched.path), f"{namespace}/{pod}:{redis_dir}/{name}", timeout=timeout_s)
        say(k("exec", pod, "--", "sh", "-c", POD_INSTALL, "restore", name).strip())
        k(
            "wait",
            "--for=condition=ready",
            f"pod/{pod}",
            f"--timeout={int(timeout_s)}s",
            timeout=timeout_s + 10,
        )
        have = _pod_dbsize(k, pod, timeout_s)
    except OpsError as e:
        raise OpsError(
            f"{e}; the gateway is still at 0 replicas: kubectl -n {namespace} scale "
            f"deployment/{deployment} --replicas={replicas} once Redis is back"
        ) from e
    report = [
        f"{namespace}/{pod}: {have} keys"
        + (f" (the backup had {fetched.keys})" if fetched.keys is not None else "")
    ]
    if fetched.keys and have == 0:
        raise OpsError(
            f"{namespace}/{pod} came back with 0 keys (the backup had {fetched.keys}); the gateway is "
            f"still at 0 replicas"
        )
    k("scale", f"deployment/{deployment}", f"--replicas={replicas}")
    report.append(f"deployment/{deployment} scaled back to {replicas} replicas")
    return report


def _wait_gone(k: Kubectl, selector: str, timeout_s: float) -> None:
    """Until the gateway's pods are gone (none left at all is fine too)."""
    try:
        k(
            "wait",
            "--for=delete",
            "pod",
            "-l",
            selector,
            f"--timeout={int(timeout_s)}s",
            timeout=timeout_s + 10,
        )
    except OpsError as e:
        if "no matching resources" not in str(e):
            raise


def _pod_dbsize(k: Kubectl, pod: str, timeout_s: float) -> int:
    """Keys in every database (INFO keyspace) once the restarted Redis answers (it may be loading)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            out = k("exec", pod, "--", "redis-cli", "--raw", "INFO", "keyspace")
            if "# Keyspace" in out:
                return sum(int(m) for m in re.findall(r"^db\d+:keys=(\d+)", out, re.MULTILINE))
        except OpsError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise OpsError(f"Redis in {pod} did not answer INFO keyspace within {timeout_s:g}s")
        time.sleep(1)


def restore_redis(
    source: str,
    endpoint_url: str | None,
    data_dir: Path | None,
    pod: str | None,
    appendonly: str = "auto",
    say: Callable[[str], None] = print,
) -> Fetched:
    with tempfile.TemporaryDirectory(prefix="apigate-redis-restore-") as tmp:
        fetched = fetch_verified(source, Path(tmp), endpoint_url)
        say(f"verified {fetched.source}: sha256 {fetched.sha256}, redis-check-rdb OK")
        if data_dir is not None:
            for line in install_into_dir(fetched.path, data_dir, appendonly):
                say(line)
            say(
                f"next: start redis-server --dir {data_dir}, then: apigate restore verify --redis-url URL"
                + (f" --expect-keys {fetched.keys}" if fetched.keys is not None else "")
            )
        else:
            assert pod is not None
            for line in restore_into_pod(fetched, pod, say=say):
                say(line)
        return fetched
