"""Header names and rules shared by the listener and the upstream client.

Header names are handled as lowercase bytes everywhere after the parser: HTTP field
names are case-insensitive (RFC 9110 §5.1), HTTP/2 and HTTP/3 lowercase them on the
wire, and comparing one canonical form is cheaper than case-folding on every lookup.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1: a proxy removes Connection, every field Connection names, and the
# fields that are hop-by-hop by definition. Proxy-Connection is not standard but old
# clients still send it (nginx and Envoy drop it too).
# Final throughout: compiled, a Final module constant is a C static, any other module
# global a dict lookup on every use.
PROXY_CONNECTION: Final = b"proxy-connection"  # llhttp honours it like Connection
HOP_BY_HOP: Final[frozenset[bytes]] = frozenset(
    {
        b"connection",
        b"keep-alive",
        PROXY_CONNECTION,
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
    }
)

HOST: Final = b"host"
CONNECTION: Final = b"connection"
CONTENT_LENGTH: Final = b"content-length"
TRANSFER_ENCODING: Final = b"transfer-encoding"
EXPECT: Final = b"expect"
X_REQUEST_ID: Final = b"x-request-id"
X_FORWARDED_FOR: Final = b"x-forwarded-for"
X_FORWARDED_PROTO: Final = b"x-forwarded-proto"
X_FORWARDED_HOST: Final = b"x-forwarded-host"
# Headers the gateway itself sets on the upstream request; a client's copies are dropped
# so a client cannot forge them (X-Forwarded-For is appended to, not replaced).
GATEWAY_SET_REQUEST: Final[frozenset[bytes]] = frozenset(
    {HOST, X_REQUEST_ID, X_FORWARDED_PROTO, X_FORWARDED_HOST}
)

MAX_REQUEST_ID_CHARS: Final = 128

# Names a client's Connection header may not remove (RFC 9110 §7.6.1 lets it name any
# field): the authority, the correlation id, the forwarding chain and the identity the
# gateway vouches for. Naming them is ignored; every other named field is dropped from
# what the client sent before the gateway adds its own headers.
# X-User-ID goes upstream only with the identity a filter established (`RequestContext.user`),
# never as a client wrote it, whether or not auth is configured (gateway/proxy.py).
X_USER_ID: Final = b"x-user-id"
CONNECTION_PROTECTED: Final[frozenset[bytes]] = frozenset(
    {HOST, X_REQUEST_ID, X_USER_ID, CONTENT_LENGTH, TRANSFER_ENCODING}
)
X_FORWARDED_PREFIX: Final = b"x-forwarded-"


def length_mask(names: frozenset[bytes]) -> int:
    """A bit per name length: `mask >> len(name) & 1` rules a name out of `names` without
    hashing it (a fresh bytes object from the parser hashes all its bytes first)."""
    mask = 0
    for name in names:
        mask |= 1 << len(name)
    return mask


_STATUS_LINES: Final[dict[int, bytes]] = {}


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <code> <reason>\\r\\n`, cached per code."""
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("ascii"))
        if 100 <= status <= 999:
            _STATUS_LINES[status] = line
    return line


_CL_LINES_CACHED: Final = 8192  # Content-Length lines kept for bodies smaller than this
_CL_LINES: Final[list[bytes | None]] = [None] * _CL_LINES_CACHED


def content_length_line(length: int) -> bytes:
    """`content-length: <n>\r\n`; small bodies' lines are made once and reused."""
    if 0 <= length < _CL_LINES_CACHED:
        line = _CL_LINES[length]
        if line is None:
            line = _CL_LINES[length] = _content_length_line(length)
        return line
    return _content_length_line(length)


# Compiled, `b"...%d" % n` goes through the generic bytes formatting machinery; str(n) and
# a concatenation cost a fraction of it.
def _content_length_line(length: int) -> bytes:
    return b"content-length: " + str(length).encode("ascii") + b"\r\n"


def chunk_size_line(size: int) -> bytes:
    """A chunk-size line of the chunked coding (RFC 9112 §7.1): hex digits, CRLF."""
    return hex(size)[2:].encode("ascii") + b"\r\n"


# Connection values that name no other field: the usual case is left unparsed.
TRIVIAL_CONNECTION_TOKENS: Final = frozenset({b"keep-alive", b"close"})
TRIVIAL_CONNECTION_VALUES: Final = frozenset({b"keep-alive", b"close", b""})
# The same as commonly capitalised: most values match here and are never lowered.
TRIVIAL_CONNECTION_AS_SENT: Final = TRIVIAL_CONNECTION_VALUES | {b"Keep-Alive", b"Close"}


