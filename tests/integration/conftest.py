"""Fixtures for the integration suite: apigate as a real subprocess and real upstreams.

Everything listens on 127.0.0.1 on ports the kernel picked. Every process or thread a
fixture starts is stopped by its finalizer, also when the test fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Gateway,
    GatewayFactory,
    Handler,
    Nginx,
    ScriptedUpstream,
    UpstreamProcess,
    free_port,
    gateway_config,
    require_tool,
)


class _Gateways:
    """Starts gateways into one directory and stops them all at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Gateway] = []

    def __call__(
        self,
        upstreams: dict[str, str | dict[str, Any]],
        routes: list[dict[str, Any]] | None = None,
        server: dict[str, Any] | None = None,
        *,
        start: bool = True,
        **sections: Any,
    ) -> Gateway:
        server = dict(server or {})
        port = server.pop("port", None) or free_port()
        workdir = self.directory / f"gateway-{len(self.started)}"
        cfg = gateway_config(port, upstreams, routes, server, workdir)
        cfg.update(sections)
        gw = Gateway(cfg, workdir)
        self.started.append(gw)
        return gw.start() if start else gw

    def stop_all(self) -> None:
        for gw in self.started:
            gw.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start apigate: `gateway(upstreams, routes=None, server=None, start=True, **sections)`.

    `upstreams` maps an upstream id to its base_url (or to a dict of its settings);
    `server` overrides `server.*`; extra keyword arguments replace whole config sections.
    """
    gateways = _Gateways(tmp_path)
    yield gateways
    gateways.stop_all()


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    """`gateway`, shared by a module's tests that only read from it."""
    gateways = _Gateways(tmp_path_factory.mktemp("gateway"))
    yield gateways
    gateways.stop_all()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedUpstream]]:
    """Start a ScriptedUpstream: `scripted(handler, ssl_context=None, read_body=True)`."""
    started: list[ScriptedUpstream] = []

    def start(handler: Handler, **kwargs: Any) -> ScriptedUpstream:
        up = ScriptedUpstream(handler, **kwargs)
        started.append(up)
        return up.start()

    yield start
    for up in started:
        up.stop()


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    """The demo upstream (`python -m apigate.demo.upstream`), shared: it keeps no state."""
    up = UpstreamProcess.demo(tmp_path_factory.mktemp("demo"))
    yield up
    up.stop()


@pytest.fixture
def stream_upstream(tmp_path: Path) -> Iterator[UpstreamProcess]:
    """A scripted upstream in its own process: GET /bytes/<n>[?chunked=1], else an echo."""
    up = UpstreamProcess.scripted("bytes", tmp_path)
    yield up
    up.stop()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """Start nginx: `nginx(keepalive_requests=100, keepalive_timeout="1s")`."""
    require_tool("nginx", "/usr/sbin/nginx")
    started: list[Nginx] = []

    def start(**kwargs: Any) -> Nginx:
        n = Nginx(tmp_path / f"nginx-{len(started)}", **kwargs)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


@dataclass(frozen=True)
class TestCA:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost."""

    ca_cert: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    openssl = require_tool("openssl")
    d = tmp_path_factory.mktemp("ca")
    ca_key, ca_cert = d / "ca.key", d / "ca.pem"
    key, csr, cert, ext = d / "server.key", d / "server.csr", d / "server.pem", d / "server.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    ca_subject = ["-days", "2", "-subj", "/CN=apigate test CA"]
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_cert), *ca_subject)
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return TestCA(ca_cert, cert, key)
