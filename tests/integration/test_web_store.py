"""The web inbox's own connection to the store, beside the daemon's, as other processes
see the store: the command line must see every commit the daemon makes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import mail
from tests.web import WebDesk


def gateway(config: Path, *args: str) -> str:
    """A `gateway` command in its own process: its output."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_a_command_that_writes_leaves_the_daemons_later_mail_in_sight(
    web_desk: Callable[..., WebDesk], tmp_path: Path
) -> None:
    """A command that wrote closes the store, and SQLite's last user of a store deletes its
    WAL. Were the daemon's locks on the file gone (a descriptor of it closed in the
    daemon's process lets go of them all), the command would take itself for the last
    and delete the WAL the daemon goes on writing to: nobody else would see that mail."""
    desk = web_desk()
    config = tmp_path / "gateway.toml"
    desk.running.send(mail("First"))
    desk.running.drain()
    gateway(config, "status", "carol", "away")
    desk.running.send(mail("Second"))
    desk.running.drain()
    listed = json.loads(gateway(config, "conversations", "--status", "all", "--json"))
    assert [c["subject"] for c in listed] == ["First", "Second"]
