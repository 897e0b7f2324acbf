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


@pytest.mark.parametrize("name", ["TRAFFIC.md", "PLUGINS.md"])
def test_every_yaml_example_is_a_valid_configuration(name: str) -> None:
    for i, text in enumerate(blocks(name)):
        try:
            load_config_text(text, f"{name} block {i + 1}", {"TENANT": "t"}, str(DOCS.parent))
        except Exception as e:  # pragma: no cover - the message is the diagnosis
            pytest.fail(f"{name} block {i + 1} does not load:\n{e}")


def test_the_plugin_guide_names_real_priorities_and_exports() -> None:
    import apigate.plugins
    from apigate.auth.filter import AuthFilter
    from apigate.cors.filter import CorsFilter
    from apigate.gateway.correlation import CorrelationFilter
    from apigate.iprules.filter import IpRulesFilter
    from apigate.ratelimit.filter import RateLimitFilter
    from apigate.transforms.filter import HeaderTransformFilter

    text = (DOCS / "PLUGINS.md").read_text(encoding="utf-8")
    for label, f in [
        ("correlation (X-Request-ID)", CorrelationFilter),
        ("IP rules", IpRulesFilter),
        ("CORS", CorsFilter),
        ("auth", AuthFilter),
        ("rate limits", RateLimitFilter),
        ("header transforms", HeaderTransformFilter),
    ]:
        assert re.search(rf"{re.escape(label)}\s+{f.priority}\b", text), label
    for name in (
        "Plugin",
        "RequestContext",
        "Response",
        "RequestOutcome",
        "Headers",
        "Route",
        "json_error",
        "emit",
    ):
        assert f"`{name}`" in text and name in apigate.plugins.__all__
