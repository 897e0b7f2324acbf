"""Fixtures shared across the test suite."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The fuzzers (tests/integration/test_fuzz.py, tests/unit/test_config_fuzz.py): a few
# thousand cases in all by default, `APIGATE_FUZZ_EXAMPLES` per fuzzer for more
# (docs/SECURITY.md). No example database: every run draws new cases.
settings.register_profile(
    "apigate",
    max_examples=int(os.environ.get("APIGATE_FUZZ_EXAMPLES", "1000")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("apigate")


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 'localhost', its key, and a key that does not match it."""

    cert: Path
    key: Path
    other_key: Path


def make_self_signed(directory: Path) -> TlsFiles:
    """Write cert.pem, key.pem (EC P-256, unencrypted) and other_key.pem into directory."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is needed to generate test certificates (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "other_key.pem")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subject = ["-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    subprocess.run(
        [openssl, "req", "-x509", *ec, "-keyout", str(files.key), "-out", str(files.cert), *subject],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            openssl,
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            str(files.other_key),
        ],
        check=True,
        capture_output=True,
    )
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway self-signed certificate and key (plus a mismatched key) for TLS tests."""
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_per_module() -> Iterator[None]:
    """Free each module's leftovers before the next module runs: a socket or connection a
    test forgot to close then warns (an error under filterwarnings=error) in the module
    that leaked it, not in whichever later test happens to trigger the collection."""
    yield
    gc.collect()
