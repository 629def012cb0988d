"""Fixtures: a configuration per test, the real daemon on free ports, a real SMTP sink.

The daemon runs in a thread with its own event loop, exactly as `gateway run`
runs it, so tests drive it with the blocking `smtplib` and read the store with
blocking queries (tests/store.py: each test runs on SQLite and on PostgreSQL).
Waiting is by polling the store for a condition (drain), never by sleeping a
fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import smtplib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
import structlog
import tomli_w
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from hypothesis import settings as hypothesis_settings

from gateway import config
from gateway.clock import Clock, stamp, utcnow
from gateway.config import Settings
from gateway.daemon import Daemon
from gateway.notify.worker import RetryPolicy
from gateway.store import queries
from gateway.store.db import Database, this_process
from tests.dovecot import Dovecot
from tests.dovecot import available as dovecot_available
from tests.store import StoreReader

# tests/web.py: the web inbox on a free port; tests/browser.py: Chromium for its tests;
# tests/tokens.py: an OAuth 2.0 token endpoint; tests/postgres.py: a PostgreSQL cluster;
# pytester runs a test session of its own.
pytest_plugins = [
    "tests.web",
    "tests.browser",
    "tests.tokens",
    "tests.postgres",
    "pytester",
]

# CI replays the same examples every run, so a landing never hangs on a new draw; local
# runs keep exploring (and a failure they find is kept in .hypothesis/ and replayed).
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

FAST_RETRY = RetryPolicy(
    first=timedelta(milliseconds=200),
    cap=timedelta(milliseconds=500),
    deadline=timedelta(days=2),
    probe_cap=timedelta(milliseconds=500),
)

BASE: dict[str, Any] = {
    "gateway": {"database": "gateway.db", "hostname": "gw.test"},
    "smtp": {"listen": ["127.0.0.1:0"], "max_message_size": "100KB"},
    "notify": {
        "enabled": True,
        "backend": "file",
        "file_dir": "alerts",
        "from": "Assignments <gateway@gw.test>",
    },
    "round_robin": {"enabled": True, "agents": ["alice", "bob", "carol"]},
    "agents": [
        {"id": "alice", "name": "Alice Doe", "email": "alice@agents.test"},
        {"id": "bob", "name": "Bob Roe", "email": "bob@agents.test"},
        {"id": "carol", "name": "Carol Poe", "email": "carol@agents.test"},
    ],
    "teams": [{"id": "billing", "agents": ["alice", "bob"]}],
    "inboxes": [
        {"address": "support@example.com", "aliases": ["support@gw.test"]},
        {"address": "sales@example.com"},
    ],
    "rules": [],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


# A test asking for `make_settings` (the daemon, the command line, a store of its own) runs
# on each store, unless marked `sqlite_only` with why (SQLite's own faults and plans), or
# `postgresql_only` (several daemons sharing one store). The PostgreSQL runs of the tests
# that run on both are marked `postgresql`: `make test` leaves them out for time (they
# double it), `make test-postgresql` runs them, CI runs both.
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only(why): runs on the SQLite store alone")
    config.addinivalue_line("markers", "postgresql_only: runs on the PostgreSQL store alone")
    config.addinivalue_line(
        "markers", "postgresql: the PostgreSQL run of a test run on both; `make test-postgresql`"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "make_settings" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("sqlite_only") is not None:
        return
    only = metafunc.definition.get_closest_marker("postgresql_only") is not None
    metafunc.parametrize(
        "store_url",
        [pytest.param("postgresql", id="postgresql")]
        if only
        else [
            pytest.param("sqlite", id="sqlite"),
            pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
        ],
        indirect=True,
    )


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """The database a test's configuration names: "" for the SQLite file beside it, else
    a fresh PostgreSQL database's URL."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        return ""
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """In-process `gateway` commands configure logging onto a captured stderr; undo it."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()  # its stream was this test's captured stderr
    logging.captureWarnings(False)


@pytest.fixture
def make_settings(tmp_path: Path, store_url: str) -> Callable[..., Settings]:
    """Write a configuration file from BASE with top-level keys replaced, and load it; its
    database is the test's `store_url`."""

    def make(**sections: Any) -> Settings:
        data = deepcopy(BASE)
        if store_url:
            data["gateway"] = {**data["gateway"], "database": store_url}
        data.update(sections)
        path = tmp_path / "gateway.toml"
        path.write_text(tomli_w.dumps(data))
        settings = config.load(path)
        _CONFIG_FILES[settings.gateway.database] = path
        return settings

    return make


# Each configuration make_settings wrote, by its database (a test's own, whichever store).
_CONFIG_FILES: dict[str, Path] = {}


def config_file(settings: Settings) -> Path:
    """The file `settings` were loaded from, for the `gateway` commands a test runs."""
    return _CONFIG_FILES[settings.gateway.database]


