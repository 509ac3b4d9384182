"""The static checks of a loaded plan: ids, step types and parameters, references, templates.

Nothing is rendered or run here; every problem is a PlanError at its line.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from migration.plan import quoting, templates
from migration.plan.loaded_plan import LoadedPlan
from migration.plan.model import StepSpec
from migration.plan.template_check import output_references
from migration.plan.templated_params import check_templated_values
from migration.plan.validation_errors import first_error
from migration.plan.yaml_positions import Loc, format_path
from migration.steps.registry import PluginError, get_step_type, step_types


def _step_locs(loaded: LoadedPlan) -> list[tuple[Loc, StepSpec]]:
    """Every step with its location: main steps, then phase rollbacks, then the plan's."""
    out: list[tuple[Loc, StepSpec]] = []
    plan = loaded.plan
    for pi, phase in enumerate(plan.phases):
        for si, step in enumerate(phase.steps):
            out.append((("phases", pi, "steps", si), step))
    for pi, phase in enumerate(plan.phases):
        for si, step in enumerate(phase.rollback):
            out.append((("phases", pi, "rollback", si), step))
    for si, step in enumerate(plan.rollback_steps()):
        out.append((("rollback", si), step))
    return out


def check_plan(loaded: LoadedPlan, extra_vars: Mapping[str, Any]) -> None:
    """Every static check, in order; raises PlanError on the first problem."""
    plan = loaded.plan
    seen: dict[str, Loc] = {}
    for pi, phase in enumerate(plan.phases):
        key = "phase:" + phase.id
        if key in seen:
            raise loaded.error(("phases", pi, "id"), f"duplicate phase id {phase.id!r}")
        seen[key] = ("phases", pi)
    for loc, step in _step_locs(loaded):
        if step.id in seen:
            raise loaded.error(
                (*loc, "id"), f"duplicate step id {step.id!r} (first at {format_path(seen[step.id])})"
            )
        seen[step.id] = loc
    for loc, step in _step_locs(loaded):
        _check_step_params(loaded, loc, step)
    if plan.downtime is not None:
        for end in ("start", "end"):
            ref = getattr(plan.downtime, end)
            if not any(s.id == ref for s in plan.all_steps()):
                raise loaded.error(("downtime", end), f"no step with id {ref!r}")
    if not isinstance(plan.rollback, list):
        from migration.steps.registry import find_handler

        try:
            found = find_handler(plan.rollback.handler)
        except PluginError as exc:  # installed, but broken
            raise loaded.error(("rollback", "handler"), str(exc)) from exc
        if found is None:
            raise loaded.error(
                ("rollback", "handler"),
                f"no rollback handler {plan.rollback.handler!r} registered "
                "(entry point group migration.rollback_handlers)",
            )
    _check_templates(loaded, extra_vars)


def _check_step_params(loaded: LoadedPlan, loc: Loc, step: StepSpec) -> None:
    try:
        step_type = get_step_type(step.uses)
    except PluginError as exc:  # installed, but broken: say where the plan uses it
        raise loaded.error((*loc, "uses"), str(exc)) from exc
    if step_type is None:
        names = list(step_types())
        hint = difflib.get_close_matches(step.uses, names, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(names)})"
        raise loaded.error((*loc, "uses"), f"unknown step type {step.uses!r}{suggestion}")
    with_raw = step.with_
    try:
        quoters = quoting.quoters(step_type.field_quoters(with_raw))
    except templates.TemplateError as exc:
        raise loaded.error((*loc, "uses"), f"step type {step.uses!r}: {exc}") from exc
    for name, quoter in quoters.items():
        value = with_raw.get(name)
        for sub, text in templates.iter_strings(value, (*loc, "with", name)):
            if templates.is_template(text):
                try:
                    templates.check_template(quoter, text)
                except templates.TemplateError as exc:
                    raise loaded.error(sub, str(exc)) from exc
    try:
        step_type.Params.model_validate(with_raw)
    except ValidationError as exc:

        def templated(path: Loc, err: Mapping[str, Any]) -> bool:
            # A templated value is checked after rendering, at run time; its key is not templated.
            if err.get("type") == "extra_forbidden":
                return False
            value: Any = with_raw
            for part in path:
                if templates.is_template(value):
                    return True
                try:
                    value = value[part]
                except (KeyError, IndexError, TypeError):
                    return False
            return templates.is_template(value)

        positions, file = loaded.positions, loaded.display_path
        error = first_error(exc, with_raw, step_type.Params, positions, file, (*loc, "with"), templated)
        if error is not None:
            raise error from exc
    check_templated_values(
        with_raw, step_type.Params, quoters, loaded.positions, loaded.display_path, (*loc, "with")
    )


def _check_templates(loaded: LoadedPlan, extra_vars: Mapping[str, Any]) -> None:
    plan = loaded.plan
    known_vars = set(plan.vars) | set(extra_vars)
    main_order = [s.id for s in plan.all_steps()]
    phase_rollback_ids = [s.id for p in plan.phases for s in p.rollback]
    uses_of = {spec.id: spec.uses for _, spec in _step_locs(loaded)}

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
        for step_id, output in sorted(output_references(tree)):
            _check_output(loaded, loc, uses_of.get(step_id), step_id, output)
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


def _check_output(loaded: LoadedPlan, loc: Loc, uses: str | None, step_id: str, output: str) -> None:
    """Refuse ``steps.<id>.outputs.<output>`` when the step's type declares no such output."""
    step_type = get_step_type(uses) if uses is not None else None
    declared = step_type.declared_outputs() if step_type is not None else None
    if declared is None or output in declared:
        return
    names = list(declared)
    close = difflib.get_close_matches(output, names, n=2)
    if close:
        hint = "; did you mean " + " or ".join(repr(name) for name in close) + "?"
    else:
        hint = f" (its outputs: {', '.join(names) or 'none'})"
    raise loaded.error(loc, f"step {step_id!r} ({uses}) has no output {output!r}{hint}")


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
