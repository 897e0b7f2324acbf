"""Fixtures for the deploy suite: the kustomize overlays built once per session, offline."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from k8s import OVERLAYS, Build, build_overlay


@pytest.fixture(scope="session")
def builds() -> dict[str, Build]:
    """Every overlay, rendered by `kubectl kustomize` (no cluster involved)."""
    return {name: build_overlay(name) for name in OVERLAYS}


# The specification, as a copy in the repository: CI runs on a clean clone with nothing
# beside it. test_the_guide_copy_is_current compares it with ../shared/guide where that exists.
GUIDE = Path(__file__).resolve().parent / "guide" / "OPERATIONAL_READINESS.md"


@dataclass(frozen=True)
class GuideBlocks:
    """The guide's YAML for what deploy/k8s must match (fresh copies on every use)."""

    resources: dict[str, Any]  # §3.2.1
    hpa: dict[str, Any]  # §3.3.1
    vpa: dict[str, Any]  # §3.3.2
    pdb: dict[str, Any]  # §3.6.2


@pytest.fixture
def guide_blocks() -> GuideBlocks:
    assert GUIDE.exists(), f"the guide's copy is missing: {GUIDE}"
    text = GUIDE.read_text()
    blocks = [d for b in re.findall(r"```yaml\n(.*?)```", text, re.S) for d in yaml.safe_load_all(b)]

    def one(pred: Callable[[Any], bool]) -> dict[str, Any]:
        (found,) = [b for b in blocks if isinstance(b, dict) and pred(b)]
        return dict(found)

    return GuideBlocks(
        resources=one(lambda b: set(b) == {"resources"}),
        hpa=one(lambda b: b.get("kind") == "HorizontalPodAutoscaler"),
        vpa=one(lambda b: b.get("kind") == "VerticalPodAutoscaler"),
        pdb=one(lambda b: b.get("kind") == "PodDisruptionBudget"),
    )
