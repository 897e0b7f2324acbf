"""The status page without sockets: its aggregation over workers and over time, the
document's JSON Schema, the HTML's first paint, basic auth, and what must never show."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import bcrypt
import orjson
import pytest
from jsonschema import Draft202012Validator
from test_config_docs import schema_keys

from apigate.config import Config, ConfigError, load_config_text
from apigate.telemetry import metrics, names, status_html
from apigate.telemetry.basic_auth import BasicAuth
from apigate.telemetry.status import MIN_SPACING_S, WINDOW_S, StatusPage

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())
SECRET = "s3cr3t-jwt-signing-key-0123456789abcdef"


def validate(doc: dict[str, Any]) -> None:
    errors = sorted(Draft202012Validator(SCHEMA).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors)


def config(**sections: Any) -> Config:
    doc: dict[str, Any] = {
        "server": {"workers": 2},
        "upstreams": [
            {"id": "users", "base_url": "http://svc-user:pw@users.internal:8081/v1"},
            {"id": "orders", "base_url": "https://orders.internal"},
        ],
        "routes": [
            {"id": "users-list", "path": "/api/users", "upstream_id": "users"},
            {"id": "orders", "path": "/api/orders/*", "upstream_id": "orders"},
        ],
    }
    doc.update(sections)
    return Config.model_validate(doc)


class Worker:
    """One worker's registry: the real metric families, written the way the filters do."""

    def __init__(self) -> None:
        self.reg = metrics.Registry()
        self.requests = self.reg.counter(names.HTTP_REQUESTS_TOTAL, "", ("method", "route", "status"))
        self.duration = self.reg.histogram(
            names.HTTP_REQUEST_DURATION_SECONDS, "", ("method", "route"), metrics.REQUEST_BUCKETS
        )
        self.failures = self.reg.counter(names.UPSTREAM_FAILURES_TOTAL, "", ("service", "reason"))
        self.healthy = self.reg.gauge(names.UPSTREAM_TARGET_HEALTHY, "", ("service", "target"))
        self.breaker = self.reg.gauge(names.UPSTREAM_CIRCUIT_STATE, "", ("service", "target"))
        self.reloads = self.reg.counter(names.CONFIG_RELOADS_TOTAL, "", ("result",))

    def serve(self, route: str, n: int, status: int = 200, seconds: float = 0.004) -> None:
        for _ in range(n):
            self.requests.inc(("GET", route, status))
            self.duration.observe(("GET", route), seconds)


class Instance:
    """Two workers; a scrape is worker 0's live registry plus worker 1's snapshot (metrics.render)."""

    def __init__(self) -> None:
        self.workers = [Worker(), Worker()]
        self.now = 1000.0

    def scrape(self) -> bytes:
        return self.workers[0].reg.render([(self.workers[1].reg.snapshot(), True)])

    def clock(self) -> float:
        return self.now

    def page(self, cfg: Config | None = None, ready: dict[str, Any] | None = None) -> StatusPage:
        return StatusPage(
            cfg or config(), lambda: ready, "127.0.0.1", self.scrape, self.clock, workers_alive=lambda: 2
        )


def route(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in doc["routes"] if r["route"] == name)


def test_first_view_counts_every_worker_since_start() -> None:
    inst = Instance()
    page = inst.page()
    inst.workers[0].serve("users-list", 30)
    inst.workers[1].serve("users-list", 10)
    inst.workers[1].serve("users-list", 10, status=503)
    inst.now += 10
    doc = page.document()
    validate(doc)
    assert doc["since_start"] is True and doc["window_s"] == 10
    users = route(doc, "users-list")
    assert users["requests"] == 50
    assert users["rps"] == 5.0
    assert users["error_rate"] == 0.2
    assert users["status_classes"] == {"1xx": 0, "2xx": 40, "3xx": 0, "4xx": 0, "5xx": 10}
    assert users["p50"] is not None and 0.0025 < users["p50"] <= 0.005
    assert route(doc, "orders")["requests"] == 0  # configured, idle: still a row
    assert doc["workers"] == {"configured": 2, "alive": 2}
    assert doc["totals"]["requests"] == 50


