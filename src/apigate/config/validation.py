"""Pydantic's validation errors, rephrased for the person editing the YAML file.

Pydantic reports ``('routes', 0, 'rate_limit', 'LimitConfig', 'limit')`` and "Input
should be greater than or equal to 1" with a documentation URL. An operator wants
``config.yaml:31 routes[0].rate_limit.limit: must be at least 1, got 0``. So:

* union member names in a location (``LimitConfig``, ``literal[False]``) are dropped;
  when one member got further into the value than the others, only its errors are kept,
  and when none did their expectations are merged: "expected a mapping or false";
* the line is the key's line (or, for a missing key, the enclosing mapping's);
* messages are short, unknown keys get a difflib suggestion, and a wrong value is shown
  only when its key does not hold a secret.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from apigate.config.errors import KeyPath, Problem, describe, path_is_secret
from apigate.config.keys import bounds, field_at, model_at
from apigate.config.yamlpos import Document

_EXPECTED = {
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


@dataclass(frozen=True)
class _Error:
    path: KeyPath  # location in the data, union member names removed
    union: KeyPath | None  # where the (innermost) union was, if any
    member: str  # which union member this error came from
    type: str
    msg: str
    ctx: dict[str, Any]
    input: Any


def schema_problems(exc: ValidationError, data: object, doc: Document) -> list[Problem]:
    """One Problem per distinct mistake in ``exc`` (validation of ``data``)."""
    errors = [
        _clean(e["loc"], e["type"], e["msg"], e.get("ctx") or {}, e.get("input"), data)
        for e in exc.errors(include_url=False)
    ]
    deeper = {(e.union, e.member) for e in errors if e.union is not None and len(e.path) > len(e.union)}
    merged: dict[KeyPath, list[_Error]] = {}
    problems: list[Problem] = []
    for e in errors:
        if e.union is not None and e.path == e.union:
            if any(u == e.union and m != e.member for u, m in deeper):
                continue  # another member matched better; its errors say what is wrong
            merged.setdefault(e.path, []).append(e)
            continue
        problems.append(_problem(e, doc))
    for path, group in merged.items():
        phrases = [_expected(e) for e in group]
        if all(phrases):
            got = describe(group[0].input, path_is_secret(path))
            message = f"expected {' or '.join(dict.fromkeys(p for p in phrases if p))}, got {got}"
            problems.append(Problem(doc.line_of(path), path, message))
        else:
            problems.extend(_problem(e, doc) for e in group)
    return problems


def _clean(
    loc: tuple[Any, ...], kind: str, msg: str, ctx: dict[str, Any], value: Any, data: object
) -> _Error:
    """Follow ``loc`` through the data; parts that are not in the data are union members."""
    path: list[str | int] = []
    union: KeyPath | None = None
    member = ""
    node: Any = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_dict = isinstance(node, dict) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
        elif last and kind == "missing" and isinstance(node, dict):
            pass  # the key that is missing: part of the path, though not in the data
        else:
            union, member = tuple(path), str(part)
            continue
        path.append(part)
    return _Error(tuple(path), union, member, kind, msg, ctx, value)


def _expected(e: _Error) -> str | None:
    if e.type == "literal_error":
        return str(e.ctx.get("expected", "")).replace("False", "false").replace("True", "true") or None
    return _EXPECTED.get(e.type)


def _problem(e: _Error, doc: Document) -> Problem:
    if e.type == "missing":
        return Problem(doc.line_of(e.path[:-1]), e.path, "missing required key")
    return Problem(doc.line_of(e.path), e.path, _message(e))


def _message(e: _Error) -> str:
    got = describe(e.input, path_is_secret(e.path))
    if e.type == "extra_forbidden":
        return _unknown_key(e.path)
    expected = _expected(e)
    if expected is not None:
        return f"expected {expected}, got {got}"
    if e.type in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{_range(e)}, got {got}"
    if e.type in ("too_short", "too_long"):
        n = e.ctx.get("min_length" if e.type == "too_short" else "max_length")
        if e.type == "too_short" and n == 1:
            return "must not be empty"
        return f"must have {'at least' if e.type == 'too_short' else 'at most'} {n} item(s)"
    if e.type in ("value_error", "assertion_error"):
        return str(e.ctx.get("error", e.msg))
    text = e.msg.removeprefix("Input should be ").removeprefix("Value error, ")
    return f"should be {text}" if e.msg.startswith("Input should be") else text


def _range(e: _Error) -> str:
    info = field_at(e.path)
    b = bounds(info) if info is not None else {}
    if "ge" in b and "le" in b:
        return f"must be between {b['ge']} and {b['le']}"
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    for key, word in words.items():
        if key in e.ctx:
            return f"must be {word} {e.ctx[key]}"
    return "out of range"


def _unknown_key(path: KeyPath) -> str:
    key = str(path[-1])
    model = model_at(path[:-1])
    known = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key '{key}' (did you mean '{close[0]}'?)"
    if known:
        return f"unknown key '{key}' (valid keys: {', '.join(known)})"
    return f"unknown key '{key}'"
