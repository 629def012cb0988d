"""The libraries' internals the gateway leans on, as the versions pyproject.toml pins have them.

A new aiosmtpd or aiosqlite that changes one fails here, naming the hook, rather than
somewhere downstream.
"""

from __future__ import annotations

import asyncio
import inspect
import smtplib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.ingress.smtp import TOO_BIG_REPLIES
from gateway.store.db import Database
from tests.conftest import free_port


class Taker:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


@pytest.fixture
def plain_aiosmtpd_of() -> Iterator[Callable[[type[SMTP]], int]]:
    """aiosmtpd as it comes (a 1,000-octet size limit), its session of the class given."""
    controllers: list[Controller] = []

    def start(session: type[SMTP]) -> int:
        controller = _Controller(
            session, Taker(), hostname="127.0.0.1", port=free_port(), data_size_limit=1000
        )
        controller.start()
        controllers.append(controller)
        return int(controller.port)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def plain_aiosmtpd(plain_aiosmtpd_of: Callable[[type[SMTP]], int]) -> int:
    return plain_aiosmtpd_of(SMTP)


class _Controller(Controller):  # type: ignore[misc]
    """Controller's documented way to serve a session class of one's own: `factory`."""

    def __init__(self, session: type[SMTP], *args: Any, **kwargs: Any) -> None:
        self._session = session
        super().__init__(*args, **kwargs)

    def factory(self) -> SMTP:
        return self._session(self.handler, **self.SMTP_kwargs)


def _data(port: int, raw: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo()
        client.mail("a@example.org")
        client.rcpt("b@example.org")
        code, text = client.data(raw)
    return code, f"{code} {text.decode()}"


def test_aiosmtpds_reply_to_a_declared_size_over_the_limit_is_one_the_relay_rewrites(
    plain_aiosmtpd: int,
) -> None:
    with smtplib.SMTP("127.0.0.1", plain_aiosmtpd) as client:
        client.ehlo()
        code, text = client.mail("a@example.org", ["SIZE=5000"])
    assert code == 552 and f"{code} {text.decode()}".startswith(TOO_BIG_REPLIES)


def test_aiosmtpd_dispatches_data_to_smtp_data_reading_from_the_sessions_reader(
    plain_aiosmtpd_of: Callable[[type[SMTP]], int],
) -> None:
    seen: list[object] = []

    class Watched(SMTP):  # type: ignore[misc]
        async def smtp_DATA(self, arg: str) -> None:
            seen.append(self._reader)
            await super().smtp_DATA(arg)

    code, _ = _data(plain_aiosmtpd_of(Watched), b"Subject: x\r\n\r\nx\r\n")
    assert code == 250
    assert len(seen) == 1 and isinstance(seen[0], asyncio.StreamReader)
    for check in ("check_helo_needed", "check_auth_needed"):
        assert inspect.iscoroutinefunction(getattr(SMTP, check))


def test_aiosqlite_hands_every_call_to_the_execute_the_store_overrides() -> None:
    execute = aiosqlite.Connection._execute
    assert inspect.iscoroutinefunction(execute)
    assert list(inspect.signature(execute).parameters) == ["self", "fn", "args", "kwargs"]


async def test_statements_in_a_transaction_run_on_the_loops_thread_others_on_aiosqlites(
    tmp_path: Path,
) -> None:
    db = await Database.open(str(tmp_path / "gateway.db"))
    threads: dict[str, int] = {}

    def record(sql: str) -> None:
        threads[sql] = threading.get_ident()

    try:
        await db.trace(record)
        async with db.transaction() as tx:
            await tx.one("SELECT 'inside'")
        async with db.reading() as tx:
            await tx.one("SELECT 'outside'")
    finally:
        await db.close()
    assert threads["SELECT 'inside'"] == threading.get_ident()
    assert threads["SELECT 'outside'"] != threading.get_ident()
