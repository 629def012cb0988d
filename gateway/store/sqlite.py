"""The SQLite store, the embedded default: PRAGMAs, migrations, one writer at a time.

One aiosqlite connection is shared by the daemon's tasks; a lock keeps their
transactions from interleaving on it. Other processes (the `gateway` command)
open their own connection; WAL, `BEGIN IMMEDIATE` and the busy timeout make
them wait their turn rather than fail. `Presence` tells a process starting a
job whether another is doing it too, or whoever did it is dead; `Sole` keeps a
job to one process at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiosqlite

from gateway.errors import StatementFailed, StoreNotReady, StoreUnavailable
from gateway.store import db
from gateway.store.db import Record, file_mode, migrations

T = TypeVar("T")


# SQLite's primary result codes that say the store is in trouble (locked, busy, full,
# read-only, failing I/O, corrupt), not the statement: retried later, never blamed on mail.
_STORE_TROUBLE = {5, 6, 7, 8, 10, 11, 13, 14, 15, 26}


def _store_trouble(error: sqlite3.Error) -> bool:
    """Whether `error` is the store's trouble rather than something a statement's data caused
    (too many variables, too big a value), which retrying would only meet again."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # no code to tell by: the cautious answer keeps the mail pending
        return isinstance(error, sqlite3.OperationalError)
    return code & 0xFF in _STORE_TROUBLE


@contextlib.contextmanager
def _classified() -> Iterator[None]:
    """SQLite's errors as the store's kinds: its trouble, or a statement's data."""
    try:
        yield
    except sqlite3.Error as error:
        if _store_trouble(error):
            raise StoreUnavailable(f"the database is unavailable: {error}") from None
        raise StatementFailed(f"{type(error).__name__}: {error}") from None


class SqliteTx(db.Tx):
    """A transaction on the SQLite file: BEGIN IMMEDIATE holds the database's write lock,
    so its reads are locking reads and its claims meet nobody else's."""

    def __init__(self, conn: _Connection) -> None:
        super().__init__()
        self._conn = conn

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Record | None:
        with _classified():
            async with self._conn.execute(sql, args) as cursor:
                row: Record | None = await cursor.fetchone()
                return row

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[Record]:
        with _classified():
            async with self._conn.execute(sql, args) as cursor:
                return list(await cursor.fetchall())

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        with _classified():
            async with self._conn.execute(sql, args) as cursor:
                return int(cursor.rowcount)

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with _classified():
            await self._conn.executemany(sql, rows)

    def clock(self, *, later: bool = False) -> str:
        offset = ", ? || ' seconds'" if later else ""
        return f"strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'{offset})"

    @contextlib.contextmanager
    def off_loop(self) -> Iterator[None]:
        """The statements of this block run on aiosqlite's thread, even in a transaction:
        for those that carry megabytes (raw mail), which would hold the loop meanwhile."""
        was, self._conn.inline = self._conn.inline, False
        try:
            yield
        finally:
            self._conn.inline = was


class _Connection(aiosqlite.Connection):
    """aiosqlite's connection, whose statements can run on the loop's own thread.

    aiosqlite hands every statement to its thread and back, tens of microseconds
    of loop time each; intake's transaction has some thirty per message. Between
    BEGIN IMMEDIATE and COMMIT this process holds the write lock, so a statement
    there never waits on another writer and takes microseconds: `inline` runs
    those directly, unless they carry megabytes (accept's raw mail), which
    `Tx.off_loop()` keeps on aiosqlite's thread. What can wait
    (taking the lock, the commit's fsync) always goes through aiosqlite's thread.
    aiosqlite has no public way to run a call on the caller's thread: `_execute`
    is its private hook, so pyproject.toml pins aiosqlite's tested versions and
    tests/unit/test_library_hooks.py fails if the hook changes.
    """

    inline = False

    async def _execute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.inline:
            return fn(*args, **kwargs)
        return await super()._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call,no-any-return]


def _connect(target: str, *, uri: bool) -> _Connection:
    def connector() -> sqlite3.Connection:
        # Used by aiosqlite's thread and, inline, by the loop's: never both at once.
        return sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)

    return _Connection(connector, iter_chunk_size=64)


