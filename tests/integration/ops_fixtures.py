"""Fixtures for the operations tests: moto's S3 server, Redis with known data, the scripts.

- `MotoS3`: `moto_server` (moto's server mode, from the virtualenv) on a free port, and a
  boto3 client for it; each test gets its own bucket.
- `LiveRedis`: a redis-server with known data (sessions with TTLs, counters, a hash, keys
  in a second database), optionally with AOF on; `expected` holds what was written.
- `run_script`: runs scripts/*.sh with the S3 credentials in the environment.
- `FakeKubectl`: a recording stand-in for kubectl (KUBECTL=...), answering from a table.

Without redis-server/redis-cli the tests skip, except with CI=true (harness.require_tool).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import HOST, REPO, VENV_BIN, free_port, port_accepts, require_tool, stop_process, wait_until

SCRIPTS = REPO / "scripts"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# The operations commands do not use the compiled data plane; APIGATE_PURE=1 also keeps a
# stale build's notice off stderr, which these tests read line by line.
QUIET = {"APIGATE_PURE": "1"}


class MotoS3:
    def __init__(self, workdir: Path) -> None:
        moto = VENV_BIN / "moto_server"
        if not moto.exists():
            raise AssertionError("moto_server missing from .venv (moto[server] is a test dependency)")
        self.port = free_port()
        self.log = workdir / "moto.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(moto), "-H", HOST, "-p", str(self.port)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if not wait_until(lambda: self.proc.poll() is not None or port_accepts(self.port), 30):
            self.stop()
            raise AssertionError(f"moto_server did not start: {self.log.read_text()}")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", **_creds())

    def bucket(self) -> str:
        name = "backups-" + uuid.uuid4().hex[:8]
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        resp = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in resp.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10)


def _creds() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


class LiveRedis:
    """redis-server in `directory` with known data; `expected` maps (db, key) to its value."""

    def __init__(
        self,
        directory: Path,
        *,
        aof: bool = False,
        password: str | None = None,
        sessions: int = 300,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.binary = require_tool("redis-server")
        require_tool("redis-cli")
        require_tool("redis-check-rdb")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.aof = aof
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()
        self.expected: dict[tuple[int, str], Any] = {}
        if sessions:
            self.seed(sessions)

    def args(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.aof else "no",
            "--repl-diskless-sync-delay",
            "0",
            *self.extra,
        ]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self) -> None:
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.args(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        proc = self.proc
        if not wait_until(lambda: proc.poll() is not None or port_accepts(self.port), 15):
            self.stop()
            raise AssertionError("redis-server did not start")
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited: {(self.directory / 'redis.log').read_text()}")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def client(self, db: int = 0) -> Any:
        import redis

        return redis.Redis(host=HOST, port=self.port, db=db, password=self.password, decode_responses=True)

    def seed(self, n: int) -> None:
        r, r1 = self.client(0), self.client(1)
        for i in range(n):
            token = uuid.uuid4().hex
            value = json.dumps({"sub": f"user-{i}", "exp": 4102444800})
            r.set(f"session:{token}", value, ex=3600)
            self.expected[(0, f"session:{token}")] = value
            r.set(f"rl:ip:10.0.0.{i}", str(i))
            self.expected[(0, f"rl:ip:10.0.0.{i}")] = str(i)
        r.hset("h", mapping={"a": "1", "b": "2"})
        r1.set("db1-key", "in database 1")
        self.expected[(1, "db1-key")] = "in database 1"
        r.close()
        r1.close()

    def dbsize(self) -> int:
        return sum(int(self.client(db).dbsize()) for db in (0, 1))

    def assert_same_data(self, other_port: int) -> None:
        """DBSIZE of both databases and every 10th key (plus the hash) equal the original's."""
        import redis

        for db in (0, 1):
            a = redis.Redis(host=HOST, port=other_port, db=db, decode_responses=True)
            assert a.dbsize() == len([k for k in self.expected if k[0] == db]) + (1 if db == 0 else 0)
            for (kdb, key), value in sorted(self.expected.items())[::10]:
                if kdb == db:
                    assert a.get(key) == value, key
            if db == 0:
                assert a.hgetall("h") == {"a": "1", "b": "2"}
                some = next(k for (kdb, k) in self.expected if k.startswith("session:"))
                assert 0 < a.ttl(some) <= 3600  # TTLs survive the round trip
            a.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 10)
            self.proc = None


