"""The filter lifecycle the composition root runs (apigate/server.py): every filter is
started once the loop runs, its samples reach /metrics, and every filter is closed at
shutdown, in reverse order, even when one of them fails to close."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

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
