"""Bounds on what one template rendering may compute.

The sandbox stops templates from reaching Python; these limits stop them from
exhausting memory or CPU. A rendering (one string, one checkpoint or ``when:``)
runs inside :func:`rendering_budget`; the sandboxed environment (:mod:`.sandbox`)
calls :func:`tick` for every loop iteration, call, filter and operator, and the
``check_*`` functions before an operation that could make a huge value.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from contextlib import contextmanager
from itertools import chain
from typing import Any

from jinja2.utils import Namespace

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
def rendering_budget() -> Iterator[None]:
    """A fresh budget for one rendering (on this thread)."""
    previous = getattr(_local, "budget", None)
    _local.budget = _Budget()
    try:
        yield
    finally:
        _local.budget = previous


def tick() -> None:
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


def deep_size(value: Any, limit: int = MAX_VALUE, indent: int = 0, wrap: bool = False) -> int:
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


def check_text(value: Any, what: str, indent: int = 0, wrap: bool = False) -> None:
    """Refuse, before ``str()`` makes it, the text of a value too big to make."""
    if isinstance(value, str):
        check_size(len(value), what)
    else:
        check_size(deep_size(value, indent=indent, wrap=wrap), what)


def too_big(size: int, what: str | None = None) -> LimitExceeded:
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


def made(value: Any) -> Any:
    """Count a value a template made against the budget; refuse one too big."""
    size = _size(value)
    if size > MAX_VALUE:
        raise too_big(size)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise LimitExceeded(f"an integer of more than {MAX_INT_BITS:,} bits")
    budget: _Budget | None = getattr(_local, "budget", None)
    if budget is not None and size:
        budget.made += size
        if budget.made > MAX_MADE:
            raise LimitExceeded(f"values adding up to more than {MAX_MADE:,} characters")
    return value


def check_size(size: int, what: str) -> None:
    if size > MAX_VALUE:
        raise too_big(size, what)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse, before computing it, a result the limits would refuse after."""
    if operator == "*":
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise LimitExceeded(f"an integer of more than {MAX_INT_BITS:,} bits")
            return
        seq, times = (left, right) if _is_int(right) else (right, left)
        if _is_int(times) and times > 0:
            check_size(deep_size(seq) * times, "repeating")
    elif operator == "**":
        # (bits - 1) * exponent is at most what the result has: exact check after.
        big = _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1
        if big and right * (abs(left).bit_length() - 1) > MAX_INT_BITS:
            raise LimitExceeded(f"an integer of more than {MAX_INT_BITS:,} bits")
    elif operator == "+":
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            check_size(deep_size(left) + deep_size(right), "adding")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, right)
        check_size(len(left) + deep_size(right), "formatting")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_FIELD = re.compile(r"\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def _check_width(text: str) -> None:
    if len(text) > 7 or int(text) > MAX_VALUE:
        raise too_big(int(text) if len(text) < 20 else MAX_VALUE + 1, "a format width")


def _check_width_arguments(values: Iterable[Any]) -> None:
    for value in values:
        if _is_int(value) and value > MAX_VALUE:
            raise too_big(value, "a format width")


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


def check_brace_format(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
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
        check_size(len(text) + found * (len(new) - len(old)), "replacing")


def joined(separator: str, items: Iterable[Any]) -> Iterable[Any]:
    """The items to join (as a list), once the size of the result is known to be bounded.

    Counted while they are taken, so an endless iterable stops at the limit too.
    """
    if isinstance(items, str):
        check_size(len(items) * (1 + len(separator)), "joining")
        return items
    listed = []
    size = 0
    for item in items:
        size += len(separator) + max(deep_size(item, MAX_VALUE - size), 8)
        check_size(size, "joining")
        listed.append(item)
    return listed


def check_call(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Methods of str and int that can make a huge value from small arguments."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, str):
        if name in ("center", "ljust", "rjust", "zfill") and args and _is_int(args[0]):
            check_size(args[0], f"str.{name}")
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if _is_int(size):
                check_size(len(owner) + owner.count("\t") * size, "str.expandtabs")
        elif name == "replace" and len(args) >= 2:
            _check_replace(owner, *args[:3])
        elif name == "join" and args:
            return (joined(owner, args[0]), *args[1:])
        elif name in ("split", "rsplit") and len(owner) > 100_000:
            _check_items(_split_count(owner, args[0] if args else kwargs.get("sep")), f"str.{name}")
        elif name == "splitlines" and len(owner) > 100_000:
            _check_items(owner.count("\n") + owner.count("\r") + 1, "str.splitlines")
        elif name == "translate" and args and isinstance(args[0], Mapping):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            check_size(len(owner) * longest, "str.translate")
    elif _is_int(owner) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if _is_int(length):
            check_size(length, "int.to_bytes")
    return args


# The filters that make text of their value (and arguments): str() of a list is all its items.
_TEXT_FILTERS = frozenset(
    [
        *("string", "tojson", "pprint", "join", "format", "urlencode", "e", "escape", "forceescape"),
        *("safe", "indent", "center", "truncate", "wordwrap", "title", "capitalize", "upper"),
        *("lower", "trim", "striptags", "urlize", "replace", "wordcount", "xmlattr", "filesizeformat"),
    ]
)


def filter_args(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The filters that can make a huge value (or loop long) from small arguments."""
    value = args[0] if args else None
    rest = args[1:]

    def arg(index: int, key: str, default: Any = None) -> Any:
        return rest[index] if len(rest) > index else kwargs.get(key, default)

    if name in _TEXT_FILTERS and not (name == "join" and arg(1, "attribute") is None):  # joined counts
        indent = arg(0, "indent") if name == "tojson" else 1 if name == "pprint" else 0
        unit = indent if _is_int(indent) else len(indent) if isinstance(indent, str) else 0
        check_text(value, name, min(max(unit, 0), 64), wrap=name == "pprint")
        if rest or kwargs:
            check_text((rest, kwargs), f"{name} arguments")
    if isinstance(value, str) and len(value) > 100_000:
        if name in ("list", "sort", "unique", "batch", "slice", "reverse"):
            _check_items(len(value), name)
        elif name in ("wordcount", "urlize", "wordwrap", "title", "capitalize"):
            _check_items(_split_count(value), name)
    if name == "center" and _is_int(arg(0, "width", 80)):
        check_size(arg(0, "width", 80), "center")
    elif name == "indent" and isinstance(value, str):
        width = arg(0, "width", 4)
        unit = width if _is_int(width) else len(width) if isinstance(width, str) else 0
        check_size(len(value) + unit * (value.count("\n") + 1), "indent")
    elif name == "format" and isinstance(value, str):
        _check_percent_format(value, tuple(rest) or tuple(kwargs.values()))
    elif name == "replace" and isinstance(value, str):
        _check_replace(value, arg(0, "old"), arg(1, "new"), arg(2, "count", -1))
    elif name == "join" and value is not None and not isinstance(value, Mapping):
        if arg(1, "attribute") is None:
            separator = arg(0, "d", "")
            return (joined(separator if isinstance(separator, str) else "", value), *rest)
    elif name == "wordwrap" and isinstance(value, str):
        width = arg(0, "width", 79)
        wrap = arg(2, "wrapstring", "\n")
        if _is_int(width) and isinstance(wrap, str):
            check_size(len(value) + (len(value) // max(width, 1) + 1) * len(wrap), "wordwrap")
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
        check_size(sum(_size(item) for item in items), "sum")
        if len(items) > 10_000:
            raise LimitExceeded("sum of more than 10,000 lists or strings")
        return (items, *rest)
    return args