def test_later_views_show_the_last_minute_only() -> None:
    inst = Instance()
    page = inst.page()
    inst.workers[0].serve("users-list", 500)  # long ago
    inst.now += 300
    page.document()
    for _ in range(40):  # a viewer refreshing every 2 s, 20 req/s spread over both workers, slow
        inst.now += 2
        inst.workers[0].serve("users-list", 20, seconds=0.3)
        inst.workers[1].serve("users-list", 20, seconds=0.3)
        doc = page.document()
    validate(doc)
    assert doc["since_start"] is False
    assert WINDOW_S <= doc["window_s"] <= WINDOW_S + 2
    users = route(doc, "users-list")
    assert users["rps"] == pytest.approx(20.0, rel=0.05)  # the 500 old requests are not in it
    assert 0.25 < users["p99"] <= 0.5
    history = users["history"]
    assert len(history) == 30
    assert all(p["rps"] == pytest.approx(20.0) for p in history)
    # Views closer than MIN_SPACING_S share one scrape: a burst of viewers costs one.
    kept = len(page.ring)
    inst.now += MIN_SPACING_S / 2
    page.document()
    assert len(page.ring) == kept


def test_nothing_is_scraped_until_someone_looks() -> None:
    """The page costs nothing when nobody looks: no timer, no scrape before the first view."""
    calls = []
    inst = Instance()

    def scrape() -> bytes:
        calls.append(inst.now)
        return inst.scrape()

    page = StatusPage(config(), lambda: None, "127.0.0.1", scrape, inst.clock)
    inst.now += 3600
    assert calls == [] and not page.ring
    page.document()
    assert calls == [inst.now]


def test_findings_are_diagnose_s() -> None:
    inst = Instance()
    page = inst.page(
        ready={"status": "not_ready", "checks": {"upstream:users": {"ok": False, "detail": "refused"}}}
    )
    inst.workers[0].serve("users-list", 10, status=502)
    inst.workers[1].failures.inc(("users", "connect"), 10)
    inst.now += 5
    doc = page.document()
    validate(doc)
    titles = [f["title"] for f in doc["diagnosis"]["findings"]]
    assert doc["diagnosis"]["status"] == "SEV1"  # every request failing
    assert titles[0].startswith("Error rate 100.0%")
    assert any(t.startswith("Upstream users failing") for t in titles)
    users = next(u for u in doc["upstreams"] if u["service"] == "users")
    assert users["failures"] == {"connect": 10} and users["active_check"] is False
    assert users["targets"][0]["healthy"] is False  # the implicit target follows the active check


def test_targets_and_breakers_when_the_metrics_exist() -> None:
    inst = Instance()
    page = inst.page()
    w = inst.workers[0]
    w.healthy.set(("users", "10.0.0.1:8081"), 1)
    w.healthy.set(("users", "10.0.0.2:8081"), 0)
    w.breaker.set(("users", "10.0.0.1:8081"), 0)
    w.breaker.set(("users", "10.0.0.2:8081"), 1)
    inst.now += 1
    doc = page.document()
    validate(doc)
    users = next(u for u in doc["upstreams"] if u["service"] == "users")
    got = {t["target"]: (t["healthy"], t["breaker"]) for t in users["targets"]}
    assert got == {"10.0.0.1:8081": (True, "closed"), "10.0.0.2:8081": (False, "open")}
    orders = next(u for u in doc["upstreams"] if u["service"] == "orders")
    assert [t["target"] for t in orders["targets"]] == ["orders.internal:443"]  # implicit


