"""The one exception the operations commands raise for a failure the operator must read.

Its message is one line that names what failed (never a password: URLs go through
`redact_url`); ops/cli.py prints it and exits 1, with no traceback.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class OpsError(Exception):
    """A failed step, phrased for the operator: "cannot reach Redis at redis://h:6379: ..."."""


def redact_url(url: str) -> str:
    """The URL without its password (redis://:secret@h:6379 -> redis://:***@h:6379)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def one_line(text: str) -> str:
    """The last non-empty line of a tool's output, trimmed: what the tool said went wrong."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"