@dataclass
class RunningDaemon:
    daemon: Daemon
    thread: threading.Thread
    settings: Settings
    errors: list[BaseException] = field(default_factory=list)
    reader: StoreReader | None = None

    @property
    def port(self) -> int:
        return self.daemon.bound[0][1]

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the daemon did not stop"
        if self.errors:
            raise self.errors[0]

    def send(
        self,
        message: EmailMessage | bytes,
        to: list[str] | None = None,
        sender: str = "customer@example.org",
    ) -> dict[str, tuple[int, bytes]]:
        raw = message if isinstance(message, bytes) else message.as_bytes(policy=SMTP_POLICY)
        recipients = to or ["support@example.com"]
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            return client.sendmail(sender, recipients, raw)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        if self.reader is None:
            self.reader = StoreReader(self.settings.gateway.database)
        return self.reader.query(sql, args)

    def drain(self, timeout: float = 15.0) -> None:
        """Wait until intake has taken every message and no alert is due now."""

        def idle() -> bool:
            rows = self.query(
                "SELECT (SELECT count(*) FROM messages WHERE state = 'pending')"
                " + (SELECT count(*) FROM outbox WHERE state = 'pending' AND attempts = 0)"
            )
            return rows[0][0] == 0

        wait_until(idle, timeout, "intake and the outbox to drain")

    def conversations(self) -> list[Any]:
        return self.query("SELECT * FROM conversations ORDER BY id")

    def events(self, conversation_id: int, kind: str | None = None) -> list[Any]:
        sql = "SELECT * FROM events WHERE conversation_id = ?"
        args: tuple[Any, ...] = (conversation_id,)
        if kind is not None:
            sql += " AND kind = ?"
            args += (kind,)
        return self.query(sql + " ORDER BY id", args)


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., RunningDaemon]]:
    running: list[RunningDaemon] = []

    def start(
        settings: Settings, clock: Clock = utcnow, config_path: Path | None = None
    ) -> RunningDaemon:
        daemon = Daemon(settings, config_path=config_path, clock=clock, retry=FAST_RETRY, grace=5)
        ready = threading.Event()
        handle = RunningDaemon(daemon, threading.Thread(daemon=True), settings)

        def main() -> None:
            try:
                asyncio.run(daemon.run(ready=lambda _: ready.set()))
            except BaseException as error:
                handle.errors.append(error)
                ready.set()

        handle.thread = threading.Thread(target=main, name="gateway-daemon", daemon=True)
        handle.thread.start()
        ready.wait(30)
        if handle.errors:
            raise handle.errors[0]
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if handle.thread.is_alive():
            handle.stop()
        if handle.reader is not None:
            handle.reader.close()


@pytest.fixture
def daemon(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> RunningDaemon:
    return start_daemon(make_settings())


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


@contextlib.contextmanager
def running_dovecot(
    introspection_url: str | None = None, tls: tuple[Path, Path] | None = None
) -> Iterator[Dovecot]:
    """Dovecot with the users support and sales; with `introspection_url`, XOAUTH2 too;
    with `tls` (certificate, key), STARTTLS."""
    if not dovecot_available():
        pytest.fail("dovecot is not installed: `apt-get install dovecot-imapd` (.ci/run does)")
    # Not under pytest's tmp_path: that is root's 0700, and Dovecot reads as `nobody`.
    folder = Path(tempfile.mkdtemp(prefix="gateway-dovecot-"))
    folder.chmod(0o755)
    users = {"support": "s3cret", "sales": "s4les"}
    server = Dovecot(folder, free_port(), users, introspection_url, tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


class Sink:
    """A real SMTP server standing in as smarthost; keeps what it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[Envelope] = []
        self._controller: Controller | None = None

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink(free_port())
    server.start()
    yield server
    server.stop()


async def hold_oldest_alert(db: Database, seconds: float = 120) -> int:
    """Lease the oldest alert due to another attempt, as a live process in the middle of
    sending it holds it (this one, which has sessions with the store: one that has none is
    known dead on PostgreSQL); its outbox id."""
    async with db.transaction() as tx:
        [row] = await queries.claim_due(
            tx, stamp(utcnow()), ("alert",), f"{this_process()}/held", seconds, limit=1
        )
    return row.id


def smtp_notify(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "backend": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "from": "Assignments <gateway@gw.test>",
        **extra,
    }


def mail(
    subject: str = "Hello",
    sender: str = "Customer <customer@example.org>",
    to: str = "support@example.com",
    body: str = "Please help.\n",
    **headers: str,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    if "Message-ID" not in message:
        message["Message-ID"] = make_msgid(domain="example.org")
    message.set_content(body)
    return message
