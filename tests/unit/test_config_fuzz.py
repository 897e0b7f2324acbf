"""Fuzzing the configuration loader (hypothesis): whatever the YAML, `load_config_text`
returns a Config or raises ConfigError whose lines are single lines, and `apigate check`
exits 0 or 2 without a traceback.

Inputs: documents built from the schema's own keys with values of every type, random
text, and byte-level mutations of the shipped examples (the guide's Appendix A among
them). `APIGATE_FUZZ_EXAMPLES` raises the count (tests/integration/test_fuzz.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from apigate.config import ConfigError, load_config_text
from apigate.config import checks as config_checks
from apigate.config.schema import Config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [(ROOT / "examples" / name).read_text() for name in ("quickstart.yaml", "production.yaml")]


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "${X}",
            "${X:-d}",
            "${",
            "$${X}",
            "/dev/zero",
            "/dev/urandom",
            "/",
            "http://127.0.0.1:1",
            "redis://127.0.0.1:1/0",
            "127.0.0.1",
            "not an ip",
            "HS256",
            "RS256",
            "jwt",
            "token_bucket",
            "/api/*",
            "/{id}",
            "*",
            "1.3",
        ]
    ),
)


def values_for(model: type[BaseModel], depth: int = 0) -> st.SearchStrategy[Any]:
    """A mapping with some of `model`'s keys (and a stray one), values of any type,
    sub-sections built the same way."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        subs = _models(info.annotation)
        options: list[st.SearchStrategy[Any]] = [SCALARS, st.lists(SCALARS, max_size=3)]
        if subs and depth < 3:
            sub = values_for(subs[0], depth + 1)
            options.append(st.lists(sub, max_size=3) if get_origin(info.annotation) is list else sub)
        fields[name] = st.one_of(*options)
    keys = st.sampled_from([*fields, "unknown_key"])
    return st.lists(keys, max_size=6, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: fields.get(n, SCALARS) for n in names})
    )


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    data = bytearray(draw(st.sampled_from(SHIPPED)).encode())
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        if op == "flip":
            data[i] = draw(st.sampled_from(b":-[]{}'\"\n #&*!|>%@`\t0aZ"))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 20))]
        else:
            data[i:i] = data[i : i + draw(st.integers(1, 60))]
    return data.decode("utf-8", errors="replace")


DOCUMENTS = st.one_of(
    values_for(Config).map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    mutated_example(),
    st.text(max_size=200),
)


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Random host names must not wait on a resolver: only localhost resolves here."""
    real = socket.getaddrinfo

    def fake(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "localhost":
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(config_checks.socket, "getaddrinfo", fake)
    yield


def test_the_loader_only_ever_raises_config_error(no_dns: None, tmp_path: Path) -> None:
    outcomes = {"ok": 0, "refused": 0}

    @given(DOCUMENTS)
    def one(text: str) -> None:
        try:
            load_config_text(text, "fuzz.yaml", env={"X": "1"}, base_dir=str(tmp_path))
        except ConfigError as e:
            assert e.errors, text
            for line in e.errors:
                assert "\n" not in line and "Traceback" not in line, line
            outcomes["refused"] += 1
        else:
            outcomes["ok"] += 1

    one()
    assert outcomes["refused"] > 0


@settings(max_examples=max(10, settings.default.max_examples // 100))
@given(st.one_of(mutated_example(), values_for(Config).map(yaml.safe_dump)))
def test_check_exits_0_or_2_without_a_traceback(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(text)
        out = subprocess.run(
            [sys.executable, "-m", "apigate", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "APIGATE_PURE": "1"},
        )
    assert out.returncode in (0, 2), out
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
