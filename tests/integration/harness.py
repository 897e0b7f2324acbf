"""Building blocks for the integration suite: real processes and real sockets on 127.0.0.1.

- `Gateway`: `apigate serve --config <tmpfile>` as a subprocess, ready once its port accepts.
- `ScriptedUpstream`: a small asyncio HTTP/1.1 server in a background thread whose
  behaviour is one handler coroutine per request (slow, resetting, closing, streaming...).
  It records every request it read, so tests can count what really reached the upstream.
  `python harness.py --port N --handler NAME` runs one of `HANDLERS` in its own process
  (for the 1 GiB streams, where a thread would share the GIL with the test's client).
- `Nginx`: nginx from a throwaway config (keepalive_requests 100, short keepalive_timeout).
- `RawConn`: a blocking client socket that parses responses byte for byte, for what httpx
  would hide (pipelining, interim 100 responses, framing, the server closing).

Every class here owns what it starts and stops it in `stop()`/`close()`; the fixtures in
conftest.py call those from finalizers, so nothing outlives a failing test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
APIGATE = VENV_BIN / "apigate"
PYTHON = VENV_BIN / "python" if (VENV_BIN / "python").exists() else Path(sys.executable)
HOST = "127.0.0.1"

MiB = 1024 * 1024
GiB = 1024 * MiB
# 1 MiB of a fixed, non-repeating-within-the-block pattern; bodies are this block repeated,
# so both ends can generate and check a 1 GiB stream without ever holding it.
BLOCK = hashlib.sha256(b"apigate").digest() * (MiB // 32)
assert len(BLOCK) == MiB


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str, *extra_paths: str) -> str:
    """The path of an external tool; skip without it, except in CI where that is a failure."""
    import shutil

    import pytest

    path = shutil.which(name) or next((p for p in extra_paths if os.access(p, os.X_OK)), None)
    if path is None:
        message = f"{name} is not installed (scripts/install-test-deps.sh installs it)"
        if IN_CI:
            pytest.fail(message + "; CI=true forbids skipping")
        pytest.skip(message)
    return path


def free_port() -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def pattern_sha256(size: int) -> str:
    """sha256 of `size` bytes of BLOCK repeated."""
    h = hashlib.sha256()
    full, rest = divmod(size, MiB)
    for _ in range(full):
        h.update(BLOCK)
    h.update(BLOCK[:rest])
    return h.hexdigest()


def pattern_chunks(size: int, chunk: int = MiB) -> Iterator[bytes]:
    """`size` bytes of BLOCK repeated, in pieces of at most `chunk` bytes (chunk <= 1 MiB)."""
    sent = 0
    view = memoryview(BLOCK)
    while sent < size:
        off = sent % MiB
        n = min(chunk, size - sent, MiB - off)
        yield bytes(view[off : off + n])
        sent += n


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process, from /proc/<pid>/status (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def child_pids(pid: int) -> list[int]:
    """Direct children of a process, from /proc/*/stat."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def listening_socket_owners(port: int) -> list[int]:
    """One pid per listening TCP socket on 127.0.0.1:port (SO_REUSEPORT gives one per worker)."""
    inodes: set[str] = set()
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1] == local and parts[3] == "0A":  # 0A = LISTEN
            inodes.add(parts[9])
    owners = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        owners.append(int(entry.name))
    return sorted(owners)


# ----------------------------------------------------------------------------- processes
def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Signal a process, wait for it, kill it if it will not go; returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


GatewayFactory = Callable[..., "Gateway"]
"""The `gateway` fixture: `gateway(upstreams, routes=None, server=None, start=True, **sections)`."""


class Gateway:
    """`apigate serve --config FILE` in a subprocess (its own process group)."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        import yaml  # PyYAML is a runtime dependency of apigate

        self.config = config
        self.port = int(config["server"]["port"])
        self.tls = "tls" in config["server"]
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "apigate.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> Gateway:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(APIGATE), "serve", "--config", str(self.config_path)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = self.proc
        ready = wait_until(lambda: proc.poll() is not None or port_accepts(self.port), timeout)
        if proc.poll() is not None or not ready:
            self.stop()
            raise AssertionError(
                f"apigate did not start on port {self.port} (exit {proc.returncode}):\n{self.stderr()}"
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        code = stop_process(self.proc, sig, timeout)
        # Workers the parent left behind (it was killed, or a test killed it) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def vm_hwm_kib(self) -> int:
        return vm_hwm_kib(self.pid)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def gateway_config(
    port: int,
    upstreams: dict[str, str | dict[str, Any]],
    routes: list[dict[str, Any]] | None = None,
    server: dict[str, Any] | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """A config dict: server on 127.0.0.1:port, the given upstreams (id -> base_url or
    settings), routes (default: `/*` to the first upstream). No metrics listener, small
    drain timeout, logs at WARN so the 200k-request test does not write a log per request."""
    ups = []
    for uid, spec in upstreams.items():
        entry: dict[str, Any] = {"id": uid}
        if isinstance(spec, str):
            entry["base_url"] = spec
        else:
            entry.update(spec)
        ups.append(entry)
    if routes is None:
        routes = [{"id": "all", "path": "/*", "upstream_id": ups[0]["id"]}]
    srv: dict[str, Any] = {"bind_address": HOST, "port": port, "drain_timeout_secs": 5}
    srv.update(server or {})
    logging: dict[str, Any] = {"level": "WARN", "sinks": [{"type": "stdout"}]}
    if workdir is not None:
        logging["spool_dir"] = str(workdir / "spool")
    return {
        "server": srv,
        "logging": logging,
        "observability": {"metrics_enabled": False},
        "upstreams": ups,
        "routes": routes,
    }


class UpstreamProcess:
    """A test upstream in its own process: this file's `main()` or the demo upstream."""

    def __init__(self, args: list[str], port: int, workdir: Path) -> None:
        self.port = port
        self.stderr_path = workdir / f"upstream-{port}.err"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )
        if not wait_until(lambda: self.proc.poll() is not None or port_accepts(port), 20):
            self.stop()
            raise AssertionError(f"upstream {args} did not start: {self.stderr_path.read_text()}")
        if self.proc.poll() is not None:
            raise AssertionError(f"upstream {args} exited: {self.stderr_path.read_text()}")

    @classmethod
    def scripted(cls, handler: str, workdir: Path) -> UpstreamProcess:
        port = free_port()
        return cls([str(PYTHON), __file__, "--port", str(port), "--handler", handler], port, workdir)

    @classmethod
    def demo(cls, workdir: Path) -> UpstreamProcess:
        port = free_port()
        return cls([str(PYTHON), "-m", "apigate.demo.upstream", "--port", str(port)], port, workdir)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10)


class Nginx:
    """nginx (one worker, no master) serving `200 ok` with the given keep-alive limits."""

    def __init__(self, workdir: Path, keepalive_requests: int = 100, keepalive_timeout: str = "1s") -> None:
        import shutil

        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise FileNotFoundError("nginx")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        d = workdir
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = f"""
daemon off;
master_process off;
worker_processes 1;
{user}pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests {keepalive_requests};
  keepalive_timeout {keepalive_timeout};
  server {{
    listen {HOST}:{self.port};
    location / {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
"""
        self.conf = d / "nginx.conf"
        self.conf.write_text(conf)
        self.error_log = d / "error.log"
        self.proc = subprocess.Popen(
            [binary, "-p", str(d), "-e", str(self.error_log), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_until(lambda: self.proc.poll() is not None or port_accepts(self.port), 15):
            self.stop()
            raise AssertionError("nginx did not start")
        if self.proc.poll() is not None:
            assert self.proc.stderr is not None
            raise AssertionError(f"nginx exited: {self.proc.stderr.read().decode(errors='replace')}")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT, 10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# ----------------------------------------------------------------------------- raw client
class IncompleteResponse(Exception):
    """The connection ended before the response's framing said it was complete."""

    def __init__(self, message: str, partial: Response | None = None) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    framing: str = "length"  # length | chunked | close | none
    body_size: int = 0

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return ", ".join(values) if values else None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    def names(self) -> set[str]:
        return {n for n, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


class RawConn:
    """A blocking client connection that reads responses exactly as they are framed."""

    def __init__(
        self,
        port: int,
        *,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
    ) -> None:
        sock = socket.create_connection((HOST, port), timeout=timeout)
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.buf = bytearray()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1"]
        if not any(k.lower() == "host" for k in headers or {}):
            lines.append("Host: gateway.test")  # exactly one Host (RFC 9112 §3.2)
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers or {}):
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            return False
        if not data:
            return False
        self.buf += data
        return True

    def _read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if not self._fill():
                raise IncompleteResponse("connection closed inside a header line")

    def _read_exact(self, n: int, sink: Callable[[bytes], None]) -> None:
        while n > 0:
            if not self.buf and not self._fill():
                raise IncompleteResponse(f"connection closed with {n} body bytes missing")
            take = min(n, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take

    def read_head(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                if self.buf:
                    raise IncompleteResponse(f"connection closed inside the head: {bytes(self.buf)[:200]!r}")
                raise IncompleteResponse("connection closed before a response")
        status_line = self._read_line().decode("latin-1")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        headers = []
        while True:
            line = self._read_line().decode("latin-1")
            if not line:
                break
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return Response(version, int(code), reason, headers)

    def read_response(
        self, method: str = "GET", sink: Callable[[bytes], None] | None = None, interim: bool = False
    ) -> Response:
        """The next response (1xx interim ones are skipped unless `interim`).

        With `sink`, the body is passed to it piece by piece instead of being kept.
        """
        while True:
            resp = self.read_head()
            if resp.status >= 200 or interim:
                break
        parts: list[bytes] = []

        def keep(chunk: bytes) -> None:
            resp.body_size += len(chunk)
            if sink is not None:
                sink(chunk)
            else:
                parts.append(chunk)

        try:
            te = (resp.header("transfer-encoding") or "").lower()
            cl = resp.header("content-length")
            if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
                resp.framing = "none"
            elif "chunked" in te:
                resp.framing = "chunked"
                while True:
                    size = int(self._read_line().split(b";")[0], 16)
                    if size == 0:
                        while self._read_line():
                            pass  # trailers
                        break
                    self._read_exact(size, keep)
                    if self._read_line() != b"":
                        raise IncompleteResponse("bad chunk framing")
            elif cl is not None:
                resp.framing = "length"
                self._read_exact(int(cl), keep)
            else:
                resp.framing = "close"
                while True:
                    if self.buf:
                        keep(bytes(self.buf))
                        self.buf.clear()
                    if not self._fill():
                        break
        except IncompleteResponse as e:
            resp.body = b"".join(parts)
            raise IncompleteResponse(str(e), resp) from None
        resp.body = b"".join(parts)
        return resp

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within `timeout` (no more bytes)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        if data:
            self.buf += data
            return False
        return True


def raw_request(port: int, payload: bytes, timeout: float = 10.0) -> Response:
    """Send raw bytes on a new connection and read one response."""
    with RawConn(port, timeout=timeout) as c:
        c.send(payload)
        return c.read_response()


# ----------------------------------------------------------------------------- scripted upstreams
@dataclass
class UpRequest:
    """A request as a scripted upstream read it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    conn_id: int
    index: int  # 0 for the first request on its connection
    body: bytes = b""
    body_length: int = 0
    body_sha256: str = ""
    received_at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return ", ".join(values) if values else None

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


class Conn:
    """The server side of one upstream connection, as a handler sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int) -> None:
        self.reader = reader
        self.writer = writer
        self.conn_id = conn_id
        self.sent = 0  # body bytes written by stream()
        self.closed = False

    async def respond(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        *,
        chunked: bool = False,
        length: bool = True,
    ) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers or []]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif length:
            lines.append(f"Content-Length: {len(body)}")
        out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if chunked:
            if body:
                out += b"%x\r\n%s\r\n" % (len(body), body)
            out += b"0\r\n\r\n"
        else:
            out += body
        self.writer.write(out)
        await self.writer.drain()

    async def respond_json(
        self, obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
    ) -> None:
        json_type = ("Content-Type", "application/json")
        await self.respond(status, json.dumps(obj).encode(), [json_type, *(headers or [])])

    async def stream(self, size: int, *, chunked: bool, chunk: int = 256 * 1024) -> None:
        """Send a 200 whose body is `size` bytes of the pattern, with backpressure."""
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
        self.writer.write(head.encode())
        for piece in pattern_chunks(size, chunk):
            self.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await self.writer.drain()
            self.sent += len(piece)
        if chunked:
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashing or overloaded server does."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed = True
        self.writer.transport.abort()

    def close(self) -> None:
        self.closed = True
        self.writer.close()


Handler = Callable[[UpRequest, Conn], Awaitable[bool | None]]
"""Answers one request; returns False to close the connection afterwards."""


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int, index: int, keep_body: int
) -> UpRequest | None:
    req = await _read_head_only(reader, conn_id, index)
    if req is None:
        return None
    if (req.header("expect") or "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    h = hashlib.sha256()
    kept: list[bytes] = []

    def take(data: bytes) -> None:
        req.body_length += len(data)
        h.update(data)
        if req.body_length <= keep_body:
            kept.append(data)

    if "chunked" in (req.header("transfer-encoding") or "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            while size:
                data = await reader.read(min(size, 256 * 1024))
                if not data:
                    raise asyncio.IncompleteReadError(b"", size)
                take(data)
                size -= len(data)
            await reader.readexactly(2)
    else:
        remaining = int(req.header("content-length") or 0)
        while remaining:
            data = await reader.read(min(remaining, 256 * 1024))
            if not data:
                raise asyncio.IncompleteReadError(b"", remaining)
            take(data)
            remaining -= len(data)
    req.body = b"".join(kept)
    req.body_sha256 = h.hexdigest()
    return req


class ScriptedUpstream:
    """An HTTP/1.1 server on its own event loop thread; `handler` answers each request.

    `read_body=False` hands the request to the handler as soon as its head arrived, with
    the body still unread (for tests about upload backpressure).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        read_body: bool = True,
        keep_body: int = MiB,
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.read_body = read_body
        self.keep_body = keep_body
        self.requests: list[UpRequest] = []
        self.conns: list[Conn] = []
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="scripted-upstream", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{HOST}:{self.port}"

    def start(self) -> ScriptedUpstream:
        self._thread.start()
        self._server = self.call(self._start())
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def call(self, coro: Awaitable[Any], timeout: float = 10.0) -> Any:
        async def run() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    async def _start(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._on_client, HOST, 0, ssl=self.ssl_context, backlog=512)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        conn = Conn(reader, writer, next(self._ids))
        self.conns.append(conn)
        self.connections += 1
        try:
            for index in itertools.count():
                if self.read_body:
                    req = await _read_request(reader, writer, conn.conn_id, index, self.keep_body)
                else:
                    req = await _read_head_only(reader, conn.conn_id, index)
                if req is None:
                    break
                self.requests.append(req)
                keep = await self.handler(req, conn)
                if keep is False or conn.closed:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            if not conn.closed:
                conn.closed = True
                writer.transport.abort()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in self.conns:
                if not conn.closed:
                    conn.closed = True
                    conn.writer.transport.abort()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            if self._server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._server.wait_closed(), 5)
            # An aborted TLS transport closes its socket a loop turn or two later: let it,
            # or the socket is left to the GC (a ResourceWarning in some later test).
            for _ in range(3):
                await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            self.call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            # Whatever is still pending (a TLS handshake the peer abandoned) ends here, on
            # this thread, so that the loop closes with no task or transport left over.
            pending = asyncio.all_tasks(self.loop)
            for t in pending:
                t.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(asyncio.sleep(0.01))
        self.loop.close()

    def requests_to(self, path: str) -> list[UpRequest]:
        return [r for r in list(self.requests) if r.path == path]


async def _read_head_only(reader: asyncio.StreamReader, conn_id: int, index: int) -> UpRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = [
        (n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:] if line)
    ]
    return UpRequest(method, target, version, headers, conn_id, index)


# ----------------------------------------------------------------------------- handlers
async def echo_handler(req: UpRequest, conn: Conn) -> bool:
    """JSON echo of what arrived, like the demo upstream's /api/echo."""
    await conn.respond_json(
        {
            "method": req.method,
            "target": req.target,
            "headers": req.headers,
            "body_length": req.body_length,
            "body_sha256": req.body_sha256,
            "conn_id": req.conn_id,
        }
    )
    return True


async def bytes_handler(req: UpRequest, conn: Conn) -> bool:
    """`GET /bytes/<n>[?chunked=1]`: n bytes of the pattern; anything else is an echo."""
    if req.path.startswith("/bytes/"):
        await conn.stream(int(req.path.rsplit("/", 1)[1]), chunked="chunked=1" in req.query)
        return True
    return await echo_handler(req, conn)


HANDLERS: dict[str, Handler] = {"echo": echo_handler, "bytes": bytes_handler}


def main(argv: list[str] | None = None) -> int:
    """Run a scripted upstream in this process until SIGTERM (for the 1 GiB streams)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--handler", choices=sorted(HANDLERS), default="bytes")
    args = parser.parse_args(argv)

    async def serve() -> None:
        handler = HANDLERS[args.handler]

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = Conn(reader, writer, 0)
            try:
                for index in itertools.count():
                    req = await _read_request(reader, writer, 0, index, 0)
                    if req is None or await handler(req, conn) is False:
                        break
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(on_client, HOST, args.port, backlog=512)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
