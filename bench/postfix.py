"""Postfix as a baseline beside the bare server: a real MTA that fsyncs each message.

Debian's package, run in the foreground as a private instance on a high port
(tests/postfix.py, which the Postfix tests start too), delivering to a virtual
maildir under its folder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.postfix import Postfix, available

__all__ = ["available", "start", "stop"]

FOLDER = Path("/tmp/gateway-bench-postfix")

MAIN_CF = """\
virtual_mailbox_domains = example.com
virtual_mailbox_base = {folder}/mail
virtual_mailbox_maps = static:support/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
"""

_running: list[Postfix] = []


def start(port: int) -> subprocess.Popen[bytes]:
    stop()
    server = Postfix(FOLDER, port, MAIN_CF.format(folder=FOLDER))
    (FOLDER / "mail").mkdir()
    (FOLDER / "mail").chmod(0o1777)
    server.start()
    _running.append(server)
    assert server.process is not None
    return server.process


def stop() -> None:
    while _running:
        _running.pop().stop()