def test_last_reload_is_never_until_the_counter_moves() -> None:
    inst = Instance()
    page = inst.page()
    assert page.document()["last_reload"] == {"result": "never", "counts": {}}
    inst.now += 2
    inst.workers[1].reloads.inc(("failed",))
    assert page.document()["last_reload"]["result"] == "failed"


def test_auth_cache_hit_ratio_and_rate_limit_batch_size_over_the_window() -> None:
    cfg = config(auth={"jwt_secret": SECRET}, rate_limiting={"redis_url": "redis://redis:6379/0"})
    inst = Instance()
    page = inst.page(cfg)
    inst.now += 1
    doc = page.document()
    assert doc["auth"]["cache_hit_ratio"] is None  # nothing looked up yet: unknown, not 0
    assert doc["rate_limiting"]["batch_size"] is None
    for w, (hits, misses, checks, trips) in zip(
        inst.workers, [(30, 10, 40, 10), (15, 5, 20, 10)], strict=True
    ):
        lookups = w.reg.counter(names.AUTH_CACHE_LOOKUPS_TOTAL, "", ("result",))
        lookups.inc(("hit",), hits)
        lookups.inc(("miss",), misses)
        w.reg.counter(names.RATE_LIMIT_BACKEND_CHECKS_TOTAL, "", ()).inc((), checks)
        w.reg.counter(names.RATE_LIMIT_BACKEND_ROUND_TRIPS_TOTAL, "", ()).inc((), trips)
    inst.now += 2
    doc = page.document()
    validate(doc)
    assert doc["auth"]["cache_hit_ratio"] == 0.75  # 45 of 60, over both workers
    assert doc["rate_limiting"]["batch_size"] == 3.0  # 60 checks in 20 round trips
    html = status_html.render(doc).decode()
    assert "75.0%" in html and ">3<" in html


def test_nothing_secret_on_the_page() -> None:
    cfg = config(auth={"jwt_secret": SECRET}, rate_limiting={"redis_url": "redis://:hunter2@redis:6379/0"})
    inst = Instance()
    page = inst.page(cfg)
    inst.now += 1
    doc = page.document()
    validate(doc)
    text = page.json().decode() + status_html.render(doc).decode()
    for secret in (SECRET, "hunter2", "svc-user", ":pw@", "/v1"):
        assert secret not in text
    assert doc["rate_limiting"]["store"] == "redis" and doc["auth"]["token_format"] == "jwt"
    assert re.fullmatch(r"[0-9a-f]{16}", doc["config_hash"])
    assert inst.page(config(auth={"jwt_secret": SECRET + "x"})).hash != page.hash


def test_schema_rejects_a_wrong_document() -> None:
    inst = Instance()
    doc = inst.page().document()
    validate(doc)
    for broken in ({**doc, "routes": [{"route": "x"}]}, {**doc, "extra": 1}, {**doc, "config_hash": "abc"}):
        assert list(Draft202012Validator(SCHEMA).iter_errors(broken))


def test_html_first_paint_is_complete_and_self_contained() -> None:
    inst = Instance()
    page = inst.page()
    inst.workers[0].serve("users-list", 7)
    inst.now += 1
    html = status_html.render(page.document()).decode()
    assert re.search(
        r'data-p="routes\[route=users-list\]/requests"|data-p="routes\[route=users-list\]/rps"', html
    )
    assert ">7.00<" in html or ">7<" in html  # 7 requests over 1 s, rendered by the server
    assert '<meta name="viewport"' in html and "<svg" in html
    # Nothing fetched from anywhere: no src/href attributes, no @import or url(); only status.json.
    assert not re.search(r"\bsrc\s*=", html)
    assert re.findall(r'\bhref="([^"]*)"', html) == ["data:,"]  # the empty icon
    assert "url(" not in html and "@import" not in html
    assert re.findall(r'fetch\("([^"]+)"', html) == ["status.json"]
    assert 'id="exposed"' not in html
    exposed = StatusPage(config(), lambda: None, "0.0.0.0", inst.scrape, inst.clock)
    assert 'id="exposed"' in status_html.render(exposed.document()).decode()


