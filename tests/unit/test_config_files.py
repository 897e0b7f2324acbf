"""`apigate check` on files that are not files, and addresses `serve` would refuse.

Each case once hung `check` (reading /dev/zero or a FIFO forever) or passed `check` and
then failed at `serve`; now each is a one-line error and exit 2, within seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apigate.config import ConfigError, load_config
from apigate.config.files import MAX_CONFIG_BYTES

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = (
    'upstreams: [{id: a, base_url: "http://127.0.0.1:1"}]\nroutes: [{id: r, path: /x, upstream_id: a}]\n'
)


def check(config: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apigate", "check", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,  # a hang is a failure, not a stuck suite
        cwd=ROOT,
    )


def assert_refused(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr + out.stdout
    for needle in needles:
        assert needle in out.stderr, out.stderr


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_check_refuses_a_device_as_the_config(device: str) -> None:
    assert_refused(check(device), f"{device}: cannot read: not a regular file")


def test_check_does_not_wait_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    assert_refused(check(str(fifo)), "not a regular file")


def test_check_refuses_an_oversized_config(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(MINIMAL + "#" * MAX_CONFIG_BYTES + "\n")
    assert_refused(check(str(big)), f"larger than {MAX_CONFIG_BYTES} bytes")


def test_key_and_certificate_paths_must_be_regular_files(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        MINIMAL
        + "server: {tls: {cert_path: /dev/zero, key_path: /dev/urandom}}\n"
        + "auth: {jwt_algorithm: RS256, jwt_public_key_path: /dev/urandom}\n"
    )
    assert_refused(
        check(str(cfg)),
        "server.tls.cert_path: cannot read /dev/zero: not a regular file",
        "server.tls.key_path: cannot read /dev/urandom: not a regular file",
        "auth.jwt_public_key_path: cannot read /dev/urandom: not a regular file",
    )


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("not an ip", "'not an ip' is not an IP address or a host name"),
        ("999.1.1.1", "does not resolve to an address to bind"),
        ("no-such-host.invalid", "does not resolve to an address to bind"),
    ],
)
def test_check_catches_a_bind_address_serve_would_refuse(tmp_path: Path, address: str, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL + f'server: {{bind_address: "{address}"}}\n')
    out = check(str(cfg))
    assert_refused(out, "server.bind_address", message)
    assert len([line for line in out.stderr.splitlines() if "bind_address" in line]) == 1


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost", "0.0.0.0"])
def test_usable_bind_addresses_pass(tmp_path: Path, address: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL + f'server: {{bind_address: "{address}"}}\n')
    load_config(cfg)  # no ConfigError


def test_the_loader_raises_only_config_error_for_a_socket(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        with pytest.raises(ConfigError, match="sock: cannot read: No such device or address"):
            load_config(tmp_path / "sock")
