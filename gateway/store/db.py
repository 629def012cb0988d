"""The store's interface: a database, its transactions, and the rows they read.

Two backends sit behind it, chosen by the configured `database`: a SQLite file,
the embedded default (`sqlite.py`), or a `postgresql://` URL, for several
processes sharing one database (`postgres.py`, DESIGN §15). Nothing of a driver
leaves the store: statements fail with StoreUnavailable (the store's trouble:
try again later) or StatementFailed (the data given). SQL is written once, in
what SQLite and PostgreSQL share, with `?` marks; where they differ, the Tx
gives the piece (`for_update`, `skip_locked`, `clock`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

# How long a writer waits for another's lock before the store is called unavailable
# (SMTP 451, ingest 75, a loop's retry): SQLite's busy timeout, PostgreSQL's lock_timeout.
LOCK_WAIT_MS = 10_000


# What a commit tells the other processes it changed: new mail to route, outbox rows to
# carry out, a conversation's events, an agent's availability.
TOLD = frozenset({"message", "outbox", "event", "status"})


class Record(Protocol):
    """A row as a driver gives it, by column name or position: only queries.py reads one."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class Tx(ABC):
    """One transaction, or one read snapshot: what every query in queries.py runs on."""

    # The locking read of a read-modify-write. SQLite's BEGIN IMMEDIATE holds the
    # database's write lock already, so a plain read is one; PostgreSQL needs FOR UPDATE.
    for_update = ""
    # A claim of queued rows (pending mail, outbox rows): rows another process's
    # transaction holds are passed over rather than waited for.
    skip_locked = ""

    def __init__(self) -> None:
        # What this transaction wrote that a person's action reports: ("event", id) and
        # ("outbox", id), in order (queries.add_event and queries.enqueue note them).
        self.written: list[tuple[str, int]] = []
        # What it changed that the other processes are told of when it commits (where
        # the store tells: `Database.subscribe`): of TOLD's kinds.
        self.told: set[str] = set()

    @abstractmethod
    async def one(self, sql: str, args: Sequence[Any] = ()) -> Record | None: ...

    @abstractmethod
    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[Record]: ...

    @abstractmethod
    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a write; the number of rows it changed."""

    @abstractmethod
    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    def clock(self, *, later: bool = False) -> str:
        """SQL for the store's clock now, in `clock.stamp`'s form (ISO 8601 UTC, fixed
        width); `later`: plus a `?` number of seconds. The one clock every process on the
        database shares, whatever their own say."""

    def stored_text(self, value: str) -> str:
        """`value` as the store keeps text (and gives it back): as it is, but where it must
        differ (`PostgresTx`)."""
        return value

    @contextlib.contextmanager
    def off_loop(self) -> Iterator[None]:
        """Statements that carry megabytes (raw mail): kept off the loop's thread where
        the driver would run them on it."""
        yield

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A part of the transaction that is undone alone if it raises (and re-raised)."""
        await self.run("SAVEPOINT part")
        try:
            yield
        except BaseException:
            await self.run("ROLLBACK TO SAVEPOINT part")
            await self.run("RELEASE SAVEPOINT part")
            raise
        await self.run("RELEASE SAVEPOINT part")


class Presence(Protocol):
    """The processes doing one job on a database. One that joins and finds itself alone
    knows whatever is found half done was left by the dead, and is its to take up."""

    def joining(self) -> AbstractAsyncContextManager[bool]:
        """Join the others doing the job; the block is told whether there were none, and
        whoever arrives meanwhile waits until it ends."""
        ...

    async def leave(self) -> None: ...


class Sole(Protocol):
    """A job one process at a time may do on a database; let go when that process ends,
    however it ends."""

    async def take(self) -> bool:
        """Hold it, unless another process does (False)."""
        ...

    async def held(self) -> bool:
        """Whether this process still holds it (a lock on a link to a server is lost
        with the link)."""
        ...

    async def release(self) -> None: ...


