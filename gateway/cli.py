"""The `gateway` command. Exit 0 done, 1 refused (one line on stderr), 2 misuse."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib

from gateway import actions, config, logs, views
from gateway.clock import stamp, utcnow
from gateway.config import ImapSection, NotifySection, Settings
from gateway.errors import ConfigError, GatewayError, Refused, StoreNotReady, StoreUnavailable
from gateway.imapsession import MailboxError, open_mailbox
from gateway.imapsession import name as imap_name
from gateway.ingress import users
from gateway.ingress.accept import Accept
from gateway.intake.worker import rerun
from gateway.model import STATUSES, RawMail
from gateway.notify.transports import smarthost_client
from gateway.store import queries
from gateway.store.db import Database, shown
from gateway.wording import describe, printable, waited, when

T = TypeVar("T")
VIA: actions.Via = "cli"  # the door these actions come through (DESIGN §8: detail.via)
TRY_SECONDS = 10  # a smarthost that has not answered by then is reported as failing


def record_id(text: str) -> int:
    """A conversation or message id: a positive integer SQLite can hold."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is not a valid id")
    return value


def list_limit(text: str) -> int:
    """How many conversations to list: 0 for all of them."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0: give how many to show, or 0 for all")
    if value >= 2**63 - 1:  # one more is asked of SQLite, which holds 64-bit integers
        raise argparse.ArgumentTypeError(f"{text} is too large: use 0 for all")
    return value


def width(text: str) -> int:
    """Columns on a terminal: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, columns: int) -> str:
    return text + " " * (columns - width(text))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(width(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(pad(str(c), w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def _short(text: object, columns: int = 50) -> str:
    shown = printable(text)
    if width(shown) <= columns:
        return shown
    shown = shown[:columns]
    while width(shown) > columns - 1:
        shown = shown[:-1]
    return shown + "…"


def login_name() -> str:
    """Who runs the command: under sudo the person who ran sudo, not root."""
    if sudo_user := os.environ.get("SUDO_USER", "").strip():
        return sudo_user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        return "unknown"


# --- commands -----------------------------------------------------------------


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.daemon import Daemon  # the daemon's imports are needed only here

    asyncio.run(Daemon(settings, config_path=Path(args.config_path)).run())
    return 0


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    s = settings
    rotation = ", ".join(s.round_robin.agents) if s.round_robin.enabled else "off"
    target = s.notify.file_dir if s.notify.backend == "file" else s.notify.smtp_host
    notify = f"{s.notify.backend} → {target}" if s.notify.enabled else "off"
    print(f"configuration is valid: {args.config_path}")
    print(f"  database:    {shown(s.gateway.database)}")
    print(f"  smtp listen: {', '.join(s.smtp.listen)} (max {s.smtp.max_message_size} bytes)")
    print(f"  inboxes:     {', '.join(i.address for i in s.inboxes) or 'none'}")
    print(f"  agents:      {', '.join(a.id for a in s.agents) or 'none'}")
    print(f"  teams:       {', '.join(t.id for t in s.teams) or 'none'}")
    print(f"  rules:       {len(s.rules)}")
    print(f"  round-robin: {rotation}")
    print(f"  alerts:      {notify}")
    print(f"  replies:     {s.replies.address or 'off (alerts are answered to the customer)'}")
    print(f"  web inbox:   {s.web.base_url or s.web.listen or 'off'}")
    warnings = _doubtful(s)
    for warning in warnings:
        print(f"warning: {warning}")
    for line in asyncio.run(_running(s)):
        print(line)
    if not args.connect:
        return 0
    mailboxes = [(inbox.address, inbox.imap) for inbox in s.mailboxes() if inbox.imap is not None]
    if not mailboxes:
        print("no connected mailbox to try")
    results = asyncio.run(_try_mailboxes(mailboxes)) if mailboxes else []
    if s.notify.backend == "smtp" and s.notify.smtp_host:
        results.append(asyncio.run(_try_smarthost(s.notify)))
    for line in results:
        print(line)
    return 0 if all(" works" in line for line in results) else 1


async def _running(s: Settings) -> list[str]:
    """The daemons on the store, and which of them polls each mailbox; nothing when the
    store is not there yet, a sentence when it cannot be read."""
    try:
        db = await Database.open(s.gateway.database, create=False, readonly=True)
    except StoreNotReady:
        return ["  daemons:     none yet (the store is made by the first `gateway run`)"]
    except StoreUnavailable as error:
        return [f"warning: cannot tell which daemons run: {error}"]
    try:
        # Every daemon's outbox joins its presence for the daemon's life.
        daemons = await db.holders("outbox", sole=False)
        lines = [f"  daemons:     {len(daemons) or 'none'} running"]
        lines += [
            f"    {d.name}" + (f" (since {d.since})" if d.since else "") for d in daemons if d.name
        ]
        if db.shared:  # one of them routes at a time
            routing = await db.holders("intake", sole=True)
            lines.append(f"  routing:     by {routing[0].name if routing else 'nobody now'}")
        for inbox in s.mailboxes():
            if inbox.imap is None:
                continue
            mailbox = imap_name(inbox.imap)
            polled = await db.holders(f"imap {mailbox}", sole=True) if db.shared else daemons
            by = (polled[0].name or "the daemon") if polled else "nobody (no daemon runs)"
            lines.append(f"  mailbox:     {mailbox} polled by {by}")
        return lines
    except StoreUnavailable as error:
        return [f"warning: cannot tell which daemons run: {error}"]
    finally:
        await db.close()


def _doubtful(s: Settings) -> list[str]:
    """Settings that load but will not do what they are there for."""
    found = []
    if s.notify.backend == "smtp" and not s.notify.smtp_host.strip():
        found.append("notify.backend is smtp but notify.smtp_host is empty: nothing can be sent")
    if s.replies.address is not None and not s.notify.enabled:
        found.append(
            "replies.address is set but notify.enabled is false: no alert goes out to reply to"
        )
    endpoint = s.web.endpoint()
    exposed = endpoint is not None and not config.loopback(endpoint[0])
    if exposed and not (s.web.base_url or "").startswith("https:"):
        found.append(
            "web.listen is reachable from other hosts but web.base_url is not https:"
            " passwords and sessions would cross the network in the clear"
        )
    return found


async def _try_smarthost(notify: NotifySection) -> str:
    """One sentence: connected (TLS, login) and said goodbye to the smarthost, or why not."""
    where = f"smarthost {notify.smtp_host}:{notify.smtp_port}"
    client = smarthost_client(notify, TRY_SECONDS)
    try:
        await client.connect()
        await client.quit()
    except (aiosmtplib.SMTPException, OSError) as error:
        if isinstance(error.__cause__ or error, ConnectionRefusedError):
            return f"{where} fails: the server refused the connection"
        return f"{where} fails: {error}"
    how = "TLS" if notify.tls else "STARTTLS" if notify.starttls else "plain text"
    login = f", logged in as {notify.username}" if notify.username else ""
    return f"{where} works ({how}{login})"


async def _try_mailboxes(mailboxes: list[tuple[str, ImapSection]]) -> list[str]:
    """One sentence per mailbox: logged in and selected, or why not."""

    async def attempt(address: str, imap: ImapSection) -> str:
        where = f"{imap.username}@{imap.host}:{imap.port_number}/{imap.folder}"
        try:
            async with open_mailbox(imap) as box:
                tags = "keywords can be set" if box.keywords else "keywords cannot be set"
                return f"{address}: {where} works (UIDVALIDITY {box.uidvalidity}; {tags})"
        except (OSError, TimeoutError, MailboxError) as error:
            reason = str(error) or type(error).__name__
            if isinstance(error, ConnectionRefusedError):
                reason = "the server refused the connection"
            elif isinstance(error, TimeoutError):
                reason = "the server did not answer in time"
            return f"{address}: {where} fails: {reason}"

    return list(await asyncio.gather(*(attempt(a, i) for a, i in mailboxes)))


def cmd_conversations(settings: Settings, args: argparse.Namespace) -> int:
    status = None if args.status == "all" else args.status
    agent = settings.agent_named(args.agent).id if args.agent else None
    team = settings.team_named(args.team).id if args.team else None
    # One row more than shown says whether more wait, without counting the queue.
    asked = args.limit + 1 if args.limit else None
    found = _with_db(
        settings,
        lambda db: views.conversations(
            db,
            status=status,
            assignee=agent,
            team=team,
            unassigned=args.unassigned,
            limit=asked,
        ),
        readonly=True,
    )
    more = asked is not None and len(found) == asked
    if more:
        found = found[: args.limit]
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=2))
    elif not found:
        print("No conversations.")
    else:
        print(_conversations_table(found))
    if more:
        print(
            f"More conversations are waiting; showing the first {args.limit} (oldest first)."
            " Use --limit 0 for all.",
            file=sys.stderr,
        )
    return 0


def _conversations_table(found: list[dict[str, Any]]) -> str:
    now = utcnow()
    rows = [
        [
            str(c["id"]),
            waited(c["last_message_at"], now),
            _short(c["customer"], 30),
            _short(c["subject"]),
            printable(c["assignee"]),
            printable(c["team"]),
            c["status"],
            printable(",".join(c["tags"]) or "-"),
        ]
        for c in found
    ]
    return table(
        ["ID", "WAITING", "CUSTOMER", "SUBJECT", "ASSIGNEE", "TEAM", "STATUS", "TAGS"], rows
    )


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    view = _with_db(settings, lambda db: views.show(db, args.id), readonly=True)
    if args.json:
        print(json.dumps(view, ensure_ascii=False, indent=2))
        return 0
    print(f"#{view['id']}  {printable(view['subject'])}  ({view['status']})")
    print(f"inbox:    {view['inbox']}")
    print(f"customer: {printable(view['customer'])}")
    print(
        f"assignee: {printable(view['assignee'])}   team: {printable(view['team'])}"
        f"   tags: {printable(', '.join(view['tags']) or '-')}"
    )
    for m in view["messages"]:
        who = "answer sent" if m["source"] == "agent" else f"from {printable(m['from'])}"
        print(f"\n--- {when(m['received_at'])}  {who} ({m['source']})")
        print(f"Subject: {printable(m['subject'])}\n")
        print("\n".join(printable(line) for line in m["text"].splitlines()) or "(no text)")
    print("\n--- Timeline")
    for event in view["events"]:
        print(f"  {when(event['at'])}  {describe(event)}")
    return 0


def _act(settings: Settings, actor: actions.Actor, action: actions.Action) -> int:
    """Perform `action`, print what came of it; refused: the reason on stderr, exit 1."""
    result = _with_db(settings, lambda db: actions.perform(db, settings, actor, action))
    if result.state == "refused":
        raise Refused(result.text)
    print(result.text)
    return 0


def _actor(settings: Settings, args: argparse.Namespace) -> actions.Actor:
    return actions.Actor(settings.actor(args.by), VIA)


def cmd_assign(settings: Settings, args: argparse.Namespace) -> int:
    return _act(settings, _actor(settings, args), actions.Assign(args.id, args.agent))


def cmd_claim(settings: Settings, args: argparse.Namespace) -> int:
    return _act(settings, _actor(settings, args), actions.Claim(args.id, args.agent))


def cmd_unassign(settings: Settings, args: argparse.Namespace) -> int:
    return _act(settings, _actor(settings, args), actions.Unassign(args.id))


def cmd_close(settings: Settings, args: argparse.Namespace) -> int:
    return _act(settings, _actor(settings, args), actions.Close(args.id))


def cmd_reopen(settings: Settings, args: argparse.Namespace) -> int:
    return _act(settings, _actor(settings, args), actions.Reopen(args.id))


def cmd_reply(settings: Settings, args: argparse.Namespace) -> int:
    """The answer from standard input, sent as an agent's reply to the alert is."""
    agent = settings.agent_named(args.by).id  # the answer goes out in an agent's name
    text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    return _act(settings, actions.Actor(agent, VIA), actions.Reply(args.id, text))


def cmd_agents(settings: Settings, args: argparse.Namespace) -> int:
    found = _with_db(settings, lambda db: views.agents(db, settings), readonly=True)
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=2))
        return 0
    rows = [
        [
            a["id"],
            printable(a["name"]) or "-",
            a["email"],
            a["status"],
            str(a["open"]) if a["max_open"] is None else f"{a['open']}/{a['max_open']}",
            "yes" if a["notify"] else "no",
        ]
        for a in found
    ]
    print(table(["ID", "NAME", "EMAIL", "STATUS", "OPEN", "ALERTS"], rows))
    return 0


