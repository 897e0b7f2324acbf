"""`apigate loadtest` / scripts/load-test.sh against real upstreams on 127.0.0.1.

Rates stay at a few hundred req/s for a few seconds: the schedule is what is checked, not
the machine's speed, and the suite shares two cores.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import APIGATE, PYTHON, REPO, UpstreamProcess, free_port, gateway_config

SCRIPT = REPO / "scripts" / "load-test.sh"
UPSTREAM = Path(__file__).with_name("loadtest_upstream.py")
RUN_TIMEOUT_S = 120


def run_loadtest(
    args: str, tmp_path: Path, command: list[str] | None = None
) -> tuple[int, str, str, dict[str, Any] | None]:
    """Run `apigate loadtest ARGS --report ...` (ARGS split like a shell line) to its end."""
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    cmd = [*(command or [str(APIGATE), "loadtest"]), *shlex.split(args), "--report", str(report)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    doc = json.loads(report.read_text()) if report.exists() else None
    return proc.returncode, proc.stdout, proc.stderr, doc


@pytest.fixture
def upstream(tmp_path: Path) -> Any:
    port = free_port()
    up = UpstreamProcess([str(PYTHON), str(UPSTREAM), "--port", str(port)], port, tmp_path)
    yield up
    up.stop()


def assert_no_traceback(*outputs: str) -> None:
    for out in outputs:
        assert "Traceback" not in out, out


def test_constant_rate_count_and_rate_within_2_percent(upstream: UpstreamProcess, tmp_path: Path) -> None:
    rc, out, err, doc = run_loadtest(
        f"--url {upstream.url}/ok --rps 300 --duration 4s", tmp_path, [str(SCRIPT)]
    )
    assert rc == 0, out + err
    assert doc is not None
    assert abs(doc["requests"] - 1200) <= 24
    assert abs(doc["achieved_rps"] - 300) <= 6
    assert doc["errors"] == 0
    assert doc["criteria"]["passed"] is True
    assert [e["target_rps"] for e in doc["timeline"][:4]] == [300, 300, 300, 300]
    assert sum(e["achieved_rps"] for e in doc["timeline"]) == doc["requests"]
    assert doc["generator"]["kept_up"] is True
    assert out.splitlines()[-1].startswith("PASS  p99 ")
    # not a terminal: one plain progress line per second on stderr
    assert sum(1 for line in err.splitlines() if line.startswith("t=")) >= 4
    assert_no_traceback(out, err)


def test_on_a_terminal_progress_is_a_live_table(upstream: UpstreamProcess, tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 140, 0, 0))  # rows, columns
    cmd = [str(APIGATE), "loadtest", "--url", f"{upstream.url}/ok", "--rps", "50", "--duration", "2s"]
    env = {**os.environ, "COLUMNS": "140", "LINES": "30"}  # rich reads these before the ioctl
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    screen = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            screen += chunk
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = screen.decode(errors="replace")
    assert "achieved req/s" in text and "p99 so far" in text, text[:3000]  # the header
    assert "t=   1s" not in text  # not the plain lines
    assert "PASS  p99" in text


def test_two_workers_split_the_schedule_exactly(upstream: UpstreamProcess, tmp_path: Path) -> None:
    rc, out, err, doc = run_loadtest(
        f"--url {upstream.url}/ok --rps 250 --duration 3s --workers 2 --connections 8",
        tmp_path,
    )
    assert rc == 0, out + err
    assert doc is not None
    assert doc["requests"] == 750  # the merged count: every scheduled request exactly once
    assert doc["responses"] == 750
    assert abs(doc["achieved_rps"] - 250) <= 5
    assert doc["workers"] == 2


def test_keep_alive_connections_are_reused_for_head_and_post(tmp_path: Path) -> None:
    up = UpstreamProcess.demo(tmp_path)
    try:
        head = run_loadtest(
            f"--url {up.url}/api/users --method HEAD --rps 100 --duration 2s --connections 2", tmp_path
        )
        body = tmp_path / "body.json"
        body.write_text('{"hello": "world"}')
        post = run_loadtest(
            f"--url {up.url}/api/echo/x --method POST --body-file {body}"
            " --header 'Content-Type: application/json' --rps 100 --duration 1s --connections 2",
            tmp_path,
        )
    finally:
        up.stop()
    for rc, out, err, doc in (head, post):
        assert rc == 0, out + err
        assert doc is not None and doc["errors"] == 0
        assert doc["generator"]["connections_opened"] == 2  # no reconnects: framing was right
    assert head[3] is not None and head[3]["statuses"] == {"200": 200}
    assert post[3] is not None and post[3]["statuses"] == {"200": 100}


def test_ramp_follows_its_schedule_and_marks_nothing_when_healthy(
    upstream: UpstreamProcess, tmp_path: Path
) -> None:
    png = tmp_path / "ramp.png"
    rc, out, err, doc = run_loadtest(
        f"--url {upstream.url}/ok --rps-start 100 --rps-max 400 --ramp-up 4s --plot {png}",
        tmp_path,
    )
    assert rc == 0, out + err
    assert doc is not None
    # linear 100 -> 400 over 4 s: 137.5, 212.5, 287.5, 362.5 due in the four seconds
    targets = [e["target_rps"] for e in doc["timeline"][:4]]
    assert all(abs(t - want) <= 1 for t, want in zip(targets, (137.5, 212.5, 287.5, 362.5), strict=True)), (
        targets
    )
    assert doc["profile"]["duration_s"] == 4  # a ramp without --duration lasts --ramp-up
    assert doc["requests"] == 1000
    assert doc["breaking_point"] is None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ramp_breaking_point_is_reported_and_plotted(upstream: UpstreamProcess, tmp_path: Path) -> None:
    """The ramp reaches /status/503 answers only as errors; a 0.1 % limit breaks at once."""
    png = tmp_path / "ramp.png"
    rc, out, _, doc = run_loadtest(
        f"--url {upstream.url}/status/503 --rps-start 50 --rps-max 150 --ramp-up 2s --plot {png}",
        tmp_path,
    )
    assert rc == 1
    assert doc is not None
    bp = doc["breaking_point"]
    assert bp is not None and bp["t"] == 0 and "error rate" in bp["reason"]
    assert "breaking   at t=0s" in out
    assert png.stat().st_size > 10_000


def test_spike_is_centred_in_the_duration(upstream: UpstreamProcess, tmp_path: Path) -> None:
    rc, out, err, doc = run_loadtest(
        f"--url {upstream.url}/ok --rps 100 --spike-rps 400 --spike-duration 2s --duration 6s",
        tmp_path,
    )
    assert rc == 0, out + err
    assert doc is not None
    assert [e["target_rps"] for e in doc["timeline"][:6]] == [100, 100, 400, 400, 100, 100]
    assert doc["requests"] == 1200
    achieved = [e["achieved_rps"] for e in doc["timeline"]]
    assert sum(achieved[2:4]) > 2 * sum(achieved[0:2])  # the spike is visible in what was delivered


def test_a_frozen_server_shows_in_p90_and_max(tmp_path: Path) -> None:
    """SIGSTOP for one second in the middle: the latency from the due time shows it.

    With 4 connections, a closed-loop client (the latency from the actual write) has only
    those 4 requests waiting on the frozen server; the other ~200 due meanwhile wait in
    the generator and are counted from when they were due.
    """
    up = UpstreamProcess.demo(tmp_path)
    report = tmp_path / "report.json"
    cmd = [str(APIGATE), "loadtest", "--url", f"{up.url}/api/users", "--rps", "200", "--duration", "6s"]
    cmd += ["--connections", "4", "--report", str(report)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the progress line of the second second: the run is in its middle
            if line.startswith("t=   2s"):
                break
        os.kill(up.proc.pid, signal.SIGSTOP)
        time.sleep(1.0)
        os.kill(up.proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        os.kill(up.proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
        up.stop()
    doc = json.loads(report.read_text())
    lat, send = doc["latency_ms"], doc["latency_from_send_ms"]
    assert lat["max"] >= 800, lat
    assert lat["p90"] >= 200, lat  # ~1/6 of the requests were due during the freeze
    assert send["p90"] < lat["p90"] / 4, (send, lat)  # what a closed-loop measurement would report
    assert doc["errors"] == 0
    assert_no_traceback(out, err)


def test_ctrl_c_ends_the_schedule_and_reports_what_ran(upstream: UpstreamProcess, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    cmd = [str(APIGATE), "loadtest", "--url", f"{upstream.url}/ok", "--rps", "100", "--duration", "60s"]
    cmd += ["--workers", "2", "--report", str(report)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("t=   1s"):
                break
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the coordinator
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    doc = json.loads(report.read_text())
    assert doc["interrupted"] is True
    assert 100 <= doc["requests"] < 6000 and doc["errors"] == 0
    assert "[interrupted]" in out
    assert_no_traceback(out, err)


def test_5xx_answers_are_errors_and_fail_the_criteria(upstream: UpstreamProcess, tmp_path: Path) -> None:
    rc, out, err, doc = run_loadtest(f"--url {upstream.url}/status/500 --rps 100 --duration 2s", tmp_path)
    assert rc == 1
    assert doc is not None
    assert doc["errors"] == doc["requests"] == 200
    assert doc["errors_by_status"] == {"500": 200}
    assert doc["criteria"]["passed"] is False
    assert doc["criteria"]["error_rate_pct"] == {"value": 100.0, "limit": 0.1, "passed": False}
    assert out.splitlines()[-1].startswith("FAIL")
    assert_no_traceback(out, err)


def test_refused_connections_fail_with_the_error_named(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    rc, out, err, doc = run_loadtest(f"--url http://127.0.0.1:{port}/ --rps 50 --duration 1s", tmp_path)
    assert rc == 1
    assert doc is not None
    assert doc["errors_by_kind"] == {"refused": 50}
    assert doc["responses"] == 0
    last = out.splitlines()[-1]
    assert last.startswith("FAIL") and "no request got a response (refused:" in last, last
    assert f"127.0.0.1:{port}" in last
    assert_no_traceback(out, err)


def test_a_timeout_is_an_error_of_its_own_kind(upstream: UpstreamProcess, tmp_path: Path) -> None:
    rc, out, err, doc = run_loadtest(
        f"--url {upstream.url}/never --rps 20 --duration 1s --timeout 500ms", tmp_path
    )
    assert rc == 1
    assert doc is not None
    assert doc["errors_by_kind"] == {"timeout": 20}
    assert "timeout x20" in out
    assert_no_traceback(out, err)


def test_metrics_give_the_server_side_view(tmp_path: Path) -> None:
    from harness import Gateway

    up = UpstreamProcess.demo(tmp_path)
    config = gateway_config(free_port(), {"demo": up.url})
    metrics_port = free_port()
    config["observability"] = {"metrics_enabled": True, "metrics_port": metrics_port}
    gw = Gateway(config, tmp_path / "gateway").start()
    try:
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        rc, out, err, doc = run_loadtest(
            f"--url {gw.url}/api/users --rps 100 --duration 2s --metrics {metrics}",
            tmp_path,
        )
    finally:
        gw.stop()
        up.stop()
    assert rc == 0, out + err
    assert doc is not None
    server = doc["server_view"]
    assert server["requests"] == doc["requests"] == 200
    assert server["errors_5xx"] == 0
    assert server["restarted"] is False
    assert server["p99_ms"] is not None and server["p99_ms"] > 0
    assert "server     counted 200 requests" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rps", "0"], "--rps: must be above 0"),
        (["--rps", "10", "--duration", "10x"], "invalid duration '10x'"),
        (["--ramp-up", "1m"], "a ramp needs --rps-start, --rps-max and --ramp-up"),
        (
            ["--rps", "10", "--rps-start", "5", "--rps-max", "9", "--ramp-up", "1m"],
            "cannot be combined with --rps",
        ),
        (["--rps", "10", "--url", "ftp://x/"], "--url must be an http:// or https:// URL"),
        (["--rps", "10", "--header", "nocolon"], "is not 'Name: value'"),
        (["--rps", "10", "--report", "/nonexistent/dir/r.json"], "does not exist"),
        (["--rps", "10", "--max-error-rate", "200%"], "at most 100"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [str(APIGATE), "loadtest", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""
