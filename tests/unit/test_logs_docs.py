"""docs/LOGGING.md names what the code does: metric names, drop reasons, redaction names,
access-event fields and sink types."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from apigate.config.schema import SinkType
from apigate.logs import names, redact

DOC = (Path(__file__).resolve().parents[2] / "docs" / "LOGGING.md").read_text()


def test_metric_names_and_reasons_are_documented() -> None:
    for attr in dir(names):
        if attr.startswith(("LOG_", "DROP_")):
            assert f"`{getattr(names, attr)}`" in DOC, attr


def test_redaction_names_are_documented() -> None:
    for name in sorted(redact.SESSION_NAMES | redact.SECRET_NAMES | set(redact.SECRET_SUFFIXES)):
        assert f"`{name}`" in DOC, name
    assert redact.REDACTED in DOC


def test_access_fields_and_sinks_are_documented() -> None:
    import ast

    from apigate._native import source_path

    # The source file itself: compiled, the module has no source for inspect to find.
    tree = ast.parse(source_path("apigate.logs.access").read_text(encoding="utf-8"))
    keys = {
        k.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for k in node.keys
        if isinstance(k, ast.Constant) and isinstance(k.value, str)
    }
    keys |= {"user", "error"}
    assert len(keys) > 15
    for key in keys:
        assert f"`{key}`" in DOC, key
    for sink in get_args(SinkType):
        assert f"**{sink}**" in DOC, sink
