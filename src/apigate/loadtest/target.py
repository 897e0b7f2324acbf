"""What every request of a run looks like: the URL, method, headers and body, encoded once.

The request bytes are built before the run starts and written as they are for each
request; only the connection they go out on changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2


class TargetError(ValueError):
    """A URL, header or body that cannot be sent (shown to the user as one line)."""


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    tls: bool
    method: str
    request: bytes

    @property
    def is_head(self) -> bool:
        return self.method == "HEAD"


def build_target(url: str, method: str, headers: list[str], body: bytes | None) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"--url must be an http:// or https:// URL with a host, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetError(f"--url has an invalid port: {url!r}") from None
    method = method.upper()
    if not _TOKEN.match(method):
        raise TargetError(f"--method {method!r} is not an HTTP method name")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c in path for c in " \r\n"):
        raise TargetError("--url must not contain spaces or line breaks (percent-encode them)")
    fields: list[tuple[str, str]] = []
    for raw in headers:
        name, sep, value = raw.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _TOKEN.match(name):
            raise TargetError(f"--header {raw!r} is not 'Name: value'")
        if "\r" in value or "\n" in value:
            raise TargetError(f"--header {name}: the value must not contain line breaks")
        fields.append((name, value))
    names = {n.lower() for n, _ in fields}
    if "content-length" in names or "transfer-encoding" in names:
        raise TargetError("--header: Content-Length and Transfer-Encoding are set from --body")
    default_port = 443 if parts.scheme == "https" else 80
    host_header = parts.hostname if port == default_port else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # IPv6 literal
        host_header = f"[{parts.hostname}]" + ("" if port == default_port else f":{port}")
    lines = [f"{method} {path} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {host_header}")
    if "user-agent" not in names:
        lines.append("User-Agent: apigate-loadtest")
    lines.extend(f"{n}: {v}" for n, v in fields)
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    except UnicodeEncodeError:
        raise TargetError("--url and --header must be ASCII (percent-encode the URL)") from None
    return Target(url, parts.hostname, port, parts.scheme == "https", method, head + (body or b""))
