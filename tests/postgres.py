"""A private PostgreSQL cluster (Debian's package) on a free loopback port, for the tests
and the benches of the PostgreSQL store (DESIGN §15).

Its data, unix socket and log live in one temporary folder. The gateway reaches it as an
operator's would be reached: over TCP with a password (`gateway`, scram-sha-256); the
fixture itself administers it over the unix socket as the superuser `postgres`, which
the socket trusts (only this folder's owner and root can reach the socket).

PostgreSQL refuses to run as root: run as root (as CI is), the cluster's programs run as
the `postgres` user that Debian's package creates, and the folder is theirs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

# Debian's server programs, one folder per major version. Not the PATH: /usr/local/bin
# may hold another build's initdb or pg_ctl, whose cluster Debian's postgres cannot run.
DEBIAN = Path("/usr/lib/postgresql")
PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")

SUPERUSER = "postgres"
USER = "gateway"
PASSWORD = "secret"

# Both kinds of cluster: room for several gateway processes, each with a pool.
SETTINGS = """\
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket}'
max_connections = 200
"""
# Tests SIGKILL gateway processes, never PostgreSQL nor the machine: what fsync and full
# page writes guard against (a crash of the OS, a torn page) cannot happen in a test, so
# a commit need not wait for the disk. synchronous_commit stays on: with fsync off a
# commit's flush is a write into the kernel, cheap, and a commit still means what it
# means in production once PostgreSQL answered it.
FAST = """\
fsync = off
full_page_writes = off
"""

SHM_ROOM = 2 * 2**30  # bytes free in /dev/shm to put a test cluster there

NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def programs() -> Path | None:
    """The folder of Debian's newest PostgreSQL server programs, if one is installed."""
    versions = [
        folder
        for folder in DEBIAN.glob("*")
        if folder.name.isdigit() and all((folder / "bin" / p).exists() for p in PROGRAMS)
    ]
    newest = max(versions, key=lambda folder: int(folder.name), default=None)
    return None if newest is None else newest / "bin"


def available() -> bool:
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return False  # root cannot run it without the package's user
    return programs() is not None


NOT_INSTALLED = "PostgreSQL is not installed: `make peers` installs Debian's postgresql"
# For a test that starts a cluster of its own rather than taking the session's.
needs_postgres = pytest.mark.skipif(not available(), reason=NOT_INSTALLED)


class Postgres:
    """A cluster in `folder` on 127.0.0.1:`port`; `durable` keeps PostgreSQL's defaults
    (the benches), otherwise it trades durability for speed (the tests, see FAST)."""

    def __init__(self, folder: Path, port: int, durable: bool = False) -> None:
        found = programs()
        if found is None:
            raise RuntimeError(NOT_INSTALLED)
        self.bin = found
        self.folder = folder
        self.port = port
        self.durable = durable
        self.data = folder / "data"
        self.socket = folder / "run"
        self.log = folder / "postgres.log"
        self._as: dict[str, Any] = {}  # subprocess options that run a program as its owner
        self._names = itertools.count(1)
        self.socket.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SUPERUSER)
            self._as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
            for path in (folder, self.socket):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def start(self) -> None:
        """initdb, then start it and wait until it accepts connections."""
        self._run(
            "initdb",
            f"--pgdata={self.data}",
            f"--username={SUPERUSER}",
            "--encoding=UTF8",
            "--locale=C",  # the gateway's schema declares its text columns COLLATE "C" anyway
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",  # a folder thrown away at the end needs no fsync of its own
            "--no-instructions",
        )
        settings = SETTINGS.format(port=self.port, socket=self.socket)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(settings + ("" if self.durable else FAST))
        self._run("pg_ctl", "start", f"--pgdata={self.data}", f"--log={self.log}", "--wait")
        try:
            self.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        except BaseException:
            self.stop()  # no cluster left running behind a failed start
            raise

    def stop(self) -> None:
        """A fast shutdown (sessions ended, no wait for them); an immediate one if that
        hangs."""
        try:
            self._run("pg_ctl", "stop", f"--pgdata={self.data}", "--mode=fast", timeout=30)
        except (subprocess.TimeoutExpired, RuntimeError):
            self._run("pg_ctl", "stop", f"--pgdata={self.data}", "--mode=immediate")

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str | None = None) -> str:
        """A new database owned by `gateway` (by default with a name of its own); its URL."""
        name = name or f"gateway_{next(self._names)}"
        if not NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        # Copied as files: a template this small copies fastest so (8 ms against 16 by WAL),
        # and the checkpoints it takes cost little with fsync off; a bench makes one.
        self.psql(f"CREATE DATABASE {name} OWNER {USER} STRATEGY FILE_COPY")
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop the database of `url`, ending the sessions still connected to it."""
        name = url.rsplit("/", 1)[1]
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` as the superuser over the unix socket; what it printed (unaligned,
        no headers). psql rather than asyncpg: a blocking call serves a plain test and an
        async one alike, where asyncio.run cannot run inside the test's loop."""
        options = ["--no-psqlrc", "--quiet", "--no-align", "--tuples-only", "--set=ON_ERROR_STOP=1"]
        server = [f"--host={self.socket}", f"--port={self.port}", f"--username={SUPERUSER}"]
        done = subprocess.run(
            [str(self.bin / "psql"), *options, *server, f"--dbname={database}", f"--command={sql}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {done.stderr.strip()}")
        return done.stdout

    def _run(self, program: str, *args: str, timeout: float = 120) -> None:
        """One of the cluster's programs, as the cluster's owner, from its folder (the
        postgres user may not be able to enter the caller's)."""
        done = subprocess.run(
            [str(self.bin / program), *args],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            **self._as,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stderr.strip()} (log: {self.log})")


def _parent(durable: bool) -> Path | None:
    """Where a cluster's folder goes: a test cluster's in memory (/dev/shm) when there is
    room, since a database is made per test and that takes about 8 ms there against 100 on
    a virtual disk; a bench cluster's in the temporary folder, on disk as an operator's."""
    shm = Path("/dev/shm")
    if durable or not (shm.is_dir() and os.access(shm, os.W_OK)):
        return None
    return shm if shutil.disk_usage(shm).free >= SHM_ROOM else None


@contextlib.contextmanager
def running_postgres(durable: bool = False) -> Iterator[Postgres]:
    """A cluster of its own, started; stopped and removed at the end."""
    # Not under pytest's tmp_path: that is root's 0700, and the cluster runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="gateway-postgres-", dir=_parent(durable)))
    try:
        cluster = Postgres(folder, free_port(), durable)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One cluster for the whole session, started when a test first asks for it."""
    if not available():
        pytest.skip(NOT_INSTALLED)
    with running_postgres() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres: Postgres) -> Iterator[str]:
    """A fresh database of the session's cluster, dropped after the test."""
    url = postgres.database()
    yield url
    postgres.drop(url)
