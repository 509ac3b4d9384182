"""Reading plan YAML into Python values with the 1-based line and column of every key and value.

Bounded: nesting, alias expansion and integer size are limited, so a hostile file
is refused with its position, not expanded. libyaml parses when it gives what
PyYAML would; PyYAML's pure-Python parser decides otherwise (its messages are
the reference).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from migration.errors import PlanError

Loc = tuple[str | int, ...]


def format_path(loc: Loc) -> str:
    """A location as the error line shows it: ``phases[1].steps[0].with.url``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


@dataclass
class Positions:
    """1-based (line, column) of every key and value in the YAML document."""

    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def of_value(self, loc: Loc) -> tuple[int, int]:
        while loc and loc not in self.values:
            loc = loc[:-1]
        return self.values.get(loc, (1, 1))

    def of_key(self, loc: Loc) -> tuple[int, int]:
        return self.keys.get(loc) or self.of_value(loc)

    def error(self, file: str, loc: Loc, message: str, at_key: bool = False) -> PlanError:
        """A PlanError at ``loc``'s value, or at its key (``at_key``: an unknown key, say)."""
        line, col = self.of_key(loc) if at_key else self.of_value(loc)
        return PlanError(message, file=file, line=line, col=col, path=format_path(loc))


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


# Bounds on what a plan file may make the loader do.
MAX_DEPTH = 100
"""Nesting of mappings and lists."""
MAX_ALIAS_VALUES = 50_000
"""Values that YAML aliases (``*name``) may add, all together: an alias bomb is refused."""


_INT_LIMIT = 10**4300
_TOO_LONG = "integer too long (more than 4300 digits)"


class _Builder:
    """Turns a composed YAML node tree into Python values, recording positions.

    An alias is a second reference to a node: it is built again (as its own copy)
    and what it adds is counted, so a billion-laughs plan is refused, not expanded.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.positions = Positions()
        self.constructor = yaml.constructor.SafeConstructor()
        self.built: set[int] = set()
        self.open: set[int] = set()
        self.aliased = 0

    def error(self, node: yaml.Node, loc: Loc, message: str) -> PlanError:
        line, col = _mark(node)
        return PlanError(message, file=self.file, line=line, col=col, path=format_path(loc))

    def build(self, node: yaml.Node, loc: Loc = (), depth: int = 1, aliased: bool = False) -> Any:
        self.positions.values[loc] = _mark(node)
        if id(node) in self.open:
            raise self.error(node, loc, "a YAML alias refers to a value that contains it")
        if id(node) in self.built:
            aliased = True
        self.built.add(id(node))
        if aliased:
            self.aliased += 1
            if self.aliased > MAX_ALIAS_VALUES:
                raise self.error(node, loc, f"YAML aliases expand to more than {MAX_ALIAS_VALUES:,} values")
        if depth > MAX_DEPTH:
            raise self.error(node, loc, f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            self.open.add(id(node))
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.error(key_node, loc, "a key must be a plain value, not a mapping or a list")
                key = self.construct(key_node, loc)
                if not isinstance(key, (str, int, float, bool)) or isinstance(key, bool):
                    key = str(key)
                key_loc = (*loc, str(key))
                if key in result:
                    raise self.error(key_node, key_loc, f"duplicate key {key!r}")
                self.positions.keys[key_loc] = _mark(key_node)
                value = self.build(value_node, key_loc, depth + 1, aliased)
                result[str(key) if not isinstance(key, str) else key] = value
            self.open.discard(id(node))
            return result
        if isinstance(node, yaml.SequenceNode):
            self.open.add(id(node))
            items = [self.build(item, (*loc, i), depth + 1, aliased) for i, item in enumerate(node.value)]
            self.open.discard(id(node))
            return items
        return self.construct(node, loc)

    def construct(self, node: yaml.Node, loc: Loc) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise self.error(node, loc, str(exc.problem)) from exc
        except Exception as exc:
            # int('9' * 5000) (Python's 4300-digit limit), a date such as 2024-13-45, ...
            if isinstance(exc, ValueError) and "digits" in str(exc) and node.tag.endswith(":int"):
                raise self.error(node, loc, _TOO_LONG) from exc
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            what = node.tag.rpartition(":")[2] or "value"
            raise self.error(node, loc, f"invalid {what} {node.value!r:.40}: {detail}") from exc
        if isinstance(value, int) and abs(value) >= _INT_LIMIT:
            raise self.error(node, loc, _TOO_LONG)  # 0x..., which int() reads beyond the limit
        return value


class _NestingTooDeep(Exception):
    def __init__(self, mark: Any) -> None:
        super().__init__("nesting too deep")
        self.mark = mark


class _PythonLoader(yaml.SafeLoader):
    """PyYAML's own loader, refusing nesting deeper than MAX_DEPTH (its composer recurses)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _NestingTooDeep(self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# libyaml's parser is ~10x faster. Its error messages differ, so a plan it rejects
