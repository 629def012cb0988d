"""Mailboxes on OAuth 2.0 (XOAUTH2), as Microsoft 365 and Google have them: against a real
Dovecot whose oauth2 passdb asks a local introspection endpoint about each token, and
the local token endpoint that endpoint belongs to (tests/tokens.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.cli import main as gateway
from gateway.config import Settings
from tests.conftest import RunningDaemon, running_dovecot, wait_until
from tests.dovecot import Dovecot
from tests.integration.test_imap import connected, imap_inbox, raw, routed_subjects
from tests.tokens import TokenServer

pytestmark = pytest.mark.integration

APP_SCOPE = "https://outlook.office365.com/.default"


@pytest.fixture
def dovecot(tokens: TokenServer) -> Iterator[Dovecot]:
    """This module's Dovecot takes XOAUTH2 tokens the `tokens` server issued."""
    with running_dovecot(tokens.introspection_url) as server:
        yield server


def oauth_inbox(
    tokens: TokenServer,
    dovecot: Dovecot,
    tmp_path: Path,
    user: str = "support",
    address: str = "support@example.com",
    **extra: Any,
) -> dict[str, Any]:
    """A mailbox on XOAUTH2 with a refresh token of `user`'s; `scope=...`: app-only."""
    (tmp_path / "client.secret").write_text(tokens.client_secret + "\n")  # as an editor saves it
    imap = {
        "host": "127.0.0.1",
        "port": dovecot.port,
        "tls": False,
        "username": user,
        "auth": "oauth2",
        "token_url": tokens.token_url,
        "client_id": tokens.client_id,
        "client_secret_file": "client.secret",  # relative: to the configuration's folder
        **extra,
    }
    if "scope" not in extra:
        (tmp_path / f"{user}.refresh").write_text(tokens.refresh_token_for(user) + "\n")
        imap["refresh_token_file"] = f"{user}.refresh"
    return {"address": address, "imap": imap}


@pytest.fixture
def oauth_settings(
    make_settings: Callable[..., Settings], tokens: TokenServer, dovecot: Dovecot, tmp_path: Path
) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        return make_settings(inboxes=[oauth_inbox(tokens, dovecot, tmp_path, **extra)])

    return make


def check_connect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = gateway(["check", "--connect", "--config", str(tmp_path / "gateway.toml")])
    out, err = capsys.readouterr()
    return code, out + err


def test_a_mailbox_on_xoauth2_is_polled_and_its_mail_routed(
    oauth_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
) -> None:
    running = start_daemon(oauth_settings())
    connected(running)
    dovecot.append("support", raw("Printer on fire"))
    wait_until(lambda: running.conversations(), what="the appended message routed")
    assert routed_subjects(running) == ["Printer on fire"]
    # The keyword writer's session logs in with a token too.
    wait_until(
        lambda: "assigned-alice" in dovecot.flags("support").get(1, set()), what="the keyword"
    )
    log = (dovecot.folder / "dovecot.log").read_text()
    assert "Login: user=<support>, method=XOAUTH2" in log


def test_the_poller_and_the_keyword_writer_share_one_token(
    oauth_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tokens: TokenServer,
) -> None:
    running = start_daemon(oauth_settings())
    connected(running)
    dovecot.append("support", raw("Printer on fire"))
    wait_until(
        lambda: "assigned-alice" in dovecot.flags("support").get(1, set()), what="the keyword"
    )
    assert tokens.grants == ["refresh_token"]


