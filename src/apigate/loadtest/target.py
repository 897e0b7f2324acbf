"""What every request of a run looks like: the URL, method, headers and body, encoded once.

The request bytes are built before the run starts and written as they are for each
request; only the connection they go out on changes. With `--header-file`, one request is
built per line of the file, and request k of the schedule is the (k mod lines)-th.
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
    requests: tuple[bytes, ...]  # one, or one per --header-file line, sent in turn

    @property
    def request(self) -> bytes:
        return self.requests[0]

    @property
    def is_head(self) -> bool:
        return self.method == "HEAD"


def _header(raw: str, flag: str) -> tuple[str, str]:
    name, sep, value = raw.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.match(name):
        raise TargetError(f"{flag} {raw!r} is not 'Name: value'")
    if "\r" in value or "\n" in value:
        raise TargetError(f"{flag} {name}: the value must not contain line breaks")
    return name, value


def build_target(
    url: str, method: str, headers: list[str], body: bytes | None, rotating: list[str] | None = None
) -> Target:
    """`rotating` (the lines of --header-file): one header each, request k carries line k mod N."""
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
    fields = [_header(raw, "--header") for raw in headers]
    turns = [_header(raw, "--header-file line") for raw in rotating or []]
    if rotating is not None and not turns:
        raise TargetError("--header-file has no header lines")
    names = {n.lower() for n, _ in fields + turns}
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
    tail = []
    if body is not None or method in ("POST", "PUT", "PATCH"):
        tail.append(f"Content-Length: {len(body or b'')}")
    requests = []
    for turn in [[f"{n}: {v}"] for n, v in turns] or [[]]:
        try:
            head = ("\r\n".join(lines + turn + tail) + "\r\n\r\n").encode("ascii")
        except UnicodeEncodeError:
            raise TargetError("--url and --header must be ASCII (percent-encode the URL)") from None
        requests.append(head + (body or b""))
    return Target(url, parts.hostname, port, parts.scheme == "https", method, tuple(requests))
