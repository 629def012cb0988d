"""The SMTP relay: what it takes, what it refuses, and that taken means stored."""

from __future__ import annotations

import re
import smtplib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.policy import SMTP
from pathlib import Path
from typing import BinaryIO

import pytest
from structlog.testing import capture_logs

from gateway.config import Settings
from gateway.ingress.smtp import Relay
from tests.conftest import RunningDaemon, mail, wait_until
from tests.store import write_lock_held

pytestmark = pytest.mark.integration


def test_mail_sent_over_smtp_is_in_the_store_byte_for_byte(daemon: RunningDaemon) -> None:
    message = mail("Where is my order?")
    raw = message.as_bytes(policy=SMTP)
    assert daemon.send(raw) == {}
    # 250 was answered: the raw message must already be committed, before intake.
    rows = daemon.query(
        "SELECT raw, inbox, source, envelope_from FROM messages JOIN raw_mail ON message = id"
    )
    assert len(rows) == 1
    assert bytes(rows[0]["raw"]) == raw
    assert (rows[0]["inbox"], rows[0]["source"]) == ("support@example.com", "smtp")
    assert rows[0]["envelope_from"] == "customer@example.org"


def test_unknown_recipient_is_refused_with_550_and_nothing_stored(daemon: RunningDaemon) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        daemon.send(mail(), to=["nobody@example.com"])
    code, text = refused.value.recipients["nobody@example.com"]
    assert code == 550 and text.startswith(b"5.1.1")
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == 0


def test_relay_to_a_foreign_domain_is_refused(daemon: RunningDaemon) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        daemon.send(mail(), to=["someone@elsewhere.net"])
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == 0


def test_oversized_message_gets_552_and_nothing_stored(daemon: RunningDaemon) -> None:
    big = mail(body=("y" * 900 + "\n") * 150).as_bytes(policy=SMTP)  # > 100KB configured
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        client.mail("customer@example.org")  # no SIZE declared: caught during DATA
        client.rcpt("support@example.com")
        code, text = client.data(big)
    assert (code, text[:5]) == (552, b"5.3.4")
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == 0


