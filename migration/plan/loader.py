"""Load a plan file: YAML with positions, the pydantic model, then every static check.

Every problem is a :class:`PlanError` located at ``file:line:col`` with the path
inside the plan (``phases[1].steps[0].with.url``). Nothing is rendered or run here.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from migration.errors import PlanError
from migration.plan import templates
from migration.plan.model import Plan, StepSpec
from migration.steps.registry import get_step_type, step_types

Loc = tuple[str | int, ...]


def format_path(loc: Loc) -> str:
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


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


# Bounds on what a plan file may make the loader do.
MAX_PLAN_BYTES = 4 * 1024 * 1024
"""A plan file's size (a 1,000-step plan is about 55 kB)."""
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


@dataclass
class LoadedPlan:
    plan: Plan
    path: Path
    display_path: str
    digest: str
    raw: dict[str, Any]
    positions: Positions

    def error(self, loc: Loc, message: str, at_key: bool = False) -> PlanError:
        line, col = self.positions.of_key(loc) if at_key else self.positions.of_value(loc)
        return PlanError(message, file=self.display_path, line=line, col=col, path=format_path(loc))

    def warning(self, loc: Loc, message: str) -> str:
        return self.error(loc, message).format()


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


def _parse_yaml(text: str, display: str) -> tuple[Any, Positions]:
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


def _resolve_loc(raw: Any, loc: tuple[Any, ...]) -> tuple[Loc, bool]:
    """Map a pydantic error location onto the data, dropping union tags.

    Returns the path and whether it ended on a key that is absent (a missing field).
    """
    path: list[str | int] = []
    current = raw
    missing = False
    for index, part in enumerate(loc):
        in_mapping = isinstance(current, Mapping) and isinstance(part, str) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        last = index == len(loc) - 1
        if in_mapping or in_list:
            path.append(part)
            current = current[part]
        # A missing field ends the location; an absent key before the end is a
        # union or discriminator tag (e.g. 'count' in checks[0].count.equals).
        elif isinstance(current, Mapping) and isinstance(part, str) and last and not _is_union_tag(part):
            path.append(part)
            missing = True
            break
        # else: a union member tag like 'list[StepSpec]', skip it
    return tuple(path), missing


def _is_union_tag(part: str) -> bool:
    return "[" in part or part[:1].isupper() or part in {"str", "int", "float", "bool", "dict", "list"}


