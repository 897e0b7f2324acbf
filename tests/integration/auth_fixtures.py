"""Fixtures for the auth integration tests: a real redis-server and key helpers.

`RedisServer` runs `redis-server --port N --save '' --appendonly no` on a free port and
stops it (a test may stop and restart it). Without redis-server the test is skipped,
except when CI=true, where that is a failure (harness.require_tool). `apigate_cli` runs
the installed `apigate` command.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import APIGATE, HOST, free_port, port_accepts, require_tool, stop_process, wait_until

SECRET = "integration-secret-0123456789abcdef01"
# The route the auth tests guard: /secure/<x> reaches the demo upstream's echo.
SECURE_ROUTE: dict[str, Any] = {
    "id": "secure",
    "path": "/secure/*",
    "upstream_id": "demo",
    "rewrite": "/api/echo/{*}",
    "auth_required": True,
}


def jwt_token(secret: Any = SECRET, alg: str = "HS256", **claims: Any) -> str:
    """A JWT for `alice`, valid for 10 minutes; `claims` override or (None) remove claims."""
    import time

    import jwt

    now = int(time.time())
    payload: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 600, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm=alg)


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        binary = require_tool("redis-server")
        self.port = free_port()
        self.log = workdir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = binary
        self.workdir = workdir
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        proc = self.proc
        if not wait_until(lambda: proc.poll() is not None or port_accepts(self.port), 15):
            self.stop()
            raise AssertionError(f"redis-server did not start: {self.log.read_text()}")
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def apigate_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "APIGATE_CONFIG"}
    return subprocess.run([str(APIGATE), *args], capture_output=True, text=True, timeout=timeout, env=env)


def write_yaml(path: Path, data: dict[str, Any]) -> str:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)
