"""One function per CLI command. No click here: the CLI parses, these do the work.

Outcomes other than success are raised as MigrationError subclasses carrying the
exit code (RolledBack 3, RollbackFailed 4, StepFailed 1, Interrupted 130, ...).
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from migration import report, report_html, resume_vars, stepdocs, stores
from migration.context import PLACEHOLDER_RUN_ID, RunInputs, TemplateContext, check_vars, prepare, run_context
from migration.errors import (
    MigrationError,
    PlanError,
    RollbackFailed,
    StateError,
    UsageError,
)
from migration.log import redactor
from migration.machine import run_lifecycle
from migration.outcomes import outcome
from migration.plan import templates
from migration.plan.model import Plan
from migration.preview import Previewer
from migration.rehearse import RehearseRequest, rehearse
from migration.run_document import failure_message, new_state, reconcile
from migration.runner import Runner, RunOptions
from migration.state import (
    FINISHED,
    RunDoc,
    StateBackend,
    Status,
    host_name,
    new_run_id,
    now_iso,
    operator_name,
)
from migration.steps.base import StopFlag
from migration.steps.registry import get_step_type, step_types
from migration.stores import StoreChoice, default_state_dir
from migration.summary import format_status, summarize

log = structlog.get_logger("migration")


@dataclass
class RunRequest:
    plan_path: str
    store: StoreChoice = field(default_factory=stores.choose)
    var_pairs: tuple[str, ...] = ()
    env_file: str | None = None
    dry_run: bool = False
    assume_yes: bool = False
    fresh: bool = False
    allow_plan_change: bool = False
    resume_only: bool = False
    again: bool = False
    show_progress_bars: bool = False
    workdir: Path = field(default_factory=Path.cwd)


def _prepare(request: RunRequest, *, strict_env: bool) -> RunInputs:
    inputs = prepare(
        request.plan_path,
        request.var_pairs,
        request.env_file,
        request.workdir,
        redactor(),
        strict_env=strict_env,
    )
    for w in inputs.warnings:
        log.warning(w)
    return inputs


def validate(plan_path: str, var_pairs: tuple[str, ...] = (), env_file: str | None = None) -> list[str]:
    """Static check, no connections. Returns warnings (e.g. a missing env variable)."""
    inputs = prepare(plan_path, var_pairs, env_file, Path.cwd(), redactor(), strict_env=False)
    run_context(inputs, PLACEHOLDER_RUN_ID, now_iso(), redactor())  # vars must render
    return inputs.warnings


def dry_run(request: RunRequest) -> tuple[str, int]:
    inputs = _prepare(request, strict_env=True)
    context = run_context(inputs, PLACEHOLDER_RUN_ID, now_iso(), redactor())
    previewer = Previewer(inputs.loaded, context, request.workdir, redactor(), request.assume_yes)
    text = previewer.render()
    return text, previewer.exit_code  # 2: the plan is wrong; 1: a failure is predicted


def run(request: RunRequest) -> RunDoc:
    """Run a plan, or resume its unfinished run. Returns the final state (succeeded);
    raises the outcome's MigrationError otherwise."""
    inputs = _prepare(request, strict_env=True)
    check_vars(inputs)
    loaded = inputs.loaded
    choice = request.store.with_plan_state(loaded.plan.state, inputs.env)
    target = plan_target(inputs)
    watch = LeaseWatch()
    store = _acquire(choice, loaded.plan.name, target=target, watch=watch)
    try:
        current = store.load_current()
        state: RunDoc
        if current is not None and current["status"] not in FINISHED:
            if request.fresh:
                raise UsageError(
                    f"run {current['run_id']} is unfinished ({current['status']}); --fresh starts a new run "
                    f"only after it is abandoned: migration abandon {request.plan_path}"
                )
            if current["status"] == Status.ROLLBACK_FAILED:
                raise RollbackFailed(
                    f"run {current['run_id']}: the rollback failed and needs an operator "
                    f"({current['rollback'].get('error')}). Fix the cause, then retry the "
                    f"remaining rollback steps with: migration rollback {request.plan_path}; or, after "
                    f"repairing by hand: migration abandon {request.plan_path}"
                )
            if current.get("plan_digest") != loaded.digest:
                if not request.allow_plan_change:
                    raise UsageError(
                        f"plan file changed since run {current['run_id']} started "
                        f"({current.get('plan_digest')} -> {loaded.digest}); resume anyway with "
                        f"--allow-plan-change, or abandon it: migration abandon {request.plan_path}"
                    )
                current.setdefault("plan_changes", []).append(
                    {"at": now_iso(), "from": current.get("plan_digest"), "to": loaded.digest}
                )
                current["plan_digest"] = loaded.digest
            reconcile(current, loaded)
            note_holder(current)
            state = current
            changed = resume_vars.carry_over(state, inputs, redactor())  # the first run's --var values
            # vars are rendered again on resume: they are not stored (they may hold env values)
            context = run_context(inputs, state["run_id"], state["started_at"], redactor())
            _warn_masked(changed, loaded.plan, context)
            log.info("resuming", run_id=state["run_id"], status=state["status"])
        else:
            if request.resume_only:
                raise UsageError(f"no unfinished run of plan {loaded.plan.name} to resume")
            _check_run_once(choice, loaded.plan, target, request)
            run_id, started_at = new_run_id(), now_iso()
            context = run_context(inputs, run_id, started_at, redactor())  # before the run exists
            state = new_state(loaded, run_id, started_at, request.workdir, list(inputs.overrides))
            state["target"] = target
            state["operator"] = operator_name()
            note_holder(state)
            state["var_values"] = resume_vars.stored(inputs, context, redactor())
            store.save(state)
            store.set_current(state["run_id"])
            log.info("new run", run_id=state["run_id"], plan=loaded.plan.name)
        runner = Runner(loaded.plan, store, state, context, _options(request), redactor())
        watch.flag = runner.stop_flag
        runner.check_other_hosts()
        with runner.signals():
            runner.execute()
        return outcome(runner.state, request.plan_path, loaded.plan.on_failure)
    finally:
        store.close()


