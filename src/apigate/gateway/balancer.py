"""Upstreams with several targets: load balancing, passive and active health, retries.

An upstream is a list of targets (`targets: [{url, weight}]`, or `base_url`, the
one-target shorthand), each with its own keep-alive pool. A `Target` receives traffic
while it is *available*: its active health check (if configured) last said healthy, and
its circuit breaker (if configured) is not open. `UpstreamGroup.pick()` chooses among the
available targets by the configured policy, weights honoured:

- `round_robin`: nginx's smooth weighted round robin (weights 5:1:1 give a b a c a a a,
  not a a a a a b c);
- `least_requests`: the fewest requests in flight relative to the weight (Envoy's
  LEAST_REQUEST), ties shared by weighted round robin;
- `random_two_choices`: two targets drawn by weight, the less loaded one wins (the "power
  of two choices": close to least_requests without scanning every target).

Circuit breaker, per target (Envoy's outlier detection, Hystrix's states):
closed (0) -> `failure_threshold` consecutive failures (connect failures, resets,
timeouts, and 5xx answers with `count_5xx`) -> open (1) for `open_secs`, no traffic ->
half-open (2): up to `half_open_requests` trial requests; all succeed -> closed, any
fails -> open again. The states are the values of `upstream_circuit_state`.

An upstream with one target and none of health_check, circuit_breaker or retries gets no
group at all: its requests cost exactly what they did before targets existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator, Sequence
from typing import Final
from urllib.parse import urlsplit

from apigate.config.schema import UpstreamConfig
from apigate.gateway.filters import Filter, Sample
from apigate.gateway.router import Route
from apigate.http.client import UpstreamPool
from apigate.http.probe import probe
from apigate.logs import events
from apigate.telemetry.names import (
    UPSTREAM_CIRCUIT_STATE,
    UPSTREAM_POOL_CONNECTIONS,
    UPSTREAM_REQUESTS_IN_FLIGHT,
    UPSTREAM_RETRIES_TOTAL,
    UPSTREAM_TARGET_HEALTHY,
)


class CircuitState:
    """The breaker's states; the values are those of `upstream_circuit_state`."""

    CLOSED: Final = 0
    OPEN: Final = 1
    HALF_OPEN: Final = 2
    NAMES: Final = ("closed", "open", "half_open")


# Envoy's retry budget keeps at least this many retries possible however few requests
# are in flight (its min_retry_concurrency, default 3).
MIN_RETRY_CONCURRENCY: Final = 3
BUDGET_WINDOW_S: Final = 10.0  # requests and retries are counted over this window


class Target:
    """One instance of an upstream: its pool, weight, health and breaker."""

    def __init__(self, service: str, url: str, weight: int, pool: UpstreamPool, cfg: UpstreamConfig) -> None:
        self.service = service
        self.url = url
        self.name = target_name(url)  # the `target` label: host:port, as the status page names one
        self.weight = weight
        self.pool = pool
        self.breaker = cfg.circuit_breaker
        self.healthy = True  # the active health check's verdict (always True without one)
        self.state = CircuitState.CLOSED
        self.failures = 0  # consecutive
        self.opened_at = 0.0
        self.trials = 0  # half-open requests sent so far
        self.trial_successes = 0
        self.current = 0  # smooth weighted round robin
        self.checks_ok = 0  # consecutive active-check results
        self.checks_failed = 0

    def __repr__(self) -> str:
        return (
            f"<Target {self.service} {self.url} weight={self.weight} healthy={self.healthy}"
            f" circuit={CircuitState.NAMES[self.state]} failures={self.failures}>"
        )

    @property
    def in_flight(self) -> int:
        return self.pool.active + self.pool.connecting

    def circuit(self, now: float) -> int:
        """The breaker's state at `now` (an open circuit turns half-open after open_secs)."""
        b = self.breaker
        if self.state == CircuitState.OPEN and b is not None and now - self.opened_at >= b.open_secs:
            self._set_state(CircuitState.HALF_OPEN)
            self.trials = 0
            self.trial_successes = 0
        return self.state

    def available(self, now: float) -> bool:
        if not self.healthy:
            return False
        state = self.circuit(now)
        if state == CircuitState.CLOSED:
            return True
        if state == CircuitState.HALF_OPEN:
            b = self.breaker
            return b is not None and self.trials < b.half_open_requests
        return False

    def picked(self) -> None:
        if self.state == CircuitState.HALF_OPEN:
            self.trials += 1

    def succeeded(self) -> None:
        self.failures = 0
        if self.state == CircuitState.HALF_OPEN:
            self.trial_successes += 1
            b = self.breaker
            if b is not None and self.trial_successes >= b.half_open_requests:
                self._set_state(CircuitState.CLOSED)

    def failed(self, reason: str, now: float) -> None:
        b = self.breaker
        if b is None:
            return
        self.failures += 1
        if self.state == CircuitState.HALF_OPEN or (
            self.state == CircuitState.CLOSED and self.failures >= b.failure_threshold
        ):
            self.opened_at = now
            self._set_state(CircuitState.OPEN, reason)

    def _set_state(self, state: int, reason: str | None = None) -> None:
        if state == self.state:
            return
        self.state = state
        fields: dict[str, object] = {"upstream": self.service, "target": self.name}
        if reason is not None:
            fields["reason"] = reason
        events.emit(
            "WARN" if state == CircuitState.OPEN else "INFO",
            "upstream",
            f"circuit_{CircuitState.NAMES[state]}",
            f"Circuit {CircuitState.NAMES[state].replace('_', '-')} for an upstream target",
            **fields,
        )

    def checked(self, ok: bool, detail: str, healthy_threshold: int, unhealthy_threshold: int) -> None:
        """One active health check's result."""
        if ok:
            self.checks_ok += 1
            self.checks_failed = 0
            if not self.healthy and self.checks_ok >= healthy_threshold:
                self.healthy = True
                self.failures = 0
                events.emit(
                    "INFO",
                    "upstream",
                    "target_healthy",
                    "An upstream target is healthy again",
                    upstream=self.service,
                    target=self.name,
                    detail=detail,
                )
        else:
            self.checks_failed += 1
            self.checks_ok = 0
            if self.healthy and self.checks_failed >= unhealthy_threshold:
                self.healthy = False
                events.emit(
                    "WARN",
                    "upstream",
                    "target_unhealthy",
                    "An upstream target failed its health checks",
                    upstream=self.service,
                    target=self.name,
                    detail=detail,
                )


