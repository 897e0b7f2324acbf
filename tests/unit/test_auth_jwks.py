"""JWKS: fetched at start, rotated keys picked up, refetches limited, odd keys skipped.

A small JWKS server on a free port (in the test's own event loop) serves a document the
test edits; the key set's clock is a fake one, so the 30 s refetch limit is tested
without waiting for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from auth_helpers import Harness, claims, config, ec_key, free_port, rsa_key
from cryptography.hazmat.primitives.asymmetric import rsa

from apigate.auth import reasons
from apigate.auth.httpget import FetchError, http_get
from apigate.auth.jwks import JWKS_MIN_REFETCH_S, JwksKeySet, parse_jwks


def jwk(private: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        out: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        out = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    if kid is not None:
        out["kid"] = kid
    out.update(extra)
    return out


def signed(private: Any, kid: str | None, alg: str = "RS256", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), private, algorithm=alg, headers=headers)


class JwksServer:
    """Serves `doc` as JSON at any path; counts requests; `status`/`chunked` change how."""

    def __init__(self) -> None:
        self.doc: Any = {"keys": []}
        self.requests = 0
        self.status = 200
        self.chunked = False
        self.server: asyncio.Server | None = None

    async def start(self) -> JwksServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/.well-known/jwks.json"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        body = json.dumps(self.doc).encode()
        head = f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\nConnection: close\r\n"
        if self.chunked:
            half = len(body) // 2
            chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
            writer.write((head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks)
        else:
            writer.write((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(scenario: Callable[[JwksServer, Clock], Awaitable[None]]) -> None:
    async def main() -> None:
        server = await JwksServer().start()
        try:
            await scenario(server, Clock())
        finally:
            await server.stop()

    asyncio.run(main())


def jwks_harness(server: JwksServer, clock: Clock, alg: str = "RS256") -> Harness:
    cfg = config({"jwt_algorithm": alg, "jwt_secret": None, "jwks_url": server.url})
    assert cfg.auth is not None and cfg.auth.jwks_url is not None
    keys = JwksKeySet(cfg.auth.jwks_url, alg, cfg.auth.jwks_refresh_secs, clock=clock)
    return Harness(cfg, jwks=keys)  # built in a running loop: the first fetch starts now


def test_keys_are_fetched_at_start_and_a_rotation_is_picked_up() -> None:
    async def scenario(server: JwksServer, clock: Clock) -> None:
        old, new = rsa_key(0), rsa_key(1)
        server.doc = {"keys": [jwk(old, "k1")]}
        h = jwks_harness(server, clock)
        jwks = h.filter.jwks
        assert jwks is not None
        result = await h.request_async(signed(old, "k1"))  # waits for the fetch started at construction
        assert result.reason is None and result.ctx.user == "alice" and server.requests == 1
        # The provider rotates: k2 appears. Within 30 s of the last fetch no refetch happens...
        server.doc = {"keys": [jwk(old, "k1"), jwk(new, "k2")]}
        clock.now += 5
        assert (await h.request_async(signed(new, "k2"))).reason == reasons.BAD_SIGNATURE
        assert server.requests == 1
        # ...after 30 s the unknown kid triggers one refetch, shared by concurrent requests.
        clock.now += JWKS_MIN_REFETCH_S
        results = await asyncio.gather(*(h.request_async(signed(new, "k2", sub=f"u{i}")) for i in range(5)))
        assert [r.reason for r in results] == [None] * 5 and server.requests == 2
        # Made-up kids right after a refetch cost nothing upstream.
        for kid in ("nope", "../../etc/passwd", "/dev/zero", "http://evil.test/jwks"):
            assert (await h.request_async(signed(new, kid))).reason == reasons.BAD_SIGNATURE
        assert server.requests == 2
        assert "2 fetches" in repr(jwks)
        await h.filter.close()

    run(scenario)


def test_a_token_without_kid_needs_a_single_key_set() -> None:
    async def scenario(server: JwksServer, clock: Clock) -> None:
        server.doc = {"keys": [jwk(rsa_key(0), None)]}
        h = jwks_harness(server, clock)
        assert (await h.request_async(signed(rsa_key(0), None))).reason is None
        server.doc = {"keys": [jwk(rsa_key(0), "a"), jwk(rsa_key(1), "b")]}
        clock.now += JWKS_MIN_REFETCH_S
        assert h.filter.jwks is not None and await h.filter.jwks.refresh()
        # (another sub: the first token is still in the claims cache, as it should be)
        assert (await h.request_async(signed(rsa_key(0), None, sub="bob"))).reason == reasons.BAD_SIGNATURE
        assert (await h.request_async(signed(rsa_key(0), "a", sub="bob"))).reason is None
        await h.filter.close()

    run(scenario)


def test_no_key_set_yet_is_503_and_the_last_good_set_survives_failures() -> None:
    async def scenario(server: JwksServer, clock: Clock) -> None:
        server.status = 500
        h = jwks_harness(server, clock)
        result = await h.request_async(signed(rsa_key(0), "k1"))
        assert result.reason == reasons.STORE_UNAVAILABLE
        assert result.response is not None and result.response.status == 503
        server.status, server.doc = 200, {"keys": [jwk(rsa_key(0), "k1")]}
        clock.now += JWKS_MIN_REFETCH_S
        assert (await h.request_async(signed(rsa_key(0), "k1"))).reason is None
        server.status = 500
        clock.now += JWKS_MIN_REFETCH_S
        assert h.filter.jwks is not None and not await h.filter.jwks.refresh()
        assert (await h.request_async(signed(rsa_key(0), "k1", sub="bob"))).reason is None
        await h.filter.close()

    run(scenario)


def test_the_token_alg_must_be_the_configured_one_even_with_jwks() -> None:
    async def scenario(server: JwksServer, clock: Clock) -> None:
        server.doc = {"keys": [jwk(rsa_key(0), "k1")]}
        h = jwks_harness(server, clock)
        assert (await h.request_async(signed(rsa_key(0), "k1", alg="PS256"))).reason == reasons.BAD_SIGNATURE
        forged = jwt.encode(claims(), "x" * 64, algorithm="HS256", headers={"kid": "k1"})
        assert (await h.request_async(forged)).reason == reasons.BAD_SIGNATURE
        await h.filter.close()

    run(scenario)


def test_only_keys_fit_for_the_algorithm_are_kept() -> None:
    good = jwk(rsa_key(0), "good")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(1), as_dict=True) | {"kid": "private"}
    doc = {
        "keys": [
            good,
            jwk(rsa_key(1), "enc", use="enc"),
            jwk(rsa_key(1), "other-alg", alg="RS512"),
            jwk(ec_key("P-256"), "ec"),
            jwk(small, "small"),
            private,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "oct"},
            "not a key",
        ]
    }
    keys, only, skipped = parse_jwks(json.dumps(doc).encode(), "RS256")
    assert set(keys) == {"good"} and only is keys["good"] and skipped == 7
    with pytest.raises(ValueError, match="no key usable"):
        parse_jwks(json.dumps({"keys": [jwk(ec_key("P-256"), "ec")]}).encode(), "RS256")
    with pytest.raises(ValueError, match="JWK set"):
        parse_jwks(b'{"keys": {}}', "RS256")
    with pytest.raises(ValueError, match="JSON"):
        parse_jwks(b"<html>", "RS256")


def test_es256_jwks() -> None:
    async def scenario(server: JwksServer, clock: Clock) -> None:
        server.doc = {"keys": [jwk(ec_key("P-384"), "p384"), jwk(ec_key("P-256"), "p256")]}
        h = jwks_harness(server, clock, alg="ES256")
        assert (await h.request_async(signed(ec_key("P-256"), "p256", alg="ES256"))).reason is None
        assert (await h.request_async(signed(ec_key("P-384"), "p384", alg="ES384"))).reason == (
            reasons.BAD_SIGNATURE
        )
        await h.filter.close()

    run(scenario)


# ----------------------------------------------------------------------------- the small HTTP client
def test_http_get() -> None:
    async def scenario(server: JwksServer, clock: Clock) -> None:
        server.doc = {"keys": ["x" * 100]}
        assert json.loads(await http_get(server.url, 5)) == server.doc
        server.chunked = True
        assert json.loads(await http_get(server.url, 5)) == server.doc
        with pytest.raises(FetchError, match="larger than"):
            await http_get(server.url, 5, max_bytes=10)
        server.status = 404
        with pytest.raises(FetchError, match="HTTP status 404"):
            await http_get(server.url, 5)
        with pytest.raises(FetchError, match=r"127\.0\.0\.1"):
            await http_get(f"http://127.0.0.1:{free_port()}/jwks", 5)
        with pytest.raises(FetchError, match="not an http"):
            await http_get("ftp://example.test/jwks", 5)

    run(scenario)
