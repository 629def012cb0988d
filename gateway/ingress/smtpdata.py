"""An SMTP DATA section read in pieces, giving the loop back between them.

aiosmtpd reads DATA a line at a time and keeps every line until the end: with a
reader buffer as large as the size limit (needed for its long-line check, since
bare-LF mail is one line to it), a 25 MB message was some 300,000 lines handled
in one step of the event loop, 0.15 s during which no other session was served.
Here the section is read up to each `.` at the end of a line, the loop gets a
turn every `YIELD_BYTES`, and the dot-unstuffing of RFC 5321 §4.5.2 is one
replace, off the loop when large. Lines are as aiosmtpd sees them: ended by CRLF.
"""

from __future__ import annotations

import asyncio

YIELD_BYTES = 256 * 1024
OFF_LOOP_BYTES = 1024 * 1024
_END = b"\r\n.\r\n"


class TooBig(Exception):
    """The section was over the size limit; it was read to its end all the same."""


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> bytes:
    """The message after DATA's 354, up to the line holding a lone `.`, unstuffed.

    Nothing after that line is read: a client may pipeline its next command.
    """
    data = bytearray()
    received = since_yield = 0
    too_big = False
    while True:
        try:
            piece = await reader.readuntil(b".\r\n")
        except asyncio.LimitOverrunError as error:  # no `.` line within the buffer yet
            piece = await reader.read(min(error.consumed, YIELD_BYTES))
        if not piece:
            raise ConnectionResetError("the connection ended inside DATA")
        received += len(piece)
        data += piece
        if data == b".\r\n" or data.endswith(_END):
            break
        if limit and received > limit + len(_END) and not too_big:
            too_big = True
        if too_big:
            del data[: -len(_END)]  # only what could still end the section is kept
        since_yield += len(piece)
        if since_yield >= YIELD_BYTES:
            since_yield = 0
            await asyncio.sleep(0)
    if too_big or (limit and received - 3 > limit):
        raise TooBig
    if len(data) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(_content, data)
    return _content(data)


def _content(data: bytearray) -> bytes:
    # Less the `.` line: the CRLF before it ends the last line of the message.
    return unstuff(bytes(memoryview(data)[:-3]))


def unstuff(content: bytes) -> bytes:
    """RFC 5321 §4.5.2: the client doubled each `.` that starts a line; undo it."""
    if content.startswith(b"."):
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n")
