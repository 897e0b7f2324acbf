"""Where Redis is: the configured target (one server, Sentinel, or Cluster) and the
single connection's endpoint parsed from its URL.

`ratelimit_target` and `session_target` read the configuration once for every user of
Redis (the rate-limit filter, the session store, the readiness check, `apigate session`),
so all of them reach the same Redis the same way.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from apigate.config.schema import Config

DEFAULT_URL = "redis://localhost:6379"


@dataclass(frozen=True)
class RedisTarget:
    """redis_url alone: one server. With `cluster_nodes` or `sentinel` the URL gives only
    credentials, TLS and db (rate_limiting.redis_url's documented meaning)."""

    url: str | None = None
    cluster_nodes: tuple[str, ...] = ()
    sentinel: tuple[str, tuple[str, ...]] | None = None  # (master name, host:port of each sentinel)

    def __str__(self) -> str:
        """For messages: where it points, never the password."""
        if self.cluster_nodes:
            return "cluster " + ",".join(self.cluster_nodes)
        if self.sentinel is not None:
            return f"sentinel {self.sentinel[0]}@{','.join(self.sentinel[1])}"
        parts = urlsplit(self.url or DEFAULT_URL)
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        return f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}"


def ratelimit_target(cfg: Config) -> RedisTarget | None:
    """rate_limiting's Redis (url, cluster or sentinel), or None: limits in memory."""
    rl = cfg.rate_limiting
    if rl is None or not (rl.redis_url or rl.redis_cluster_nodes or rl.redis_sentinel):
        return None
    sentinel = None
    if rl.redis_sentinel is not None:
        sentinel = (rl.redis_sentinel.master_name, tuple(rl.redis_sentinel.sentinels))
    return RedisTarget(rl.redis_url, tuple(rl.redis_cluster_nodes), sentinel)


def session_target(cfg: Config) -> RedisTarget | None:
    """`auth.session_store.redis_url`, else rate limiting's Redis (cluster and sentinel
    included), else None: sessions in memory."""
    if cfg.auth is not None and cfg.auth.session_store.redis_url:
        return RedisTarget(cfg.auth.session_store.redis_url)
    return ratelimit_target(cfg)


def host_port(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host.strip("[]") or "localhost", int(port)


class Endpoint:
    """Where the single connection goes: parsed once from the URL (or asked of Sentinel)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items() if v}
        self.scheme = parts.scheme
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 6379
        self.path = unquote(parts.path) if parts.scheme == "unix" else ""
        self.username = unquote(parts.username) if parts.username else query.get("username")
        self.password = unquote(parts.password) if parts.password else query.get("password")
        db = query.get("db") or (parts.path.strip("/") if parts.scheme != "unix" else "")
        self.db = int(db) if db else 0
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "rediss":
            self.ssl = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
            if query.get("ssl_cert_reqs") == "none":
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self.sentinel: Any = None
        self.master_name = ""

    def handshake(self) -> list[tuple[bytes, ...]]:
        """AUTH and SELECT, sent before anything else on a new connection."""
        out: list[tuple[bytes, ...]] = []
        if self.password is not None:
            if self.username:
                out.append((b"AUTH", self.username.encode(), self.password.encode()))
            else:
                out.append((b"AUTH", self.password.encode()))
        if self.db:
            out.append((b"SELECT", b"%d" % self.db))
        return out

    def redis_py_kwargs(self) -> dict[str, Any]:
        """The same credentials and TLS for the clients redis-py builds (Cluster)."""
        kwargs: dict[str, Any] = {}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.username:
            kwargs["username"] = self.username
        if self.ssl is not None:
            kwargs["ssl"] = True
        return kwargs

    async def open(self, protocol_factory: Callable[[], asyncio.Protocol]) -> asyncio.BaseTransport:
        loop = asyncio.get_running_loop()
        if self.scheme == "unix":
            transport, _ = await loop.create_unix_connection(protocol_factory, self.path)
            return transport
        host, port = self.host, self.port
        if self.sentinel is not None:
            host, port = await self.sentinel.discover_master(self.master_name)
        transport, _ = await loop.create_connection(
            protocol_factory, host, port, ssl=self.ssl, server_hostname=host if self.ssl else None
        )
        return transport


def open_cluster(target: RedisTarget, timeout_s: float) -> Any:
    """redis-py's RedisCluster for `target.cluster_nodes` (it groups a pipeline by node)."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    kwargs = Endpoint(target.url).redis_py_kwargs() if target.url else {}
    return RedisCluster(
        startup_nodes=[ClusterNode(*host_port(n)) for n in target.cluster_nodes],
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        **kwargs,
    )


def open_endpoint(target: RedisTarget, timeout_s: float) -> Endpoint:
    """The single connection's endpoint: the URL's server, or the master Sentinel names."""
    endpoint = Endpoint(target.url or DEFAULT_URL)
    if target.sentinel is not None:
        from redis.asyncio.sentinel import Sentinel

        name, hosts = target.sentinel
        endpoint.sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [host_port(h) for h in hosts], socket_timeout=timeout_s
        )
        endpoint.master_name = name
    return endpoint
