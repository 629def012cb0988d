"""Debian's Postfix in front of the gateway, configured by the recipes of contrib/postfix/.

Each recipe: 500 messages sent to Postfix's own port, delivered by Postfix to the
real daemon (over SMTP, LMTP, or a pipe into `gateway ingest`), each stored once
and routed, nothing bounced. The gateway stopped in the middle: Postfix defers,
and delivers each message once when it is back.
"""

from __future__ import annotations

import shutil
import smtplib
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest
import tomli_w

from gateway import config
from gateway.config import LmtpSection, Settings
from tests.conftest import BASE, RunningDaemon, free_port, mail, wait_until
from tests.postfix import (
    LMTP_SOCKET,
    QUICK_RETRY,
    Postfix,
    available,
    gateway_recipients,
    lmtp_recipe,
    pipe_home,
    pipe_recipe,
    relay_recipe,
)

pytestmark = pytest.mark.integration

COUNT = 500
CONNECTIONS = 4
# The tests' gateway takes 100KB (conftest.BASE); the recipes' headroom is 10,000 bytes.
SIZE = 90_000


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

    def start(
        config: Path, main_cf: str, master_extra: str = "", chroot: tuple[str, ...] = ()
    ) -> Postfix:
        """Postfix in front of the gateway configured by `config`."""
        server = Postfix(
            folder / "postfix", free_port(), main_cf + QUICK_RETRY, master_extra, chroot
        )
        server.postmap("gateway_recipients", gateway_recipients(config))
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


def stored_once(
    daemon: RunningDaemon, batch: list[EmailMessage], inbox: str = "", timeout: float = 60
) -> None:
    """Every message of the batch stored exactly once, routed, for the inbox it was sent
    to (or `inbox`)."""
    wanted = {m["Message-ID"].strip("<>") for m in batch}

    def stored() -> bool:
        return bool(daemon.query("SELECT count(*) FROM messages")[0][0] >= len(wanted))

    wait_until(stored, timeout, f"{len(wanted)} messages stored")
    daemon.drain()
    rows = daemon.query("SELECT message_id, inbox, state FROM messages")
    assert sorted(r["message_id"].strip("<>") for r in rows) == sorted(wanted)
    assert {r["state"] for r in rows} == {"routed"}
    by_id = {m["Message-ID"].strip("<>"): inbox or m["To"] for m in batch}
    assert all(by_id[r["message_id"].strip("<>")] == r["inbox"] for r in rows)


def delivered(postfix: Postfix) -> None:
    """Postfix's queue empty, and nothing bounced."""
    wait_until(lambda: postfix.queued() == 0, 30, "Postfix's queue to empty")
    assert "status=bounced" not in postfix.log()


def relay_settings(make_settings: Callable[..., Settings], port: int) -> Settings:
    return make_settings(smtp={"listen": [f"127.0.0.1:{port}"], "max_message_size": "100KB"})


@pytest.fixture
def relayed(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    start_postfix: Callable[..., Postfix],
    folder: Path,
    tmp_path: Path,
) -> tuple[RunningDaemon, Postfix]:
    """The gateway's SMTP relay, behind a Postfix configured by the relay recipe."""
    daemon = start_daemon(relay_settings(make_settings, free_port()))
    postfix = start_postfix(
        tmp_path / "gateway.toml", relay_recipe(folder / "postfix", daemon.port, SIZE)
    )
    return daemon, postfix


def test_the_relay_recipe_delivers_each_message_once(
    relayed: tuple[RunningDaemon, Postfix],
) -> None:
    daemon, postfix = relayed
    batch = messages()
    send(postfix.port, batch)
    stored_once(daemon, batch)
    delivered(postfix)


def test_the_lmtp_recipe_delivers_each_message_once(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    start_postfix: Callable[..., Postfix],
    folder: Path,
    tmp_path: Path,
) -> None:
    port = free_port()
    daemon = start_daemon(make_settings(lmtp={"listen": [f"127.0.0.1:{port}"]}))
    postfix = start_postfix(tmp_path / "gateway.toml", lmtp_recipe(folder / "postfix", port, SIZE))
    batch = messages()
    send(postfix.port, batch)
    stored_once(daemon, batch)
    delivered(postfix)


def test_the_lmtp_recipe_delivers_over_the_unix_socket_to_a_chrooted_lmtp_client(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    start_postfix: Callable[..., Postfix],
    folder: Path,
    tmp_path: Path,
) -> None:
    """As Debian runs it: Postfix's lmtp client chrooted into the queue, the gateway's
    socket under it, the postfix user in the socket's group."""
    settings = make_settings()  # its file names the inboxes Postfix's recipient map takes
    main_cf = lmtp_recipe(folder / "postfix", None, SIZE)
    postfix = start_postfix(tmp_path / "gateway.toml", main_cf, chroot=("lmtp",))
    socket_path = folder / "postfix" / "queue" / LMTP_SOCKET
    daemon = start_daemon(
        settings.model_copy(update={"lmtp": LmtpSection(listen=[str(socket_path)])})
    )
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
    # The recipe's `usermod -aG gateway postfix`: here the socket's group is postfix's.
    shutil.chown(socket_path, group="postfix")
    batch = messages(20)
    send(postfix.port, batch)
    stored_once(daemon, batch)
    delivered(postfix)
    assert f"[{LMTP_SOCKET}], " in postfix.log()
    [lmtp] = [
        line.split()
        for line in (postfix.config / "master.cf").read_text().splitlines()
        if line.startswith("lmtp ")
    ]
    assert lmtp[4] == "y"  # chrooted


