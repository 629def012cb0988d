"""Mail facts parsed in a worker process, beside the event loop rather than on its core.

Parsing headers is most of intake's CPU time, and a thread would still hold the
GIL the event loop needs: on a machine with a second core, a process gives
accept its core back during a burst (p99 at 32 connections 55 → 43 ms in
bench). A message that kills or hangs the worker comes back alone as an error
(and is shunted); see `gateway/offload.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from gateway.intake.facts import extract
from gateway.model import MailFacts
from gateway.offload import WorkerLost, WorkerProcess

Parsed = list[MailFacts | Exception]
Item = tuple[bytes, str | None]  # (raw, envelope sender)
Parser = Callable[[Sequence[Item]], Awaitable[Parsed]]

TIMEOUT = 30.0  # per batch, and per message when parsed one by one


def extract_each(items: Sequence[Item]) -> Parsed:
    """Each message's facts, or the exception that parsing it raised."""
    parsed: Parsed = []
    for raw, envelope_from in items:
        try:
            parsed.append(extract(raw, envelope_from))
        except Exception as error:  # shunted with its reason, like any failure
            parsed.append(error)
    return parsed


class ThreadParser:
    """For one-off work (`gateway retry`): no process to start."""

    async def __call__(self, items: Sequence[Item]) -> Parsed:
        return await asyncio.to_thread(extract_each, items)

    def close(self) -> None:
        pass


class ParserLost(WorkerLost):
    """The parser process died or overran its time on this message; it was replaced."""


class ProcessParser(WorkerProcess[Item, MailFacts]):
    """Intake's parser: one batch at a time (intake's loop is its one caller)."""

    work = staticmethod(extract_each)
    timeout = TIMEOUT
    lost = ParserLost
    title = "gateway-parser"
    worker = "the parser process"
    doing = "parsing"
    item = "message"
