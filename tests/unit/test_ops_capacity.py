"""`apigate capacity`: the guide's formulas and examples (§3.2.2, §3.4.1, §3.4.2, §3.5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apigate.ops.capacity import Inputs, plan

# Not the data plane: a stale compiled build must not add its notice to stderr.
QUIET = {**os.environ, "APIGATE_PURE": "1"}


def capacity(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apigate", "capacity", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=QUIET,
    )


def test_the_guides_example_gives_15_instances() -> None:
    out = capacity("--peak-rps", "100000", "--per-instance", "10000", "--safety", "1.5", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["instances"] == 15
    text = capacity("--peak-rps", "100000", "--per-instance", "10000", "--safety", "1.5")
    assert text.stdout.startswith("Instances: 15 ")


@pytest.mark.parametrize(
    ("peak", "per", "safety", "instances"),
    [
        (1000, 10000, 1.5, 3),  # never fewer than the HPA minimum
        (20000, 10000, 1.5, 3),
        (30000, 10000, 1.5, 5),  # 4.5 rounds up
        (100000, 10000, 2.0, 20),
        (100000, 8000, 3.0, 38),  # 37.5 rounds up
    ],
)
def test_instances_round_up_and_respect_the_minimum(
    peak: float, per: float, safety: float, instances: int
) -> None:
    assert plan(Inputs(peak, per, safety)).instances == instances


def test_redis_memory_matches_the_guides_example() -> None:
    """100,000 sessions x 1 KB + 1,000,000 keys x 100 B = 200 MB, + 50% = 300 MB."""
    p = plan(Inputs(100000, 10000, sessions=100_000, session_kb=1, rl_keys=1_000_000))
    assert p.redis_memory_bytes == 300_000_000
    assert p.redis_recommended_bytes == 2_000_000_000  # §3.4.1: 2-4 GB minimum


def test_pool_sizing_matches_the_guides_example() -> None:
    """10 gateway instances x 100 concurrent / 5 upstream instances = 200 per upstream instance."""
    p = plan(Inputs(100000, 10000, safety=1.0, max_concurrent=100, upstream_instances=5))
    assert p.instances == 10
    assert p.connections_per_upstream_instance == 200 and p.pool_per_instance == 100
    assert p.redis_connections == 100  # §3.4.1: 10 per gateway instance


def test_projection_compounds_growth_per_year_and_hpa_bounds() -> None:
    out = capacity("--peak-rps", "10000", "--growth", "100%", "--sessions", "100000", "--format", "json")
    data = json.loads(out.stdout)
    months = {p["months"]: p for p in data["projection"]}
    assert months[0]["peak_rps"] == 10000 and months[12]["peak_rps"] == 20000
    assert months[6]["peak_rps"] == pytest.approx(14142.1, abs=0.1)
    assert [months[m]["instances"] for m in (0, 6, 12)] == [3, 3, 3]
    assert months[12]["redis_memory_bytes"] == 2 * months[0]["redis_memory_bytes"]
    assert data["hpa"] == {"min_replicas": 3, "max_replicas": 6, "target_rps_per_pod": 8000}


def test_per_instance_from_a_loadtest_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"summary": {"achieved_rps": 12500.0, "p99_ms": 40}}))
    out = capacity("--peak-rps", "100000", "--from-loadtest", str(report), "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["inputs"]["per_instance_rps"] == 12500.0 and data["instances"] == 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peak-rps", "0"], "capacity: --peak-rps must be greater than 0\n"),
        (
            ["--peak-rps", "10", "--per-instance", "-5"],
            "capacity: --per-instance must be greater than 0\n",
        ),
        (
            ["--peak-rps", "10", "--from-loadtest", "/nonexistent/r.json"],
            "capacity: cannot read /nonexistent/r.json: ",
        ),
    ],
)
def test_bad_input_is_one_line_exit_1(args: list[str], message: str) -> None:
    out = capacity(*args)
    assert out.returncode == 1 and out.stderr.startswith(message) and out.stderr.count("\n") == 1


def test_a_loadtest_report_without_a_rate_is_named(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text('{"p99_ms": 3}')
    out = capacity("--peak-rps", "10", "--from-loadtest", str(report))
    assert out.returncode == 1 and "no positive per_instance_rps / achieved_rps" in out.stderr


def test_usage_errors_exit_2() -> None:
    assert capacity().returncode == 2
    out = capacity("--peak-rps", "10", "--growth", "lots")
    assert out.returncode == 2 and "not a percentage" in out.stderr