def cmd_route(settings: Settings, args: argparse.Namespace) -> int:
    try:
        raw = Path(args.file).read_bytes()
    except OSError as error:
        raise Refused(f"Cannot read {args.file}: {error.strerror or error}.") from None

    sender = _envelope_sender(args.sender)

    async def explain() -> dict[str, Any]:
        try:
            db = await Database.open(settings.gateway.database, create=False, readonly=True)
        except StoreNotReady:
            db = None
        if db is None:
            print(
                "(no database yet: rotations start from the top, no thread to join)",
                file=sys.stderr,
            )
            return await views.explain_route(None, settings, raw, args.to, sender)
        try:
            return await views.explain_route(db, settings, raw, args.to, sender)
        finally:
            await db.close()

    view = asyncio.run(explain())
    if args.json:
        print(json.dumps(view, ensure_ascii=False, indent=2))
        return 0
    print(f"inbox:    {view['inbox']}")
    print(f"from:     {printable(view['sender'])} ({_SENDER_SOURCES[view['sender_source']]})")
    if view["envelope_from"] == "":
        print("envelope: <> (the null sender of a bounce: automatic mail)")
    elif view["envelope_from"] is not None and view["sender_source"] != "envelope":
        print(f"envelope: {printable(view['envelope_from'])} (--from; a usable From comes first)")
    print(f"subject:  {printable(view['subject'])}")
    print(f"decision: {printable(view['reason'])}")
    for hit in view["matched"]:
        print(f"matched:  {hit['condition']} = {printable(hit['value'])}")
    if view["tags"]:
        print(f"tags:     {printable(', '.join(view['tags']))}")
    print("(a dry run: nothing was stored)")
    return 0


