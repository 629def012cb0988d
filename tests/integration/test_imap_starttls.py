"""STARTTLS on 143 (`tls = false`, `starttls = true`) against a real Dovecot with a
certificate from a throwaway CA: the connection is TLS before the login, the
certificate is checked, and a server that cannot do it is never sent the password."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from gateway.cli import main as gateway
from gateway.config import Settings
from tests.conftest import RunningDaemon, running_dovecot, wait_until
from tests.dovecot import Dovecot
from tests.integration.test_imap import connected, imap_inbox, raw

pytestmark = pytest.mark.integration


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_dovecot(ca: trustme.CA) -> Iterator[Dovecot]:
    # Where Dovecot, reading as root at its start, finds them; not under pytest's tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="gateway-tls-"))
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    with running_dovecot(tls=(cert, key)) as server:
        yield server


@pytest.fixture
def trusted(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test CA among the authorities the system trusts (OpenSSL reads SSL_CERT_FILE)."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


def starttls_inbox(dovecot: Dovecot, tmp_path: Path) -> dict[str, object]:
    return imap_inbox(dovecot, tmp_path, starttls=True)


def test_a_mailbox_over_starttls_is_polled_and_its_mail_routed(
    trusted: None,
    tls_dovecot: Dovecot,
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    tmp_path: Path,
) -> None:
    running = start_daemon(make_settings(inboxes=[starttls_inbox(tls_dovecot, tmp_path)]))
    connected(running)
    tls_dovecot.append("support", raw("Over TLS"))
    wait_until(lambda: running.conversations(), what="the appended message routed")
    assert running.conversations()[0]["subject"] == "Over TLS"


def test_a_certificate_nobody_vouches_for_fails_before_the_login(
    tls_dovecot: Dovecot,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_settings(inboxes=[starttls_inbox(tls_dovecot, tmp_path)])
    assert gateway(["check", "--connect", "--config", str(tmp_path / "gateway.toml")]) == 1
    out = capsys.readouterr().out
    assert "support@example.com: " in out and "fails: " in out
    assert "certificate verify failed" in out
    assert tls_dovecot.users["support"] not in out


def test_a_server_without_starttls_is_never_sent_the_password(
    dovecot: Dovecot,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_settings(inboxes=[starttls_inbox(dovecot, tmp_path)])  # Dovecot with ssl = no
    assert gateway(["check", "--connect", "--config", str(tmp_path / "gateway.toml")]) == 1
    assert "fails: the server does not offer STARTTLS" in capsys.readouterr().out
