"""What flows between the stages: plain frozen values, no behaviour, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Source = Literal["smtp", "imap", "ingest"]
Via = Literal["rule", "team", "round_robin"]
Status = Literal["available", "away", "dnd"]
STATUSES: tuple[Status, ...] = ("available", "away", "dnd")
# The tags mail gets that nobody is assigned for: automatic mail, and mail with no sender.
AUTO_TAG = "auto"
NO_SENDER_TAG = "no-sender"


@dataclass(frozen=True)
class RawMail:
    """One accepted message for one inbox, exactly as received."""

    inbox: str
    raw: bytes
    source: Source
    envelope_from: str | None  # "" is the null sender (a bounce); None when unknown
    envelope_to: tuple[str, ...]
    # Set when `raw` is the header alone of a message too large to take whole: its size.
    full_size: int | None = None


@dataclass(frozen=True)
class MailFacts:
    """What routing and threading need of a message, decoded once from its headers."""

    message_id: str | None
    sender: str | None  # addr-spec, lower-cased
    sender_name: str
    sender_domain: str | None  # Unicode form, case-folded
    subject: str
    recipients: tuple[str, ...]  # To and Cc addr-specs
    references: tuple[str, ...]  # In-Reply-To then References, normalised ids
    auto: str | None  # why this is automatic mail (auto-reply, bounce), or None
    notification: str | None  # the X-Gateway-Notification value, unverified
    date: str | None


@dataclass(frozen=True)
class Delivery:
    """A message as routing sees it: its facts and where it was delivered."""

    facts: MailFacts
    inbox: str
    envelope_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutingState:
    """Everything routing depends on besides the message and the rules."""

    statuses: dict[str, Status] = field(default_factory=dict)  # absent means available
    last_served: dict[str, str] = field(default_factory=dict)  # rotation key → agent
    # Open conversations of the agents with a limit or in a balanced rotation (absent: none).
    open: dict[str, int] = field(default_factory=dict)
    last_assigned: dict[str, str] = field(default_factory=dict)  # agent → when (absent: never)


@dataclass(frozen=True, kw_only=True)
class Decision:
    reason: str  # one sentence: why this assignee, or why nobody
    assignee: str | None = None
    team: str | None = None
    tags: tuple[str, ...] = ()
    via: Via | None = None
    rule: str | None = None
    rotation: tuple[str, str] | None = None  # (rotation key, agent served) to persist
    # The rotation key whose queue it waits in: its rotation or team found nobody to take it.
    waits_for: str | None = None
    matched: tuple[tuple[str, str], ...] = ()  # (condition, value) of the assigning rule
