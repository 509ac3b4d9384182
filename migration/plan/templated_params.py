"""Templated ``with:`` values, checked at load as far as a template's form tells.

A template renders only at run time, but some of what it gives is known before:

- its *key* is never templated: an unknown key is an error whatever its value
  (``verfy: "{{ vars.out }}"``), with "did you mean";
- its *type* often shows in its form, whatever the values of ``vars``, ``env`` and
  step outputs turn out to be (a ``--var`` may change those, so they are never
  guessed): text around a ``{{ }}``, a quoted field, ``~`` or a ``string``/``lower``
  filter give text; ``length``/``int`` a number; a comparison true or false; a
  literal ``{{ 5 }}`` itself. Such a value is validated against the field
  with a stand-in of that type, and refused only when the field can never take
  that type (text for a list, a number for a string), not for what a particular
  value might fail (a number out of range, text that may parse as a number).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from pydantic import BaseModel, ValidationError

from migration.errors import PlanError
from migration.plan import templates
from migration.plan.quoting import Quoter
from migration.plan.render import SINGLE_EXPRESSION
from migration.plan.validation_errors import first_error, resolve_loc
from migration.plan.yaml_positions import Loc, Positions

TYPE_ERRORS = frozenset(
    {
        "string_type",
        "int_type",
        "float_type",
        "bool_type",
        "bytes_type",
        "dict_type",
        "list_type",
        "tuple_type",
        "set_type",
        "frozen_set_type",
        "model_type",
        "model_attributes_type",
        "dataclass_type",
        "is_instance_of",
        "none_required",
    }
)
"""pydantic error types that depend on the input's type only, never on its value."""

_TEXT_FILTERS = frozenset(
    {
        "string",
        "lower",
        "upper",
        "title",
        "capitalize",
        "trim",
        "striptags",
        "replace",
        "join",
        "format",
        "center",
        "indent",
        "truncate",
        "wordwrap",
        "urlencode",
        "urlize",
        "tojson",
        "filesizeformat",
        "xmlattr",
        "escape",
        "e",
        "forceescape",
    }
)
_NUMBER_FILTERS = frozenset({"int", "length", "count", "wordcount"})
_TEXT = "\x00text"  # no number, boolean, URL or date parses it; any string field takes it


@dataclass(frozen=True)
class Guess:
    """What a template is known to give: a value of its type (or itself), and how to say so."""

    value: Any
    exact: bool
    said: str


def stand_in(text: str, quoter: Quoter) -> Guess | None:
    """What the form of ``text`` tells about its rendered value, or None when nothing."""
    if quoter != Quoter.NONE:
        return Guess(_TEXT, False, "the template renders text: the field is quoted")
    match = SINGLE_EXPRESSION.match(text)
    if match is None or "{{" in match.group("expr") or "{%" in text:
        return Guess(_TEXT, False, "the template renders text: it has text around its {{ }}")
    try:
        tree = templates.parse_expression(match.group("expr"))
    except templates.TemplateError:
        return None  # reported by the template checks, with their message
    output = tree.body[0] if tree.body else None
    if not (isinstance(output, nodes.Output) and len(output.nodes) == 1):
        return None
    return _of_expression(output.nodes[0])


def _of_expression(node: nodes.Node) -> Guess | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, (str, int, float, bool)):
        return Guess(node.value, True, f"the template gives {node.value!r}")
    if isinstance(node, nodes.Concat):
        return Guess(_TEXT, False, "the template renders text: '~' joins text")
    if isinstance(node, nodes.Filter) and node.name in _TEXT_FILTERS:
        return Guess(_TEXT, False, f"the template renders text: filter '{node.name}'")
    if isinstance(node, nodes.Filter) and node.name in _NUMBER_FILTERS:
        return Guess(1, False, f"the template gives a number: filter '{node.name}'")
    if isinstance(node, (nodes.Compare, nodes.Not, nodes.Test)):
        return Guess(True, False, "the template gives true or false")
    return None


def _replaced(value: Any, path: Loc, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, Mapping):
        return {k: (_replaced(v, rest, new) if k == head else v) for k, v in value.items()}
    if isinstance(value, list):
        return [(_replaced(v, rest, new) if i == head else v) for i, v in enumerate(value)]
    return value


def _under(path: Loc, prefix: Loc) -> bool:
    return path[: len(prefix)] == prefix


def check_templated_values(
    with_raw: Mapping[str, Any],
    params_model: type[BaseModel],
    field_quoters: Mapping[str, Quoter],
    positions: Positions,
    file: str,
    prefix: Loc,
) -> None:
    """Refuse a templated value whose type, known from its form, its field never takes.

    ``with_raw`` is the step's ``with:`` as written, found in the plan at ``prefix``.
    """
    for path, text in templates.iter_strings(dict(with_raw)):
        if not templates.is_template(text):
            continue
        guess = stand_in(text, field_quoters.get(str(path[0]), Quoter.NONE))
        if guess is None:
            continue
        candidate = _replaced(copy.deepcopy(dict(with_raw)), path, guess.value)
        try:
            params_model.model_validate(candidate)
        except ValidationError as exc:
            error = _error_at(exc, candidate, params_model, positions, file, prefix, path, guess)
            if error is not None:
                raise error from None
        except Exception:  # a validator that cannot take the stand-in: the run will tell
            continue


def _error_at(
    exc: ValidationError,
    candidate: Any,
    params_model: type[BaseModel],
    positions: Positions,
    file: str,
    prefix: Loc,
    path: Loc,
    guess: Guess,
) -> PlanError | None:
    # Other templated values fail the stand-in's validation at their own paths: not ours.
    here = [e for e in exc.errors() if _under(resolve_loc(candidate, tuple(e["loc"]))[0], path)]
    if not here:
        return None
    if not guess.exact and not all(e["type"] in TYPE_ERRORS for e in here):
        return None  # a value of that type might pass: only the run can tell

    def elsewhere(found: Loc, err: Mapping[str, Any]) -> bool:
        return not _under(found, path)

    error = first_error(exc, candidate, params_model, positions, file, prefix, elsewhere)
    if error is None:
        return None
    return PlanError(
        f"{error.message} ({guess.said})", file=error.file, line=error.line, col=error.col, path=error.path
    )
