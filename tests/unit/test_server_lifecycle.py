"""The filter lifecycle the composition root runs (apigate/server.py): every filter is
started once the loop runs, its samples reach /metrics, and every filter is closed at
shutdown, in reverse order, even when one of them fails to close."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from apigate import server as server_module
from apigate.config.schema import Config
from apigate.gateway.filters import Filter, Sample
from apigate.server import Server
from apigate.telemetry import metrics
from apigate.telemetry.names import AUTH_FAILURES_TOTAL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder(Filter):
    name = "recorder"

    def __init__(self, log: list[str], label: str, fail_close: bool = False) -> None:
        self.log = log
        self.label = label
        self.fail_close = fail_close

    async def start(self) -> None:
        self.log.append(f"start {self.label}")

    async def close(self) -> None:
        self.log.append(f"close {self.label}")
        if self.fail_close:
            raise RuntimeError("cannot close")

    def samples(self) -> Iterator[Sample]:
        yield AUTH_FAILURES_TOTAL, (f"recorded_{self.label}",), 7.0


def config() -> Config:
    return Config.model_validate(
        {
            "server": {"bind_address": "127.0.0.1", "port": free_port(), "drain_timeout_secs": 1},
            "logging": {"level": "ERROR", "sinks": [{"type": "stdout", "min_level": "ERROR"}]},
            "observability": {"metrics_port": free_port(), "metrics_bind_address": "127.0.0.1"},
            "upstreams": [{"id": "u", "base_url": "http://127.0.0.1:9"}],
            "routes": [{"id": "r", "path": "/x", "upstream_id": "u"}],
        }
    )


def test_filters_start_contribute_samples_and_close_in_reverse() -> None:
    log: list[str] = []

    async def scenario() -> None:
        server = Server(config(), [Recorder(log, "a", fail_close=True), Recorder(log, "b")])
        await server.start()
        assert log == ["start a", "start b"]
        rendered = metrics.render().decode()
        assert 'auth_failures_total{reason="recorded_a"} 7' in rendered
        await server.shutdown()

    asyncio.run(scenario())
    # Closed in reverse order; a's failure to close is logged, not raised, and b was closed.
    assert log == ["start a", "start b", "close b", "close a"]


def test_reload_closes_the_old_filters_only_after_their_requests_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request in flight during a reload completes on the old configuration; the old
    filters' close() runs after it, the new filters serve the next request."""
    log: list[str] = []
    built = iter("bcdef")
    monkeypatch.setattr(server_module, "build_filters", lambda cfg, health=None: [Recorder(log, next(built))])

    async def scenario() -> None:
        release = asyncio.Event()
        got: list[bytes] = []

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readuntil(b"\r\n\r\n"):
                got.append(line.split(b" ", 2)[1])
                if line.startswith(b"GET /slow"):
                    await release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

        up = await asyncio.start_server(upstream, "127.0.0.1", 0)
        up_port = up.sockets[0].getsockname()[1]
        cfg = config().model_dump(mode="json", exclude_unset=True)
        cfg["upstreams"] = [{"id": "u", "base_url": f"http://127.0.0.1:{up_port}"}]
        cfg["routes"] = [{"id": "r", "path": "/*", "upstream_id": "u"}]
        path = tmp_path / "apigate.yaml"
        path.write_text(yaml.safe_dump(cfg))
        server = Server(Config.model_validate(cfg), [Recorder(log, "a")], config_path=str(path))
        await server.start()
        port = server.cfg.server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n")
        await writer.drain()
        for _ in range(500):
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [b"/slow"]
        assert await server.reload() == (True, [])
        await asyncio.sleep(0.1)  # the retiring task had every chance to close too early
        assert log == ["start a", "start b"]
        release.set()
        head = await reader.readuntil(b"\r\n\r\nok")
        assert head.startswith(b"HTTP/1.1 200")
        for _ in range(500):
            if "close a" in log:
                break
            await asyncio.sleep(0.01)
        assert log == ["start a", "start b", "close a"]
        # The same connection, the next request: served by the new configuration.
        writer.write(b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\nok")).startswith(b"HTTP/1.1 200")
        writer.close()
        await server.shutdown()
        up.close()
        assert log[-1] == "close b"

    asyncio.run(scenario())