_SENDER_SOURCES = {
    "header": "the From header",
    "envelope": "the envelope sender, --from: no usable From",
    None: "no usable From, and no --from",
}


def _envelope_sender(given: str | None) -> str | None:
    """`--from`: None when not given, "" for the null sender of a bounce."""
    if given is None:
        return None
    return "" if given.strip() in ("<>", "") else given


EX_TEMPFAIL = 75  # sysexits.h: what mail servers' pipes take as "try again later"


EX_USAGE = 64  # sysexits.h: the command was misused (a mail server bounces the message)
EX_NOUSER = 67  # sysexits.h: addressee unknown (a mail server bounces it: 5.1.1)


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    # A mail server's pipe may hand over several recipients at once (Postfix's ${recipient}
    # without a recipient limit of 1): the message is stored once for each inbox they name.
    by_inbox: dict[str, list[str]] = {}
    unknown = []
    for address in args.to:
        inbox = settings.inbox_for(address)
        if inbox is None:
            unknown.append(address)
        else:
            by_inbox.setdefault(inbox, []).append(address)
    if not by_inbox:
        print(f"{', '.join(unknown)}: no inbox address or alias here.", file=sys.stderr)
        return EX_NOUSER
    raw = sys.stdin.buffer.read()
    if not raw:
        raise Refused("Nothing arrived on standard input: no message to store.")
    if len(raw) > settings.smtp.max_message_size:
        raise Refused(
            f"The message is {len(raw)} bytes, over smtp.max_message_size"
            f" ({settings.smtp.max_message_size})."
        )
    sender = _envelope_sender(args.sender)
    mails = [RawMail(inbox, raw, "ingest", sender, tuple(to)) for inbox, to in by_inbox.items()]

    async def store(db: Database) -> list[int | None]:
        accept = Accept(db)
        return [await accept(mail) for mail in mails]

    try:
        stored = _with_db(settings, store, create=True)
    except Exception as error:  # whatever it was, the sender must keep the message and retry
        print(f"The message was not stored ({error}); try again later.", file=sys.stderr)
        return EX_TEMPFAIL
    for mail, pk in zip(mails, stored, strict=True):
        if pk is None:
            print(f"Already stored for {mail.inbox} (the same message came before).")
        else:
            print(f"Stored as message {pk} for {mail.inbox}; the daemon routes it.")
    if unknown:  # stored for the others: the mail server must not bounce it for them
        print(f"Not stored for {', '.join(unknown)}: no inbox by that address.", file=sys.stderr)
    return 0


