"""Putting values from the data into report Markdown safely.

A reason, an ``_id`` or a check name may hold backticks, asterisks or ``|``:
written raw they would open a code span, bold the rest of the line or split a
table row, in the Markdown and in the HTML made from it
(:mod:`migration.report_html`). These helpers give text that reads as itself.
"""

from __future__ import annotations

import re

# Asterisks stay as they are: ``***`` is the secrets mask and must read as itself in
# the raw Markdown; the HTML renderer never takes the mask for bold.
_PLAIN_SPECIALS = re.compile(r"([\\`|])")
_BACKTICKS = re.compile(r"`+")


def one_line(text: str, limit: int = 200) -> str:
    """Newlines as spaces, cut at ``limit`` characters with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def plain(text: object, limit: int = 200) -> str:
    """Text with the characters that would open a code span or split a table row escaped."""
    return _PLAIN_SPECIALS.sub(r"\\\1", one_line(str(text), limit))


def code(text: object, limit: int = 200) -> str:
    """A code span holding ``text`` whatever backticks it has (fence longer than any run).

    A ``|`` is escaped too, so the span can sit in a table cell.
    """
    body = one_line(str(text), limit).replace("|", "\\|")
    longest = max((len(run) for run in _BACKTICKS.findall(body)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"
