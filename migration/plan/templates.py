"""Jinja2 templates in a sandbox with StrictUndefined.

The context is ``vars``, ``env``, ``steps.<id>.outputs`` and ``run``. A string that
is exactly one ``{{ expression }}`` renders to the expression's native value (an
int stays an int); anything else renders to text. Fields a step type declares as
shell-quoted get every ``{{ }}`` value passed through :func:`shlex.quote`.
"""

from __future__ import annotations

import difflib
import re
import shlex
import threading
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import update_wrapper
from itertools import chain
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace, _PassArg

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)


class TemplateError(Exception):
    """A template that does not parse or does not render; the message is one line."""


# -- limits ---------------------------------------------------------------------------------
# What one rendering (one string, one checkpoint or ``when:``) may do. The sandbox stops
# templates from reaching Python; these stop them from exhausting memory or CPU.

MAX_STEPS = 1_000_000
"""Loop iterations, calls, filters, operators and output pieces in one rendering."""
MAX_VALUE = 8_000_000
"""Characters in one string (or 8 x items in one list) a template may make."""
MAX_MADE = 32_000_000
"""All the characters (8 per list item) the values of one rendering may add up to."""
MAX_INT_BITS = 14_000
"""Bits in an integer a template may compute: about 4,200 digits (Python prints at most 4,300)."""
MAX_CPU_SECONDS = 2.0
"""CPU time of one rendering."""


class LimitExceeded(Exception):
    """A template asked for more than the limits above."""