def cmd_recipients(settings: Settings, args: argparse.Namespace) -> int:
    """Every address the gateway takes mail for: its inboxes', their aliases and the
    replies address (whose +TOKEN forms a mail server finds with `recipient_delimiter`)."""
    addresses = [a for inbox in settings.inboxes for a in (inbox.address, *inbox.aliases)]
    if settings.replies.address is not None:
        addresses.append(settings.replies.address)
    if args.json:
        print(json.dumps(addresses, indent=2))
        return 0
    for address in addresses:
        print(f"{address} OK" if args.postfix else address)
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    actor = actions.Actor(login_name(), VIA)
    return _act(settings, actor, actions.SetStatus(args.agent, args.status))


def cmd_shunted(settings: Settings, args: argparse.Namespace) -> int:
    found = _with_db(settings, views.shunted, readonly=True)
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=2))
    elif not found:
        print("No shunted messages.")
    else:
        print(
            table(
                ["ID", "RECEIVED", "INBOX", "SOURCE", "ERROR"],
                [
                    [
                        str(m["id"]),
                        when(m["received_at"]),
                        m["inbox"],
                        m["source"],
                        _short(m["error"], 70),
                    ]
                    for m in found
                ],
            )
        )
    return 0


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    actor = actions.Actor(login_name(), VIA)
    put_back = _with_db(
        settings, lambda db: actions.perform(db, settings, actor, actions.Retry(args.id))
    )
    if put_back.state == "refused":
        raise Refused(put_back.text)
    outcome = _with_db(settings, lambda db: rerun(db, settings, args.id))
    if outcome.state == "shunted":
        print(f"Message {args.id} failed again and stays shunted: {outcome.error}", file=sys.stderr)
        return 1
    if outcome.state == "routed" and outcome.decision is not None:
        print(
            f"Message {args.id} opened conversation {outcome.conversation_id}: "
            f"{outcome.decision.reason}."
        )
    elif outcome.state == "routed":
        print(f"Message {args.id} joined conversation {outcome.conversation_id}.")
    else:
        print(f"Message {args.id}: {outcome.state}.")
    return 0


