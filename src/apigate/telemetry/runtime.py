"""What the telemetry package needs from the gateway's lifecycle, in one object.

`App` builds one `Telemetry` and calls `start()` once its listeners are up and `stop()`
after draining; everything else (collectors for scrape-time gauges, the health-check
loop, worker snapshots, the trace exporter) is set up and torn down here, so app.py
carries two calls rather than the details.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from apigate.logs import events
from apigate.telemetry import metrics
from apigate.telemetry.health import Health, add_configured_checks

if TYPE_CHECKING:
    from apigate.config.schema import Config
    from apigate.gateway.filters import Filter
    from apigate.http.server import ServerState
    from apigate.telemetry.tracing import Tracing


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
        for f in filters:
            if f.name == "health":
                f.health = health  # type: ignore[attr-defined]  # HealthFilter (telemetry/filter.py)
        self.tracing: Tracing | None = next(
            (t for f in filters if (t := getattr(f, "tracing", None)) is not None), None
        )
        self._snapshots: asyncio.Task[None] | None = None

    def _collect_server(self) -> None:
        metrics.ACTIVE_CONNECTIONS.set((), len(self.state.connections))
        metrics.IN_FLIGHT_REQUESTS.set((), self.state.in_flight)

    def _collect_auth(self) -> None:
        series = metrics.AUTH_FAILURES.series
        for f in self.filters:
            if f.name != "auth":
                continue
            failures: dict[str, int] | None = getattr(f, "failures", None)
            if isinstance(failures, dict):
                for reason, n in failures.items():
                    series[(reason,)] = float(n)

    def _collect_ratelimit(self) -> None:
        """rate_limited_requests_total and the store's errors and latency (ratelimit/)."""
        for f in self.filters:
            if f.name != "ratelimit":
                continue
            limited: dict[tuple[str, str], int] = getattr(f, "limited", {})
            series = metrics.RATE_LIMITED_REQUESTS.series
            for key, n in limited.items():
                series[key] = float(n)
            store: Any = getattr(f, "store", None)
            errors: dict[str, int] | None = getattr(store, "backend_errors", None)
            if errors is None:
                continue
            for reason, n in errors.items():
                metrics.RATE_LIMIT_BACKEND_ERRORS.series[(reason,)] = float(n)
            buckets: list[int] = list(store.latency_buckets)
            if len(buckets) == len(metrics.RATE_LIMIT_BACKEND_LATENCY.buckets):
                over = float(store.latency_count - sum(buckets))  # above the last bound: +Inf only
                metrics.RATE_LIMIT_BACKEND_LATENCY.series[()] = [
                    *map(float, buckets),
                    over,
                    float(store.latency_sum),
                ]

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
        reg.add_collector("auth", self._collect_auth)
        reg.add_collector("ratelimit", self._collect_ratelimit)
        reg.add_collector("logs", self._collect_logs)
        self.health.start()
        if metrics.MULTIPROCESS is not None and self.cfg.observability.metrics_enabled:
            self._snapshots = asyncio.get_running_loop().create_task(self._write_snapshots())
        if self.tracing is not None:
            t = self.cfg.observability.tracing
            # WARN when the endpoint is not what the configuration says (a Jaeger Thrift URL).
            rerouted = self.tracing.endpoint != t.endpoint and t.endpoint is not None
            events.emit(
                "WARN" if rerouted or "Thrift" in self.tracing.explanation else "INFO",
                "telemetry",
                "tracing_started",
                f"Tracing: {self.tracing.explanation}",
                endpoint=self.tracing.endpoint,
                configured_endpoint=t.endpoint,
                backend=t.backend,
                sampling_rate=t.sampling_rate,
                service_name=t.service_name,
            )

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
        if self.tracing is not None:
            await self.tracing.shutdown()
        for key in ("server", "auth", "ratelimit", "logs"):
            metrics.REGISTRY.remove_collector(key)
