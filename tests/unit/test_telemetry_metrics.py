"""The metrics registry and the metrics filter, without sockets."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from cycles import request_context

from apigate.config.schema import RouteConfig
from apigate.gateway.filters import RequestContext
from apigate.gateway.router import Router
from apigate.telemetry import metrics
from apigate.telemetry.filter import UNMATCHED, MetricsFilter

DOCS = Path(__file__).resolve().parents[2] / "docs" / "OBSERVABILITY.md"


# The route every request of these tests matched (a real one: the filter is compiled).
_USERS = Router(
    [RouteConfig.model_validate({"id": "users", "path": "/users/*", "upstream_id": "user-service"})]
).match("GET", "/users/1")[0]  # type: ignore[index]


def ctx(**kw: Any) -> RequestContext:
    """A finished request's context: GET /users/1 on route `users`, 200, 4 ms upstream."""
    c = request_context(kw.pop("path", "/users/1"), start=kw.pop("start", 10.0))
    values: dict[str, Any] = {
        "route": _USERS,
        "status": 200,
        "upstream_id": "user-service",
        "upstream_duration": 0.004,
        "upstream_failure": None,
        "error": None,
    }
    values.update(kw)
    for name, value in values.items():
        setattr(c, name, value)
    return c


def lines(text: bytes) -> list[str]:
    return [ln for ln in text.decode().splitlines() if not ln.startswith("#")]


def test_render_counter_gauge_histogram() -> None:
    reg = metrics.Registry()
    c = reg.counter("things_total", "Things.", ("kind", "status"))
    g = reg.gauge("level", "Level.")
    h = reg.histogram("lat_seconds", "Latency.", ("route",), (0.1, 0.5, 1.0))
    c.inc(("a", 200))
    c.inc(("a", 200), 2)
    c.inc(('we"ird\\', 503))
    g.set((), 7)
    for v in (0.05, 0.1, 0.3, 0.7, 5.0):
        h.observe(("r",), v)
    out = reg.render()
    text = out.decode()
    assert "# TYPE things_total counter" in text
    assert "# TYPE lat_seconds histogram" in text
    got = lines(out)
    assert 'things_total{kind="a",status="200"} 3' in got
    assert 'things_total{kind="we\\"ird\\\\",status="503"} 1' in got
    assert "level 7" in got
    # le is inclusive (0.1 falls in the 0.1 bucket); buckets are cumulative; +Inf == count.
    assert 'lat_seconds_bucket{route="r",le="0.1"} 2' in got
    assert 'lat_seconds_bucket{route="r",le="0.5"} 3' in got
    assert 'lat_seconds_bucket{route="r",le="1.0"} 4' in got
    assert 'lat_seconds_bucket{route="r",le="+Inf"} 5' in got
    assert 'lat_seconds_count{route="r"} 5' in got
    (sum_line,) = [ln for ln in got if ln.startswith("lat_seconds_sum")]
    assert float(sum_line.split()[-1]) == pytest.approx(6.15)


def test_a_name_is_defined_once() -> None:
    reg = metrics.Registry()
    reg.counter("x_total", "X.")
    with pytest.raises(ValueError):
        reg.gauge("x_total", "again")


def test_request_buckets_span_1ms_to_10s_and_include_the_alert_threshold() -> None:
    b = metrics.HTTP_REQUEST_DURATION.buckets
    assert b[0] == 0.001 and b[-1] == 10.0 and 0.5 in b and list(b) == sorted(b)


def test_collectors_run_at_scrape_time() -> None:
    reg = metrics.Registry()
    g = reg.gauge("open", "Open.")
    state = {"n": 1}
    reg.add_collector("k", lambda: g.set((), state["n"]))
    assert "open 1" in lines(reg.render())
    state["n"] = 5
    assert "open 5" in lines(reg.render())
    reg.remove_collector("k")


def test_snapshots_sum_counters_and_histograms_and_drop_dead_workers_gauges() -> None:
    reg = metrics.Registry()
    c = reg.counter("req_total", "R.", ("status",))
    g = reg.gauge("conns", "C.")
    h = reg.histogram("d_seconds", "D.", (), (1.0,))
    c.inc((200,), 2)
    g.set((), 3)
    h.observe((), 0.5)
    other = orjson.loads(orjson.dumps(reg.snapshot()))  # as another worker would write it
    out = lines(reg.render([(other, True), (other, False)]))
    assert 'req_total{status="200"} 6' in out  # live + alive + dead worker
    assert "conns 6" in out  # the dead worker's gauge is not counted
    assert 'd_seconds_bucket{le="1.0"} 3' in out
    assert "d_seconds_count 3" in out


