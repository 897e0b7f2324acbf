"""docs/SECURITY.md against the code: keys, defaults, limits, error codes and the tests it
names must all be real, so the page cannot drift from what the gateway does."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from test_config_docs import schema_keys

from apigate.auth.jwt import MAX_TOKEN_BYTES
from apigate.config.files import MAX_CONFIG_BYTES, MAX_PEM_BYTES
from apigate.http.errors import ERRORS
from apigate.http.headers import MAX_REQUEST_ID_CHARS
from apigate.http.server import MAX_PIPELINED

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "SECURITY.md").read_text(encoding="utf-8")
KEY = re.compile(r"`((?:server|auth|routes\[\]|upstreams\[\]|logging|observability)\.[a-z_.\[\]]+)")
MiB = 1024 * 1024


def test_every_key_named_is_a_schema_key() -> None:
    keys = set(schema_keys())
    named = {k.rstrip(".") for k in KEY.findall(DOC)}
    assert named, "the page names no keys?"
    assert named - keys == set()


def test_the_limits_table_gives_the_schema_defaults() -> None:
    fields = schema_keys()
    rows = re.findall(r"^\| `([a-z_.\[\]]+)` \| (\S+)", DOC, re.M)
    assert len(rows) >= 8
    for key, default in rows:
        value = fields[key].default
        if isinstance(value, bool):
            assert default == str(value).lower(), key
        else:
            assert float(default) == float(value), key


def test_fixed_limits_are_the_code_constants() -> None:
    assert f"{MAX_CONFIG_BYTES // MiB} MiB for the configuration" in DOC
    assert f"{MAX_PEM_BYTES // MiB} MiB for each PEM" in DOC
    assert f"JWTs up to {MAX_TOKEN_BYTES}" in DOC
    assert f"up to {MAX_REQUEST_ID_CHARS} characters" in DOC
    assert f"{MAX_PIPELINED} pipelined requests" in DOC


def test_error_codes_named_exist() -> None:
    for code in re.findall(r"\d{3} `([a-z_]+)`", DOC):
        assert code in ERRORS, code


def test_every_test_named_exists() -> None:
    named = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)?)`", DOC)
    # `::test_x` after a file applies to the last file named before it.
    current: Path | None = None
    checked = 0
    for chunk in re.findall(r"`(tests/[\w/]+\.py)?(::\w+)?`", DOC):
        path, func = chunk
        if path:
            current = ROOT / path
            assert current.exists(), path
        if func:
            assert current is not None
            tree = ast.parse(current.read_text())
            functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert func[2:] in functions, f"{current.name}{func}"
            checked += 1
    assert named and checked >= 10
