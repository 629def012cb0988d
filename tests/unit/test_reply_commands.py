"""Commands at the top of an agent's reply to an alert (DESIGN §12): which lines are
commands, the sentence that names a bad one, and where the answer starts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.replies.commands import HELP, Command, parse
from gateway.replies.marker import MARKER, is_marker

ALERT = f"> {MARKER}\n> Hello, my order is late.\n"


@pytest.mark.parametrize(
    "name", ["claim", "unassign", "close", "reopen", "away", "dnd", "available"]
)
def test_each_command_without_an_argument_is_parsed(name: str) -> None:
    found = parse(f"#{name}\n")
    assert found.error is None
    assert found.commands == (Command(name, None, f"#{name}"),)


def test_command_names_are_case_insensitive() -> None:
    found = parse("#Close\n#ASSIGN bob\n")
    assert found.error is None
    assert found.commands == (
        Command("close", None, "#Close"),
        Command("assign", "bob", "#ASSIGN bob"),
    )


def test_assign_takes_an_agent_id_or_an_email() -> None:
    found = parse("#assign bob\n#assign Carol@Example.com\n")
    assert [c.argument for c in found.commands] == ["bob", "Carol@Example.com"]


def test_assign_to_an_address_outlook_turned_into_a_link_is_the_address() -> None:
    found = parse("#assign carol@example.com<mailto:carol@example.com>\n")
    assert found.commands[0].argument == "carol@example.com"


def test_assign_to_an_address_with_outlooks_link_after_a_space_is_the_address() -> None:
    found = parse("#assign carol@example.com <mailto:carol@example.com>\n")
    assert found.error is None
    assert found.commands[0].argument == "carol@example.com"


def test_command_lines_are_stripped_of_white_space_and_nbsp() -> None:
    found = parse("  #close \u00a0\n")
    assert found.commands == (Command("close", None, "#close"),)


def test_blank_lines_between_commands_are_fine() -> None:
    found = parse("#claim\n\n  \n#close\n\nThanks, done.\n")
    assert [c.name for c in found.commands] == ["claim", "close"]
    assert found.rest == "Thanks, done.\n"


def test_an_unknown_command_is_an_error_naming_the_line() -> None:
    found = parse("#claim\n#asign bob\n#close\nHello\n")
    assert found.error == (
        "'#asign bob': there is no command #asign; the commands are #claim, #assign AGENT, "
        "#unassign, #close, #reopen, #away, #dnd, #available."
    )
    assert found.commands == (Command("claim", None, "#claim"),)


def test_assign_without_an_agent_is_an_error_naming_the_line() -> None:
    assert parse("#assign\n").error == "'#assign': #assign needs an agent, as in #assign bob."


def test_assign_with_two_agents_is_an_error_naming_the_line() -> None:
    assert parse("#assign bob carol\n").error == (
        "'#assign bob carol': #assign takes one agent, as in #assign bob."
    )


def test_an_argument_to_a_command_that_takes_none_is_an_error() -> None:
    assert parse("#close now please\n").error == (
        "'#close now please': #close takes nothing after it."
    )


def test_an_error_leaves_no_answer() -> None:
    assert parse("#asign bob\nThe answer.\n").rest == ""


def test_a_long_line_is_shortened_in_the_error() -> None:
    error = parse("#" + "x" * 10_000 + "\n").error
    assert error is not None
    assert len(error) < 300


def test_a_command_line_longer_than_any_address_is_an_error() -> None:
    assert (
        parse("#assign " + "b" * 500 + "\n").error
        == f"'#assign {'b' * 52}…': too long for a command."
    )


def test_more_than_20_commands_is_an_error() -> None:
    assert parse("#claim\n" * 20).error is None
    too_many = parse("#claim\n" * 20 + "#close\n")
    assert too_many.error == "'#close': more than 20 commands in one mail."


def test_the_marker_ends_commands_and_is_never_one() -> None:
    found = parse(f"#close\n{MARKER}\n#reopen\n")
    assert found.commands == (Command("close", None, "#close"),)
    assert found.error is None
    assert found.rest == f"{MARKER}\n#reopen\n"


def test_a_command_after_the_answer_is_not_one() -> None:
    found = parse("#claim\nI will look at it.\n#close\n" + ALERT)
    assert [c.name for c in found.commands] == ["claim"]
    assert found.rest == "I will look at it.\n#close\n" + ALERT


def test_rest_starts_at_the_answer() -> None:
    found = parse("\n#claim\r\n\r\nHi Ann,\r\nit ships today.\r\n" + ALERT)
    assert found.rest == "Hi Ann,\r\nit ships today.\r\n" + ALERT


def test_a_reply_without_commands_is_all_rest() -> None:
    text = "Hi Ann,\nit ships today.\n" + ALERT
    assert parse(text) == parse(text).__class__((), None, text)


def test_the_help_line_names_every_command() -> None:
    assert HELP == (
        "Commands, on the first lines of your reply: #claim, #assign AGENT, #unassign, "
        "#close, #reopen, #away, #dnd, #available."
    )


@given(st.lists(st.text(max_size=40), max_size=30))
def test_no_command_is_read_after_the_first_other_line(lines: list[str]) -> None:
    text = "\n".join(lines)
    found = parse(text)  # never raises
    written = text.splitlines()
    first_other = next(
        (i for i, line in enumerate(written) if line.strip() and not line.strip().startswith("#")),
        len(written),
    )
    marker = next((i for i, line in enumerate(written) if is_marker(line)), len(written))
    allowed = {line.strip() for line in written[: min(first_other, marker)]}
    assert all(command.line in allowed for command in found.commands)