# --- plumbing -----------------------------------------------------------------


def _new_password(name: str) -> str:
    """A password from the terminal (asked twice), or the first line of a pipe."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Again: ") != password:
            raise Refused("The two passwords differ; nothing was changed.")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise Refused("An empty password is refused.")
    return password


def cmd_set_password(settings: Settings, args: argparse.Namespace) -> int:
    """The agent's web inbox password, hashed into the store (made if there is none yet)."""
    agent = settings.agent_named(args.agent)
    hashed = users.hash_password(_new_password(agent.id)).text()

    async def store(db: Database) -> None:
        async with db.transaction() as tx:
            await queries.set_password(tx, agent.id, hashed, stamp(utcnow()))
            # A new password is often for a lost one: who signed in with the old is out.
            await queries.end_sessions(tx, agent.id, stamp(utcnow()))

    _with_db(settings, store, create=True)
    print(
        f"{agent.id} can sign in to the web inbox with this password now"
        " (their sessions with the old one are ended)."
    )
    return 0


def cmd_sign_out(settings: Settings, args: argparse.Namespace) -> int:
    """End every web inbox session of the agent, at once."""
    agent = settings.agent_named(args.agent)

    async def end(db: Database) -> int:
        async with db.transaction() as tx:
            return await queries.end_sessions(tx, agent.id, stamp(utcnow()))

    ended = _with_db(settings, end)
    print(f"{agent.id} is signed out of the web inbox ({ended} sessions ended).")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """A users-file line for SMTP AUTH; the password from the terminal, or a pipe."""
    try:
        password = _new_password(args.name)
    except Refused as refusal:
        print(refusal, file=sys.stderr)
        return 1
    if ":" in args.name or not args.name.strip():
        print("A user name cannot be empty nor hold ':'.", file=sys.stderr)
        return 2
    print(users.hash_password(password).line(args.name))
    return 0


