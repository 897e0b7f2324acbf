"""UpstreamPool driven on a real loop whose connections are fake transports: connecting,
handing out, taking back, reusing and discarding keep-alive connections, and the counts
its repr shows. A reused connection that the upstream already closed costs a client a
retry or an error, so most of these are about what must never be handed out again.
"""

from __future__ import annotations

import asyncio

import pytest
from transports import net_loop, run_in_loop, settle

from apigate.http import clock
from apigate.http.client import (
    POOL_IDLE_TIMEOUT_S,
    ConnectFailed,
    ConnectTimeout,
    UpstreamPool,
)

BASE = "http://127.0.0.1:8081"


def make_pool(max_idle: int = 4, connect_timeout: float = 1.0) -> UpstreamPool:
    return UpstreamPool(BASE, max_idle=max_idle, connect_timeout=connect_timeout)


def counts(pool: UpstreamPool) -> str:
    return repr(pool).removeprefix(f"<UpstreamPool {pool.key} ").removesuffix(">")


@run_in_loop
async def test_repr_shows_the_pools_counts() -> None:
    pool = make_pool()
    assert repr(pool) == "<UpstreamPool http://127.0.0.1:8081 idle=0 active=0 connecting=0 total=0>"
    a = await pool.connect()
    b = await pool.connect()
    pool.release(a, True)
    assert repr(pool) == "<UpstreamPool http://127.0.0.1:8081 idle=1 active=1 connecting=0 total=2>"
    pool.release(b, True)
    assert counts(pool) == "idle=2 active=0 connecting=0 total=2"


@run_in_loop
async def test_connect_opens_a_connection_to_the_upstream_and_counts_it_while_pending() -> None:
    loop = net_loop()
    pool = make_pool()
    loop.hang = True
    pending = asyncio.ensure_future(pool.connect())
    await settle()
    assert counts(pool) == "idle=0 active=0 connecting=1 total=1"
    pending.cancel()  # the client left while connecting
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert counts(pool) == "idle=0 active=0 connecting=0 total=0"
    loop.hang = False
    conn = await pool.connect()
    assert loop.connects[-1] == ("127.0.0.1", 8081)
    assert counts(pool) == "idle=0 active=1 connecting=0 total=1"
    assert not loop.transports[-1].closed
    assert conn is not None


@run_in_loop
async def test_a_released_connection_is_reused_without_connecting_again() -> None:
    loop = net_loop()
    pool = make_pool()
    conn = await pool.connect()
    pool.release(conn, True)
    assert counts(pool) == "idle=1 active=0 connecting=0 total=1"
    assert pool.acquire_idle() is conn
    assert counts(pool) == "idle=0 active=1 connecting=0 total=1"
    assert len(loop.connects) == 1
    assert not loop.transports[0].closed
    # Handed out once: a second request does not get the same connection.
    assert pool.acquire_idle() is None


@run_in_loop
async def test_the_most_recently_used_idle_connection_is_reused_first() -> None:
    pool = make_pool()
    older = await pool.connect()
    newer = await pool.connect()
    pool.release(older, True)
    pool.release(newer, True)
    assert pool.acquire_idle() is newer  # least likely to have hit the upstream's idle timer
    assert pool.acquire_idle() is older


@run_in_loop
async def test_a_connection_released_as_not_reusable_is_closed() -> None:
    loop = net_loop()
    pool = make_pool()
    conn = await pool.connect()
    pool.release(conn, False)  # e.g. the response failed half-way
    assert loop.transports[0].closed
    assert counts(pool) == "idle=0 active=0 connecting=0 total=0"
    assert pool.acquire_idle() is None


@run_in_loop
async def test_idle_connections_beyond_max_idle_are_closed() -> None:
    loop = net_loop()
    pool = make_pool(max_idle=2)
    conns = [await pool.connect() for _ in range(3)]
    assert counts(pool) == "idle=0 active=3 connecting=0 total=3"  # max_idle does not limit active ones
    for conn in conns:
        pool.release(conn, True)
    assert counts(pool) == "idle=2 active=0 connecting=0 total=2"
    assert [t.closed for t in loop.transports] == [False, False, True]


