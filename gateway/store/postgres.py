"""The PostgreSQL store: several daemons sharing one database (DESIGN §15), with asyncpg.

Each process has a pool of connections. Reads are snapshots (REPEATABLE READ, read
only) on any of them, never waiting for a writer. A write transaction holds the
store's write lock, a transaction-scoped advisory lock every process takes: the
same one-writer-at-a-time order SQLite's BEGIN IMMEDIATE gives, so every
read-modify-write written for one holds for the other; but accept's, which only
stores new mail (its unique key keeps a message once), commits beside them. Claims of queued rows
(`Tx.skip_locked`) and locking reads (`Tx.for_update`) take their row locks all
the same.

Jobs one process does at a time (`sole`) and jobs whose dead holders another must
notice (`presence`) are advisory locks held by a connection of their own: the
server lets go of them when that connection ends, with its process or its link.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import StatementFailed, StoreNotReady, StoreUnavailable
from gateway.store import db
from gateway.store.db import Record, migrations

log = structlog.get_logger("gateway.store")

POOL_SIZE = 8
CONNECT_TIMEOUT = 10.0
CHANNEL = "gateway"  # what commits NOTIFY, and every daemon LISTENs to
# How often the listening connection is tried (a link that died quietly is found so), and
# how long after losing it another is tried.
LISTEN_CHECK_SECONDS = 10.0

# SQLSTATE classes that are the store's trouble, not a statement's data: connection
# (08), resources (53), operator intervention such as a shutdown (57), the server's
# own failure (58, XX), a transaction rolled back by a deadlock or serialization (40),
# a lock not available (55); and a read-only transaction (25006): a standby's answer,
# after a failover, until the new primary is reached.
_STORE_TROUBLE = {"08", "53", "57", "58", "XX", "40", "55", "25006"}

if TYPE_CHECKING:  # generic in the stubs only
    Pooled: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:
    Pooled = PoolConnectionProxy


def _key(name: str) -> int:
    """The advisory lock key for `name`: 64 bits of its hash, as PostgreSQL's bigint."""
    return int.from_bytes(hashlib.sha256(f"gateway {name}".encode()).digest()[:8], signed=True)


WRITE_LOCK = _key("write")
MIGRATION_LOCK = _key("migrations")


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """`sql` with its `?` marks numbered as PostgreSQL's $1, $2…; none inside a quoted
    literal is a mark."""
    out: list[str] = []
    quoted = False
    count = 0
    for char in sql:
        if char == "'":
            quoted = not quoted
        if char == "?" and not quoted:
            count += 1
            out.append(f"${count}")
        else:
            out.append(char)
    return "".join(out)


def _trouble(error: BaseException) -> bool:
    if isinstance(error, asyncpg.PostgresError):  # the server's answer, by its SQLSTATE
        state = str(error.sqlstate or "XX")
        return state[:2] in _STORE_TROUBLE or state in _STORE_TROUBLE
    if isinstance(error, asyncpg.InterfaceError):
        # The driver's own refusals are a statement's (too many arguments, a value of the
        # wrong type), but for using a connection that is gone.
        return "closed" in str(error)
    return isinstance(error, OSError | TimeoutError | asyncpg.InternalClientError)


_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


@contextlib.contextmanager
def _classified(what: str = "the database is unavailable") -> Iterator[None]:
    """The driver's errors as the store's kinds: its trouble, or a statement's data."""
    try:
        yield
    except _DRIVER_ERRORS as error:
        if _trouble(error):
            raise StoreUnavailable(f"{what}: {error}") from None
        raise StatementFailed(f"{type(error).__name__}: {error}") from None


def _text(value: str) -> str:
    """Text as PostgreSQL can keep it: its text cannot hold NUL, which SQLite's can and
    hostile mail's headers do (raw mail is bytes, untouched). U+FFFD stands for it, as for
    any character that cannot be shown."""
    return value.replace("\0", "\ufffd") if "\0" in value else value


