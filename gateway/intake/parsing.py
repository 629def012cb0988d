"""Mail facts parsed in a worker process, beside the event loop rather than on its core.

Parsing headers is most of intake's CPU time, and a thread would still hold the
GIL the event loop needs: on a machine with a second core, a process gives
accept its core back during a burst (p99 at 32 connections 55 → 43 ms in
bench). A worker that dies on a batch (memory, a crash in C) never takes the
batch with it: its messages are parsed again one by one in fresh workers, so
only the message that kills a worker is handed back as an error (and shunted).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import structlog

from gateway.intake.facts import extract
from gateway.model import MailFacts

log = structlog.get_logger("gateway.intake")

Parsed = list[MailFacts | Exception]
Item = tuple[bytes, str | None]  # (raw, envelope sender)
Parser = Callable[[Sequence[Item]], Awaitable[Parsed]]


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
    # Stopping is the daemon's to do, with the batch in hand parsed first: systemd's
    # stop (KillMode=control-group) and a terminal's Ctrl-C signal this process too.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

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


class ProcessParser:
    work: Callable[[Sequence[Item]], Parsed] = staticmethod(extract_each)

    def __init__(self) -> None:
        # spawn, not fork: the daemon has threads (aiosqlite's), which fork would copy
        # half-held. Not forkserver: a server left behind by a killed daemon lives on.
        self._context = multiprocessing.get_context("spawn")
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            1, mp_context=self._context, initializer=_exit_with, initargs=(os.getpid(),)
        )
        pool.submit(extract_each, [])  # start the worker now, not with the first mail
        return pool

    async def __call__(self, items: Sequence[Item]) -> Parsed:
        try:
            return await self._run(items)
        except BrokenProcessPool:
            log.error("intake.parser_died", messages=len(items), action="one by one")
        parsed: Parsed = []
        for item in items:
            try:
                parsed.extend(await self._run([item]))
            except BrokenProcessPool:
                parsed.append(RuntimeError("the parser process died on this message"))
        return parsed

    async def _run(self, items: Sequence[Item]) -> Parsed:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self.work, list(items))
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