def start_pipe(
    start_daemon: Callable[..., RunningDaemon],
    start_postfix: Callable[..., Postfix],
    folder: Path,
) -> tuple[RunningDaemon, Postfix]:
    """The daemon, and Postfix piping into `gateway ingest` as the pipe recipe has it."""
    database = pipe_home(folder / "gateway")
    path = database.parent / "gateway.toml"
    data = {**BASE, "gateway": {**BASE["gateway"], "database": str(database)}}
    path.write_text(tomli_w.dumps(data))
    daemon = start_daemon(config.load(path))
    main_cf, master_cf = pipe_recipe(folder / "postfix", path, SIZE)
    return daemon, start_postfix(path, main_cf, master_cf)


# A Python process a message, CPU-bound: about 7 a second on 2 cores.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_pipe_recipe_delivers_each_message_once(
    start_daemon: Callable[..., RunningDaemon],
    start_postfix: Callable[..., Postfix],
    folder: Path,
) -> None:
    daemon, postfix = start_pipe(start_daemon, start_postfix, folder)
    batch = messages()
    send(postfix.port, batch)
    stored_once(daemon, batch, timeout=240)
    delivered(postfix)
    assert {r[0] for r in daemon.query("SELECT source FROM messages")} == {"ingest"}


def test_a_bounce_through_the_pipe_keeps_its_null_sender(
    start_daemon: Callable[..., RunningDaemon],
    start_postfix: Callable[..., Postfix],
    folder: Path,
) -> None:
    daemon, postfix = start_pipe(start_daemon, start_postfix, folder)
    bounce = mail("Undelivered Mail Returned to Sender")
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
        client.sendmail("<>", ["support@example.com"], bounce.as_bytes(policy=SMTP_POLICY))
    stored_once(daemon, [bounce])
    [row] = daemon.query("SELECT envelope_from FROM messages")
    assert row["envelope_from"] == ""
    [event] = daemon.events(1, "received")
    assert '"auto": "bounce"' in event["detail"]


def test_a_message_to_two_inboxes_through_the_pipe_is_stored_for_each(
    start_daemon: Callable[..., RunningDaemon],
    start_postfix: Callable[..., Postfix],
    folder: Path,
) -> None:
    daemon, postfix = start_pipe(start_daemon, start_postfix, folder)
    both = mail("For both", to="support@example.com, sales@example.com")
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
        client.sendmail(
            "customer@example.org",
            ["support@example.com", "sales@example.com"],
            both.as_bytes(policy=SMTP_POLICY),
        )
    wait_until(lambda: daemon.query("SELECT count(*) FROM messages")[0][0] == 2, 30)
    delivered(postfix)
    rows = daemon.query("SELECT inbox FROM messages ORDER BY inbox")
    assert [r["inbox"] for r in rows] == ["sales@example.com", "support@example.com"]


def test_an_unknown_recipient_is_refused_at_rcpt_and_never_bounced(
    relayed: tuple[RunningDaemon, Postfix],
) -> None:
    daemon, postfix = relayed
    message = mail("One known, one not")
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
        # A +tag on an inbox's address is that inbox's (the replies address's always has one).
        refused = client.sendmail(
            "customer@example.org",
            ["nobody@example.com", "support+billing@example.com"],
            message.as_bytes(policy=SMTP_POLICY),
        )
    assert {to: (code, text[:5]) for to, (code, text) in refused.items()} == {
        "nobody@example.com": (550, b"5.1.1")
    }
    stored_once(daemon, [message], "support@example.com")
    delivered(postfix)


def test_a_message_postfix_takes_at_its_size_limit_is_stored(
    relayed: tuple[RunningDaemon, Postfix],
) -> None:
    daemon, postfix = relayed
    # Postfix's limit is on its queue file: the message, its Received header and the envelope.
    size = SIZE - 1_000
    big = mail("Big")
    line = "x" * 76 + "\n"
    big.set_content(line * ((size - len(big.as_bytes(policy=SMTP_POLICY))) // (len(line) + 1)))
    raw = big.as_bytes(policy=SMTP_POLICY)
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
        client.sendmail("customer@example.org", ["support@example.com"], raw)
    stored_once(daemon, [big])
    delivered(postfix)


def test_postfix_defers_while_the_gateway_is_down_then_delivers_each_once(
    make_settings: Callable[..., Settings],
    start_daemon: Callable[..., RunningDaemon],
    start_postfix: Callable[..., Postfix],
    folder: Path,
    tmp_path: Path,
) -> None:
    settings = relay_settings(make_settings, free_port())
    daemon = start_daemon(settings)
    postfix = start_postfix(
        tmp_path / "gateway.toml", relay_recipe(folder / "postfix", daemon.port, SIZE)
    )
    batch = messages()
    sending = threading.Thread(target=send, args=(postfix.port, batch))
    sending.start()
    # Stopped in the middle of Postfix's deliveries: what it had not committed is deferred.
    wait_until(lambda: daemon.query("SELECT count(*) FROM messages")[0][0] >= COUNT // 5)
    daemon.stop()
    sending.join(60)
    wait_until(lambda: "status=deferred" in postfix.log(), 30, "Postfix to defer")
    assert postfix.queued() > 0
    daemon = start_daemon(settings)
    postfix.flush()
    stored_once(daemon, batch)
    delivered(postfix)
