"""The auth filter around verification: where tokens come from, what the upstream gets,
what the client gets, the claims cache, and in-memory sessions."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from auth_helpers import Harness, claims, config, free_port, hs256

from apigate.auth import reasons
from apigate.auth.cache import ClaimsCache, verified
from apigate.auth.filter import AuthFilter
from apigate.auth.jwt import JwtVerifier
from apigate.auth.sessions import MemorySessionStore, RedisSessionStore, new_token, session_claims
from apigate.server import build_filters


@pytest.fixture
def h() -> Harness:
    return Harness(config({"claim_headers": {"X-User-Email": "email", "X-Tenant": "tenant"}}))


# ----------------------------------------------------------------------------- where the token comes from
def test_no_token_is_401_with_a_bare_challenge(h: Harness) -> None:
    result = h.request()
    assert result.reason == reasons.MISSING
    assert result.response is not None and result.response.status == 401
    assert result.header(b"www-authenticate") == b"Bearer"
    assert result.body() == {
        "error": "unauthenticated",
        "message": "Authentication is required.",
        "correlation_id": "req-1",
    }


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(h: Harness, scheme: str) -> None:
    assert h.request(authorization=f"{scheme} {hs256()}").reason is None


def test_extra_spaces_after_bearer(h: Harness) -> None:
    assert h.request(authorization=f"Bearer   {hs256()}").reason is None


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer  "])
def test_an_empty_bearer_token_is_malformed(h: Harness, value: str) -> None:
    assert h.request(authorization=value).reason == reasons.MALFORMED


def test_another_scheme_counts_as_no_token(h: Harness) -> None:
    assert h.request(authorization="Basic YWxpY2U6cHc=").reason == reasons.MISSING


def test_the_cookie_is_read_when_there_is_no_bearer(h: Harness) -> None:
    token = hs256()
    assert h.request(cookie=f"theme=dark; session_token={token}; x=1").reason is None
    assert h.request(cookie=f'session_token="{token}"').reason is None
    assert h.request(cookie="theme=dark").reason == reasons.MISSING
    # Bearer wins over the cookie.
    assert h.request("garbage.token.here", cookie=f"session_token={token}").reason == reasons.MALFORMED


def test_a_custom_cookie_name() -> None:
    h = Harness(config({"cookie_name": "sid"}))
    assert h.request(cookie=f"session_token={hs256()}").reason == reasons.MISSING
    assert h.request(cookie=f"sid={hs256()}").reason is None


@pytest.mark.parametrize("token", ["a b", "tok\x01en", "tøken", "a,b"])
def test_characters_outside_b64token_are_malformed(h: Harness, token: str) -> None:
    assert h.request(authorization=f"Bearer {token}").reason == reasons.MALFORMED


# ----------------------------------------------------------------------------- what the upstream gets
def test_the_upstream_gets_the_user_and_claim_headers(h: Harness) -> None:
    token = hs256(claims(email="alice@example.org", tenant=7))
    result = h.request(token, x_user_id="mallory", x_user_email="mallory@evil", x_tenant="0")
    assert result.reason is None
    got = result.ctx.cycle.headers
    assert [v for n, v in got if n == b"x-user-id"] == [b"alice"]
    assert [v for n, v in got if n == b"x-user-email"] == [b"alice@example.org"]
    assert [v for n, v in got if n == b"x-tenant"] == [b"7"]
    assert result.ctx.user == "alice" and result.ctx.claims is not None
    assert result.ctx.claims["email"] == "alice@example.org"


def test_client_identity_headers_are_stripped_on_open_routes_too(h: Harness) -> None:
    result = h.request(hs256(), path="/api/open", x_user_id="mallory", X_User_Email="m@evil")
    assert result.reason is None and result.response is None
    names = [n for n, _ in result.ctx.cycle.headers]
    assert b"x-user-id" not in names and b"x-user-email" not in names
    assert b"authorization" in names  # the credentials themselves are passed on
    assert result.ctx.user is None  # open routes do not verify


def test_claims_unfit_for_a_header_are_left_out(h: Harness) -> None:
    token = hs256(claims(email="a@b\r\nx-admin: 1", tenant={"nested": 1}))
    got = h.request(token).upstream_headers
    assert b"x-user-email" not in got and b"x-tenant" not in got and got[b"x-user-id"] == b"alice"


def test_a_token_without_sub_gives_no_user_header(h: Harness) -> None:
    result = h.request(hs256(claims(sub=None)))
    assert result.reason is None and result.ctx.user is None
    assert b"x-user-id" not in result.upstream_headers


# ----------------------------------------------------------------------------- scopes
@pytest.mark.parametrize(
    ("granted", "reason"),
    [
        ({"scope": "read admin"}, None),
        ({"scp": ["read", "admin"]}, None),
        ({"scp": "admin"}, None),
        ({"scope": "read"}, reasons.INSUFFICIENT_SCOPE),
        ({"scope": "administrator"}, reasons.INSUFFICIENT_SCOPE),
        ({}, reasons.INSUFFICIENT_SCOPE),
    ],
)
def test_required_scopes(h: Harness, granted: dict[str, object], reason: str | None) -> None:
    result = h.request(hs256(claims(**granted)), path="/api/admin")
    assert result.reason == reason
    if reason is not None:
        assert result.response is not None and result.response.status == 403
        assert result.header(b"www-authenticate") == b'Bearer error="insufficient_scope", scope="admin"'
        assert result.body()["error"] == "forbidden"
        assert b"x-user-id" not in result.upstream_headers


# ----------------------------------------------------------------------------- failures: counted and logged
def test_failures_are_logged_without_the_token(h: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    token = hs256(claims(exp=int(time.time()) - 3600))
    assert h.request(token).reason == reasons.EXPIRED
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failed = [e for e in events if e["event_type"] == "auth_failed"]
    assert len(failed) == 1
    assert failed[0]["reason"] == "expired" and failed[0]["correlation_id"] == "req-1"
    assert failed[0]["route"] == "users" and failed[0]["component"] == "auth"
    text = json.dumps(events)
    for part in token.split("."):
        assert part not in text
    assert h.filter.failures[reasons.EXPIRED] == 1
    assert set(h.filter.failures) == set(reasons.REASONS)


# ----------------------------------------------------------------------------- the claims cache
def test_a_cached_token_is_not_verified_again(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = JwtVerifier.verify

    def counting(self: JwtVerifier, token: str, key: object) -> object:
        calls.append(token)
        return real(self, token, key)  # type: ignore[arg-type]

    monkeypatch.setattr(JwtVerifier, "verify", counting)
    token = hs256()
    for _ in range(5):
        result = h.request(token, x_user_id="mallory")
        assert result.reason is None
        assert [v for n, v in result.ctx.cycle.headers if n == b"x-user-id"] == [b"alice"]
    assert len(calls) == 1
    h.clock += h.filter.cache.ttl + 1  # past ttl_secs: verified again
    assert h.request(token).reason is None and len(calls) == 2
    # auth_cache_lookups_total, as /metrics and the status page read it
    lookups = {labels: v for name, labels, v in h.filter.samples() if name == "auth_cache_lookups_total"}
    assert lookups == {("hit",): 4.0, ("miss",): 2.0}


def test_cache_entries_never_outlive_the_token() -> None:
    wall = 1_700_000_000.0
    entry = verified({"sub": "a", "exp": wall + 2}, {}, now=100.0, ttl=300, wall=wall)
    assert entry.deadline == pytest.approx(102.0)
    cache = ClaimsCache(capacity=10, ttl=300)
    cache.put(b"t", entry, now=100.0)
    assert cache.get(b"t", 101.9) is entry
    assert cache.get(b"t", 102.1) is None and len(cache) == 0
    # Already expired (or expiring now): not cached at all.
    cache.put(b"u", verified({"exp": wall - 1}, {}, now=100.0, ttl=300, wall=wall), now=100.0)
    assert len(cache) == 0


def test_cache_expiry_bounded_by_exp_through_the_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = JwtVerifier.verify

    def counting(self: JwtVerifier, token: str, key: object) -> object:
        calls.append(token)
        return real(self, token, key)  # type: ignore[arg-type]

    monkeypatch.setattr(JwtVerifier, "verify", counting)
    h = Harness(config({"cache": {"ttl_secs": 300}}))
    token = hs256(claims(exp=int(time.time()) + 3))  # valid for ~3 s, though ttl_secs is 300
    assert h.request(token).reason is None
    entry = h.filter.cache.get(token.encode(), h.clock)
    assert entry is not None and entry.deadline <= h.clock + 3.01
    h.clock += 1
    assert h.request(token).reason is None and len(calls) == 1  # a hit
    h.clock += 2.5  # past exp on the cache's clock: the cache no longer answers for it
    h.request(token)
    assert len(calls) == 2


def test_cache_capacity_evicts_the_oldest() -> None:
    cache = ClaimsCache(capacity=2, ttl=60)
    for name in (b"a", b"b", b"c"):
        cache.put(name, verified({"sub": name.decode()}, {}, now=0, ttl=60), now=0)
    assert len(cache) == 2 and cache.get(b"a", 1) is None and cache.get(b"c", 1) is not None
    assert repr(cache) == "<ClaimsCache 2/2 ttl=60s>"


def test_cache_disabled_verifies_every_time() -> None:
    h = Harness(config({"cache": {"enabled": False}}))
    token = hs256()
    assert h.request(token).reason is None and h.request(token).reason is None
    assert len(h.filter.cache) == 0


# ----------------------------------------------------------------------------- sessions in memory
def session_harness(ttl: float = 300) -> tuple[Harness, MemorySessionStore]:
    store = MemorySessionStore()
    cfg = config({"token_format": "session", "jwt_secret": None, "cache": {"ttl_secs": ttl}})
    return Harness(cfg, store=store), store


def test_new_session_tokens_can_be_pasted_on_a_command_line() -> None:
    # One token_urlsafe in 64 starts with '-', which `apigate session revoke TOKEN` would
    # take for an option; 2,000 draws would all but surely show one.
    tokens = [new_token() for _ in range(2000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == 2000 and {len(t) for t in tokens} == {43}


def test_memory_sessions_are_checked_synchronously() -> None:
    h, store = session_harness()
    asyncio.run(store.create("s3ss10n-t0ken", session_claims("carol", 60, {"scope": "admin"}), 60))
    result = h.request("s3ss10n-t0ken", path="/api/admin", x_user_id="mallory")
    assert result.reason is None and result.upstream_headers[b"x-user-id"] == b"carol"
    assert h.request("unknown-token").reason == reasons.UNKNOWN_SESSION
    assert h.request("has spaces").reason == reasons.MALFORMED


def test_a_revoked_session_ends_within_the_cache_ttl() -> None:
    h, store = session_harness(ttl=5)
    asyncio.run(store.create("tok", session_claims("carol", 60), 60))
    assert h.request("tok").reason is None
    assert asyncio.run(store.revoke("tok")) is True
    assert h.request("tok").reason is None  # cached: still admitted
    h.clock += 6
    assert h.request("tok").reason == reasons.UNKNOWN_SESSION


def test_an_expired_memory_session_is_unknown() -> None:
    h, store = session_harness()
    asyncio.run(store.create("old", session_claims("carol", 60, now=time.time() - 120), 60))
    assert h.request("old").reason == reasons.UNKNOWN_SESSION
    assert len(store) == 0


def test_redis_unreachable_is_503() -> None:
    async def scenario() -> None:
        store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
        h = Harness(config({"token_format": "session", "jwt_secret": None}), store=store)
        results = await asyncio.gather(*(h.request_async(f"token-{i % 2}") for i in range(4)))
        for result in results:
            assert result.reason == reasons.STORE_UNAVAILABLE
            assert result.response is not None and result.response.status == 503
            assert result.body()["error"] == "auth_unavailable"
            assert result.header(b"retry-after") == b"1"
        await h.filter.close()

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- wiring
def test_build_filters_adds_auth_only_with_an_auth_section() -> None:
    cfg = config()
    # (The access-log filter of logs/ is there too whenever a sink takes events.)
    others = ("access_log", "metrics", "health")  # logs/ and telemetry/ filters
    assert [type(f) for f in build_filters(cfg) if f.name not in others] == [AuthFilter]
    assert [f for f in build_filters(cfg.model_copy(update={"auth": None})) if f.name not in others] == []
    f = AuthFilter(cfg)
    assert f.priority == 1250 and f.applies_to(None) is False
