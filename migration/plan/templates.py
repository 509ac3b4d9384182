"""Jinja2 templates in a sandbox with StrictUndefined.

The context is ``vars``, ``env``, ``steps.<id>.outputs`` and ``run``. A string that
is exactly one ``{{ expression }}`` renders to the expression's native value (an
int stays an int); anything else renders to text. Fields a step type declares as
shell-quoted get every ``{{ }}`` value passed through :func:`shlex.quote`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)


class TemplateError(Exception):
    """A template that does not parse or does not render; the message is one line."""


def _env(quote: bool = False) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=(lambda v: shlex.quote(str(v))) if quote else None,
    )
    return env


ENV = _env()
QUOTING_ENV = _env(quote=True)


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def parse(source: str) -> nodes.Template:
    """Parse a template (or raise TemplateError with the parser's message)."""
    try:
        return ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}") from exc


def parse_expression(source: str) -> nodes.Template:
    """Parse a bare expression (a checkpoint's ``that:``, a step's ``when:``)."""
    try:
        return ENV.parse("{{ " + source + " }}")
    except TemplateSyntaxError as exc:
        # The expression is parsed inside {{ }}: say "expression", not "print statement".
        message = str(exc.message).replace("'end of print statement'", "end of expression")
        raise TemplateError(f"expression syntax error: {message}") from exc


@dataclass
class References:
    """What a template reads: step ids, var names, env names (and whether defaulted)."""

    steps: set[str] = field(default_factory=set)
    vars: set[str] = field(default_factory=set)
    env: set[str] = field(default_factory=set)
    env_defaulted: set[str] = field(default_factory=set)

    def update(self, other: References) -> None:
        self.steps |= other.steps
        self.vars |= other.vars
        self.env |= other.env
        self.env_defaulted |= other.env_defaulted


def _key_of(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        value = node.arg.value
        return value if isinstance(value, str) else None
    return None


def references(tree: nodes.Template) -> References:
    refs = References()

    def walk(node: nodes.Node, defaulted: bool) -> None:
        if isinstance(node, nodes.Filter) and node.name in ("default", "d"):
            defaulted = True
        if (
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Getattr)
            and node.node.attr == "get"
            and isinstance(node.node.node, nodes.Name)
            and node.node.node.name in ("env", "vars", "steps")
        ):
            # env.get('X', ...) is optional by construction: not a reference to a key "get".
            first = node.args[0] if node.args else None
            is_name = isinstance(first, nodes.Const) and isinstance(first.value, str)
            if node.node.node.name == "env" and is_name:
                refs.env_defaulted.add(first.value)  # type: ignore[union-attr]
            for child in [*node.args, *node.kwargs]:
                walk(child, defaulted)
            return
        if isinstance(node, (nodes.Getattr, nodes.Getitem)) and isinstance(node.node, nodes.Name):
            key = _key_of(node)
            root = node.node.name
            if key is not None:
                if root == "steps":
                    refs.steps.add(key)
                elif root == "vars":
                    refs.vars.add(key)
                elif root == "env":
                    (refs.env_defaulted if defaulted else refs.env).add(key)
        for child in node.iter_child_nodes():
            walk(child, defaulted)

    walk(tree, False)
    return refs


def iter_strings(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string inside nested dicts/lists, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from iter_strings(v, (*path, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_strings(v, (*path, i))


class Placeholder:
    """Stands for a value not known before the run (dry run): renders as ``<steps.x.outputs.y>``."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Placeholder:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Placeholder(f"{self._name}.{attr}")

    def __getitem__(self, key: Any) -> Placeholder:
        return Placeholder(f"{self._name}[{key!r}]")

    def __str__(self) -> str:
        return f"<{self._name}>"

    __repr__ = __str__


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


def render_string(source: str, context: Mapping[str, Any], quote: bool = False) -> Any:
    """Render one template string; a lone ``{{ expr }}`` keeps its native type."""
    if not is_template(source):
        return source
    if quote:
        check_shell_template(source)
    try:
        match = _SINGLE_EXPRESSION.match(source)
        if match and "{{" not in match.group("expr") and not quote:
            value = ENV.compile_expression(match.group("expr"), undefined_to_none=False)(**context)
            if isinstance(value, Placeholder):
                return str(value)
            if isinstance(value, StrictUndefined):
                str(value)  # raises UndefinedError with the name
            return value
        env = QUOTING_ENV if quote else ENV
        return env.from_string(source).render(**context)
    except UndefinedError as exc:
        raise TemplateError(f"undefined in template {source!r}: {_one_line(exc)}") from exc
    except SecurityError as exc:
        raise TemplateError(f"template not allowed (sandbox): {_one_line(exc)}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}") from exc
    except Exception as exc:
        raise TemplateError(f"template {source!r} failed: {_one_line(exc)}") from exc


def render_value(value: Any, context: Mapping[str, Any], quote: bool = False) -> Any:
    """Render every string inside nested dicts/lists."""
    if isinstance(value, str):
        return render_string(value, context, quote)
    if isinstance(value, Mapping):
        return {k: render_value(v, context, quote) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context, quote) for v in value]
    return value


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluate a checkpoint or ``when:`` expression."""
    try:
        return ENV.compile_expression(expression, undefined_to_none=False)(**context)
    except UndefinedError as exc:
        raise TemplateError(f"undefined in {expression!r}: {_one_line(exc)}") from exc
    except SecurityError as exc:
        raise TemplateError(f"expression not allowed (sandbox): {_one_line(exc)}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(f"expression syntax error: {exc.message}") from exc
    except Exception as exc:
        raise TemplateError(f"{expression!r} failed: {_one_line(exc)}") from exc


def truthy(value: Any) -> bool:
    """A checkpoint holds when its value is truthy; StrictUndefined never is."""
    if isinstance(value, StrictUndefined):
        str(value)
    return bool(value)