def test_fmt_matches_the_script() -> None:
    """The script's fmt() mirrors the server's: the same cell must not change format on refresh."""
    assert status_html.fmt(None, "n") == "—"
    assert status_html.fmt(3.0, "n") == "3" and status_html.fmt(2.5, "n") == "2.50"
    assert status_html.fmt(0.1234, "pct") == "12.3%" and status_html.fmt(0.0042, "ms") == "4.2 ms"
    assert status_html.fmt({"timeout": 1.0, "connect": 2.0}, "map") == "connect 2, timeout 1"
    for token in ('toFixed(1)+"%"', 'toFixed(1)+" ms"', "toFixed(2)", '"up":"DOWN"'):
        assert token in status_html._JS


def _basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def test_basic_auth() -> None:
    hashed = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=4)).decode()
    auth = BasicAuth("ops", hashed)
    assert auth.allows(_basic("ops", "correct horse"))
    assert auth.allows(_basic("ops", "correct horse"))  # remembered
    for bad in (None, b"", _basic("ops", "wrong"), _basic("root", "correct horse"), b"Bearer x", b"Basic !!"):
        assert not auth.allows(bad)
    assert len(auth.passed) == 1


def test_config_wants_a_bcrypt_hash(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    ok = f"observability:\n  admin:\n    basic_auth: {{username: ops, password_hash: '{hashed}'}}\n"
    cfg = load_config_text(ok, "config.yaml", {}, str(tmp_path))
    assert cfg.observability.admin.basic_auth is not None
    with pytest.raises(ConfigError) as e:
        load_config_text(ok.replace(hashed, "plaintext-password"), "config.yaml", {}, str(tmp_path))
    message = str(e.value)
    assert "observability.admin.basic_auth.password_hash" in message and "bcrypt" in message
    assert "plaintext-password" not in message


def test_document_is_json() -> None:
    inst = Instance()
    assert orjson.loads(inst.page().json())["version"]


def _status_section() -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "OBSERVABILITY.md").read_text()
    return text.split("## Status page\n", 1)[1].split("\n## ", 1)[0]


def test_docs_name_every_key_metric_and_setting() -> None:
    """docs/OBSERVABILITY.md's status section: each document key, each metric the page reads,
    and each setting it names are real; none of the schema's keys is left out."""
    section = _status_section()
    rows = re.findall(r"^\| (`[^|]+`) \| [^|]+ \| ([^|]+) \|$", section, re.M)
    documented_keys = {k for keys, _ in rows for k in re.findall(r"`([a-z_]+)`", keys)}
    assert documented_keys == set(SCHEMA["required"])
    read = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    mentioned = {m for _, source in rows for m in re.findall(r"`([a-z_]+)`", source)}
    assert mentioned <= read, mentioned - read
    status_py = (Path(__file__).resolve().parents[2] / "src/apigate/telemetry/status.py").read_text()
    used = {getattr(names, n) for n in re.findall(r"names\.([A-Z_]+)", status_py)}
    used.discard(names.CONFIG_RELOADS_TOTAL)  # not exported until hot reload lands (test_docs_consistency)
    assert used <= mentioned, used - mentioned
    settings = set(re.findall(r"`((?:server|observability)\.[a-z_.]+)`", section))
    assert {"observability.admin.basic_auth", "observability.admin.status_enabled"} <= settings
    assert settings <= set(schema_keys()), settings - set(schema_keys())


def _resolve(doc: Any, path: str) -> Any:
    """What the page's script does with a data-p path (get() in status_html._JS)."""
    from urllib.parse import unquote

    for step in path.split("/"):
        m = re.fullmatch(r"(\w+)\[(\w+)=(.*)\]", step)
        if m:
            doc = next(e for e in doc[m.group(1)] if str(e[m.group(2)]) == unquote(m.group(3)))
        else:
            doc = doc.get(step) if isinstance(doc, dict) else None  # JavaScript's undefined
    return doc