class SqliteDatabase(db.Database):
    def __init__(self, conn: _Connection, path: str) -> None:
        super().__init__(path)
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: str, *, create: bool = True, readonly: bool = False
    ) -> SqliteDatabase:
        """Open (and migrate) the file; `readonly` opens one nothing can be written through."""
        if "://" in path:
            raise StoreUnavailable(
                f"{path}: not a database this gateway knows (a SQLite file's path,"
                " or a postgresql:// URL)"
            )
        flags = os.O_RDONLY if readonly else os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            # Mail is private: the file (and SQLite's -wal/-shm, which copy its mode) is 0600,
            # or 0660 in a folder its group may write (admins sharing the service's state).
            # Opened here only when missing: closing a descriptor of the file drops every
            # POSIX lock this process holds on it, SQLite's for connections open already,
            # and another process's close would then delete the WAL from under them.
            if not os.access(path, os.F_OK):
                os.close(_open(path, flags))
        except FileNotFoundError:
            raise StoreNotReady(
                f"{path}: no database here (has `gateway run` started yet?)"
            ) from None
        except OSError as error:
            raise StoreUnavailable(f"{path}: cannot open the database: {error}") from None
        try:
            if readonly:
                conn = _connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
            else:
                conn = _connect(path, uri=False)
            await conn
            conn.row_factory = sqlite3.Row
        except (OSError, sqlite3.Error) as error:
            raise StoreUnavailable(f"{path}: cannot open the database: {error}") from None
        try:
            await conn.execute(f"PRAGMA busy_timeout = {db.LOCK_WAIT_MS}")
            if readonly:
                await _check_version(conn, path)
            else:
                await conn.execute("PRAGMA journal_mode = WAL")
                await conn.execute("PRAGMA synchronous = FULL")
                await _migrate(conn)
                await conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as error:
            await conn.close()
            raise StoreUnavailable(f"{path}: cannot prepare the database: {error}") from None
        except StoreUnavailable:
            await conn.close()
            raise
        return cls(conn, path)

    @asynccontextmanager
    async def transaction(self, *, ordered: bool = True) -> AsyncIterator[db.Tx]:
        """One write transaction (BEGIN IMMEDIATE: one writer at a time, whichever process,
        `ordered` or not).

        Its statements run on the loop's thread (see `_Connection`), but for those
        in a `Tx.off_loop()` block.
        """
        async with self._lock:
            await self._begin("BEGIN IMMEDIATE")
            try:
                self._conn.inline = True
                try:
                    yield SqliteTx(self._conn)
                finally:
                    self._conn.inline = False
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._conn.execute("COMMIT")
            except sqlite3.Error as error:
                await self._rollback()
                raise StoreUnavailable(f"the database could not commit: {error}") from None

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[db.Tx]:
        """Reads that see one snapshot, however the daemon writes meanwhile (WAL)."""
        async with self._lock:
            await self._begin("BEGIN")
            try:
                yield SqliteTx(self._conn)
            finally:
                await self._rollback()

    async def _begin(self, sql: str) -> None:
        """Open a transaction. A caller cancelled meanwhile does not stop the statement
        (aiosqlite's thread runs it anyway): what it opened is undone before the lock is
        let go, or the next transaction would find one open."""
        began = asyncio.ensure_future(self._conn.execute(sql))
        try:
            await asyncio.shield(began)
        except asyncio.CancelledError:
            with contextlib.suppress(sqlite3.Error):
                await began
            await self._rollback()
            raise
        except sqlite3.Error as error:
            raise StoreUnavailable(f"the database is unavailable: {error}") from None

    async def _rollback(self) -> None:
        if self._conn.in_transaction:
            await self._conn.execute("ROLLBACK")

    def presence(self, job: str) -> FilePresence:
        """The processes doing `job` on this database (see `FilePresence`)."""
        return FilePresence(f"{self.path}-{job}.lock")

    def sole(self, job: str) -> FileSole:
        """The one process that may do `job` on this database (see `FileSole`)."""
        return FileSole(f"{self.path}-{job}.lock")

    async def holders(self, job: str, *, sole: bool) -> list[db.Holder]:
        """A lock file tells that a process holds it, not which: someone or nobody."""
        path = f"{self.path}-{job}.lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return []  # never made: nobody has done the job here
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return [db.Holder("", "")]
        finally:
            os.close(fd)  # closing lets go of the lock this took, if it took it
        return []

    async def trace(self, statements: Callable[[str], None] | None) -> None:
        """Have every statement's text given to `statements` (None: stop), from the thread
        that runs it: for tests that show where and how often the store works."""
        await self._conn.set_trace_callback(statements)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self._conn.close()