def test_multiprocess_files(tmp_path: Path) -> None:
    reg = metrics.Registry()
    c = reg.counter("n_total", "N.")
    c.inc()
    mp = metrics.MultiProcess(tmp_path)
    mp.write(reg)
    assert (tmp_path / f"{os.getpid()}.json").exists()
    assert mp.others() == []  # our own file is not read back (we render live values)
    # A file from a pid that no longer exists: counted, marked dead.
    (tmp_path / "999999999.json").write_bytes(orjson.dumps(reg.snapshot()))
    (tmp_path / "1.json").write_bytes(b"{not json")  # a torn or foreign file is skipped
    others = mp.others()
    assert len(others) == 1 and others[0][1] is False
    assert "n_total 2" in lines(reg.render(others))


def series(metric: metrics.Metric | metrics.Histogram, labels: tuple[Any, ...]) -> Any:
    return metric.series.get(labels)


def count(labels: tuple[Any, ...]) -> float:
    metrics.REGISTRY.collect()  # http_requests_total is copied in at scrape time
    return metrics.HTTP_REQUESTS.value(labels)


def test_filter_records_requests_latency_and_upstream() -> None:
    f = MetricsFilter(clock=lambda: 10.03)
    before = count(("GET", "users", 200))
    up_before = metrics.UPSTREAM_REQUEST_DURATION.count(("user-service",))
    f.on_complete(ctx())
    assert count(("GET", "users", 200)) == before + 1
    assert metrics.UPSTREAM_REQUEST_DURATION.count(("user-service",)) == up_before + 1
    hist = series(metrics.HTTP_REQUEST_DURATION, ("GET", "users"))
    assert hist[metrics.REQUEST_BUCKETS.index(0.05)] >= 1  # 30 ms lands in the 50 ms bucket


def test_filter_unmatched_route_label() -> None:
    f = MetricsFilter(clock=lambda: 10.0)
    before = count(("GET", UNMATCHED, 404))
    f.on_complete(ctx(route=None, upstream_id=None, status=404, error="not_found", upstream_duration=None))
    assert count(("GET", UNMATCHED, 404)) == before + 1


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"status": 503, "upstream_duration": 0.01}, "5xx"),  # the upstream answered 503
        (
            {
                "status": 502,
                "error": "upstream_unavailable",
                "upstream_duration": None,
                "upstream_failure": "connect",
            },
            "connect",
        ),
        (
            {
                "status": 504,
                "error": "upstream_timeout",
                "upstream_duration": None,
                "upstream_failure": "timeout",
            },
            "timeout",
        ),
        ({"status": 200, "upstream_failure": "reset"}, "reset"),  # reset mid-body, after the headers
    ],
)
def test_filter_upstream_failures(kw: dict[str, Any], reason: str) -> None:
    f = MetricsFilter(clock=lambda: 10.0)
    key = ("svc-" + reason, reason)
    before = metrics.UPSTREAM_FAILURES.value(key)
    f.on_complete(ctx(upstream_id=key[0], **kw))
    assert metrics.UPSTREAM_FAILURES.value(key) == before + 1


@pytest.mark.parametrize(
    "kw",
    [
        {"status": 401, "error": "unauthenticated", "upstream_duration": None},  # never reached upstream
        {"status": 503, "error": "rate_limit_store_down", "upstream_duration": None},  # the gateway's 503
        {"status": 404, "upstream_duration": 0.01},  # a 4xx from upstream is not a failure
    ],
)
def test_filter_not_upstream_failures(kw: dict[str, Any]) -> None:
    f = MetricsFilter(clock=lambda: 10.0)
    before = sum(v for k, v in metrics.UPSTREAM_FAILURES.series.items() if k[0] == "quiet-svc")
    f.on_complete(ctx(upstream_id="quiet-svc", **kw))
    assert sum(v for k, v in metrics.UPSTREAM_FAILURES.series.items() if k[0] == "quiet-svc") == before


def test_docs_list_every_metric_with_its_labels() -> None:
    """docs/OBSERVABILITY.md's table and telemetry/metrics.py name the same metrics and labels."""
    documented: dict[str, tuple[str, ...]] = {}
    for m in re.finditer(
        r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \| ([^|]*)\|", DOCS.read_text(), re.M
    ):
        labels = tuple(re.findall(r"`([a-z_]+)`", m.group(3)))
        documented[m.group(1)] = labels
    exported = {name: fam.labelnames for name, fam in metrics.REGISTRY.families.items()}
    assert documented == exported