class LeaseWatch:
    """Stops the run (its stop flag) when the renewal thread finds the lease taken over;
    the run then ends at its next write with the LeaseLost message (exit 5)."""

    def __init__(self) -> None:
        self.flag: StopFlag | None = None

    def __call__(self, lost: Exception) -> None:
        if self.flag is not None:
            self.flag.set("the loss of the lease")


def _acquire(
    choice: StoreChoice, plan_name: str, *, target: str | None = None, watch: LeaseWatch | None = None
) -> StateBackend:
    """Lock the plan; a lock or lease left by a dead process is taken over, and we say so."""
    store = stores.open_store(choice, plan_name, redactor(), target=target, on_lease_lost=watch)
    try:
        store.acquire()
    except BaseException:
        store.close()
        raise
    message = store.lock.takeover_message()
    if message:
        log.warning(message, lock=str(store.lock.path))
    return store


def note_holder(state: RunDoc) -> None:
    """Record this host as the run's latest holder (``hosts``, in order, for the history)."""
    hosts = [h for h in state.get("hosts") or [] if isinstance(h, str)]
    here = host_name()
    if not hosts or hosts[-1] != here:
        hosts.append(here)
    state["hosts"] = hosts


def plan_target(inputs: RunInputs) -> str | None:
    """The database the plan migrates (no credentials): the first step ``uri`` that renders
    from ``vars`` and ``env`` alone, for the history and ``run_once``."""
    context: TemplateContext = run_context(inputs, PLACEHOLDER_RUN_ID, "", redactor())
    for spec in inputs.loaded.plan.all_steps():
        uri = spec.with_.get("uri")
        if not isinstance(uri, str):
            continue
        try:
            value = templates.render_value(uri, context.as_dict())
        except templates.TemplateError:
            continue
        if isinstance(value, str) and "://" in value:
            return stores.target_of([value])
    return None


def _check_run_once(choice: StoreChoice, plan: Plan, target: str | None, request: RunRequest) -> None:
    """Say so before a plan runs again where it already succeeded; ``run_once`` refuses."""
    done = stores.last_success(choice, plan.name, target)
    if done is None:
        return
    where = " > ".join(done.get("hosts") or []) or "an unknown host"
    what = (
        f"plan {plan.name} already succeeded against {target or 'its target'}: run {done['run_id']} "
        f"on host {where}, finished {done.get('finished_at')}"
    )
    if plan.run_once and not request.again:
        raise UsageError(f"{what}; the plan says run_once: true. Run it again only on purpose, with --again")
    log.warning(f"{what}; running it again")


