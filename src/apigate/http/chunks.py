"""The size of the chunk llhttp has just parsed, read from the parser's own state.

A chunked request body declares each chunk's size before its data (RFC 9112 §7.1).
httptools reports `on_chunk_header` but not the size, so a client that declared a 1 TiB
chunk (or a 16-hex-digit one) and then trickled bytes was only stopped by the request
timeout. llhttp keeps the size it parsed in `llhttp_t.content_length` while the chunk's
data is read; this module reads that field.

It does so through the memory layout of httptools' `HttpParser` (a Cython object whose
first field, after the object header and the vtable pointer, is the `llhttp_t*`) and of
`llhttp_t` (httptools/parser/cparser.pxd). A layout that changed would read garbage, so
the layout is proven before use: `llhttp_t.data` must point back at the Python parser,
and a probe request with a known chunk size must read back exactly. If either fails
(another httptools, another interpreter), `chunk_size` returns -1 and the body limit is
enforced as the bytes arrive, as before.
"""

from __future__ import annotations

import ctypes
from typing import Any, Final

import httptools

_PARSER_FIELD: Final = 24  # PyObject_HEAD (16) + Cython vtable pointer (8): `llhttp_t* _cparser`
_DATA_FIELD: Final = 48  # llhttp_t.data: the Python parser object (set by httptools)
_LENGTH_FIELD: Final = 64  # llhttp_t.content_length: the current chunk's size while in a chunk
_PROBE_SIZE: Final = 0x1234F


def _read(parser: object) -> int:
    base = ctypes.c_void_p.from_address(id(parser) + _PARSER_FIELD).value
    if not base or ctypes.c_void_p.from_address(base + _DATA_FIELD).value != id(parser):
        return -1
    return int(ctypes.c_uint64.from_address(base + _LENGTH_FIELD).value)


class _Probe:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_chunk_header(self) -> None:
        self.sizes.append(_read(self.parser))


def _layout_known() -> bool:
    try:
        probe = _Probe()
        probe.parser.feed_data(
            b"POST / HTTP/1.1\r\nHost: probe\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{_PROBE_SIZE:x}\r\n".encode()
        )
        return probe.sizes == [_PROBE_SIZE]
    except Exception:
        return False


USABLE: Final = _layout_known()


def chunk_size(parser: Any) -> int:
    """The size declared by the chunk-size line just parsed (call it from
    `on_chunk_header`), or -1 when it cannot be known."""
    if not USABLE:
        return -1
    return _read(parser)
