"""Debian's Postfix in front of the gateway, configured by the recipes of contrib/postfix/.

Each recipe: 500 messages sent to Postfix's own port, delivered by Postfix to the
real daemon (over SMTP, LMTP, or a pipe into `gateway ingest`), each stored once
and routed, nothing bounced. The gateway stopped in the middle: Postfix defers,
and delivers each message once when it is back.
"""

from __future__ import annotations

import shutil
import smtplib
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest

from gateway.config import Settings
from tests.conftest import RunningDaemon, free_port, mail, wait_until
from tests.postfix import QUICK_RETRY, Postfix, available, recipe, recipient_map

pytestmark = pytest.mark.integration

COUNT = 500
CONNECTIONS = 4
RECIPIENTS = "/etc/postfix/gateway_recipients"
# The tests' gateway takes 100KB (conftest.BASE); the recipes' headroom is 10,000 bytes.
SIZE_LIMIT = {"24990000": "90000"}


@pytest.fixture
def folder() -> Iterator[Path]:
    # Not under pytest's tmp_path (root's 0700): Postfix's processes and the pipe's
    # user read and write here.
    path = Path(tempfile.mkdtemp(prefix="gw-postfix-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_postfix(folder: Path) -> Iterator[Callable[..., Postfix]]:
    if not available():
        pytest.fail("postfix is not installed: `make peers` installs it (.ci/run does)")
    started: list[Postfix] = []

    def start(settings: Settings, main_cf: str, master_extra: str = "") -> Postfix:
        server = Postfix(folder / "postfix", free_port(), main_cf + QUICK_RETRY, master_extra)
        server.postmap("gateway_recipients", recipient_map(settings.inbox_map()))
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
        print(server.log())  # shown when the test failed


def messages(count: int = COUNT) -> list[EmailMessage]:
    """Distinct Message-IDs, to both inboxes."""
    inboxes = ("support@example.com", "sales@example.com")
    return [mail(f"Through Postfix {i}", to=inboxes[i % 2]) for i in range(count)]


def send(port: int, batch: list[EmailMessage]) -> None:
    """Each message on one of a few connections, to Postfix's smtpd."""

    def one_connection(part: list[EmailMessage]) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            for message in part:
                client.sendmail(
                    "customer@example.org", [message["To"]], message.as_bytes(policy=SMTP_POLICY)
                )

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        list(pool.map(one_connection, [batch[i::CONNECTIONS] for i in range(CONNECTIONS)]))


def stored_once(daemon: RunningDaemon, batch: list[EmailMessage], timeout: float = 60) -> None:
    """Every message of the batch stored exactly once, routed."""
    wanted = {m["Message-ID"].strip("<>") for m in batch}

    def stored() -> bool:
        return daemon.query("SELECT count(*) FROM messages")[0][0] >= len(wanted)

    wait_until(stored, timeout, f"{len(wanted)} messages stored")
    daemon.drain()
    rows = daemon.query("SELECT message_id, inbox, state FROM messages")
    assert sorted(r["message_id"].strip("<>") for r in rows) == sorted(wanted)
    assert {r["state"] for r in rows} == {"routed"}
    by_id = {m["Message-ID"].strip("<>"): m["To"] for m in batch}
    assert all(by_id[r["message_id"].strip("<>")] == r["inbox"] for r in rows)


def delivered(postfix: Postfix) -> None:
    """Postfix's queue empty, and nothing bounced."""
    wait_until(lambda: postfix.queued() == 0, 30, "Postfix's queue to empty")
    assert "status=bounced" not in postfix.log()


def relay_settings(make_settings: Callable[..., Settings], port: int) -> Settings:
    return make_settings(smtp={"listen": [f"127.0.0.1:{port}"], "max_message_size": "100KB"})


def relay_recipe(postfix_port: int, folder: Path) -> str:
    return recipe(
        "relay/main.cf",
        {
            "[127.0.0.1]:2525": f"[127.0.0.1]:{postfix_port}",
            RECIPIENTS: str(folder / "postfix" / "conf" / "gateway_recipients"),
            **SIZE_LIMIT,
        },
    )


def test_the_relay_recipe_delivers_each_message_once(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    start_postfix: Callable[..., Postfix],
    folder: Path,
) -> None:
    daemon = start_daemon(relay_settings(make_settings, free_port()))
    postfix = start_postfix(daemon.settings, relay_recipe(daemon.port, folder))
    batch = messages()
    send(postfix.port, batch)
    stored_once(daemon, batch)
    delivered(postfix)
