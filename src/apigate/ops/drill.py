"""`apigate restore drill`: the §4.4 recovery drill (wrapped by scripts/test-recovery.sh).

`--local` runs the whole chain on this machine, for real, and measures it:

1. a live redis-server gets known data: sessions (`session:<token>`, as the gateway
   stores them) and rate-limit-style keys; the gateway configuration goes to S3 too;
2. `backup redis` snapshots it to S3 (`--endpoint-url`, or a moto_server it starts);
   one more session is written *after* the snapshot: the data an RPO loses;
3. the restore: the configuration and `redis-backup-latest.rdb` come back from S3,
   verified, into a fresh data directory; a fresh redis-server starts on it;
4. DBSIZE and a sample of keys must equal the original's; apigate starts on the restored
   configuration and must answer /health/ready 200, let a restored session through
   (200 from the demo upstream) and refuse the post-snapshot one (401);
5. it prints RPO (how old the snapshot was when the restore began: data written in that
   time is lost; the backup schedule adds up to one interval) and RTO (from the start of
   the restore to a ready gateway that accepts restored sessions), then cleans up.

Without `--local` it does what the guide's §4.4 script does against a cluster, through
`$KUBECTL`: namespace dr-test, the newest config backup applied there, wait for ready,
probe /health/live inside a pod, delete the namespace (also when a step failed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from apigate.ops.errors import OpsError
from apigate.ops.redis_backup import backup_redis, tool
from apigate.ops.redis_restore import Kubectl, fetch_verified, install_into_dir
from apigate.ops.s3 import S3, parse_s3_url

HOST = "127.0.0.1"
BUCKET = "apigate-drill"
START_TIMEOUT_S = 30.0
SAMPLE = 20


@dataclass(frozen=True)
class DrillResult:
    keys: int
    sampled: int
    rpo_s: float
    rto_s: float
    backup: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OpsError(f"{what} exited with status {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise OpsError(f"{what} did not listen on {port} within {timeout:g}s")


class Processes:
    """Every process the drill starts, stopped (SIGTERM, then SIGKILL) when it ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, args: list[str], port: int, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        try:
            wait_port(port, proc, name)
        except OpsError as e:
            tail = (self.workdir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise OpsError(f"{e}{': ' + tail[0] if tail else ''}") from None
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


@contextlib.contextmanager
def s3_endpoint(endpoint_url: str | None, procs: Processes) -> Iterator[str]:
    """The given S3 endpoint, or a moto_server started for the drill."""
    if endpoint_url:
        yield endpoint_url
        return
    moto = shutil.which(
        "moto_server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if moto is None:
        raise OpsError("no --endpoint-url and no moto_server to stand in for S3 (pip install 'moto[server]')")
    port = free_port()
    for var, value in (("AWS_ACCESS_KEY_ID", "drill"), ("AWS_SECRET_ACCESS_KEY", "drill")):
        os.environ.setdefault(var, value)
    procs.start("moto_server", [moto, "-H", HOST, "-p", str(port)], port)
    yield f"http://{HOST}:{port}"


def wait_loaded(redis_url: str, timeout_s: float = 120.0) -> None:
    """Until a just-started Redis has loaded its snapshot (INFO persistence loading:0)."""
    import redis

    from apigate.ops.redis_restore import wait_for

    def loaded() -> bool:
        try:
            with contextlib.closing(redis.Redis.from_url(redis_url, socket_timeout=5)) as r:
                return int(r.info("persistence").get("loading", 1)) == 0
        except redis.RedisError:
            return False

    wait_for(loaded, timeout_s, "loading the restored snapshot")


def redis_args(server: str, port: int, directory: Path, *extra: str) -> list[str]:
    return [
        server,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--dir",
        str(directory),
        "--appendonly",
        "no",
        *extra,
    ]


def seed(redis_url: str, sessions: int) -> dict[str, Any]:
    """Known data, as the gateway writes it: sessions with TTLs, rate-limit counters, a hash."""
    import redis

    from apigate.auth.sessions import KEY_PREFIX, new_token, session_claims

    r = redis.Redis.from_url(redis_url)
    expected: dict[str, Any] = {}
    with r.pipeline(transaction=False) as p:
        for i in range(sessions):
            key = KEY_PREFIX + new_token()
            value = json.dumps(session_claims(f"user-{i}", 3600, {"drill": True}))
            p.set(key, value, ex=3600)
            expected[key] = value
        for i in range(sessions):
            key = f"rl:users-list:ip:10.0.{i // 250}.{i % 250}"
            p.set(key, str(i))
            expected[key] = str(i)
        p.hset("drill:hash", mapping={"a": "1", "b": "2"})
        p.execute()
    r.close()
    return expected


def same_sample(redis_url: str, expected: dict[str, Any]) -> int:
    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = sorted(expected)[:: max(1, len(expected) // SAMPLE)]
        for key in keys:
            got = r.get(key)
            if got != expected[key]:
                raise OpsError(f"restored key {key} differs: {got!r} != {expected[key]!r}")
        if r.hgetall("drill:hash") != {"a": "1", "b": "2"}:
            raise OpsError("restored hash drill:hash differs")
        return len(keys) + 1
    finally:
        r.close()


def gateway_config(port: int, redis_url: str, upstream_port: int) -> dict[str, Any]:
    return {
        "server": {"bind_address": HOST, "port": port, "drain_timeout_secs": 2},
        "logging": {"level": "WARN", "sinks": [{"type": "stdout"}]},
        "observability": {
            "metrics_enabled": False,
            "health_checks": {"check_redis": True, "check_upstreams": True},
        },
        "auth": {"token_format": "session", "session_store": {"redis_url": redis_url}},
        "rate_limiting": {"redis_url": redis_url, "default_limit": {"limit": 100000, "window_secs": 60}},
        "upstreams": [{"id": "demo", "base_url": f"http://{HOST}:{upstream_port}"}],
        "routes": [{"id": "users", "path": "/api/*", "upstream_id": "demo", "auth_required": True}],
    }


def http_status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return 0


def local_drill(endpoint_url: str | None, sessions: int, say: Callable[[str], None]) -> DrillResult:
    import redis

    from apigate.auth.sessions import KEY_PREFIX, new_token, session_claims

    redis_server = tool("redis-server", "REDIS_SERVER")
    with tempfile.TemporaryDirectory(prefix="apigate-drill-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            with s3_endpoint(endpoint_url, procs) as endpoint:
                s3 = S3(endpoint)
                with contextlib.suppress(OpsError):  # it may exist already
                    s3._call(f"create bucket {BUCKET}", "create_bucket", Bucket=BUCKET)
                # 1. the live system
                (work / "live").mkdir()
                live_port = free_port()
                # the live Redis sends its snapshot at once (repl-diskless-sync-delay: 5 s by default)
                live = redis_args(redis_server, live_port, work / "live", "--repl-diskless-sync-delay", "0")
                procs.start("redis-live", [*live, "--save", ""], live_port)
                live_url = f"redis://{HOST}:{live_port}/0"
                expected = seed(live_url, sessions)
                up_port = free_port()
                procs.start(
                    "upstream",
                    [sys.executable, "-m", "apigate.demo.upstream", "--port", str(up_port)],
                    up_port,
                )
                gw_port = free_port()
                config = yaml.safe_dump(
                    gateway_config(gw_port, "${DRILL_REDIS_URL}", up_port), sort_keys=False
                )
                config_url = parse_s3_url(f"s3://{BUCKET}/config/apigate.yaml")
                s3.put_bytes(config_url, config.encode())
                # 2. the backup, and a write it will not contain
                done = backup_redis(live_url, f"s3://{BUCKET}/redis/", endpoint)
                say(f"backed up {done.keys} keys to {done.url}")
                lost = new_token()
                with contextlib.closing(redis.Redis.from_url(live_url)) as r:
                    r.set(KEY_PREFIX + lost, json.dumps(session_claims("late", 3600)), ex=3600)
                # 3. the restore
                restore_started = time.time()
                t0 = time.monotonic()
                fetched = fetch_verified(f"s3://{BUCKET}/redis/redis-backup-latest.rdb", work, endpoint)
                install_into_dir(fetched.path, work / "restored", appendonly="no")
                s3.download(config_url, work / "apigate.yaml")
                new_port = free_port()
                procs.start("redis-restored", redis_args(redis_server, new_port, work / "restored"), new_port)
                new_url = f"redis://{HOST}:{new_port}/0"
                wait_loaded(new_url)
                # 4. checks
                with contextlib.closing(redis.Redis.from_url(new_url)) as r:
                    have = int(r.dbsize())
                if have != done.keys:
                    raise OpsError(f"restored Redis has {have} keys, the backup had {done.keys}")
                sampled = same_sample(new_url, expected)
                env = {**os.environ, "DRILL_REDIS_URL": new_url}
                env.pop("APIGATE_CONFIG", None)
                procs.start(
                    "apigate",
                    [sys.executable, "-m", "apigate", "serve", "--config", str(work / "apigate.yaml")],
                    gw_port,
                    env,
                )
                base = f"http://{HOST}:{gw_port}"
                deadline = time.monotonic() + START_TIMEOUT_S
                while http_status(base + "/health/ready") != 200:
                    if time.monotonic() > deadline:
                        raise OpsError(
                            f"apigate on the restored Redis was not ready within {START_TIMEOUT_S:g}s"
                        )
                    time.sleep(0.05)
                token = next(k for k in sorted(expected) if k.startswith(KEY_PREFIX))[len(KEY_PREFIX) :]
                if (status := http_status(base + "/api/users", token)) != 200:
                    raise OpsError(f"a restored session was refused: {status} (expected 200)")
                rto = time.monotonic() - t0
                if (status := http_status(base + "/api/users", lost)) != 401:
                    raise OpsError(f"a session written after the snapshot answered {status} (expected 401)")
                return DrillResult(have, sampled, restore_started - done.taken_at, rto, str(done.url))
        finally:
            procs.stop_all()


def cluster_drill(
    namespace: str, config_source: str, endpoint_url: str | None, keep: bool, say: Callable[[str], None]
) -> float:
    """§4.4 against a cluster; returns the seconds until the restored gateway was ready."""
    prefix = parse_s3_url(config_source)
    s3 = S3(endpoint_url)
    keys = s3.list(prefix)
    from apigate.ops.prune import STAMP

    stamps = sorted({m.group(1) for k in keys if (m := STAMP.search(k[len(prefix.key) :]))})
    if not stamps:
        raise OpsError(f"no config backup under {prefix}")
    newest = prefix.child(stamps[-1] + "/")
    say(f"restoring {newest} into namespace {namespace}")
    k = Kubectl(namespace)
    t0 = time.monotonic()
    k("create", "namespace", namespace)
    try:
        with tempfile.TemporaryDirectory(prefix="apigate-dr-") as tmp:
            for key in sorted(key for key in keys if key.startswith(newest.key)):
                name = key.rsplit("/", 1)[-1]
                skip = ("horizontalpodautoscaler-", "poddisruptionbudget-", "cronjob-")
                if not name.endswith(".yaml") or name.startswith(skip):
                    continue
                path = Path(tmp) / name
                s3.download(parse_s3_url(f"s3://{prefix.bucket}/{key}"), path)
                obj = yaml.safe_load(path.read_text())
                obj.setdefault("metadata", {})["namespace"] = namespace
                path.write_text(yaml.safe_dump(obj, sort_keys=False))
                k("apply", "-f", str(path))
        k("wait", "--for=condition=ready", "pod", "-l", "app=api-gateway", "--timeout=120s", timeout=130)
        pod = k("get", "pod", "-l", "app=api-gateway", "-o", "jsonpath={.items[0].metadata.name}").strip()
        probe = (
            "import urllib.request as u; "
            "print(u.urlopen('http://127.0.0.1:8080/health/live', timeout=5).read().decode())"
        )
        say(f"{pod}: /health/live {k('exec', pod, '--', 'python3', '-c', probe).strip()}")
        return time.monotonic() - t0
    finally:
        if keep:
            say(f"keeping namespace {namespace} (--keep)")
        else:
            k("delete", "namespace", namespace, "--wait=false")


def cmd_drill(args: argparse.Namespace) -> int:
    if args.local:
        result = local_drill(
            args.endpoint_url, args.sessions, print if args.format == "text" else lambda _: None
        )
        if args.format == "json":
            print(json.dumps(asdict(result)))
        else:
            print(f"restored {result.keys} keys, {result.sampled} sampled keys equal; apigate ready on them")
            print(f"RPO: {result.rpo_s:.2f} s (snapshot age when the restore began; add the backup interval)")
            print(f"RTO: {result.rto_s:.2f} s (restore start to a ready gateway accepting restored sessions)")
            print("DR drill passed")
        return 0
    if not args.config_source:
        raise OpsError("--config-source s3://BUCKET/PREFIX/ is needed without --local")
    seconds = cluster_drill(args.namespace, args.config_source, args.endpoint_url, args.keep, print)
    print(f"RTO (configuration): {seconds:.1f} s\nDR test successful!")
    return 0


def add_command(kinds: Any, guarded: Callable[..., Any], endpoint: Callable[[Any], None]) -> None:
    c = kinds.add_parser(
        "drill",
        help="the recovery drill: --local on this machine (prints RPO/RTO), or in namespace dr-test",
        description="Guide §4.4. --local: back up a live Redis with known data to S3, restore it into a "
        "fresh "
        "redis-server, start apigate on the restored configuration, check /health/ready and sampled keys, "
        "print the measured RPO/RTO, clean up. Otherwise: restore the newest config backup into a "
        "dr-test namespace through $KUBECTL and probe it. Wrapped by scripts/test-recovery.sh.",
    )
    c.add_argument("--local", action="store_true", help="run everything on this machine")
    endpoint(c)
    c.add_argument("--sessions", type=int, default=1000, metavar="N", help="--local: sessions to seed (1000)")
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.add_argument("--namespace", default="dr-test", help="cluster drill namespace (dr-test)")
    c.add_argument(
        "--config-source", metavar="S3URL", help="cluster drill: s3://BUCKET/PREFIX/ of config backups"
    )
    c.add_argument("--keep", action="store_true", help="cluster drill: keep the namespace afterwards")
    c.set_defaults(ops=guarded("test-recovery", cmd_drill))
