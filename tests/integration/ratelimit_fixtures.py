"""Fixtures for the rate-limit integration tests: redis-server, a 3-master Redis Cluster,
and a fast HTTP client that counts statuses.

Redis processes run on free loopback ports (auth_fixtures.RedisServer); without
redis-server the tests are skipped, except under CI=true where that fails
(harness.require_tool).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from auth_fixtures import RedisServer
from harness import HOST, free_port, port_accepts, require_tool, stop_process, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from ratelimit_cases import CASES, T0, Case  # the table shared with the unit tests

__all__ = [
    "CASES",
    "T0",
    "Case",
    "RedisCluster",
    "RedisSentinel",
    "hammer",
    "read_status",
    "redis_cluster",
    "rl_redis",
]


class RedisCluster:
    """Three masters (`--cluster-enabled yes`), joined by `redis-cli --cluster create`."""

    def __init__(self, workdir: Path) -> None:
        server, cli = require_tool("redis-server"), require_tool("redis-cli")
        # Six distinct ports, all picked before any node starts: a port picked while a node
        # just started but had not bound yet could be picked again (it happened: node 3's bus
        # port was node 1's port).
        picked: list[int] = []
        while len(picked) < 6:
            port = free_port()
            if port not in picked:
                picked.append(port)
        self.ports = picked[:3]
        self.procs: list[subprocess.Popen[bytes]] = []
        for port, bus in zip(self.ports, picked[3:], strict=True):
            d = workdir / str(port)
            d.mkdir()
            args = [
                server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--cluster-port", str(bus),  # not port + 10000, which may be taken or > 65535
            ]  # fmt: skip
            with open(d / "redis.log", "wb") as log:
                self.procs.append(
                    subprocess.Popen(args, stdout=log, stderr=log, cwd=d, start_new_session=True)
                )
        for port in self.ports:
            if not wait_until(lambda p=port: port_accepts(p), 15):  # type: ignore[misc]
                self.stop()
                raise AssertionError(f"cluster node on {port} did not start")
        nodes = [f"{HOST}:{p}" for p in self.ports]
        out = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            self.stop()
            raise AssertionError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")

        def ready() -> bool:
            info = subprocess.run(
                [cli, "-p", str(self.ports[0]), "cluster", "info"], capture_output=True, text=True
            ).stdout
            return "cluster_state:ok" in info

        if not wait_until(ready, 20, 0.1):
            self.stop()
            raise AssertionError("the cluster did not reach cluster_state:ok")

    @property
    def nodes(self) -> list[str]:
        return [f"{HOST}:{p}" for p in self.ports]

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, signal.SIGTERM, 10)


class RedisSentinel:
    """One `redis-server --sentinel` watching `master` under the name `name`."""

    def __init__(self, workdir: Path, master: RedisServer, name: str = "rlmaster") -> None:
        binary = require_tool("redis-server")
        self.name = name
        self.port = free_port()
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind {HOST}\ndir {workdir}\n"
            f"sentinel monitor {name} {HOST} {master.port} 1\n"
            f"sentinel down-after-milliseconds {name} 60000\n"
        )
        with open(workdir / "sentinel.log", "wb") as log:
            self.proc = subprocess.Popen(
                [binary, str(conf), "--sentinel"], stdout=log, stderr=log, cwd=workdir, start_new_session=True
            )
        if not wait_until(lambda: port_accepts(self.port), 15):
            self.stop()
            raise AssertionError((workdir / "sentinel.log").read_text())

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def rl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("rl-redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("rl-cluster"))
    yield cluster
    cluster.stop()


async def read_status(reader: asyncio.StreamReader) -> int:
    """One response off a keep-alive connection (head and Content-Length body): its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


async def _worker(port: int, path: str, n: int, counts: Counter[int], headers: str = "") -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    request = f"GET {path} HTTP/1.1\r\nHost: gw.test\r\n{headers}\r\n".encode()
    try:
        for _ in range(n):
            writer.write(request)
            counts[await read_status(reader)] += 1
    finally:
        writer.close()


def hammer(
    ports: list[int], path: str, total: int, conns_per_port: int = 8, headers: str = ""
) -> Counter[int]:
    """Send `total` GETs spread evenly over the ports, keep-alive; statuses counted."""
    counts: Counter[int] = Counter()
    workers = [(p, c) for p in ports for c in range(conns_per_port)]
    share, extra = divmod(total, len(workers))

    async def run() -> None:
        await asyncio.gather(
            *(
                _worker(p, path, share + (1 if i < extra else 0), counts, headers)
                for i, (p, _) in enumerate(workers)
            )
        )

    asyncio.run(run())
    return counts