def _values(args: Sequence[Any]) -> list[Any]:
    return [_text(arg) if isinstance(arg, str) else arg for arg in args]


class PostgresTx(db.Tx):
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: Pooled) -> None:
        super().__init__()
        self._conn = conn

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Record | None:
        with _classified():
            row: Record | None = await self._conn.fetchrow(numbered(sql), *_values(args))
            return row

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[Record]:
        with _classified():
            return list(await self._conn.fetch(numbered(sql), *_values(args)))

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        with _classified():
            status: str = await self._conn.execute(numbered(sql), *_values(args))
        # "UPDATE 3", "INSERT 0 1", "DELETE 0": the count is the last word, if any
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with _classified():
                await self._conn.executemany(numbered(sql), [_values(row) for row in rows])

    def stored_text(self, value: str) -> str:
        return _text(value)

    def clock(self, *, later: bool = False) -> str:
        offset = " + CAST(? AS DOUBLE PRECISION) * interval '1 second'" if later else ""
        return (
            f"to_char(clock_timestamp() AT TIME ZONE 'UTC'{offset},"
            ' \'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\')'
        )


class _Tracer:
    """Gives every statement of the pool's connections to `to`, when set (`trace`)."""

    def __init__(self) -> None:
        self.to: Callable[[str], None] | None = None

    async def prepare(self, conn: asyncpg.Connection) -> None:
        conn.add_query_logger(self._log)

    def _log(self, query: asyncpg.connection.LoggedQuery) -> None:
        if self.to is not None:
            self.to(query.query)


