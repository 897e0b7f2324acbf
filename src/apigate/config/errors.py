"""How configuration problems are represented and printed.

Every stage of loading (YAML parsing, ``${VAR}`` expansion, schema validation, the
cross-checks) reports :class:`Problem` records instead of raising, so one run can show
the operator every mistake at once. Only at the very end are they rendered, sorted by
line, into the lines of a single :class:`ConfigError`:

    config.yaml:42 routes[0].upstream_id: unknown upstream 'user-svc'

Secrets must never reach a terminal or a CI log through an error message, so this
module also decides which keys hold secrets and scrubs their values from every line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

KeyPath = tuple[str | int, ...]
"""A position in the document: ``("routes", 0, "upstream_id")``."""

_SECRET_WORDS = re.compile(r"secret|passw|token|credential", re.IGNORECASE)
_SCRUB_MIN_LEN = 4  # shorter values are too likely to occur by chance in a message
_MAX_SHOWN = 60


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds one full line per problem."""

    errors: list[str]

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__(*self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True)
class Problem:
    """One mistake: where it is (line, key path) and what is wrong, before formatting."""

    line: int | None
    path: KeyPath
    message: str


def format_path(path: KeyPath) -> str:
    """``("routes", 0, "upstream_id")`` -> ``routes[0].upstream_id``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def is_secret_key(name: str | int) -> bool:
    """True for keys whose values must never be echoed (jwt_secret, password, api_key...).

    Keys merely *about* secrets (token_format, key_path, key_type) are not secret: their
    values are needed to make an error understandable.
    """
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    if lowered.endswith(("_format", "_path", "_type", "_name")):
        return False
    return bool(_SECRET_WORDS.search(lowered)) or lowered == "key" or lowered.endswith(("_key", "apikey"))


def path_is_secret(path: KeyPath) -> bool:
    """True when the value at ``path`` is (part of) a secret, e.g. ``...password`` or ``x.token[0]``."""
    names = [p for p in path if isinstance(p, str)]
    return bool(names) and is_secret_key(names[-1])


def describe(value: object, secret: bool = False) -> str:
    """A short rendering of a wrong value for ``got ...``; never the value of a secret."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if secret:
        return "a string" if isinstance(value, str) else "a value (not shown: secret)"
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 1] + "…"
    return text


def render(filename: str, problems: Iterable[Problem], secrets: Iterable[str] = ()) -> list[str]:
    """Sort, de-duplicate and format problems; replace any secret value by ``***``."""
    scrub = sorted({s for s in secrets if len(s) >= _SCRUB_MIN_LEN}, key=len, reverse=True)
    seen: set[tuple[int | None, KeyPath, str]] = set()
    ordered: list[Problem] = []
    for p in problems:
        key = (p.line, p.path, p.message)
        if key not in seen:
            seen.add(key)
            ordered.append(p)
    ordered.sort(key=lambda p: (p.line or 0, format_path(p.path)))
    lines = []
    for p in ordered:
        if p.line is None:
            where = f"{filename}: {format_path(p.path)}" if p.path else filename
        else:
            where = f"{filename}:{p.line} {format_path(p.path)}" if p.path else f"{filename}:{p.line}"
        message = p.message
        for s in scrub:  # the message only: a weak secret like "secret" must not mangle a key path
            message = message.replace(s, "***")
        lines.append(f"{where}: {message}".translate(_ONE_LINE))
    return lines


# A value quoted in a message (a file name with a newline, a key with a tab) must not break
# the one-line-per-problem promise, nor write control characters to a terminal (found by
# fuzzing the loader).
_ONE_LINE: Final = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
