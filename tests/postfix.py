"""A private Postfix (Debian's package) on free loopback ports, for the tests and the bench.

Its own configuration folder, queue and log under one folder, no chroot, run in
the foreground by root. Postfix's set-group-id commands (postqueue) take a
non-default configuration folder only when the default main.cf lists it in
`alternate_config_directories`: the instance adds its folder there while it
runs, which changes nothing else about a system Postfix.

The recipes of contrib/postfix/ are the configuration the tests run: `recipe()`
reads one and replaces the operator's values (ports, paths, user) by the test's,
each of which must be in the file, so a recipe edited is a recipe tested.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

RECIPES = Path(__file__).resolve().parent.parent / "contrib" / "postfix"
DEFAULT_MAIN_CF = Path("/etc/postfix/main.cf")

# The instance's own plumbing; a recipe or a caller adds what it delivers and how.
INSTANCE = """\
compatibility_level = 3.6
queue_directory = {folder}/queue
data_directory = {folder}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.test
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = {folder}
maillog_file = {folder}/maillog
"""

# A deferred message is tried again within seconds, not Postfix's minutes.
QUICK_RETRY = """\
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


# The operator's values in the recipes, which callers replace by their own.
RECIPIENTS = "/etc/postfix/gateway_recipients"
SIZE_LIMIT = "24990000"
PIPE_USER = "nobody"  # the recipe's `gateway`: Postfix runs no pipe as root


def available() -> bool:
    return shutil.which("postfix") is not None and Path("/etc/postfix/master.cf").exists()


def recipe(path: str, replace: dict[str, str]) -> str:
    """contrib/postfix/PATH with each operator's value replaced by the test's."""
    text = (RECIPES / path).read_text()
    for theirs, ours in replace.items():
        assert theirs in text, f"{theirs!r} is no longer in contrib/postfix/{path}"
        text = text.replace(theirs, ours)
    return text


def recipients_file(folder: Path) -> Path:
    """The relay_recipient_maps file of the instance in `folder` (Postfix.postmap makes it)."""
    return folder / "conf" / "gateway_recipients"


def relay_recipe(folder: Path, gateway_port: int, size_limit: int) -> str:
    return recipe(
        "relay/main.cf",
        {
            "[127.0.0.1]:2525": f"[127.0.0.1]:{gateway_port}",
            RECIPIENTS: str(recipients_file(folder)),
            SIZE_LIMIT: str(size_limit),
        },
    )


LMTP_SOCKET = "private/gateway-lmtp"  # the recipe's socket, in the queue (the chroot)


def lmtp_recipe(folder: Path, lmtp_port: int | None, size_limit: int) -> str:
    """The LMTP recipe to the gateway's `lmtp_port`, or (None) to its unix socket as the
    recipe's comment has it."""
    to = f"lmtp:inet:127.0.0.1:{lmtp_port}" if lmtp_port else f"lmtp:unix:{LMTP_SOCKET}"
    return recipe(
        "lmtp/main.cf",
        {
            "lmtp:inet:127.0.0.1:2424": to,
            RECIPIENTS: str(recipients_file(folder)),
            SIZE_LIMIT: str(size_limit),
        },
    )


def pipe_recipe(folder: Path, config: Path, size_limit: int) -> tuple[str, str]:
    """main.cf and master.cf: PIPE_USER runs this checkout's `gateway ingest --config CONFIG`."""
    main_cf = recipe(
        "pipe/main.cf", {RECIPIENTS: str(recipients_file(folder)), SIZE_LIMIT: str(size_limit)}
    )
    master_cf = recipe(
        "pipe/master.cf",
        {
            "user=gateway": f"user={PIPE_USER}",
            "/usr/local/bin/gateway": " ".join([*pipe_python(), "-m", "gateway"]),
            "/etc/gateway/gateway.toml": str(config),
        },
    )
    return main_cf, master_cf


