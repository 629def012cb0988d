"""The few kinds of error, each with what the caller does about it."""

from __future__ import annotations


class GatewayError(Exception):
    """Base: a sentence a person can act on."""


class ConfigError(GatewayError):
    """Bad configuration: refuse to start, name each key and why."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []

    def __str__(self) -> str:
        return "\n".join([self.args[0], *(f"  {line}" for line in self.details)])


class StoreUnavailable(GatewayError):
    """The store could not commit: SMTP answers 451, ingest exits 75; the sender retries."""


class StoreNotReady(StoreUnavailable):
    """The store has not been prepared (migrated) by a `gateway run` yet."""


class Refused(GatewayError):
    """A person's action that cannot be done (unknown conversation, agent...): exit 1."""


class StatementFailed(GatewayError):
    """A statement failed on what it was given (too many values, too big a value), not
    because the store is in trouble: retrying would meet it again. Intake shunts the
    message that caused it."""
