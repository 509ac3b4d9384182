"""Pydantic validation errors as one PlanError at the plan's line and column.

pydantic reports locations in its model (with union tags such as ``list[StepSpec]``);
these are mapped back onto the YAML data, and of all errors the deepest one, the
most specific, is reported (``phases[1].steps[0].with.collection: field required``).
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from migration.errors import PlanError
from migration.plan.yaml_positions import Loc, Positions, format_path


def resolve_loc(raw: Any, loc: tuple[Any, ...]) -> tuple[Loc, bool]:
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
    """The pydantic model owning the last element of ``loc`` (for 'allowed keys').

    Through a union the members are followed together until a tag names one: a
    discriminator value (``checks[0].count.equals``: the check whose ``type`` is
    ``count``) or pydantic's member tag (``list[StepSpec]``).
    """
    candidates: list[type[BaseModel]] = [model]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        following = [
            inner
            for candidate in candidates
            for name, info in candidate.model_fields.items()
            if part in (name, info.alias)
            for inner in _inner_models(info.annotation)
        ]
        if following:
            candidates = following
            continue
        tagged = [c for c in candidates if _is_tag_of(c, str(part))]
        if tagged:
            candidates = tagged
        elif not (isinstance(part, str) and _is_union_tag(part)):
            return None
    return candidates[0] if candidates else None


def _inner_models(annotation: Any) -> list[type[BaseModel]]:
    """Every model an annotation may hold (``list[A | B] | None`` gives A and B)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _inner_models(arg)]


def _is_tag_of(model: type[BaseModel], tag: str) -> bool:
    if tag == model.__name__ or f"[{model.__name__}]" in tag:
        return True
    return any(
        typing.get_origin(info.annotation) is typing.Literal and tag in typing.get_args(info.annotation)
        for info in model.model_fields.values()
    )


def _allowed(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def first_error(
    exc: ValidationError,
    raw: Any,
    model: type[BaseModel],
    positions: Positions,
    file: str,
    prefix: Loc = (),
    skip: Callable[[Loc, Mapping[str, Any]], bool] | None = None,
) -> PlanError | None:
    """The most specific (deepest) error of ``exc`` at its line, or None if ``skip`` takes them all.

    ``raw`` is the data ``model`` validated, found in the plan at ``prefix``.
    """
    best: tuple[tuple[int, bool], PlanError] | None = None
    for err in exc.errors():
        loc = tuple(err["loc"])
        path, missing = resolve_loc(raw, loc)
        if skip is not None and skip(path, err):
            continue
        full = (*prefix, *path)
        kind = err.get("type", "")
        key = path[-1] if path else None
        allowed = _allowed(_model_at(model, loc)) if kind == "extra_forbidden" else []
        message = _message(err, key, allowed)
        if missing:
            # At the key that introduces the mapping lacking the field (``with:``), if any.
            line, col = positions.of_key(full[:-1])
            error = PlanError(message, file=file, line=line, col=col, path=format_path(full))
        else:
            error = positions.error(file, full, message, at_key=kind == "extra_forbidden")
        # Deepest first; at one depth an unknown key beats a missing field: 'frm' with
        # 'from' missing says "unknown key 'frm'; did you mean 'from'?", which says both.
        rank = (len(path), kind == "extra_forbidden")
        if best is None or rank > best[0]:
            best = (rank, error)
    return best[1] if best else None
