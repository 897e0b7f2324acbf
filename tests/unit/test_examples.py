"""The shipped examples load: quickstart as is, production (the guide's Appendix A) unchanged.

Appendix A names /etc/tls/cert.pem and /etc/tls/key.pem. To prove the file passes as
written, the test puts a throwaway self-signed pair there when none exists, and removes
what it created afterwards. Only where /etc/tls cannot be written (not root) does it fall
back to a copy with those two paths pointed at temporary files.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from apigate.config import ConfigError, load_config, summarize
from apigate.config.schema import HTTP_METHODS

if TYPE_CHECKING:
    from conftest import TlsFiles

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PRODUCTION = EXAMPLES / "production.yaml"
QUICKSTART = EXAMPLES / "quickstart.yaml"
GUIDE_TLS = Path("/etc/tls")
PROD_ENV = {"ELASTICSEARCH_PASSWORD": "es-password-for-test", "JWT_SECRET": "jwt-secret-for-test"}


@pytest.fixture
def production_file(tls_files: TlsFiles, tmp_path: Path) -> Iterator[Path]:
    """examples/production.yaml, with its TLS files present."""
    cert, key = GUIDE_TLS / "cert.pem", GUIDE_TLS / "key.pem"
    if cert.exists() and key.exists():
        yield PRODUCTION
        return
    created: list[Path] = []
    try:
        if not GUIDE_TLS.exists():
            GUIDE_TLS.mkdir(parents=True)
            created.append(GUIDE_TLS)
        for src, dst in ((tls_files.cert, cert), (tls_files.key, key)):
            if not dst.exists():
                shutil.copyfile(src, dst)
                created.append(dst)
    except PermissionError:
        text = PRODUCTION.read_text(encoding="utf-8")
        text = text.replace(str(cert), str(tls_files.cert)).replace(str(key), str(tls_files.key))
        copy = tmp_path / "production.yaml"
        copy.write_text(text, encoding="utf-8")
        yield copy
        return
    try:
        yield PRODUCTION
    finally:
        for path in reversed(created):
            path.rmdir() if path.is_dir() else path.unlink()


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def test_production_example_is_the_guides_appendix_a() -> None:
    text = PRODUCTION.read_text(encoding="utf-8")
    assert text.startswith("# config.production.yaml\n\nserver:\n")
    assert 'password: "${ELASTICSEARCH_PASSWORD}"' in text and 'jwt_secret: "${JWT_SECRET}"' in text


def test_production_example_loads_unchanged(production_file: Path) -> None:
    cfg = load_config(production_file, env=PROD_ENV)
    assert summarize(cfg) == (
        "ok: 1 route, 1 upstream, sinks: stdout, elasticsearch;"
        " listening on 0.0.0.0:8443 (tls), metrics on :9090"
    )
    es = cfg.logging.sinks[1].elasticsearch
    assert es is not None and es.password == "es-password-for-test"
    assert cfg.auth is not None and cfg.auth.jwt_secret == "jwt-secret-for-test"
    assert cfg.rate_limiting is not None and cfg.rate_limiting.failure_mode == "fail_closed"
    assert cfg.routes[0].rate_limit and cfg.routes[0].rate_limit.algorithm == "sliding_window"


def test_production_example_without_its_variables(production_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(production_file, env={})
    name = str(production_file)
    es_line, jwt_line = (
        line_of(production_file, "ELASTICSEARCH_PASSWORD"),
        line_of(production_file, "JWT_SECRET"),
    )
    assert info.value.errors == [
        f"{name}:{es_line} logging.sinks[1].elasticsearch.password:"
        " environment variable ELASTICSEARCH_PASSWORD is not set",
        f"{name}:{jwt_line} auth.jwt_secret: environment variable JWT_SECRET is not set",
    ]


def test_quickstart_loads_with_an_empty_environment() -> None:
    cfg = load_config(QUICKSTART, env={})
    assert summarize(cfg) == (
        "ok: 4 routes, 1 upstream, sinks: stdout; listening on 127.0.0.1:8080, metrics on :9090"
    )
    assert (cfg.server.bind_address, cfg.server.port, cfg.server.drain_timeout_secs) == ("127.0.0.1", 8080, 5)
    assert cfg.observability.metrics_enabled and cfg.observability.metrics_port == 9090
    assert cfg.observability.metrics_bind_address in (None, "127.0.0.1")
    assert cfg.rate_limiting is None and cfg.server.tls is None
    # JWT with a demo secret (overridable from the environment) guards one route
    assert cfg.auth is not None and cfg.auth.jwt_algorithm == "HS256" and cfg.auth.jwt_secret
    assert [r.id for r in cfg.routes if r.auth_required] == ["user-get"]
    assert [u.base_url for u in cfg.upstreams] == ["http://127.0.0.1:8081"]
    routes = {r.id: (r.methods, r.path, r.upstream_id) for r in cfg.routes}
    all_methods = list(HTTP_METHODS)
    assert routes == {
        "users-list": (["GET"], "/api/users", "demo"),
        "user-get": (["GET"], "/api/users/{id}", "demo"),
        "echo": (all_methods, "/api/echo/*", "demo"),
        "demo-all": (all_methods, "/api/*", "demo"),
    }
