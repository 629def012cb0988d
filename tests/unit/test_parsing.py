"""Intake's parser process: the same facts as parsing in place, and no batch lost with it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from gateway.intake.facts import extract
from gateway.intake.parsing import Item, Parsed, ProcessParser, extract_each

MAIL = [
    (
        b"From: Wile <wile@acme.com>\r\nSubject: Rocket\r\nMessage-ID: <1@acme.com>\r\n\r\n"
        b"boom\r\n",
        None,
    ),
    (b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n", "env@example.org"),
    (b"\x00\xff not mail at all", ""),
]


async def test_the_parser_process_gives_the_facts_parsing_in_place_gives() -> None:
    parser = ProcessParser()
    try:
        assert await parser(MAIL) == [extract(raw, sender) for raw, sender in MAIL]
    finally:
        parser.close()


def dies_on_poison(items: Sequence[Item]) -> Parsed:
    if any(b"poison" in raw for raw, _ in items):
        os._exit(1)  # as a worker killed by the kernel would
    return extract_each(items)


class FragileParser(ProcessParser):
    work = staticmethod(dies_on_poison)


async def test_a_message_that_kills_the_parser_comes_back_alone_as_an_error() -> None:
    parser = FragileParser()
    try:
        batch = [MAIL[0], (b"Subject: poison\r\n\r\n", None), MAIL[1]]
        first, poisoned, last = await parser(batch)
        assert first == extract(*MAIL[0]) and last == extract(*MAIL[1])
        assert isinstance(poisoned, RuntimeError) and "died" in str(poisoned)
        assert await parser([MAIL[0]]) == [extract(*MAIL[0])]  # and it goes on working
    finally:
        parser.close()


def hangs_on_mark(items: Sequence[Item]) -> Parsed:
    if any(b"hang" in raw for raw, _ in items):
        time.sleep(3600)  # as a parse caught in a loop would
    return extract_each(items)


class HangingParser(ProcessParser):
    work = staticmethod(hangs_on_mark)
    timeout = 2.0


async def test_a_message_whose_parse_hangs_comes_back_alone_as_an_error() -> None:
    parser = HangingParser()
    try:
        batch = [MAIL[0], (b"Subject: hang\r\n\r\n", None), MAIL[1]]
        first, hung, last = await parser(batch)
        assert first == extract(*MAIL[0]) and last == extract(*MAIL[1])
        assert isinstance(hung, Exception) and str(hung) == "parsing took longer than 2 s"
        assert await parser([MAIL[0]]) == [extract(*MAIL[0])]  # and it goes on working
    finally:
        parser.close()


def test_a_parser_left_open_lets_the_interpreter_exit() -> None:
    # multiprocessing joins its children at exit; this one ignores the SIGTERM it sends first.
    script = (
        "import asyncio; from gateway.intake.parsing import ProcessParser\n"
        "parser = ProcessParser(); asyncio.run(parser([]))  # up, and ignoring SIGTERM"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_a_parser_signalled_to_stop_as_it_starts_lives_on() -> None:
    parser = ProcessParser()
    try:
        # systemd's stop reaches the whole group, the worker still importing included.
        [worker] = [c for c in multiprocessing.active_children() if c.name == "gateway-parser"]
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGTERM)
        assert await parser(MAIL) == [extract(raw, sender) for raw, sender in MAIL]
        assert worker.is_alive()
    finally:
        parser.close()
