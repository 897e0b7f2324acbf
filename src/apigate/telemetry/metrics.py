"""Every metric apigate exports is registered here, once (the names are in names.py).

The guide's alert rules (§5.1), runbook queries (§2.4) and the Grafana dashboard query
these names and labels, so they are part of apigate's interface: renaming one breaks
`deploy/prometheus` (tests/integration/test_monitoring_kit.py checks a real scrape
against every alert expression).

Why a small registry of our own rather than prometheus_client: the request path
records 3-4 series per request, and a plain dict update here costs a fraction of
prometheus_client's `labels(...).inc()` (a lock, label validation and a child object per
call; multiprocess mode adds an mmap write per value). bench/metrics_micro.py measures
both; the numbers are in docs/OBSERVABILITY.md. The registry is deliberately minimal:
counters, gauges and histograms keyed by a tuple of label values, rendered in the
Prometheus text format 0.0.4.

Values that the gateway keeps anyway (open connections, in-flight requests, the auth
filter's per-reason failure counts) are copied in by *collectors* at scrape time, so
exporting them costs the request path nothing.

With `server.workers > 1` every worker writes a snapshot of its registry to a per-run
directory once per `SNAPSHOT_INTERVAL_S`; whichever worker a scrape reaches answers with
its own live values plus the other workers' latest snapshots (see `MultiProcess`).
"""

from __future__ import annotations

import contextlib
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal, TypeAlias, cast

import orjson

from apigate import __version__
from apigate.telemetry import names

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

Kind: TypeAlias = Literal["counter", "gauge", "histogram"]
LabelValues: TypeAlias = tuple[str | int, ...]

# 1 ms to 10 s, including 0.5 s (the HighLatency alert's threshold must be a bucket bound:
# histogram_quantile interpolates inside a bucket, so a bound at the threshold keeps the
# alert's decision exact).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UPSTREAM_BUCKETS = REQUEST_BUCKETS
BACKEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metric:
    """One metric family: name, help, label names, and its series by label values."""

    def __init__(self, name: str, kind: Kind, help_text: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.labelnames = labelnames
        self.series: dict[LabelValues, float] = {}
        self.merge_max = False  # across workers: sum (the default), or max (apigate_build_info)

    def inc(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        s = self.series
        s[labels] = s.get(labels, 0.0) + amount

    def set(self, labels: LabelValues, value: float) -> None:
        self.series[labels] = value

    def value(self, labels: LabelValues = ()) -> float:
        return self.series.get(labels, 0.0)


class Histogram:
    """Buckets are kept non-cumulative ([bucket 0, ..., +Inf, sum]); rendering sums them up.

    `observe` is one bisect, two list updates: cheap enough for every request.
    """

    kind: Kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]):
        self.name = name
        self.help = help_text
        self.labelnames = labelnames
        self.buckets = buckets
        self.series: dict[LabelValues, list[float]] = {}

    def observe(self, labels: LabelValues, value: float) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        s[bisect_left(self.buckets, value)] += 1
        s[-1] += value

    def count(self, labels: LabelValues = ()) -> float:
        s = self.series.get(labels)
        return 0.0 if s is None else sum(s[:-1])


Family: TypeAlias = Metric | Histogram


