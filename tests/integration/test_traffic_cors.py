"""CORS through a real gateway: preflights, actual requests, and a real browser's verdict.

The browser test serves a page from two other origins (two ports of 127.0.0.1) and runs
`fetch()` through the gateway in headless Chromium: the allowed origin reads the answer,
the other one gets the TypeError a browser raises when CORS refuses a response.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest
from harness import HOST, Gateway, GatewayFactory, UpstreamProcess, free_port, require_tool

APP = "http://app.example.test"


@pytest.fixture(scope="module")
def page_ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, demo: UpstreamProcess, page_ports: tuple[int, int]) -> Gateway:
    allowed = f"http://{HOST}:{page_ports[0]}"
    routes = [
        {"id": "api", "path": "/api/echo/api/*", "upstream_id": "demo", "methods": ["GET", "POST", "PUT"]},
        {"id": "secure", "path": "/api/echo/secure/*", "upstream_id": "demo", "auth_required": True},
        {
            "id": "partner",
            "path": "/api/echo/partner/*",
            "upstream_id": "demo",
            "cors": {
                "allow_origins": [r"~^https://[a-z0-9-]+\.partner\.test$"],
                "allow_credentials": True,
                "allow_headers": ["*"],
            },
        },
        {"id": "internal", "path": "/api/echo/internal/*", "upstream_id": "demo", "cors": False},
    ]
    cors = {
        "allow_origins": [APP, allowed],
        "allow_methods": ["GET", "POST", "PUT"],
        "allow_headers": ["Authorization", "Content-Type", "X-Custom"],
        "expose_headers": ["X-Request-ID"],
        "max_age_secs": 300,
    }
    auth = {"jwt_secret": "a-test-secret-that-is-at-least-32-bytes-long"}
    return module_gateway({"demo": demo.url}, routes, cors=cors, auth=auth)


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        yield c


def preflight(
    client: httpx.Client, path: str, origin: str, method: str = "PUT", headers: str = ""
) -> httpx.Response:
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return client.options(path, headers=h)


def test_a_preflight_is_answered_by_the_gateway(client: httpx.Client) -> None:
    r = preflight(client, "/api/echo/api/x", APP, headers="x-custom, content-type")
    assert r.status_code == 204 and r.content == b""  # the demo upstream would have echoed JSON
    assert "content-length" not in r.headers  # RFC 9110 §8.6
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["access-control-allow-methods"] == "GET, POST, PUT"
    assert r.headers["access-control-allow-headers"] == "Authorization, Content-Type, X-Custom"
    assert r.headers["access-control-max-age"] == "300"
    assert "access-control-allow-credentials" not in r.headers
    assert "Origin" in r.headers["vary"]


def test_a_preflight_needs_no_auth(client: httpx.Client) -> None:
    r = preflight(client, "/api/echo/secure/x", APP, method="GET", headers="authorization")
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == APP
    assert client.get("/api/echo/secure/x", headers={"Origin": APP}).status_code == 401


def test_an_actual_request_gets_its_origin_back_and_vary(client: httpx.Client) -> None:
    r = client.get("/api/echo/api/x", headers={"Origin": APP})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["access-control-expose-headers"] == "X-Request-ID"
    assert "Origin" in r.headers["vary"]
    # The gateway's 401 on an auth route carries them too, or the page could not read it.
    r = client.get("/api/echo/secure/x", headers={"Origin": APP})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == APP


def test_a_disallowed_origin_gets_no_cors_headers(client: httpx.Client) -> None:
    for r in (
        preflight(client, "/api/echo/api/x", "https://evil.test"),
        client.get("/api/echo/api/x", headers={"Origin": "https://evil.test"}),
    ):
        assert not [n for n in r.headers if n.startswith("access-control-")], r.headers
    assert client.get("/api/echo/api/x", headers={"Origin": "https://evil.test"}).status_code == 200


def test_regex_origins_and_credentials_echo_the_origin_never_a_star(client: httpx.Client) -> None:
    origin = "https://shop.partner.test"
    r = preflight(client, "/api/echo/partner/x", origin, method="DELETE", headers="x-anything")
    assert r.headers["access-control-allow-origin"] == origin
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-allow-headers"] == "x-anything"
    r = client.get("/api/echo/partner/x", headers={"Origin": origin})
    assert r.headers["access-control-allow-origin"] == origin
    assert r.headers["access-control-allow-credentials"] == "true"
    r = client.get("/api/echo/partner/x", headers={"Origin": "https://shop.partner.test.evil.test"})
    assert "access-control-allow-origin" not in r.headers


def test_a_route_can_turn_cors_off(client: httpx.Client) -> None:
    r = client.get("/api/echo/internal/x", headers={"Origin": APP})
    assert "access-control-allow-origin" not in r.headers
    r = preflight(client, "/api/echo/internal/x", APP)
    assert r.status_code == 200 and r.json()["method"] == "OPTIONS"  # forwarded like any OPTIONS


# ----------------------------------------------------------------------------- a real browser
PAGE = b"<!doctype html><title>cors test</title><p>page</p>"


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def pages(page_ports: tuple[int, int]) -> Iterator[tuple[str, str]]:
    servers = [http.server.ThreadingHTTPServer((HOST, port), _PageHandler) for port in page_ports]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield f"http://{HOST}:{page_ports[0]}/", f"http://{HOST}:{page_ports[1]}/"
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = require_tool("chromium", "/usr/bin/chromium")
    driver_path = require_tool("chromedriver", "/usr/bin/chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


FETCH = """
const done = arguments[arguments.length - 1];
const headers = {"X-Custom": "1", "Content-Type": "application/json"};
fetch(arguments[0], {method: "PUT", headers: headers, body: "{}"})
  .then(r => r.json().then(j => done("ok " + r.status + " " + j.method + " " + j.headers["x-custom"])))
  .catch(e => done("failed " + e.name));
"""


def test_a_browser_lets_only_the_allowed_origin_read_the_answer(
    gw: Gateway, pages: tuple[str, str], browser: object
) -> None:
    allowed, other = pages
    target = f"{gw.url}/api/echo/api/from-browser"
    browser.get(allowed)  # type: ignore[attr-defined]
    assert browser.execute_async_script(FETCH, target) == "ok 200 PUT 1"  # type: ignore[attr-defined]
    browser.get(other)  # type: ignore[attr-defined]
    assert browser.execute_async_script(FETCH, target) == "failed TypeError"  # type: ignore[attr-defined]
