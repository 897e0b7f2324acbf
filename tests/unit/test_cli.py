"""The command line: exit codes and messages a user sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apigate import NATIVE, __version__

ROOT = Path(__file__).resolve().parents[2]


def apigate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apigate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_version() -> None:
    out = apigate("--version")
    assert out.returncode == 0
    build = "compiled data plane" if NATIVE else "pure Python"
    assert out.stdout.strip() == f"apigate {__version__} ({build})"


@pytest.mark.parametrize("command", ["serve", "check", "demo"])
def test_help_on_each_command(command: str) -> None:
    out = apigate(command, "--help")
    assert out.returncode == 0
    assert "--config" in out.stdout


def test_check_prints_a_one_line_summary() -> None:
    out = apigate("check", "--config", "examples/quickstart.yaml")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ok: 4 routes, 1 upstream, sinks: stdout")


def test_check_reports_every_error_with_file_line_and_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text(
        "server:\n"
        "  port: 70000\n"
        "upstreams:\n"
        "  - id: users\n"
        "    base_url: http://127.0.0.1:1\n"
        "routes:\n"
        "  - id: r\n"
        "    path: /api/users\n"
        "    upstream_id: user-svc\n"
    )
    out = apigate("check", "--config", str(bad))
    assert out.returncode == 2
    assert f"{bad}:2 server.port:" in out.stderr
    assert f"{bad}:9 routes[0].upstream_id: unknown upstream 'user-svc'" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("server:\n  prot: 8080\n")
    out = apigate("serve", "--config", str(bad))
    assert out.returncode == 2
    assert "server.prot: unknown key 'prot'" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_from_the_environment(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, APIGATE_CONFIG=str(ROOT / "examples" / "quickstart.yaml"))
    out = apigate("check", env=env)
    assert out.returncode == 0, out.stderr


def test_no_config_is_a_clear_error() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "APIGATE_CONFIG"}
    out = apigate("check", env=env)
    assert out.returncode == 2
    assert "no configuration given" in out.stderr
