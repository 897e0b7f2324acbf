"""`apigate token` and `apigate session create|revoke`: credentials for testing and operations.

`token` mints an HS* JWT with the configured secret, issuer and audience (what
`make run` prints a curl line with). `session create` stores a new session in Redis and
prints its token; `session revoke` deletes one. Both read the same configuration file as
the gateway, so they agree with it on secret, issuer, audience and Redis URL. Only the
token is printed on stdout, so `TOKEN=$(apigate token ...)` works; problems go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

import orjson

from apigate.config.schema import AuthConfig, Config

EXIT_USAGE = 2
AddConfig = Callable[[argparse.ArgumentParser], None]


def add_commands(sub: Any, add_config: AddConfig) -> None:
    """Register the subcommands on cli.py's subparsers; each sets `run(cfg, args) -> int`."""
    p = sub.add_parser(
        "token",
        help="mint a JWT for testing (HS* algorithms)",
        description="Print a JWT signed with the configuration's jwt_secret, issuer and audience.",
    )
    add_config(p)
    _identity_args(p)
    p.set_defaults(run=cmd_token)
    p = sub.add_parser(
        "session",
        help="create or revoke a session token (Redis)",
        description="Manage opaque session tokens in the session store (Redis).",
    )
    actions = p.add_subparsers(dest="session_action", metavar="ACTION", required=True)
    c = actions.add_parser("create", help="create a session and print its token")
    add_config(c)
    _identity_args(c)
    c.set_defaults(run=cmd_session_create)
    r = actions.add_parser("revoke", help="delete a session (cached copies end within cache.ttl_secs)")
    add_config(r)
    r.add_argument("token", help="the session token")
    r.set_defaults(run=cmd_session_revoke)


def _identity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sub", required=True, help="the subject (becomes X-User-ID upstream)")
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    p.add_argument(
        "--claims",
        nargs="+",
        action="extend",
        default=[],
        metavar="K=V",
        help='extra claims; V is read as JSON when it parses (5, true, ["a"]), else as text',
    )


def parse_claims(items: list[str]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--claims wants K=V, got {item!r}")
        try:
            claims[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            claims[key] = value
    return claims


def _auth(cfg: Config, want: str) -> AuthConfig | None:
    if cfg.auth is None:
        _err("the configuration has no auth: section")
        return None
    if cfg.auth.token_format != want:
        _err(f"auth.token_format is {cfg.auth.token_format}; this command makes {want} tokens")
        return None
    return cfg.auth


def _identity(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.ttl <= 0:
        _err("--ttl must be a positive number of seconds")
        return None
    try:
        return parse_claims(args.claims)
    except ValueError as e:
        _err(str(e))
        return None


def cmd_token(cfg: Config, args: argparse.Namespace) -> int:
    from apigate.auth.jwt import mint
    from apigate.config.jwt_keys import hmac_secret_is_short, is_hmac

    auth = _auth(cfg, "jwt")
    extra = _identity(args)
    if auth is None or extra is None:
        return EXIT_USAGE
    if not is_hmac(auth.jwt_algorithm):
        _err(
            f"minting needs an HS* jwt_algorithm (the gateway holds no private key for {auth.jwt_algorithm})"
        )
        return EXIT_USAGE
    if hmac_secret_is_short(auth.jwt_secret or "", auth.jwt_algorithm):
        _err("warning: jwt_secret is shorter than RFC 7518 §3.2 requires for " + auth.jwt_algorithm)
    print(mint(auth, args.sub, args.ttl, extra))
    return 0


def cmd_session_create(cfg: Config, args: argparse.Namespace) -> int:
    from apigate.auth.sessions import new_token, session_claims

    extra = _identity(args)
    if _auth(cfg, "session") is None or extra is None:
        return EXIT_USAGE
    token = new_token()
    claims = session_claims(args.sub, args.ttl, extra)
    code = _with_store(cfg, lambda store: store.create(token, claims, args.ttl))
    if code == 0:
        print(token)
    return code


def cmd_session_revoke(cfg: Config, args: argparse.Namespace) -> int:
    if _auth(cfg, "session") is None:
        return EXIT_USAGE
    found: list[bool] = []

    async def revoke(store: Any) -> None:
        found.append(await store.revoke(args.token))

    code = _with_store(cfg, revoke)
    if code == 0:
        print("revoked" if found[0] else "no such session")
        return 0 if found[0] else 1
    return code


def _with_store(cfg: Config, action: Callable[[Any], Any]) -> int:
    from apigate.auth.sessions import RedisSessionStore
    from apigate.redis.client import StoreUnavailable
    from apigate.redis.endpoint import session_target

    target = session_target(cfg)
    if target is None:
        _err(
            "no Redis for sessions: set auth.session_store.redis_url (or rate_limiting.redis_url); "
            "the in-memory store lives inside one gateway process and cannot be reached from here"
        )
        return EXIT_USAGE
    assert cfg.auth is not None
    timeout = max(cfg.auth.session_store.timeout_ms / 1000, 2.0)

    async def run() -> int:
        store = RedisSessionStore(target, timeout, events=None)
        try:
            await action(store)
        except StoreUnavailable as e:
            _err(f"session store {target} unavailable ({store.client.last_error or e.reason})")
            return 1
        except Exception as e:  # an error reply
            _err(f"session store {target}: {type(e).__name__}: {e}")
            return 1
        finally:
            await store.close()
        return 0

    return asyncio.run(run())


def _err(message: str) -> None:
    print(f"apigate: {message}", file=sys.stderr)
