"""scripts/: bash, strict mode, shellcheck clean, --help on each; prune's retention arithmetic."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from apigate.ops.prune import plan_prune

ROOT = Path(__file__).resolve().parents[2]
OPS_SCRIPTS = [
    "backup-redis.sh",
    "restore-redis.sh",
    "backup-config.sh",
    "test-recovery.sh",
    "prune-backups.sh",
]
# Not the data plane: a stale compiled build must not add its notice to stderr.
QUIET = {**os.environ, "APIGATE_PURE": "1"}


def shellcheck() -> str:
    path = shutil.which("shellcheck")
    if path is None:
        subprocess.run([str(ROOT / "scripts" / "install-test-deps.sh")], check=False, timeout=900)
        path = shutil.which("shellcheck")
    if path is None:
        message = "shellcheck is not installed (scripts/install-test-deps.sh installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.mark.parametrize("name", OPS_SCRIPTS)
def test_script_is_strict_bash_and_answers_help(name: str) -> None:
    path = ROOT / "scripts" / name
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and os.access(path, os.X_OK)
    assert "\nset -euo pipefail\n" in text
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60, env=QUIET)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: apigate ") and f"scripts/{name}" in out.stdout.replace("\n", " ")


def test_shellcheck_is_clean() -> None:
    scripts = sorted(str(p) for p in (ROOT / "scripts").rglob("*.sh"))
    out = subprocess.run(
        [shellcheck(), "-x", *scripts], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_scripts_say_so_when_apigate_is_missing(tmp_path: Path) -> None:
    copy = tmp_path / "scripts"
    shutil.copytree(ROOT / "scripts", copy)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [str(copy / "backup-redis.sh"), "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 1
    assert (
        out.stderr
        == "backup-redis.sh: apigate not found (run 'make install', or set APIGATE=/path/to/apigate)\n"
    )


def test_bad_usage_exits_2() -> None:
    out = subprocess.run(
        [str(ROOT / "scripts" / "backup-redis.sh")], capture_output=True, text=True, timeout=60, env=QUIET
    )
    assert out.returncode == 2 and "--redis-url" in out.stderr


def test_retention_keeps_newest_per_hour_day_month() -> None:
    now = 1_800_000_000.0  # 2027-01-15 08:00 UTC
    stamps = [
        "20270115-0700" + "00",
        "20270115-0710" + "00",
        "20270110-0100" + "00",  # hourly tier
        "20270101-0100" + "00",
        "20270101-0500" + "00",  # daily tier
        "20261101-0100" + "00",
        "20261130-0100" + "00",  # monthly tier
        "20251201-0000" + "00",
        "20270116-0000" + "00",
    ]  # too old; in the future (clock skew): kept
    keep, delete = plan_prune(stamps, now)
    assert delete == {"20270115-070000", "20270101-010000", "20261101-010000", "20251201-000000"}
    assert keep == set(stamps) - delete
