"""The rate-limit filter in memory (synchronous), its keys, headers, fail modes and config."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cycles import request_context
from pydantic import ValidationError

from apigate.config.checks import config_warnings
from apigate.config.schema import Config
from apigate.gateway.filters import RequestContext, Response
from apigate.gateway.router import Router
from apigate.ratelimit.filter import RateLimitFilter
from apigate.ratelimit.keys import ClientIp
from apigate.ratelimit.redis import RedisStore


def config(
    rate_limiting: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    **server: Any,
) -> Config:
    return Config.model_validate(
        {
            "server": server,
            "rate_limiting": rate_limiting,
            "upstreams": [{"id": "u", "base_url": "http://127.0.0.1:1"}],
            "routes": routes
            or [
                {"id": "a", "path": "/a", "upstream_id": "u", "rate_limit": {"limit": 2, "window_secs": 60}},
                {"id": "b", "path": "/b", "upstream_id": "u"},
                {"id": "c", "path": "/c", "upstream_id": "u"},
                {"id": "off", "path": "/off", "upstream_id": "u", "rate_limit": False},
            ],
        }
    )


class Harness:
    def __init__(self, cfg: Config, **kwargs: Any) -> None:
        self.filter = RateLimitFilter(cfg, **kwargs)
        self.router = Router(cfg.routes)

    def context(
        self, path: str, client: str = "10.0.0.1", user: str | None = None, **headers: str
    ) -> RequestContext:
        raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
        ctx = request_context(path, raw, client=client)
        ctx.request_id = "req-1"
        match = self.router.match("GET", path)
        assert isinstance(match, tuple)
        ctx.route = match[0]
        ctx.user = user
        return ctx

    def request(self, path: str, **kw: Any) -> tuple[RequestContext, Response | None]:
        ctx = self.context(path, **kw)
        outcome = self.filter.on_request(ctx)
        assert outcome is None or isinstance(outcome, Response), f"an in-memory check waited: {outcome!r}"
        return ctx, outcome


def headers(ctx: RequestContext) -> dict[bytes, bytes]:
    return dict(ctx.response_headers)


def test_limit_then_429_with_headers_and_retry_after() -> None:
    h = Harness(config())
    ctx, out = h.request("/a")
    assert out is None
    assert headers(ctx) == {
        b"ratelimit-limit": b"2",
        b"ratelimit-remaining": b"1",
        b"ratelimit-reset": b"30",  # a token bucket: one of two tokens back in 30 s
        b"x-ratelimit-limit": b"2",
        b"x-ratelimit-remaining": b"1",
        b"x-ratelimit-reset": b"30",
    }
    assert h.request("/a")[1] is None
    ctx, out = h.request("/a")
    assert out is not None and out.status == 429 and out.error == "rate_limited"
    retry = dict(out.headers)[b"retry-after"]
    assert 1 <= int(retry) <= 60
    assert json.loads(out.body)["error"] == "rate_limited"
    assert headers(ctx)[b"ratelimit-remaining"] == b"0"
    assert h.filter.limited[("a", "ip")] == 1


def test_no_default_and_false_mean_unlimited() -> None:
    h = Harness(config())
    assert h.filter.applies_to(h.context("/a").route)
    assert not h.filter.applies_to(h.context("/b").route)
    assert not h.filter.applies_to(h.context("/off").route)
    assert not h.filter.applies_to(None)


def test_default_limit_is_one_scope_shared_by_the_routes_without_their_own() -> None:
    h = Harness(config({"default_limit": {"limit": 3, "window_secs": 60}}))
    assert not h.filter.applies_to(h.context("/off").route)
    results = [h.request(p)[1] for p in ("/b", "/c", "/b", "/c")]
    assert [r is None for r in results] == [True, True, True, False]
    assert h.request("/a")[1] is None  # its own limit, its own counter


def test_two_routes_with_equal_limits_do_not_share_a_counter() -> None:
    limit = {"limit": 1, "window_secs": 60}
    routes = [
        {"id": "x", "path": "/x", "upstream_id": "u", "rate_limit": limit},
        {"id": "y", "path": "/y", "upstream_id": "u", "rate_limit": limit},
    ]
    h = Harness(config(routes=routes))
    assert h.request("/x")[1] is None
    assert h.request("/y")[1] is None
    assert h.request("/x")[1] is not None


def _one_route(key_type: str, limit: int = 1) -> Config:
    rl = {"limit": limit, "window_secs": 60, "key_type": key_type}
    return config(routes=[{"id": "r", "path": "/r", "upstream_id": "u", "rate_limit": rl}])


def test_key_types() -> None:
    h = Harness(_one_route("ip"))
    assert h.request("/r", client="1.1.1.1")[1] is None
    assert h.request("/r", client="2.2.2.2")[1] is None
    assert h.request("/r", client="1.1.1.1")[1] is not None

    h = Harness(_one_route("user"))
    assert h.request("/r", user="alice")[1] is None
    assert h.request("/r", user="bob")[1] is None
    assert h.request("/r", user="alice", client="9.9.9.9")[1] is not None
    assert h.request("/r")[1] is None  # anonymous: by ip
    assert h.request("/r", client="10.0.0.2")[1] is None

    h = Harness(_one_route("route"))
    assert h.request("/r", client="1.1.1.1")[1] is None
    assert h.request("/r", client="2.2.2.2")[1] is not None

    h = Harness(_one_route("api_key"))
    assert h.request("/r", x_api_key="k1")[1] is None
    assert h.request("/r", x_api_key="k2")[1] is None
    assert h.request("/r", x_api_key="k1", client="3.3.3.3")[1] is not None
    assert h.request("/r")[1] is None  # no key: by ip

    h = Harness(_one_route("header:X-Tenant"))
    assert h.request("/r", x_tenant="t1")[1] is None
    assert h.request("/r", x_tenant="t1", client="4.4.4.4")[1] is not None
    assert h.request("/r", x_tenant="t2")[1] is None


def test_api_keys_never_appear_in_counter_keys() -> None:
    h = Harness(_one_route("api_key"))
    key = h.filter.key(h.context("/r", x_api_key="secret-key-123"), h.filter.rules["r"])
    assert b"secret" not in key
    assert key.startswith(b"rl:r:r:tb:api_key:h=#")


def test_x_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    h = Harness(_one_route("ip"))
    assert h.request("/r", x_forwarded_for="1.2.3.4")[1] is None
    assert h.request("/r", x_forwarded_for="5.6.7.8")[1] is not None  # same peer: same key


def test_client_ip_rule() -> None:
    ip = ClientIp(["10.0.0.0/8", "192.168.1.1"])
    xff = b"x-forwarded-for"
    assert ip.resolve("203.0.113.9", [(xff, b"1.2.3.4")]) == "203.0.113.9"  # untrusted peer
    assert ip.resolve("10.0.0.1", []) == "10.0.0.1"
    assert ip.resolve("10.0.0.1", [(xff, b"1.2.3.4")]) == "1.2.3.4"
    # the client wrote the left part: right-most untrusted wins
    assert ip.resolve("10.0.0.1", [(xff, b"6.6.6.6, 1.2.3.4, 192.168.1.1")]) == "1.2.3.4"
    assert ip.resolve("10.0.0.1", [(xff, b"6.6.6.6"), (xff, b"1.2.3.4, 10.9.9.9")]) == "1.2.3.4"
    assert ip.resolve("10.0.0.1", [(xff, b"[2001:db8::1]:443, 1.2.3.4:5555")]) == "1.2.3.4"
    assert ip.resolve("10.0.0.1", [(xff, b"1.2.3.4, garbage")]) == "10.0.0.1"
    assert ip.resolve("10.0.0.1", [(xff, b"10.1.1.1, 10.2.2.2")]) == "10.1.1.1"  # all trusted
    assert ip.resolve("::ffff:10.0.0.1", [(xff, b"2001:db8::7")]) == "2001:db8::7"


def test_trusted_proxies_must_be_cidrs() -> None:
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        config(trusted_proxies=["10.0.0.0/33"])


def test_config_rejects_limits_outside_the_exact_range_and_two_topologies() -> None:
    with pytest.raises(ValidationError, match="too large"):
        _one_route("ip", limit=10**12)
    with pytest.raises(ValidationError, match="not both"):
        config({"redis_cluster_nodes": ["h:1"], "redis_sentinel": {"master_name": "m", "sentinels": ["h:2"]}})
    with pytest.raises(ValidationError, match="host:port"):
        config({"redis_cluster_nodes": ["nohost"]})


def test_check_warns_about_workers_without_redis() -> None:
    assert (
        config_warnings(config(workers=2))
        and "each worker counts alone" in config_warnings(config(workers=2))[0]
    )
    assert config_warnings(config(workers=1)) == []
    assert config_warnings(config({"redis_url": "redis://h:1"}, workers=4)) == []
    unlimited = [{"id": "b", "path": "/b", "upstream_id": "u"}]
    assert config_warnings(config(routes=unlimited, workers=4)) == []


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
def test_redis_down(mode: str) -> None:
    async def run() -> None:
        url = f"redis://127.0.0.1:{_closed_port()}"
        cfg = config({"redis_url": url, "failure_mode": mode, "timeout_ms": 50})
        h = Harness(cfg)
        store = h.filter.store
        assert isinstance(store, RedisStore)
        outcomes = []
        for _ in range(5):
            ctx = h.context("/a")
            outcome: Any = h.filter.on_request(ctx)
            if outcome is not None and not isinstance(outcome, Response):
                outcome = await outcome
            outcomes.append(outcome)
            await asyncio.sleep(0.15)  # the breaker opens after 0.5 s of failures
        if mode == "fail_closed":
            assert all(o is not None and o.status == 503 for o in outcomes)
            assert all(o.error == "rate_limit_unavailable" for o in outcomes)
        else:  # the local limiter, same limit of 2
            assert [o is None for o in outcomes] == [True, True, False, False, False]
            assert h.filter.degraded == 5
        assert not store.available  # breaker open after 0.5 s of failures
        assert store.backend_errors["connection"] >= 3
        late = h.filter.on_request(h.context("/a"))  # answered at once, without Redis
        assert late is None or isinstance(late, Response)
        assert store.backend_errors["circuit_open"] == 1
        await h.filter.close()

    asyncio.run(run())


def test_apigate_check_prints_the_workers_warning_and_exits_0(tmp_path: Any) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "server: {workers: 2}\n"
        "upstreams: [{id: u, base_url: 'http://127.0.0.1:1'}]\n"
        "routes: [{id: r, path: /r, upstream_id: u, rate_limit: {limit: 5, window_secs: 1}}]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "apigate", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: 1 route")
    assert "warning: server.workers is 2 and rate limits are kept in memory" in out.stderr


def test_a_future_from_the_last_filter_is_handed_through_unwrapped() -> None:
    from apigate.gateway.filters import Filter, FilterChain

    async def run() -> None:
        fut: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()

        class Waits(Filter):
            priority = 1

            def on_request(self, ctx: RequestContext) -> Any:
                return fut

        class Before(Filter):
            priority = 2

            def on_request(self, ctx: RequestContext) -> Any:
                return None

        class After(Filter):
            priority = 0

            def on_request(self, ctx: RequestContext) -> Any:
                return None

        ctx = Harness(config()).context("/a")
        assert FilterChain([Before(), Waits()]).start_request(ctx) is fut
        resume = FilterChain([Waits(), After()]).start_request(ctx)
        assert resume is not fut  # After still has to run: a resume step wraps it
        resume.close()  # type: ignore[union-attr]

    asyncio.run(run())
