"""Hot reload through the running gateway (issue 16): SIGHUP, `apigate reload --pid` and
`POST /admin/reload` re-read the configuration file. A valid one serves new requests
(routes, upstreams, auth keys, log sinks) without dropping a connection or a request in
flight; an invalid one is refused with every error logged, and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from auth_fixtures import SECRET, jwt_token
from harness import (
    APIGATE,
    Conn,
    Gateway,
    GatewayFactory,
    ScriptedUpstream,
    UpRequest,
    child_pids,
    free_port,
    listening_socket_owners,
    wait_until,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from apigate.gateway.balancer import target_name
from apigate.telemetry import names
from apigate.workers import RESTART_MIN_UPTIME_S


def named(name: str) -> Any:
    """An upstream that says who it is; /slow/<s> answers after s seconds."""

    async def handler(req: UpRequest, conn: Conn) -> bool:
        if req.path.startswith("/slow/"):
            await asyncio.sleep(float(req.path.rsplit("/", 1)[1]))
        await conn.respond(200, name.encode())
        return True

    return handler


@pytest.fixture
def ab(scripted: Any) -> tuple[ScriptedUpstream, ScriptedUpstream]:
    return scripted(named("A")), scripted(named("B"))


NEW_SECRET = "rotated-secret-0123456789abcdef0123456"
INFO_LOGS = {"level": "INFO", "sinks": [{"type": "stdout"}]}


def rewrite(gw: Gateway, **changes: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(gw.config))
    cfg.update(changes)
    gw.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def log_events(gw: Gateway, event_type: str) -> list[dict[str, Any]]:
    out = []
    for line in gw.stdout().splitlines():
        if f'"event_type":"{event_type}"' in line:
            out.append(json.loads(line))
    return out


def with_metrics(gateway: GatewayFactory, upstreams: dict[str, Any], **sections: Any) -> tuple[Gateway, int]:
    """A gateway logging at INFO with its metrics listener on a free port."""
    port = free_port()
    obs = {"metrics_enabled": True, "metrics_port": port}
    return gateway(upstreams, logging=INFO_LOGS, observability=obs, **sections), port


def metric(port: int, name: str, **labels: str) -> float:
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        named = line.startswith((f"{name}{{", f"{name} "))
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sighup_swaps_routes_and_upstreams_without_dropping_anything(
    gateway: GatewayFactory, ab: tuple[ScriptedUpstream, ScriptedUpstream]
) -> None:
    a, b = ab
    gw = gateway({"svc": a.url}, logging=INFO_LOGS)
    errors: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:  # one keep-alive connection across the reload
        with httpx.Client() as client:
            while not stop.is_set():
                try:
                    statuses.append(client.get(f"{gw.url}/x").status_code)
                except httpx.HTTPError as e:
                    errors.append(repr(e))

    slow: list[httpx.Response] = []
    with httpx.Client(timeout=10) as keep:
        assert keep.get(f"{gw.url}/x").text == "A"
        loader = threading.Thread(target=load)
        loader.start()
        in_flight = threading.Thread(target=lambda: slow.append(httpx.get(f"{gw.url}/slow/1.5", timeout=10)))
        in_flight.start()
        assert wait_until(lambda: any(r.path == "/slow/1.5" for r in a.requests), 5)
        rewrite(
            gw,
            upstreams=[{"id": "svc", "base_url": a.url}, {"id": "other", "base_url": b.url}],
            routes=[
                {"id": "new", "path": "/new/*", "upstream_id": "other"},
                {"id": "all", "path": "/*", "upstream_id": "other"},
            ],
        )
        gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        # The connection opened before the reload serves the new routes.
        assert wait_until(lambda: keep.get(f"{gw.url}/x").text == "B", 10)
        assert keep.get(f"{gw.url}/new/thing").text == "B"
        in_flight.join(10)
        stop.set()
        loader.join(10)
    assert [(r.status_code, r.text) for r in slow] == [(200, "A")]  # finished on the old config
    assert errors == []
    assert set(statuses) == {200}
    assert gw.alive()
    assert wait_until(lambda: bool(log_events(gw, "config_reloaded")), 10)
    [event] = log_events(gw, "config_reloaded")
    assert len(event["config_hash"]) == 16


def test_an_invalid_file_is_refused_with_every_error_and_the_old_config_serves(
    gateway: GatewayFactory, ab: tuple[ScriptedUpstream, ScriptedUpstream]
) -> None:
    a, _ = ab
    gw, metrics_port = with_metrics(gateway, {"svc": a.url})
    rewrite(
        gw,
        upstreams=[{"id": "svc", "base_url": "ftp://nope", "timeout_secs": -1}],
    )
    gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    assert wait_until(lambda: bool(log_events(gw, "config_reload_failed")), 10)
    errors = [e["error"] for e in log_events(gw, "config_error")]
    assert len(errors) == 2, errors
    assert any("base_url" in e for e in errors) and any("timeout_secs" in e for e in errors)
    assert httpx.get(f"{gw.url}/x").text == "A"
    assert metric(metrics_port, names.CONFIG_RELOADS_TOTAL, result="failure") == 1
    assert metric(metrics_port, names.CONFIG_RELOADS_TOTAL, result="success") == 0
    assert gw.alive()


def test_admin_post_and_the_reload_command(
    gateway: GatewayFactory, ab: tuple[ScriptedUpstream, ScriptedUpstream], tmp_path: Path
) -> None:
    a, b = ab
    # Balanced (retries): its targets have gauges, which must follow the reload.
    gw, metrics_port = with_metrics(gateway, {"svc": {"targets": [{"url": a.url}], "retries": {}}})
    admin = f"http://127.0.0.1:{metrics_port}/admin/reload"
    assert httpx.get(admin).status_code == 405
    rewrite(gw, upstreams=[{"id": "svc", "targets": [{"url": b.url}], "retries": {}}])
    r = httpx.post(admin)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{gw.url}/x").text == "B"
    scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    old, new = target_name(a.url), target_name(b.url)
    assert f'target="{new}"' in scrape and f'target="{old}"' not in scrape  # no stale target
    assert wait_until(lambda: bool(log_events(gw, "config_reloaded")), 10)
    [event] = log_events(gw, "config_reloaded")
    assert r.json()["config_hash"] == event["config_hash"]
    status = httpx.get(f"http://127.0.0.1:{metrics_port}/status.json").json()
    assert status["config_hash"] == event["config_hash"]  # the status page follows the reload

    rewrite(gw, upstreams=[{"id": "svc", "base_url": b.url}], routes=[{"id": "all", "path": "/*"}])
    refused = httpx.post(admin)
    assert refused.status_code == 422
    assert any("upstream_id" in e for e in refused.json()["errors"])

    # A file sink added by reload, through `apigate reload --pid`.
    log_file = tmp_path / "after-reload.log"
    sinks = [{"type": "stdout"}, {"type": "file", "file": {"path": str(log_file)}}]
    rewrite(gw, upstreams=[{"id": "svc", "base_url": a.url}], logging={"level": "INFO", "sinks": sinks})
    done = subprocess.run(
        [str(APIGATE), "reload", "--pid", str(gw.pid)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert wait_until(lambda: httpx.get(f"{gw.url}/x").text == "A", 10)
    assert wait_until(lambda: log_file.exists() and "config_reloaded" in log_file.read_text(), 10)
    assert metric(metrics_port, names.CONFIG_RELOADS_TOTAL, result="success") == 2
    assert metric(metrics_port, names.CONFIG_RELOADS_TOTAL, result="failure") == 1


def test_reload_command_bad_pid() -> None:
    done = subprocess.run([str(APIGATE), "reload", "--pid", "999999999"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == "apigate reload: no process 999999999"
    # Not a gateway: SIGHUP would end it, so it is not sent.
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            done = subprocess.run(
                [str(APIGATE), "reload", "--pid", str(other.pid)], capture_output=True, text=True
            )
            assert done.returncode == 1
            assert done.stderr.strip() == f"apigate reload: process {other.pid} is not apigate; not signalled"
            assert other.poll() is None
        finally:
            other.kill()


def test_every_worker_reloads(gateway: GatewayFactory, ab: tuple[ScriptedUpstream, ScriptedUpstream]) -> None:
    a, b = ab
    gw, metrics_port = with_metrics(gateway, {"svc": a.url}, server={"workers": 2})
    # Both workers up (a worker still starting ignores SIGHUP: it reads the new file anyway).
    assert wait_until(lambda: len(listening_socket_owners(gw.port)) == 2, 15)
    rewrite(gw, upstreams=[{"id": "svc", "base_url": b.url}])
    gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    assert wait_until(lambda: len(log_events(gw, "config_reloaded")) == 2, 15)
    # New connections land on either worker (SO_REUSEPORT): all answer from B now.
    assert {httpx.get(f"{gw.url}/x").text for _ in range(20)} == {"B"}
    # A worker that crashes after the reload is restarted with the reloaded file (once it
    # has run RESTART_MIN_UPTIME_S: a worker dying sooner is a start-up failure, not a crash).
    time.sleep(RESTART_MIN_UPTIME_S + 0.1)
    victim = child_pids(gw.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(set(child_pids(gw.pid)) - {victim}) == 2, 15)
    assert wait_until(lambda: len(listening_socket_owners(gw.port)) == 2, 15)
    assert {httpx.get(f"{gw.url}/x").text for _ in range(20)} == {"B"}
    # POST /admin/reload reaches one worker, which has the supervisor signal them all.
    rewrite(gw, upstreams=[{"id": "svc", "base_url": a.url}])
    accepted = httpx.post(f"http://127.0.0.1:{metrics_port}/admin/reload")
    assert (accepted.status_code, accepted.json()["status"]) == (202, "reloading")
    assert wait_until(lambda: len(log_events(gw, "config_reloaded")) == 4, 15)
    assert {httpx.get(f"{gw.url}/x").text for _ in range(20)} == {"A"}
    assert gw.alive()


def test_auth_keys_and_limits_change_for_new_requests(
    gateway: GatewayFactory, ab: tuple[ScriptedUpstream, ScriptedUpstream]
) -> None:
    a, _ = ab
    secure = {"id": "secure", "path": "/*", "upstream_id": "svc", "auth_required": True}
    gw, metrics_port = with_metrics(gateway, {"svc": a.url}, routes=[secure], auth={"jwt_secret": SECRET})
    old_token, new_token = jwt_token(SECRET), jwt_token(NEW_SECRET)
    with httpx.Client() as client:
        assert client.get(f"{gw.url}/x", headers={"authorization": f"Bearer {old_token}"}).status_code == 200
        limited = {**secure, "rate_limit": {"limit": 2, "window_secs": 60, "key_type": "ip"}}
        rewrite(gw, routes=[limited], auth={"jwt_secret": NEW_SECRET})
        assert httpx.post(f"http://127.0.0.1:{metrics_port}/admin/reload").status_code == 200
        # The same keep-alive connection: the new key, and the new limit.
        assert client.get(f"{gw.url}/x", headers={"authorization": f"Bearer {old_token}"}).status_code == 401
        ok = [client.get(f"{gw.url}/x", headers={"authorization": f"Bearer {new_token}"}) for _ in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 429]


def test_an_open_websocket_survives_a_reload(gateway: GatewayFactory) -> None:
    def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in ws:
                ws.send(message)

    server = serve(echo, "127.0.0.1", free_port(), compression=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ws_url = f"http://127.0.0.1:{server.socket.getsockname()[1]}"
        gw, metrics_port = with_metrics(gateway, {"ws": ws_url})
        with connect(f"ws://127.0.0.1:{gw.port}/ws/x", compression=None) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            rewrite(gw, routes=[{"id": "renamed", "path": "/*", "upstream_id": "ws"}])
            assert httpx.post(f"http://127.0.0.1:{metrics_port}/admin/reload").status_code == 200
            # The old filters close once the in-flight requests are done; the tunnel stays.
            assert wait_until(lambda: metric(metrics_port, "websocket_connections_active") == 1, 10)
            ws.send("after")
            assert ws.recv(timeout=10) == "after"
        assert wait_until(lambda: metric(metrics_port, "websocket_connections_active") == 0, 10)
    finally:
        server.shutdown()
        thread.join(10)