@run_in_loop
async def test_an_idle_connection_past_the_idle_timeout_is_closed_not_reused() -> None:
    loop = net_loop()
    pool = make_pool()
    conn = await pool.connect()
    # Released with the request clock of a response that ended just over the timeout ago.
    pool.release(conn, True, clock.now() - POOL_IDLE_TIMEOUT_S - 1)
    assert not conn.is_usable
    assert pool.acquire_idle() is None
    assert loop.transports[0].closed
    assert counts(pool) == "idle=0 active=0 connecting=0 total=0"


@run_in_loop
async def test_an_idle_connection_within_the_idle_timeout_is_reused() -> None:
    pool = make_pool()
    conn = await pool.connect()
    pool.release(conn, True, clock.now() - POOL_IDLE_TIMEOUT_S + 5)
    assert conn.is_usable
    assert pool.acquire_idle() is conn


@run_in_loop
async def test_an_idle_connection_closed_by_the_upstream_is_not_reused() -> None:
    loop = net_loop()
    pool = make_pool()
    conn = await pool.connect()
    pool.release(conn, True)
    loop.transports[0].peer_closes()
    assert counts(pool) == "idle=0 active=0 connecting=0 total=0"
    assert pool.acquire_idle() is None


@run_in_loop
async def test_a_connection_the_upstream_closed_while_in_use_is_not_put_back() -> None:
    loop = net_loop()
    pool = make_pool()
    conn = await pool.connect()
    loop.transports[0].peer_closes(ConnectionResetError())
    pool.release(conn, True)  # the proxy's caller thought the exchange went well
    assert counts(pool) == "idle=0 active=0 connecting=0 total=0"
    assert pool.acquire_idle() is None


@run_in_loop
async def test_an_upstream_fin_not_yet_reported_as_lost_still_stops_reuse() -> None:
    # The FIN was read (the transport is closing) but connection_lost has not run yet:
    # a request picking a connection in between must not get this one.
    loop = net_loop()
    pool = make_pool()
    kept = await pool.connect()
    closing = await pool.connect()
    pool.release(kept, True)
    pool.release(closing, True)
    loop.transports[1].peer_half_closes()
    assert pool.acquire_idle() is kept
    assert pool.acquire_idle() is None
    await settle()
    assert counts(pool) == "idle=0 active=1 connecting=0 total=1"


@run_in_loop
async def test_bytes_from_an_idle_connection_make_it_unusable() -> None:
    # An upstream that answers nothing asked (a late response, or a 408 before closing).
    loop = net_loop()
    pool = make_pool()
    conn = await pool.connect()
    pool.release(conn, True)
    loop.transports[0].protocol.data_received(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
    assert loop.transports[0].closed
    assert pool.acquire_idle() is None
    assert counts(pool) == "idle=0 active=0 connecting=0 total=0"


@run_in_loop
async def test_a_refused_connection_raises_connect_failed_and_leaves_no_count() -> None:
    loop = net_loop()
    loop.refuse = True
    pool = make_pool()
    with pytest.raises(ConnectFailed, match=r"connect to http://127\.0\.0\.1:8081 failed"):
        await pool.connect()
    assert counts(pool) == "idle=0 active=0 connecting=0 total=0"


@run_in_loop
async def test_a_connection_that_does_not_open_in_time_raises_connect_timeout() -> None:
    loop = net_loop()
    loop.hang = True
    pool = make_pool(connect_timeout=0.05)
    with pytest.raises(ConnectTimeout):
        await pool.connect()
    assert counts(pool) == "idle=0 active=0 connecting=0 total=0"


@run_in_loop
async def test_close_closes_the_idle_connections() -> None:
    loop = net_loop()
    pool = make_pool()
    busy = await pool.connect()
    idle = await pool.connect()
    pool.release(idle, True)
    pool.close()
    assert [t.closed for t in loop.transports] == [False, True]  # a response in flight goes on
    assert pool.acquire_idle() is None
    assert counts(pool) == "idle=0 active=1 connecting=0 total=1"
    assert busy.transport is loop.transports[0]
