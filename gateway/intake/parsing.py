"""Mail facts parsed in a worker process, beside the event loop rather than on its core.

Parsing headers is most of intake's CPU time, and a thread would still hold the
GIL the event loop needs: on a machine with a second core, a process gives
accept its core back during a burst (p99 at 32 connections 55 → 43 ms in
bench). A worker that dies on a batch (memory, a crash in C) or takes longer
than TIMEOUT over it (a hang stops all routing) never takes the batch with it:
it is killed and replaced, the batch's messages are parsed again one by one,
and only the message that kills or hangs a worker is handed back as an error
(and shunted).
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from typing import Any

import structlog

from gateway.intake.facts import extract
from gateway.model import MailFacts

log = structlog.get_logger("gateway.intake")

Parsed = list[MailFacts | Exception]
Item = tuple[bytes, str | None]  # (raw, envelope sender)
Parser = Callable[[Sequence[Item]], Awaitable[Parsed]]
Work = Callable[[Sequence[Item]], Parsed]

TIMEOUT = 30.0  # per batch, and per message when parsed one by one
STARTUP = 60.0  # a fresh worker's imports are not parse time


def extract_each(items: Sequence[Item]) -> Parsed:
    """Each message's facts, or the exception that parsing it raised."""
    parsed: Parsed = []
    for raw, envelope_from in items:
        try:
            parsed.append(extract(raw, envelope_from))
        except Exception as error:  # shunted with its reason, like any failure
            parsed.append(error)
    return parsed


def _exit_with(parent: int) -> None:
    """In the worker: end when the daemon does, SIGKILL included (nothing else tells it)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-daemon", daemon=True).start()


class ThreadParser:
    """For one-off work (`gateway retry`): no process to start."""

    async def __call__(self, items: Sequence[Item]) -> Parsed:
        return await asyncio.to_thread(extract_each, items)

    def close(self) -> None:
        pass


class ParserLost(RuntimeError):
    """The parser process died or overran its time on this message; it was replaced."""


def _serve(conn: Connection, parent: int, work: Work) -> None:
    """The worker: parse each batch the daemon sends until it closes the pipe."""
    # Stopping is the daemon's to do, with the batch in hand parsed first: systemd's
    # stop (KillMode=control-group) and a terminal's Ctrl-C signal this process too.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with(parent)
    try:
        conn.send(None)  # ready
        while True:
            conn.send(work(conn.recv()))
    except (EOFError, OSError):
        return  # the daemon closed its end, perhaps before this process was even up


class _Worker:
    """One parser process and the daemon's end of its pipe."""

    def __init__(self, context: SpawnContext, work: Work) -> None:
        self.conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, os.getpid(), work), name="gateway-parser", daemon=True
        )
        self.process.start()
        theirs.close()
        self.ready = False

    def exchange(self, items: list[Item], timeout: float) -> Parsed:
        """In a thread: the worker's facts for `items`, or ParserLost."""
        try:
            if not self.ready:
                self._answer(STARTUP)
                self.ready = True
            self.conn.send(items)
            parsed: Parsed = self._answer(timeout)
            return parsed
        except (EOFError, OSError):
            raise ParserLost("the parser process died on this message") from None

    def _answer(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise ParserLost(f"parsing took longer than {timeout:g} s")
        return self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def close(self, timeout: float) -> None:
        self.conn.close()  # the worker's cue to end, once the batch in hand is parsed
        self.process.join(timeout)
        self.kill()


class ProcessParser:
    """Intake's parser: one batch at a time (intake's loop is its one caller)."""

    work: Work = staticmethod(extract_each)
    timeout = TIMEOUT

    def __init__(self) -> None:
        # spawn, not fork: the daemon has threads (aiosqlite's), which fork would copy
        # half-held. Not forkserver: a server left behind by a killed daemon lives on.
        self._context = multiprocessing.get_context("spawn")
        self._worker = _Worker(self._context, self.work)  # now, not with the first mail
        # Before multiprocessing's own exit hook, which would wait for a worker that
        # ignores its SIGTERM.
        atexit.register(self.close)

    async def __call__(self, items: Sequence[Item]) -> Parsed:
        try:
            return await self._run(items)
        except ParserLost as lost:
            log.error(
                "intake.parser_lost", messages=len(items), reason=str(lost), action="one by one"
            )
        parsed: Parsed = []
        for item in items:
            try:
                parsed.extend(await self._run([item]))
            except ParserLost as lost:
                parsed.append(lost)
        return parsed

    async def _run(self, items: Sequence[Item]) -> Parsed:
        worker = self._worker
        try:
            return await asyncio.to_thread(worker.exchange, list(items), self.timeout)
        except BaseException:  # lost, or cancelled mid-batch: the pipe's state is unknown
            worker.kill()
            self._worker = _Worker(self._context, self.work)
            raise

    def close(self) -> None:
        atexit.unregister(self.close)
        self._worker.close(self.timeout)
