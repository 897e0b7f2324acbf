"""`apigate loadtest --header-file` on the wire: request k carries line k mod N, across workers."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from harness import APIGATE


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load tester expects
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.seen[self.headers.get("X-User", "-")] += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    _Counting.seen = Counter()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_every_line_in_turn_with_two_workers(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    lines = tmp_path / "headers.txt"
    lines.write_text("X-User: a\n\nX-User: b\nX-User: c\n")  # the blank line is skipped
    report = tmp_path / "r.json"
    url = f"http://127.0.0.1:{server.server_address[1]}/x"
    proc = subprocess.run(
        [str(APIGATE), "loadtest", "--url", url, "--rps", "100", "--duration", "1.5s", "--workers", "2",
         "--connections", "4", "--header-file", str(lines), "--report", str(report)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(report.read_text())["responses"] == 150
    assert _Counting.seen == {"a": 50, "b": 50, "c": 50}


def test_a_missing_header_file_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(APIGATE), "loadtest", "--rps", "1", "--duration", "1s", "--header-file", str(tmp_path / "no")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("No such file or directory") and "--header-file" in proc.stderr