def test_declared_size_over_the_limit_gets_552_before_data(daemon: RunningDaemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        assert "size" in client.esmtp_features
        code, text = client.mail("customer@example.org", ["SIZE=5000000"])
    assert (code, text[:5]) == (552, b"5.3.4")
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == 0


def test_client_outside_allowed_networks_gets_554_and_nothing_stored(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    settings = make_settings(smtp={"listen": ["127.0.0.1:0"], "allowed_networks": ["10.0.0.0/8"]})
    running = start_daemon(settings)
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        running.send(mail())
    assert refused.value.smtp_code == 554
    assert running.query("SELECT count(*) FROM messages")[0][0] == 0


def test_alias_and_plus_tag_recipients_reach_their_inbox(daemon: RunningDaemon) -> None:
    daemon.send(mail("one"), to=["support@gw.test"])
    daemon.send(mail("two"), to=["Support+urgent@Example.com"])
    rows = daemon.query("SELECT inbox FROM messages ORDER BY id")
    assert [r["inbox"] for r in rows] == ["support@example.com", "support@example.com"]


def test_a_message_to_two_inboxes_is_stored_once_per_inbox(daemon: RunningDaemon) -> None:
    daemon.send(mail(), to=["support@example.com", "support@gw.test", "sales@example.com"])
    daemon.drain()
    rows = daemon.query("SELECT inbox FROM messages ORDER BY inbox")
    assert [r["inbox"] for r in rows] == ["sales@example.com", "support@example.com"]
    assert len(daemon.conversations()) == 2


def test_the_same_message_sent_twice_is_stored_once(daemon: RunningDaemon) -> None:
    message = mail("Twice")
    assert daemon.send(message) == {}
    assert daemon.send(message) == {}  # still 250: the sender must not retry
    daemon.drain()
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == 1
    assert len(daemon.conversations()) == 1


def test_a_message_without_message_id_is_deduplicated_by_its_content(
    daemon: RunningDaemon,
) -> None:
    raw = b"From: a@example.org\r\nTo: support@example.com\r\nSubject: no id\r\n\r\nbody\r\n"
    daemon.send(raw)
    daemon.send(raw)
    daemon.send(raw.replace(b"body", b"other body"))
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == 2


def test_store_failure_answers_451_and_the_sender_can_retry(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.store.db.LOCK_WAIT_MS", 300)
    daemon = start_daemon(make_settings())
    # Another process holds the write lock longer than the store waits for it.
    with write_lock_held(daemon.settings.gateway.database):
        with pytest.raises(smtplib.SMTPDataError) as refused:
            daemon.send(mail("held up"))
        assert refused.value.smtp_code == 451
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == 0
    assert daemon.send(mail("held up")) == {}


def test_stop_answers_the_data_in_flight_and_new_connections_421_then_exits(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import socket
    import threading

    from gateway.ingress.accept import Accept

    in_accept, release = threading.Event(), threading.Event()
    real_call = Accept.__call__

    async def held(self: Accept, mail_: object) -> int | None:
        in_accept.set()
        await asyncio.to_thread(release.wait, 10)  # the stop arrives while this DATA is in flight
        return await real_call(self, mail_)  # type: ignore[arg-type]

    def greeting() -> bytes:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            return sock.recv(1024)

    monkeypatch.setattr(Accept, "__call__", held)
    answers: list[dict[str, tuple[int, bytes]]] = []
    client = threading.Thread(target=lambda: answers.append(daemon.send(mail("in flight"))))
    client.start()
    assert in_accept.wait(10)
    daemon.daemon.request_stop()
    try:
        wait_until(lambda: greeting().startswith(b"421"), what="421 to a new connection")
    finally:
        release.set()
    client.join(10)
    assert answers == [{}]  # 250, not a dropped connection
    daemon.thread.join(10)
    assert not daemon.thread.is_alive()
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == 1
    with pytest.raises(OSError):
        daemon.send(mail("too late"))


def test_smtputf8_sender_is_accepted(daemon: RunningDaemon) -> None:
    raw = "From: jörg@bücher.example\r\nTo: support@example.com\r\nSubject: ü\r\n\r\nx\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        refused = client.sendmail(
            "jörg@bücher.example", ["support@example.com"], raw.encode(), mail_options=["SMTPUTF8"]
        )
    assert refused == {}
    daemon.drain()
    assert daemon.conversations()[0]["customer"] == "jörg@bücher.example"


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@example.org\nTo: support@example.com\nSubject: bare LF\n\n"
        + b"a line ending in a bare LF\n" * 400,
        b"From: a@example.org\r\nTo: support@example.com\r\nSubject: long line\r\n\r\n"
        + b"x" * 20_000
        + b"\r\n",
    ],
    ids=["bare-lf-endings", "a-20000-octet-line"],
)
def test_mail_breaking_the_line_limit_is_stored_byte_for_byte_not_bounced(
    daemon: RunningDaemon, raw: bytes
) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        client.mail("a@example.org")
        client.rcpt("support@example.com")
        # smtplib would rewrite the endings; send the bytes as they are, then the end mark.
        client.send(b"DATA\r\n")
        assert client.getreply()[0] == 354
        client.send(raw + b"\r\n.\r\n")
        assert client.getreply()[0] == 250
    [row] = daemon.query("SELECT raw FROM raw_mail")
    assert bytes(row["raw"]) == raw + b"\r\n"
    daemon.drain()
    assert daemon.query("SELECT state FROM messages")[0][0] == "routed"


def _rcpt_code(port: int, recipient: str) -> int:
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo()
        client.mail("customer@example.org")
        return client.rcpt(recipient)[0]


def test_an_inbox_removed_by_a_reload_after_rcpt_still_gets_the_message_it_accepted(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    tmp_path: Path,
) -> None:
    running = start_daemon(make_settings(), config_path=tmp_path / "gateway.toml")
    with smtplib.SMTP("127.0.0.1", running.port) as client:
        client.ehlo()
        client.mail("customer@example.org")
        assert client.rcpt("sales@example.com")[0] == 250
        make_settings(inboxes=[{"address": "support@example.com"}])  # rewrites the file
        running.daemon.request_reload()
        wait_until(lambda: _rcpt_code(running.port, "sales@example.com") == 550, what="the reload")
        code, _ = client.data(mail("accepted before", to="sales@example.com").as_bytes())
    assert code == 250
    [row] = running.query("SELECT inbox FROM messages")
    assert row["inbox"] == "sales@example.com"


@pytest.mark.parametrize("hook", ["MAIL", "RCPT", "DATA"])
def test_a_bug_in_a_hook_answers_451_with_a_reference_the_log_carries_and_no_exception_text(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    monkeypatch: pytest.MonkeyPatch,
    hook: str,
) -> None:
    async def bug(*args: object) -> str:
        raise KeyError("secret internals")

    # The relay, but with a bug in one hook (aiosmtpd looks hooks up by name).
    broken = type("Broken", (Relay,), {f"handle_{hook}": bug})
    monkeypatch.setattr("gateway.daemon.Relay", broken)
    running = start_daemon(make_settings())
    with capture_logs() as logs, smtplib.SMTP("127.0.0.1", running.port) as client:
        client.ehlo()
        code, text = client.mail("customer@example.org")
        if hook != "MAIL":
            code, text = client.rcpt("support@example.com")
        if hook == "DATA":
            code, text = client.data(mail().as_bytes())
    assert code == 451
    found = re.fullmatch(rb"4\.3\.0 Internal error, reference (\w+); please try again later", text)
    assert found is not None, text
    [logged] = [line for line in logs if line["event"] == "smtp.internal_error"]
    assert logged["ref"] == found[1].decode()
    assert running.query("SELECT count(*) FROM messages")[0][0] == 0


def _reply(replies: BinaryIO) -> tuple[int, list[bytes]]:
    """One reply and its lines' texts ("250-" continues it, "250 " ends it)."""
    texts = []
    while True:
        line = replies.readline()
        texts.append(line[4:].rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return int(line[:3]), texts


@contextmanager
def _raw_session(port: int) -> Iterator[tuple[socket.socket, BinaryIO]]:
    """A connection past its greeting, written to as bytes: smtplib never pipelines."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as sock,
        sock.makefile("rb") as replies,
    ):
        assert _reply(replies)[0] == 220
        yield sock, replies


GROUP = b"MAIL FROM:<customer@example.org>\r\nRCPT TO:<%s>\r\nDATA\r\n"


def test_ehlo_advertises_pipelining(daemon: RunningDaemon) -> None:
    with _raw_session(daemon.port) as (sock, replies):
        sock.sendall(b"EHLO client.test\r\n")
        code, texts = _reply(replies)
    assert code == 250
    assert b"PIPELINING" in texts


def test_mail_rcpt_and_data_in_one_write_are_answered_in_order_and_the_mail_routed(
    daemon: RunningDaemon,
) -> None:
    raw = mail("Pipelined").as_bytes(policy=SMTP)
    with _raw_session(daemon.port) as (sock, replies):
        sock.sendall(b"EHLO client.test\r\n")
        _reply(replies)
        sock.sendall(GROUP % b"support@example.com")
        assert [_reply(replies)[0] for _ in range(3)] == [250, 250, 354]
        sock.sendall(raw + b".\r\n")
        assert _reply(replies)[0] == 250
    daemon.drain()
    [row] = daemon.query("SELECT raw, state FROM messages JOIN raw_mail ON message = id")
    assert (bytes(row["raw"]), row["state"]) == (raw, "routed")
    assert len(daemon.conversations()) == 1


def test_a_pipelined_group_whose_rcpt_is_refused_has_its_data_refused_and_nothing_stored(
    daemon: RunningDaemon,
) -> None:
    with _raw_session(daemon.port) as (sock, replies):
        sock.sendall(b"EHLO client.test\r\n")
        _reply(replies)
        sock.sendall(GROUP % b"nobody@example.com")
        # RFC 2920: a DATA after no accepted recipient fails (aiosmtpd says 503), so the
        # client never sends the message, and the session stays in step.
        assert [_reply(replies)[0] for _ in range(3)] == [250, 550, 503]
        sock.sendall(b"QUIT\r\n")
        assert _reply(replies)[0] == 221
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == 0
