"""A real Dovecot on 127.0.0.1, in a temporary folder, for the IMAP tests."""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
# Dovecot refuses to handle mail as root.
mail_uid = nobody
mail_gid = nogroup
default_internal_user = nobody
default_internal_group = nogroup
default_login_user = nobody
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={folder}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  inet_listener http {{
    port = 0
  }}
}}
"""

# Tokens over XOAUTH2, checked by asking the test's introspection endpoint (RFC 7662)
# about each one; the passwd-file above still serves the test's own password logins.
OAUTH2 = """\
auth_mechanisms = plain login xoauth2 oauthbearer
# A refused token is answered at once, not after the delay that slows password guessing.
auth_failure_delay = 0
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {folder}/dovecot-oauth2.conf.ext
}}
"""
OAUTH2_ARGS = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
"""


def available() -> bool:
    return shutil.which("dovecot") is not None


class Dovecot:
    def __init__(
        self,
        folder: Path,
        port: int,
        users: dict[str, str],
        introspection_url: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.folder = folder
        self.port = port
        self.users = users
        self._process: subprocess.Popen[bytes] | None = None
        self.client_logins = 0
        self._replaced = 0  # folders renamed away by `recreate`
        for name in ("run", "state", "home"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder / "home", "nobody", "nogroup")
        (folder / "passwd").write_text(
            "".join(f"{user}:{{PLAIN}}{password}\n" for user, password in users.items())
        )
        config = CONFIG.format(folder=folder, port=port)
        if tls is not None:  # STARTTLS on the IMAP port, with this certificate and key
            cert, key = tls
            config = config.replace(
                "ssl = no\n", f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
            )
        if introspection_url is not None:
            config += OAUTH2.format(folder=folder)
            (folder / "dovecot-oauth2.conf.ext").write_text(
                OAUTH2_ARGS.format(url=introspection_url)
            )
        (folder / "dovecot.conf").write_text(config)

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.folder / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() ends its children too
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited: see {self.folder}/dovecot.log")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("dovecot did not listen")

    def stop(self) -> None:
        """SIGTERM to Dovecot and every session process, and wait for them.

        Dovecot's master alone leaves the running imap processes (and their
        connections) alive; a server going down takes them all.
        """
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(30)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(self._process.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            self._process = None

    @contextlib.contextmanager
    def frozen(self, user: str) -> Iterator[None]:
        """Every open session of `user` stops answering (SIGSTOP) until the block ends: a
        server that hangs with the connection open."""
        live = self._sessions(user)
        for pid in live:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def drop(self, user: str) -> None:
        """Every open session of `user` ends at once (SIGKILL: no BYE), the server still up:
        the clients log in again."""
        for pid in self._sessions(user):
            os.kill(pid, signal.SIGKILL)

    def kick(self, user: str) -> None:
        """Every open session of `user` is ended by the server, which says BYE first (as
        `doveadm kick` or a shutdown does): the clients log in again."""
        for pid in self._sessions(user):
            os.kill(pid, signal.SIGTERM)

    def _sessions(self, user: str) -> list[int]:
        """The processes of `user`'s open sessions."""
        deadline = time.monotonic() + 10
        while True:  # Dovecot's log process writes the login a moment later
            log = (self.folder / "dovecot.log").read_text()
            sessions = [int(pid) for pid in re.findall(rf"Login: user=<{user}>.*mpid=(\d+)", log)]
            live = [pid for pid in sessions if _is_imap_process(pid)]
            if live:
                return live
            if time.monotonic() > deadline:
                raise AssertionError(f"no open session of {user}")
            time.sleep(0.05)

    def client(self, user: str) -> imaplib.IMAP4:
        """A second client, as an agent's mail program would be."""
        client = imaplib.IMAP4("127.0.0.1", self.port)
        client.login(user, self.users[user])
        self.client_logins += 1  # the log counts them beside the gateway's
        return client

    def append(
        self, user: str, raw: bytes, folder: str = "INBOX", date: datetime | None = None
    ) -> None:
        """APPEND as another client would; `date` is its INTERNALDATE (default: now).

        Dovecot may refuse one a moment while another session still holds a folder that
        was just replaced: try again from a new session, as a mail program would, for at
        most 10 s, then fail with the server's answer."""
        deadline = time.monotonic() + 10
        while True:
            client = self.client(user)
            try:
                status, answer = client.append(folder, "", date, raw)
            finally:
                client.logout()
            if status == "OK":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"APPEND to {folder} refused: {status} {answer!r}")
            time.sleep(0.1)

    def flags(self, user: str, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID → flags of every message in the folder."""
        client = self.client(user)
        try:
            client.select(folder)
            _, lines = client.uid("fetch", "1:*", "(UID FLAGS)")
            found: dict[int, set[str]] = {}
            for line in lines:
                if not isinstance(line, bytes):
                    continue
                text = line.decode()
                if "UID " not in text or "FLAGS (" not in text:
                    continue  # an unsolicited update about another session's change
                uid = int(text.split("UID ")[1].split()[0].rstrip(")"))
                found[uid] = set(text.split("FLAGS (")[1].split(")")[0].split())
            return found
        finally:
            client.logout()

    def recreate(self, user: str, folder: str) -> None:
        """Replace the folder by a new one of the same name: the server gives it a new
        UIDVALIDITY. The old one is renamed away rather than deleted: a session that
        still has it open (the gateway's) goes on writing its index files into the
        renamed folder, never into the new one (deleting it let them land in the new
        folder, which Dovecot then refused as "deleted under us", seen once in CI)."""
        self._replaced += 1
        client = self.client(user)
        try:
            deadline = time.monotonic() + 10
            while True:  # another session may hold the folder a moment: try again
                renamed, answer = client.rename(folder, f"{folder}-old-{self._replaced}")
                if renamed == "OK":
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"cannot rename {folder} away: {answer!r}")
                time.sleep(0.1)
            created, answer = client.create(folder)
            if created != "OK":
                raise AssertionError(f"cannot create {folder} again: {answer!r}")
        finally:
            client.logout()

    def deliver(self, user: str, folder: str, messages: Iterable[bytes]) -> int:
        """Write `messages` into the folder's maildir at once, as a delivery agent would
        (Dovecot sees them on the next look, or by inotify while a client idles); how many.
        Thousands take a second where APPENDs would take minutes."""
        maildir = (
            self.folder / "home" / user / "Maildir" / ("" if folder == "INBOX" else f".{folder}")
        )
        owner = maildir.stat()  # made by Dovecot: its owner is the mail user
        count = 0
        for raw in messages:
            data = raw.replace(b"\r\n", b"\n")  # a maildir holds LF lines
            name = f"{time.time_ns()}.M{count}P{os.getpid()}.test,S={len(data)}"
            (maildir / "tmp" / name).write_bytes(data)
            os.chown(maildir / "tmp" / name, owner.st_uid, owner.st_gid)
            os.rename(maildir / "tmp" / name, maildir / "new" / name)
            count += 1
        return count

    def create(self, user: str, folder: str) -> None:
        client = self.client(user)
        try:
            client.create(folder)
        finally:
            client.logout()


def _is_imap_process(pid: int) -> bool:
    """Still a Dovecot IMAP session (its process may have ended, its pid taken since)."""
    try:
        return b"imap" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
