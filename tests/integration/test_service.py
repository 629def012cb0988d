"""`gateway run` as systemd runs it: notify protocol, watchdog, SIGHUP reload, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from aiosmtpd.smtp import Envelope

from gateway.config import Settings
from gateway.daemon import needs_restart
from tests.conftest import (
    BASE,
    RunningDaemon,
    Sink,
    children,
    free_port,
    mail,
    smtp_notify,
    wait_until,
)

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 200_000


class Systemd:
    """The notify socket a service manager listens on, and the datagrams it got."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(30)
        self.received: list[dict[str, str]] = []

    def next(self) -> dict[str, str]:
        data = self._sock.recv(4096).decode()
        message = dict(line.split("=", 1) for line in data.splitlines())
        self.received.append(message)
        return message

    def wait_for(self, key: str) -> dict[str, str]:
        while True:
            message = self.next()
            if key in message:
                return message

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    manager = Systemd(tmp_path / "notify.sock")
    yield manager
    manager.close()


class Service:
    def __init__(self, folder: Path, systemd: Systemd) -> None:
        self.port = free_port()
        self.config = folder / "gateway.toml"
        self.database = folder / "gateway.db"
        self.write()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **_environment_without_gateway(),
                "PYTHONUNBUFFERED": "1",
                "NOTIFY_SOCKET": str(systemd.path),
                "WATCHDOG_USEC": str(WATCHDOG_USEC),
            },
        )

    def write(self, **sections: Any) -> None:
        data = deepcopy(BASE)
        data["smtp"] = {**data["smtp"], "listen": [f"127.0.0.1:{self.port}"]}
        data.update(sections)
        self.config.write_text(tomli_w.dumps(data))

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM; the log lines it wrote."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=60)
        return [json.loads(line) for line in err.splitlines() if line.startswith("{")]

    def assignee_of(self, subject: str) -> str | None:
        with sqlite3.connect(self.database, timeout=10) as conn:
            row = conn.execute(
                "SELECT assignee FROM conversations WHERE subject = ?", (subject,)
            ).fetchone()
        return None if row is None else row[0]


def _environment_without_gateway() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "NOTIFY_"))}


@pytest.fixture
def service(tmp_path: Path, systemd: Systemd) -> Iterator[Callable[[], Service]]:
    started: list[Service] = []

    def start() -> Service:
        started.append(Service(tmp_path, systemd))
        return started[-1]

    yield start
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.communicate()


def test_it_says_ready_pings_the_watchdog_and_says_stopping(
    service: Callable[[], Service], systemd: Systemd
) -> None:
    running = service()
    ready = systemd.wait_for("READY")
    assert ready["READY"] == "1" and f"127.0.0.1:{running.port}" in ready["STATUS"]
    assert systemd.next() == {"WATCHDOG": "1"} and systemd.next() == {"WATCHDOG": "1"}
    running.stop()
    assert "STOPPING" in systemd.wait_for("STOPPING")
    assert running.process.returncode == 0


def test_a_stop_signalled_to_the_whole_control_group_logs_no_warning(
    service: Callable[[], Service], systemd: Systemd
) -> None:
    running = service()
    systemd.wait_for("READY")
    with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
        client.sendmail("c@example.org", ["support@example.com"], mail("first").as_bytes())
        wait_until(lambda: running.assignee_of("first"), what="the parser process to work")
        # systemd's KillMode=control-group signals the daemon's processes with the daemon;
        # the mail it still has in hand then (here: sent after the signal) must be parsed.
        for pid in children(running.process.pid):
            os.kill(pid, signal.SIGTERM)
        client.sendmail("c@example.org", ["support@example.com"], mail("in hand").as_bytes())
    wait_until(lambda: running.assignee_of("in hand"), what="the message to be routed")
    lines = running.stop()
    assert running.process.returncode == 0
    assert [line for line in lines if line["level"] in ("warning", "error", "critical")] == []


ACME_TO_CAROL = [
    {"name": "ACME is Carol's", "sender_domain": ["acme.com"], "assign_to": "agent:carol"}
]


def test_sighup_applies_new_rules_without_dropping_a_connection(
    service: Callable[[], Service], systemd: Systemd
) -> None:
    running = service()
    systemd.wait_for("READY")
    with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
        client.sendmail(
            "wile@acme.com", ["support@example.com"], mail("first", "wile@acme.com").as_bytes()
        )
        wait_until(lambda: running.assignee_of("first"), what="the first to be routed")
        assert running.assignee_of("first") == "alice"  # the rotation: no rule yet
        running.write(rules=ACME_TO_CAROL)
        running.process.send_signal(signal.SIGHUP)
        assert "RELOADING" in systemd.wait_for("RELOADING")
        systemd.wait_for("READY")
        # The same connection, still open, goes on; the new rule takes the next message.
        client.sendmail(
            "road@acme.com", ["support@example.com"], mail("second", "road@acme.com").as_bytes()
        )
    wait_until(lambda: running.assignee_of("second"), what="the second to be routed")
    assert running.assignee_of("second") == "carol"
    events = [line["event"] for line in running.stop()]
    assert "gateway.reloaded" in events


