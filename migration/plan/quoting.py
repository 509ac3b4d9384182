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
    """Refuse ``{{ }}`` inside quotes, a comment or a here-document in a shell command.

    Values are shell-quoted where they stand; inside "..." a quoted value would
    still expand ``$(...)`` and backticks, and inside '...' it would close the quotes.
    After ``#`` a line break in a value would end the comment and run the rest; the
    body of a here-document (``<<EOF``) is expanded whatever the quotes.
    """
    quote: str | None = None
    heredocs: list[tuple[str, bool]] = []  # delimiters whose bodies start on the next line
    i, end_of_source = 0, len(source)
    while i < end_of_source:
        ch = source[i]
        if quote is not None and source.startswith("{{", i):
            raise TemplateError(
                f"template inside {quote}...{quote} in a shell command: write {{{{ value }}}} without "
                "quotes; it is shell-quoted automatically"
            )
        if quote is None:
            two = source[i : i + 2]
            if two in _TEMPLATE_END:  # a template outside quotes: its own quotes are Jinja's
                close = source.find(_TEMPLATE_END[two], i + 2)
                i = end_of_source if close < 0 else close + 2
                continue
            if ch == "#" and (i == 0 or source[i - 1] in " \t\n;&|()<>"):
                end = _line_end(source, i)
                if _has_template(source[i:end]):
                    raise TemplateError(
                        "template inside a shell comment (# ...): a line break in the value would "
                        "end the comment and run the rest"
                    )
                i = end
                continue
            heredoc = _HEREDOC.match(source, i) if not source.startswith("<<<", i) else None
            if heredoc is not None:
                heredocs.append((re.sub(r"[\\'\"]", "", heredoc.group(2)), heredoc.group(1) == "-"))
                i = heredoc.end()
                continue
            if ch == "\n" and heredocs:
                i = _after_heredoc_bodies(source, i + 1, heredocs)
                heredocs = []
                continue
            if ch == "\\":
                i += 2
                continue
        if ch in "\"'" and (quote is None or quote == ch):
            quote = None if quote == ch else ch
        elif ch == "\\" and quote == '"':
            i += 1
        i += 1


_TEMPLATE_END = {"{{": "}}", "{%": "%}", "{#": "#}"}
_HEREDOC = re.compile(r"<<(-?)[ \t]*([^\s;&|()<>]+)")


def _has_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _line_end(source: str, start: int) -> int:
    end = source.find("\n", start)
    return len(source) if end < 0 else end


def _after_heredoc_bodies(source: str, start: int, heredocs: list[tuple[str, bool]]) -> int:
    """Just past the bodies of ``heredocs`` (which begin at ``start``); refuse a template in one."""
    for delimiter, strip_tabs in heredocs:
        while start < len(source):
            end = _line_end(source, start)
            line = source[start:end]
            start = end + 1
            if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                break
            if _has_template(line):
                raise TemplateError(
                    f"template inside a here-document (<<{delimiter}) in a shell command: the shell "
                    "expands $(...) in its body whatever the quotes; pass the value as an argument"
                )
    return min(start, len(source))


# PostgreSQL's dollar quoting: $$...$$ or $tag$...$tag$ ($1 is a parameter, not a quote).
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


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
