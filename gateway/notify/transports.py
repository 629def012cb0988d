"""How an alert leaves: a smarthost over SMTP (aiosmtplib), or .eml files in a folder."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Protocol

import aiosmtplib

from gateway.config import NotifySection
from gateway.store.db import file_mode

TIMEOUT_SECONDS = 30


class SmarthostDown(Exception):
    """No session with the smarthost could be had, or the one in hand failed as a whole
    (refused, timed out, 421): any alert would fail alike, not this one alone."""


class Transport(Protocol):
    async def send(
        self, data: bytes, recipient: str, name: str, sender: str | None = None
    ) -> None: ...

    async def close(self) -> None:
        """Let go of what `send` kept open between alerts."""


class SmtpTransport:
    """One session with the smarthost for a run of alerts (connect, TLS and login once),
    closed by the outbox once it has been idle a while: a backlog, or a steady load,
    is not one connection an alert."""

    def __init__(self, notify: NotifySection) -> None:
        self._notify = notify
        self._client: aiosmtplib.SMTP | None = None

    async def send(self, data: bytes, recipient: str, name: str, sender: str | None = None) -> None:
        # An alert's envelope sender is not its From: its bounce (a typo in an agent's
        # address, a full mailbox) must not land in that inbox, which may be one the
        # gateway reads, nor answer back. An answer's is its inbox (`sender`): a customer's
        # bounce is mail of the conversation.
        if sender is None:
            sender = self._notify.bounce_address or ""
        if self._client is not None and self._client.is_connected:
            try:
                await self._sendmail(self._client, sender, recipient, data)
                return
            except aiosmtplib.SMTPServerDisconnected:
                pass  # the smarthost ended the session between alerts: a new one below
        self._drop()
        try:
            self._client = await self._connect()
        except (aiosmtplib.SMTPException, OSError) as error:
            raise SmarthostDown(_described(error)) from error
        try:
            await self._sendmail(self._client, sender, recipient, data)
        except aiosmtplib.SMTPServerDisconnected as error:  # a session no sooner had than lost
            raise SmarthostDown(_described(error)) from error

    async def _sendmail(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes
    ) -> None:
        try:
            await client.sendmail(sender, [recipient], data)
        except aiosmtplib.SMTPServerDisconnected:
            self._drop()
            raise
        except (aiosmtplib.SMTPTimeoutError, OSError) as error:
            self._drop()
            raise SmarthostDown(_described(error)) from error
        except aiosmtplib.SMTPResponseException as error:
            self._drop()  # whatever state the session is in, the next starts clean
            if error.code == 421:  # the smarthost is closing: not this alert's fault
                raise SmarthostDown(_described(error)) from error
            raise
        except BaseException:
            self._drop()
            raise

    async def _connect(self) -> aiosmtplib.SMTP:
        client = smarthost_client(self._notify, TIMEOUT_SECONDS)
        await client.connect()
        return client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.is_connected:
                await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()

    def _drop(self) -> None:
        """Close the session at once, without QUIT."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


class FileTransport:
    """Writes each alert as NAME.eml, atomically; sending twice overwrites the same file."""

    def __init__(self, folder: str) -> None:
        self._folder = Path(folder)

    async def close(self) -> None:
        pass

    async def send(self, data: bytes, recipient: str, name: str, sender: str | None = None) -> None:
        # Written off the loop: the original attached may be megabytes, and fsync waits.
        await asyncio.to_thread(self._write, data, name)

    def _write(self, data: bytes, name: str) -> None:
        # Alerts carry customer mail: the folder and files are as private as the database.
        if not self._folder.is_dir():
            shared = file_mode(str(self._folder)) == 0o660
            self._folder.mkdir(parents=True, exist_ok=True)
            self._folder.chmod(0o770 if shared else 0o700)  # whatever the umask says
        fd, temporary = tempfile.mkstemp(dir=self._folder, suffix=".tmp")
        try:
            os.fchmod(fd, file_mode(str(self._folder / name)))
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._folder / f"{name}.eml")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def smarthost_client(notify: NotifySection, timeout: float) -> aiosmtplib.SMTP:
    """A client for the smarthost as configured (TLS or STARTTLS, login), not connected."""
    return aiosmtplib.SMTP(
        hostname=notify.smtp_host,
        port=notify.smtp_port,
        use_tls=notify.tls,
        start_tls=notify.starttls,
        username=notify.username,
        password=notify.secret(),
        timeout=timeout,
    )


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def transport_for(notify: NotifySection) -> Transport:
    return FileTransport(notify.file_dir) if notify.backend == "file" else SmtpTransport(notify)