# is parsed again by the pure-Python one, whose messages are the reference.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", None)


def _compose(text: str, loader_class: Any) -> yaml.Node | None:
    loader = loader_class(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _like_python(root: yaml.Node) -> bool:
    """Whether libyaml's nodes are the ones PyYAML would give, marks included.

    Inside ``{...}`` or ``[...]`` they may not be: PyYAML marks an empty value
    (``{a: }``) just after the ``:``, and refuses a ``?`` in a plain value that
    libyaml accepts (``{a: b?c}``). Nesting is checked here too, in document order,
    as :class:`_PythonLoader` does it.
    """
    seen: set[int] = set()
    pending: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while pending:
        node, depth, in_flow = pending.pop()
        if id(node) in seen:  # an alias: composed once, where its anchor is
            continue
        seen.add(id(node))
        plain_in_flow = in_flow and isinstance(node, yaml.ScalarNode) and not node.style
        if plain_in_flow and ("?" in node.value or node.start_mark.index == node.end_mark.index):
            return False
        if depth > MAX_DEPTH:
            raise _NestingTooDeep(node.start_mark)
        flow = bool(getattr(node, "flow_style", False))
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            continue
        pending.extend((child, depth + 1, flow) for child in reversed(children))
    return True


# Where the two parsers disagree: a tag that runs into a flow indicator
# (``[!!str a,b]``: PyYAML takes the ``,`` as part of the tag), a comment right
# after a block scalar's header (``|#``: PyYAML refuses it).
_DISAGREE = re.compile(r"![^\s,\[\]{}]*[,\[\]{}]|[|>][-+0-9]*#")


def _compose_plan(text: str) -> yaml.Node | None:
    """The node tree PyYAML gives (or its error), from libyaml when it gives the same.

    Where libyaml's answer may differ, the pure-Python loader decides: tabs (PyYAML
    refuses some that libyaml accepts), a byte-order mark after the start, no final
    line break (libyaml marks an empty value at the very end one line further),
    ``_DISAGREE``, and what :func:`_like_python` finds.
    """
    fast = _FAST_LOADER is not None and text.endswith("\n")
    if fast and "\t" not in text and "\ufeff" not in text[1:] and not _DISAGREE.search(text):
        try:
            node = _compose(text, _FAST_LOADER)
        except yaml.YAMLError:
            pass
        else:
            if node is None or _like_python(node):
                return node
    return _compose(text, _PythonLoader)


def parse_yaml(text: str, display: str) -> tuple[Any, Positions]:
    try:
        node = _compose_plan(text)
    except _NestingTooDeep as exc:
        line, col = exc.mark.line + 1, exc.mark.column + 1
        raise PlanError(f"nesting deeper than {MAX_DEPTH} levels", file=display, line=line, col=col) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = exc.problem or exc.context or "invalid YAML"
        raise PlanError(f"YAML syntax error: {problem}", file=display, line=line, col=col) from exc
    except yaml.YAMLError as exc:
        raise PlanError(f"YAML error: {exc}", file=display) from exc
    if node is None:
        raise PlanError("the plan is empty", file=display, line=1, col=1)
    builder = _Builder(display)
    return builder.build(node), builder.positions