class Registry:
    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self.collectors: dict[str, Callable[[], None]] = {}
        # Computed from the merged series (all workers) at render time, never snapshotted.
        self.derived: dict[str, Callable[[dict[str, dict[LabelValues, float | list[float]]]], None]] = {}

    def _add(self, family: Family) -> None:
        if family.name in self.families:
            raise ValueError(f"metric {family.name} defined twice")
        self.families[family.name] = family

    def counter(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Metric:
        m = Metric(name, "counter", help_text, labelnames)
        self._add(m)
        return m

    def gauge(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Metric:
        m = Metric(name, "gauge", help_text, labelnames)
        self._add(m)
        return m

    def histogram(
        self, name: str, help_text: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]
    ) -> Histogram:
        h = Histogram(name, help_text, labelnames, buckets)
        self._add(h)
        return h

    def add_collector(self, key: str, fn: Callable[[], None]) -> None:
        """Run `fn` before every scrape or snapshot (it copies values in); `key` replaces."""
        self.collectors[key] = fn

    def remove_collector(self, key: str) -> None:
        self.collectors.pop(key, None)

    def collect(self) -> None:
        for fn in list(self.collectors.values()):
            fn()

    # ---------------------------------------------------------------- snapshots (workers > 1)
    def snapshot(self) -> dict[str, list[list[object]]]:
        """The registry as JSON-able data: {name: [[*label values, value or bucket list]]}."""
        self.collect()
        return {
            name: [[*labels, value] for labels, value in fam.series.items()]
            for name, fam in self.families.items()
            if fam.series and name not in self.derived
        }

    def render(self, others: Iterable[tuple[dict[str, list[list[object]]], bool]] = ()) -> bytes:
        """Prometheus text exposition of this registry, plus other workers' snapshots.

        `others` yields (snapshot, alive): a dead worker's counters and histograms still
        count (its requests happened; dropping them would make the sums go backwards),
        its gauges do not.
        """
        self.collect()
        merged: dict[str, dict[LabelValues, float | list[float]]] = {
            name: dict(fam.series) for name, fam in self.families.items()
        }
        for snap, alive in others:
            for name, rows in snap.items():
                fam = self.families.get(name)
                if fam is None or (fam.kind == "gauge" and not alive):
                    continue
                into = merged[name]
                for row in rows:
                    labels = cast(LabelValues, tuple(row[:-1]))
                    value = row[-1]
                    have = into.get(labels)
                    if isinstance(value, list):
                        buckets = cast(list[float], value)
                        if isinstance(have, list):
                            buckets = [a + b for a, b in zip(have, buckets, strict=True)]
                        into[labels] = buckets
                    else:
                        mine = float(cast(float, value))
                        prev = float(have) if isinstance(have, (int, float)) else None
                        if prev is None:
                            into[labels] = mine
                        else:
                            into[labels] = (
                                max(prev, mine) if getattr(fam, "merge_max", False) else prev + mine
                            )
        for derive in self.derived.values():
            derive(merged)
        out: list[str] = []
        for name, fam in self.families.items():
            out.append(f"# HELP {name} {fam.help}")
            out.append(f"# TYPE {name} {fam.kind}")
            names = fam.labelnames
            for labels, value in sorted(merged[name].items(), key=lambda kv: tuple(map(str, kv[0]))):
                pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, labels, strict=True)]
                if isinstance(value, list):
                    assert isinstance(fam, Histogram)
                    prefix = ",".join(pairs)
                    sep = "," if prefix else ""
                    running = 0.0
                    for bound, n in zip((*fam.buckets, math.inf), value[:-1], strict=True):
                        running += n
                        out.append(f'{name}_bucket{{{prefix}{sep}le="{_bound(bound)}"}} {_num(running)}')
                    label_str = f"{{{prefix}}}" if prefix else ""
                    out.append(f"{name}_sum{label_str} {_num(value[-1])}")
                    out.append(f"{name}_count{label_str} {_num(running)}")
                else:
                    label_str = "{" + ",".join(pairs) + "}" if pairs else ""
                    out.append(f"{name}{label_str} {_num(value)}")
        return ("\n".join(out) + "\n").encode()


def _escape(v: str | int) -> str:
    s = str(v)
    if "\\" in s or '"' in s or "\n" in s:
        s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return s


def _bound(b: float) -> str:
    return "+Inf" if b == math.inf else repr(float(b))


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) and abs(v) < 2**53 else repr(v)


REGISTRY = Registry()

# ------------------------------------------------------------------------------ the names
BUILD_INFO = REGISTRY.gauge(names.APIGATE_BUILD_INFO, "apigate build information.", ("version",))
BUILD_INFO.set((__version__,), 1)
BUILD_INFO.merge_max = True  # 1 per process, and 1 for the instance
ACTIVE_CONNECTIONS = REGISTRY.gauge(
    names.ACTIVE_CONNECTIONS, "Open client connections on the proxy listener."
)
IN_FLIGHT_REQUESTS = REGISTRY.gauge(names.IN_FLIGHT_REQUESTS, "Requests being handled right now.")

HTTP_REQUESTS = REGISTRY.counter(
    names.HTTP_REQUESTS_TOTAL,
    "Requests answered, by method, route id ('unmatched' when none) and status code.",
    ("method", "route", "status"),
)
HTTP_REQUEST_DURATION = REGISTRY.histogram(
    names.HTTP_REQUEST_DURATION_SECONDS,
    "Time from the request head to the end of the response, by method and route id.",
    ("method", "route"),
    REQUEST_BUCKETS,
)
UPSTREAM_REQUEST_DURATION = REGISTRY.histogram(
    names.UPSTREAM_REQUEST_DURATION_SECONDS,
    "Time until the upstream's response headers, by upstream id.",
    ("service",),
    UPSTREAM_BUCKETS,
)
UPSTREAM_FAILURES = REGISTRY.counter(
    names.UPSTREAM_FAILURES_TOTAL,
    "Upstream calls that failed: connect, timeout, reset, bad_response, or a 5xx answer.",
    ("service", "reason"),
)
AUTH_FAILURES = REGISTRY.counter(
    names.AUTH_FAILURES_TOTAL, "Requests refused by authentication, by reason.", ("reason",)
)
AUTH_CACHE_LOOKUPS = REGISTRY.counter(
    names.AUTH_CACHE_LOOKUPS_TOTAL,
    "Verified-token cache lookups of well-formed tokens: hit (no verification) or miss.",
    ("result",),
)

