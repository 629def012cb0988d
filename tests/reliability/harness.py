"""What the crash tests need: the daemon as a real process, mail that keeps coming,
and a wait that tells a slow queue from a stuck one.

SIGKILL must end a real process (no `finally`, no flush, no signal handler),
so the daemon runs as `python -m gateway run`, not in a thread. The senders
behave like an MTA: a message not answered 250 is sent again later, the same
message, so the store may see it twice and must keep it once.
"""

from __future__ import annotations

import contextlib
import functools
import imaplib
import json
import os
import random
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import tomli_w

from tests.dovecot import Dovecot
from tests.store import StoreReader

# Not GATEWAY_*: the gateway's loader refuses a GATEWAY_ variable naming no section.
KILLS = int(os.environ.get("CRASH_KILLS", "15"))
# Each run prints its seed; CRASH_SEED=<it> replays the same kill moments.
SEED = int(os.environ.get("CRASH_SEED", str(random.SystemRandom().randrange(2**32))))
# Up to this long after it was started the daemon is killed: sometimes while it
# starts (migrations, the secret, first IMAP contact), mostly while it works.
LONGEST_LIFE = 1.0
# A queue whose count has not moved for this long is stuck, however long the
# whole drain takes (a larger run leaves a longer backlog). Well below the
# outbox's two-minute lease, so an alert left waiting for one is caught.
STALL_SECONDS = 30.0
# A writer told to stop finishes its mail, but does not try for ever (10 s).
ABANDON_AFTER = 200


def write_config(folder: Path, sections: dict[str, Any]) -> Path:
    path = folder / "gateway.toml"
    path.write_text(tomli_w.dumps(sections))
    return path


def imap_inbox(dovecot: Dovecot, folder: Path) -> dict[str, Any]:
    """support@example.com connected to Dovecot's `support` (its password in `folder`),
    polled with IDLE."""
    secret = folder / "support.password"
    secret.write_text(dovecot.users["support"] + "\n")
    return {
        "address": "support@example.com",
        "imap": {
            "host": "127.0.0.1",
            "port": dovecot.port,
            "tls": False,
            "username": "support",
            "password_file": str(secret),
            "mode": "idle",
            # Mail appended before the first contact (killed while starting) is new too.
            "initial_sync": "all",
        },
    }


