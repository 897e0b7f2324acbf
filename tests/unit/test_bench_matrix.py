"""bench/matrix.sh's pieces, without a benchmark run: the configurations load, the generated
100-route configuration and tokens are right, and bench/matrix_report.py builds the table."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
import pytest

from apigate.config.loader import load_config, load_config_text

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
ENV = {
    "MATRIX_PORT": "19731",
    "MATRIX_UPSTREAM": "http://127.0.0.1:19701",
    "JWT_SECRET": "test-secret-0123456789abcdef0123456789abcdef",
    "MATRIX_REDIS": "redis://127.0.0.1:19733/0",
    "MATRIX_METRICS_PORT": "19732",
    "MATRIX_LOG": "/tmp/apigate-matrix-test.log",
    "MATRIX_SPOOL": "/tmp/apigate-matrix-test-spool",
}


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


report = _module("matrix_report")
gen = _module("matrix_gen")


def _script_cases() -> list[str]:
    text = (BENCH / "matrix.sh").read_text()
    m = re.search(r'^ALL_CASES="([^"]+)"', text, re.M)
    assert m
    return m.group(1).split()


def test_the_script_the_report_and_the_configs_name_the_same_cases() -> None:
    cases = _script_cases()
    assert cases == list(report.CASES)
    files = {p.stem for p in (BENCH / "matrix").glob("*.yaml")}
    assert files == set(cases) - {"full100"}  # full100 is generated from full.yaml


@pytest.mark.parametrize("case", ["proxy", "jwt", "ratelimit", "metrics", "full", "workers2"])
def test_every_matrix_config_loads(case: str) -> None:
    cfg = load_config(BENCH / "matrix" / f"{case}.yaml", env=ENV)
    assert cfg.server.port == 19731 and cfg.server.bind_address == "127.0.0.1"
    assert cfg.server.workers == (2 if case == "workers2" else 1)
    (route,) = cfg.routes
    assert route.path == "/api/users"
    assert route.auth_required == (case != "proxy")
    assert (route.rate_limit is not None) == (case not in ("proxy", "jwt"))
    assert cfg.observability.metrics_enabled == (case in ("metrics", "full", "workers2"))
    sinks = {s.type for s in cfg.logging.sinks}
    assert sinks == ({"file"} if case in ("full", "workers2") else {"stdout"})


def test_every_matrix_config_loads_without_the_environment() -> None:
    """The defaults in the files: `apigate check -c bench/matrix/<case>.yaml` works alone."""
    for path in (BENCH / "matrix").glob("*.yaml"):
        load_config(path, env={})


def test_leases_knob_turns_leases_on_in_every_redis_case() -> None:
    """`LEASES=1 make bench` adds `leases: true` after each Redis case's failure_mode line
    (matrix.sh's config_of, bench/peers_full.sh): the line is there and the result loads."""
    line = "\n  failure_mode: fail_closed\n"
    for case in ("ratelimit", "metrics", "full", "workers2"):
        text = (BENCH / "matrix" / f"{case}.yaml").read_text()
        assert text.count(line) == 1, case
        leased = text.replace(line, line + "  leases: true\n")
        cfg = load_config_text(leased, env=ENV)
        assert cfg.rate_limiting is not None and cfg.rate_limiting.leases, case
    full = (BENCH / "peers-apigate-full.yaml").read_text()
    assert full.count(line) == 1


def test_the_100_route_config() -> None:
    text = gen.routes_config((BENCH / "matrix" / "full.yaml").read_text(), 100)
    cfg = load_config_text(text, env=ENV)
    paths = [r.path for r in cfg.routes]
    assert len(paths) == 100 and len(set(paths)) == 100
    assert paths[-1] == "/api/users"
    assert all(r.auth_required and r.rate_limit is not None for r in cfg.routes)
    assert all(r.rate_limit.key_type == "user" for r in cfg.routes if r.rate_limit is not None)
    full = load_config(BENCH / "matrix" / "full.yaml", env=ENV)
    assert cfg.logging == full.logging and cfg.observability == full.observability


def test_tokens_one_per_user_and_the_wrk_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", ENV["JWT_SECRET"])
    assert gen.main(["tokens", "3", str(tmp_path)]) == 0
    tokens = (tmp_path / "tokens.txt").read_text().split()
    subs = [jwt.decode(t, ENV["JWT_SECRET"], algorithms=["HS256"])["sub"] for t in tokens]
    assert subs == ["user-00001", "user-00002", "user-00003"]
    headers = (tmp_path / "headers.txt").read_text().splitlines()
    assert headers == [f"Authorization: Bearer {t}" for t in tokens]
    lua = (tmp_path / "tokens.lua").read_text()
    assert all(f'"{t}"' in lua for t in tokens) and "request = function()" in lua


# ------------------------------------------------------------------ the report, from a fixture


def _wrk(
    rps: float, p99_ms: float, n: int, cpu_ticks: int, rss: str = "", non2xx: int = 0, redis: int = 0
) -> str:
    return (
        "Running 10s test @ http://127.0.0.1:19731/api/users\n"
        "  1 threads and 64 connections\n"
        "  Latency Distribution\n"
        "     50%  800.00us\n"
        "     75%    1.20ms\n"
        "     90%    1.50ms\n"
        f"     99%    {p99_ms:.2f}ms\n"
        f"  {n} requests in 10.00s, 9.87MB read\n"
        + (f"  Non-2xx or 3xx responses: {non2xx}\n" if non2xx else "")
        + f"Requests/sec:   {rps:.2f}\n"
        "Transfer/sec:      3.28MB\n"
        f"cpu_ticks {cpu_ticks} hz 100 wall 10.0\n"
        "machine_busy_ticks 1500\n"
        f"redis_cpu_ticks {redis}\n" + (f"{rss}\n" if rss else "")
    )


def _open(rate: float, p50: float, p99: float, kept_up: bool = True) -> dict[str, Any]:
    return {
        "target_rps": rate,
        "achieved_rps": rate if kept_up else rate * 0.9,
        "latency_ms": {"p50": p50, "p90": p99 / 2, "p99": p99, "max": p99 * 2},
        "errors": 0,
        "generator": {"kept_up": kept_up},
        # per second: two at 0.8 x the run's p99, one stalled second, one with nothing sent
        "timeline": [
            {"t": 0, "achieved_rps": rate, "p99_ms": p99 * 0.8},
            {"t": 1, "achieved_rps": rate, "p99_ms": p99 * 30},
            {"t": 2, "achieved_rps": rate, "p99_ms": p99 * 0.8},
            {"t": 3, "achieved_rps": 0, "p99_ms": None},
        ],
    }


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    (tmp_path / "meta.txt").write_text(
        "date 2026-12-06T22:00:00Z\ncpu AMD EPYC\nnproc 2\nkernel 6.1\npython 3.11.7\nnginx 1.22.1\n"
        "redis 7.0.15\nwrk 4.1.0\napigate apigate 0.1.0\ncommit abc1234\nloadavg_before 0.10 0.20 0.30\n"
        "knobs DURATION=10 ROUNDS=3 ROUTES=100 USERS=10000\ncases proxy full workers2\n"
        "open_loop_tokens rotated\nloadavg_after 1.00 0.90 0.80\n"
    )
    files = {
        # proxy: 3 rounds; per-round ratios 0.70, 0.75, 0.80 (median 0.75); apigate req/s median 70,000
        "wrk.proxy.apigate.1.txt": _wrk(70000, 3.0, 700000, 980, "rss root=11:40960"),
        "wrk.proxy.nginx.1.txt": _wrk(100000, 1.0, 1000000, 990),
        "wrk.proxy.apigate.2.txt": _wrk(60000, 4.0, 600000, 840, "rss root=12:41984"),
        "wrk.proxy.nginx.2.txt": _wrk(80000, 1.2, 800000, 790),
        "wrk.proxy.apigate.3.txt": _wrk(80000, 2.0, 800000, 1120, "rss root=13:40000"),
        "wrk.proxy.nginx.3.txt": _wrk(100000, 1.1, 1000000, 1000),
        # full: one round, 36 us/req (9000 ticks of 10 ms over 250,000 requests)
        "wrk.full.apigate.1.txt": _wrk(25000, 13.0, 250000, 900, "rss root=21:61440", non2xx=5, redis=100),
        "wrk.full.nginx.1.txt": _wrk(100000, 1.0, 1000000, 1000),
        # workers2: a master and two workers
        "wrk.workers2.apigate.1.txt": _wrk(
            30000, 9.0, 300000, 1200, "rss root=31:51200 child=32:81920 child=33:71680"
        ),
        "wrk.workers2.nginx.1.txt": _wrk(100000, 1.0, 1000000, 1000),
        "wrk.workers2.apigate.2.txt": "wrk: connection refused\n",  # a failed measurement: left out
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "access-status.full.1.txt").write_text("  249995 200\n      5 503\n")
    (tmp_path / "logs" / "access-status.full.open.txt").write_text("     7 503\n")  # not a round
    (tmp_path / "logs" / "metrics.full.1.txt").write_text(
        'http_requests_total{route="users",status="503"} 5\n'
        'rate_limit_backend_errors_total{reason="timeout"} 5\n'
        'rate_limit_backend_errors_total{reason="refused"} 0\n'
    )
    for name, doc in {
        "open.proxy.apigate.json": _open(35000, 0.5, 2.5, kept_up=False),
        "open.proxy.upstream.json": _open(35000, 0.2, 1.0),
        "open.full.apigate.json": _open(12500, 0.9, 1.6),
        "open.full.upstream.json": _open(12500, 0.2, 0.7),
    }.items():
        (tmp_path / name).write_text(json.dumps(doc))
    return tmp_path


def test_report_builds_the_table(raw: Path) -> None:
    doc = report.build(raw)
    assert [c["case"] for c in doc["cases"]] == ["proxy", "full", "workers2"]
    proxy, full, w2 = doc["cases"]
    assert proxy["apigate"]["rps"] == 70000 and proxy["apigate"]["rps_min"] == 60000
    assert proxy["nginx"]["rps"] == 100000
    assert proxy["ratios"] == [0.7, 0.75, 0.8] and proxy["x_nginx"] == 0.75
    assert proxy["apigate"]["cpu_us_per_req"] == 14.0
    assert proxy["apigate"]["p99_ms"] == 3.0 and proxy["nginx"]["p99_ms"] == 1.1
    assert proxy["rss_mib_per_worker"] == 41.0 and proxy["workers"] == 1 and proxy["rss_mib_master"] is None
    assert proxy["open_loop"]["added_p99_ms"] == 1.5
    assert proxy["open_loop"]["added_p99_1s_median_ms"] == 1.2  # 0.8 x (2.5 - 1.0): the stall left out
    assert full["apigate"]["cpu_us_per_req"] == 36.0 and full["x_nginx"] == 0.25
    assert full["apigate"]["redis_cpu_us_per_req"] == 4.0 and proxy["apigate"]["redis_cpu_us_per_req"] == 0
    assert full["apigate"]["errors"] == 5
    assert full["open_loop"]["rate"] == 12500 and full["open_loop"]["added_p99_ms"] == 0.9
    assert w2["rounds"] == 1 and w2["workers"] == 2
    assert w2["rss_mib_per_worker"] == 80.0 and w2["rss_mib_master"] == 50.0
    assert w2["open_loop"] is None
    assert doc["summary"]["workers2_over_full"] == 1.2
    assert doc["machine"]["cpu"] == "AMD EPYC" and doc["machine"]["loadavg_after"] == "1.00 0.90 0.80"
    assert any("did not keep up with apigate" in n for n in doc["notes"])
    assert full["server_view"] == {
        "statuses": {"503": 5},
        "rate_limit_backend_errors": {'{reason="timeout"}': 5},
    }
    assert (
        "full: closed-loop errors: apigate 5, nginx 0 "
        '(status 503: 5, rate_limit_backend_errors_total{reason="timeout"} 5)' in doc["notes"]
    )


def test_report_writes_markdown_and_json(raw: Path, tmp_path: Path) -> None:
    md, js = tmp_path / "latest.md", tmp_path / "latest.json"
    assert report.main([str(raw), "--md", str(md), "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert doc["issue"] == 18 and len(doc["cases"]) == 3
    text = md.read_text()
    assert "AMD EPYC, 2 CPUs, kernel 6.1" in text and "redis 7.0.15" in text and "git abc1234" in text
    assert "load average before 0.10 0.20 0.30, after 1.00 0.90 0.80" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 4  # the header and three cases
    assert rows[1].startswith("| proxy only | 70,000 (60,000-80,000) | 100,000 | 0.75 | 14.0 | 3.00 / 1.10 |")
    assert "| 35,000 | 0.50 / 2.50 | 1.00 | 1.50 | 1.20 | 41.0 |" in rows[1]
    assert rows[3].endswith("| 80.0 x2 (+50.0 master) |")
    assert "| 0.25 | 36.0 (+4.0 Redis) |" in rows[2] and "| 0.75 | 14.0 |" in rows[1]
    assert "2 workers / 1 worker (full): **1.20**" in text


def test_half_rate_is_half_the_median_max(raw: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--half-rate", str(raw), "proxy"]) == 0
    assert capsys.readouterr().out.strip() == "35000"
