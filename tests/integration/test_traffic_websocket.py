"""WebSocket tunnels through a real gateway, with a real WebSocket server and client
(the `websockets` package): echo, 10 MiB each way in bounded memory, either side closing,
auth on the handshake, tunnels outliving request_timeout_secs, idle timeout and drain.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from harness import HOST, Gateway, GatewayFactory, RawConn, UpstreamProcess, free_port, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import Server, ServerConnection, serve

MiB = 1024 * 1024
SECRET = "a-websocket-test-secret-of-32-bytes!"


def upstream_handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else ""
    if path.startswith("/ws/close"):
        ws.recv()
        ws.close(4000, "upstream says bye")
        return
    if path.startswith("/ws/whoami"):
        assert ws.request is not None
        ws.send(json.dumps({"user": ws.request.headers.get("X-User-ID"), "path": path}))
    try:
        for message in ws:
            ws.send(message)
    except ConnectionClosed:
        pass


@pytest.fixture(scope="module")
def ws_upstream() -> Iterator[str]:
    server: Server = serve(upstream_handler, HOST, free_port(), max_size=None, compression=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{server.socket.getsockname()[1]}"
    server.shutdown()
    thread.join(10)


def routes() -> list[dict[str, object]]:
    return [
        {"id": "ws", "path": "/ws/*", "upstream_id": "ws"},
        {
            "id": "ws-secure",
            "path": "/secure/*",
            "upstream_id": "ws",
            "auth_required": True,
            "rewrite": "/ws/whoami",
        },
        {"id": "ws-off", "path": "/off/*", "upstream_id": "ws", "websocket": False},
        {"id": "http", "path": "/api/*", "upstream_id": "demo"},
    ]


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, ws_upstream: str, demo: UpstreamProcess) -> Gateway:
    return module_gateway(
        {"ws": ws_upstream, "demo": demo.url},
        routes(),
        server={"request_timeout_secs": 1},
        auth={"jwt_secret": SECRET},
        logging={"level": "INFO", "sinks": [{"type": "stdout"}]},
        observability={"metrics_enabled": True, "metrics_port": free_port()},
    )


def url(gw: Gateway, path: str) -> str:
    return f"ws://{HOST}:{gw.port}{path}"


def metric(gw: Gateway, pattern: str) -> float:
    text = httpx.get(f"http://{HOST}:{gw.config['observability']['metrics_port']}/metrics", timeout=10).text
    m = re.search(r"^" + pattern + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_text_and_binary_messages_are_echoed(gw: Gateway) -> None:
    with connect(url(gw, "/ws/echo")) as ws:
        ws.send("hello, tunnel")
        assert ws.recv(timeout=10) == "hello, tunnel"
        ws.send(b"\x00\xffbinary")
        assert ws.recv(timeout=10) == b"\x00\xffbinary"


def test_ten_mib_each_way_in_bounded_gateway_memory(gw: Gateway) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    count = 10 * MiB // len(chunk)
    # Small client socket buffers, so that the kernel does not absorb what the test is about.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    sock.connect((HOST, gw.port))
    with connect(url(gw, "/ws/echo"), sock=sock, max_size=None, compression=None) as ws:
        ws.send(chunk)
        assert ws.recv(timeout=10) == chunk  # warm: the tunnel and both buffers exist
        before = gw.vm_hwm_kib()
        received: list[int] = []

        sent_all = threading.Event()

        def reader() -> None:
            # A slow client: it reads only once everything is sent (or after 2 s, since with
            # backpressure the sender blocks long before). Without backpressure the gateway
            # would have taken all 10 MiB into its own buffers by then.
            sent_all.wait(2)
            for _ in range(count):
                received.append(len(ws.recv(timeout=60)))

        t = threading.Thread(target=reader)
        t.start()
        for _ in range(count):
            ws.send(chunk)
        sent_all.set()
        t.join(120)
        assert sum(received) == count * len(chunk)
    growth_mib = (gw.vm_hwm_kib() - before) / 1024
    assert growth_mib < 3, f"the gateway's peak RSS grew {growth_mib:.1f} MiB for 20 MiB through it"


def test_the_upstream_closing_closes_the_client_with_its_code(gw: Gateway) -> None:
    with connect(url(gw, "/ws/close")) as ws:
        ws.send("bye?")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4000
    assert info.value.rcvd.reason == "upstream says bye"


def test_the_client_closing_ends_the_request_once_with_its_access_event(gw: Gateway) -> None:
    before = metric(gw, r'http_requests_total\{method="GET",route="ws",status="101"\}')
    total = metric(gw, r'websocket_connections_total\{route="ws"\}')
    with connect(url(gw, "/ws/echo"), additional_headers={"X-Request-ID": "ws-client-close"}) as ws:
        ws.send("x" * 1000)
        ws.recv(timeout=10)
        assert metric(gw, "websocket_connections_active") >= 1
    assert wait_until(lambda: metric(gw, "websocket_connections_active") == 0, 10)
    assert metric(gw, r'websocket_connections_total\{route="ws"\}') == total + 1
    assert metric(gw, r'http_requests_total\{method="GET",route="ws",status="101"\}') == before + 1

    def event() -> dict[str, object] | None:
        for line in gw.stdout().splitlines():
            if '"ws-client-close"' in line and "request_completed" in line:
                return dict(json.loads(line))
        return None

    assert wait_until(lambda: event() is not None, 10)
    e = event()
    assert e is not None and e["status"] == 101
    assert int(e["request_size"]) > 1000 and int(e["response_size"]) > 1000  # type: ignore[call-overload]


def test_auth_is_checked_on_the_handshake(gw: Gateway) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(url(gw, "/secure/x"))
    assert info.value.response.status_code == 401
    import jwt

    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}", "X-User-ID": "mallory"}
    with connect(url(gw, "/secure/x"), additional_headers=headers) as ws:
        assert json.loads(ws.recv(timeout=10)) == {"user": "alice", "path": "/ws/whoami"}


def test_a_tunnel_outlives_the_request_timeout(gw: Gateway) -> None:
    with connect(url(gw, "/ws/echo"), ping_interval=None) as ws:
        time.sleep(2.5)  # request_timeout_secs is 1
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here"


def test_a_route_without_websocket_refuses_the_upgrade(gw: Gateway) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(url(gw, "/off/x"))
    assert info.value.response.status_code == 400


def test_an_upstream_that_does_not_switch_is_relayed_as_a_normal_response(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        c.send(
            b"GET /api/echo/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/api/echo/ws"
        seen = r.json()["headers"]
        assert seen["upgrade"] == "websocket" and seen["sec-websocket-version"] == "13"
        assert r.header("connection") == "close"
        assert c.closed_by_peer(5)


def test_idle_tunnels_and_draining_close_with_going_away(gateway: GatewayFactory, ws_upstream: str) -> None:
    gw = gateway(
        {"ws": ws_upstream}, routes()[:1], server={"websocket_idle_timeout_secs": 1, "drain_timeout_secs": 1}
    )
    with connect(url(gw, "/ws/echo"), ping_interval=None) as ws, pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=10)  # silent both ways for a second
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    with connect(url(gw, "/ws/echo"), ping_interval=None) as ws:
        ws.send("before the drain")
        assert ws.recv(timeout=10) == "before the drain"
        gw.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.send("ping")  # keeps the tunnel busy: only the drain can end it
                ws.recv(timeout=10)
                time.sleep(0.1)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert gw.proc.wait(15) == 0  # type: ignore[union-attr]
