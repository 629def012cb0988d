"""IMAP keywords: every copy of a conversation's messages shows who has it.

`assigned-<agent>` or `unassigned`, `team-<team>` when it has one, and its tags.
The set is computed from the conversation when the job runs and replaces the
gateway's previous keywords on each copy, so a retried or late job is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import defaultdict
from contextlib import AsyncExitStack

import structlog

from gateway.config import ImapSection, Settings
from gateway.imapsession import Mailbox, MailboxError, open_mailbox, text, unless_lost
from gateway.model import AUTO_TAG, NO_SENDER_TAG
from gateway.store import queries

log = structlog.get_logger("gateway.keywords")

REUSE_SECONDS = 60.0  # a session quiet longer than this is closed, not reused
PROBE_SECONDS = 5.0  # how long a kept session may take to answer NOOP
_NOT_ATOM = re.compile(r"[^A-Za-z0-9!#$&'+,\-./:;<=>?@^_`|~]")  # RFC 3501 atom-chars
_FLAGS = re.compile(rb"UID (\d+).*?FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\).*?UID (\d+)")


def keyword(name: str) -> str:
    """A name as an IMAP keyword: characters a keyword cannot hold become `_`."""
    return _NOT_ATOM.sub("_", name) or "_"


def wanted(assignee: str | None, team: str | None, tags: list[str]) -> set[str]:
    found = {keyword(f"assigned-{assignee}") if assignee else "unassigned"}
    if team:
        found.add(keyword(f"team-{team}"))
    found.update(keyword(tag) for tag in tags)
    return found


class KeywordWriter:
    """Sets keywords through one session per mailbox, kept open between jobs: a backlog
    of ten thousand conversations is not ten thousand logins to the mail server."""

    def __init__(self, settings: Settings) -> None:
        self._mailboxes: dict[str, ImapSection] = {
            inbox.address: inbox.imap for inbox in settings.inboxes if inbox.imap is not None
        }
        tags = {tag for rule in settings.rules for tag in rule.tags} | {AUTO_TAG, NO_SENDER_TAG}
        self._ours_exact = {"unassigned"} | {keyword(tag) for tag in tags}
        self._warned: set[str] = set()
        self._sessions: dict[str, tuple[AsyncExitStack, Mailbox, float]] = {}

    async def _session(self, imap: ImapSection) -> Mailbox:
        name = _name(imap)
        held = self._sessions.get(name)
        if held is not None:
            stack, box, used = held
            # Servers end idle sessions (Dovecot after 30 minutes); one quiet for
            # a while is closed rather than found dead halfway through a job.
            if not box.lost.is_set() and time.monotonic() - used < REUSE_SECONDS:
                # A session sees mail that arrived since it selected the folder only
                # once told of it (EXISTS); NOOP asks, or a new copy's UID is unknown.
                with contextlib.suppress(Exception):  # any trouble: a new session instead
                    # Briefly: a session the server dropped unseen would hold the job for
                    # the client's whole command timeout (30 s) before a new one is tried.
                    synced = await asyncio.wait_for(
                        unless_lost(box.client.noop(), box.lost), PROBE_SECONDS
                    )
                    if synced.result == "OK":
                        self._sessions[name] = (stack, box, time.monotonic())
                        return box
            await self._close(name)
        stack = AsyncExitStack()
        box = await stack.enter_async_context(open_mailbox(imap))
        self._sessions[name] = (stack, box, time.monotonic())
        return box

    async def _close(self, name: str) -> None:
        held = self._sessions.pop(name, None)
        if held is not None:
            with contextlib.suppress(Exception):
                await held[0].aclose()

    async def close(self) -> None:
        for name in list(self._sessions):
            await self._close(name)

    def _ours(self, flag: str) -> bool:
        return flag.startswith(("assigned-", "team-")) or flag in self._ours_exact

    async def apply(self, copies: list[queries.ImapCopy], want: set[str]) -> None:
        by_mailbox: dict[tuple[str, str], list[queries.ImapCopy]] = defaultdict(list)
        for copy in copies:
            by_mailbox[(copy.inbox, copy.folder)].append(copy)
        for (inbox, folder), rows in by_mailbox.items():
            imap = self._mailboxes.get(inbox)
            if imap is None or imap.folder != folder:
                continue  # no longer connected: nothing to tag
            await self._mailbox(imap, rows, want)

    async def _mailbox(
        self, imap: ImapSection, rows: list[queries.ImapCopy], want: set[str]
    ) -> None:
        try:
            box = await self._session(imap)
            await self._tag(box, _name(imap), rows, want)
        except BaseException:
            await self._close(_name(imap))  # the next job starts afresh
            raise

    async def _tag(
        self, box: Mailbox, name: str, rows: list[queries.ImapCopy], want: set[str]
    ) -> None:
        if not box.keywords:
            if name not in self._warned:  # said once, not for every message
                self._warned.add(name)
                log.warning(
                    "imap.no_keywords",
                    mailbox=name,
                    reason="the server does not keep new keywords; no tagging",
                )
            return
        uids = [str(r.uid) for r in rows if r.uidvalidity == box.uidvalidity]
        if not uids:
            return  # renumbered since: the rescan lists the copies anew
        fetched = await unless_lost(
            box.client.uid("fetch", ",".join(uids), "(UID FLAGS)"), box.lost
        )
        if fetched.result != "OK":
            raise MailboxError(f"cannot read the flags: {text(fetched.lines)}")
        for line in fetched.lines:
            found = _FLAGS.search(bytes(line))
            if found is None:
                continue
            uid = (found.group(1) or found.group(4)).decode()
            flags = (found.group(2) or found.group(3) or b"").decode().split()
            stale = [f for f in flags if self._ours(f) and f not in want]
            missing = sorted(want - set(flags))
            if stale:
                await _store(box, uid, "-FLAGS", stale)
            if missing:
                await _store(box, uid, "+FLAGS", missing)


def _name(imap: ImapSection) -> str:
    return f"{imap.username}@{imap.host}/{imap.folder}"


async def _store(box: Mailbox, uid: str, how: str, flags: list[str]) -> None:
    done = await unless_lost(box.client.uid("store", uid, how, f"({' '.join(flags)})"), box.lost)
    if done.result != "OK":
        raise MailboxError(f"cannot store keywords: {text(done.lines)}")
