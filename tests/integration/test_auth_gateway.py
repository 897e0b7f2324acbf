"""Authentication through the running gateway: JWT with a secret and with a JWKS URL.

The demo upstream echoes what reached it, so each test sees both what the client got
(401/403 with WWW-Authenticate, the JSON error) and what the upstream got (X-User-ID
and claim headers from the token, never the client's own copies).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from auth_fixtures import SECRET, SECURE_ROUTE, apigate_cli, jwt_token
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import (
    Conn,
    Gateway,
    GatewayFactory,
    ScriptedUpstream,
    UpRequest,
    UpstreamProcess,
    echo_handler,
    wait_until,
)

ISSUER = "https://idp.test"
AUTH = {
    "jwt_secret": SECRET,
    "jwt_issuer": ISSUER,
    "jwt_audience": ["api", "web"],
    "claim_headers": {"X-User-Email": "email"},
}
ROUTES = [
    SECURE_ROUTE,
    {
        "id": "admin",
        "path": "/admin/*",
        "upstream_id": "demo",
        "rewrite": "/api/echo/{*}",
        "auth_required": True,
        "required_scopes": ["admin"],
    },
    {"id": "open", "path": "/open/*", "upstream_id": "demo", "rewrite": "/api/echo/{*}"},
]


def token(secret: str = SECRET, alg: str = "HS256", **overrides: Any) -> str:
    return jwt_token(secret, alg, **{"iss": ISSUER, "aud": "api", **overrides})


def hs256_with_key_as_secret(public: rsa.RSAPublicKey, like: str) -> str:
    """The HS/RS confusion, built by hand: `like`'s claims, HS256 over the PEM public key."""
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    signing_input = header + b"." + like.split(".")[1].encode()
    signature = base64.urlsafe_b64encode(hmac.new(pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    return module_gateway({"demo": demo.url}, ROUTES, auth=AUTH)


@pytest.fixture(scope="module")
def client(gw: Gateway) -> httpx.Client:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        yield c  # type: ignore[misc]


def seen_headers(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return dict(response.json()["headers"])


def test_no_token_is_401_and_never_reaches_the_upstream(client: httpx.Client) -> None:
    r = client.get("/secure/x")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    body = r.json()
    assert body["error"] == "unauthenticated" and body["correlation_id"] == r.headers["x-request-id"]
    assert "headers" not in body


def test_a_valid_token_reaches_the_upstream_with_the_identity(client: httpx.Client) -> None:
    t = token(email="alice@example.org")
    r = client.get("/secure/x", headers={"Authorization": f"Bearer {t}", "X-User-ID": "mallory"})
    seen = seen_headers(r)
    assert seen["x-user-id"] == "alice" and seen["x-user-email"] == "alice@example.org"
    raw = r.json()["raw_headers"]
    assert sum(h.lower().startswith("x-user-id:") for h in raw) == 1


def test_forged_identity_headers_are_stripped_on_open_routes(client: httpx.Client) -> None:
    r = client.get("/open/x", headers={"X-User-ID": "mallory", "X-User-Email": "m@evil.test"})
    seen = seen_headers(r)
    assert "x-user-id" not in seen and "x-user-email" not in seen


def test_the_cookie_works_like_the_bearer_header(client: httpx.Client) -> None:
    r = client.get("/secure/x", headers={"Cookie": f"theme=dark; session_token={token(sub='carol')}"})
    assert seen_headers(r)["x-user-id"] == "carol"


@pytest.mark.parametrize(
    ("make", "description"),
    [
        (lambda: token(exp=int(time.time()) - 120), "The token has expired."),
        (lambda: token(secret="another-secret-0123456789abcdef0123"), "The token signature is invalid."),
        (lambda: token(aud=["other"]), "The token audience is not accepted."),
        (lambda: token(iss="https://evil.test"), "The token issuer is not accepted."),
        (lambda: "eyJhbGciOiJub25lIn0." + token().split(".")[1] + ".", "The token signature is invalid."),
        (lambda: "not-a-jwt", "The token is malformed."),
        (lambda: "a" * 9000, "The token is malformed."),
    ],
    ids=["expired", "bad_signature", "bad_audience", "bad_issuer", "alg_none", "malformed", "oversized"],
)
def test_invalid_tokens_are_401_invalid_token(
    client: httpx.Client, make: Callable[[], str], description: str
) -> None:
    r = client.get("/secure/x", headers={"Authorization": f"Bearer {make()}"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == f'Bearer error="invalid_token", error_description="{description}"'
    assert r.json()["message"] == description


def test_a_missing_scope_is_403(client: httpx.Client) -> None:
    r = client.get("/admin/x", headers={"Authorization": f"Bearer {token(scope='read')}"})
    assert r.status_code == 403
    assert r.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="admin"'
    r = client.get("/admin/x", headers={"Authorization": f"Bearer {token(scope='read admin')}"})
    assert seen_headers(r)["x-user-id"] == "alice"


def test_the_token_command_mints_what_the_gateway_accepts(gw: Gateway, client: httpx.Client) -> None:
    out = apigate_cli("token", "--config", str(gw.config_path), "--sub", "dave", "--claims", "scope=admin")
    assert out.returncode == 0, out.stderr
    r = client.get("/admin/x", headers={"Authorization": f"Bearer {out.stdout.strip()}"})
    assert seen_headers(r)["x-user-id"] == "dave"


def test_many_requests_on_one_connection(client: httpx.Client) -> None:
    t = token(sub="erin")
    for i in range(200):
        r = client.get(f"/secure/{i}", headers={"Authorization": f"Bearer {t}"})
        assert seen_headers(r)["x-user-id"] == "erin"


def test_failures_are_logged_with_their_reason_and_without_the_token(
    gw: Gateway, client: httpx.Client
) -> None:
    t = token(exp=int(time.time()) - 3600, sub="logged-expired")
    assert client.get("/secure/log", headers={"Authorization": f"Bearer {t}"}).status_code == 401

    def logged() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in gw.stdout().splitlines() if line.startswith("{")]
        return [e for e in lines if e.get("event_type") == "auth_failed" and e.get("path") == "/secure/log"]

    assert wait_until(lambda: bool(logged()), 5)
    event = logged()[0]
    assert event["reason"] == "expired" and event["component"] == "auth" and event["route"] == "secure"
    assert t.split(".")[1] not in gw.stdout() and t.split(".")[2] not in gw.stdout()


# ----------------------------------------------------------------------------- JWKS
def test_rs256_with_a_jwks_url(gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k1", "use": "sig"}

    async def handler(req: UpRequest, conn: Conn) -> bool:
        if req.path == "/jwks":
            await conn.respond_json({"keys": [public]})
            return True
        return await echo_handler(req, conn)

    up = scripted(handler)
    auth = {
        "jwt_algorithm": "RS256",
        "jwks_url": f"{up.url}/jwks",
        "jwt_issuer": ISSUER,
        "jwt_audience": "api",
    }
    routes = [{"id": "secure", "path": "/*", "upstream_id": "idp", "auth_required": True}]
    gw = gateway({"idp": up.url}, routes, auth=auth)
    assert wait_until(lambda: len(up.requests_to("/jwks")) >= 1, 10)  # fetched at start, unasked
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        good = token(secret=key, alg="RS256")  # type: ignore[arg-type]
        r = c.get("/api/x", headers={"Authorization": f"Bearer {good}"})
        assert r.status_code == 200 and dict(r.json()["headers"])["x-user-id"] == "alice"
        unknown = jwt.encode(
            {"sub": "x", "exp": int(time.time()) + 60}, key, algorithm="RS256", headers={"kid": "k9"}
        )
        assert c.get("/api/x", headers={"Authorization": f"Bearer {unknown}"}).status_code == 401
        confused = hs256_with_key_as_secret(key.public_key(), good)
        assert c.get("/api/x", headers={"Authorization": f"Bearer {confused}"}).status_code == 401
    assert len(up.requests_to("/jwks")) <= 2  # the unknown kid may refetch once, not per request
