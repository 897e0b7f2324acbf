"""Helpers for the auth unit tests: keys, hand-built tokens, a filter and fake requests.

Tokens are assembled here byte by byte (header, payload, signature) so the attack cases
(alg=none, HS256 signed with an RSA public key, broken base64) are exactly what an
attacker would send, not whatever a JWT library is willing to produce.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cycles import request_context

from apigate.auth.filter import AuthFilter
from apigate.config.schema import Config
from apigate.gateway.filters import RequestContext, Response
from apigate.gateway.router import Router

SECRET = "unit-test-secret-0123456789abcdef0123"  # 37 bytes: fine for HS256
Signer = Callable[[bytes], bytes]


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- keys
@functools.cache
def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key; `n` picks one of several (generated once per test run)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(curve: str = "P-256", n: int = 0) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1() if curve == "P-256" else ec.SECP384R1())


@functools.cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(private: Any) -> bytes:
    return bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_pem(directory: Path, private: Any, name: str = "pub.pem") -> str:
    path = directory / name
    path.write_bytes(public_pem(private))
    return str(path)


# ----------------------------------------------------------------------------- tokens
def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_token(header: dict[str, Any], payload: dict[str, Any], sign: Signer | None) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    signature = sign(signing_input.encode()) if sign is not None else b""
    return signing_input + "." + b64(signature)


def hs(secret: bytes | str, digest: Any = hashlib.sha256) -> Signer:
    key = secret.encode() if isinstance(secret, str) else secret
    return lambda m: hmac.new(key, m, digest).digest()


def rs256(private: rsa.RSAPrivateKey) -> Signer:
    return lambda m: private.sign(m, padding.PKCS1v15(), hashes.SHA256())


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid payload for the default test config (sub alice, 1 h), with overrides;
    an override of None removes the claim."""
    now = int(time.time())
    out: dict[str, Any] = {
        "sub": "alice",
        "iat": now,
        "exp": now + 3600,
        "iss": "https://idp.test",
        "aud": "api",
    }
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def hs256(payload: dict[str, Any] | None = None, secret: str = SECRET, **header: Any) -> str:
    return hand_token({"alg": "HS256", "typ": "JWT", **header}, payload or claims(), hs(secret))


# ----------------------------------------------------------------------------- filter and requests
def config(auth: dict[str, Any] | None = None, routes: list[dict[str, Any]] | None = None) -> Config:
    base: dict[str, Any] = {"jwt_secret": SECRET, "jwt_issuer": "https://idp.test", "jwt_audience": "api"}
    base.update(auth or {})
    return Config.model_validate(
        {
            "auth": base,
            "upstreams": [{"id": "u", "base_url": "http://127.0.0.1:1"}],
            "routes": routes
            or [
                {"id": "users", "path": "/api/users", "upstream_id": "u", "auth_required": True},
                {"id": "open", "path": "/api/open", "upstream_id": "u"},
                {
                    "id": "admin",
                    "path": "/api/admin",
                    "upstream_id": "u",
                    "auth_required": True,
                    "required_scopes": ["admin"],
                },
            ],
        }
    )


class Harness:
    """An AuthFilter and the router of its config; `request()` runs on_request once."""

    def __init__(self, cfg: Config, **kwargs: Any) -> None:
        self.cfg = cfg
        self.filter = AuthFilter(cfg, **kwargs)
        self.router = Router(cfg.routes)
        self.clock = 1000.0  # the loop time given as ctx.start

    def context(self, path: str = "/api/users", headers: dict[str, str] | None = None) -> RequestContext:
        raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        ctx = request_context(path, [(b"host", b"gw.test"), *raw], start=self.clock)
        ctx.request_id = "req-1"
        match = self.router.match("GET", path)
        assert isinstance(match, tuple), match
        ctx.route = match[0]
        return ctx

    def request(self, token: str | None = None, path: str = "/api/users", **headers: str) -> Result:
        """Run the filter synchronously (it must not wait); headers given as keyword names."""
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        if token is not None:
            hdrs["authorization"] = f"Bearer {token}"
        ctx = self.context(path, hdrs)
        before = dict(self.filter.failures)
        outcome = self.filter.on_request(ctx)
        assert outcome is None or isinstance(outcome, Response), f"the filter waited: {outcome!r}"
        return Result(ctx, outcome, _reason(before, self.filter.failures))

    async def request_async(self, token: str, path: str = "/api/users") -> Result:
        ctx = self.context(path, {"authorization": f"Bearer {token}"})
        before = dict(self.filter.failures)
        outcome: Any = self.filter.on_request(ctx)
        if outcome is not None and not isinstance(outcome, Response):
            outcome = await outcome
        return Result(ctx, outcome, _reason(before, self.filter.failures))


def _reason(before: dict[str, int], after: dict[str, int]) -> str | None:
    changed = [r for r in after if after[r] != before[r]]
    assert len(changed) <= 1, changed
    return changed[0] if changed else None


class Result:
    def __init__(self, ctx: RequestContext, response: Response | None, reason: str | None) -> None:
        self.ctx = ctx
        self.response = response
        self.reason = reason  # the failure counted, None when admitted

    @property
    def upstream_headers(self) -> dict[bytes, bytes]:
        return dict(self.ctx.cycle.headers)

    def header(self, name: bytes) -> bytes | None:
        assert self.response is not None
        return dict(self.response.headers).get(name)

    def body(self) -> dict[str, Any]:
        assert self.response is not None
        return dict(json.loads(self.response.body))