@dataclass(frozen=True)
class Holder:
    """A process holding a job's lock, as far as the store can tell."""

    name: str  # as it names itself ("gateway HOST:PID"), "" where unknown
    since: str  # when it took hold (its connection began), "" where unknown


class Database(ABC):
    """The store. `transaction()` writes; `reading()` reads one snapshot."""

    # Whether several daemons may share this store (PostgreSQL); a SQLite file has one.
    shared = False

    def __init__(self, path: str) -> None:
        self.path = path  # as configured: opened again from it (the web's reads)

    @staticmethod
    async def open(path: str, *, create: bool = True, readonly: bool = False) -> Database:
        """Open (and migrate) the store `path` names; `readonly`: nothing can be written
        through it."""
        if is_postgres(path):
            from gateway.store.postgres import PostgresDatabase

            return await PostgresDatabase.open(path, create=create, readonly=readonly)
        from gateway.store.sqlite import SqliteDatabase

        return await SqliteDatabase.open(path, create=create, readonly=readonly)

    @property
    def shown(self) -> str:
        """The store as logs and messages name it: never a password."""
        return shown(self.path)

    @abstractmethod
    def transaction(self, *, ordered: bool = True) -> AbstractAsyncContextManager[Tx]:
        """One write transaction; StoreUnavailable when the store cannot take or commit it.

        `ordered`: in one order with every other ordered writer, whichever process (the
        store's write lock): any transaction that reads what it then changes, or writes
        events (the web's data version reads their ids in commit order). Storing new
        mail is neither: several may commit at once where the store allows (PostgreSQL);
        a SQLite file orders every writer."""

    @abstractmethod
    def reading(self) -> AbstractAsyncContextManager[Tx]:
        """Reads that see one snapshot, however the daemons write meanwhile."""

    def subscribe(self, wake: Callable[[frozenset[str]], None]) -> bool:
        """Have `wake` called with the kinds (TOLD) each commit of any process changed, as
        soon as it commits; whether this store tells (else its changes are found by
        polling). A SQLite file tells nobody: only `gateway` commands share it."""
        return False

    @abstractmethod
    def presence(self, job: str) -> Presence: ...

    @abstractmethod
    def sole(self, job: str) -> Sole: ...

    async def gone(self, processes: Iterable[str]) -> set[str]:
        """Which of `processes` ("HOST:PID", as `process_name` names them) have no session
        with the store now: dead, as far as it can tell. A SQLite file cannot tell
        (`presence` does, when one process is alone)."""
        return set()

    @abstractmethod
    async def holders(self, job: str, *, sole: bool) -> list[Holder]:
        """The processes doing `job` now: its `sole` holder, or its `presence`'s."""

    @abstractmethod
    async def trace(self, statements: Callable[[str], None] | None) -> None:
        """Have every statement's text given to `statements` (None: stop): for tests that
        show where and how often the store works."""

    @abstractmethod
    async def close(self) -> None: ...


def this_process() -> str:
    """This process as the store's users name it: "HOST:PID"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_postgres(path: str) -> bool:
    return path.startswith(("postgresql://", "postgres://"))


def shown(path: str) -> str:
    """`path` with any password in it masked."""
    if not is_postgres(path):
        return path
    url = urllib.parse.urlsplit(path)
    if url.password is None:
        return path
    host = url.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(url._replace(netloc=f"{url.username}:***@{host}"))


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, script) of every migration of `dialect` ("sqlite", "postgresql"), in order.
    Both count the same versions: a PostgreSQL store begins at the schema SQLite had then."""
    folder = resources.files("gateway.store") / "migrations" / dialect
    found = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(found)


def file_mode(path: str) -> int:
    """The mode of a file made at `path`: the owner's alone, unless its folder is one its
    group may write (the service's state shared with the admins in its group)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        shared = os.stat(folder).st_mode & stat.S_IWGRP
    except OSError:
        shared = 0
    return 0o660 if shared else 0o600