def test_an_app_only_mailbox_logs_in_with_a_token_for_the_client_credentials(
    oauth_settings: Callable[..., Settings],
    tokens: TokenServer,
    dovecot: Dovecot,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tokens.app_users[APP_SCOPE] = "support"
    oauth_settings(scope=APP_SCOPE)
    code, out = check_connect(tmp_path, capsys)
    assert f"support@example.com: support@127.0.0.1:{dovecot.port}/INBOX works" in out
    assert (code, tokens.grants) == (0, ["client_credentials"])


def test_a_token_that_expires_is_renewed_before_it_is_refused_and_no_mail_is_missed(
    oauth_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tokens: TokenServer,
) -> None:
    tokens.lifetime = 3
    tokens.rotate = True  # and each renewal needs the refresh token the last one gave
    running = start_daemon(oauth_settings())
    connected(running)
    dovecot.append("support", raw("before the expiry"))
    wait_until(lambda: running.conversations(), what="the first message")
    wait_until(tokens.all_expired, what="the first token to expire")
    dovecot.drop("support")  # the sessions log in again, after the expiry
    dovecot.append("support", raw("after the expiry"))
    wait_until(lambda: len(running.conversations()) == 2, timeout=30, what="the second message")
    assert sorted(routed_subjects(running)) == ["after the expiry", "before the expiry"]
    assert running.query("SELECT count(*) FROM messages")[0][0] == 2
    # Renewed before its time: Dovecot was never shown a token that had expired.
    assert (tokens.expired_presented, len(tokens.grants) >= 2) == (0, True)


def test_a_token_the_server_refuses_is_replaced_once_and_the_mailbox_runs_on(
    oauth_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tokens: TokenServer,
) -> None:
    running = start_daemon(oauth_settings())
    connected(running)
    tokens.revoke_access_tokens()  # as an administrator ending the sessions' tokens does
    dovecot.drop("support")
    dovecot.append("support", raw("after the revocation"))
    wait_until(lambda: running.conversations(), timeout=30, what="the message routed")
    assert routed_subjects(running) == ["after the revocation"]
    assert tokens.grants == ["refresh_token", "refresh_token"]


def test_a_revoked_refresh_token_stops_only_its_own_mailbox_and_is_named(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tokens: TokenServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inboxes = [
        oauth_inbox(tokens, dovecot, tmp_path),
        imap_inbox(dovecot, tmp_path, "sales", "sales@example.com"),
    ]
    running = start_daemon(make_settings(inboxes=inboxes))
    connected(running)
    connected(running, "sales@example.com")
    refused = "the token endpoint refused the refresh token: invalid_grant (Refresh token … is"

    def named(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
        return [e for e in logs if e["event"] == "imap.unavailable" and refused in e["reason"]]

    with capture_logs() as logs:
        tokens.revoke("support")
        dovecot.drop("support")
        dovecot.append("sales", raw("for sales"))
        wait_until(lambda: running.conversations(), timeout=30, what="the sales message")
        wait_until(lambda: named(logs), what="the support mailbox's failure, named")
    assert routed_subjects(running) == ["for sales"]
    assert {e["mailbox"] for e in named(logs)} == {"support@127.0.0.1/INBOX"}

    code, out = check_connect(tmp_path, capsys)
    assert code == 1
    assert f"support@example.com: support@127.0.0.1:{dovecot.port}/INBOX fails: {refused}" in out
    assert f"sales@example.com: sales@127.0.0.1:{dovecot.port}/INBOX works" in out
    assert not [s for s in tokens.secrets() if s in str(logs) or s in out]


def test_a_token_for_another_user_is_refused_in_a_sentence_not_after_a_timeout(
    oauth_settings: Callable[..., Settings],
    tokens: TokenServer,
    dovecot: Dovecot,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Dovecot says no with a `+` challenge, then waits for an empty answer before its NO
    (Google does the same): aioimaplib's hook (imapsession._Sasl) sends it. Were the hook
    gone, the check would wait out its timeout and say the server did not answer."""
    tokens.app_users[APP_SCOPE] = "sales"  # the token is sales's, the mailbox support's
    oauth_settings(scope=APP_SCOPE)
    code, out = check_connect(tmp_path, capsys)
    assert code == 1
    # The NO, with the status the challenge gave (base64 JSON: no reader wants that).
    assert (
        "fails: the server refused the OAuth 2.0 token:"
        " [AUTHENTICATIONFAILED] Authentication failed. (status 401)\n" in out
    )
    assert tokens.grants == ["client_credentials", "client_credentials"]  # one more, then no


def test_a_server_without_xoauth2_is_said_so_and_asked_for_no_token(
    make_settings: Callable[..., Settings],
    tokens: TokenServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with running_dovecot() as plain:  # passwords only
        make_settings(inboxes=[oauth_inbox(tokens, plain, tmp_path)])
        code, out = check_connect(tmp_path, capsys)
    assert code == 1
    assert "fails: the server does not offer XOAUTH2 (AUTH=XOAUTH2)" in out
    assert tokens.grants == []


def test_no_secret_is_in_any_log_line_or_printed_output(
    oauth_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tokens: TokenServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # aioimaplib's own lines too, what it sends included
    with capture_logs() as logs:
        running = start_daemon(oauth_settings())
        connected(running)
        dovecot.append("support", raw("Printer on fire"))
        wait_until(
            lambda: "assigned-alice" in dovecot.flags("support").get(1, set()), what="the keyword"
        )
        running.stop()
    _, worked = check_connect(tmp_path, capsys)
    tokens.revoke("support")
    _, failed = check_connect(tmp_path, capsys)
    assert "works" in worked and "fails" in failed
    said = str(logs) + caplog.text + worked + failed
    assert "AUTHENTICATE XOAUTH2" in caplog.text  # what was sent is in the debug log...
    assert not [secret for secret in tokens.secrets() if secret in said]  # ...without a secret
