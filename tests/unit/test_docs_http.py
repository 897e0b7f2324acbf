"""docs/HTTP.md is checked against the code, so the page cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from apigate.config.schema import ServerConfig, UpstreamConfig
from apigate.http.errors import ERRORS
from apigate.http.headers import HOP_BY_HOP
from apigate.http.server import LINGER_IDLE_S, LINGER_MAX_S

DOC = (Path(__file__).resolve().parents[2] / "docs" / "HTTP.md").read_text()


def section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end >= 0 else None]


def test_hop_by_hop_table_is_the_code_list() -> None:
    listed = set(re.findall(r"^\| `([a-z-]+)` \|$", section("Headers"), re.M))
    assert listed == {h.decode() for h in HOP_BY_HOP}


def test_error_table_is_every_error_the_gateway_produces() -> None:
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section("Errors the gateway produces"), re.M)
    assert {code: int(status) for status, code in rows} == {code: s for code, (s, _) in ERRORS.items()}


def test_timeout_settings_exist() -> None:
    keys = re.findall(r"^\| `(server|upstreams\[\])\.([a-z_]+)` \|", section("Timeouts"), re.M)
    assert keys
    for scope, key in keys:
        model = ServerConfig if scope == "server" else UpstreamConfig
        assert key in model.model_fields, f"{scope}.{key}"


def test_lingering_close_figures_are_the_code_constants() -> None:
    text = section("Errors the gateway produces")
    assert f"LINGER_IDLE_S ({LINGER_IDLE_S:g} s)" in text
    assert f"LINGER_MAX_S ({LINGER_MAX_S:g} s)" in text
