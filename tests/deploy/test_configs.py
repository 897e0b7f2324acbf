"""deploy/config/<env>/config.yaml: each passes `apigate check` with dummy values for the
Secret's variables, and names the variables the Secret must hold (check fails without them)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness import APIGATE
from k8s import CONFIG_OF, OVERLAYS, dummy_env, env_refs


def check(path: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in env_refs(Path(path).read_text())}
    return subprocess.run(
        [str(APIGATE), "check", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **env},
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_passes_apigate_check_with_dummy_secrets(overlay: str) -> None:
    path = str(CONFIG_OF[overlay])
    env = dummy_env(CONFIG_OF[overlay].read_text())
    assert "JWT_SECRET" in env
    out = check(path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok: ")
    assert "listening on 0.0.0.0:8080, metrics on :9090" in out.stdout
    for value in env.values():
        assert value not in out.stdout + out.stderr  # no secret echoed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_without_the_secret_fails_naming_each_variable(overlay: str) -> None:
    env = dummy_env(CONFIG_OF[overlay].read_text())
    out = check(str(CONFIG_OF[overlay]), {})
    assert out.returncode == 2
    for var in env:
        assert f"environment variable {var} is not set" in out.stderr
    assert "Traceback" not in out.stderr
