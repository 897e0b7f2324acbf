"""docs/PERFORMANCE.md names the modules `make install` compiles: the list cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apigate import _native

DOC = Path(__file__).resolve().parents[2] / "docs" / "PERFORMANCE.md"


def test_the_compiled_modules_listed_are_the_ones_compiled() -> None:
    section = DOC.read_text().split("## Compiled modules", 1)[1]
    listed = re.findall(r"^- (apigate\.[a-z_.]+)$", section, re.MULTILINE)
    assert listed == list(_native.HOT_MODULES)


def test_the_configurations_it_measures_exist() -> None:
    root = DOC.parents[1]
    text = DOC.read_text()
    for name in re.findall(r"`(proxy|jwt|jwt_rl|rl_metrics|full)`", text):
        assert (root / "bench" / "callgrind" / f"{name}.yaml").is_file(), name
    assert (root / "bench" / "callgrind_full.sh").is_file()


def test_the_callgrind_configurations_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from apigate.config import load_config

    monkeypatch.setenv("PORT", "19802")
    monkeypatch.setenv("UPSTREAM", "http://127.0.0.1:19801")
    monkeypatch.setenv("JWT_SECRET", "callgrind-full-hs256-secret-0123456789abcdef")
    for path in sorted((DOC.parents[1] / "bench" / "callgrind").glob("*.yaml")):
        cfg = load_config(str(path))
        assert [r.id for r in cfg.routes] == ["users"], path.name