class UpstreamGroup:
    """The targets of one upstream and how a request picks one."""

    def __init__(self, cfg: UpstreamConfig, targets: Sequence[Target]) -> None:
        self.cfg = cfg
        self.service = cfg.id
        self.targets = list(targets)
        self.by_pool = {t.pool: t for t in self.targets}
        self.policy = cfg.load_balancing
        self.retries = cfg.retries
        self.retry_on = frozenset(cfg.retries.on) if cfg.retries is not None else frozenset()
        self.retries_total: dict[str, int] = {}
        self.budget_window: list[float] = [0.0, 0.0, 0.0]  # [window start, requests, retries]
        self.rng = random.Random()
        self.tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<UpstreamGroup {self.service} {self.policy} {self.targets}>"

    def pick(self, exclude: UpstreamPool | None = None) -> UpstreamPool | None:
        """An available target's pool, or None when every target is out."""
        now = time.monotonic()
        ready = [t for t in self.targets if t.pool is not exclude and t.available(now)]
        if not ready:
            return None
        if len(ready) == 1:
            chosen = ready[0]
        elif self.policy == "round_robin":
            chosen = self._smooth_round_robin(ready)
        elif self.policy == "least_requests":
            # Ties (an idle upstream: every target at 0) go round robin by weight.
            least = min(t.in_flight / t.weight for t in ready)
            chosen = self._smooth_round_robin([t for t in ready if t.in_flight / t.weight == least])
        else:
            a, b = self.rng.choices(ready, weights=[t.weight for t in ready], k=2)
            chosen = a if a.in_flight / a.weight <= b.in_flight / b.weight else b
        chosen.picked()
        self._count(1)
        return chosen.pool

    def has_other(self, pool: UpstreamPool) -> bool:
        """Whether a target other than `pool`'s is available now (no side effect)."""
        now = time.monotonic()
        return any(t.pool is not pool and t.available(now) for t in self.targets)

    @staticmethod
    def _smooth_round_robin(ready: list[Target]) -> Target:
        total = 0
        best = ready[0]
        for t in ready:
            t.current += t.weight
            total += t.weight
            if t.current > best.current:
                best = t
        best.current -= total
        return best

    def report(self, pool: UpstreamPool, failure: str | None) -> None:
        """A request to `pool` ended: None for success, else the failure's reason."""
        target = self.by_pool.get(pool)
        if target is None:
            return
        if failure is None:
            target.succeeded()
        else:
            target.failed(failure, time.monotonic())

    def _count(self, slot: int) -> None:
        w = self.budget_window
        now = time.monotonic()
        if now - w[0] > BUDGET_WINDOW_S:
            w[0], w[1], w[2] = now, 0.0, 0.0
        w[slot] += 1

    def may_retry(self, reason: str) -> bool:
        """Whether a retry for `reason` is configured and within the retry budget."""
        r = self.retries
        if r is None or reason not in self.retry_on:
            return False
        _, requests, retries = self.budget_window
        if retries >= max(MIN_RETRY_CONCURRENCY, requests * r.budget_percent / 100):
            self.retries_total["budget_exhausted"] = self.retries_total.get("budget_exhausted", 0) + 1
            return False
        return True

    def retried(self, reason: str) -> None:
        self._count(2)
        self.retries_total[reason] = self.retries_total.get(reason, 0) + 1

    # ------------------------------------------------------------------ active health
    def start(self) -> None:
        hc = self.cfg.health_check
        if hc is None:
            return
        loop = asyncio.get_running_loop()
        for t in self.targets:
            self.tasks.append(loop.create_task(self._probe_forever(t)))

    async def _probe_forever(self, target: Target) -> None:
        hc = self.cfg.health_check
        assert hc is not None
        while True:
            try:
                async with asyncio.timeout(hc.timeout_secs):
                    ok, detail = await probe(target.pool, hc.path)
            except TimeoutError:
                ok, detail = False, f"no answer within {hc.timeout_secs:g}s"
            except OSError as e:
                ok, detail = False, e.strerror or repr(e)[:200]
            except Exception as e:  # a garbled answer (an overlong status line): unhealthy
                ok, detail = False, f"{type(e).__name__}: {str(e)[:200]}"
            target.checked(ok, detail, hc.healthy_threshold, hc.unhealthy_threshold)
            await asyncio.sleep(hc.interval_secs)

    async def close(self) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class UpstreamsFilter(Filter):
    """The upstreams' share of the filter contract: no request phase (it joins no chain);
    `start()`/`close()` run the active health checks, `samples()` exports the state of
    every balanced upstream's targets, so the exporter (and the status page) read them
    from the metrics registry. A plain upstream exports none: it has no health of its own
    (the status page shows readiness's check_upstreams for it)."""

    name = "upstreams"

    def __init__(
        self, services: Sequence[tuple[str, Sequence[Target]]], groups: Sequence[UpstreamGroup]
    ) -> None:
        self.services = services
        self.groups = groups

    def applies_to(self, route: Route | None) -> bool:
        return False

    async def start(self) -> None:
        for g in self.groups:
            g.start()

    async def close(self) -> None:
        for g in self.groups:
            await g.close()

    def samples(self) -> Iterator[Sample]:
        now = time.monotonic()
        for g in self.groups:
            service = g.service
            for t in g.targets:
                labels = (service, t.name)
                state = t.circuit(now)
                yield UPSTREAM_TARGET_HEALTHY, labels, float(t.healthy and state != CircuitState.OPEN)
                yield UPSTREAM_CIRCUIT_STATE, labels, float(state)
                yield UPSTREAM_REQUESTS_IN_FLIGHT, labels, float(t.in_flight)
                yield UPSTREAM_POOL_CONNECTIONS, (service, t.name, "idle"), float(len(t.pool.idle))
                yield UPSTREAM_POOL_CONNECTIONS, (service, t.name, "active"), float(t.pool.active)
            for reason, n in g.retries_total.items():
                yield UPSTREAM_RETRIES_TOTAL, (g.service, reason), float(n)

    def pools(self) -> Iterator[UpstreamPool]:
        for _, targets in self.services:
            for t in targets:
                yield t.pool

    def readiness(self) -> dict[str, list[dict[str, object]]]:
        """Every balanced target's state, for /health/ready's detail."""
        now = time.monotonic()
        return {
            g.service: [
                {
                    "target": t.name,
                    "healthy": t.healthy,
                    "circuit": CircuitState.NAMES[t.circuit(now)],
                    "in_flight": t.in_flight,
                }
                for t in g.targets
            ]
            for g in self.groups
        }


