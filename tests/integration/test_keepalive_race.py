"""A pooled keep-alive connection closed by the upstream just as a request goes out.

Upstreams close idle keep-alive connections (idle timeout, nginx's `keepalive_requests`)
without warning; a request sent on such a connection dies before any response. The
gateway retries it once on a fresh connection when that cannot duplicate an effect
(idempotent method), and never silently repeats a POST.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from collections.abc import Callable

import pytest
from harness import Conn, Gateway, GatewayFactory, Nginx, RawConn, ScriptedUpstream, UpRequest, require_tool


def one_request_per_connection(drop: str) -> Callable[[UpRequest, Conn], object]:
    """Answer the first request on a connection (keep-alive, no `Connection: close`); read
    any later one completely and then drop the connection without answering: the upstream
    closed it while the request was on its way (RST) or just before (FIN)."""

    async def handler(req: UpRequest, conn: Conn) -> bool:
        if req.index == 0 and not req.path.startswith("/always-drop"):
            await conn.respond_json({"path": req.path, "method": req.method, "sha": req.body_sha256})
            return True
        if drop == "rst":
            conn.reset()
        else:
            conn.close()
        return False

    return handler


@pytest.fixture(params=["rst", "fin"])
def dropping(request: pytest.FixtureRequest, scripted: Callable[..., ScriptedUpstream]) -> ScriptedUpstream:
    return scripted(one_request_per_connection(request.param))


@pytest.fixture
def gw(gateway: GatewayFactory, dropping: ScriptedUpstream) -> Gateway:
    return gateway({"up": dropping.url})


def call(c: RawConn, method: str, path: str, body: bytes = b"") -> int:
    c.request(method, path, body=body)
    return c.read_response(method).status


def test_idempotent_request_on_a_dead_pooled_connection_is_retried(
    gw: Gateway, dropping: ScriptedUpstream
) -> None:
    with RawConn(gw.port) as c:
        assert call(c, "GET", "/first") == 200  # leaves one idle pooled connection
        assert call(c, "GET", "/second") == 200  # sent on it, dropped, retried on a new one
        assert [r.index for r in dropping.requests_to("/second")] == [1, 0]
        # PUT and DELETE are idempotent too; a small PUT body is replayed byte for byte.
        assert call(c, "PUT", "/put", b"replayed body") == 200
        put = dropping.requests_to("/put")
        assert [r.index for r in put] == [1, 0]
        assert put[0].body == put[1].body == b"replayed body"
        assert call(c, "DELETE", "/delete") == 200
        assert call(c, "HEAD", "/head") == 200
        assert call(c, "GET", "/after") == 200


def test_post_on_a_dead_pooled_connection_is_not_repeated(gw: Gateway, dropping: ScriptedUpstream) -> None:
    with RawConn(gw.port) as c:
        assert call(c, "GET", "/warm") == 200
        c.request("POST", "/orders", body=b'{"order": 1}')
        r = c.read_response()
    # The upstream may have acted on it: the client is told, the request is not resent.
    assert r.status == 502
    assert r.json()["error"] == "upstream_unavailable"
    assert len(dropping.requests_to("/orders")) == 1

    # Same for a POST without a body (the gateway's task-free fast path).
    with RawConn(gw.port) as c:
        assert call(c, "GET", "/warm") == 200
        assert call(c, "POST", "/no-body") == 502
    assert len(dropping.requests_to("/no-body")) == 1


def test_retry_happens_once(gw: Gateway, dropping: ScriptedUpstream) -> None:
    with RawConn(gw.port) as c:
        assert call(c, "GET", "/warm") == 200
        c.request("GET", "/always-drop")
        r = c.read_response()
    assert r.status == 502
    assert len(dropping.requests_to("/always-drop")) == 2  # the request and one retry


def test_large_idempotent_body_is_not_replayed(gw: Gateway, dropping: ScriptedUpstream) -> None:
    # Bodies beyond the replay buffer are streamed, not kept, so they cannot be resent.
    body = b"z" * (1024 * 1024)
    with RawConn(gw.port) as c:
        assert call(c, "GET", "/warm") == 200
        c.request("PUT", "/big", body=body)
        r = c.read_response()
    assert r.status == 502
    assert len(dropping.requests_to("/big")) == 1


@pytest.mark.parametrize("per_connection", [1, 3])
def test_upstream_closing_after_n_responses_without_saying_so(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream], per_connection: int
) -> None:
    """The real race: a FIN right after the n-th keep-alive response, without
    `Connection: close`; the next request may or may not see it before reusing the
    connection. GETs must never fail."""

    async def close_after_n(req: UpRequest, conn: Conn) -> bool:
        await conn.respond(200, b"ok")
        if req.index + 1 >= per_connection:
            conn.close()
            return False
        return True

    up = scripted(close_after_n)
    gw = gateway({"up": up.url})
    with RawConn(gw.port) as c:
        statuses = [call(c, "GET", f"/n/{i}") for i in range(200)]
    assert statuses == [200] * 200
    assert len({r.path for r in up.requests}) == 200
    assert up.connections >= 200 // per_connection


# ----------------------------------------------------------------------------- nginx, 200k requests
TOTAL_REQUESTS = 200_000
WRK_ROUND_SECS = 2
NGINX_KEEPALIVE_TIMEOUT_S = 0.1


def run_wrk(wrk: str, url: str) -> tuple[int, str]:
    out = subprocess.run(
        [wrk, "-t1", "-c32", f"-d{WRK_ROUND_SECS}s", "--timeout", "5s", url],
        capture_output=True,
        text=True,
        timeout=WRK_ROUND_SECS + 30,
    )
    assert out.returncode == 0, out.stderr
    m = re.search(r"(\d+) requests in", out.stdout)
    assert m, out.stdout
    return int(m.group(1)), out.stdout


@pytest.mark.slow
def test_200k_requests_behind_nginx_keepalive_requests_100_without_errors(
    gateway: GatewayFactory, nginx: Callable[..., Nginx]
) -> None:
    """nginx closes each upstream connection after 100 requests, and idle ones after
    100 ms. Short wrk rounds separated by pauses of about that idle timeout make nginx
    close pooled connections just as the next round reuses them (with the retry
    disabled, this test sees a few 502s per run; with it, none)."""
    wrk = require_tool("wrk", "/usr/bin/wrk")
    ng = nginx(keepalive_requests=100, keepalive_timeout=f"{int(NGINX_KEEPALIVE_TIMEOUT_S * 1000)}ms")
    gw = gateway({"nginx": {"base_url": ng.url, "pool_max_idle_per_host": 64}})
    url = f"{gw.url}/race"
    total = 0
    rounds = 0
    started = time.monotonic()
    rng = random.Random(2)
    while total < TOTAL_REQUESTS:
        assert time.monotonic() - started < 240, f"only {total} requests in 240 s"
        count, report = run_wrk(wrk, url)
        rounds += 1
        # wrk prints these lines only when something went wrong.
        assert "Non-2xx or 3xx responses" not in report, report
        assert "Socket errors" not in report, report
        total += count
        time.sleep(rng.uniform(0.8, 1.2) * NGINX_KEEPALIVE_TIMEOUT_S)
    assert total >= TOTAL_REQUESTS
    assert gw.alive()
    assert "Traceback" not in gw.stderr()
    print(f"{total} requests in {rounds} rounds, {time.monotonic() - started:.1f} s")
