"""The LMTP door (RFC 2033): LHLO, one answer per recipient after DATA, a unix socket.

Python's smtplib.LMTP reads one answer after DATA, as SMTP has it, so these tests
speak LMTP over a plain socket, as an MTA's LMTP client does.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import GatewayError
from tests.conftest import RunningDaemon, free_port, mail
from tests.store import write_lock_held

pytestmark = pytest.mark.integration


class Lmtp:
    """An LMTP client over a socket: each command's reply lines, as they come."""

    def __init__(self, address: tuple[str, int] | str) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(address)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> list[str]:
        """One reply: its lines, up to the one without a '-' after the code."""
        lines = []
        while True:
            line = self.file.readline().decode().rstrip("\r\n")
            assert line, "the server closed the connection"
            lines.append(line)
            if line[3:4] != "-":
                return lines

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()[-1]

    def data(self, raw: bytes, answers: int) -> list[str]:
        assert self.command("DATA").startswith("354")
        body = raw.replace(b"\r\n.", b"\r\n..")
        self.sock.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        return [self.reply()[-1] for _ in range(answers)]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def socket_path() -> str:
    # Short: a unix socket's path is at most 107 bytes, and pytest's tmp_path is long.
    return str(Path(tempfile.mkdtemp(prefix="gw-")) / "lmtp.sock")


@pytest.fixture
def lmtp_daemon(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    socket_path: str,
) -> RunningDaemon:
    port = free_port()
    running = start_daemon(make_settings(lmtp={"listen": [f"127.0.0.1:{port}", socket_path]}))
    assert running.daemon.lmtp_bound == [("127.0.0.1", port), socket_path]
    return running


def deliver(address: tuple[str, int] | str, recipients: list[str], raw: bytes) -> list[str]:
    client = Lmtp(address)
    try:
        assert client.command("LHLO mta.test").startswith("250")
        assert client.command("MAIL FROM:<customer@example.org>").startswith("250")
        accepted = [r for r in recipients if client.command(f"RCPT TO:<{r}>").startswith("250")]
        return client.data(raw, len(accepted))
    finally:
        client.close()


def test_each_recipient_gets_its_own_answer_after_the_commit(lmtp_daemon: RunningDaemon) -> None:
    port = lmtp_daemon.daemon.lmtp_bound[0]
    raw = mail("Both").as_bytes()
    recipients = ["support@example.com", "sales@example.com", "support@gw.test"]
    answers = deliver(port, recipients, raw)
    assert answers == ["250 2.0.0 OK: queued"] * 3
    rows = lmtp_daemon.query("SELECT inbox, envelope_to FROM messages ORDER BY inbox")
    assert [(r["inbox"], r["envelope_to"]) for r in rows] == [
        ("sales@example.com", '["sales@example.com"]'),
        ("support@example.com", '["support@example.com", "support@gw.test"]'),
    ]


def test_a_unix_socket_takes_mail_and_only_its_group_may_use_it(
    lmtp_daemon: RunningDaemon, socket_path: str
) -> None:
    assert Path(socket_path).stat().st_mode & 0o777 == 0o660
    assert deliver(socket_path, ["support@example.com"], mail("Over the socket").as_bytes()) == [
        "250 2.0.0 OK: queued"
    ]
    lmtp_daemon.drain()
    assert [c["subject"] for c in lmtp_daemon.conversations()] == ["Over the socket"]


def test_an_unknown_recipient_is_refused_at_rcpt_and_gets_no_data_answer(
    lmtp_daemon: RunningDaemon,
) -> None:
    client = Lmtp(lmtp_daemon.daemon.lmtp_bound[0])
    try:
        client.command("LHLO mta.test")
        client.command("MAIL FROM:<customer@example.org>")
        assert client.command("RCPT TO:<nobody@example.com>").startswith("550 5.1.1")
        assert client.command("RCPT TO:<support@example.com>").startswith("250")
        assert client.data(mail("One").as_bytes(), 1) == ["250 2.0.0 OK: queued"]
        assert client.command("NOOP").startswith("250")  # no answer was left unread
    finally:
        client.close()


def test_helo_and_ehlo_are_not_lmtp(lmtp_daemon: RunningDaemon) -> None:
    client = Lmtp(lmtp_daemon.daemon.lmtp_bound[0])
    try:
        assert client.command("EHLO mta.test").startswith("500")
        assert client.command("HELO mta.test").startswith("500")
        assert "PIPELINING" in " ".join(
            (client.sock.sendall(b"LHLO mta.test\r\n"), client.reply())[1]
        )
    finally:
        client.close()


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before the daemon opens its store: a held lock fails a commit in 0.3 s."""
    monkeypatch.setattr("gateway.store.db.LOCK_WAIT_MS", 300)


def test_a_store_failure_defers_each_recipient(
    short_busy_timeout: None, lmtp_daemon: RunningDaemon
) -> None:
    with write_lock_held(lmtp_daemon.settings.gateway.database):
        answers = deliver(
            lmtp_daemon.daemon.lmtp_bound[0],
            ["support@example.com", "sales@example.com"],
            mail("Held").as_bytes(),
        )
    assert [a[:3] for a in answers] == ["451", "451"]
    assert lmtp_daemon.query("SELECT count(*) FROM messages")[0][0] == 0


def test_a_message_over_the_size_limit_is_refused_for_each_recipient(
    lmtp_daemon: RunningDaemon,
) -> None:
    big = mail("Big", body="x" * 200_000 + "\n").as_bytes()  # the tests' limit is 100KB
    answers = deliver(
        lmtp_daemon.daemon.lmtp_bound[0], ["support@example.com", "sales@example.com"], big
    )
    assert answers == ["552 5.3.4 Message too big for this gateway"] * 2


def test_a_socket_another_process_listens_on_is_not_taken_from_it(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    socket_path: str,
) -> None:
    """Its path names one listener: a second daemon (several share a PostgreSQL store)
    would otherwise unlink the first's socket and take its mail over unseen."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen()
    try:
        with pytest.raises(GatewayError) as refused:
            start_daemon(make_settings(lmtp={"listen": [socket_path]}))
    finally:
        listener.close()
    assert str(refused.value) == (
        f"cannot listen for LMTP on {socket_path}: another process listens on it"
    )