HTTP_ERROR_RATE = REGISTRY.gauge(
    names.HTTP_ERROR_RATE,
    "Share of requests answered 5xx over about the last minute (a quick look, as in the runbook's "
    "grep; alerts use rate(http_requests_total)).",
    ("window",),
)
ERROR_RATE_WINDOW_S = 60.0


class _ErrorRate:
    """http_error_rate from http_requests_total as merged over workers, at each render.

    Keeps (time, requests, 5xx) at each render; the rate is the change since the newest
    sample at least a minute old, else since the oldest kept one (since start at the first
    scrape). Costs the request path nothing.
    """

    def __init__(self) -> None:
        self.history: list[tuple[float, float, float]] = []

    def __call__(self, merged: dict[str, dict[LabelValues, float | list[float]]]) -> None:
        import time

        total = errors = 0.0
        for labels, v in merged[HTTP_REQUESTS.name].items():
            if isinstance(v, list):
                continue
            total += v
            if str(labels[2]).startswith("5"):
                errors += v
        now = time.monotonic()
        old = [h for h in self.history if now - h[0] > ERROR_RATE_WINDOW_S]
        # The newest sample from before the window is the baseline; older ones go.
        self.history = old[-1:] + [h for h in self.history if now - h[0] <= ERROR_RATE_WINDOW_S]
        _, total0, errors0 = self.history[0] if self.history else (now, 0.0, 0.0)
        self.history.append((now, total, errors))
        n = total - total0
        rate = (errors - errors0) / n if n > 0 else 0.0
        merged[HTTP_ERROR_RATE.name] = {("1m",): min(1.0, max(0.0, rate))}


REGISTRY.derived[HTTP_ERROR_RATE.name] = _ErrorRate()

# Traffic features (issue 15): filled in from the filters' samples() at scrape time.
ACCESS_DENIED = REGISTRY.counter(
    names.ACCESS_DENIED_TOTAL, "Requests refused 403 by IP rules, by route and reason.", ("route", "reason")
)
WEBSOCKET_CONNECTIONS_ACTIVE = REGISTRY.gauge(
    names.WEBSOCKET_CONNECTIONS_ACTIVE, "WebSocket (and other upgraded) tunnels open right now."
)
WEBSOCKET_CONNECTIONS = REGISTRY.counter(
    names.WEBSOCKET_CONNECTIONS_TOTAL,
    "WebSocket tunnels opened (101 from the upstream), by route.",
    ("route",),
)
PLUGIN_ERRORS = REGISTRY.counter(
    names.PLUGIN_ERRORS_TOTAL, "Exceptions raised by a Python plugin, by plugin name.", ("plugin",)
)

# Rate limiting (issue 4): the ratelimit package increments these.
RATE_LIMITED_REQUESTS = REGISTRY.counter(
    names.RATE_LIMITED_REQUESTS_TOTAL,
    "Requests refused with 429, by route and key type.",
    ("route", "key_type"),
)
RATE_LIMIT_BACKEND_ERRORS = REGISTRY.counter(
    names.RATE_LIMIT_BACKEND_ERRORS_TOTAL, "Rate-limit store calls that failed, by reason.", ("reason",)
)
RATE_LIMIT_BACKEND_LATENCY = REGISTRY.histogram(
    names.RATE_LIMIT_BACKEND_LATENCY_SECONDS,
    "Round-trip time of rate-limit store calls.",
    (),
    BACKEND_BUCKETS,
)
RATE_LIMIT_BACKEND_ROUND_TRIPS = REGISTRY.counter(
    names.RATE_LIMIT_BACKEND_ROUND_TRIPS_TOTAL, "Round trips to the rate-limit store (one per batch).", ()
)
RATE_LIMIT_BACKEND_CHECKS = REGISTRY.counter(
    names.RATE_LIMIT_BACKEND_CHECKS_TOTAL,
    "Rate-limit checks sent to the store; divided by round trips: the batch size.",
    (),
)

