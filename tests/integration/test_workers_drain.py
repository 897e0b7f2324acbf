"""Shutdown and worker processes: SIGTERM/SIGINT drain in-flight requests and exit 0;
`server.workers: N` runs N processes on one port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest
from harness import (
    Conn,
    Gateway,
    GatewayFactory,
    IncompleteResponse,
    RawConn,
    ScriptedUpstream,
    UpRequest,
    child_pids,
    listening_socket_owners,
    port_accepts,
    wait_until,
)

SLACK = 1.0


async def sleepy(req: UpRequest, conn: Conn) -> bool:
    if req.path.startswith("/sleep/"):
        await asyncio.sleep(float(req.path.rsplit("/", 1)[1]))
    await conn.respond(200, f"done {req.path}".encode())
    return True


@pytest.fixture
def upstream(scripted: Callable[..., ScriptedUpstream]) -> ScriptedUpstream:
    return scripted(sleepy)


def start(gateway: GatewayFactory, upstream: ScriptedUpstream, **server: object) -> Gateway:
    return gateway({"up": {"base_url": upstream.url, "timeout_secs": 30}}, server=server)


# ----------------------------------------------------------------------------- drain
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_requests_and_exits_0(
    gateway: GatewayFactory, upstream: ScriptedUpstream, sig: int
) -> None:
    gw = start(gateway, upstream, drain_timeout_secs=5)
    assert gw.proc is not None
    with RawConn(gw.port) as busy, RawConn(gw.port) as idle:
        idle.request("GET", "/warm")  # a keep-alive connection, idle when the signal comes
        assert idle.read_response().status == 200
        busy.request("GET", "/sleep/1")
        assert wait_until(lambda: bool(upstream.requests_to("/sleep/1")), 5)

        t0 = time.monotonic()
        gw.proc.send_signal(sig)
        # Stops accepting...
        assert wait_until(lambda: not port_accepts(gw.port), 2), "still accepting after the signal"
        # ...closes idle keep-alive connections...
        assert idle.closed_by_peer(2)
        # ...finishes what is in flight, telling the client this connection ends...
        r = busy.read_response()
        assert r.status == 200
        assert r.body == b"done /sleep/1"
        assert r.header("connection") == "close"
        assert busy.closed_by_peer(2)
    # ...and exits 0 as soon as nothing is left, well within the drain timeout.
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - t0 < 1 + SLACK
    assert "Traceback" not in gw.stderr()


def test_drain_answers_requests_already_pipelined(
    gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = start(gateway, upstream, drain_timeout_secs=5)
    assert gw.proc is not None
    with RawConn(gw.port) as c:
        c.send(
            b"GET /sleep/1 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        assert wait_until(lambda: bool(upstream.requests_to("/sleep/1")), 5)
        gw.proc.send_signal(signal.SIGTERM)
        # Every request received before the signal is answered, in order; the last one
        # says the connection ends.
        answers = [c.read_response() for _ in range(3)]
        assert [r.body for r in answers] == [b"done /sleep/1", b"done /second", b"done /third"]
        assert [r.header("connection") for r in answers] == [None, None, "close"]
        assert c.closed_by_peer(2)
    assert gw.proc.wait(10) == 0


def test_drain_timeout_bounds_shutdown(gateway: GatewayFactory, upstream: ScriptedUpstream) -> None:
    gw = start(gateway, upstream, drain_timeout_secs=1)
    assert gw.proc is not None
    with RawConn(gw.port) as busy:
        busy.request("GET", "/sleep/20")
        assert wait_until(lambda: bool(upstream.requests_to("/sleep/20")), 5)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
        assert time.monotonic() - t0 < 1 + SLACK
        # The request that outlived the drain was cut, not answered as if complete.
        with pytest.raises(IncompleteResponse):
            busy.read_response()


def test_idle_gateway_exits_at_once(gateway: GatewayFactory, upstream: ScriptedUpstream) -> None:
    gw = start(gateway, upstream, drain_timeout_secs=10)
    assert gw.proc is not None
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - t0 < 2


# ----------------------------------------------------------------------------- workers
def test_two_workers_share_the_port_and_stop_on_sigterm(
    gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = start(gateway, upstream, workers=2)
    assert gw.proc is not None
    assert wait_until(lambda: len(listening_socket_owners(gw.port)) == 2, 10)
    workers = child_pids(gw.pid)
    assert len(workers) == 2
    # One listening socket per worker (SO_REUSEPORT), none in the parent.
    assert listening_socket_owners(gw.port) == workers
    for i in range(200):
        with RawConn(gw.port) as c:
            c.request("GET", f"/n/{i}", {"Connection": "close"})
            assert c.read_response().status == 200
    assert gw.alive()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    for pid in workers:
        assert wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), 5), f"worker {pid} left behind"


@pytest.mark.parametrize("to_group", [False, True], ids=["SIGTERM-parent", "SIGINT-group"])
def test_workers_drain_in_flight_requests(
    gateway: GatewayFactory, upstream: ScriptedUpstream, to_group: bool
) -> None:
    gw = start(gateway, upstream, workers=2, drain_timeout_secs=5)
    assert gw.proc is not None
    assert wait_until(lambda: len(listening_socket_owners(gw.port)) == 2, 10)
    with RawConn(gw.port) as busy:
        busy.request("GET", "/sleep/1")
        assert wait_until(lambda: bool(upstream.requests_to("/sleep/1")), 5)
        if to_group:
            os.killpg(gw.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches every process
        else:
            gw.proc.send_signal(signal.SIGTERM)
        r = busy.read_response()
        assert r.status == 200
    assert gw.proc.wait(10) == 0


def test_a_crashed_worker_is_replaced(gateway: GatewayFactory, upstream: ScriptedUpstream) -> None:
    gw = start(gateway, upstream, workers=2)
    assert wait_until(lambda: len(listening_socket_owners(gw.port)) == 2, 10)
    workers = child_pids(gw.pid)
    time.sleep(1.1)  # past the start-up grace period in which a dying worker is not restarted
    os.kill(workers[0], signal.SIGKILL)

    def replaced() -> bool:
        now = child_pids(gw.pid)
        return len(now) == 2 and workers[0] not in now and len(listening_socket_owners(gw.port)) == 2

    assert wait_until(replaced, 10)
    for i in range(20):
        with RawConn(gw.port) as c:
            c.request("GET", f"/after-crash/{i}", {"Connection": "close"})
            assert c.read_response().status == 200
    assert gw.stop() == 0
