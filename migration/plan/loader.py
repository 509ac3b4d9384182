"""Load a plan file: YAML with positions, the pydantic model, then every static check.

Every problem is a :class:`PlanError` located at ``file:line:col`` with the path
inside the plan (``phases[1].steps[0].with.url``). Nothing is rendered or run here.
The pieces: :mod:`.yaml_positions` (reading), :mod:`.validation_errors` (pydantic's
errors at their line), :mod:`.checks` (ids, step parameters, references, templates).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from migration.errors import PlanError
from migration.plan.checks import check_plan, env_references
from migration.plan.loaded_plan import LoadedPlan
from migration.plan.model import Plan
from migration.plan.validation_errors import first_error
from migration.plan.yaml_positions import Loc, Positions, format_path, parse_yaml

__all__ = ["MAX_PLAN_BYTES", "LoadedPlan", "Loc", "Positions", "env_references", "format_path", "load_plan"]

MAX_PLAN_BYTES = 4 * 1024 * 1024
"""A plan file's size (a 1,000-step plan is about 55 kB)."""


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
    raw, positions = parse_yaml(text, display)

    if not isinstance(raw, dict):
        raise positions.error(display, (), "a plan is a mapping with name, phases, ...")
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        error = first_error(exc, raw, Plan, positions, display)
        raise error or PlanError(str(exc).splitlines()[0], file=display) from exc

    loaded = LoadedPlan(
        plan=plan,
        path=path.resolve(),
        display_path=display,
        digest="sha256:" + hashlib.sha256(data).hexdigest(),
        raw=raw,
        positions=positions,
    )
    check_plan(loaded, extra_vars or {})
    return loaded
