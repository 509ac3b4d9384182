"""One function per CLI command. No click here: the CLI parses, these do the work.

Outcomes other than success are raised as MigrationError subclasses carrying the
exit code (RolledBack 3, RollbackFailed 4, StepFailed 1, Interrupted 130, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from migration import report
from migration.context import PLACEHOLDER_RUN_ID, RunInputs, check_vars, prepare, run_context
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
from migration.plan.model import Plan
from migration.preview import Previewer
from migration.run_document import failure_message, new_state, reconcile
from migration.runner import Runner, RunOptions, interactive_stdin
from migration.state import FINISHED, RunDoc, StateStore, Status, new_run_id, now_iso
from migration.steps.registry import step_types
from migration.summary import format_status, summarize

log = structlog.get_logger("migration")


def default_state_dir() -> Path:
    return Path(os.environ.get("MIGRATION_STATE_DIR") or "state")


@dataclass
class RunRequest:
    plan_path: str
    state_dir: Path = field(default_factory=default_state_dir)
    var_pairs: tuple[str, ...] = ()
    env_file: str | None = None
    dry_run: bool = False
    assume_yes: bool = False
    fresh: bool = False
    allow_plan_change: bool = False
    resume_only: bool = False
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
    return text, 1 if previewer.problems else 0


def run(request: RunRequest) -> RunDoc:
    """Run a plan, or resume its unfinished run. Returns the final state (succeeded);
    raises the outcome's MigrationError otherwise."""
    inputs = _prepare(request, strict_env=True)
    check_vars(inputs)
    loaded = inputs.loaded
    store = _acquire(request.state_dir, loaded.plan.name)
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
            state = current
            # vars are rendered again on resume: they are not stored (they may hold env values)
            context = run_context(inputs, state["run_id"], state["started_at"], redactor())
            log.info("resuming", run_id=state["run_id"], status=state["status"])
        else:
            if request.resume_only:
                raise UsageError(f"no unfinished run of plan {loaded.plan.name} to resume")
            run_id, started_at = new_run_id(), now_iso()
            context = run_context(inputs, run_id, started_at, redactor())  # before the run exists
            state = new_state(loaded, run_id, started_at, request.workdir, list(inputs.overrides))
            store.save(state)
            store.set_current(state["run_id"])
            log.info("new run", run_id=state["run_id"], plan=loaded.plan.name)
        runner = Runner(loaded.plan, store, state, context, _options(request), redactor())
        with runner.signals():
            runner.execute()
        return outcome(runner.state, request.plan_path, loaded.plan.on_failure)
    finally:
        store.release()


def _acquire(state_dir: Path, plan_name: str) -> StateStore:
    """Lock the plan; a lock left by a dead process is taken over, and we say so."""
    store = StateStore(state_dir, plan_name, redactor())
    store.acquire()
    previous = store.lock.previous_owner
    if previous:
        log.warning(
            f"previous run, pid {previous.get('pid')} on host {previous.get('host')}, died; resuming",
            lock=str(store.lock.path),
        )
    return store


def _options(request: RunRequest) -> RunOptions:
    return RunOptions(
        workdir=request.workdir,
        assume_yes=request.assume_yes,
        interactive=interactive_stdin(),
        show_progress_bars=request.show_progress_bars,
    )


def rollback(request: RunRequest) -> RunDoc:
    """Run (or finish) the rollback of the plan's latest run."""
    inputs = prepare(
        request.plan_path, request.var_pairs, request.env_file, request.workdir, redactor(), strict_env=True
    )
    check_vars(inputs)
    loaded = inputs.loaded
    store = _acquire(request.state_dir, loaded.plan.name)
    try:
        state = store.load_current()
        if state is None:
            raise UsageError(
                f"plan {loaded.plan.name} has no run to roll back (state dir {request.state_dir})"
            )
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
        context = run_context(inputs, state["run_id"], state["started_at"], redactor())
        runner = Runner(loaded.plan, store, state, context, _options(request), redactor())
        reason = failure_message(state) or "rollback requested by operator"
        with runner.signals():
            runner.rollback(reason)
        final = runner.state
        if final["status"] == Status.ROLLED_BACK:
            return final
        return outcome(final, request.plan_path)
    finally:
        store.release()


def abandon(plan_path: str, state_dir: Path) -> dict[str, Any]:
    """Mark the unfinished latest run abandoned so a new run can start (nothing is undone)."""
    name = plan_name_of(plan_path)
    store = _acquire(state_dir, name)
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
        store.release()


def plan_name_of(plan: str) -> str:
    """The plan's name from its file (leniently: status must work on a broken plan), or ``plan`` itself."""
    path = Path(plan)
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise PlanError(f"cannot read plan name: {exc}", file=plan) from exc
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            return data["name"]
        raise PlanError("plan has no name", file=plan)
    if "/" in plan or plan.endswith((".yaml", ".yml")):
        raise PlanError("plan file not found", file=plan)
    return plan


def status(plan: str | None, state_dir: Path) -> list[dict[str, Any]]:
    """Summaries of the latest run of one plan, or of every plan in the state directory."""
    names = (
        [plan_name_of(plan)]
        if plan
        else sorted(p.name for p in state_dir.glob("*") if p.is_dir() and (p / "current").exists())
        if state_dir.exists()
        else []
    )
    out = []
    for name in names:
        store = StateStore(state_dir, name)
        state = store.load_current()
        if state is None:
            if plan:
                raise UsageError(f"plan {name} has no runs in {state_dir}")
            continue
        out.append(summarize(state, store))
    return out


def make_report(plan: str, fmt: str, run_id: str | None, state_dir: Path) -> str:
    name = plan_name_of(plan)
    store = StateStore(state_dir, name)
    runs = store.list_runs()
    if run_id and run_id not in runs:
        known = ", ".join(runs) or "none"
        raise UsageError(f"plan {name} has no run {run_id} in {state_dir} (runs: {known})")
    state = store.load(run_id) if run_id else store.load_current()
    if state is None:
        raise UsageError(f"plan {name} has no runs in {state_dir}")
    return report.html_report(state) if fmt == "html" else report.markdown(state)


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
    "RunRequest",
    "abandon",
    "dry_run",
    "format_status",
    "list_steps",
    "make_report",
    "rollback",
    "run",
    "schema",
    "status",
    "validate",
]
