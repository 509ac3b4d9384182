"""The Jinja2 environment every template renders in: a sandbox with StrictUndefined.

jinja2's :class:`ImmutableSandboxedEnvironment` keeps templates away from Python;
this one also counts what a template computes against :mod:`.limits` (every
filter, test, call, operator, loop and output piece) and drops ``lipsum``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import update_wrapper
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

from migration.plan import limits


class TemplateError(Exception):
    """A template that does not parse or does not render; the message is one line."""


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def one_line(exc: Exception) -> str:
    """The first line of an exception's message (or its class name)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    passed = _PassArg.from_obj(func) is not None

    def limited(*args: Any, **kwargs: Any) -> Any:
        limits.tick()
        if passed:
            args = (args[0], *limits.filter_args(name, args[1:], kwargs))
        else:
            args = limits.filter_args(name, args, kwargs)
        return limits.made(func(*args, **kwargs))

    return update_wrapper(limited, func)


def _limited_test(func: Any) -> Any:
    def limited(*args: Any, **kwargs: Any) -> Any:
        limits.tick()
        return func(*args, **kwargs)

    return update_wrapper(limited, func)


def printable(value: Any) -> Any:
    """What ``{{ }}`` outputs: refused before str() if its text would be too big."""
    if type(value) is str:  # the usual case, quickly
        if len(value) > limits.MAX_VALUE:
            raise limits.too_big(len(value), "the output")
        return value
    limits.check_text(value, "the output")
    return value


def _limited_join(join: Callable[[Iterable[Any]], str], values: tuple[Any, ...]) -> str:
    """``a ~ b``: the operands' text counted before str() makes it."""
    total = 0
    for value in values:
        kind = type(value)
        if kind is str:
            total += len(value)
        elif kind is int:
            total += value.bit_length() // 3
        else:
            total += limits.deep_size(value, limits.MAX_VALUE - total)
        if total > limits.MAX_VALUE:
            raise limits.too_big(total)
    return limits.made(join(values))


def _limited_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """What a ``{% for %}`` loop iterates over: one step per item."""
    for item in iterable:
        limits.tick()
        yield item


def _limited_concat(pieces: Iterable[str]) -> str:
    """Joins a rendering's output (and every block's): counted before it is made."""
    parts = []
    total = 0
    for piece in pieces:
        limits.tick()
        total += len(piece)
        if total > limits.MAX_VALUE:
            raise limits.too_big(total, "the output")
        parts.append(piece)
    return limits.made("".join(parts))


class _LimitedCodeGenerator(CodeGenerator):
    """Compiles templates so that loops and ``~`` count against the limits."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        wrapped = isinstance(node.iter, nodes.Call) and isinstance(node.iter.node, nodes.EnvironmentAttribute)
        if not wrapped:
            node.iter = nodes.Call(
                nodes.EnvironmentAttribute("limited_iter", lineno=node.lineno),
                [node.iter],
                [],
                None,
                None,
                lineno=node.lineno,
            )
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # jinja2's own, with each operand's text counted before str() makes it.
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"environment.limited_join({func_name}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus bounds on what a template may compute."""

    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset(["+", "-", "*", "/", "//", "%", "**"])
    concat = staticmethod(_limited_concat)
    limited_iter = staticmethod(_limited_iter)
    limited_join = staticmethod(_limited_join)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # lipsum(n) writes n paragraphs of lorem ipsum: nothing a plan needs.
        del self.globals["lipsum"]
        for name, func in list(self.filters.items()):
            self.filters[name] = _limited_filter(name, func)
        for name, func in list(self.tests.items()):
            self.tests[name] = _limited_test(func)

    # select('eq', ...), map(attribute=...), groupby: one step per item they look at.
    def getattr(self, obj: Any, attribute: str) -> Any:
        limits.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        limits.tick()
        return super().getitem(obj, argument)

    def call_test(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        limits.tick()
        return super().call_test(name, value, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        limits.tick()
        limits.check_binop(operator, left, right)
        return limits.made(super().call_binop(context, operator, left, right))

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        limits.tick()
        args = limits.check_call(obj, args, kwargs)
        if isinstance(obj, LoopContext) and args:  # loop(children) in a recursive for
            args = (_limited_iter(args[0]), *args[1:])
        return limits.made(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        is_format_map = value.__name__ == "format_map"

        def limited(*args: Any, **kwargs: Any) -> str:
            limits.tick()
            if is_format_map and args and isinstance(args[0], Mapping):
                limits.check_brace_format(fmt, (), args[0])
            else:
                limits.check_brace_format(fmt, args, kwargs)
            limits.check_size(len(fmt) + limits.deep_size((args, kwargs)), "formatting")
            return limits.made(wrapped(*args, **kwargs))

        return limited


def make_environment(finalize: Callable[[Any], Any] = printable) -> ImmutableSandboxedEnvironment:
    """A sandboxed, limited environment; ``finalize`` turns each ``{{ }}`` value into output."""
    return _LimitedEnvironment(
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=finalize,
    )


ENV = make_environment()
"""The environment of plain (unquoted) templates, of expressions and of the static checks."""