def target_name(url: str) -> str:
    """`host:port` of a target url, and its path when it has one: short, and without the
    credentials a url may carry."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path.rstrip("/")
    return f"{host}:{port}{path}"


def build_upstreams(
    upstreams: Sequence[UpstreamConfig],
) -> tuple[dict[str, UpstreamPool], dict[str, UpstreamGroup], UpstreamsFilter]:
    """One pool per target. Returns the first target's pool per upstream id (what a
    route without a group uses), the groups of upstreams that need one, and the filter
    that runs their health checks and exports their metrics."""
    pools: dict[str, UpstreamPool] = {}
    groups: dict[str, UpstreamGroup] = {}
    services: list[tuple[str, list[Target]]] = []
    for up in upstreams:
        targets = [
            Target(
                up.id,
                t.url,
                t.weight,
                UpstreamPool(
                    t.url,
                    max_idle=up.pool_max_idle_per_host,
                    connect_timeout=up.connect_timeout_secs,
                    timeout=up.timeout_secs,
                    verify_tls=up.verify_tls,
                    ca_path=up.ca_path,
                ),
                up,
            )
            for t in up.target_list
        ]
        services.append((up.id, targets))
        pools[up.id] = targets[0].pool
        if len(targets) > 1 or up.circuit_breaker or up.health_check or up.retries:
            group = UpstreamGroup(up, targets)
            groups[up.id] = group
            for t in targets:
                t.pool.watched = True
    return pools, groups, UpstreamsFilter(services, list(groups.values()))


__all__ = ["CircuitState", "Target", "UpstreamGroup", "UpstreamsFilter", "build_upstreams"]
