"""The client's address: the socket peer, or what trusted proxies say it is.

The socket peer, unless the peer is one of `server.trusted_proxies`; then X-Forwarded-For
is read from the right (each proxy appends the address it received from), skipping
trusted hops, and the first untrusted entry is the client. Entries left of it were written
by the client itself and are never used, so a client cannot choose its own address;
without trusted_proxies the header is ignored entirely. A malformed entry stops the walk
at the hop that sent it (that hop is then the client), as nginx's realip module does.

Used by rate limits (`key_type: ip`), IP rules and header transforms (`$client_ip`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from apigate.http.headers import X_FORWARDED_FOR

_TRUST_CACHE_MAX = 4096

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An X-Forwarded-For entry: `1.2.3.4`, `1.2.3.4:567`, `::1`, `[::1]:567`."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ClientIp:
    """The client-ip rule for one set of trusted proxies."""

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self.networks = parse_networks(trusted_proxies)
        self._peer_trusted: dict[str, bool] = {}

    def is_trusted(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr.version == n.version and addr in n for n in self.networks)

    def _peer_is_trusted(self, peer: str) -> bool:
        known = self._peer_trusted.get(peer)
        if known is None:
            addr = parse_ip(peer)
            known = addr is not None and self.is_trusted(addr)
            if len(self._peer_trusted) >= _TRUST_CACHE_MAX:
                self._peer_trusted.clear()
            self._peer_trusted[peer] = known
        return known

    def resolve(self, peer: str, headers: Sequence[tuple[bytes, bytes]]) -> str:
        if not self.networks or not self._peer_is_trusted(peer):
            return peer
        entries: list[str] = []
        for name, value in headers:
            if name == X_FORWARDED_FOR:
                entries.extend(value.decode("latin-1").split(","))
        client = peer
        for entry in reversed(entries):
            addr = parse_ip(entry)
            if addr is None:
                return client
            client = str(addr)
            if not self.is_trusted(addr):
                return client
        return client  # every hop trusted: the left-most one