def pipe_python() -> list[str]:
    """How PIPE_USER runs this checkout's Python: this interpreter, or where it is out of
    that user's reach (a pyenv under /root), the system's of the same version, on this
    virtualenv's packages."""
    packages = [str(Path(__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"]]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, shutil.which(version, path="/usr/bin") or version):
        try:
            subprocess.run([python, "-c", ""], user=PIPE_USER, check=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        return ["/usr/bin/env", f"PYTHONPATH={':'.join(packages)}", python]
    raise RuntimeError(f"no {version} the user {PIPE_USER} may run")


def pipe_home(folder: Path) -> Path:
    """A folder for the gateway's configuration and database that PIPE_USER writes too;
    its database, made before the daemon opens it."""
    folder.mkdir()
    shutil.chown(folder, PIPE_USER)
    database = folder / "gateway.db"
    # Owned by the pipe's user: SQLite gives its -wal and -shm the same owner.
    database.touch(0o600)
    shutil.chown(database, PIPE_USER)
    return database


def gateway_recipients(config: Path) -> str:
    """The recipes' relay_recipient_maps source, as an operator makes it:
    `gateway recipients --postfix`."""
    command = [sys.executable, "-m", "gateway", "recipients", "--postfix", "--config", str(config)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def master_cf(port: int, extra: str = "", chroot: tuple[str, ...] = ()) -> str:
    """Debian's master.cf with no chroot (the queue is ours) but for the `chroot`
    services (chrooted into the queue, as Debian has them), smtpd on 127.0.0.1:`port`."""
    lines = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line[:1].isalnum() and len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{port}"
            fields[4] = "y" if fields[0] in chroot else "n"
            line = " ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n" + extra


class Postfix:
    def __init__(
        self,
        folder: Path,
        port: int,
        main_cf: str,
        master_extra: str = "",
        chroot: tuple[str, ...] = (),
    ) -> None:
        self.folder = folder
        self.port = port
        self.config = recipients_file(folder).parent
        self.process: subprocess.Popen[bytes] | None = None
        shutil.rmtree(folder, ignore_errors=True)
        for name in ("conf", "queue", "data"):
            (folder / name).mkdir(parents=True)
        shutil.chown(folder / "data", "postfix")
        (self.config / "main.cf").write_text(INSTANCE.format(folder=folder) + main_cf)
        (self.config / "master.cf").write_text(master_cf(port, master_extra, chroot))

    def postmap(self, name: str, text: str) -> Path:
        """A hash: map in the configuration folder, from `KEY VALUE` lines."""
        path = self.config / name
        path.write_text(text)
        subprocess.run(["postmap", "-c", str(self.config), f"hash:{path}"], check=True)
        return path

    def start(self) -> None:
        _alternates(add=self.config)
        subprocess.run(
            ["postfix", "-c", str(self.config), "set-permissions"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with (self.folder / "start-fg.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["postfix", "-c", str(self.config), "start-fg"], stdout=log, stderr=log
            )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"postfix stopped at its start:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"postfix did not listen on {self.port}:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            subprocess.run(
                ["postfix", "-c", str(self.config), "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        _alternates(remove=self.config)

    def flush(self) -> None:
        """Try every deferred message now (postqueue -f)."""
        subprocess.run(["postqueue", "-c", str(self.config), "-f"], check=True)

    def queued(self) -> int:
        """Messages in the queue, not yet delivered or bounced."""
        queues = ("maildrop", "incoming", "active", "deferred", "hold")
        return sum(
            1
            for name in queues
            if (self.folder / "queue" / name).is_dir()
            for path in (self.folder / "queue" / name).rglob("*")
            if path.is_file()
        )

    def log(self) -> str:
        path = self.folder / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""


def _alternates(add: Path | None = None, remove: Path | None = None) -> None:
    """Add a folder to, or remove it from, the default main.cf's alternate_config_directories."""
    found = subprocess.run(
        ["postconf", "-h", "alternate_config_directories"],
        capture_output=True,
        text=True,
    )
    folders = found.stdout.replace(",", " ").split() if found.returncode == 0 else []
    if add is not None and str(add) not in folders:
        folders.append(str(add))
    if remove is not None and str(remove) in folders:
        folders.remove(str(remove))
    DEFAULT_MAIN_CF.touch()
    subprocess.run(
        ["postconf", "-e", f"alternate_config_directories = {' '.join(folders)}"], check=True
    )
