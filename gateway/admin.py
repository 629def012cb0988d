"""What people do to the store through the `gateway` command, one transaction each."""

from __future__ import annotations

from gateway import alertmark
from gateway.clock import Clock, stamp, utcnow
from gateway.config import Settings
from gateway.errors import Refused
from gateway.intake.worker import Intake, Outcome
from gateway.model import STATUSES
from gateway.store import queries
from gateway.store.db import Database


async def set_status(
    db: Database, settings: Settings, agent: str, status: str, clock: Clock = utcnow
) -> None:
    if settings.agent(agent) is None:
        raise Refused(f"There is no agent {agent!r} in the configuration.")
    if status not in STATUSES:
        raise Refused(f"{status!r} is not a status; use one of {', '.join(STATUSES)}.")
    async with db.transaction() as conn:
        await queries.set_agent_status(conn, agent, status, stamp(clock()))


async def retry(
    db: Database, settings: Settings, message_pk: int, clock: Clock = utcnow
) -> Outcome:
    """Put a shunted message back and run intake on it now, in this process."""
    async with db.transaction() as conn:
        if not await queries.unshunt(conn, message_pk):
            raise Refused(f"Message {message_pk} is not shunted (see `gateway shunted`).")
        secret = await alertmark.load_secret(conn)
    async with db.reading() as conn:
        stored = await queries.message(conn, message_pk)
    assert stored is not None
    outcome = await Intake(db, settings, secret, clock=clock).process(stored)
    if outcome.state != "skipped":
        return outcome
    # The running daemon took it first: report what became of it there.
    async with db.reading() as conn:
        row = await queries.message_outcome(conn, message_pk)
    return Outcome(row["state"], row["conversation_id"], error=row["error"])
