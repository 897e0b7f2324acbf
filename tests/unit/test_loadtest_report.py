"""apigate.loadtest without sockets: schedules, request bytes, the report, the criteria,
the metrics diff, and the docs and script against the code."""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from apigate.loadtest import histogram, report, scrape
from apigate.loadtest.cli import add_arguments
from apigate.loadtest.runner import RunResult, SecondStats, split
from apigate.loadtest.schedule import Profile, ScheduleError, build_profile, parse_duration
from apigate.loadtest.target import TargetError, build_target

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "LOAD_TESTING.md").read_text()
NONE: dict[str, Any] = {
    "rps": None,
    "duration": None,
    "rps_start": None,
    "rps_max": None,
    "ramp_up": None,
    "spike_rps": None,
    "spike_duration": None,
}


def profile(**kw: Any) -> Profile:
    return build_profile(**{**NONE, **kw})


def all_times(p: Profile, workers: int = 1) -> list[float]:
    out = []
    for w in range(workers):
        it = p.times(w, workers)
        while (t := it.next()) is not None:
            out.append(t)
    return sorted(out)


# ---------------------------------------------------------------- durations and profiles
@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("1h", 3600), ("1m30s", 90), ("250ms", 0.25), ("90", 90)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "1m 30s", "-5s", "0s", "nan", "5s10"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ScheduleError):
        parse_duration(text)


def test_constant_profile_is_exact_and_defaults_to_a_minute() -> None:
    p = profile(rps=300)
    assert p.duration == 60 and p.total == 18_000
    assert set(p.targets_per_second()) == {300}
    assert profile(rps=0.5, duration=10).total == 5  # slower than one a second


def test_ramp_lasts_ramp_up_then_holds_the_maximum() -> None:
    ramp = profile(rps_start=1000, rps_max=50_000, ramp_up=300)  # the guide's stress test
    assert ramp.kind == "ramp" and ramp.duration == 300
    assert ramp.total == (1000 + 50_000) / 2 * 300
    longer = profile(rps_start=100, rps_max=400, ramp_up=4, duration=6)
    assert longer.targets_per_second() == [138, 212, 288, 362, 400, 400] or longer.targets_per_second() == [
        137,
        213,
        287,
        363,
        400,
        400,
    ]
    with pytest.raises(ScheduleError, match="shorter than --ramp-up"):
        profile(rps_start=1, rps_max=2, ramp_up=60, duration=30)


