"""The auth filter (priority 1250, Kong's key-auth slot): who is calling, and may they.

On every matched route it first removes the client's own X-User-ID and configured claim
headers, so an upstream can trust them whatever the route says. On `auth_required`
routes it then takes the token from `Authorization: Bearer` (RFC 6750 §2.1), else from
the `cookie_name` cookie, and looks it up in the claims cache. A hit is decided without
waiting; so is a miss that only needs CPU (a JWT with a configured key, the in-memory
session store). Only a JWKS refetch or a Redis lookup makes the request wait.

Failures answer 401 with `WWW-Authenticate: Bearer` (plus `error="invalid_token"` and
a fixed description when a token was given, RFC 6750 §3), 403 for a missing scope
(`error="insufficient_scope"`, RFC 6750 §3.1), 503 when the session store or the JWKS
cannot be reached. Each failure is counted by reason in `failures` (the Observability
work exports it as auth_failures_total{reason}) and logged as an `auth_failed` event,
never with the token.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterator

from apigate.auth import reasons
from apigate.auth.cache import ClaimsCache, Verified, verified
from apigate.auth.jwks import JwksKeySet
from apigate.auth.jwt import MAX_TOKEN_BYTES, JwtVerifier, Key, unverified_kid
from apigate.auth.reasons import AuthFailure
from apigate.auth.sessions import Claims, SessionStore, open_session_store
from apigate.config.files import MAX_PEM_BYTES, read_bounded
from apigate.config.jwt_keys import hmac_secret_is_short, is_hmac, load_public_key
from apigate.config.schema import AuthConfig, Config, RouteConfig
from apigate.gateway.filters import Filter, RequestContext, RequestOutcome, Response, Sample
from apigate.gateway.router import Route
from apigate.http.errors import error_body, error_headers
from apigate.http.headers import X_USER_ID
from apigate.logs import events
from apigate.telemetry.names import AUTH_CACHE_LOOKUPS_TOTAL, AUTH_FAILURES_TOTAL

AUTHORIZATION = b"authorization"
COOKIE = b"cookie"
WWW_AUTHENTICATE = b"www-authenticate"
# RFC 6750 §2.1 b64token: what a Bearer token may contain (JWTs and session tokens fit).
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")

Outcome = Response | None


def _challenge(reason: str) -> bytes:
    if reason == reasons.MISSING:
        return b"Bearer"
    return b'Bearer error="invalid_token", error_description="%s"' % reasons.DESCRIPTIONS[reason].encode()


_CHALLENGES = {reason: _challenge(reason) for reason in reasons.REASONS}


class AuthFilter(Filter):
    name = "auth"
    priority = 1250

    def __init__(
        self, cfg: Config, store: SessionStore | None = None, jwks: JwksKeySet | None = None
    ) -> None:
        auth = cfg.auth
        if auth is None:
            raise ValueError("AuthFilter needs an auth: section")
        self.claim_headers = {name.lower().encode(): claim for name, claim in auth.claim_headers.items()}
        self.strip = frozenset({X_USER_ID, *self.claim_headers})
        self.watch = self.strip | {AUTHORIZATION, COOKIE}
        self.cookie_prefix = auth.cookie_name.encode() + b"="
        self.cache_hits = 0  # auth_cache_lookups_total, through samples()
        self.cache_misses = 0
        self.cache = ClaimsCache(auth.cache.max_capacity, auth.cache.ttl_secs, auth.cache.enabled)
        self.ttl = auth.cache.ttl_secs
        self.failures: dict[str, int] = dict.fromkeys(reasons.REASONS, 0)
        self.store: SessionStore | None = None
        self.jwks: JwksKeySet | None = None
        self.key: Key | None = None
        self.verifier = JwtVerifier(auth)
        if auth.token_format == "session":
            self.store = store if store is not None else open_session_store(cfg)
        else:
            self._configure_keys(auth, jwks)

    def _configure_keys(self, auth: AuthConfig, jwks: JwksKeySet | None) -> None:
        """The HMAC secret, the public key file, or the JWKS (fetching from now on)."""
        if is_hmac(auth.jwt_algorithm):
            secret = auth.jwt_secret or ""
            self.key = secret.encode()
            if hmac_secret_is_short(secret, auth.jwt_algorithm):
                events.emit(
                    "WARN",
                    "auth",
                    "weak_jwt_secret",
                    f"jwt_secret is shorter than the {auth.jwt_algorithm} hash;"
                    " RFC 7518 §3.2 requires at least that many bytes",
                    length=len(self.key),
                )
        elif auth.jwt_public_key_path:
            self.key = load_public_key(
                read_bounded(auth.jwt_public_key_path, MAX_PEM_BYTES), auth.jwt_algorithm
            )
        else:
            assert auth.jwks_url is not None  # config checks require a key path or a JWKS URL
            if jwks is None:
                jwks = JwksKeySet(auth.jwks_url, auth.jwt_algorithm, auth.jwks_refresh_secs)
            self.jwks = jwks

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Fetch the JWKS and keep it fresh (a task of the worker's loop); connect the
        session store."""
        if self.jwks is not None:
            self.jwks.start()
        if self.store is not None:
            self.store.start()

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()
        if self.store is not None:
            await self.store.close()

    def samples(self) -> Iterator[Sample]:
        for reason, n in self.failures.items():
            yield AUTH_FAILURES_TOTAL, (reason,), float(n)
        yield AUTH_CACHE_LOOKUPS_TOTAL, ("hit",), float(self.cache_hits)
        yield AUTH_CACHE_LOOKUPS_TOTAL, ("miss",), float(self.cache_misses)

    # ------------------------------------------------------------------ filter contract
    def applies_to(self, route: Route | None) -> bool:
        return route is not None  # unmatched requests are answered locally, never proxied

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        cycle = ctx.cycle
        headers = cycle.headers
        watch = self.watch
        authz: bytes | None = None
        cookies: bytes | None = None
        forged = False
        for name, value in headers:
            if name in watch:
                if name == AUTHORIZATION:
                    if authz is None:
                        authz = value
                elif name == COOKIE:
                    cookies = value if cookies is None else cookies + b"; " + value
                else:
                    forged = True
        if forged:
            strip = self.strip
            cycle.headers = [h for h in headers if h[0] not in strip]
        config = ctx.route.config  # type: ignore[union-attr]  # applies_to: always a route
        if not config.auth_required:
            return None
        if authz is not None and authz.startswith(b"Bearer "):
            token = authz[7:]  # the common spelling, without the general parse
        else:
            found = self._token(authz, cookies)
            if not found:
                return self._fail(ctx, reasons.MISSING if found is None else reasons.MALFORMED)
            token = found
        entry = self.cache.entries.get(token)  # ClaimsCache.get, inlined: this is the hot path
        if entry is not None and entry.deadline > ctx.start:
            self.cache_hits += 1
            return self._admit(ctx, entry, config)
        return self._verify(ctx, token)

    # ------------------------------------------------------------------ token and checks
    def _token(self, authz: bytes | None, cookies: bytes | None) -> bytes | None:
        """The token (b"" when one was given but empty), or None when there is none."""
        if authz is not None:
            scheme, _, rest = authz.partition(b" ")
            if scheme.lower() == b"bearer":  # auth schemes are case-insensitive (RFC 9110 §11.1)
                return rest.strip()
        if cookies is not None:
            prefix = self.cookie_prefix
            for part in cookies.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    return part[len(prefix) :].strip(b'"')
        return None

    def _verify(self, ctx: RequestContext, token: bytes) -> RequestOutcome:
        """A cache miss: check the token, synchronously unless the store or JWKS must answer."""
        token = token.strip()  # "Bearer  t": RFC 6750 allows more than one space
        if len(token) > MAX_TOKEN_BYTES or _B64TOKEN.fullmatch(token) is None:
            return self._fail(ctx, reasons.MALFORMED)  # refused before any parsing
        entry = self.cache.get(token, ctx.start)  # drops a stale entry
        if entry is not None:
            self.cache_hits += 1
            return self._admit(ctx, entry, ctx.route.config)  # type: ignore[union-attr]
        self.cache_misses += 1
        text = token.decode("ascii")
        if self.store is not None:
            found = self.store.lookup(text)
            if found is None or isinstance(found, dict):
                return self._admit_session(ctx, token, found)
            return self._await_session(ctx, token, found)
        key = self.key
        if self.jwks is not None:
            try:
                kid = unverified_kid(text)
            except AuthFailure as f:
                return self._fail(ctx, f.reason)
            key = self.jwks.key_for(kid)
            if key is None:
                return self._await_jwks(ctx, token, kid)
        assert key is not None
        return self._check_jwt(ctx, token, key)

    def _check_jwt(self, ctx: RequestContext, token: bytes, key: Key) -> Outcome:
        try:
            claims = self.verifier.verify(token.decode("ascii"), key)
            entry = verified(claims, self.claim_headers, ctx.start, self.ttl)
        except AuthFailure as f:
            return self._fail(ctx, f.reason)
        self.cache.put(token, entry, ctx.start)
        return self._admit(ctx, entry, ctx.route.config)  # type: ignore[union-attr]

    async def _await_jwks(self, ctx: RequestContext, token: bytes, kid: str | None) -> Outcome:
        assert self.jwks is not None
        key = await self.jwks.key_after_refetch(kid)
        if key is None:
            # No key for it: a bad token, unless no key set was ever fetched (our problem).
            return self._fail(ctx, reasons.BAD_SIGNATURE if self.jwks.loaded else reasons.STORE_UNAVAILABLE)
        return self._check_jwt(ctx, token, key)

    def _admit_session(self, ctx: RequestContext, token: bytes, claims: Claims | None) -> Outcome:
        if claims is None:
            return self._fail(ctx, reasons.UNKNOWN_SESSION)
        try:
            entry = verified(claims, self.claim_headers, ctx.start, self.ttl)
        except AuthFailure as f:
            return self._fail(ctx, f.reason)
        self.cache.put(token, entry, ctx.start)
        return self._admit(ctx, entry, ctx.route.config)  # type: ignore[union-attr]

    async def _await_session(
        self, ctx: RequestContext, token: bytes, pending: Awaitable[Claims | None]
    ) -> Outcome:
        try:
            claims = await pending
        except AuthFailure as f:
            return self._fail(ctx, f.reason)
        return self._admit_session(ctx, token, claims)

    def _admit(self, ctx: RequestContext, entry: Verified, config: RouteConfig) -> Outcome:
        ctx.user = entry.user
        ctx.claims = entry.claims
        required = config.required_scopes
        if required and not entry.scopes.issuperset(required):
            return self._forbidden(ctx, required)
        if entry.headers:
            ctx.cycle.headers.extend(entry.headers)
        return None

    # ------------------------------------------------------------------ answers
    def _log(self, ctx: RequestContext, reason: str) -> None:
        self.failures[reason] += 1
        route = ctx.route
        events.emit(
            "WARN",
            "auth",
            "auth_failed",
            "Authentication failed",
            reason=reason,
            correlation_id=ctx.request_id,
            route=route.id if route is not None else None,
            method=ctx.method,
            path=ctx.path,
            client_ip=ctx.client_ip,
            user_id=ctx.user,
        )

    def _fail(self, ctx: RequestContext, reason: str) -> Response:
        self._log(ctx, reason)
        if reason == reasons.STORE_UNAVAILABLE:
            return Response.error_reply("auth_unavailable", ctx, [(b"retry-after", b"1")])
        status, body = error_body("unauthenticated", ctx.request_id, reasons.DESCRIPTIONS[reason])
        extra = [(WWW_AUTHENTICATE, _CHALLENGES[reason])]
        return Response(status, error_headers(extra), body, "unauthenticated")

    def _forbidden(self, ctx: RequestContext, required: list[str]) -> Response:
        self._log(ctx, reasons.INSUFFICIENT_SCOPE)
        challenge = b'Bearer error="insufficient_scope", scope="%s"' % " ".join(required).encode()
        status, body = error_body(
            "forbidden", ctx.request_id, reasons.DESCRIPTIONS[reasons.INSUFFICIENT_SCOPE]
        )
        return Response(status, error_headers([(WWW_AUTHENTICATE, challenge)]), body, "forbidden")