class _Budget:
    __slots__ = ("check_at", "deadline", "made", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.made = 0
        self.deadline = time.thread_time() + MAX_CPU_SECONDS
        # A thread's CPU time grows no faster than the wall clock, so the deadline cannot
        # come before this; reading the (cheap) wall clock on every tick bounds the overrun
        # to a millisecond without a (costly) thread_time() call on every tick.
        self.check_at = time.perf_counter() + MAX_CPU_SECONDS


_local = threading.local()


@contextmanager
def _limits() -> Iterator[None]:
    """A fresh budget for one rendering (on this thread)."""
    previous = getattr(_local, "budget", None)
    _local.budget = _Budget()
    try:
        yield
    finally:
        _local.budget = previous


def _tick() -> None:
    budget: _Budget | None = getattr(_local, "budget", None)
    if budget is None:
        return
    budget.steps += 1
    if budget.steps > MAX_STEPS:
        raise LimitExceeded(f"more than {MAX_STEPS:,} loop iterations, calls and operations")
    if time.perf_counter() >= budget.check_at:
        left = budget.deadline - time.thread_time()
        if left < 0:
            raise LimitExceeded(f"more than {MAX_CPU_SECONDS:g} s of CPU time")
        budget.check_at = time.perf_counter() + max(left, 0.001)


def _size(value: Any) -> int:
    """Roughly the bytes a value holds (its own, not its items')."""
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return 8 * len(value)
    if isinstance(value, int):
        return value.bit_length() // 8
    return 0


_SEQUENCES = (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)
_END = object()


def _deep_size(value: Any, limit: int = MAX_VALUE, indent: int = 0, wrap: bool = False) -> int:
    """Roughly the characters ``str(value)`` makes, items and their items included.

    Strings count their length, every item at least 8 (plus ``indent`` a level of nesting:
    pprint and ``tojson(indent=...)`` put items on lines of their own; ``wrap``: pprint
    splits long strings into indented lines). Stops as soon as the total passes ``limit``,
    so a walk looks at no more than ``limit / 8`` items however big the value is.
    """
    total = 0
    pending: list[tuple[Iterator[Any], int]] = []  # the items still to look at, and their depth
    item, depth = value, 0
    while True:
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item) * (1 + depth * indent) if wrap else len(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3
        elif isinstance(item, _SEQUENCES):
            total += (8 + (depth + 1) * indent) * len(item)
            pending.append((iter(item), depth + 1))
        elif isinstance(item, Mapping):
            total += (16 + (depth + 1) * indent) * len(item)
            pending.append((chain.from_iterable(item.items()), depth + 1))
        elif isinstance(item, Namespace):
            pending.append((iter((item._Namespace__attrs,)), depth))
        if total > limit:
            return total
        while pending:
            item = next(pending[-1][0], _END)
            if item is not _END:
                depth = pending[-1][1]
                break
            pending.pop()
        else:
            return total


def _check_text(value: Any, what: str, indent: int = 0, wrap: bool = False) -> None:
    """Refuse, before ``str()`` makes it, the text of a value too big to make."""
    if isinstance(value, str):
        _check_size(len(value), what)
    else:
        _check_size(_deep_size(value, indent=indent, wrap=wrap), what)


def _too_big(size: int, what: str | None = None) -> LimitExceeded:
    if what is None:
        return LimitExceeded(f"a value of {size:,} characters (the limit is {MAX_VALUE:,})")
    return LimitExceeded(f"{what} would make {size:,} characters (the limit is {MAX_VALUE:,})")


def _check_items(count: int, what: str) -> None:
    """Refuse splitting a long string into more small strings than a value may hold."""
    if count * 64 > MAX_VALUE:
        raise LimitExceeded(f"{what} would make {count:,} strings (the limit is {MAX_VALUE // 64:,})")


def _split_count(text: str, separator: Any = None) -> int:
    if isinstance(separator, str) and separator:
        return text.count(separator) + 1
    return sum(map(text.count, " \t\n\r\x0b\x0c")) + 1


def _made(value: Any) -> Any:
    """Count a value a template made against the budget; refuse one too big."""
    size = _size(value)
    if size > MAX_VALUE:
        raise _too_big(size)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise LimitExceeded(f"an integer of more than {MAX_INT_BITS:,} bits")
    budget: _Budget | None = getattr(_local, "budget", None)
    if budget is not None and size:
        budget.made += size
        if budget.made > MAX_MADE:
            raise LimitExceeded(f"values adding up to more than {MAX_MADE:,} characters")
    return value


def _check_size(size: int, what: str) -> None:
    if size > MAX_VALUE:
        raise _too_big(size, what)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse, before computing it, a result the limits would refuse after."""
    if operator == "*":
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise LimitExceeded(f"an integer of more than {MAX_INT_BITS:,} bits")
            return
        seq, times = (left, right) if _is_int(right) else (right, left)
        if _is_int(times) and times > 0:
            _check_size(_deep_size(seq) * times, "repeating")
    elif operator == "**":
        # (bits - 1) * exponent is at most what the result has: exact check after.
        big = _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1
        if big and right * (abs(left).bit_length() - 1) > MAX_INT_BITS:
            raise LimitExceeded(f"an integer of more than {MAX_INT_BITS:,} bits")
    elif operator == "+":
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _check_size(_deep_size(left) + _deep_size(right), "adding")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, right)
        _check_size(len(left) + _deep_size(right), "formatting")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_FIELD = re.compile(r"\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def _check_width(text: str) -> None:
    if len(text) > 7 or int(text) > MAX_VALUE:
        raise _too_big(int(text) if len(text) < 20 else MAX_VALUE + 1, "a format width")


def _check_width_arguments(values: Iterable[Any]) -> None:
    for value in values:
        if _is_int(value) and value > MAX_VALUE:
            raise _too_big(value, "a format width")


def _check_percent_format(fmt: str, args: Any) -> None:
    """``'%999999999d' % 1``, ``'%*d' % (10**9, 1)``: widths that would make huge strings."""
    star = False
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*":
                star = True
            elif part:
                _check_width(part)
    if star:
        _check_width_arguments(args if isinstance(args, tuple) else (args,))


def _check_brace_format(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """``'{:>999999999}'.format(1)`` and ``'{:{w}}'.format(1, w=10**9)``."""
    for match in _BRACE_FIELD.finditer(fmt):
        spec = match.group(1).partition(":")[2]
        for digits in re.findall(r"\d+", re.sub(r"\{[^{}]*\}", "", spec)):
            _check_width(digits)
        if "{" in spec:
            _check_width_arguments([*args, *kwargs.values()])


def _check_replace(text: str, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        found = text.count(old) if old else len(text) + 1
        if _is_int(count) and count >= 0:
            found = min(found, count)
        _check_size(len(text) + found * (len(new) - len(old)), "replacing")


def _joined(separator: str, items: Iterable[Any]) -> Iterable[Any]:
    """The items to join (as a list), once the size of the result is known to be bounded.

    Counted while they are taken, so an endless iterable stops at the limit too.
    """
    if isinstance(items, str):
        _check_size(len(items) * (1 + len(separator)), "joining")
        return items
    listed = []
    size = 0
    for item in items:
        size += len(separator) + max(_deep_size(item, MAX_VALUE - size), 8)
        _check_size(size, "joining")
        listed.append(item)
    return listed


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Methods of str and int that can make a huge value from small arguments."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, str):
        if name in ("center", "ljust", "rjust", "zfill") and args and _is_int(args[0]):
            _check_size(args[0], f"str.{name}")
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if _is_int(size):
                _check_size(len(owner) + owner.count("\t") * size, "str.expandtabs")
        elif name == "replace" and len(args) >= 2:
            _check_replace(owner, *args[:3])
        elif name == "join" and args:
            return (_joined(owner, args[0]), *args[1:])
        elif name in ("split", "rsplit") and len(owner) > 100_000:
            _check_items(_split_count(owner, args[0] if args else kwargs.get("sep")), f"str.{name}")
        elif name == "splitlines" and len(owner) > 100_000:
            _check_items(owner.count("\n") + owner.count("\r") + 1, "str.splitlines")
        elif name == "translate" and args and isinstance(args[0], Mapping):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            _check_size(len(owner) * longest, "str.translate")
    elif _is_int(owner) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if _is_int(length):
            _check_size(length, "int.to_bytes")
    return args


# The filters that make text of their value (and arguments): str() of a list is all its items.
_TEXT_FILTERS = frozenset(
    [
        *("string", "tojson", "pprint", "join", "format", "urlencode", "e", "escape", "forceescape"),
        *("safe", "indent", "center", "truncate", "wordwrap", "title", "capitalize", "upper"),
        *("lower", "trim", "striptags", "urlize", "replace", "wordcount", "xmlattr", "filesizeformat"),
    ]
)


def _filter_args(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The filters that can make a huge value (or loop long) from small arguments."""
    value = args[0] if args else None
    rest = args[1:]

    def arg(index: int, key: str, default: Any = None) -> Any:
        return rest[index] if len(rest) > index else kwargs.get(key, default)

    if name in _TEXT_FILTERS and not (name == "join" and arg(1, "attribute") is None):  # _joined counts
        indent = arg(0, "indent") if name == "tojson" else 1 if name == "pprint" else 0
        unit = indent if _is_int(indent) else len(indent) if isinstance(indent, str) else 0
        _check_text(value, name, min(max(unit, 0), 64), wrap=name == "pprint")
        if rest or kwargs:
            _check_text((rest, kwargs), f"{name} arguments")
    if isinstance(value, str) and len(value) > 100_000:
        if name in ("list", "sort", "unique", "batch", "slice", "reverse"):
            _check_items(len(value), name)
        elif name in ("wordcount", "urlize", "wordwrap", "title", "capitalize"):
            _check_items(_split_count(value), name)
    if name == "center" and _is_int(arg(0, "width", 80)):
        _check_size(arg(0, "width", 80), "center")
    elif name == "indent" and isinstance(value, str):
        width = arg(0, "width", 4)
        unit = width if _is_int(width) else len(width) if isinstance(width, str) else 0
        _check_size(len(value) + unit * (value.count("\n") + 1), "indent")
    elif name == "format" and isinstance(value, str):
        _check_percent_format(value, tuple(rest) or tuple(kwargs.values()))
    elif name == "replace" and isinstance(value, str):
        _check_replace(value, arg(0, "old"), arg(1, "new"), arg(2, "count", -1))
    elif name == "join" and value is not None and not isinstance(value, Mapping):
        if arg(1, "attribute") is None:
            separator = arg(0, "d", "")
            return (_joined(separator if isinstance(separator, str) else "", value), *rest)
    elif name == "wordwrap" and isinstance(value, str):
        width = arg(0, "width", 79)
        wrap = arg(2, "wrapstring", "\n")
        if _is_int(width) and isinstance(wrap, str):
            _check_size(len(value) + (len(value) // max(width, 1) + 1) * len(wrap), "wordwrap")
    elif name in ("batch", "slice"):
        count = arg(0, "linecount" if name == "batch" else "slices", 1)
        if _is_int(count) and count > MAX_VALUE // 8:
            raise LimitExceeded(f"{name} into more than {MAX_VALUE // 8:,} parts")
    elif name == "tojson":
        indent = arg(0, "indent")
        if (_is_int(indent) and indent > 64) or (isinstance(indent, str) and len(indent) > 64):
            raise LimitExceeded("tojson indent of more than 64")
    elif name == "round":
        precision = arg(0, "precision", 0)
        if _is_int(precision) and abs(precision) > 400:
            raise LimitExceeded("round to more than 400 digits")
    elif name == "sum" and not isinstance(arg(1, "start", 0), (int, float)):
        # sum() of lists or strings copies quadratically: bound what it can make.
        items = list(value) if value is not None else []
        _check_size(sum(_size(item) for item in items), "sum")
        if len(items) > 10_000:
            raise LimitExceeded("sum of more than 10,000 lists or strings")
        return (items, *rest)
    return args


def _limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    passed = _PassArg.from_obj(func) is not None

    def limited(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if passed:
            args = (args[0], *_filter_args(name, args[1:], kwargs))
        else:
            args = _filter_args(name, args, kwargs)
        return _made(func(*args, **kwargs))

    return update_wrapper(limited, func)


def _limited_test(func: Any) -> Any:
    def limited(*args: Any, **kwargs: Any) -> Any:
        _tick()
        return func(*args, **kwargs)

    return update_wrapper(limited, func)


def _printable(value: Any) -> Any:
    """What ``{{ }}`` outputs: refused before str() if its text would be too big."""
    if type(value) is str:  # the usual case, quickly
        if len(value) > MAX_VALUE:
            raise _too_big(len(value), "the output")
        return value
    _check_text(value, "the output")
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
            total += _deep_size(value, MAX_VALUE - total)
        if total > MAX_VALUE:
            raise _too_big(total)
    return _made(join(values))


def _limited_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """What a ``{% for %}`` loop iterates over: one step per item."""
    for item in iterable:
        _tick()
        yield item


def _limited_concat(pieces: Iterable[str]) -> str:
    """Joins a rendering's output (and every block's): counted before it is made."""
    parts = []
    total = 0
    for piece in pieces:
        _tick()
        total += len(piece)
        if total > MAX_VALUE:
            raise _too_big(total, "the output")
        parts.append(piece)
    return _made("".join(parts))


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
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_test(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return super().call_test(name, value, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return _made(super().call_binop(context, operator, left, right))

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        args = _check_call(obj, args, kwargs)
        if isinstance(obj, LoopContext) and args:  # loop(children) in a recursive for
            args = (_limited_iter(args[0]), *args[1:])
        return _made(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        is_format_map = value.__name__ == "format_map"

        def limited(*args: Any, **kwargs: Any) -> str:
            _tick()
            if is_format_map and args and isinstance(args[0], Mapping):
                _check_brace_format(fmt, (), args[0])
            else:
                _check_brace_format(fmt, args, kwargs)
            _check_size(len(fmt) + _deep_size((args, kwargs)), "formatting")
            return _made(wrapped(*args, **kwargs))

        return limited


def _env(quote: bool = False) -> ImmutableSandboxedEnvironment:
    env = _LimitedEnvironment(
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=(lambda v: shlex.quote(str(_printable(v)))) if quote else _printable,
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
    except RecursionError as exc:
        raise TemplateError("template nested too deeply") from exc


def parse_expression(source: str) -> nodes.Template:
    """Parse a bare expression (a checkpoint's ``that:``, a step's ``when:``)."""
    try:
        return ENV.parse("{{ " + source + " }}")
    except TemplateSyntaxError as exc:
        # The expression is parsed inside {{ }}: say "expression", not "print statement".
        message = str(exc.message).replace("'end of print statement'", "end of expression")
        raise TemplateError(f"expression syntax error: {message}") from exc
    except RecursionError as exc:
        raise TemplateError("expression nested too deeply") from exc


ROOTS = ("vars", "env", "steps", "run")
"""The names a template sees (besides the sandbox's globals: range, dict, cycler, ...)."""

# Names that are not plain data: any '_' attribute of them is refused by the sandbox.
_OBJECT_NAMES = {"self", "loop", "caller"}


def _never_allowed(name: str) -> bool:
    """An attribute (``x.name``) the sandbox refuses on every value: ``__class__``, ``__doc__``.

    Every value has them (so a dict's keys are never tried) and they start with '_'.
    """
    return name.startswith("_") and hasattr(object, name)


def check_renderable(tree: nodes.Template) -> None:
    """Refuse what can never render, before anything runs.

    - an attribute the sandbox always refuses (``x.__class__``, or any ``_name`` or
      ``['_name']`` of a literal, of a global such as ``cycler``, of self/loop/caller);
      ``_name`` of data is fine: ``steps.a.outputs._id`` is the item ``_id``;
    - a name that is neither a root (vars, env, steps, run), a global, nor set in the
      template itself (a loop variable, ``{% set %}``, a macro and its arguments);
    - a filter or test that does not exist;
    - ``{% include %}``, ``{% import %}``, ``{% extends %}``: there are no other templates.
    """
    local: set[str] = set()
    for node in tree.find_all((nodes.Name, nodes.Macro, nodes.For, nodes.CallBlock)):
        if isinstance(node, nodes.Name) and node.ctx in ("store", "param"):
            local.add(node.name)
        elif isinstance(node, nodes.Macro):
            local |= {node.name, "varargs", "kwargs", "caller"}
        elif isinstance(node, nodes.CallBlock):
            local |= {"varargs", "kwargs", "caller"}
        elif isinstance(node, nodes.For):
            local.add("loop")
    known = {*ROOTS, *ENV.globals, "self", *local}
    objects = (_OBJECT_NAMES | set(ENV.globals)) - {n for n in local if n not in ("loop", "caller")}
    # ``x is defined``, ``x | default(...)`` render whatever x is: they are not refused, nor
    # is a name guarded so anywhere (``{% if x is defined %}{{ x }}{% endif %}``).
    guarded_nodes = [
        node.node
        for node in tree.find_all((nodes.Test, nodes.Filter))
        if node.name in (("defined", "undefined") if isinstance(node, nodes.Test) else ("default", "d"))
    ]
    guarded = {id(node) for node in guarded_nodes}
    known |= {node.name for node in guarded_nodes if isinstance(node, nodes.Name)}

    def refuse_attribute(base: nodes.Node, name: str, item: bool = False) -> None:
        literal = isinstance(base, (nodes.Const, nodes.List, nodes.Tuple, nodes.TemplateData))
        global_object = isinstance(base, nodes.Name) and base.name in objects
        if (_never_allowed(name) and not item) or (name.startswith("_") and (literal or global_object)):
            raise TemplateError(f"template not allowed (sandbox): access to attribute {name!r} is unsafe")

    for node in tree.find_all(nodes.Node):
        if isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            raise TemplateError("a template cannot include, import or extend another template")
        if id(node) in guarded:
            continue
        if isinstance(node, nodes.Getattr):
            refuse_attribute(node.node, node.attr)
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            if isinstance(node.arg.value, str):  # data['__doc__'] is the item, if there is one
                refuse_attribute(node.node, node.arg.value, item=True)
        elif isinstance(node, nodes.Filter):
            if node.name not in ENV.filters:
                raise TemplateError(f"no filter named {node.name!r}")
            first = node.args[0] if node.args else None
            if node.name == "attr" and isinstance(first, nodes.Const) and isinstance(first.value, str):
                refuse_attribute(node.node if node.node is not None else first, first.value)
        elif isinstance(node, nodes.Test) and node.name not in ENV.tests:
            raise TemplateError(f"no test named {node.name!r}")
        elif isinstance(node, (nodes.Name, nodes.NSRef)):
            name = node.name
            if (isinstance(node, nodes.NSRef) or node.ctx == "load") and name not in known:
                close = difflib.get_close_matches(name, ROOTS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (a template sees {', '.join(ROOTS)})"
                raise TemplateError(f"undefined name {name!r}{hint}")


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
        if attr.startswith("_"):  # as for a dict, the sandbox then tries placeholder['_x']
            raise AttributeError(attr)
        return Placeholder(f"{self._name}.{attr}")

    def __getitem__(self, key: Any) -> Placeholder:
        return Placeholder(f"{self._name}[{key!r}]")

    def __iter__(self) -> Iterator[Placeholder]:
        # Without it Python iterates placeholder[0], [1], ... forever. One item stands for
        # the items not known yet: ``join`` and ``{% for %}`` preview as <steps.x.outputs.y[*]>.
        return iter((Placeholder(f"{self._name}[*]"),))

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


def render_string(source: str, context: Mapping[str, Any], quote: bool = False) -> Any:
    """Render one template string; a lone ``{{ expr }}`` keeps its native type."""
    if not is_template(source):
        return source
    if quote:
        check_shell_template(source)
    try:
        with _limits():
            match = _SINGLE_EXPRESSION.match(source)
            if match and "{{" not in match.group("expr") and not quote:
                value = ENV.compile_expression(match.group("expr"), undefined_to_none=False)(**context)
                if isinstance(value, Placeholder):
                    return str(value)
                _reject_undefined(value)  # raises UndefinedError with the name
                _check_text(value, "the value")  # the runner copies it (JSON) after the limits
                return value
            env = QUOTING_ENV if quote else ENV
            return env.from_string(source).render(**context)
    except UndefinedError as exc:
        raise TemplateError(f"undefined in template {source!r}: {_one_line(exc)}") from exc
    except SecurityError as exc:
        raise TemplateError(f"template not allowed (sandbox): {_one_line(exc)}") from exc
    except LimitExceeded as exc:
        raise TemplateError(f"template refused: {_one_line(exc)}") from exc
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
    """Evaluate a checkpoint or ``when:`` expression.

    Anything that keeps it from giving a value (an undefined name or output, the
    sandbox, a limit, an exception) is a TemplateError: the checkpoint or step fails.
    """
    try:
        with _limits():
            value = ENV.compile_expression(expression, undefined_to_none=False)(**context)
            _reject_undefined(value)
            _check_text(value, "the value")  # the runner copies it (JSON) after the limits
            return value
    except UndefinedError as exc:
        raise TemplateError(f"undefined in {expression!r}: {_one_line(exc)}") from exc
    except SecurityError as exc:
        raise TemplateError(f"expression not allowed (sandbox): {_one_line(exc)}") from exc
    except LimitExceeded as exc:
        raise TemplateError(f"expression refused: {_one_line(exc)}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(f"expression syntax error: {exc.message}") from exc
    except Exception as exc:
        raise TemplateError(f"{expression!r} failed: {_one_line(exc)}") from exc


def truthy(value: Any) -> bool:
    """A checkpoint holds when its value is truthy; an undefined value is an error, never false."""
    try:
        _reject_undefined(value)
        return bool(value)
    except UndefinedError as exc:
        raise TemplateError(f"undefined: {_one_line(exc)}") from exc
    except Exception as exc:
        raise TemplateError(f"cannot tell whether {type(value).__name__} is true: {_one_line(exc)}") from exc
