"""The baseline: aiosmtpd on its own loop, whose handle_DATA only answers 250. It
advertises PIPELINING through the same EHLO hook as the gateway, so both are measured alike."""

from __future__ import annotations

import asyncio
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.ingress.smtp import Pipelining


class Answer(Pipelining):
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Answer(), hostname="bare", loop=loop, enable_SMTPUTF8=True), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