def test_a_bad_file_on_sighup_is_refused_with_its_reason_and_the_old_rules_stay(
    service: Callable[[], Service], systemd: Systemd
) -> None:
    running = service()
    systemd.wait_for("READY")
    running.write(rules=[{"name": "broken", "assign_to": "agent:nobody"}])
    running.process.send_signal(signal.SIGHUP)
    systemd.wait_for("RELOADING")
    systemd.wait_for("READY")
    with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
        client.sendmail("c@example.org", ["support@example.com"], mail("after").as_bytes())
    wait_until(lambda: running.assignee_of("after"), what="the message to be routed")
    assert running.assignee_of("after") == "alice"
    lines = running.stop()
    [refused] = [line for line in lines if line["event"] == "gateway.reload_refused"]
    assert "rules[0].assign_to" in refused["reason"] and "'agent:nobody'" in refused["reason"]
    assert running.process.returncode == 0


def test_a_reload_names_the_changes_that_wait_for_a_restart(
    make_settings: Callable[..., Settings],
) -> None:
    old = make_settings()
    new = make_settings(
        smtp={**BASE["smtp"], "listen": ["127.0.0.1:2526"]},
        rules=ACME_TO_CAROL,
    )
    assert needs_restart(old, new) == ["smtp.listen"]
    assert needs_restart(old, make_settings(rules=ACME_TO_CAROL)) == []


class SlowSmarthost(Sink):
    """Takes its time over each alert, so a stop arrives while one is being sent."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.sending = threading.Event()

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        self.sending.set()
        await asyncio.sleep(1.0)
        return await super().handle_DATA(server, session, envelope)


def test_a_stop_waits_for_the_alert_being_sent_and_records_it(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    smarthost = SlowSmarthost(free_port())
    smarthost.start()
    try:
        running = start_daemon(make_settings(notify=smtp_notify(smarthost.port)))
        running.send(mail("alert in flight"))
        assert smarthost.sending.wait(15)
        running.stop()  # joins the daemon: it has exited
        assert len(smarthost.received) == 1
        assert [row["state"] for row in running.query("SELECT state FROM outbox")] == ["done"]
        assert len(running.events(1, "notified")) == 1  # not sent again at the next start
    finally:
        smarthost.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_with_sigkill_it_leaves_no_process_behind(
    service: Callable[[], Service], systemd: Systemd
) -> None:
    running = service()
    systemd.wait_for("READY")
    with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
        client.sendmail("c@example.org", ["support@example.com"], mail("parsed").as_bytes())
    wait_until(lambda: running.assignee_of("parsed"), what="the message to be routed")
    helpers = children(running.process.pid)
    assert helpers  # intake's parser process (and multiprocessing's resource tracker)
    running.process.kill()
    running.process.communicate(timeout=10)
    wait_until(lambda: not any(_alive(pid) for pid in helpers), what="its helpers to end")


def test_a_second_gateway_on_the_same_database_is_refused_until_the_first_is_gone(
    service: Callable[[], Service], systemd: Systemd
) -> None:
    first = service()
    systemd.wait_for("READY")
    second = service()  # the same folder: the same database
    _, err = second.process.communicate(timeout=60)
    assert second.process.returncode == 1
    assert err.splitlines()[-1] == (
        f"{first.database}: another gateway holds this database;"
        " stop it, or give this one a database of its own"
    )
    command = [sys.executable, "-m", "gateway", "conversations", "--config", str(first.config)]
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    first.process.kill()  # SIGKILL: the kernel lets go of its lock
    first.process.communicate(timeout=10)
    third = service()
    systemd.wait_for("READY")
    third.stop()
    assert third.process.returncode == 0


def test_a_reload_waiting_on_a_slow_file_does_not_hold_up_mail(
    service: Callable[[], Service], systemd: Systemd, tmp_path: Path
) -> None:
    running = service()
    systemd.wait_for("READY")
    certificate = tmp_path / "certificate.pem"
    os.mkfifo(certificate)  # read, it waits until someone writes: a file on a stalled disk
    listen = [f"127.0.0.1:{running.port}"]
    running.write(smtp={**BASE["smtp"], "listen": listen, "tls_cert": str(certificate)})
    running.process.send_signal(signal.SIGHUP)
    systemd.wait_for("RELOADING")
    writer = wait_until(lambda: _writer_of(certificate), what="the reload to read the file")
    try:
        with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
            client.sendmail("c@example.org", ["support@example.com"], mail("meanwhile").as_bytes())
        wait_until(lambda: running.assignee_of("meanwhile"), what="the message to be routed")
    finally:
        os.write(writer, b"not a certificate")
        os.close(writer)
    systemd.wait_for("READY")
    refused = [line for line in running.stop() if line["event"] == "gateway.reload_refused"]
    assert "smtp.tls_cert" in refused[0]["reason"]


def _writer_of(fifo: Path) -> int | None:
    """The FIFO's writing end, once a reader has it open (None before)."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody reads it yet
        return None


def test_a_librarys_log_line_is_a_json_line_like_the_gateways(
    service: Callable[[], Service], systemd: Systemd
) -> None:
    running = service()
    systemd.wait_for("READY")
    with smtplib.SMTP("127.0.0.1", running.port, timeout=30) as client:
        assert client.docmd("LHLO", "mta.test")[0] == 500  # LMTP's greeting, at the SMTP port
    lines = running.stop()
    [unrecognised] = [line for line in lines if "unrecognised" in line["event"]]
    assert (unrecognised["logger"], unrecognised["level"]) == ("mail.log", "warning")
    assert "timestamp" in unrecognised
