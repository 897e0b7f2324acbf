"""GET /status and /status.json on the admin (metrics) listener: the gateway at a glance.

Everything on the page comes from the metrics registry as one scrape sees it (this
worker's live values plus every other worker's snapshot: `metrics.render`), parsed back
with the same reader `apigate diagnose` uses, so the page and the command line agree and
the page needs no hook into any other package. Rates and latencies are the change between
two such scrapes (`diagnosis.Window`): the oldest one kept in a small ring (at most
`WINDOW_S` old) and now. The ring is filled only when someone asks, one entry per
`MIN_SPACING_S`, so an admin port nobody looks at costs nothing (HAProxy's stats page
has the same property). The first view has no earlier scrape: it shows the averages
since the process started.

Read-only, and nothing secret on it: no header, token, URL credential or config value
other than ids, counts and modes; the config is shown as a hash.
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from apigate import __version__
from apigate.config.schema import config_hash
from apigate.telemetry import metrics, names
from apigate.telemetry.basic_auth import BasicAuth
from apigate.telemetry.diagnosis import Series, Window, analyse, parse_metrics, quantile
from apigate.telemetry.health import HEALTH_READY, Health

if TYPE_CHECKING:
    from apigate.config.schema import Config

WINDOW_S = 60.0  # rates, error ratio and quantiles: over about the last minute
MIN_SPACING_S = 1.0  # views closer than this share one scrape (several viewers cost one)
# At most one scrape per MIN_SPACING_S is kept, for WINDOW_S, plus the baseline before it:
# the bound is what the parsed scrapes may hold in memory (about 0.3 kB per series each).
RING_SIZE = int(WINDOW_S / MIN_SPACING_S) + 2
SPARK_POINTS = 30
BREAKER_STATES = {0: "closed", 1: "open", 2: "half-open"}
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

Labels = tuple[tuple[str, str], ...]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1
    return ip.is_loopback


def _host_port(url: str) -> str:
    """An upstream's base_url as host:port: no credentials, path or query."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