def _message(err: Mapping[str, Any], key: str | int | None, allowed: list[str]) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        known = f" (allowed: {', '.join(allowed)})" if allowed and not hint else ""
        return f"unknown key {key!r}{suggestion}{known}"
    msg = str(err.get("msg", "invalid value"))
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model owning the last element of ``loc`` (for 'allowed keys')."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or (isinstance(part, str) and _is_union_tag(part)):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        info = fields.get(part)
        if info is None:
            return None
        current = _inner_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _allowed(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _first_error(
    exc: ValidationError,
    raw: Any,
    model: type[BaseModel],
    prefix: Loc,
    loaded_error: Any,
    skip: Any = None,
) -> PlanError | None:
    best: tuple[int, PlanError] | None = None
    for err in exc.errors():
        loc = tuple(err["loc"])
        path, missing = _resolve_loc(raw, loc)
        if skip is not None and skip(path, err):
            continue
        full = (*prefix, *path)
        kind = err.get("type", "")
        key = path[-1] if path else None
        allowed = _allowed(_model_at(model, loc)) if kind == "extra_forbidden" else []
        message = _message(err, key, allowed)
        if missing:
            # At the key that introduces the mapping lacking the field (``with:``), if any.
            parent = loaded_error(full[:-1], message, at_key=True)
            error = PlanError(
                message, file=parent.file, line=parent.line, col=parent.col, path=format_path(full)
            )
        else:
            error = loaded_error(full, message, at_key=kind == "extra_forbidden")
        depth = len(path)
        if best is None or depth > best[0]:
            best = (depth, error)
    return best[1] if best else None


def load_plan(path: str | Path, extra_vars: Mapping[str, Any] | None = None) -> LoadedPlan:
    """Read, parse and statically check a plan. Raises PlanError on the first problem."""
    path = Path(path)
    display = str(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError as exc:
        raise PlanError("plan file not found", file=display) from exc
    except OSError as exc:
        raise PlanError(f"cannot read plan: {exc.strerror}", file=display) from exc
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError(f"plan file larger than {MAX_PLAN_BYTES // (1024 * 1024)} MiB", file=display)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"plan is not UTF-8 text (byte {exc.start})", file=display) from exc
    raw, positions = _parse_yaml(text, display)

    def locate(loc: Loc, message: str, at_key: bool = False) -> PlanError:
        line, col = positions.of_key(loc) if at_key else positions.of_value(loc)
        return PlanError(message, file=display, line=line, col=col, path=format_path(loc))

    if not isinstance(raw, dict):
        raise locate((), "a plan is a mapping with name, phases, ...")
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        error = _first_error(exc, raw, Plan, (), locate)
        raise error or PlanError(str(exc).splitlines()[0], file=display) from exc

    loaded = LoadedPlan(
        plan=plan,
        path=path.resolve(),
        display_path=display,
        digest="sha256:" + hashlib.sha256(data).hexdigest(),
        raw=raw,
        positions=positions,
    )
    _check(loaded, extra_vars or {})
    return loaded


def _step_locs(loaded: LoadedPlan) -> list[tuple[Loc, StepSpec, str]]:
    """Every step with its location and kind: 'main', 'phase-rollback' or 'rollback'."""
    out: list[tuple[Loc, StepSpec, str]] = []
    plan = loaded.plan
    for pi, phase in enumerate(plan.phases):
        for si, step in enumerate(phase.steps):
            out.append((("phases", pi, "steps", si), step, "main"))
    for pi, phase in enumerate(plan.phases):
        for si, step in enumerate(phase.rollback):
            out.append((("phases", pi, "rollback", si), step, "phase-rollback"))
    for si, step in enumerate(plan.rollback_steps()):
        out.append((("rollback", si), step, "rollback"))
    return out


def _check(loaded: LoadedPlan, extra_vars: Mapping[str, Any]) -> None:
    plan = loaded.plan
    seen: dict[str, Loc] = {}
    for pi, phase in enumerate(plan.phases):
        key = "phase:" + phase.id
        if key in seen:
            raise loaded.error(("phases", pi, "id"), f"duplicate phase id {phase.id!r}")
        seen[key] = ("phases", pi)
    for loc, step, _ in _step_locs(loaded):
        if step.id in seen:
            raise loaded.error(
                (*loc, "id"), f"duplicate step id {step.id!r} (first at {format_path(seen[step.id])})"
            )
        seen[step.id] = loc
    for loc, step, _ in _step_locs(loaded):
        _check_step_params(loaded, loc, step)
    if plan.downtime is not None:
        for end in ("start", "end"):
            ref = getattr(plan.downtime, end)
            if not any(s.id == ref for s in plan.all_steps()):
                raise loaded.error(("downtime", end), f"no step with id {ref!r}")
    if not isinstance(plan.rollback, list):
        from migration.steps.registry import find_handler

        if find_handler(plan.rollback.handler) is None:
            raise loaded.error(
                ("rollback", "handler"),
                f"no rollback handler {plan.rollback.handler!r} registered "
                "(entry point group migration.rollback_handlers)",
            )
    _check_templates(loaded, extra_vars)


def _check_step_params(loaded: LoadedPlan, loc: Loc, step: StepSpec) -> None:
    step_type = get_step_type(step.uses)
    if step_type is None:
        names = list(step_types())
        hint = difflib.get_close_matches(step.uses, names, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(names)})"
        raise loaded.error((*loc, "uses"), f"unknown step type {step.uses!r}{suggestion}")
    with_raw = step.with_
    for name in step_type.quoted_fields(with_raw):
        value = with_raw.get(name)
        if isinstance(value, str) and templates.is_template(value):
            try:
                templates.check_shell_template(value)
            except templates.TemplateError as exc:
                raise loaded.error((*loc, "with", name), str(exc)) from exc
    try:
        step_type.Params.model_validate(with_raw)
    except ValidationError as exc:

        def templated(path: Loc, err: Mapping[str, Any]) -> bool:
            # A templated value is checked after rendering, at run time.
            value: Any = with_raw
            for part in path:
                if templates.is_template(value):
                    return True
                try:
                    value = value[part]
                except (KeyError, IndexError, TypeError):
                    return False
            return templates.is_template(value)

        error = _first_error(exc, with_raw, step_type.Params, (*loc, "with"), loaded.error, templated)
        if error is not None:
            raise error from exc


