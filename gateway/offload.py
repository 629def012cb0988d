"""Work done in a process beside the event loop, in batches, that no item can take down.

CPU-bound work in a thread still holds the GIL the event loop needs; a process
of its own runs on another core. A worker that dies on a batch (memory, a
crash in C) or takes longer than its timeout over it never takes the batch
with it: it is killed and replaced, the batch is done again one item at a
time, and only the item that kills or hangs a worker comes back as an error.
Intake parses mail this way (`intake/parsing.py`), the outbox builds alerts.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger("gateway.offload")

I = TypeVar("I")  # noqa: E741  # an item of work
O = TypeVar("O")  # noqa: E741  # its result

STARTUP = 60.0  # a fresh worker's imports are not work time
STOPS = {signal.SIGTERM, signal.SIGINT}


class WorkerLost(RuntimeError):
    """The worker process died or overran its time on this item; it was replaced."""


def _exit_with(parent: int) -> None:
    """In the worker: end when the daemon does, SIGKILL included (nothing else tells it)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-daemon", daemon=True).start()


def _serve(conn: Connection, parent: int, work: Callable[[Any], Any]) -> None:
    """The worker: do each batch the daemon sends until it closes the pipe."""
    # Stopping is the daemon's to do, with the batch in hand done first: systemd's
    # stop (KillMode=control-group) and a terminal's Ctrl-C signal this process too.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # blocked since the spawn: now ignored
    _exit_with(parent)
    try:
        conn.send(None)  # ready
        while True:
            conn.send(work(conn.recv()))
    except (EOFError, OSError):
        return  # the daemon closed its end, perhaps before this process was even up


class _Worker:
    """One worker process and the daemon's end of its pipe."""

    def __init__(self, context: SpawnContext, pool: WorkerProcess[Any, Any]) -> None:
        self.conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, os.getpid(), pool.work), name=pool.title, daemon=True
        )
        # A stop signalled to the daemon's whole group (systemd's) as the worker starts
        # would end it before it ignores such signals: the spawned process inherits
        # them blocked, and ignores them before it unblocks them.
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        theirs.close()
        self.ready = False
        self._pool = pool

    def exchange(self, items: list[Any], timeout: float) -> list[Any]:
        """In a thread: the worker's results for `items`, or the pool's `lost` error."""
        try:
            if not self.ready:
                self._answer(STARTUP)
                self.ready = True
            self.conn.send(items)
            done: list[Any] = self._answer(timeout)
            return done
        except (EOFError, OSError):
            raise self._pool.lost(f"{self._pool.worker} died on this {self._pool.item}") from None

    def _answer(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise self._pool.lost(f"{self._pool.doing} took longer than {timeout:g} s")
        return self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def close(self, timeout: float) -> None:
        self.conn.close()  # the worker's cue to end, once the batch in hand is done
        self.process.join(timeout)
        self.kill()


class WorkerProcess(Generic[I, O]):
    """`work` over batches in one process, a batch at a time (its one caller awaits each).

    A subclass names the work: `work` (each item's result or the exception doing
    it raised), `timeout` per batch and per item done alone, and the words its
    errors and logs use.
    """

    work: Callable[[Sequence[I]], list[O | Exception]]
    timeout: float
    lost: type[Exception] = WorkerLost
    title = "gateway-worker"  # the process's name
    worker = "the worker process"
    doing = "the work"
    item = "item"

    def __init__(self) -> None:
        # spawn, not fork: the daemon has threads (aiosqlite's), which fork would copy
        # half-held. Not forkserver: a server left behind by a killed daemon lives on.
        self._context = multiprocessing.get_context("spawn")
        self._worker = _Worker(self._context, self)  # now, not with the first item
        # Before multiprocessing's own exit hook, which would wait for a worker that
        # ignores its SIGTERM.
        atexit.register(self.close)

    async def __call__(self, items: Sequence[I]) -> list[O | Exception]:
        try:
            return await self._run(items)
        except self.lost as lost:
            log.error(
                "offload.worker_lost",
                worker=self.title,
                items=len(items),
                reason=str(lost),
                action="one by one",
            )
        done: list[O | Exception] = []
        for item in items:
            try:
                done.extend(await self._run([item]))
            except self.lost as lost:
                done.append(lost)
        return done

    async def _run(self, items: Sequence[I]) -> list[O | Exception]:
        worker = self._worker
        try:
            return await asyncio.to_thread(worker.exchange, list(items), self.timeout)
        except BaseException:  # lost, or cancelled mid-batch: the pipe's state is unknown
            worker.kill()
            self._worker = _Worker(self._context, self)
            raise

    def close(self) -> None:
        atexit.unregister(self.close)
        self._worker.close(self.timeout)
