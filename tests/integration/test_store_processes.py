"""The store shared by processes: the daemon's connections and the commands' beside them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.store.db import Database

# Another process's whole life on the store, as a command's: open, write, close.
_COMMAND = """
import asyncio, sys
from gateway.store.db import Database

async def main():
    db = await Database.open(sys.argv[1])
    async with db.transaction() as tx:
        await tx.run("INSERT INTO meta (key, value) VALUES (?, 'x')", (sys.argv[2],))
    await db.close()

asyncio.run(main())
"""


async def test_a_second_connection_opened_in_a_process_keeps_its_first_seeing_other_processes(
    tmp_path: Path,
) -> None:
    """The daemon opens the web inbox's reader beside its writer. Opening one must not let
    go of SQLite's locks on the file, or a command's close deletes the WAL from under the
    daemon's connections, which then see (and write) a store nobody else sees."""
    path = str(tmp_path / "gateway.db")
    writer = await Database.open(path)
    reader = await Database.open(path, readonly=True)
    try:
        written: list[str] = []
        for key in ("first", "second", "third"):  # each seen before the next is written
            command = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _COMMAND, path, key
            )
            assert await command.wait() == 0
            written.append(key)
            for db in (writer, reader):
                async with db.reading() as tx:
                    rows = await tx.all("SELECT key FROM meta WHERE value = 'x' ORDER BY rowid")
                assert [row[0] for row in rows] == written
    finally:
        await reader.close()
        await writer.close()
