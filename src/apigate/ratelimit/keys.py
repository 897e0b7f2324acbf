"""Who a request counts against: the client ip rule and the counter key.

Client ip (what `key_type: ip` counts, and the fallback of the other key types): the
rule in apigate/gateway/clientip.py, shared with IP rules and header transforms.

Keys are bytes: `rl:<scope>:<algorithm>:<key_type>:<value>` where scope is `r:<route id>`
for a route's own limit or `d` for the shared default limit, so two routes never share a
counter by accident (route ids cannot contain ':'), and a change of algorithm starts
fresh. Values that are secrets (API keys) or could be long (headers, user ids) are
hashed (BLAKE2b, 128 bits): Redis key names show up in MONITOR and SLOWLOG.
"""

from __future__ import annotations

import hashlib

from apigate.gateway.clientip import ClientIp, IpNetwork, parse_networks

KEY_PREFIX = b"rl:"
MAX_PLAIN_VALUE = 64  # bytes kept as they are in a key; longer values are hashed


def _value(raw: bytes, hashed: bool) -> bytes:
    if hashed or len(raw) > MAX_PLAIN_VALUE:
        return b"#" + hashlib.blake2b(raw, digest_size=16).hexdigest().encode("ascii")
    return raw


def scope_prefix(scope: str, algorithm_short: str, key_type: str) -> bytes:
    """`rl:<scope>:<alg>:<key_type>:` — the part of a key fixed by the configuration."""
    return KEY_PREFIX + f"{scope}:{algorithm_short}:{key_type}:".encode()


def key_for(prefix: bytes, kind: bytes, value: bytes, hashed: bool = False) -> bytes:
    """`kind` says which identity the value is (`ip`, `user`, …): a header-keyed counter
    falls back to the ip when the header is missing, and the two must not collide."""
    return prefix + kind + b"=" + _value(value, hashed)


__all__ = [
    "KEY_PREFIX",
    "MAX_PLAIN_VALUE",
    "ClientIp",
    "IpNetwork",
    "key_for",
    "parse_networks",
    "scope_prefix",
]
