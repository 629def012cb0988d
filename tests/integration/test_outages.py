"""Outages cost nothing: a full disk or a smarthost down, and the daemon carries on after."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from email import message_from_bytes
from email.policy import SMTP
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

from gateway.config import Settings
from tests.conftest import BASE, RunningDaemon, Sink, free_port, mail, smtp_notify, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MB file system of its own (tmpfs), so filling it harms nothing else."""
    if os.geteuid() != 0:
        pytest.fail("mounting a small file system needs root (CI runs as root)")
    folder = Path(tempfile.mkdtemp(prefix="gateway-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
        folder.rmdir()


def fill(folder: Path) -> Path:
    """Take every free byte; the file that holds them."""
    filler = folder / "filler"
    # Unbuffered: a buffered file would still hold bytes to flush on closing a full disk.
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def ingest(config: Path, raw: bytes) -> int:
    command = ["ingest", "--to", "support@example.com", "--config", str(config)]
    return subprocess.run(
        [sys.executable, "-m", "gateway", *command],
        input=raw,
        capture_output=True,
        timeout=60,
    ).returncode


@pytest.mark.sqlite_only("a full disk under the SQLite file; PostgreSQL's disk is its server's")
def test_a_full_disk_answers_451_and_75_writes_nothing_and_recovers_without_a_restart(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    small_disk: Path,
) -> None:
    settings = make_settings(
        gateway={"database": str(small_disk / "gateway.db"), "hostname": "gw.test"},
        smtp={**BASE["smtp"], "max_message_size": "2MB"},
    )
    running = start_daemon(settings)
    config = Path(settings.notify.file_dir).parent / "gateway.toml"
    big = mail("attachment", body=("y" * 76 + "\n") * 13_000).as_bytes(policy=SMTP)  # 1 MB
    filler = fill(small_disk)

    with pytest.raises(Exception) as refused:
        running.send(big)
    assert getattr(refused.value, "smtp_code", None) == 451
    assert ingest(config, big) == 75  # EX_TEMPFAIL: the MTA keeps it and tries again
    with sqlite3.connect(settings.gateway.database, timeout=10) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)

    filler.unlink()
    assert running.send(big) == {}  # the same process, now that there is room
    assert ingest(config, mail("piped after").as_bytes(policy=SMTP)) == 0
    running.drain()
    assert sorted(c["subject"] for c in running.conversations()) == ["attachment", "piped after"]


def test_alerts_wait_out_a_smarthost_outage_and_each_is_notified_once(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    port = free_port()
    running = start_daemon(make_settings(notify=smtp_notify(port)))
    for n in range(5):
        running.send(mail(f"while it is down {n}"))
    # One alert probes the smarthost, the waits growing; the others wait for it, each
    # with its notify_failed.
    wait_until(
        lambda: running.query(
            "SELECT count(*) = 5 AND max(attempts) >= 3 FROM outbox WHERE kind = 'alert'"
        )[0][0],
        timeout=30,
        what="three probes",
    )
    told = running.query("SELECT DISTINCT conversation_id FROM events WHERE kind = 'notify_failed'")
    assert len(told) == 5
    [probed] = running.query("SELECT conversation_id FROM outbox WHERE attempts >= 3")
    failed = running.query(
        "SELECT at, detail FROM events WHERE kind = 'notify_failed' AND conversation_id = ?",
        (probed[0],),
    )
    waits = [
        datetime.fromisoformat(json.loads(row["detail"])["retry_at"])
        - datetime.fromisoformat(row["at"])
        for row in failed[:3]
    ]
    assert waits == sorted(waits) and waits[0] < waits[2]  # exponential, up to its cap
    late = Sink(port)
    late.start()
    try:
        wait_until(
            lambda: len(running.query("SELECT id FROM events WHERE kind = 'notified'")) == 5,
            timeout=30,
            what="every alert to go out",
        )
        ids = [message_from_bytes(e.original_content)["Message-ID"] for e in late.received]
        assert len(ids) == 5 and len(set(ids)) == 5
    finally:
        late.stop()
    assert {row[0] for row in running.query("SELECT state FROM outbox")} == {"done"}


class CountingSmarthost(Sink):
    """Counts its SMTP sessions; `hang_up` ends each session after one message."""

    def __init__(self, port: int, hang_up: bool = False) -> None:
        super().__init__(port)
        self.sessions = 0
        self._hang_up = hang_up

    async def handle_EHLO(
        self, server: object, session: object, envelope: object, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname  # type: ignore[attr-defined]  # a hook must, says aiosmtpd
        return responses

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        if self._hang_up:
            transport = server.transport  # type: ignore[attr-defined]
            asyncio.get_running_loop().call_soon(transport.close)  # after the 250 is written
        return await super().handle_DATA(server, session, envelope)


def alerts_due_now(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon], port: int
) -> Settings:
    """Five alerts held back while the smarthost was down, due again now, daemon stopped."""
    settings = make_settings(notify=smtp_notify(port))
    running = start_daemon(settings)
    for n in range(5):
        running.send(mail(f"backlog {n}"))
    wait_until(
        lambda: running.query(
            "SELECT count(*) = 5 AND count(last_error) = 5 FROM outbox WHERE kind = 'alert'"
        )[0][0],
        what="five alerts failed or held back",
    )
    running.stop()
    running.query("UPDATE outbox SET due_at = '2000-01-01T00:00:00.000000+00:00'")
    return settings


def test_a_backlog_of_alerts_goes_out_in_one_smarthost_session(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    port = free_port()
    settings = alerts_due_now(make_settings, start_daemon, port)
    smarthost = CountingSmarthost(port)
    smarthost.start()
    try:
        running = start_daemon(settings)
        wait_until(lambda: _notified(running) == 5, what="every alert")
        assert len(smarthost.received) == 5
        assert smarthost.sessions == 1  # one connection, TLS and login for the whole backlog
    finally:
        smarthost.stop()


def test_a_smarthost_ending_the_session_between_alerts_loses_none_and_doubles_none(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    port = free_port()
    settings = alerts_due_now(make_settings, start_daemon, port)
    smarthost = CountingSmarthost(port, hang_up=True)
    smarthost.start()
    try:
        running = start_daemon(settings)
        wait_until(lambda: _notified(running) == 5, what="every alert")
        ids = [message_from_bytes(e.original_content)["Message-ID"] for e in smarthost.received]
        assert len(ids) == 5 and len(set(ids)) == 5
        assert smarthost.sessions == 5  # a new session each time the old one was gone
        failed = running.query("SELECT count(*) FROM events WHERE kind = 'notify_failed'")[0][0]
        assert failed == 5  # the outage's, none since
    finally:
        smarthost.stop()


def _notified(running: RunningDaemon) -> int:
    return int(running.query("SELECT count(*) FROM events WHERE kind = 'notified'")[0][0])
