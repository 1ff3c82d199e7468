"""Text that came from a file, a DICOM tag or a path, made safe to print on a terminal.

medseg prints through rich, which interprets ``[...]`` as markup (``[/]`` raises, ``[link=...]``
makes a live hyperlink) and passes ANSI escape sequences through. Every value that comes from
outside — SeriesDescription, Modality, file and folder names, exception text quoting them —
goes through `literal` before it reaches a rich console, so it is shown as the literal text it is.
"""

from __future__ import annotations

import re

from rich.markup import escape

# C0 controls (except none: tab/newline too, a tag value has no business moving the cursor),
# DEL and the C1 range (0x80-0x9f: e.g. U+009B is a one-character CSI on some terminals).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: object) -> str:
    """``str(value)`` with control characters as ``\\xNN`` escapes, line breaks kept; no markup escaping.

    For text that reaches the terminal without rich markup parsing (``typer.echo``, the CLI's
    log records): an ESC or a carriage return from a file name cannot move the cursor, while a
    message's own line breaks still break lines.
    """
    return "\n".join(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line) for line in str(value).split("\n"))


def literal_lines(value: object) -> str:
    """`literal` applied line by line: a multi-line message (an error listing series) keeps
    its line breaks, every other control character is escaped and markup is inert."""
    return "\n".join(literal(line) for line in str(value).split("\n"))


def literal(value: object) -> str:
    """``value`` as text that a rich console prints verbatim.

    Control characters (including ESC, so ANSI sequences are inert) become ``\\xNN`` escapes;
    rich markup brackets are escaped, so ``[/]`` or ``[link=...]`` print as typed.

    Args:
        value: anything; ``str(value)`` is what is shown.

    Returns:
        The escaped text, to be embedded in a markup string or printed with ``markup=True``.

    Example: ``literal("[/]" + chr(27) + "[2J")`` prints as ``[/]\\x1b[2J``.
    """
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return escape(text)