def _with_db(
    settings: Settings,
    work: Callable[[Database], Awaitable[T]],
    *,
    readonly: bool = False,
    create: bool = False,
) -> T:
    async def go() -> T:
        db = await Database.open(settings.gateway.database, create=create, readonly=readonly)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(go())


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="the configuration file (default: $GATEWAY_CONFIG)",
    )
    parser = argparse.ArgumentParser(
        prog="gateway",
        parents=[common],
        description="Turns shared support addresses into assigned email conversations.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def by(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--by",
            default=login_name(),
            metavar="NAME",
            help="who acts (default: your login name)",
        )

    def command(
        name: str,
        run: Callable[[Settings, argparse.Namespace], int],
        text: str,
        json_output: bool = False,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(run=run)
        if json_output:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    command("run", cmd_run, "run the daemon")
    p = command("check", cmd_check, "validate the configuration and print a summary")
    p.add_argument(
        "--connect",
        action="store_true",
        help="also log in to every connected mailbox and say how it went",
    )
    p = command(
        "conversations",
        cmd_conversations,
        "list conversations, oldest waiting first",
        json_output=True,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--unassigned", action="store_true", help="the unassigned queue")
    which.add_argument("--agent", metavar="ID", help="an agent's queue")
    which.add_argument("--team", metavar="ID", help="a team's queue")
    p.add_argument("--status", choices=["open", "closed", "all"], default="open")
    p.add_argument(
        "--limit",
        type=list_limit,
        default=100,
        metavar="N",
        help="show the N longest waiting (default: 100); 0 shows all",
    )
    p = command(
        "show", cmd_show, "a conversation: messages and activity timeline", json_output=True
    )
    p.add_argument("id", type=record_id, metavar="ID")
    p = command(
        "set-password",
        cmd_set_password,
        "set an agent's web inbox password (asked twice at a terminal, or one line from a pipe)",
    )
    p.add_argument("agent", metavar="AGENT", help="the agent's id or e-mail address")
    p = command("sign-out", cmd_sign_out, "end every web inbox session of an agent")
    p.add_argument("agent", metavar="AGENT", help="the agent's id or e-mail address")
    p = command("status", cmd_status, "set an agent's availability")
    p.add_argument("agent", metavar="AGENT")
    p.add_argument("status", choices=STATUSES)
    p = command("assign", cmd_assign, "assign a conversation, or reassign it")
    p.add_argument("id", type=record_id, metavar="ID")
    p.add_argument("agent", metavar="AGENT")
    by(p)
    p = command("claim", cmd_claim, "take an unassigned conversation")
    p.add_argument("id", type=record_id, metavar="ID")
    p.add_argument("agent", metavar="AGENT")
    by(p)
    p = command(
        "reply",
        cmd_reply,
        "answer the customer with the text on standard input, as an agent",
    )
    p.add_argument("id", type=record_id, metavar="ID")
    p.add_argument("--by", required=True, metavar="AGENT", help="the agent who answers")
    for name, run, text in [
        ("unassign", cmd_unassign, "put a conversation back in the unassigned queue"),
        ("close", cmd_close, "close a conversation"),
        ("reopen", cmd_reopen, "reopen a conversation"),
    ]:
        p = command(name, run, text)
        p.add_argument("id", type=record_id, metavar="ID")
        by(p)
    command("agents", cmd_agents, "agents, their status and open conversations", json_output=True)
    p = command(
        "route",
        cmd_route,
        "dry run: who would get this message; nothing is stored",
        json_output=True,
    )
    p.add_argument("file", metavar="FILE.eml")
    p.add_argument("--to", metavar="ADDRESS", help="the inbox address it is delivered to")
    p.add_argument(
        "--from", dest="sender", metavar="SENDER", help="the envelope sender; <> for a bounce"
    )
    p = command("ingest", cmd_ingest, "store one message read from standard input")
    p.add_argument(
        "--to",
        required=True,
        nargs="+",
        metavar="ADDRESS",
        help="the inbox addresses (several: a mail server's recipients at once)",
    )
    p.add_argument(
        "--from", dest="sender", metavar="SENDER", help="the envelope sender; <> for a bounce"
    )
    p = command(
        "recipients",
        cmd_recipients,
        "the addresses the gateway takes mail for, one a line",
        json_output=True,
    )
    p.add_argument(
        "--postfix",
        action="store_true",
        help="as a Postfix lookup table (ADDRESS OK), for relay_recipient_maps",
    )
    command("shunted", cmd_shunted, "messages intake failed on, with the error", json_output=True)
    p = command("retry", cmd_retry, "run intake again on a shunted message")
    p.add_argument("id", type=record_id, metavar="ID")
    p = sub.add_parser(
        "hash-password",
        help="print an SMTP AUTH users-file line (password read from standard input)",
        description="Print NAME:scrypt$... for smtp.auth_users_file; needs no configuration.",
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(standalone=cmd_hash_password)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(words)
    except SystemExit as exit_:
        # A mail server's pipe reads sysexits: 2 would be a bounce with no reason given.
        if exit_.code == 2 and "ingest" in words:
            return EX_USAGE
        raise
    if hasattr(args, "standalone"):
        code: int = args.standalone(args)
        return code
    path = getattr(args, "config", None) or os.environ.get("GATEWAY_CONFIG")
    if not path:
        parser.error("no configuration: pass --config PATH or set GATEWAY_CONFIG")
    args.config_path = path
    logs.configure(logging.INFO if args.command == "run" else logging.WARNING)
    try:
        settings = config.load(Path(path))
        code = args.run(settings, args)
        return code
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        # A mail server keeps a piped message it is told to retry; on 1 it bounces it.
        return EX_TEMPFAIL if args.command == "ingest" else 1
    except GatewayError as error:
        print(str(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
