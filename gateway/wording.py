"""How stored facts read for people, at a terminal or in the web inbox: times, how long
a conversation has waited, one sentence per event of its timeline."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Any

_HIDDEN = {"Cc", "Cf", "Zl", "Zp"}  # controls, bidi and other format characters, separators


def printable(text: object) -> str:
    """Control characters shown escaped, so a subject cannot move the terminal around."""
    if text is None:
        return "-"
    return "".join(
        c.encode("unicode_escape").decode() if unicodedata.category(c) in _HIDDEN else c
        for c in str(text)
    )


def when(moment: str) -> str:
    """A stored time for people: to the second, in UTC, saying so."""
    return moment[:19].replace("T", " ") + " UTC"


def waited(since: str, now: datetime) -> str:
    seconds = max((now - datetime.fromisoformat(since)).total_seconds(), 0)
    if seconds < 60:
        return "<1 min"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def describe(event: dict[str, Any]) -> str:
    """One line of the timeline, as a sentence."""
    kind, detail = event["kind"], event["detail"]
    agent, actor = printable(event["agent"]), printable(event["actor"])
    if kind == "received":
        return f"received from {printable(detail.get('from'))} ({detail.get('source')})"
    if kind == "assigned":
        via = detail.get("via")
        if via == "rule":
            how = f"by rule '{printable(event['rule'])}'"
        elif via == "team":
            team, rule = printable(detail.get("team")), printable(event["rule"])
            how = f"by team {team}'s rotation (rule '{rule}')"
        elif via == "round_robin":
            how = "by round-robin"
        else:
            how = f"by {actor}"
        return f"assigned to {agent} {how}"
    if kind == "reassigned":
        return f"reassigned from {printable(event['previous_agent'])} to {agent} by {actor}"
    if kind == "tagged":
        return f"tagged {', '.join(printable(t) for t in detail.get('tags', []))}"
    if kind == "notified":
        return f"{agent} notified ({detail.get('reason')})"
    if kind == "notify_failed":
        return f"alert to {agent} failed: {_failure(detail)}"
    if kind == "notify_skipped":
        return f"alert to {agent} held back: {printable(detail.get('why'))}"
    if kind == "replied":
        return f"{actor} answered the customer ({detail.get('via')})"
    if kind == "reply_refused":
        return (
            f"mail from {printable(detail.get('from'))} refused: {printable(detail.get('reason'))}"
        )
    if kind == "answer_sent":
        return f"answer by {agent} sent to the customer"
    if kind == "answer_failed":
        return f"answer by {agent} not sent: {_failure(detail)}"
    if kind == "notify_superseded":
        return f"alert to {agent} not sent: the conversation had left them"
    if kind in {"reopened", "closed"}:
        return f"{kind} by {actor}" + (f" ({detail['reason']})" if "reason" in detail else "")
    if kind == "claimed":
        return f"claimed by {agent}" + ("" if actor == agent else f" (done by {actor})")
    if kind == "unassigned":
        return f"unassigned from {printable(event['previous_agent'])} by {actor}"
    return f"{kind} by {actor}"


def _failure(detail: dict[str, Any]) -> str:
    retry = detail.get("retry_at")
    then = f"; retrying at {retry}" if retry else "; given up"
    return f"{printable(detail.get('error'))}{then}"
