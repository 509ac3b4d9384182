"""Static analysis of templates: what they reference, and what can never render.

The loader runs these before anything runs, so a plan that refers to a step that
does not exist, or a template the sandbox would refuse, fails at load with its line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateSyntaxError, nodes

from migration.plan.sandbox import ENV, TemplateError


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


def output_references(tree: nodes.Template) -> set[tuple[str, str]]:
    """The ``(step id, output name)`` pairs a template reads, as far as they are literal.

    ``steps.a.outputs.b``, ``steps['a'].outputs['b']`` and ``steps.a.outputs.get('b')``
    all read ``('a', 'b')``; a dict method (``steps.a.outputs.items()``) is no name, and
    a computed key (``steps.a.outputs[vars.k]``) cannot be known here.
    """
    found: set[tuple[str, str]] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, (nodes.Getattr, nodes.Getitem))
        outputs = node.node
        if not (isinstance(outputs, (nodes.Getattr, nodes.Getitem)) and _key_of(outputs) == "outputs"):
            continue
        step = outputs.node
        if not isinstance(step, (nodes.Getattr, nodes.Getitem)):
            continue
        root = step.node
        step_id = _key_of(step)
        if not (isinstance(root, nodes.Name) and root.name == "steps") or step_id is None:
            continue
        name = _key_of(node)
        if name is None:
            continue
        if isinstance(node, nodes.Getattr) and hasattr(dict, name):
            if name == "get":
                found |= {(step_id, key) for key in _get_keys(tree, node)}
            continue
        found.add((step_id, name))
    return found


def _get_keys(tree: nodes.Template, method: nodes.Getattr) -> set[str]:
    """The literal first arguments of the calls of ``method`` (``outputs.get('x')``)."""
    return {
        call.args[0].value
        for call in tree.find_all(nodes.Call)
        if call.node is method
        and call.args
        and isinstance(call.args[0], nodes.Const)
        and isinstance(call.args[0].value, str)
    }


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
