"""Commands at the top of an agent's reply to an alert: #claim, #assign bob, #close...

The leading lines that start with `#`, up to the first other non-blank line or the
marker (DESIGN §12). One bad line and the mail's commands are refused as a whole, so
the parse stops at the first problem and says which line it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.replies.marker import is_marker

USAGE = ("#claim", "#assign AGENT", "#unassign", "#close", "#reopen", "#away", "#dnd", "#available")
NAMES = frozenset(usage.split()[0][1:] for usage in USAGE)
HELP = "Commands, on the first lines of your reply: " + ", ".join(USAGE) + "."
MAX_COMMANDS = 20  # more is no agent's mail: nothing past them is read
MAX_LINE = 400  # an email address is at most 254 characters
SHOWN = 60  # characters of a line an error quotes


@dataclass(frozen=True)
class Command:
    name: str  # one of NAMES
    argument: str | None  # assign's agent, an id or an email, as written
    line: str  # as the agent wrote it, stripped


@dataclass(frozen=True)
class Commands:
    commands: tuple[Command, ...]  # with an error, those before it (none is to be applied)
    error: str | None  # the first problem, a sentence that names its line
    rest: str  # the text from the first line that is not a command; "" with an error


def _shown(line: str) -> str:
    return line if len(line) <= SHOWN else line[:SHOWN] + "…"


def _words(arguments: list[str]) -> list[str]:
    """The arguments as written, without the link Outlook's plain text puts after an
    address ("bob@example.com<mailto:bob@example.com>", or with a space between)."""
    return [word for word in (a.partition("<mailto:")[0] for a in arguments) if word]


def _command(line: str) -> Command | str:
    """The command on `line` (stripped, starting with #), or what is wrong with it."""
    if len(line) > MAX_LINE:
        return f"'{_shown(line)}': too long for a command."
    head, *written = line.split()
    arguments = _words(written)
    name = head[1:].casefold()
    if name not in NAMES:
        return f"'{_shown(line)}': there is no command {head}; the commands are {', '.join(USAGE)}."
    if name != "assign":
        if arguments:
            return f"'{_shown(line)}': #{name} takes nothing after it."
        return Command(name, None, line)
    if not arguments:
        return f"'{_shown(line)}': #assign needs an agent, as in #assign bob."
    if len(arguments) > 1:
        return f"'{_shown(line)}': #assign takes one agent, as in #assign bob."
    return Command(name, arguments[0], line)


def parse(text: str) -> Commands:
    """The commands that lead `text`, the first error among them, and the text after them."""
    lines = text.splitlines(keepends=True)
    commands: list[Command] = []
    for index, written in enumerate(lines):
        line = written.strip()
        if not line:
            continue
        if is_marker(line) or not line.startswith("#"):
            return Commands(tuple(commands), None, "".join(lines[index:]))
        found = (
            _command(line)
            if len(commands) < MAX_COMMANDS
            else f"'{_shown(line)}': more than {MAX_COMMANDS} commands in one mail."
        )
        if isinstance(found, str):
            return Commands(tuple(commands), found, "")
        commands.append(found)
    return Commands(tuple(commands), None, "")
