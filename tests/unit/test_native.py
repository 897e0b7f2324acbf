"""The compiled build (mypyc) is what runs, and a stale one never does (apigate/_native.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import apigate
from apigate import _native

SRC = Path(__file__).resolve().parents[2] / "src"
PROBE = (
    "import apigate, apigate.gateway.app as app, apigate.http.server as server;"
    "print(apigate.NATIVE, app.__file__.endswith('.py'), server.__file__.endswith('.py'))"
)


def run_probe(src: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "APIGATE_PURE"}
    environ.update(env, PYTHONPATH=str(src))
    return subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=environ, timeout=60, cwd=src
    )


def test_make_install_built_the_compiled_data_plane() -> None:
    # `make test` compiles before testing: the suite exercises the build users run.
    assert os.environ.get("APIGATE_PURE", "") in ("", "0"), "unset APIGATE_PURE to test the compiled build"
    assert _native.stale_modules() == [], "run `make install` to rebuild the compiled modules"
    assert apigate.NATIVE
    from apigate.http import server

    assert not server.__file__.endswith(".py")


def test_apigate_pure_runs_everything_from_source() -> None:
    out = run_probe(SRC, APIGATE_PURE="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]
    assert out.stderr == ""


def test_an_edited_source_falls_back_to_source_for_the_whole_set(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    assert run_probe(src).stdout.split() == ["True", "False", "False"]
    edited = src / "apigate" / "gateway" / "paths.py"
    edited.write_text(edited.read_text() + "\n")  # newer than its extension
    out = run_probe(src)
    assert out.returncode == 0, out.stderr
    # Not only the edited module: compiled and interpreted hot modules cannot be mixed.
    assert out.stdout.split() == ["False", "True", "True"]
    assert "older than apigate.gateway.paths" in out.stderr
