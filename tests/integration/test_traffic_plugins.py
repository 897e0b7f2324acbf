"""Python plugins through a real gateway: the shipped example loaded through the config,
a plugin that raises, and the configuration errors a plugin author sees.

The example (examples/plugins/mycompany/audit.py) is the one docs/PLUGINS.md documents:
this test is what keeps the two honest.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest
from harness import APIGATE, HOST, REPO, Gateway, GatewayFactory, UpstreamProcess, free_port, wait_until

EXAMPLES = REPO / "examples" / "plugins"

FAULTY = """
from apigate.plugins import Plugin


class Faulty(Plugin):
    def on_request(self, ctx):
        if "boom" in ctx.path:
            raise RuntimeError("secret-internal-detail")
        if "bad-return" in ctx.path:
            return 42
        return None

    def on_complete(self, ctx):
        if "late" in ctx.path:
            raise KeyError("after the response")
"""


def events_of(gw: Gateway) -> list[dict[str, object]]:
    out = []
    for line in gw.stdout().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.fixture(scope="module")
def gw(
    module_gateway: GatewayFactory, demo: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Gateway:
    faulty_dir = tmp_path_factory.mktemp("faulty")
    (faulty_dir / "faulty_plugin.py").write_text(FAULTY)
    routes = [
        {"id": "audited", "path": "/api/echo/audited/*", "upstream_id": "demo", "plugins": ["audit"]},
        {
            "id": "looked-up",
            "path": "/api/echo/looked-up/*",
            "upstream_id": "demo",
            "plugins": ["audit-lookup"],
        },
        {"id": "plain", "path": "/api/echo/plain/*", "upstream_id": "demo"},
    ]
    plugins = [
        {
            "name": "audit",
            "module": "mycompany.audit:AuditFilter",
            "path": str(EXAMPLES),
            "config": {"blocked_tenants": ["evil-corp"], "tag": "seen"},
        },
        {
            "name": "audit-lookup",
            "module": "mycompany.audit:AuditFilter",
            "path": str(EXAMPLES),
            "priority": 700,
            "config": {"lookup": True, "tenant_header": "X-Org"},
        },
        # Listed by no route: runs on every route.
        {"name": "faulty", "module": "faulty_plugin:Faulty", "path": str(faulty_dir)},
    ]
    return module_gateway(
        {"demo": demo.url},
        routes,
        plugins=plugins,
        logging={"level": "INFO", "sinks": [{"type": "stdout"}], "spool_dir": str(faulty_dir / "spool")},
        observability={"metrics_enabled": True, "metrics_port": free_port()},
    )


def get(gw: Gateway, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{gw.url}{path}", headers=headers, timeout=10)


def test_the_example_plugin_admits_refuses_and_tags(gw: Gateway) -> None:
    r = get(gw, "/api/echo/audited/x", **{"X-Tenant": "acme"})
    assert r.status_code == 200 and r.json()["path"] == "/api/echo/audited/x"
    assert r.headers["x-audit"] == "seen"
    r = get(gw, "/api/echo/audited/x")
    assert r.status_code == 400 and r.json()["error"] == "tenant_required"
    assert r.headers["x-audit"] == "seen"  # on the gateway's own answers too
    assert r.json()["correlation_id"] == r.headers["x-request-id"]
    r = get(gw, "/api/echo/audited/x", **{"X-Tenant": "evil-corp"})
    assert r.status_code == 403 and r.json()["error"] == "tenant_blocked"


def test_an_asynchronous_plugin_decides_after_awaiting(gw: Gateway) -> None:
    assert get(gw, "/api/echo/looked-up/x", **{"X-Org": "acme"}).status_code == 200
    assert get(gw, "/api/echo/looked-up/x", **{"X-Tenant": "acme"}).status_code == 400  # its own header


def test_a_plugin_runs_only_where_it_is_listed(gw: Gateway) -> None:
    r = get(gw, "/api/echo/plain/x")  # no tenant header, no audit: the upstream answers
    assert r.status_code == 200 and "x-audit" not in r.headers


def test_the_plugin_logs_through_the_gateways_pipeline(gw: Gateway) -> None:
    r = get(gw, "/api/echo/audited/logged", **{"X-Tenant": "acme"})
    rid = r.headers["x-request-id"]
    assert wait_until(
        lambda: any(e.get("event_type") == "audit" and e.get("correlation_id") == rid for e in events_of(gw)),
        10,
    )


def test_a_plugin_that_raises_gets_a_500_and_the_worker_lives_on(gw: Gateway) -> None:
    r = get(gw, "/api/echo/plain/boom")
    assert r.status_code == 500
    assert r.json() == {
        "error": "internal_error",
        "message": "The gateway failed to handle the request.",
        "correlation_id": r.headers["x-request-id"],
    }
    assert "secret-internal-detail" not in r.text and "Traceback" not in r.text
    assert get(gw, "/api/echo/plain/bad-return").status_code == 500
    assert get(gw, "/api/echo/plain/late").status_code == 200  # on_complete raises after the answer
    assert get(gw, "/api/echo/plain/fine").status_code == 200 and gw.alive()
    rid = r.headers["x-request-id"]

    def logged() -> bool:
        return any(
            e.get("event_type") == "plugin_failed"
            and e.get("plugin") == "faulty"
            and e.get("correlation_id") == rid
            for e in events_of(gw)
        )

    assert wait_until(logged, 10)
    mport = gw.config["observability"]["metrics_port"]
    text = httpx.get(f"http://{HOST}:{mport}/metrics", timeout=10).text
    m = re.search(r'^plugin_errors_total\{plugin="faulty"\} (\S+)$', text, re.M)
    assert m and float(m.group(1)) >= 3, text[-2000:]


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(textwrap.dedent(text))
    return subprocess.run(
        [str(APIGATE), "check", "--config", str(path)], capture_output=True, text=True, timeout=60
    )


def test_plugin_mistakes_are_reported_with_file_line_and_key(tmp_path: Path) -> None:
    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir()
    for f in (EXAMPLES / "mycompany").glob("*.py"):
        (plugins_dir / "mycompany").mkdir(exist_ok=True)
        (plugins_dir / "mycompany" / f.name).write_text(f.read_text())
    out = check(
        tmp_path,
        """
        upstreams: [{id: up, base_url: "http://127.0.0.1:9"}]
        routes:
          - {id: r, path: /x, upstream_id: up, plugins: [audit, nope]}
        plugins:
          - name: audit
            module: mycompany.audit:AuditFilter
            path: plugins
            config:
              tag: ""
              colour: blue
          - {name: gone, module: "no_such_module:Thing"}
          - {name: notaclass, module: "mycompany.audit:Nothing", path: plugins}
        """,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr
    assert re.search(r"gw\.yaml:10 plugins\[0\]\.config\.tag: .*at least 1 character", err), err
    assert re.search(
        r"gw\.yaml:11 plugins\[0\]\.config\.colour: unknown key 'colour' \(valid keys: tenant_header, ", err
    ), err
    assert re.search(r"gw\.yaml:12 plugins\[1\]\.module: cannot import 'no_such_module'", err), err
    assert re.search(r"gw\.yaml:13 plugins\[2\]\.module: 'mycompany.audit' has no class 'Nothing'", err), err
    assert re.search(r"gw\.yaml:4 routes\[0\]\.plugins\[1\]: unknown plugin 'nope'", err), err
    assert "Traceback" not in err


def test_a_plugin_that_cannot_be_built_stops_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken_plugin.py").write_text(
        "from apigate.plugins import Plugin\n\n"
        "class Broken(Plugin):\n"
        "    def __init__(self, config):\n"
        "        raise ValueError('no licence key')\n"
    )
    path = tmp_path / "gw.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            server: {{bind_address: 127.0.0.1, port: {free_port()}}}
            observability: {{metrics_enabled: false}}
            logging: {{spool_dir: {tmp_path / "spool"}}}
            upstreams: [{{id: up, base_url: "http://127.0.0.1:9"}}]
            routes: [{{id: r, path: /x, upstream_id: up}}]
            plugins: [{{name: broken, module: "broken_plugin:Broken", path: "."}}]
            """
        )
    )
    out = subprocess.run(
        [str(APIGATE), "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if "compiled build" not in line]
    assert lines == [
        "apigate: cannot start: plugin 'broken' (broken_plugin:Broken) failed to initialise: "
        "ValueError('no licence key')"
    ], out.stderr