def interactive_stdin() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def _options(request: RunRequest) -> RunOptions:
    return RunOptions(
        workdir=request.workdir,
        assume_yes=request.assume_yes,
        interactive=interactive_stdin(),
        show_progress_bars=request.show_progress_bars,
    )


def _warn_masked(warnings: list[str], plan: Plan, context: TemplateContext) -> None:
    """Log ``--var`` differences once the redactor knows every secret the steps show."""
    if warnings:
        resume_vars.learn_secrets_of_steps(plan, context, redactor())
    for text in warnings:
        log.warning(text)


def rollback(request: RunRequest) -> RunDoc:
    """Run (or finish) the rollback of the plan's latest run."""
    inputs = prepare(
        request.plan_path, request.var_pairs, request.env_file, request.workdir, redactor(), strict_env=True
    )
    check_vars(inputs)
    loaded = inputs.loaded
    choice = request.store.with_plan_state(loaded.plan.state, inputs.env)
    watch = LeaseWatch()
    store = _acquire(choice, loaded.plan.name, target=plan_target(inputs), watch=watch)
    try:
        state = store.load_current()
        if state is None:
            raise UsageError(f"plan {loaded.plan.name} has no run to roll back (state in {choice.where})")
        if state["status"] == Status.ROLLED_BACK:
            log.info("already rolled back", run_id=state["run_id"])
            return state
        if state["status"] == Status.ABANDONED:
            raise UsageError(f"run {state['run_id']} was abandoned; nothing to roll back")
        plan = loaded.plan
        if isinstance(plan.rollback, list) and not plan.rollback and not any(p.rollback for p in plan.phases):
            raise MigrationError(
                f"plan {plan.name} defines no rollback (no rollback: and no phase rollbacks); "
                "nothing can be undone automatically"
            )
        if state["status"] == Status.ROLLING_BACK or state.get("interrupted_from") == Status.ROLLING_BACK:
            pass
        elif state["status"] == Status.RUNNING:
            state["status"] = Status.INTERRUPTED
        reconcile(state, loaded)
        note_holder(state)
        # The rollback undoes what the run did with its own --var values (a backup
        # folder, a target database), not the plan's defaults.
        changed = resume_vars.carry_over(state, inputs, redactor(), doing="rollback")
        context = run_context(inputs, state["run_id"], state["started_at"], redactor())
        _warn_masked(changed, loaded.plan, context)
        runner = Runner(loaded.plan, store, state, context, _options(request), redactor())
        watch.flag = runner.stop_flag
        runner.check_other_hosts(rollback=True)
        reason = failure_message(state) or "rollback requested by operator"
        with runner.signals():
            runner.rollback(reason)
        final = runner.state
        if final["status"] == Status.ROLLED_BACK:
            return final
        return outcome(final, request.plan_path)
    finally:
        store.close()


def abandon(plan_path: str, choice: StoreChoice) -> dict[str, Any]:
    """Mark the unfinished latest run abandoned so a new run can start (nothing is undone)."""
    name, choice = _plan_store(plan_path, choice)
    store = _acquire(choice, name)
    try:
        run_id = store.current_run_id()
        try:
            state = store.load_current()
        except StateError:
            if run_id is None:
                raise
            # A missing or damaged state file: the operator decided to start over.
            kept = store.set_aside(run_id)
            return {
                "run_id": run_id,
                "abandoned_from": "damaged state" + (f", kept as {kept}" if kept else ", file missing"),
            }
        if state is None or state["status"] in FINISHED:
            raise UsageError(f"plan {name} has no unfinished run to abandon")
        before = state["status"]
        lifecycle = run_lifecycle(before)
        lifecycle.fire("abandon")
        state["status"] = lifecycle.state
        state["abandoned_from"] = before
        state["finished_at"] = now_iso()
        store.save(state)
        store.open_events(state["run_id"]).emit(
            "run", transition="abandon", source=before, dest=Status.ABANDONED
        )
        return dict(state)
    finally:
        store.close()


def _plan_head(plan: str) -> tuple[str, str | None]:
    """The plan's name and ``state:`` from its file (leniently: status must work on a broken
    plan), or ``plan`` itself as a name."""
    path = Path(plan)
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise PlanError(f"cannot read plan name: {exc}", file=plan) from exc
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            state = data.get("state")
            return data["name"], state if isinstance(state, str) else None
        raise PlanError("plan has no name", file=plan)
    if "/" in plan or plan.endswith((".yaml", ".yml")):
        raise PlanError("plan file not found", file=plan)
    return plan, None