class PostgresDatabase(db.Database):
    shared = True

    def __init__(self, pool: asyncpg.Pool, path: str, tracer: _Tracer) -> None:
        super().__init__(path)
        self._pool = pool
        self._lock = asyncio.Lock()
        self._tracer = tracer
        self._listener: _Listener | None = None

    @classmethod
    async def open(
        cls, path: str, *, create: bool = True, readonly: bool = False
    ) -> PostgresDatabase:
        """Open (and migrate) the store in the database `path` names, which must exist;
        without `create`, one no daemon has prepared yet is not made."""
        settings = {"application_name": process_name()}
        if readonly:
            settings["default_transaction_read_only"] = "on"
        tracer = _Tracer()
        try:
            with _classified(f"{db.shown(path)}: cannot open the database"):
                pool = await asyncpg.create_pool(
                    path,
                    min_size=1,
                    max_size=POOL_SIZE,
                    timeout=CONNECT_TIMEOUT,
                    server_settings=settings,
                    init=tracer.prepare,
                )
        except StatementFailed as error:  # a URL it cannot use: the operator's to mend
            raise StoreUnavailable(f"{db.shown(path)}: cannot open the database: {error}") from None
        database = cls(pool, path, tracer)
        try:
            async with pool.acquire() as conn:
                if readonly or not create:
                    await _check_version(conn, db.shown(path), migrating=not readonly)
                else:
                    await _migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return database

    @asynccontextmanager
    async def transaction(self, *, ordered: bool = True) -> AsyncIterator[db.Tx]:
        # One ordered writer at a time in this process: the others would only queue on the
        # write lock, each holding a connection meanwhile.
        async with self._lock if ordered else contextlib.nullcontext(), self._connection() as conn:
            with _classified():
                began = conn.transaction()
                await began.start()
            try:
                with _classified():
                    await conn.execute(f"SET LOCAL lock_timeout = {int(db.LOCK_WAIT_MS)}")
                    if ordered:
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                tx = PostgresTx(conn)
                yield tx
                if tx.told:  # delivered by the server at the commit, and only if it commits
                    with _classified():
                        await conn.execute(
                            "SELECT pg_notify($1, $2)", CHANNEL, ",".join(sorted(tx.told))
                        )
            except BaseException:
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await began.rollback()
                raise
            with _classified("the database could not commit"):
                await began.commit()

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[db.Tx]:
        async with self._connection() as conn:
            with _classified():
                began = conn.transaction(isolation="repeatable_read", readonly=True)
                await began.start()
            try:
                yield PostgresTx(conn)
            finally:
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await began.rollback()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Pooled]:
        with _classified():
            conn = await self._pool.acquire(timeout=CONNECT_TIMEOUT)
        try:
            yield conn
        finally:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await self._pool.release(conn)

    def subscribe(self, wake: Callable[[frozenset[str]], None]) -> bool:
        if self._listener is None:
            self._listener = _Listener(self.path)
        self._listener.wakes.append(wake)
        return True

    def presence(self, job: str) -> AdvisoryPresence:
        return AdvisoryPresence(self.path, job)

    def sole(self, job: str) -> AdvisorySole:
        return AdvisorySole(self.path, job)

    async def gone(self, processes: Iterable[str]) -> set[str]:
        names = {process_name(process): process for process in processes}
        if not names:
            return set()
        async with self.reading() as tx:
            rows = await tx.all(
                f"SELECT DISTINCT application_name AS name FROM pg_stat_activity"
                f" WHERE application_name IN ({', '.join('?' * len(names))})",
                list(names),
            )
        return set(names.values()) - {names[str(row["name"])] for row in rows}

    async def holders(self, job: str, *, sole: bool) -> list[db.Holder]:
        """From the server's lock table: the sessions holding the job's advisory lock, named
        as their processes named themselves."""
        key = _key(f"{'sole' if sole else 'presence'} {job}")
        unsigned = key % 2**64  # the lock table shows a bigint key as two unsigned halves
        async with self.reading() as tx:
            rows = await tx.all(
                "SELECT a.application_name AS name, to_char(a.backend_start AT TIME ZONE 'UTC',"
                " 'YYYY-MM-DD HH24:MI \"UTC\"') AS since FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND l.classid = CAST(? AS OID) AND l.objid = CAST(? AS OID)"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " ORDER BY a.backend_start",
                (unsigned >> 32, unsigned & 0xFFFFFFFF),
            )
        return [db.Holder(str(row["name"]), str(row["since"])) for row in rows]

    async def trace(self, statements: Callable[[str], None] | None) -> None:
        self._tracer.to = statements

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        with contextlib.suppress(*_DRIVER_ERRORS):
            await self._pool.close()


def process_name(process: str | None = None) -> str:
    """How a process ("HOST:PID"; this one by default) names itself to the server, as
    pg_stat_activity's application_name shows it (63 bytes at most): `gateway check` lists
    the daemons by it, and an outbox tells a dead lease holder's from a live one's."""
    return f"gateway {process or db.this_process()}"[:63]


async def _own_connection(path: str) -> asyncpg.Connection:
    """A connection of its own, for locks held as long as it lives."""
    with _classified(f"{db.shown(path)}: cannot connect"):
        conn: asyncpg.Connection = await asyncpg.connect(
            path, timeout=CONNECT_TIMEOUT, server_settings={"application_name": process_name()}
        )
        return conn


