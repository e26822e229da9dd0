"""Text from the service, shown exactly as it came: never markup, never terminal control.

Nearly everything the console shows came over the network, and much of it from repositories:
build log lines, failure reasons, repository URLs, ban patterns and reasons, audit actors (the
``X-Swarmbinder-Actor`` header), error bodies. Textual parses a plain ``str`` as markup in
``Static``, ``Label`` and notifications (Textual's own) and in ``DataTable`` cells (Rich's):
``[/]`` there raises ``MarkupError`` and ends the console, ``[@click=app.quit]`` makes a cell
that quits it when clicked, and a regex ban such as ``^gh/org/[a-z]+`` loses its class on
screen. Neither parser removes escape sequences either, and ``Log`` lets ESC through, so a log
line could retitle, clear or write to the clipboard of the operator's terminal (over SSH too).

So every such value goes through :func:`plain` (for widgets that take a renderable) or
:func:`clean` (for those that take a ``str`` and parse no markup, like ``Log``).
"""

from __future__ import annotations

import re

from rich.text import Text

#: Escape sequences, dropped whole: build output is full of harmless colour codes (CSI), and
#: the string forms (OSC titles, hyperlinks and clipboard writes; DCS, SOS, PM, APC) must not
#: leave their payload behind as if it were the repository's text.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # a string, terminated or not
    r"|\x1b[ -/]*[0-~]"  # any other escape
    r"|\x1b"  # a lone ESC at the end
)
#: Other control characters (C0 but tab and newline, DEL, C1 such as the one-byte CSI 0x9b)
#: become U+FFFD, as Textual's Log shows the ones it catches: visible, and inert.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(value: object) -> str:
    """``str(value)`` with terminal escape sequences removed and control characters replaced."""
    return _CONTROL.sub("\ufffd", _ESCAPE_SEQUENCE.sub("", str(value)))


def plain(value: object, *, no_wrap: bool = False) -> Text:
    """``value`` as unstyled text: any ``[...]`` in it is shown, not interpreted."""
    return Text(clean(value), no_wrap=no_wrap, end="")


def cell(value: object) -> Text:
    """A table cell: plain, and on one line like the cells Textual makes from a ``str``."""
    return plain(value, no_wrap=True)