def plan_name_of(plan: str) -> str:
    """The plan's name from its file, or ``plan`` itself."""
    return _plan_head(plan)[0]


def _plan_store(plan: str, choice: StoreChoice) -> tuple[str, StoreChoice]:
    name, plan_state = _plan_head(plan)
    return name, choice.with_plan_state(plan_state, os.environ)


def status(plan: str | None, choice: StoreChoice) -> list[dict[str, Any]]:
    """Summaries of the latest run of one plan, or of every plan in the store."""
    if plan:
        name, choice = _plan_store(plan, choice)
        names = [name]
    else:
        names = stores.plan_names(choice)
    out = []
    for name in names:
        store = stores.open_store(choice, name)
        try:
            state = store.load_current()
            if state is None:
                if plan:
                    raise UsageError(f"plan {name} has no runs in {choice.where}")
                continue
            out.append(summarize(state, store))
        finally:
            store.close()
    return out


def make_report(plan: str, fmt: str, run_id: str | None, choice: StoreChoice) -> str:
    name, choice = _plan_store(plan, choice)
    store = stores.open_store(choice, name)
    try:
        runs = store.list_runs()
        if run_id and run_id not in runs:
            known = ", ".join(runs) or "none"
            raise UsageError(f"plan {name} has no run {run_id} in {choice.where} (runs: {known})")
        state = store.load(run_id) if run_id else store.load_current()
    finally:
        store.close()
    if state is None:
        raise UsageError(f"plan {name} has no runs in {choice.where}")
    return report_html.render(state) if fmt == "html" else report.markdown(state)


def history(choice: StoreChoice, plan: str | None = None) -> list[dict[str, Any]]:
    """Every run of every plan in the store (or of ``plan``), oldest first."""
    name = _plan_store(plan, choice)[0] if plan else None
    if plan:
        choice = _plan_store(plan, choice)[1]
    return stores.history(choice, name)


def show_step(name: str) -> str:
    """One step type in full (``migration steps NAME``): what docs/steps.md says of it."""
    step_type = get_step_type(name)
    if step_type is None:
        names = list(step_types())
        hint = difflib.get_close_matches(name, names, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(names)})"
        raise UsageError(f"no step type {name!r}{suggestion}")
    return "\n".join(stepdocs.step_section(name, step_type)) + "\n"


def list_steps() -> str:
    lines = []
    for name, cls in step_types().items():
        lines.append(f"{name}: {cls.describe()}")
        schema = cls.Params.model_json_schema(by_alias=True)
        required = set(schema.get("required", []))
        for pname, prop in schema.get("properties", {}).items():
            mark = "*" if pname in required else " "
            kind = (
                prop.get("type")
                or "/".join(str(a.get("type", "object")) for a in prop.get("anyOf", []))
                or "any"
            )
            desc = prop.get("description", "")
            lines.append(f"  {mark} {pname} ({kind})" + (f": {desc}" if desc else ""))
        declared = cls.declared_outputs()
        lines.append("  outputs: " + ("not declared" if declared is None else ", ".join(declared) or "none"))
    lines.append("")
    lines.append("* required")
    return "\n".join(lines) + "\n"


def schema() -> str:
    """JSON Schema of plans, with each step type's ``with:`` schema under ``uses``."""
    base = Plan.model_json_schema(by_alias=True)
    variants = []
    for name, cls in step_types().items():
        params = cls.Params.model_json_schema(by_alias=True)
        variants.append(
            {
                "if": {"properties": {"uses": {"const": name}}, "required": ["uses"]},
                "then": {"properties": {"with": params}},
            }
        )
    defs = base.setdefault("$defs", {})
    if "StepSpec" in defs:
        defs["StepSpec"]["allOf"] = variants
        defs["StepSpec"]["properties"]["uses"]["enum"] = list(step_types())
    base["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    base["title"] = "migration plan"
    return json.dumps(base, indent=2) + "\n"


__all__ = [
    "MigrationError",
    "RehearseRequest",
    "RunRequest",
    "abandon",
    "default_state_dir",
    "dry_run",
    "format_status",
    "history",
    "list_steps",
    "make_report",
    "rehearse",
    "rollback",
    "run",
    "schema",
    "status",
    "validate",
]
