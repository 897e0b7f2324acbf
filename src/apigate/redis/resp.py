"""RESP, the Redis protocol: commands packed by hand, replies parsed by hiredis.

Commands are bytes built once per call (`pack`), or from pieces packed once and reused
(`bulk`, `Script.head`): the single-connection path writes them as they are, and the
cluster path reads them back into arguments with `unpack`.
"""

from __future__ import annotations

import hashlib

import hiredis

ReplyError = hiredis.ReplyError  # an error reply (`-ERR ...`), handed to the caller as a value


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack(*args: bytes) -> bytes:
    """One command as a RESP array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


def unpack(command: bytes) -> list[bytes]:
    """A packed command back to its arguments (the cluster path sends them through redis-py)."""
    reader = hiredis.Reader()
    reader.feed(command)
    reply = reader.gets()
    if not isinstance(reply, list):
        raise ValueError("not a packed command")
    return reply


def is_noscript(reply: object) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


class Script:
    """A Lua script called by EVALSHA; the client sends `load` (SCRIPT LOAD) and the
    failed calls again, once, when Redis answers NOSCRIPT (restart, failover, SCRIPT FLUSH)."""

    __slots__ = ("load", "sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.load = pack(b"SCRIPT", b"LOAD", source.encode())

    def head(self, nargs: int, nkeys: int = 1) -> bytes:
        """`*N EVALSHA sha nkeys`: the start of a call with `nargs` keys and arguments;
        the caller appends them as `bulk` strings."""
        return b"*%d\r\n" % (3 + nargs) + bulk(b"EVALSHA") + bulk(self.sha.encode()) + bulk(b"%d" % nkeys)
