"""docs/CONFIGURATION.md stays in step with the schema: every key, its default, nothing extra.

The key paths are collected here by a walker of our own, not by apigate.config.keys, so
that a bug in the generator cannot hide a key from the doc.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from apigate.config import Config
from apigate.config.keys import reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"
REGENERATE = "run: .venv/bin/python scripts/config_reference.py"
ROW = re.compile(r"^\| `([^`]+)` \| (.*?) \| (.*?) \| (.*) \|$")


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (list, Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _models(arg)]
    return []


def schema_keys(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, Any]:
    """Every key path of the schema -> its FieldInfo."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        out[path] = info
        item = "[]" if get_origin(info.annotation) is list else ""
        for sub in _models(info.annotation):
            out.update(schema_keys(sub, path + item))
    return out


def doc_rows() -> dict[str, tuple[str, str, str]]:
    rows: dict[str, tuple[str, str, str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is documented twice"
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return rows


def test_every_schema_key_is_documented_and_nothing_else() -> None:
    documented, schema = set(doc_rows()), set(schema_keys())
    assert schema - documented == set(), f"undocumented keys; {REGENERATE}"
    assert documented - schema == set(), f"documented keys the schema does not have; {REGENERATE}"
    for must in ("server.tls.min_version", "logging.sinks[].elasticsearch.urls", "routes[].rate_limit.limit"):
        assert must in documented


def test_defaults_and_meanings_match_the_schema() -> None:
    rows = doc_rows()
    for path, info in schema_keys().items():
        _, default, meaning = rows[path]
        assert meaning == (info.description or "").replace("|", "\\|"), path
        assert info.description, f"{path} has no description in schema.py"
        if info.is_required():
            assert default == "required", path
        elif info.default_factory is None and info.default is None:
            assert default == "unset", path
        elif info.default_factory is None and info.default is not PydanticUndefined:
            value = info.default
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            assert default == f"`{shown}`", path
        else:
            produced = info.default_factory()
            if isinstance(produced, list) and not produced:
                assert default == "`[]`", path
            elif isinstance(produced, BaseModel):
                assert default == "see below", path


def test_generated_tables_are_current() -> None:
    assert reference_markdown() in DOC.read_text(encoding="utf-8"), REGENERATE


def test_doc_mentions_the_essentials() -> None:
    text = DOC.read_text(encoding="utf-8")
    for phrase in (
        "${VAR:-default}",
        "$${",
        "relative to **the directory of the configuration file**",
        "routes[0].upstream_id: unknown upstream 'user-svc'",
        "examples/quickstart.yaml",
        "examples/production.yaml",
    ):
        assert phrase in text, phrase
