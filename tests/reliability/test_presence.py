"""Who is doing the outbox's job on a database, told apart by real processes' lock files.

The one that joins alone takes up what the dead left half done; until it has,
another that arrives waits at the gate, and then joins as one of several.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.integration

JOINER = """
import asyncio, sys
from gateway.store.sqlite import FilePresence

async def main() -> None:
    async with FilePresence(sys.argv[1]).joining() as alone:
        print("alone" if alone else "not alone", flush=True)
        sys.stdin.readline()  # taking up what the dead left, until told it is done
    print("joined", flush=True)
    sys.stdin.readline()

asyncio.run(main())
"""


class Joiner:
    def __init__(self, lock: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", JOINER, str(lock)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def said(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def go_on(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def waits_on_a_lock(self) -> bool:
        """Whether the kernel lists it as blocked on a lock (a `->` line in /proc/locks)."""
        blocked = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
        return any(f[1] == "->" and f[5] == str(self.process.pid) for f in blocked if len(f) > 5)


@pytest.fixture
def joiners(tmp_path: Path) -> Iterator[list[Joiner]]:
    started: list[Joiner] = []
    yield started
    for joiner in started:
        joiner.process.kill()
        joiner.process.communicate()


def test_a_process_arriving_while_another_recovers_waits_then_joins_not_alone(
    tmp_path: Path, joiners: list[Joiner]
) -> None:
    lock = tmp_path / "gateway.db-outbox.lock"
    first = Joiner(lock)
    joiners.append(first)
    assert first.said() == "alone"
    second = Joiner(lock)
    joiners.append(second)
    wait_until(second.waits_on_a_lock, what="the second to wait at the gate")
    first.go_on()
    assert first.said() == "joined"
    assert second.said() == "not alone"  # the first holds its place, shared
    second.go_on()
    assert second.said() == "joined"


def test_a_process_arriving_after_the_others_were_killed_is_alone(
    tmp_path: Path, joiners: list[Joiner]
) -> None:
    lock = tmp_path / "gateway.db-outbox.lock"
    first = Joiner(lock)
    joiners.append(first)
    assert first.said() == "alone"
    first.go_on()
    assert first.said() == "joined"
    first.process.kill()  # SIGKILL: the kernel lets go of its locks
    first.process.communicate()
    later = Joiner(lock)
    joiners.append(later)
    assert later.said() == "alone"
