"""``--var`` values across a resume: the first run's values are kept, each difference said.

A run stores the ``--var`` values it was started with (``RunDoc.var_values``),
secrets masked: a value the redactor masks (a var named like a secret, a URL
with a password) is stored masked and cannot be reused, so resuming without it
is an error naming the var. A resume without a ``--var`` of the first run takes
the stored value (resuming without ``--var batch=100`` used to switch silently
to the plan's 500); a resume with a different value, or a new one, uses what the
operator gave and warns about each difference. ``migration rollback`` does the same:
it undoes what the run did with the run's own values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import structlog

from migration.context import RunInputs, TemplateContext, render_with
from migration.errors import MigrationError, UsageError
from migration.plan import templates
from migration.plan.model import Plan
from migration.secrets import Redactor
from migration.state.document import RunDoc, VarValue
from migration.steps.base import Step
from migration.steps.registry import get_step_type
from migration.steps.rollback_handler import handler_step_type

log = structlog.get_logger("migration")


def stored(inputs: RunInputs, context: TemplateContext, redact: Redactor) -> dict[str, VarValue]:
    """What a new run records of its ``--var`` values.

    A value may turn out to be a secret only where a step uses it (``Authorization:
    Bearer {{ vars.token }}``), long after the run started: every step's ``with:`` is
    rendered once first, outputs of steps as placeholders (as in a dry run), so the
    values the plan shows as secrets anywhere are masked before anything is stored.
    """
    # A redactor of its own: the run's masks (its output) are not changed by this probe.
    probe = learn_secrets_of_steps(inputs.loaded.plan, context, Redactor())
    out: dict[str, VarValue] = {}
    for name, value in sorted(inputs.overrides.items()):
        shown = probe(redact(value))
        out[name] = {"value": shown, "masked": shown != value}
    return out


def learn_secrets_of_steps(plan: Plan, context: TemplateContext, into: Redactor) -> Redactor:
    """Teach ``into`` the secrets the steps' parameters show (every step's ``with:``
    rendered once, outputs of steps as placeholders, as in a dry run); returns it.

    A var is a secret by where it is used (``Authorization: Bearer {{ vars.token }}``)
    as much as by its name: whatever shows the vars must know that first.
    """
    specs = [*plan.all_steps(), *(s for p in plan.phases for s in p.rollback), *plan.rollback_steps()]
    steps = {s.id: {"outputs": templates.Placeholder(f"steps.{s.id}.outputs")} for s in specs}
    values = {**context.as_dict(), "steps": steps}
    typed: list[tuple[Callable[[str], type[Step[Any]] | None], str, dict[str, Any]]] = [
        (get_step_type, spec.uses, spec.with_) for spec in specs
    ]
    if not isinstance(plan.rollback, list):  # a handler's with: is rendered like a step's
        typed.append((handler_step_type, plan.rollback.handler, plan.rollback.with_))
    for find, name, with_ in typed:
        try:
            step_type = find(name)
            if step_type is not None:
                into.learn(render_with(step_type, with_, values))
        except (templates.TemplateError, MigrationError):
            continue  # the run reports it at that step
    return into


def _gerund(doing: str) -> str:
    return {"resume": "resuming", "rollback": "rolling back"}.get(doing, doing)


def _show(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def carry_over(state: RunDoc, inputs: RunInputs, redact: Redactor, doing: str = "resume") -> list[str]:
    """Fill ``inputs.overrides`` for resuming (or rolling back) ``state``: the first run's
    values where none is given; a warning for each value that differs from the first run's.

    Returns the warnings about values that differ, to be logged once the run's
    redactor knows every secret the steps show (a changed value may be one).

    Raises:
        UsageError: the first run had a secret ``--var`` (stored masked) that is not given again.
    """
    run_id = state["run_id"]
    given = inputs.overrides
    first = state.get("var_values")
    warnings: list[str] = []
    if first is None:  # a run started before values were stored: only the names are known
        for name in sorted(set(state.get("var_overrides") or ()) - set(given)):
            warnings.append(
                f"run {run_id} was started with --var {name}; its value was not recorded: "
                f"the plan's value is used unless you give --var {name}=... again"
            )
        return warnings
    secrets_missing = sorted(n for n, v in first.items() if v.get("masked") and n not in given)
    if secrets_missing:
        flags = " ".join(f"--var {n}=..." for n in secrets_missing)
        raise UsageError(
            f"run {run_id} was started with secret --var {', '.join(secrets_missing)}; secrets are not "
            f"stored, so give the same value again to {doing}: {flags}"
        )
    for name, entry in sorted(first.items()):
        if name not in given:
            given[name] = entry.get("value")
            log.info(f"{doing} keeps --var {name}={_show(entry.get('value'))} from the start of run {run_id}")
        elif entry.get("masked"):
            # A secret given again: never compared or shown (the redactor may not know
            # it yet, when it is a secret only where a step uses it); masked from now on.
            if isinstance(given[name], str):
                redact.add(given[name])
        elif given[name] != entry.get("value"):
            warnings.append(
                f"--var {name}: run {run_id} started with {_show(entry.get('value'))}, now "
                f"{_show(given[name])}; {_gerund(doing)} with the new value"
            )
    for name in sorted(set(given) - set(first)):
        warnings.append(
            f"--var {name}: not given when run {run_id} started (the plan's value then); "
            f"{_gerund(doing)} with {_show(given[name])}"
        )
    return warnings
