"""The browser fixtures themselves (tests/browser.py), on pages a stdlib HTTP server serves."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect

from tests.browser import watch

ROOT = Path(__file__).resolve().parents[2]

# Chromium asks every site for /favicon.ico, and the 404 is a console error: "data:," says
# there is none.
PAGES = {
    "/": b"""<!doctype html><title>Click</title><link rel="icon" href="data:,">
<button onclick="document.getElementById('state').textContent = 'Clicked'">Go</button>
<p id="state">Waiting</p>""",
    "/alert": b"""<!doctype html><title>Alert</title><link rel="icon" href="data:,">
<script>alert("boom")</script>""",
}


class Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGES.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        if self.path == "/":
            self.send_header("Set-Cookie", "session=one; Path=/; HttpOnly")
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: object) -> None:
        pass  # a line on stderr per request says nothing a failing test would need


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, name="pages", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_a_click_changes_the_page(
    browser_context: Callable[..., BrowserContext], site: str
) -> None:
    context = browser_context()
    seen = watch(context)
    page = context.new_page()
    page.goto(site)

    page.get_by_role("button", name="Go").click()

    expect(page.get_by_role("paragraph")).to_have_text("Clicked")
    assert seen.problems == []


def test_an_alert_is_dismissed_and_recorded(
    browser_context: Callable[..., BrowserContext], site: str
) -> None:
    context = browser_context()
    seen = watch(context)
    page = context.new_page()

    page.goto(f"{site}/alert")

    assert seen.dialogs == ["alert: boom"]
    assert seen.problems == ["alert: boom"]


def test_contexts_do_not_share_cookies(
    browser_context: Callable[..., BrowserContext], site: str
) -> None:
    first, second = browser_context(), browser_context()

    first.new_page().goto(site)

    assert [cookie["name"] for cookie in first.cookies()] == ["session"]
    assert second.cookies() == []


def test_asyncio_runs_in_the_main_thread_after_a_browser_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Playwright marks its loop as running in the main thread; pytest-asyncio's tests and
    `asyncio.run` after a browser test refuse to start while it is."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest('pytest_plugins = ["tests.browser"]')
    tests = pytester.makepyfile(
        """
        import asyncio

        def test_browser(browser_context):
            browser_context().new_page().set_content("<p>Hello</p>")

        async def test_async():
            await asyncio.sleep(0)

        def test_asyncio_run():
            asyncio.run(asyncio.sleep(0))
        """
    )
    # the suite's own configuration: asyncio_mode, filterwarnings = error, the timeout
    config = ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(pytester.path)]
    result = pytester.runpytest_subprocess(*config, "-p", "no:cacheprovider", tests)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=3)
