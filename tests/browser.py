"""Debian's Chromium, driven by Playwright's sync API, for the web inbox's tests.

One Chromium per session (launching it takes about half a second); each test opens fresh
contexts with `browser_context` (each its own cookies and storage), closed at its end.
`watch(context)` records what a page must never do: log a console error, throw an
uncaught exception, open a dialog (dismissed, as a user would click it away).

Browser tests are plain sync tests: the daemon they drive runs in a thread of its own
(tests/conftest.py, `start_daemon`). Playwright's sync API runs its event loop in the main
thread and marks it as that thread's running loop, which makes pytest-asyncio's tests and
`asyncio.run` refuse to start. So the loop is marked only while a test holds
`browser_context`; within such a test, run async code in another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    WebError,
    expect,
    sync_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",  # Chromium refuses to start its sandbox as root, which CI runs as
    "--disable-gpu",  # there is none: no time lost looking for one
    # Nothing leaves the machine: no update checks, no sync, no QUIC. Playwright passes most
    # of these too; listed so that a Playwright which stops doing so changes nothing here.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A shared CI machine can be slow, but a page that needs more than this is a finding.
TIMEOUT_MS = 10_000


@dataclass
class Chromium:
    browser: Browser
    loop: asyncio.AbstractEventLoop  # Playwright's


@contextlib.contextmanager
def running_loop(loop: asyncio.AbstractEventLoop | None) -> Iterator[None]:
    """Marks `loop` (None: no loop) as the main thread's running loop, as before at the end.

    asyncio has no public call for this; Playwright itself uses this one, and
    test_asyncio_runs_in_the_main_thread_after_a_browser_test fails if it stops working."""
    before = asyncio._get_running_loop()
    asyncio._set_running_loop(loop)
    try:
        yield
    finally:
        asyncio._set_running_loop(before)


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: `make peers` installs it")
    with pytest.MonkeyPatch.context() as env:
        # Playwright looks for browsers of its own here (its driver reads this as it starts):
        # in an empty folder, a launch that is not given Debian's Chromium fails instead of
        # quietly using one from ~/.cache/ms-playwright.
        env.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path_factory.mktemp("no-browsers")))
        playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        expect.set_options(timeout=TIMEOUT_MS)
        loop = asyncio.get_running_loop()
        with running_loop(None):
            yield Chromium(browser, loop)
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def browser_context(chromium: Chromium) -> Iterator[Callable[..., BrowserContext]]:
    """Opens contexts (keyword arguments: Browser.new_context's); all closed at the test's end."""
    opened: list[BrowserContext] = []

    def open_context(**options: Any) -> BrowserContext:
        context = chromium.browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        opened.append(context)
        return context

    with running_loop(chromium.loop):
        yield open_context
        for context in opened:
            context.close()


@dataclass
class Watch:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """All of them, for `assert seen.problems == []`."""
        return self.console_errors + self.page_errors + self.dialogs


def watch(context: BrowserContext) -> Watch:
    """Records console errors, uncaught exceptions and dialogs of every page of `context`;
    call it before the first page loads."""
    seen = Watch()

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.console_errors.append(message.text)

    def error(error: WebError) -> None:
        seen.page_errors.append(str(error.error))

    def dialog(dialog: Dialog) -> None:
        seen.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    context.on("console", console)
    context.on("weberror", error)
    context.on("dialog", dialog)
    return seen