# Log pipeline (issue 6): the logs package increments and sets these.
LOG_EVENTS = REGISTRY.counter(names.LOG_EVENTS_TOTAL, "Log events delivered, by sink.", ("sink",))
LOG_EVENTS_DROPPED = REGISTRY.counter(
    names.LOG_EVENTS_DROPPED_TOTAL, "Log events dropped, by sink and reason.", ("sink", "reason")
)
LOG_SINK_ERRORS = REGISTRY.counter(names.LOG_SINK_ERRORS_TOTAL, "Failed deliveries to a sink.", ("sink",))
LOG_SINK_QUEUE_DEPTH = REGISTRY.gauge(
    names.LOG_SINK_QUEUE_DEPTH, "Events waiting in a sink's queue.", ("sink",)
)
LOG_SPOOL_BYTES = REGISTRY.gauge(names.LOG_SPOOL_BYTES, "Bytes held in a sink's disk spool.", ("sink",))


# Upstream targets and hot reload (issue 16): the gateway's UpstreamsFilter exports the
# per-target series through samples(); the composition root counts reloads.
UPSTREAM_TARGET_HEALTHY = REGISTRY.gauge(
    names.UPSTREAM_TARGET_HEALTHY,
    "1 when an upstream target receives traffic (health check passing, circuit not open).",
    ("service", "target"),
)
UPSTREAM_CIRCUIT_STATE = REGISTRY.gauge(
    names.UPSTREAM_CIRCUIT_STATE,
    "Circuit breaker state of an upstream target: 0 closed, 1 open, 2 half-open.",
    ("service", "target"),
)
UPSTREAM_CIRCUIT_STATE.merge_max = True  # a sum of states means nothing; non-zero: not closed somewhere
UPSTREAM_REQUESTS_IN_FLIGHT = REGISTRY.gauge(
    names.UPSTREAM_REQUESTS_IN_FLIGHT,
    "Requests sent to an upstream target and not finished.",
    ("service", "target"),
)
UPSTREAM_POOL_CONNECTIONS = REGISTRY.gauge(
    names.UPSTREAM_POOL_CONNECTIONS,
    "Keep-alive connections to an upstream target, by state (idle, active).",
    ("service", "target", "state"),
)
UPSTREAM_RETRIES = REGISTRY.counter(
    names.UPSTREAM_RETRIES_TOTAL,
    "Requests sent again to another target, by reason (budget_exhausted: a retry refused).",
    ("service", "reason"),
)
CONFIG_RELOADS = REGISTRY.counter(
    names.CONFIG_RELOADS_TOTAL, "Configuration reloads, by result (success, failure).", ("result",)
)


# ------------------------------------------------------------------------------ workers > 1
SNAPSHOT_INTERVAL_S = 1.0


class MultiProcess:
    """Sums the registries of `server.workers` processes for one scrape.

    Each worker writes `<dir>/<pid>.json` (write then rename: readers never see half a
    file) every SNAPSHOT_INTERVAL_S and when it stops. A scrape reaches one worker
    (SO_REUSEPORT); it renders its own live registry plus every other file. So a
    scrape is exact for the worker that answers and at most SNAPSHOT_INTERVAL_S behind
    for the others, which is far below any scrape interval. The parent creates the
    directory before forking and removes it when the last worker has exited.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, pid: int) -> Path:
        return self.directory / f"{pid}.json"

    def write(self, registry: Registry) -> None:
        pid = os.getpid()
        tmp = self.directory / f".{pid}.tmp"
        tmp.write_bytes(orjson.dumps(registry.snapshot()))
        os.replace(tmp, self.path_for(pid))

    def others(self) -> list[tuple[dict[str, list[list[object]]], bool]]:
        me = os.getpid()
        out: list[tuple[dict[str, list[list[object]]], bool]] = []
        for path in self.directory.glob("*.json"):
            pid = int(path.stem)
            if pid == me:
                continue
            try:
                snap = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            out.append((snap, _alive(pid)))
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


MULTIPROCESS: MultiProcess | None = None


def enable_multiprocess(directory: Path | None) -> None:
    """Called by the parent before forking workers (None turns it off again)."""
    global MULTIPROCESS
    MULTIPROCESS = None if directory is None else MultiProcess(directory)


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """A fresh per-run snapshot directory for the workers forked inside the block."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="apigate-metrics-"))
    enable_multiprocess(directory)
    try:
        yield directory
    finally:
        enable_multiprocess(None)
        shutil.rmtree(directory, ignore_errors=True)


def render() -> bytes:
    """One scrape: this process, plus the other workers when there are several."""
    mp = MULTIPROCESS
    if mp is None:
        return REGISTRY.render()
    with contextlib.suppress(OSError):
        mp.write(REGISTRY)  # keep our own file fresh too (another worker may answer next)
    return REGISTRY.render(mp.others())