class StatusPage:
    """Builds the status document; one per admin listener (per worker)."""

    def __init__(
        self,
        cfg: Config,
        ready: Callable[[], dict[str, Any] | None],
        admin_host: str,
        scrape: Callable[[], bytes] = metrics.render,
        clock: Callable[[], float] = time.monotonic,
        workers_alive: Callable[[], int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.ready = ready
        self.admin_host = admin_host
        self.scrape = scrape
        self.clock = clock
        self.workers_alive = workers_alive or _workers_alive
        self.started = clock()
        self.hash = config_hash(cfg)
        self.ring: deque[tuple[float, Series]] = deque(maxlen=RING_SIZE)
        self._spark_cache: dict[tuple[float, float], dict[str, dict[str, float | None]]] = {}

    def reconfigure(self, cfg: Config) -> None:
        """A reload swapped the configuration: describe the new one from now on (the
        ring of scrapes stays: the metrics carry on across a reload)."""
        self.cfg = cfg
        self.hash = config_hash(cfg)
        self._spark_cache.clear()

    # ------------------------------------------------------------------ the ring
    def sample(self) -> tuple[float, Series]:
        """Now's scrape (or the last one, when it is younger than MIN_SPACING_S)."""
        now = self.clock()
        if self.ring and now - self.ring[-1][0] < MIN_SPACING_S:
            return self.ring[-1]
        series = parse_metrics(self.scrape().decode("utf-8", "replace"))
        # Keep one entry older than the window as its baseline; older ones go.
        while len(self.ring) >= 2 and now - self.ring[1][0] >= WINDOW_S:
            self.ring.popleft()
        self.ring.append((now, series))
        return now, series

    def window(self) -> tuple[Window, bool]:
        """(the window, whether it is since start): oldest kept scrape to the newest."""
        now, series = self.ring[-1]
        if len(self.ring) < 2:
            return Window({}, series, max(now - self.started, 1e-3)), True
        t0, first = self.ring[0]
        return Window(first, series, now - t0), False

    # ------------------------------------------------------------------ the document
    def document(self) -> dict[str, Any]:
        now = self.sample()[0]
        w, since_start = self.window()
        ready = self.ready()
        obs = self.cfg.observability
        admin = obs.admin
        return {
            "version": __version__,
            "uptime_s": round(now - self.started, 1),
            "config_hash": self.hash,
            "last_reload": last_reload(w),
            "workers": {"configured": self.cfg.server.workers, "alive": self.workers_alive()},
            "admin": {
                "address": f"{self.admin_host}:{obs.metrics_port}",
                "loopback_only": is_loopback(self.admin_host),
                "basic_auth": admin.basic_auth is not None,
            },
            "window_s": round(w.seconds, 3),
            "since_start": since_start,
            "ready": None if ready is None else str(ready.get("status", "")),
            "totals": totals(w),
            "routes": self.routes(w),
            "upstreams": upstreams(self.cfg, w, ready),
            "rate_limiting": rate_limiting(self.cfg, w),
            "auth": auth(self.cfg, w),
            "log_sinks": log_sinks(w),
            "diagnosis": diagnosis(w, ready),
        }

    def json(self) -> bytes:
        return orjson.dumps(self.document())

    def routes(self, w: Window) -> list[dict[str, Any]]:
        configured = [r.id for r in self.cfg.routes]
        counts = w.by(names.HTTP_REQUESTS_TOTAL, "route", "status")
        buckets = w.buckets_by(names.HTTP_REQUEST_DURATION_SECONDS, "route")
        seen = {r for r, _ in counts}
        history = self.history()
        out = []
        for route in configured + sorted(seen - set(configured)):
            row = route_stats(w.seconds, route, counts, buckets.get(route, {}))
            row["history"] = [points.get(route, _IDLE) for points in history]
            out.append(row)
        return out

    def history(self) -> list[dict[str, dict[str, float | None]]]:
        """{route: req/s and p99} between consecutive kept scrapes, oldest first (the
        sparklines). A pair of scrapes never changes, so each is computed once."""
        ring = list(self.ring)[-(SPARK_POINTS + 1) :]
        out = []
        cache: dict[tuple[float, float], dict[str, dict[str, float | None]]] = {}
        for (t0, a), (t1, b) in itertools.pairwise(ring):
            points = self._spark_cache.get((t0, t1))
            if points is None:
                w = Window(a, b, t1 - t0)
                rates = w.by(names.HTTP_REQUESTS_TOTAL, "route")
                buckets = w.buckets_by(names.HTTP_REQUEST_DURATION_SECONDS, "route")
                points = {
                    route: {
                        "rps": _round(n / w.seconds, 3),
                        "p99": _round(quantile(0.99, buckets.get(route, {}))),
                    }
                    for (route,), n in rates.items()
                }
            cache[(t0, t1)] = points
            out.append(points)
        self._spark_cache = cache
        return out


_IDLE: dict[str, float | None] = {"rps": 0.0, "p99": None}


# ------------------------------------------------------------------------------ sections
def route_stats(
    seconds: float, route: str, counts: dict[tuple[str, ...], float], buckets: dict[float, float]
) -> dict[str, Any]:
    """One route's row from the window's counts by (route, status) and its duration buckets."""
    by_status = {s: v for (r, s), v in counts.items() if r == route}
    total = sum(by_status.values())
    classes = dict.fromkeys(STATUS_CLASSES, 0.0)
    for status, v in by_status.items():
        key = f"{status[:1]}xx"
        if key in classes:
            classes[key] += v
    return {
        "route": route,
        "requests": total,
        "rps": round(total / seconds, 3),
        "error_rate": round(classes["5xx"] / total, 4) if total else 0.0,
        "p50": _round(quantile(0.5, buckets)),
        "p99": _round(quantile(0.99, buckets)),
        "status_classes": classes,
    }


def totals(w: Window) -> dict[str, Any]:
    by_status = w.by(names.HTTP_REQUESTS_TOTAL, "status")
    total = sum(by_status.values())
    errors = sum(v for (s,), v in by_status.items() if s.startswith("5"))
    gauges = {n: sum(v for (name, _), v in w.after.items() if name == n) for n in _TOTAL_GAUGES}
    return {
        "requests": total,
        "rps": round(total / w.seconds, 3),
        "error_rate": round(errors / total, 4) if total else 0.0,
        "active_connections": gauges[names.ACTIVE_CONNECTIONS],
        "in_flight": gauges[names.IN_FLIGHT_REQUESTS],
    }


_TOTAL_GAUGES = (names.ACTIVE_CONNECTIONS, names.IN_FLIGHT_REQUESTS)


def last_reload(w: Window) -> dict[str, Any]:
    """From config_reloads_total{result} (hot reload's counter): "never" until one happened."""
    counts = {r: v for (r,), v in w.by(names.CONFIG_RELOADS_TOTAL, "result").items()}
    totals_now = {
        dict(labels).get("result", ""): v
        for (n, labels), v in w.after.items()
        if n == names.CONFIG_RELOADS_TOTAL
    }
    if not any(totals_now.values()):
        return {"result": "never", "counts": {}}
    recent = [r for r, v in counts.items() if v > 0]
    result = recent[0] if len(recent) == 1 else "unknown" if not recent else ",".join(sorted(recent))
    return {"result": result, "counts": totals_now}


def _gauges(w: Window, name: str) -> dict[Labels, float]:
    return {labels: v for (n, labels), v in w.after.items() if n == name}


def upstreams(cfg: Config, w: Window, ready: dict[str, Any] | None) -> list[dict[str, Any]]:
    failures = w.by(names.UPSTREAM_FAILURES_TOTAL, "service", "reason")
    healthy = _gauges(w, names.UPSTREAM_TARGET_HEALTHY)
    breaker = _gauges(w, names.UPSTREAM_CIRCUIT_STATE)
    in_flight = _gauges(w, names.UPSTREAM_REQUESTS_IN_FLIGHT)
    pool = _gauges(w, names.UPSTREAM_POOL_CONNECTIONS)
    checks = (ready or {}).get("checks") or {}
    targets: dict[str, dict[str, dict[str, Any]]] = {}

    def target(service: str, name: str) -> dict[str, Any]:
        return targets.setdefault(service, {}).setdefault(
            name, {"target": name, "healthy": None, "breaker": None, "in_flight": None, "pool": {}}
        )

    for labels, v in healthy.items():
        d = dict(labels)
        target(d.get("service", ""), d.get("target", ""))["healthy"] = v >= 1
    for labels, v in breaker.items():
        d = dict(labels)
        target(d.get("service", ""), d.get("target", ""))["breaker"] = BREAKER_STATES.get(int(v), "unknown")
    for labels, v in in_flight.items():
        d = dict(labels)
        target(d.get("service", ""), d.get("target", ""))["in_flight"] = v
    for labels, v in pool.items():
        d = dict(labels)
        target(d.get("service", ""), d.get("target", ""))["pool"][d.get("state", "")] = v
    out = []
    base = {u.id: u.target_list[0].url for u in cfg.upstreams}  # base_url, or the first target
    services = list(base) + sorted({s for s, _ in failures} - set(base))
    for service in services:
        check = checks.get(f"upstream:{service}")
        active = bool(check.get("ok")) if isinstance(check, dict) else None
        rows = list(targets.get(service, {}).values())
        if not rows:  # no per-target metrics: the service is its one implicit target
            name = _host_port(base[service]) if service in base else service
            rows = [{"target": name, "healthy": active, "breaker": None, "in_flight": None, "pool": {}}]
        reasons = {r: v for (s, r), v in failures.items() if s == service and v > 0}
        out.append(
            {
                "service": service,
                "active_check": active,
                "failures": reasons,
                "failures_per_s": round(sum(reasons.values()) / w.seconds, 3),
                "p99": _round(w.quantile(0.99, names.UPSTREAM_REQUEST_DURATION_SECONDS, service=service)),
                "targets": rows,
            }
        )
    return out


def _ratio(part: float, whole: float) -> float | None:
    """part / whole over the window, rounded; None when nothing happened in it."""
    return round(part / whole, 3) if whole > 0 else None


def rate_limiting(cfg: Config, w: Window) -> dict[str, Any]:
    rl = cfg.rate_limiting
    if rl is None:
        return {"enabled": False}
    store = (
        "redis-cluster"
        if rl.redis_cluster_nodes
        else "redis-sentinel"
        if rl.redis_sentinel
        else "redis"
        if rl.redis_url
        else "memory"
    )
    errors = {r: v for (r,), v in w.by(names.RATE_LIMIT_BACKEND_ERRORS_TOTAL, "reason").items() if v > 0}
    rejections = {r: v for (r,), v in w.by(names.RATE_LIMITED_REQUESTS_TOTAL, "route").items() if v > 0}
    return {
        "enabled": True,
        "store": store,
        "failure_mode": rl.failure_mode,
        "store_reachable": None if store == "memory" else not errors,
        "breaker": None if store == "memory" else "open" if errors.get("circuit_open") else "closed",
        "backend_errors": errors,
        "backend_p99": _round(w.quantile(0.99, names.RATE_LIMIT_BACKEND_LATENCY_SECONDS)),
        "batch_size": _ratio(
            w.by(names.RATE_LIMIT_BACKEND_CHECKS_TOTAL).get((), 0.0),
            w.by(names.RATE_LIMIT_BACKEND_ROUND_TRIPS_TOTAL).get((), 0.0),
        ),
        "rejections": rejections,
    }


def auth(cfg: Config, w: Window) -> dict[str, Any]:
    if cfg.auth is None:
        return {"enabled": False}
    failures = {r: v for (r,), v in w.by(names.AUTH_FAILURES_TOTAL, "reason").items() if v > 0}
    lookups = w.by(names.AUTH_CACHE_LOOKUPS_TOTAL, "result")
    hits = lookups.get(("hit",), 0.0)
    return {
        "enabled": True,
        "token_format": cfg.auth.token_format,
        "failures": failures,
        "cache_hit_ratio": _ratio(hits, hits + lookups.get(("miss",), 0.0)),
    }


def log_sinks(w: Window) -> list[dict[str, Any]]:
    delivered = w.by(names.LOG_EVENTS_TOTAL, "sink")
    dropped = w.by(names.LOG_EVENTS_DROPPED_TOTAL, "sink")
    errors = w.by(names.LOG_SINK_ERRORS_TOTAL, "sink")
    queue = w.gauge(names.LOG_SINK_QUEUE_DEPTH, "sink")
    spool = w.gauge(names.LOG_SPOOL_BYTES, "sink")
    sinks = sorted({s for (s,) in delivered} | {s for (s,) in dropped} | set(queue) | set(spool))
    return [
        {
            "sink": s,
            "delivered": delivered.get((s,), 0.0),
            "dropped": dropped.get((s,), 0.0),
            "errors": errors.get((s,), 0.0),
            "queue_depth": queue.get(s, 0.0),
            "spool_bytes": spool.get(s, 0.0),
        }
        for s in sinks
    ]


def diagnosis(w: Window, ready: dict[str, Any] | None) -> dict[str, Any]:
    """`apigate diagnose`'s findings over the same window (its `analyse`, not a copy)."""
    report = analyse(w, ready, None)
    worst = report.worst
    return {
        "status": "healthy" if worst is None else f"SEV{worst}",
        "findings": [
            {
                "severity": f.label,
                "title": f.title,
                "cause": f.cause,
                "runbook": f.runbook,
                "evidence": [f"{e.metric} = {e.value} ({e.window})" for e in f.evidence],
            }
            for f in report.findings
        ],
    }


def _workers_alive() -> int:
    mp = metrics.MULTIPROCESS
    if mp is None:
        return 1
    return 1 + sum(1 for _, alive in mp.others() if alive)


def status_page(cfg: Config, health: Health, host: str) -> tuple[StatusPage | None, BasicAuth | None]:
    """The admin listener's status page and its basic auth, as the config asks."""
    admin = cfg.observability.admin
    if not admin.status_enabled:
        return None, None

    def ready() -> dict[str, Any] | None:
        answer = health.answer(HEALTH_READY)
        if answer is None:
            return None
        doc = orjson.loads(answer[1])
        return doc if isinstance(doc, dict) else None

    auth = admin.basic_auth
    return StatusPage(cfg, ready, host), None if auth is None else BasicAuth(
        auth.username, auth.password_hash
    )