def start_redis_on(directory: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh redis-server on a restored data directory; the caller stops it."""
    binary = require_tool("redis-server")
    port = free_port()
    with open(directory.parent / f"redis-{port}.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", HOST, "--dir", str(directory), *extra],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    if not wait_until(lambda: proc.poll() is not None or port_accepts(port), 15):
        stop_process(proc)
        raise AssertionError("restored redis-server did not start")
    import redis

    def loaded() -> bool:
        try:
            return int(redis.Redis(host=HOST, port=port).info("persistence")["loading"]) == 0
        except redis.RedisError:
            return False

    assert wait_until(loaded, 15, 0.05)
    return proc, port


def run_script(
    name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **AWS_ENV, **QUIET, **(env or {})}
    full.pop("APIGATE_CONFIG", None)
    return subprocess.run(
        [str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=timeout, env=full
    )


STAND_IN = """
import json, os, shutil, subprocess, sys
log, replies, shim = sys.argv[1], sys.argv[2], sys.argv[3]
argv = sys.argv[4:]
with open(log, "a") as f:
    f.write(json.dumps(argv) + "\\n")
joined = " ".join(argv)
for needle, out, code in json.load(open(replies)):
    if needle in joined:
        if out.startswith("RUN:"):
            sys.exit(subprocess.run(out[4:], shell=True).returncode)
        (sys.stderr if code else sys.stdout).write(out)
        sys.exit(code)
if "apply" in argv:  # kubectl apply -f FILE -> keep a copy of FILE in applied/
    path = argv[argv.index("-f") + 1]
    os.makedirs(os.path.join(os.path.dirname(log), "applied"), exist_ok=True)
    shutil.copy(path, os.path.join(os.path.dirname(log), "applied", os.path.basename(path)))
elif "cp" in argv:  # kubectl cp SRC NS/POD:PATH -> copy to PATH on this machine
    i = argv.index("cp")
    shutil.copy(argv[i + 1], argv[i + 2].split(":", 1)[1])
elif "exec" in argv and shim:  # kubectl exec POD -- CMD... -> run CMD here (redis-cli -> the test's Redis)
    cmd = argv[argv.index("--") + 1 :]
    env = {**os.environ, "PATH": shim + os.pathsep + os.environ["PATH"]}
    sys.exit(subprocess.run(cmd, env=env).returncode)
"""


def ops_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`apigate ARGS...` as an operator runs it (no APIGATE_CONFIG)."""
    return run_script("../.venv/bin/apigate", *args, timeout=timeout)


class FakeKubectl:
    """kubectl stand-in (KUBECTL=...): records each call's argv and answers from `replies`.

    `replies` is [(substring of the joined argv, stdout, exit code)]; the first match wins
    ("RUN:<shell command>" runs that instead). With `redis_port`, unmatched `exec POD --
    CMD` runs CMD on this machine with a `redis-cli` that talks to that port, and `cp SRC
    NS/POD:PATH` copies to PATH: the pod procedure then acts on a real redis-server.
    """

    def __init__(
        self, directory: Path, replies: list[tuple[str, str, int]], redis_port: int | None = None
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "calls.jsonl"
        (directory / "replies.json").write_text(json.dumps(replies))
        (directory / "stand_in.py").write_text(STAND_IN)
        shim = ""
        if redis_port is not None:
            shim_dir = directory / "bin"
            shim_dir.mkdir()
            cli = require_tool("redis-cli")
            (shim_dir / "redis-cli").write_text(f'#!/bin/sh\nexec {cli} -p {redis_port} "$@"\n')
            (shim_dir / "redis-cli").chmod(0o755)
            shim = str(shim_dir)
        self.path = directory / "kubectl"
        self.path.write_text(
            f"#!/bin/sh\nexec {sys.executable} {directory / 'stand_in.py'} {self.log} "
            f'{directory / "replies.json"} "{shim}" "$@"\n'
        )
        self.path.chmod(self.path.stat().st_mode | stat.S_IEXEC)

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECTL": str(self.path)}

    def applied(self) -> dict[str, Any]:
        """The files `kubectl apply -f` was given, by name, parsed."""
        import yaml

        directory = self.log.parent / "applied"
        return (
            {p.name: yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*"))}
            if directory.exists()
            else {}
        )

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]