def query(database: Path | str, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """`sql` (with ? marks) on the SQLite file or the postgresql:// URL `database`."""
    return _reader(str(database)).query(sql, args)


@functools.cache
def _reader(database: str) -> StoreReader:
    # One per database: a PostgreSQL reader keeps its connection (the test's database is
    # dropped WITH (FORCE) after it, which ends that session); SQLite's opens per query.
    return StoreReader(database)


def count(database: Path | str, sql: str, args: tuple[Any, ...] = ()) -> int:
    return int(query(database, sql, args)[0][0])


def drain(database: Path | str, sql: str, stall: float = STALL_SECONDS) -> None:
    """Poll until `sql` counts nothing; fail if its count stops moving for `stall`
    seconds (stuck)."""
    last, moved = count(database, sql), time.monotonic()
    while last:
        time.sleep(0.05)
        now = count(database, sql)
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise AssertionError(f"stuck at {now} for {stall:.0f} s: {sql}")


class DaemonProcess:
    """`python -m gateway run` on a configuration; started again after every kill."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self._argv = [sys.executable, "-m", "gateway", "run", "--config", str(config_path)]
        # The test's own settings (CRASH_*) are no concern of the gateway's, and a
        # stray GATEWAY_* or systemd variable from the caller's shell must not
        # change what is tested.
        self._env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GATEWAY_") and k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC"}
        }
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.starts = 0
        self.killed_while_starting = 0

    def start(self) -> None:
        assert self._process is None
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            # On a line of its own: the killed run's last line may have been cut short.
            log.write(f'\n{{"event": "test.start", "n": {self.starts}}}\n'.encode())
            log.flush()
            self._process = subprocess.Popen(
                self._argv, env=self._env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self.starts += 1

    def ready(self) -> bool:
        """This start has logged `gateway.ready` (it listens for SMTP)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return b'"gateway.ready"' in log.read()

    def kill(self) -> datetime:
        """SIGKILL; when it was sent (logged too, as `test.killed`)."""
        assert self._process is not None
        if not self.ready():
            self.killed_while_starting += 1
        killed_at = datetime.now(UTC)
        self._process.kill()  # SIGKILL
        self._process.wait(30)
        self._process = None
        with self.log_path.open("a") as log:
            # On a line of its own: the killed run's last line may have been cut short.
            # The timestamp written as the gateway's own (structlog's ISO form, UTC).
            stamp = killed_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            log.write(f'\n{{"event": "test.killed", "timestamp": "{stamp}"}}\n')
        return killed_at

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit status."""
        assert self._process is not None
        self._process.terminate()
        status = self._process.wait(60)
        self._process = None
        return status

    def close(self) -> None:
        """After the test, whatever happened in it."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(30)
            self._process = None

    def logged(self, event: str) -> int:
        """How many times the daemon logged `event`, over all its runs."""
        return self.log_path.read_text(errors="replace").count(f'"event": "{event}"')

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def events(self, event: str) -> list[dict[str, Any]]:
        """Each line logging `event`, over all its runs, parsed (with its `timestamp`)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"event": "{event}"' not in line:
                continue
            with contextlib.suppress(ValueError):  # a killed run's last line, cut short
                found.append(json.loads(line))
        return found

    def log_lines(self, level: str) -> list[str]:
        return [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if f'"level": "{level}"' in line
        ]


def crash_repeatedly(
    daemon: DaemonProcess, rng: random.Random, kills: int, check: Callable[[int], None]
) -> None:
    """Start, let it live a random while, SIGKILL, `check(kill number)` the store it left;
    `kills` times; then start it for good.

    The random delay is the only sleep in these tests: it is what picks the
    moment of the crash, not a wait for anything to happen.
    """
    for kill in range(1, kills + 1):
        daemon.start()
        time.sleep(rng.uniform(0.05, LONGEST_LIFE))
        daemon.kill()
        check(kill)
    daemon.start()


def message_bytes(message_id: str, customer: str) -> bytes:
    message = EmailMessage()
    # Each its own customer and subject: each opens its own conversation and takes a
    # turn, and no sender reaches the cap on the alerts one sender's mail may cause.
    message["From"] = f"Customer <{customer}>"
    message["To"] = "support@example.com"
    message["Subject"] = f"Case {customer}"
    message["Message-ID"] = f"<{message_id}>"
    message.set_content("It broke again.\n")
    return message.as_bytes(policy=SMTP_POLICY)


class Client:
    """One SMTP client on its own connection, as a mail server is one: a connection
    refused or cut, or any answer but 250, leaves the message unacknowledged, to be
    sent again, the same message, on a new connection."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._smtp: smtplib.SMTP | None = None
        self.attempts = 0  # DATA tried, sent again included

    def send(self, sender: str, recipients: list[str], raw: bytes) -> bool:
        """True: answered 250."""
        try:
            if self._smtp is None:
                self._smtp = smtplib.SMTP("127.0.0.1", self._port, timeout=30)
            self.attempts += 1
            self._smtp.sendmail(sender, recipients, raw)
        except (OSError, smtplib.SMTPException):
            self.close()
            return False
        return True

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(OSError):
                self._smtp.close()
            self._smtp = None


@dataclass(frozen=True)
class Mail:
    key: str  # what the test knows it by
    sender: str
    recipients: list[str]
    raw: bytes


class Writer(threading.Thread):
    """Someone writing `compose(0)`, `compose(1)`, ... one after another until told to
    stop. Each goes until it is acknowledged, the one under way when told too: every
    mail tried ends in `acknowledged` (keys, in order), and the store owes each."""

    def __init__(
        self, name: str, port: int, compose: Callable[[int], Mail], stop: threading.Event
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._compose = compose
        self._halt = stop  # not `_stop`: Thread has a method of that name
        self.client = Client(port)
        self.acknowledged: list[str] = []

    @property
    def attempts(self) -> int:
        return self.client.attempts

    def run(self) -> None:
        while not self._halt.is_set():
            mail = self._compose(len(self.acknowledged))
            tries_after_stop = 0
            while not self.client.send(mail.sender, mail.recipients, mail.raw):
                tries_after_stop += self._halt.is_set()
                if tries_after_stop > ABANDON_AFTER:
                    return  # nothing answers after the test is done: it has failed already
                time.sleep(0.05)  # the daemon is down or starting: again shortly, as an MTA
            self.acknowledged.append(mail.key)
        self.client.close()


class Sender(Writer):
    """A client sending new customers' mail, each its own customer; acknowledged are
    Message-IDs (without <>)."""

    def __init__(self, name: str, port: int, stop: threading.Event) -> None:
        super().__init__(name, port, functools.partial(_customer_mail, name), stop)


def _customer_mail(name: str, number: int) -> Mail:
    message_id = f"{name}.{number}@crash.test"
    customer = f"{name}.{number}@customers.test"
    return Mail(message_id, customer, ["support@example.com"], message_bytes(message_id, customer))


class Appender(threading.Thread):
    """A mail program appending new mail to the connected mailbox, one after another."""

    def __init__(self, port: int, user: str, password: str, stop: threading.Event) -> None:
        super().__init__(name="appender", daemon=True)
        self._port = port
        self._user = user
        self._password = password
        self._halt = stop
        self.appended: list[str] = []  # Message-IDs, without <>
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            client = imaplib.IMAP4("127.0.0.1", self._port)
            client.login(self._user, self._password)
            try:
                while not self._halt.is_set():
                    number = len(self.appended)
                    message_id = f"append.{number}@crash.test"
                    raw = message_bytes(message_id, f"append.{number}@customers.test")
                    status, _ = client.append("INBOX", "", None, raw)
                    assert status == "OK", status
                    self.appended.append(message_id)
            finally:
                client.logout()
        except BaseException as error:  # the test reports it; a thread cannot raise into it
            self.error = error
