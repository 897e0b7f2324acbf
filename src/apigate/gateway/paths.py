"""Request-target parsing and path normalisation (RFC 9112 §3.2, RFC 3986 §6).

Routing and the upstream see one canonical path, so `/api/./users`, `/api//users` and
`/api/%75sers` cannot slip past a route's rules or reach a path no route allows
(Envoy's normalize_path + merge_slashes). Only unreserved characters are percent-decoded
(RFC 3986 §6.2.2.2); `%2F` stays encoded, so decoding never changes the path's shape.
"""

from __future__ import annotations

import re
from typing import Final

from apigate.http.headers import is_valid_host

_UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT: Final = re.compile(rb"%([0-9A-Fa-f]{2})")


Split = tuple[str, bytes, bool]
"""(normalised path, raw query with its '?', whether the path is ambiguous:
`has_escaped_slash`)."""

_SPLIT_CACHE: Final[dict[bytes, Split]] = {}
_SPLIT_CACHE_MAX: Final = 4096  # distinct targets remembered; past it, each is split anew


def split_target(target: bytes) -> Split | None:
    """(normalised path, raw query with its '?', ambiguous) or None for a target we cannot
    route. `ambiguous` is the path policy's question (has_escaped_slash), answered here
    once per distinct target rather than per request.

    Remembered per target for the first few thousand: most traffic repeats a few paths,
    and a remembered path is one shared str whose hash the router's lookup already knows.
    """
    hit = _SPLIT_CACHE.get(target)
    if hit is not None:
        return hit
    split = _split_target(target)
    if split is not None and len(_SPLIT_CACHE) < _SPLIT_CACHE_MAX:
        _SPLIT_CACHE[target] = split
    return split


def _split_target(target: bytes) -> Split | None:
    # The tests of the common case run on str: compiled, `in` and find() on bytes go
    # through the buffer protocol and cost several times more. latin-1 keeps the indexes.
    text = target.decode("latin-1")
    q = text.find("?")
    if q >= 0:
        path, query = text[:q], target[q:]
    else:
        path, query = text, b""
    # An origin-form path with nothing to normalise (no '%', no segment starting with '.',
    # no empty segment) nor to refuse. llhttp has already refused control characters and spaces.
    if path.startswith("/") and "%" not in path and "/." not in path and "//" not in path:
        return path, query, "\\" in path or (";" in path and has_escaped_slash(path))
    raw = target[:q] if q >= 0 else target
    if not raw.startswith(b"/"):
        # absolute-form (RFC 9112 §3.2.2): keep only the path.
        lower = raw[:8].lower()
        if lower.startswith((b"http://", b"https://")):
            start = raw.find(b"//") + 2
            slash = raw.find(b"/", start)
            # RFC 9110 §4.2.1: an http(s) URI has a non-empty host; §4.2.4: no userinfo.
            authority = raw[start:slash] if slash >= 0 else raw[start:]
            if not authority or not is_valid_host(authority):
                return None
            raw = raw[slash:] if slash >= 0 else b"/"
        else:
            return None
    if b"%" in raw or b"/." in raw or b"//" in raw:
        normal = normalize_path(raw)
        if normal is None:
            return None
        raw = normal
    text = raw.decode("latin-1")
    return text, query, has_escaped_slash(text)


def has_escaped_slash(path: str) -> bool:
    """Whether a normalised path could have another shape at the upstream than the one
    the gateway routed and authorised (docs/SECURITY.md, path policy): an encoded '/' or
    '\\' (normalisation leaves them as `%2F`/`%5C`), the same encoded twice (`%252F`, for
    an upstream that decodes twice), a raw '\\' (read as '/' by some), or a dot-segment
    with parameters (`/..;/`, which Tomcat reads as `/../`). Two scans in the usual case."""
    if "\\" in path:
        return True
    if "%" in path:
        if "%2F" in path or "%5C" in path:
            return True
        if "%25" in path:
            upper = path.upper()
            if "%252F" in upper or "%255C" in upper:
                return True
    return ";" in path and ("/..;" in path or "/.;" in path)


_DECODED_SLASH: Final = re.compile(r"%(?:25)?(?:2[Ff]|5[Cc])|\\")
_PATH_PARAMS: Final = re.compile(r";[^/]*")


def decoded_slashes(path: str) -> str | None:
    """The path as an upstream that decodes `%2F`/`%5C` (once or twice), reads '\\' as
    '/' and drops `;parameters` from segments would see it, normalised; None when it is
    no path at all."""
    raw = _PATH_PARAMS.sub("", _DECODED_SLASH.sub("/", path))
    normal = normalize_path(raw.encode("latin-1"))
    return normal.decode("latin-1") if normal is not None else None


def _decode_unreserved(m: re.Match[bytes]) -> bytes:
    byte = int(m.group(1), 16)
    if byte in _UNRESERVED:
        return bytes((byte,))
    return b"%" + m.group(1).upper()


def normalize_path(raw: bytes) -> bytes | None:
    if b"%" in raw:
        raw = _PCT.sub(_decode_unreserved, raw)
        if b"%00" in raw:
            return None
    out: list[bytes] = []
    segments = raw.split(b"/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == b".":
            if last:
                out.append(b"")
        elif seg == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        elif seg == b"" and not last:
            continue  # merge '//'
        else:
            out.append(seg)
    return b"/" + b"/".join(out)