def _check_templates(loaded: LoadedPlan, extra_vars: Mapping[str, Any]) -> None:
    plan = loaded.plan
    known_vars = set(plan.vars) | set(extra_vars)
    main_order = [s.id for s in plan.all_steps()]
    phase_rollback_ids = [s.id for p in plan.phases for s in p.rollback]

    def check(
        loc: Loc,
        source: str,
        visible: list[str],
        expression: bool = False,
        var_names: set[str] | None = None,
    ) -> None:
        try:
            tree = templates.parse_expression(source) if expression else templates.parse(source)
        except templates.TemplateError as exc:
            raise loaded.error(loc, str(exc)) from exc
        refs = templates.references(tree)
        for ref in sorted(refs.steps):
            if ref in visible:
                continue
            if (
                ref in main_order
                or ref in phase_rollback_ids
                or any(s.id == ref for s in plan.rollback_steps())
            ):
                raise loaded.error(loc, f"step {ref!r} runs later; its outputs are not available here")
            hyphenated = [s.id for s in plan.all_steps() if s.id.startswith(ref + "-")]
            close = difflib.get_close_matches(ref, visible, n=1)
            if hyphenated:
                hint = f" (a '-' is a minus in steps.{hyphenated[0]}: write steps['{hyphenated[0]}'])"
            else:
                hint = f"; did you mean {close[0]!r}?" if close else ""
            raise loaded.error(loc, f"no step with id {ref!r}{hint}")
        for name in sorted(refs.vars):
            if var_names is not None and name not in var_names and name in plan.vars:
                problem = "refers to itself" if loc[:2] == ("vars", name) else "is defined below"
                raise loaded.error(
                    loc, f"vars.{name} {problem}; a variable can use only the variables above it"
                )
            if name not in known_vars:
                raise loaded.error(
                    loc, f"undefined variable vars.{name} (define it under vars: or pass --var {name}=...)"
                )
        # Then what can never render: '_' attributes the sandbox refuses, unknown names.
        try:
            templates.check_renderable(tree)
        except templates.TemplateError as exc:
            raise loaded.error(loc, str(exc)) from exc

    # Vars render in order: each sees the ones above it (and every --var).
    above: set[str] = set(extra_vars)
    for name, value in plan.vars.items():
        for sub, text in templates.iter_strings(value, ("vars", name)):
            if templates.is_template(text):
                check(sub, text, [], var_names=above)
        above.add(name)
    # Main steps see the steps before them; checkpoints see their phase's steps too.
    index = 0
    for pi, phase in enumerate(plan.phases):
        for si, step in enumerate(phase.steps):
            visible = main_order[:index]
            loc: Loc = ("phases", pi, "steps", si)
            _check_step_templates(check, loc, step, visible)
            index += 1
        for ci, cp in enumerate(phase.checkpoint):
            check(("phases", pi, "checkpoint", ci, "that"), cp.that, main_order[:index], expression=True)
        for ri, step in enumerate(phase.rollback):
            visible = main_order[:index] + [s.id for s in phase.rollback[:ri]]
            _check_step_templates(check, ("phases", pi, "rollback", ri), step, visible)
    for ri, step in enumerate(plan.rollback_steps()):
        visible = main_order + phase_rollback_ids + [s.id for s in plan.rollback_steps()[:ri]]
        _check_step_templates(check, ("rollback", ri), step, visible)
    if not isinstance(plan.rollback, list):
        for sub, text in templates.iter_strings(plan.rollback.with_, ("rollback", "with")):
            if templates.is_template(text):
                check(sub, text, main_order + phase_rollback_ids)


def _check_step_templates(check: Any, loc: Loc, step: StepSpec, visible: list[str]) -> None:
    for sub, text in templates.iter_strings(step.with_, (*loc, "with")):
        if templates.is_template(text):
            check(sub, text, visible)
    if step.when is not None:
        check((*loc, "when"), step.when, visible, expression=True)


def env_references(loaded: LoadedPlan) -> dict[str, Loc]:
    """Environment variables the plan needs (without a ``default``), with where first used."""
    found: dict[str, Loc] = {}

    def scan(loc: Loc, source: str, expression: bool = False) -> None:
        tree = templates.parse_expression(source) if expression else templates.parse(source)
        for name in templates.references(tree).env:
            found.setdefault(name, loc)

    raw = loaded.raw
    for sub, text in templates.iter_strings(raw):
        if sub and sub[0] == "env_file":
            continue
        if not templates.is_template(text) and not (len(sub) >= 1 and sub[-1] in ("that", "when")):
            continue
        try:
            scan(sub, text, expression=bool(sub) and sub[-1] in ("that", "when"))
        except templates.TemplateError:
            continue
    return found