def _open(path: str, flags: int) -> int:
    """os.open, a file it makes given `file_mode` whatever the umask says."""
    made = bool(flags & os.O_CREAT) and not os.path.exists(path)
    fd = os.open(path, flags, 0o600)
    if made:
        os.fchmod(fd, file_mode(path))
    return fd


def _lock(path: str, how: int) -> int:
    """Open `path` (made if need be) and flock it `how`; the descriptor holding the lock.
    OSError when it cannot be opened, BlockingIOError when LOCK_NB finds it held."""
    fd = _open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, how)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _let_go(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing lets go of the lock


class FilePresence:
    """The processes doing one job on a database: each holds a lock file beside it.

    Each holds the lock shared while it does the job; the kernel lets go when
    the process ends, SIGKILL included. One that joins and can take it
    exclusively knows no other process is doing the job: whatever is found half
    done was left by the dead, and is its to take up. Joining goes through a
    gate (a second lock file, held exclusively while one joins): flock does not
    promise that changing a lock from exclusive to shared is atomic, and no
    other process may test the lock, and find itself alone, in between; nor
    join while the dead's leftovers are being taken up.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @asynccontextmanager
    async def joining(self) -> AsyncIterator[bool]:
        """Join the others doing the job; the block is told whether there were none, and
        whoever arrives meanwhile waits until it ends (waiting here off the loop)."""
        gate: int | None = None
        alone = False
        try:
            gate = await asyncio.to_thread(_lock, f"{self.path}.gate", fcntl.LOCK_EX)
            self._fd = _open(self.path, os.O_RDWR | os.O_CREAT)
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            # The others hold it shared (exclusively only behind the gate): no real wait.
            await asyncio.to_thread(fcntl.flock, self._fd, fcntl.LOCK_SH)
        except OSError:  # nobody can be told apart: as if others were there
            await self.leave()
            alone = False
        try:
            yield alone
        finally:
            _let_go(gate)

    async def leave(self) -> None:
        _let_go(self._fd)
        self._fd = None


class FileSole:
    """A job one process at a time may do on a database (running the daemon): a lock file
    beside it, held exclusively for the process's life; the kernel lets go when it
    ends, SIGKILL included."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None

    async def take(self) -> bool:
        """Hold it, unless another process does (False); StoreUnavailable if the lock file
        cannot be opened."""
        try:
            self._fd = _lock(self._path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:
            why = error.strerror
            raise StoreUnavailable(f"{self._path}: cannot take the lock: {why}") from None
        return True

    async def held(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        _let_go(self._fd)
        self._fd = None


async def _check_version(conn: aiosqlite.Connection, path: str) -> None:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    latest = migrations("sqlite")[-1][0]
    if row is None or row[0] < latest:
        raise StoreNotReady(
            f"{path}: the database is not ready (schema {row[0] if row else 0}, this gateway"
            f" needs {latest}); start `gateway run` once to prepare it"
        )


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Every migration not applied yet, with foreign keys off (SQLite's way to make a
    table again: its references would otherwise follow the old one away), then checked."""
    await conn.execute("PRAGMA foreign_keys = OFF")
    applied = False
    for version, script in migrations("sqlite"):
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        if row is not None and row[0] >= version:
            continue
        try:
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
            applied = True
        except sqlite3.OperationalError:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            # Another process may have applied it first; that is fine.
            async with conn.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            if row is None or row[0] < version:
                raise
    if not applied:  # the check reads every table: only after a change
        return
    async with conn.execute("PRAGMA foreign_key_check") as cursor:
        broken = list(map(tuple, await cursor.fetchall()))
    if broken:
        raise StoreUnavailable(f"after the migrations, references do not hold: {broken[:5]}")
