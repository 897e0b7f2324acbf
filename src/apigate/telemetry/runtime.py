"""What the telemetry package needs from the gateway's lifecycle, in one object.

The composition root (apigate/server.py) builds one `Telemetry` and calls `start()` once
its listeners are up and `stop()` after draining; everything else (collectors for
scrape-time gauges, the health-check loop, worker snapshots) is set up and torn down
here. Filters contribute their metrics through the filter contract's `samples()`; this
module never reaches into a filter's attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from apigate.telemetry import metrics
from apigate.telemetry.health import Health, add_configured_checks

if TYPE_CHECKING:
    from apigate.config.schema import Config
    from apigate.gateway.filters import Filter
    from apigate.http.server import ServerState


class LogSamples(Protocol):
    """What the log pipeline offers (logs/pipeline.py `Pipeline.samples`)."""

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]: ...


class Telemetry:
    def __init__(
        self,
        cfg: Config,
        state: ServerState,
        health: Health,
        filters: Sequence[Filter],
        logs: Callable[[], LogSamples | None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self.logs = logs
        self.state = state
        self.health = health
        self.filters = filters
        add_configured_checks(health, cfg)
        self._snapshots: asyncio.Task[None] | None = None

    def _collect_server(self) -> None:
        metrics.ACTIVE_CONNECTIONS.set((), len(self.state.connections))
        metrics.IN_FLIGHT_REQUESTS.set((), self.state.in_flight)

    def _collect_filters(self) -> None:
        """What each filter contributes through the contract's `samples()` (auth failures,
        rate-limit rejections, the rate-limit store's errors and latency, ...)."""
        families = metrics.REGISTRY.families
        for f in self.filters:
            for name, labels, value in f.samples():
                fam = families[name]  # a KeyError here is a name missing from metrics.py
                if isinstance(fam, metrics.Histogram):
                    if isinstance(value, list) and len(value) == len(fam.buckets) + 2:
                        fam.series[labels] = value
                elif not isinstance(value, list):
                    fam.series[labels] = value

    def _collect_logs(self) -> None:
        pipeline = self.logs()
        if pipeline is None:
            return
        families = metrics.REGISTRY.families
        for name, labels, value in pipeline.samples():
            fam = families.get(name)
            if isinstance(fam, metrics.Metric):
                fam.series[tuple(labels[n] for n in fam.labelnames)] = value

    async def start(self) -> None:
        reg = metrics.REGISTRY
        reg.add_collector("server", self._collect_server)
        reg.add_collector("filters", self._collect_filters)
        reg.add_collector("logs", self._collect_logs)
        self.health.start()
        if metrics.MULTIPROCESS is not None and self.cfg.observability.metrics_enabled:
            self._snapshots = asyncio.get_running_loop().create_task(self._write_snapshots())

    async def _write_snapshots(self) -> None:
        mp = metrics.MULTIPROCESS
        assert mp is not None
        while True:
            with contextlib.suppress(OSError):
                mp.write(metrics.REGISTRY)
            await asyncio.sleep(metrics.SNAPSHOT_INTERVAL_S)

    async def stop(self) -> None:
        if self._snapshots is not None:
            self._snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._snapshots
            self._snapshots = None
            mp = metrics.MULTIPROCESS
            if mp is not None:
                with contextlib.suppress(OSError):
                    mp.write(metrics.REGISTRY)  # this worker's final counts
        await self.health.stop()
        for key in ("server", "filters", "logs"):
            metrics.REGISTRY.remove_collector(key)
