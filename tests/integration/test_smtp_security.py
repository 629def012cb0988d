"""The relay is never an open relay, speaks TLS and AUTH, and no client can hold it."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from structlog.testing import capture_logs

from gateway.config import Settings
from tests.conftest import BASE, RunningDaemon, mail, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


def stored(running: RunningDaemon) -> int:
    return int(running.query("SELECT count(*) FROM messages")[0][0])


@pytest.mark.parametrize(
    "recipient",
    [
        "someone@elsewhere.net",  # an unknown domain
        "support%elsewhere.net@example.com",  # the percent hack
        "@example.com:someone@elsewhere.net",  # a source route to a foreign mailbox
        '"support@elsewhere.net"@example.com',  # a quoted local part
        "support@elsewhere.net@example.com",  # two at-signs
        "support@example.com@elsewhere.net",
        "elsewhere.net!support@example.com",  # bang path
        "support@[127.0.0.1]",  # an address literal
        "support@example.com.elsewhere.net",
    ],
)
def test_relay_tricks_are_refused_with_550_and_nothing_stored(
    daemon: RunningDaemon, recipient: str
) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        assert client.mail("customer@example.org")[0] == 250
        code, _ = client.docmd(f"RCPT TO:<{recipient}>")
    assert code in (550, 553, 501)
    assert stored(daemon) == 0


# --- STARTTLS and AUTH ---------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def hash_password(name: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "hash-password", name],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def tls_files(tmp_path: Path, ca: trustme.CA) -> dict[str, str]:
    cert = ca.issue_cert("gw.test", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "relay.pem"))
    # The users file as a person makes it: `gateway hash-password desk` (no configuration needed).
    made = hash_password("desk", PASSWORD)
    assert made.returncode == 0 and made.stdout.startswith("desk:scrypt$")
    assert PASSWORD not in made.stdout
    (tmp_path / "users").write_text("# who may send through the relay\n" + made.stdout)
    return {"tls_cert": "relay.pem", "auth_users_file": "users"}


def test_hash_password_refuses_an_empty_password() -> None:
    refused = hash_password("desk", "")
    assert refused.returncode == 1 and "empty password" in refused.stderr


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def auth_daemon(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    tls_files: dict[str, str],
) -> RunningDaemon:
    return start_daemon(make_settings(smtp={**BASE["smtp"], **tls_files, "require_auth": True}))


def test_starttls_uses_the_configured_certificate(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    tls_files: dict[str, str],
    client_tls: ssl.SSLContext,
) -> None:
    running = start_daemon(make_settings(smtp={**BASE["smtp"], "tls_cert": "relay.pem"}))
    raw = mail("over TLS").as_bytes()
    with smtplib.SMTP("127.0.0.1", running.port) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=client_tls)  # verifies the chain and the name 127.0.0.1
        client.sendmail("customer@example.org", ["support@example.com"], raw)
    assert stored(running) == 1


def test_auth_is_not_offered_before_starttls(
    auth_daemon: RunningDaemon, client_tls: ssl.SSLContext
) -> None:
    with smtplib.SMTP("127.0.0.1", auth_daemon.port) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        code, _ = client.docmd("AUTH PLAIN", "AGRlc2sAcGFzcw==")
        assert code == 538  # encryption required
        client.starttls(context=client_tls)
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]


def test_require_auth_refuses_mail_from_an_unauthenticated_client(
    auth_daemon: RunningDaemon, client_tls: ssl.SSLContext
) -> None:
    with smtplib.SMTP("127.0.0.1", auth_daemon.port) as client:
        client.starttls(context=client_tls)
        client.ehlo()
        code, _ = client.mail("customer@example.org")
    assert code == 530
    assert stored(auth_daemon) == 0


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_user_of_the_file_authenticates_and_sends(
    auth_daemon: RunningDaemon, client_tls: ssl.SSLContext, mechanism: str
) -> None:
    with smtplib.SMTP("127.0.0.1", auth_daemon.port) as client:
        client.starttls(context=client_tls)
        client.ehlo()
        client.user, client.password = "desk", PASSWORD
        code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235
        client.sendmail("customer@example.org", ["support@example.com"], mail().as_bytes())
    assert stored(auth_daemon) == 1


def login(client: smtplib.SMTP, name: str, password: str) -> int:
    """One AUTH PLAIN attempt (smtplib's login() would try each mechanism in turn)."""
    client.user, client.password = name, password
    try:
        return client.auth("PLAIN", client.auth_plain)[0]
    except smtplib.SMTPAuthenticationError as error:
        return error.smtp_code


def test_a_wrong_password_gets_535_and_the_log_holds_no_secret(
    auth_daemon: RunningDaemon, client_tls: ssl.SSLContext
) -> None:
    with capture_logs() as logs, smtplib.SMTP("127.0.0.1", auth_daemon.port) as client:
        client.starttls(context=client_tls)
        client.ehlo()
        assert login(client, "desk", "hunter2-wrong") == 535
        assert login(client, "nobody", PASSWORD) == 535
        code, _ = client.mail("customer@example.org")
        assert code == 530
    failures = [line for line in logs if line["event"] == "smtp.auth_failed"]
    assert [line["user"] for line in failures] == ["desk", "nobody"]
    assert "hunter2" not in repr(logs) and PASSWORD not in repr(logs)


def test_password_guessing_is_cut_off_after_five_tries(
    auth_daemon: RunningDaemon, client_tls: ssl.SSLContext
) -> None:
    with smtplib.SMTP("127.0.0.1", auth_daemon.port) as client:
        client.starttls(context=client_tls)
        client.ehlo()
        codes = [login(client, "desk", f"guess{n}") for n in range(5)]
        assert codes == [535] * 5
        code, _ = client.docmd("AUTH PLAIN", "AGRlc2sAZ3Vlc3M=")
    assert code == 421


# --- per-client limits and slow clients ----------------------------------------


def test_connections_beyond_a_clients_share_get_421(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings(smtp={**BASE["smtp"], "max_connections_per_client": 2}))
    first, second = smtplib.SMTP("127.0.0.1", running.port), smtplib.SMTP("127.0.0.1", running.port)
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", running.port)
        assert refused.value.smtp_code == 421
    finally:
        first.quit()
    # A slot freed is a slot the client has again.
    wait_until(lambda: _connects(running.port), what="a connection to be taken again")
    second.quit()


def _connects(port: int) -> bool:
    try:
        smtplib.SMTP("127.0.0.1", port).quit()
    except smtplib.SMTPConnectError:
        return False
    return True


def test_messages_beyond_a_clients_rate_get_451_and_are_not_stored(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(
        make_settings(smtp={**BASE["smtp"], "max_messages_per_minute_per_client": 3})
    )
    for n in range(3):
        running.send(mail(f"message {n}"))
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        running.send(mail("one too many"))
    assert refused.value.smtp_code == 451 and refused.value.smtp_error.startswith(b"4.7.1")
    assert stored(running) == 3


def test_a_client_sending_a_byte_a_second_is_cut_off_and_others_are_served(
    make_settings: Callable[..., Settings], start_daemon: Callable[..., RunningDaemon]
) -> None:
    running = start_daemon(make_settings(smtp={**BASE["smtp"], "timeout": 1}))
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as slow:
        slow.recv(1024)  # greeting
        for command in (b"EHLO slow\r\n", b"MAIL FROM:<a@example.org>\r\n"):
            slow.sendall(command)
            slow.recv(1024)
        slow.sendall(b"RCPT TO:<support@example.com>\r\nDATA\r\n")
        _read_until(slow, b"354")
        closed = threading.Event()

        def trickle() -> None:
            try:
                for byte in b"Subject: slow\r\n\r\nand slower\r\n":
                    slow.sendall(bytes([byte]))
                    if closed.wait(1):
                        return
            except OSError:
                return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        # Meanwhile another client is served as usual.
        assert running.send(mail("not held up")) == {}
        assert _read_until(slow, b"") == b""  # the server closed the slow one
        closed.set()
        sender.join(5)
    assert stored(running) == 1


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    """Read until `marker` arrives, or (with b"") until the peer closes; what was read."""
    got = b""
    while True:
        try:
            chunk = sock.recv(1024)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
        if marker and marker in got:
            return got


def test_endless_noops_end_the_session_with_421(daemon: RunningDaemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        codes = {client.noop()[0] for _ in range(50)}
        assert codes == {250}
        assert client.noop()[0] == 421


def test_an_overlong_command_line_is_refused(daemon: RunningDaemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo()
        code, _ = client.docmd("MAIL FROM:<" + "a" * 2000 + "@example.org>")
        assert code == 500
        assert client.noop()[0] == 250  # and the session goes on
