"""``${VAR}`` / ``${VAR:-default}`` expansion in string values.

Secrets (``password: "${ELASTICSEARCH_PASSWORD}"``) and per-environment values stay out
of the file, as the operational guide shows. Expansion runs on the parsed data, before
validation, so an expanded value is type-checked like a written one (``port: "${PORT}"``
with PORT=8443 is the integer 8443). Only values are expanded, never keys.

Rules, as in POSIX shells and docker compose: ``${VAR}`` is the variable's value (an
empty value is allowed); ``${VAR:-default}`` is the default when VAR is unset *or
empty*; ``$${`` is a literal ``${``; a ``$`` not followed by ``{`` is literal. A variable
that is unset with no default is an error naming the variable and the key path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from apigate.config.errors import KeyPath, Problem, is_secret_key, path_is_secret
from apigate.config.yamlpos import Document

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


@dataclass
class Expansion:
    """Expanded data, problems, the paths that failed, and values never to print."""

    data: object = None
    problems: list[Problem] = field(default_factory=list)
    failed: set[KeyPath] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)


def expand_env(data: object, doc: Document, env: Mapping[str, str]) -> Expansion:
    """Expand every string value in ``data``; a failed value is left as written."""
    result = Expansion()
    result.data = _walk(data, (), doc, env, result)
    return result


def _walk(value: object, path: KeyPath, doc: Document, env: Mapping[str, str], out: Expansion) -> object:
    if isinstance(value, dict):
        return {k: _walk(v, (*path, k), doc, env, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, (*path, i), doc, env, out) for i, v in enumerate(value)]
    if isinstance(value, str):
        expanded = _expand(value, path, doc, env, out)
        if path_is_secret(path) and expanded is not None:
            out.secrets.add(expanded)
        return value if expanded is None else expanded
    return value


def _expand(text: str, path: KeyPath, doc: Document, env: Mapping[str, str], out: Expansion) -> str | None:
    """The expanded string, or None after recording why it cannot be expanded."""
    if "$" not in text:
        return text
    errors: list[str] = []

    def replace(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "$${":
            return "${"
        body = m.group(1)
        parsed = _BODY.fullmatch(body) if body is not None else None
        if parsed is None:
            shown = "" if path_is_secret(path) else f" '{token}'"
            errors.append(f"bad variable reference{shown}: write ${{NAME}} or ${{NAME:-default}}")
            return ""
        name, default = parsed.group(1), parsed.group(2)
        current = env.get(name)
        if is_secret_key(name) and current:
            out.secrets.add(current)
        if default is not None and not current:
            return default
        if current is None:
            errors.append(f"environment variable {name} is not set")
            return ""
        return current

    expanded = _TOKEN.sub(replace, text)
    if errors:
        line = doc.line_of(path)
        out.problems.extend(Problem(line, path, msg) for msg in errors)
        out.failed.add(path)
        return None
    return expanded