def names_other_fields(connection: bytes) -> bool:
    """Whether a Connection value names fields beyond keep-alive/close (rare)."""
    # Compares before any set lookup: a fresh value from the parser would be hashed first.
    if connection == b"keep-alive" or connection == b"close" or connection == b"Keep-Alive":
        return False
    return (
        connection not in TRIVIAL_CONNECTION_AS_SENT and connection.lower() not in TRIVIAL_CONNECTION_VALUES
    )


def parse_length(value: bytes) -> int:
    """A Content-Length value llhttp has already validated, as an int.

    Compiled, `int(value)` is a generic call into int's constructor; the digits loop is a
    few C operations. Anything but plain digits still goes through int().
    """
    n = 0
    for c in value:
        if c < 48 or c > 57:
            return int(value)
        n = n * 10 + c - 48
    return n


def connection_tokens(value: bytes) -> set[bytes]:
    """The lowercase option names in a Connection header value (RFC 9110 §7.6.1)."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def connection_named(values: list[bytes]) -> frozenset[bytes]:
    """The fields the Connection header values name for removal (hop-by-hop beyond
    keep-alive/close), without the protected ones a client may not remove."""
    named: set[bytes] = set()
    for value in values:
        named |= connection_tokens(value)
    return frozenset(
        n
        for n in named
        if n not in TRIVIAL_CONNECTION_TOKENS
        and n not in CONNECTION_PROTECTED
        and not n.startswith(X_FORWARDED_PREFIX)
    )


# RFC 3986 §3.2.2: a reg-name is unreserved characters, pct-encoded octets and sub-delims
# (an IPv4 address is a reg-name by its characters); §3.2.3: the port is digits.
_REG_NAME: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;="
_IP_LITERAL: Final = b"0123456789ABCDEFabcdef:."  # IPv6address (IPvFuture is not accepted)
_HEX: Final = b"0123456789ABCDEFabcdef"


def _is_port(port: bytes) -> bool:
    return len(port) <= 5 and not port.translate(None, b"0123456789") and (not port or int(port) <= 65535)


def is_valid_host(value: bytes) -> bool:
    """Whether a Host value (or an absolute-form target's authority) is `uri-host [":" port]`
    (RFC 9112 §3.2, RFC 3986 §3.2.2-3): no userinfo, path, query, spaces or second colon.

    An empty value is valid: RFC 9112 §3.2 has clients send an empty Host when the target
    URI has no authority. A few C-level bytes operations, no regex: it runs per request.
    """
    if not value:
        return True
    if value[0] == 0x5B:  # '[': IP-literal
        end = value.find(b"]")
        if end < 2 or value[1:end].translate(None, _IP_LITERAL):
            return False
        rest = value[end + 1 :]
        return not rest or (rest[0] == 0x3A and _is_port(rest[1:]))
    colon = value.find(b":")
    host = value
    if colon >= 0:
        host = value[:colon]
        if not host or not _is_port(value[colon + 1 :]):
            return False
    if host.translate(None, _REG_NAME):
        return False
    pct = host.find(b"%")
    while pct >= 0:
        pair = host[pct + 1 : pct + 3]
        if len(pair) != 2 or pair.translate(None, _HEX):
            return False
        pct = host.find(b"%", pct + 3)
    return True


def is_sane_request_id(value: bytes) -> bool:
    """A client's X-Request-ID is kept only when it is 1-128 visible ASCII characters.

    Anything else (empty, too long, spaces, control or non-ASCII bytes) could smuggle
    log lines or blow up label storage downstream, so the gateway generates its own.
    """
    if not value or len(value) > MAX_REQUEST_ID_CHARS:
        return False
    return all(0x21 <= b <= 0x7E for b in value)


def encode_headers(headers: Headers) -> bytes:
    """Serialise a header block (without the terminating empty line)."""
    return b"".join([b"%s: %s\r\n" % (n, v) for n, v in headers])


def decode_fields(block: bytes) -> Headers:
    """`encode_headers` backwards: the (name, value) pairs of a serialized block, for the
    rare answer that is built from pairs (a local reply, a WebSocket handshake)."""
    out: Headers = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            out.append((name, value))
    return out
