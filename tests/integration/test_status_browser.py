"""The status page in a real browser (headless Chromium driven by selenium): what the
person on call sees while one of two upstreams dies, with and without JavaScript.

On failure a screenshot is written under the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import HOST, Gateway, GatewayFactory, ScriptedUpstream, free_port, require_tool, wait_until
from test_metrics import app_upstream, status_handler

__all__ = ["app_upstream"]

PHONE = (390, 844)


def chrome(javascript: bool) -> Any:
    """A headless Chromium (Debian's chromium + chromium-driver), console logs kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = require_tool("chromedriver", "/usr/bin/chromedriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = require_tool("chromium", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={PHONE[0]},{PHONE[1]}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if not javascript:
        opts.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))


class Traffic:
    """Requests to both routes from a background thread until stopped."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as c:
            while not self.done.wait(0.02):
                for path in ("/public/x", "/orders/x"):
                    with contextlib.suppress(httpx.HTTPError):
                        c.get(path)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(10)


@pytest.fixture
def site(
    gateway: GatewayFactory, app_upstream: ScriptedUpstream, scripted: Any
) -> Iterator[tuple[Gateway, int, ScriptedUpstream]]:
    dying: ScriptedUpstream = scripted(status_handler)
    mport = free_port()
    gw = gateway(
        {
            "app": app_upstream.url,
            # A breaker on the dying upstream: the page must show it open once it dies.
            "dying": {"base_url": dying.url, "circuit_breaker": {"failure_threshold": 2, "open_secs": 60}},
        },
        [
            {"id": "public", "path": "/public/*", "upstream_id": "app"},
            {"id": "orders", "path": "/orders/*", "upstream_id": "dying"},
        ],
        observability={
            "metrics_enabled": True,
            "metrics_port": mport,
            "health_checks": {"check_upstreams": True},
        },
    )
    assert wait_until(lambda: _ready(mport), 15, 0.1)
    yield gw, mport, dying


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://{HOST}:{port}/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _severe(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_page_follows_an_upstream_dying(
    site: tuple[Gateway, int, ScriptedUpstream], tmp_path: Path
) -> None:
    gw, mport, dying = site
    driver = chrome(javascript=True)
    try:
        with Traffic(gw.url):
            driver.get(f"http://{HOST}:{mport}/status")
            assert driver.title == "apigate status"
            assert _text(driver, 'tr[data-key="public"] th') == "public"
            assert _text(driver, 'tr[data-key="orders"] th') == "orders"
            dying_target = f'tr[data-key="dying/{HOST}:{dying.port}"]'
            assert _text(driver, dying_target + ' td[data-p$="/healthy"]') == "up"  # the active check
            ok_cell = 'td[data-p="routes[route=public]/status_classes/2xx"]'

            # The numbers change between two refreshes, without reloading the page.
            driver.execute_script("window.__same_page = true")
            assert wait_until(lambda: _text(driver, "#updated").startswith("updated"), 15, 0.2)
            first = _text(driver, ok_cell)
            assert wait_until(lambda: _text(driver, ok_cell) != first, 15, 0.2), first
            assert driver.execute_script("return window.__same_page") is True

            # The upstream dies: its target is marked down, its route's 5xx show.
            dying.stop()
            health = dying_target + ' td[data-p$="/healthy"]'
            assert wait_until(lambda: _text(driver, health) == "DOWN", 20, 0.3)
            cell = driver.find_element("css selector", health)
            assert cell.get_attribute("class") == "bad"
            assert _text(driver, dying_target + ' td[data-p$="/active_check"]') == "DOWN"
            assert wait_until(
                lambda: _text(driver, 'td[data-p="routes[route=orders]/error_rate"]') != "0.0%", 15, 0.3
            )
            assert wait_until(lambda: _text(driver, "#findings").strip() != "", 15, 0.3)
            breaker = dying_target + ' td[data-p$="/breaker"]'
            assert wait_until(lambda: _text(driver, breaker) == "open", 20, 0.3)
            # Readable on a phone: nothing wider than the screen but the tables' own scroll boxes.
            assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
            assert driver.execute_script("return window.__same_page") is True
            assert _severe(driver) == []
    except BaseException:
        driver.save_screenshot(str(tmp_path / "status.png"))
        raise
    finally:
        driver.quit()


def test_without_javascript_the_first_paint_is_the_page(
    site: tuple[Gateway, int, ScriptedUpstream], tmp_path: Path
) -> None:
    gw, mport, _ = site
    for _ in range(5):
        assert httpx.get(gw.url + "/public/x", timeout=10).status_code == 200
    assert wait_until(
        lambda: b'route="public",status="200"} 5' in httpx.get(f"http://{HOST}:{mport}/metrics").content,
        10,
        0.2,
    )
    driver = chrome(javascript=False)
    try:
        driver.get(f"http://{HOST}:{mport}/status")
        assert _text(driver, 'tr[data-key="public"] th') == "public"
        assert _text(driver, 'td[data-p="routes[route=public]/status_classes/2xx"]') == "5"
        assert _text(driver, "#updated") == "server-rendered"
        assert driver.find_elements("css selector", "svg.spark")
        # No script runs: two refresh periods later the page is still the server's.
        assert not wait_until(lambda: _text(driver, "#updated") != "server-rendered", 5, 0.5)
        assert _severe(driver) == []
    except BaseException:
        driver.save_screenshot(str(tmp_path / "status-nojs.png"))
        raise
    finally:
        driver.quit()
