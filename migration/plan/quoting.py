"""Quoting rendered values into a command or a query, one quoter per ``with:`` field.

A step type says how each field is quoted (:meth:`Step.field_quoters`): for the
shell, as an SQL string literal, or not at all. Every ``{{ }}`` value of a quoted
field is quoted where it stands, so it cannot add syntax; for that to hold the
template must not stand inside quotes (or a comment) of its own, which
:func:`check_template` refuses before anything runs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from migration.plan.sandbox import TemplateError
from migration.steps.base import Quoter

__all__ = ["Quoter", "check_shell_template", "check_sql_template", "check_template", "quote", "quoters"]


def quoters(declared: Mapping[str, Any]) -> dict[str, Quoter]:
    """A step type's ``field_quoters`` answer as Quoters (a plugin may give plain names)."""
    out: dict[str, Quoter] = {}
    for name, quoter in declared.items():
        try:
            out[name] = Quoter(quoter)
        except ValueError:
            known = ", ".join(q.value for q in Quoter)
            raise TemplateError(f"unknown quoter {quoter!r} for field {name!r} (known: {known})") from None
    return out


def quote(quoter: Quoter, text: str) -> str:
    """``text`` quoted by ``quoter``."""
    if quoter == Quoter.SHELL:
        return shlex.quote(text)
    if quoter == Quoter.SQL_LITERAL:
        if "\x00" in text:
            raise ValueError("an SQL string literal cannot hold a NUL character")
        return "'" + text.replace("'", "''") + "'"
    return text


def check_template(quoter: Quoter, source: str) -> None:
    """Refuse a template that the field's quoting cannot make safe."""
    if quoter == Quoter.SHELL:
        check_shell_template(source)
    elif quoter == Quoter.SQL_LITERAL:
        check_sql_template(source)


def check_shell_template(source: str) -> None:
    """Refuse ``{{ }}`` inside quotes in a shell command.

    Values are shell-quoted where they stand; inside "..." a quoted value would
    still expand ``$(...)`` and backticks, and inside '...' it would close the quotes.
    """
    quote: str | None = None
    i = 0
    while i < len(source):
        ch = source[i]
        if source.startswith("{{", i) and quote is not None:
            raise TemplateError(
                f"template inside {quote}...{quote} in a shell command: write {{{{ value }}}} without "
                "quotes; it is shell-quoted automatically"
            )
        if quote is None and ch == "\\":
            i += 2
            continue
        if ch in "\"'" and (quote is None or quote == ch):
            quote = None if quote == ch else ch
        elif ch == "\\" and quote == '"':
            i += 1
        i += 1


# PostgreSQL's dollar quoting: $$...$$ or $tag$...$tag$ ($1 is a parameter, not a quote).
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_TEMPLATE_END = {"{{": "}}", "{%": "%}", "{#": "#}"}


def check_sql_template(source: str) -> None:
    """Refuse ``{{ }}`` inside quotes or a comment in an SQL field.

    Values become string literals where they stand: inside '...' their quotes would
    close the literal, inside "..." (an identifier) or ``$$...$$`` they would be
    taken apart, and after ``--`` a line break in a value would end the comment.
    """
    i, end_of_source = 0, len(source)
    while i < end_of_source:
        two = source[i : i + 2]
        if two in _TEMPLATE_END:  # a template outside quotes: its own quotes are Jinja's
            close = source.find(_TEMPLATE_END[two], i + 2)
            i = end_of_source if close < 0 else close + 2
            continue
        dollar = _DOLLAR_QUOTE.match(source, i) if not _in_word(source, i) else None
        if two == "--":
            close = source.find("\n", i)
            end, where = (end_of_source if close < 0 else close), "an SQL comment (-- ...)"
        elif two == "/*":
            close = source.find("*/", i + 2)
            end, where = (end_of_source if close < 0 else close + 2), "an SQL comment (/* ... */)"
        elif source[i] in "'\"":
            end = _end_of_quoted(source, i)
            where = f"{source[i]}...{source[i]} in an SQL field"
        elif dollar is not None:
            close = source.find(dollar.group(), dollar.end())
            end = end_of_source if close < 0 else close + len(dollar.group())
            where = f"{dollar.group()}...{dollar.group()} in an SQL field"
        else:
            i += 1
            continue
        if "{{" in source[i:end] or "{%" in source[i:end]:
            raise TemplateError(
                f"template inside {where}: write {{{{ value }}}} without quotes; "
                "it is quoted as an SQL string literal automatically"
            )
        i = max(end, i + 1)


def _in_word(source: str, i: int) -> bool:
    return i > 0 and (source[i - 1].isalnum() or source[i - 1] == "_")


def _end_of_quoted(source: str, start: int) -> int:
    """Just past the '...' or "..." opening at ``start`` (doubled quotes stay inside)."""
    mark = source[start]
    # E'...' (PostgreSQL) takes backslash escapes: E'it\'s'.
    escapes = mark == "'" and start > 0 and source[start - 1] in "eE" and not _in_word(source, start - 1)
    i = start + 1
    while i < len(source):
        if escapes and source[i] == "\\":
            i += 2
        elif source[i] != mark:
            i += 1
        elif source.startswith(mark * 2, i):
            i += 2
        else:
            return i + 1
    return len(source)
