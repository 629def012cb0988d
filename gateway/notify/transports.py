"""How an alert leaves: a smarthost over SMTP (aiosmtplib), or .eml files in a folder."""

from __future__ import annotations

import asyncio
import os
import tempfile
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from gateway.config import NotifySection

TIMEOUT_SECONDS = 30


class Transport(Protocol):
    async def send(self, message: EmailMessage, recipient: str, name: str) -> None: ...


class SmtpTransport:
    def __init__(self, notify: NotifySection) -> None:
        self._notify = notify

    async def send(self, message: EmailMessage, recipient: str, name: str) -> None:
        n = self._notify
        sender = message["From"].addresses[0].addr_spec
        # Flattened off the loop: the original attached may be megabytes.
        data = await asyncio.to_thread(message.as_bytes, policy=policy.SMTP)
        await aiosmtplib.send(
            data,
            sender=sender,
            recipients=[recipient],
            hostname=n.smtp_host,
            port=n.smtp_port,
            use_tls=n.tls,
            start_tls=n.starttls,
            username=n.username,
            password=n.secret(),
            timeout=TIMEOUT_SECONDS,
        )


class FileTransport:
    """Writes each alert as NAME.eml, atomically; sending twice overwrites the same file."""

    def __init__(self, folder: str) -> None:
        self._folder = Path(folder)

    async def send(self, message: EmailMessage, recipient: str, name: str) -> None:
        await asyncio.to_thread(self._write, message.as_bytes(policy=policy.SMTP), name)

    def _write(self, data: bytes, name: str) -> None:
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # alerts carry customer mail
        fd, temporary = tempfile.mkstemp(dir=self._folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._folder / f"{name}.eml")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def transport_for(notify: NotifySection) -> Transport:
    return FileTransport(notify.file_dir) if notify.backend == "file" else SmtpTransport(notify)