async def _close(conn: asyncpg.Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(*_DRIVER_ERRORS):
            await conn.close(timeout=CONNECT_TIMEOUT)


class _Listener:
    """LISTENs on a connection of its own and wakes every subscriber with the kinds each
    commit told. While it listens no NOTIFY is missed; one made while it was not (its
    link lost, or not yet listening) is made up for by waking everyone with every kind."""

    def __init__(self, path: str) -> None:
        self._path = path
        self.wakes: list[Callable[[frozenset[str]], None]] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await _own_connection(self._path)
                with _classified():
                    await conn.add_listener(CHANNEL, self._heard)
                self._tell(db.TOLD)
                while True:
                    await asyncio.sleep(LISTEN_CHECK_SECONDS)
                    with _classified():
                        await conn.execute("SELECT 1")
            except StoreUnavailable as error:
                log.warning("store.listen_lost", error=str(error), retry_in=LISTEN_CHECK_SECONDS)
            finally:
                await _close(conn)
            await asyncio.sleep(LISTEN_CHECK_SECONDS)

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self._tell(frozenset(str(payload).split(",")) & db.TOLD)

    def _tell(self, kinds: frozenset[str]) -> None:
        for wake in self.wakes:
            wake(kinds)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class AdvisoryPresence:
    """The processes doing one job: each holds an advisory lock shared, on a connection
    of its own; a gate lock, held exclusively while one joins, keeps the test of being
    alone and the taking up of the dead's leftovers to one joiner at a time."""

    def __init__(self, path: str, job: str) -> None:
        self._path = path
        self._key = _key(f"presence {job}")
        self._gate = _key(f"presence gate {job}")
        self._conn: asyncpg.Connection | None = None

    @asynccontextmanager
    async def joining(self) -> AsyncIterator[bool]:
        alone = False
        try:
            self._conn = await _own_connection(self._path)
            with _classified():
                await self._conn.execute("SELECT pg_advisory_lock($1)", self._gate)
                alone = bool(
                    await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key)
                )
                # A session's own locks never conflict: shared beside its exclusive is
                # granted at once, and the exclusive let go after.
                await self._conn.execute("SELECT pg_advisory_lock_shared($1)", self._key)
                if alone:
                    await self._conn.execute("SELECT pg_advisory_unlock($1)", self._key)
        except StoreUnavailable:  # nobody can be told apart: as if others were there
            await self.leave()
            alone = False
        try:
            yield alone
        finally:
            if self._conn is not None:
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await self._conn.execute("SELECT pg_advisory_unlock($1)", self._gate)

    async def leave(self) -> None:
        await _close(self._conn)
        self._conn = None


class AdvisorySole:
    """A job one process at a time does: an advisory lock held by a connection of its own,
    for as long as it lives."""

    def __init__(self, path: str, job: str) -> None:
        self._path = path
        self._key = _key(f"sole {job}")
        self._conn: asyncpg.Connection | None = None

    async def take(self) -> bool:
        if self._conn is None:
            self._conn = await _own_connection(self._path)
        try:
            with _classified():
                taken = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key)
        except StoreUnavailable:
            await self.release()
            raise
        if not taken:
            await self.release()
        return bool(taken)

    async def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            with _classified():
                await self._conn.fetchval("SELECT 1")
        except StoreUnavailable:  # the link is gone, and the lock with it
            await self.release()
            return False
        return True

    async def release(self) -> None:
        await _close(self._conn)
        self._conn = None


async def _migrate(conn: Pooled) -> None:
    """Every migration not applied yet, in one transaction, one process at a time; nothing
    written when there is none (a read-only standby still opens)."""
    latest = migrations("postgresql")[-1][0]
    with _classified("cannot prepare the database"):
        if await _version(conn) >= latest:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            current = await _version(conn)
            for version, script in migrations("postgresql"):
                if version > current:
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_version VALUES ($1)", version)


async def _version(conn: Pooled) -> int:
    if not await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def _check_version(conn: Pooled, shown: str, *, migrating: bool) -> None:
    """A store no daemon prepared yet is refused; one behind this gateway's schema is
    migrated when `migrating`, else refused."""
    latest = migrations("postgresql")[-1][0]
    with _classified(f"{shown}: cannot read the database"):
        current = await _version(conn)
    if current == 0:
        raise StoreNotReady(f"{shown}: no database here (has `gateway run` started yet?)")
    if current >= latest:
        return
    if migrating:
        await _migrate(conn)
        return
    raise StoreNotReady(
        f"{shown}: the database is not ready (schema {current}, this gateway"
        f" needs {latest}); start `gateway run` once to prepare it"
    )