def test_spike_is_centred_and_defaults_to_three_times_its_length() -> None:
    spike = profile(rps=5000, spike_rps=25_000, spike_duration=120)  # the guide's spike test
    assert spike.duration == 360
    assert spike.rate_at(119.9) == 5000 and spike.rate_at(120) == 25_000 and spike.rate_at(240) == 5000
    with pytest.raises(ScheduleError, match="must be shorter than --duration"):
        profile(rps=1, spike_rps=2, spike_duration=10, duration=10)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "give a rate"),
        ({"rps_start": 1.0}, "a ramp needs"),
        ({"rps": 1.0, "rps_start": 1.0, "rps_max": 2.0, "ramp_up": 5.0}, "cannot be combined with --rps"),
        ({"rps": 1.0, "spike_rps": 5.0}, "missing --spike-duration"),
        ({"rps": -1.0}, "above 0"),
        ({"rps": math.inf}, "above 0"),
    ],
)
def test_profile_errors_name_the_flags(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        profile(**kw)


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_workers_split_the_schedule_exactly(workers: int) -> None:
    p = profile(rps=100, spike_rps=400, spike_duration=2, duration=6)
    times = all_times(p, workers)
    assert times == all_times(p, 1)
    assert len(times) == p.total == 1200
    per_second = Counter(int(t) for t in times)
    assert [per_second[s] for s in range(6)] == p.targets_per_second() == [100, 100, 400, 400, 100, 100]


def test_ramp_times_follow_the_integral() -> None:
    p = profile(rps_start=100, rps_max=400, ramp_up=4)
    times = all_times(p, 3)
    assert len(times) == p.total == 1000
    per_second = Counter(int(t) for t in times)
    assert [per_second[s] for s in range(4)] == p.targets_per_second()
    assert all(b >= a for a, b in itertools.pairwise(times))
    assert times[-1] < 4


def test_split_connections() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert sum(split(100, 7)) == 100


def test_fast_recording_matches_hdrhistogram() -> None:
    """record_many computes hdrh's counts index itself: it must agree with record_value."""
    import random

    rng = random.Random(7)
    values = [max(1, int(rng.lognormvariate(7, 2))) for _ in range(20_000)] + [
        1,
        2,
        2047,
        2048,
        10**9,
        3_600_000_000,
    ]
    fast, slow = histogram.new(), histogram.new()
    histogram.record_many(fast, values)
    for v in values:
        slow.record_value(v)
    assert list(fast.counts) == list(slow.counts)
    assert fast.get_total_count() == slow.get_total_count() == len(values)
    assert fast.get_min_value() == slow.get_min_value() and fast.get_max_value() == slow.get_max_value()
    assert fast.get_value_at_percentile(99.9) == slow.get_value_at_percentile(99.9)
    clamped = histogram.new()
    histogram.record_many(clamped, [0, -5, 10**12])
    assert clamped.get_total_count() == 3
    assert clamped.get_min_value() == 1 and clamped.get_max_value() >= histogram.HIGHEST_US


def test_worker_histograms_merge_exactly() -> None:
    """What --workers relies on: shipped encoded and added, the percentiles are the whole's."""
    import random

    rng = random.Random(3)
    values = [max(1, int(rng.lognormvariate(8, 1.5))) for _ in range(30_000)]
    whole, merged = histogram.new(), histogram.new()
    histogram.record_many(whole, values)
    for part in (values[0::3], values[1::3], values[2::3]):  # three workers' shares
        h = histogram.new()
        histogram.record_many(h, part)
        histogram.add_encoded(merged, histogram.encode(h))
    assert histogram.summary_ms(merged) == histogram.summary_ms(whole)
    assert merged.get_total_count() == len(values)


# ---------------------------------------------------------------- request bytes
def test_request_bytes() -> None:
    t = build_target("http://127.0.0.1:8080/api/users?x=1", "post", ["X-A: 1", "Host: api.example"], b"hi")
    head, _, body = t.request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/users?x=1 HTTP/1.1"
    assert b"Host: api.example" in lines and not any(x.startswith(b"Host: 127") for x in lines)
    assert b"Content-Length: 2" in lines and body == b"hi"
    plain = build_target("https://example.org", "GET", [], None)
    assert plain.tls and plain.port == 443
    assert plain.request.startswith(b"GET / HTTP/1.1\r\nHost: example.org\r\n")
    assert b"Content-Length" not in plain.request


@pytest.mark.parametrize(
    ("url", "method", "headers", "message"),
    [
        ("ftp://x/", "GET", [], "http:// or https://"),
        ("http://x:99999/", "GET", [], "invalid port"),
        ("http://x/", "G T", [], "not an HTTP method"),
        ("http://x/", "GET", ["Content-Length: 5"], "set from --body"),
        ("http://x/", "GET", ["bad header: x"], "is not 'Name: value'"),
        ("http://x/é", "GET", [], "ASCII"),
    ],
)
def test_bad_targets(url: str, method: str, headers: list[str], message: str) -> None:
    with pytest.raises(TargetError, match=message):
        build_target(url, method, headers, None)


# ---------------------------------------------------------------- the report and criteria
def fake_result(
    latencies_ms: list[list[float]],
    statuses: dict[int, int],
    kinds: dict[str, int] | None = None,
    errors_per_second: list[int] | None = None,
    sent: int | None = None,
) -> RunResult:
    p = profile(rps=len(latencies_ms[0]) or 1, duration=len(latencies_ms))
    seconds = []
    total = histogram.new()
    for i, lat in enumerate(latencies_ms):
        h = histogram.new()
        histogram.record_many(h, [int(v * 1000) for v in lat])
        histogram.record_many(total, [int(v * 1000) for v in lat])
        errs = errors_per_second[i] if errors_per_second else 0
        seconds.append(SecondStats(done=len(lat) + errs, errors=errs, hist=h))
    n = sum(statuses.values()) + sum((kinds or {}).values())
    return RunResult(
        p,
        build_target("http://127.0.0.1:1/", "GET", [], None),
        1,
        10,
        5.0,
        "2026-01-01T00:00:00+00:00",
        seconds,
        total,
        total,
        histogram.new(),
        sent=n if sent is None else sent,
        last_send=p.duration - 0.01,
        statuses=Counter(statuses),
        error_kinds=Counter(kinds or {}),
        error_examples={k: f"{k} happened" for k in kinds or {}},
    )


def test_report_counts_errors_and_passes_within_the_criteria() -> None:
    result = fake_result([[1.0] * 100, [2.0] * 100], {200: 200})
    doc = report.build(result, 500, 0.1, None)
    assert doc["requests"] == 200 and doc["errors"] == 0 and doc["achieved_rps"] == 100
    assert doc["latency_ms"]["p99"] == pytest.approx(2.0, rel=0.01)
    assert doc["criteria"]["passed"] is True
    assert doc["breaking_point"] is None
    assert [e["target_rps"] for e in doc["timeline"]] == [100, 100]
    assert (
        report.summary(doc).splitlines()[-1].startswith("PASS  p99 2.000 ms < 500 ms; error rate 0 % < 0.1 %")
    )


def test_5xx_and_connection_errors_fail_the_error_criterion() -> None:
    result = fake_result([[1.0] * 100, [1.0] * 100], {200: 197, 503: 1, 302: 2}, {"reset": 1})
    doc = report.build(result, 500, 0.1, None)
    assert doc["errors"] == 2 and doc["requests"] == 201
    assert doc["errors_by_status"] == {"503": 1}
    assert doc["errors_by_kind"] == {"reset": 1}
    assert doc["criteria"]["error_rate_pct"]["passed"] is False
    assert doc["criteria"]["passed"] is False
    assert "503 x1, reset x1" in report.summary(doc)


def test_breaking_point_is_the_first_second_over_a_criterion() -> None:
    result = fake_result([[1.0] * 100, [1.0] * 100, [900.0] * 100, [1.0] * 100], {200: 400})
    doc = report.build(result, 500, 0.1, None)
    bp = doc["breaking_point"]
    assert bp is not None and bp["t"] == 2 and bp["reason"].startswith("p99 ")
    errors = fake_result([[1.0] * 100, [1.0] * 100], {200: 200}, errors_per_second=[0, 1])
    bp = report.build(errors, 500, 0.1, None)["breaking_point"]
    assert bp is not None and bp["t"] == 1 and "error rate" in bp["reason"]


def test_nothing_connecting_is_a_fail_naming_the_error() -> None:
    result = fake_result([[], []], {}, {"refused": 2})
    doc = report.build(result, 500, 0.1, None)
    assert doc["criteria"]["passed"] is False
    assert doc["criteria"]["failure"] == "no request got a response (refused: refused happened)"
    assert (
        report.summary(doc).splitlines()[-1].endswith("no request got a response (refused: refused happened)")
    )


def test_a_slow_generator_is_not_a_slow_server() -> None:
    result = fake_result([[1.0] * 100, [1.0] * 100], {200: 200}, sent=150)
    doc = report.build(result, 500, 0.1, None)
    assert doc["generator"]["kept_up"] is False
    assert "the generator could not keep up" in doc["generator"]["note"]
    assert "warning    the generator could not keep up" in report.summary(doc)


def test_a_server_restart_fails_the_run() -> None:
    result = fake_result([[1.0] * 10], {200: 10})
    server = {"url": "u", "requests": 10, "errors_5xx": 0, "p99_ms": 1.0, "restarted": True}
    server["restart_evidence"] = ["http_requests_total went down (9 -> 1)"]
    doc = report.build(result, 500, 0.1, server)
    assert doc["criteria"]["passed"] is False and doc["criteria"]["no_restarts"]["passed"] is False
    assert "RESTARTED: http_requests_total went down" in report.summary(doc)


# ---------------------------------------------------------------- --metrics
METRICS_BEFORE = """# HELP http_requests_total x
# TYPE http_requests_total counter
http_requests_total{method="GET",route="r",status="200"} 10
http_requests_total{method="GET",route="r",status="503"} 1
http_request_duration_seconds_bucket{le="0.01",route="r"} 5
http_request_duration_seconds_bucket{le="0.1",route="r"} 11
http_request_duration_seconds_bucket{le="+Inf",route="r"} 11
apigate_build_info{version="0.1.0"} 1
"""
METRICS_AFTER = METRICS_BEFORE.replace("} 10\n", "} 1010\n").replace(
    '"0.01",route="r"} 5', '"0.01",route="r"} 905'
)
METRICS_AFTER = METRICS_AFTER.replace('"0.1",route="r"} 11', '"0.1",route="r"} 1011').replace(
    '"+Inf",route="r"} 11', '"+Inf",route="r"} 1011'
)


def test_server_view_from_two_scrapes() -> None:
    view = scrape.server_view("u", scrape.parse(METRICS_BEFORE), scrape.parse(METRICS_AFTER))
    assert view["requests"] == 1000 and view["errors_5xx"] == 0
    # 900 of 1000 under 10 ms, the rest under 100 ms: p99 = 10 + 90 * (990 - 900) / 100 ms
    assert view["p99_ms"] == pytest.approx(91.0)
    assert view["restarted"] is False and view["build_versions"] == ["0.1.0"]


def test_a_counter_going_down_is_a_restart() -> None:
    view = scrape.server_view("u", scrape.parse(METRICS_AFTER), scrape.parse(METRICS_BEFORE))
    assert view["restarted"] is True
    assert "went down" in view["restart_evidence"][0]


# ---------------------------------------------------------------- docs and script
def flags() -> set[str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return {opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")}


GUIDE_FLAGS = {
    "--rps",
    "--duration",
    "--rps-start",
    "--rps-max",
    "--ramp-up",
    "--spike-rps",
    "--spike-duration",
}
ISSUE_FLAGS = {
    "--url",
    "--method",
    "--header",
    "--header-file",  # issue 18's benchmark matrix: a token per user
    "--body",
    "--body-file",
    "--connections",
    "--workers",
    "--timeout",
}
ISSUE_FLAGS |= {"--report", "--plot", "--p99-ms", "--max-error-rate", "--metrics", "--help"}


def test_the_flags_are_exactly_the_guides_and_the_issues() -> None:
    assert flags() == GUIDE_FLAGS | ISSUE_FLAGS


def test_every_flag_is_documented() -> None:
    for flag in flags():
        assert f"`{flag}" in DOC, flag


def test_every_report_field_is_documented() -> None:
    result = fake_result([[1.0] * 10], {200: 10})
    server = scrape.server_view("u", scrape.parse(METRICS_BEFORE), scrape.parse(METRICS_AFTER))
    doc = report.build(result, 500, 0.1, server)
    doc["criteria"]["failure"] = "x"
    doc["breaking_point"] = report.breaking_point(doc["timeline"], 0.001, 0.1)
    for key, value in doc.items():
        assert f"`{key}" in DOC, key
        if key in ("profile", "generator", "criteria", "server_view"):
            for sub in value:
                assert f"`{key}.{sub}`" in DOC, f"{key}.{sub}"
        elif key in ("breaking_point",) or key.startswith("latency"):
            for sub in value:
                assert f"`{sub}`" in DOC, f"{key}.{sub}"
    for sub in doc["timeline"][0]:
        assert f"| `{sub}` |" in DOC, f"timeline.{sub}"
    server_error = {"url": "u", "error": "cannot scrape"}
    for sub in server_error:
        assert f"`server_view.{sub}`" in DOC


def test_script_help_is_the_commands() -> None:
    out = subprocess.run(
        [str(REPO / "scripts" / "load-test.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.startswith("usage: load-test.sh ")
    for flag in flags():
        assert flag in out, flag