def test_build_info_is_not_summed_over_workers() -> None:
    reg = metrics.Registry()
    g = reg.gauge("info", "I.", ("version",))
    g.set(("1",), 1)
    g.merge_max = True
    snap = reg.snapshot()
    assert 'info{version="1"} 1' in lines(reg.render([(snap, True), (snap, True)]))


def test_collectors_export_rate_limit_and_log_counters() -> None:
    from apigate.ratelimit.redis import RedisStore
    from apigate.telemetry.runtime import Telemetry

    store = RedisStore("redis://127.0.0.1:1/0", 50)  # never started: only its counters are read
    client = store.client
    store.backend_errors.update(timeout=2, connection=0)
    client.round_trips, client.commands_sent = 4, 12
    client.latency_buckets[:] = [1] + [0] * (len(metrics.BACKEND_BUCKETS) - 1)
    client.latency_count, client.latency_sum = 3, 0.7
    from apigate.config.schema import Config
    from apigate.ratelimit.filter import RateLimitFilter

    rl = RateLimitFilter(
        Config.model_validate(
            {
                "upstreams": [{"id": "u", "base_url": "http://127.0.0.1:1"}],
                "routes": [{"id": "users", "path": "/u", "upstream_id": "u"}],
                "rate_limiting": {"default_limit": {"limit": 5, "window_secs": 1}},
            }
        )
    )
    rl.limited = {("users", "ip"): 4}
    rl.store = store

    class Logs:
        def samples(self) -> Any:
            yield "log_events_total", {"sink": "stdout"}, 12.0
            yield "log_events_dropped_total", {"sink": "es", "reason": "queue_full"}, 3.0
            yield "log_spool_bytes", {"sink": "es"}, 2048.0

    t = Telemetry.__new__(Telemetry)
    t.filters = [rl]  # type: ignore[list-item]
    t.logs = Logs
    t._collect_filters()  # through the filter contract's samples()
    t._collect_logs()
    assert metrics.RATE_LIMITED_REQUESTS.value(("users", "ip")) == 4
    assert metrics.RATE_LIMIT_BACKEND_ERRORS.value(("timeout",)) == 2
    assert metrics.RATE_LIMIT_BACKEND_LATENCY.count(()) == 3  # two above the last bound: +Inf
    assert metrics.RATE_LIMIT_BACKEND_CHECKS.value(()) == 12  # per round trip: the batch size
    assert metrics.RATE_LIMIT_BACKEND_ROUND_TRIPS.value(()) == 4
    assert metrics.LOG_EVENTS.value(("stdout",)) == 12
    assert metrics.LOG_EVENTS_DROPPED.value(("es", "queue_full")) == 3
    assert metrics.LOG_SPOOL_BYTES.value(("es",)) == 2048


def test_rate_limit_latency_buckets_match_the_store() -> None:
    from apigate.ratelimit.redis import LATENCY_BUCKETS_S

    assert metrics.RATE_LIMIT_BACKEND_LATENCY.buckets == LATENCY_BUCKETS_S


def test_health_probes_are_not_counted_as_traffic() -> None:
    f = MetricsFilter(clock=lambda: 10.0)
    metrics.REGISTRY.collect()
    before = sum(metrics.HTTP_REQUESTS.series.values())
    f.on_complete(ctx(route=None, upstream_id=None, status=503, path="/health/ready"))
    f.on_complete(ctx(route=None, upstream_id=None, status=200, path="/health/live"))
    metrics.REGISTRY.collect()
    assert sum(metrics.HTTP_REQUESTS.series.values()) == before


def test_error_rate_over_the_last_minute_from_merged_counters() -> None:
    reg = metrics.Registry()
    reqs = reg.counter("http_requests_total", "R.", ("method", "route", "status"))
    reg.gauge("http_error_rate", "E.", ("window",))
    rate = metrics._ErrorRate()
    reg.derived["http_error_rate"] = rate
    reqs.inc(("GET", "r", 200), 90)
    reqs.inc(("GET", "r", 503), 10)
    other = {"http_requests_total": [["GET", "r", 500, 100.0]]}  # another worker: all errors
    assert 'http_error_rate{window="1m"} 0.55' in lines(reg.render([(other, True)]))
    assert "http_error_rate" not in reg.snapshot()  # derived, never summed over workers
    reqs.inc(("GET", "r", 200), 100)  # since the last scrape: 100 more, no errors
    assert 'http_error_rate{window="1m"} 0' in lines(reg.render([(other, True)]))
    rate.history = [(h[0] - 61, h[1], h[2]) for h in rate.history]  # a minute later: the old samples go
    reqs.inc(("GET", "r", 503), 100)
    assert 'http_error_rate{window="1m"} 1' in lines(reg.render([(other, True)]))