def test_every_cell_the_script_updates_finds_its_value() -> None:
    """Each data-p path leads to the value the server rendered in that cell, so a refresh
    changes a number only when the number changed; odd target names included."""
    from html import unescape

    inst = Instance()
    w = inst.workers[0]
    w.healthy.set(("users", "http://[::1]:8081/x"), 0)
    w.breaker.set(("users", "http://[::1]:8081/x"), 2)
    pool = w.reg.gauge(names.UPSTREAM_POOL_CONNECTIONS, "", ("service", "target", "state"))
    pool.set(("users", "http://[::1]:8081/x", "idle"), 4)
    w.failures.inc(("users", "timeout"), 3)
    w.serve("users-list", 9, status=503)
    page = inst.page(config(auth={"jwt_secret": SECRET}, rate_limiting={}))
    inst.now += 3
    doc = page.document()
    html = status_html.render(doc).decode()
    cells = re.findall(r'data-p="([^"]+)" data-f="(\w+)"[^>]*>([^<]*)<', html)
    assert len(cells) > 30
    for path, kind, shown in cells:
        assert status_html.fmt(_resolve(doc, unescape(path)), kind) == unescape(shown), path
    shown = {unescape(p): unescape(t) for p, _, t in cells}
    target = "upstreams[service=users]/targets[target=http%3A%2F%2F%5B%3A%3A1%5D%3A8081%2Fx]"
    assert shown[target + "/healthy"] == "DOWN" and shown[target + "/breaker"] == "half-open"
    assert shown["upstreams[service=users]/failures"] == "timeout 3"
    assert shown[target + "/pool/idle"] == "4" and shown[target + "/pool/active"] == "—"


@pytest.mark.parametrize(
    ("peer", "admin", "credentials", "expected"),
    [
        ("127.0.0.1", {}, None, 200),  # kubectl port-forward arrives from loopback
        ("::1", {}, None, 200),
        ("::ffff:127.0.0.1", {}, None, 200),  # a dual-stack listener
        ("10.1.2.3", {}, None, 403),  # in-cluster, e.g. beside Prometheus: not without auth
        ("10.1.2.3", {"status_remote": True}, None, 200),
        ("10.1.2.3", {"basic_auth": "set"}, None, 401),
        ("10.1.2.3", {"basic_auth": "set"}, ("ops", "pw"), 200),
    ],
)
def test_the_page_is_for_loopback_unless_guarded_or_opened(
    peer: str, admin: dict[str, Any], credentials: tuple[str, str] | None, expected: int
) -> None:
    """The admin port is often reachable in-cluster (Prometheus scrapes it); the page is
    shown beyond loopback only behind basic auth or with status_remote."""
    from cycles import serve
    from transports import parse_responses, run_in_loop, settle

    from apigate.http.server import ServerState
    from apigate.telemetry.admin import AdminApp
    from apigate.telemetry.health import Health

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    if admin.get("basic_auth"):
        admin = {**admin, "basic_auth": {"username": "ops", "password_hash": hashed}}
    cfg = config(observability={"admin": admin})
    auth = BasicAuth("ops", hashed) if admin.get("basic_auth") else None
    inst = Instance()

    @run_in_loop
    async def scenario() -> None:
        from cycles import LIMITS

        state = ServerState(LIMITS)
        app = AdminApp(state, Health(state, True, True), True, inst.page(cfg), auth)
        _, client = serve(app.handle, peer=(peer, 40000))
        head = b"GET /status.json HTTP/1.1\r\nHost: admin\r\n"
        if credentials:
            head += b"Authorization: " + _basic(*credentials) + b"\r\n"
        client.protocol.data_received(head + b"\r\n")
        await settle()
        [response] = parse_responses(client.take())
        assert response.status == expected
        if expected == 403:
            assert "loopback" in response.json()["message"]

    scenario()
