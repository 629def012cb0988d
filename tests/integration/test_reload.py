"""A reload (SIGHUP) reaches the outbox's keyword writer, against a real Dovecot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Settings
from tests.conftest import RunningDaemon, wait_until
from tests.dovecot import Dovecot
from tests.integration.test_imap import connected, imap_inbox, raw

pytestmark = pytest.mark.integration


def test_after_a_reload_a_tag_a_new_rule_gives_is_one_of_the_gateways_keywords(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    from gateway.cli import main as gateway

    inboxes = [imap_inbox(dovecot, tmp_path)]
    config = tmp_path / "gateway.toml"
    running = start_daemon(make_settings(inboxes=inboxes), config_path=config)
    connected(running)
    client = dovecot.client("support")  # someone marked it vip, by hand: not the gateway's
    try:
        assert client.append("INBOX", "(vip)", None, raw("Question"))[0] == "OK"
    finally:
        client.logout()
    wait_until(
        lambda: dovecot.flags("support").get(1, set()) >= {"assigned-alice", "vip"},
        what="the first keywords beside the hand-set one",
    )
    vip = {"name": "VIP", "subject_keywords": ["urgent"], "assign_to": "agent:carol"}
    make_settings(inboxes=inboxes, rules=[{**vip, "tags": ["vip"]}])
    running.daemon.request_reload()
    wait_until(lambda: running.daemon.settings.rules, what="the reload")
    assert gateway(["assign", "1", "bob", "--by", "carol", "--config", str(config)]) == 0
    # vip is now a tag the gateway gives, and this conversation does not have it.
    wait_until(
        lambda: dovecot.flags("support").get(1, set()) >= {"assigned-bob"}, what="bob's keyword"
    )
    assert "vip" not in dovecot.flags("support")[1]
