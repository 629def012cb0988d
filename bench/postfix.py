"""Postfix as a baseline beside the bare server: a real MTA that fsyncs each message.

Debian's package, run in the foreground as a private instance on a high port,
with its own configuration, queue and a virtual maildir under one folder.
Postfix runs a non-default configuration folder only when the default main.cf
lists it in `alternate_config_directories`: the bench adds its folder there
(needs root), which changes nothing else about a system Postfix.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FOLDER = Path("/tmp/gateway-bench-postfix")
CONFIG = FOLDER / "conf"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {folder}/queue
data_directory = {folder}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench.test
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = example.com
virtual_mailbox_base = {folder}/mail
virtual_mailbox_maps = static:support/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
maillog_file_prefixes = {folder}
maillog_file = {folder}/maillog
"""


def available() -> bool:
    return shutil.which("postfix") is not None and Path("/etc/postfix/master.cf").exists()


def _master_cf(port: int) -> str:
    """Debian's master.cf with no chroot (the queue is ours) and smtpd on `port`."""
    lines = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line[:1].isalnum() and len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{port}"
            fields[4] = "n"
            line = " ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


def start(port: int) -> subprocess.Popen[bytes]:
    stop()
    shutil.rmtree(FOLDER, ignore_errors=True)
    for name in ("conf", "queue", "data", "mail"):
        (FOLDER / name).mkdir(parents=True)
    shutil.chown(FOLDER / "data", "postfix")
    (FOLDER / "mail").chmod(0o1777)
    (CONFIG / "main.cf").write_text(MAIN_CF.format(folder=FOLDER))
    (CONFIG / "master.cf").write_text(_master_cf(port))
    subprocess.run(["postconf", "-e", f"alternate_config_directories = {CONFIG}"], check=True)
    subprocess.run(
        ["postfix", "-c", str(CONFIG), "set-permissions"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return subprocess.Popen(
        ["postfix", "-c", str(CONFIG), "start-fg"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop() -> None:
    if (CONFIG / "main.cf").exists():
        subprocess.run(
            ["postfix", "-c", str(CONFIG), "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
