"""DATA as the relay reads it: the message back byte for byte, the pipelined rest left alone."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ingress.smtpdata import YIELD_BYTES, TooBig, read_data

NEXT = b"MAIL FROM:<next@example.org>\r\n"
# Lines as a client writes them: any bytes but CRLF, so bare LF and CR too, often a dot first.
LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"\n").rstrip(b"\r"))
LINES = st.lists(st.one_of(LINE, LINE.map(lambda b: b"." + b)), max_size=20)


def section(lines: list[bytes]) -> tuple[bytes, bytes]:
    """(the message, what a client sends of it after DATA): dots doubled, a `.` line after."""
    message = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in lines)
    return message, stuffed + b".\r\n"


def reader_of(data: bytes, limit: int = 64) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


@given(lines=LINES)
async def test_the_message_comes_back_as_sent_and_the_next_command_is_left(
    lines: list[bytes],
) -> None:
    message, sent = section(lines)
    reader = reader_of(sent + NEXT)
    assert await read_data(reader, None) == message
    assert await reader.read() == NEXT


@given(lines=LINES.filter(lambda lines: sum(len(line) + 2 for line in lines) > 30))
async def test_a_message_over_the_limit_is_refused_and_read_to_its_end(lines: list[bytes]) -> None:
    _, sent = section(lines)
    reader = reader_of(sent + NEXT)
    with pytest.raises(TooBig):
        await read_data(reader, 30)
    assert await reader.read() == NEXT


async def test_a_message_at_the_limit_is_taken() -> None:
    message, sent = section([b"x" * 28])
    assert await read_data(reader_of(sent), 30) == message


async def test_a_large_message_already_received_gives_the_loop_turns_while_it_is_read() -> None:
    message, sent = section([b"y" * 76] * (4 * YIELD_BYTES // 78))
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count())
    await asyncio.sleep(0)
    before = turns
    assert await read_data(reader_of(sent, 64 * 1024), None) == message
    counter.cancel()
    assert turns - before >= 3


async def test_a_connection_that_ends_inside_data_is_an_error() -> None:
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await read_data(reader_of(b"Subject: cut\r\n\r\nhalf a"), None)
