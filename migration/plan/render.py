"""Rendering: template strings, nested values, a step's ``with:`` and expressions.

A string that is exactly one ``{{ expression }}`` renders to the expression's
native value (an int stays an int); anything else renders to text. In a field
with a quoter (:mod:`.quoting`) every ``{{ }}`` value is quoted where it stands.
Whatever keeps a template from giving a value is one :class:`TemplateError` line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from jinja2 import TemplateSyntaxError, Undefined, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from migration.plan import limits
from migration.plan.placeholders import Placeholder
from migration.plan.quoting import Quoter, check_template, quote, quoters
from migration.plan.sandbox import ENV, TemplateError, is_template, make_environment, one_line, printable

SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)
"""A string that is one ``{{ expression }}``: it renders to the expression's own value."""


def _quoting(quoter: Quoter) -> Callable[[Any], str]:
    def finalize(value: Any) -> str:
        return quote(quoter, str(printable(value)))

    return finalize


ENVIRONMENTS: dict[Quoter, ImmutableSandboxedEnvironment] = {
    Quoter.NONE: ENV,
    Quoter.SHELL: make_environment(_quoting(Quoter.SHELL)),
    Quoter.SQL_LITERAL: make_environment(_quoting(Quoter.SQL_LITERAL)),
}
"""The environment of each quoter: it quotes every ``{{ }}`` value it outputs."""


@contextmanager
def _one_error(kind: str, subject: str) -> Iterator[None]:
    """Inside it, what stops a ``kind`` ("template", "expression") is one TemplateError.

    ``subject`` names it in the message: ``template '{{ x }}'`` or ``'x > 1'``.
    """
    try:
        with limits.rendering_budget():
            yield
    except UndefinedError as exc:
        raise TemplateError(f"undefined in {subject}: {one_line(exc)}") from exc
    except SecurityError as exc:
        raise TemplateError(f"{kind} not allowed (sandbox): {one_line(exc)}") from exc
    except limits.LimitExceeded as exc:
        raise TemplateError(f"{kind} refused: {one_line(exc)}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{kind} syntax error: {exc.message}") from exc
    except Exception as exc:
        raise TemplateError(f"{subject} failed: {one_line(exc)}") from exc


def _reject_undefined(value: Any) -> None:
    """Raise UndefinedError for an undefined value, or one inside a list/tuple/dict a template built."""
    pending = [value]
    seen = 0
    while pending and seen < 10_000:
        item = pending.pop()
        seen += 1
        if isinstance(item, Undefined):
            item._fail_with_undefined_error()
        if isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())


def _as_quoter(quoter: Quoter | str | bool, quote: bool) -> Quoter:
    # ``quote=True`` (the third argument once was that flag) is the older spelling of the shell quoter.
    if quote or quoter is True:
        return Quoter.SHELL
    return Quoter.NONE if quoter is False else Quoter(quoter)


def render_string(
    source: str, context: Mapping[str, Any], quoter: Quoter | str | bool = Quoter.NONE, *, quote: bool = False
) -> Any:
    """Render one template string; a lone ``{{ expr }}`` keeps its native type unless quoted."""
    if not is_template(source):
        return source
    quoter = _as_quoter(quoter, quote)
    check_template(quoter, source)
    with _one_error("template", f"template {source!r}"):
        match = SINGLE_EXPRESSION.match(source)
        if match and "{{" not in match.group("expr") and quoter == Quoter.NONE:
            value = ENV.compile_expression(match.group("expr"), undefined_to_none=False)(**context)
            if isinstance(value, Placeholder):
                return str(value)
            _reject_undefined(value)  # raises UndefinedError with the name
            limits.check_text(value, "the value")  # the runner copies it (JSON) after the limits
            return value
        return ENVIRONMENTS[quoter].from_string(source).render(**context)


def render_value(
    value: Any, context: Mapping[str, Any], quoter: Quoter | str | bool = Quoter.NONE, *, quote: bool = False
) -> Any:
    """Render every string inside nested dicts/lists."""
    quoter = _as_quoter(quoter, quote)
    if isinstance(value, str):
        return render_string(value, context, quoter)
    if isinstance(value, Mapping):
        return {k: render_value(v, context, quoter) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context, quoter) for v in value]
    return value


def render_with(
    with_: Mapping[str, Any], context: Mapping[str, Any], field_quoters: Mapping[str, Any]
) -> dict[str, Any]:
    """Render a step's ``with:``, each field with its quoter (``Step.field_quoters``)."""
    by_field = quoters(field_quoters)
    return {
        name: render_value(value, context, by_field.get(name, Quoter.NONE)) for name, value in with_.items()
    }


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluate a checkpoint or ``when:`` expression.

    Anything that keeps it from giving a value (an undefined name or output, the
    sandbox, a limit, an exception) is a TemplateError: the checkpoint or step fails.
    """
    with _one_error("expression", repr(expression)):
        value = ENV.compile_expression(expression, undefined_to_none=False)(**context)
        _reject_undefined(value)
        limits.check_text(value, "the value")  # the runner copies it (JSON) after the limits
        return value


def truthy(value: Any) -> bool:
    """A checkpoint holds when its value is truthy; an undefined value is an error, never false."""
    try:
        _reject_undefined(value)
        return bool(value)
    except UndefinedError as exc:
        raise TemplateError(f"undefined: {one_line(exc)}") from exc
    except Exception as exc:
        raise TemplateError(f"cannot tell whether {type(value).__name__} is true: {one_line(exc)}") from exc
