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
# Who the gateway authenticated: sent upstream only with the identity a filter established
# (`RequestContext.user`), never as a client wrote it, whether or not auth is configured.
X_USER_ID: Final = b"x-user-id"

# Headers the gateway itself sets on the upstream request; a client's copies are dropped
# so a client cannot forge them (X-Forwarded-For is appended to, not replaced).
GATEWAY_SET_REQUEST: Final[frozenset[bytes]] = frozenset(
    {HOST, X_REQUEST_ID, X_FORWARDED_PROTO, X_FORWARDED_HOST}
)

MAX_REQUEST_ID_CHARS: Final = 128


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
