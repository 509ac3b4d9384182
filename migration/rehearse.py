"""``migration rehearse PLAN --backup PATH``: the plan, run on a throwaway copy of a backup.

What the guide asks before a production night ("test the migration on staging
first"), without a staging environment: a private local server is started
(:mod:`migration.testserver`, the one the tests use), the backup is restored into
it by the ``mongo.restore`` step's own code, and the plan runs there with a
temporary state directory. Every MongoDB connection string the plan can reach
(rendered ``with:`` values, ``vars``, the environment) is pointed at the copy,
keeping its database name, so the original database is never connected. Steps
whose type declares ``outside_effects`` (shell commands, services, web requests,
notifications, gates, plugins that do not declare otherwise) are skipped and
listed with the reason, as are steps and checkpoint conditions that read their
outputs. At the end: the duration of each phase and step, and the plan's
``downtime:`` span as measured on the copy, plus what the skipped steps in it
would add when the operator says (``--estimate STEP=SECONDS``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from migration import testserver
from migration.context import check_vars, prepare, run_context
from migration.errors import (
    Interrupted,
    MigrationError,
    RollbackFailed,
    RolledBack,
    StepError,
    StepFailed,
    UsageError,
)
from migration.log import redactor
from migration.plan import templates
from migration.plan.model import Phase, Plan, StepSpec
from migration.report import fmt_seconds
from migration.run_document import checkpoint_status, failure_message, new_state
from migration.runner import Runner, RunOptions
from migration.state import RunDoc, StateStore, Status, new_run_id, now_iso
from migration.steps.base import Step, StepContext
from migration.steps.registry import get_step_type
from migration.steps.rollback_handler import handler_step_type

log = structlog.get_logger("migration")

URI_SCHEMES = ("mongodb://", "mongodb+srv://")
RESTORE_STEP_ID = "rehearsal-restore"


def is_mongo_uri(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(URI_SCHEMES)


def uri_database(uri: str) -> str:
    """The database named in a MongoDB URI's path ('' when none)."""
    rest = uri.strip().split("://", 1)[1]
    path = rest.split("/", 1)[1] if "/" in rest else ""
    return path.split("?", 1)[0]


class Rehearsal:
    """What the runner asks while it rehearses: which steps to skip and where the rest point.

    Read by the runner through ``RunOptions.rehearsal``; all that is rehearsal-specific
    lives here, decided from what step types declare (``outside_effects``,
    ``writes_folders``), never from their names.
    """

    def __init__(self, server_url: str, scratch: Path) -> None:
        self.server_url = server_url.rstrip("/")
        self.scratch = scratch
        # step id -> why it was not run
        self.skipped: dict[str, str] = {}
        # (phase id, condition, why it was not evaluated)
        self.unchecked: list[tuple[str, str, str]] = []

    def uri(self, original: str) -> str:
        """``original`` pointed at the rehearsal server, keeping its database name.

        Credentials and options go: the copy has no users, and options such as
        ``replicaSet`` or ``tls`` belong to the original deployment.
        """
        database = uri_database(original)
        return f"{self.server_url}/{database}" if database else f"{self.server_url}/"

    def point_value(self, value: Any) -> Any:
        """``value`` with every MongoDB connection string in it pointed at the copy."""
        if is_mongo_uri(value):
            return self.uri(value)
        if isinstance(value, dict):
            return {k: self.point_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.point_value(v) for v in value]
        return value

    # -- the runner's hooks -----------------------------------------------------------
    def skip_reason(self, spec: StepSpec, handler: str | None) -> str | None:
        """Why ``spec`` is not run in the rehearsal, or None to run it."""
        step_type = handler_step_type(handler) if handler else get_step_type(spec.uses)
        reason: str | None = None
        if step_type is None or step_type.outside_effects:
            reason = f"not rehearsed: {spec.uses} has effects outside the database copy"
        else:
            read = sorted(self._steps_read(spec.with_, spec.when) & set(self.skipped))
            if read:
                reason = f"not rehearsed: reads the outputs of step {read[0]}, which was not rehearsed"
        if reason is not None:
            self.skipped[spec.id] = reason
        return reason

    def point(self, step_id: str, step_type: type[Step[Any]], rendered: dict[str, Any]) -> dict[str, Any]:
        """A step's rendered ``with:`` for the copy: URIs to the rehearsal server, and
        the folders it writes into under the scratch folder."""
        pointed: dict[str, Any] = self.point_value(rendered)
        for name in step_type.writes_folders:
            pointed[name] = str(self.scratch / step_id)
        return pointed

    def checkpoint_of(self, phase: Phase) -> Phase:
        """The phase with the checkpoint conditions that read skipped steps left out."""
        kept = []
        for condition in phase.checkpoint:
            read = sorted(self._steps_read(condition.that, None, expression=True) & set(self.skipped))
            if read:
                why = f"reads step {read[0]}, which was not rehearsed"
                self.unchecked.append((phase.id, condition.that, why))
            else:
                kept.append(condition)
        return phase if len(kept) == len(phase.checkpoint) else phase.model_copy(update={"checkpoint": kept})

    @staticmethod
    def _steps_read(value: Any, when: str | None, expression: bool = False) -> set[str]:
        refs = templates.References()
        if expression and isinstance(value, str):
            refs.update(templates.references(templates.parse_expression(value)))
        else:
            for _, text in templates.iter_strings(value):
                if templates.is_template(text):
                    refs.update(templates.references(templates.parse(text)))
        if when:
            refs.update(templates.references(templates.parse_expression(when)))
        return set(refs.steps)


@dataclass
class RehearseRequest:
    plan_path: str
    backup: str
    var_pairs: tuple[str, ...] = ()
    env_file: str | None = None
    database: str | None = None
    backend: str | None = None
    keep_server: bool = False
    estimates: tuple[str, ...] = ()
    show_progress_bars: bool = False
    workdir: Path = field(default_factory=Path.cwd)


@dataclass
class RehearsalResult:
    """What the command prints (``text``, on stdout) and the failure to raise after it."""

    text: str
    failure: MigrationError | None = None
    state: RunDoc | None = None


def parse_estimates(pairs: tuple[str, ...]) -> dict[str, float]:
    estimates: dict[str, float] = {}
    for pair in pairs:
        step, _, seconds = pair.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if not step or value < 0:
            raise UsageError(f"--estimate {pair!r}: expected STEP=SECONDS, e.g. stop-app=20")
        estimates[step.strip()] = value
    return estimates


@contextlib.contextmanager
def _environment_pointed(rehearsal: Rehearsal) -> Iterator[None]:
    """``os.environ`` with MongoDB URIs pointed at the copy: a ``python`` step's function
    that reads its connection string from the environment reaches the copy too."""
    saved = {k: v for k, v in os.environ.items() if is_mongo_uri(v)}
    os.environ.update({k: rehearsal.uri(v) for k, v in saved.items()})
    try:
        yield
    finally:
        os.environ.update(saved)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _target_database(request: RehearseRequest, plan_vars: dict[str, Any], dumped: str) -> str:
    """Where the copy goes: ``--database``, else the one database the plan's ``vars``
    name, else the database the backup was taken of."""
    if request.database:
        return request.database
    named = {uri_database(s) for s in _strings(plan_vars) if is_mongo_uri(s)} - {""}
    return named.pop() if len(named) == 1 else dumped


def _dump_database(backup: Path) -> str:
    from migration.steps.mongo.dumpfmt import DumpError, locate_dump

    if not backup.exists():
        raise UsageError(f"--backup {backup}: no such folder")
    try:
        return locate_dump(backup, "").database
    except DumpError as exc:
        raise UsageError(f"--backup {backup}: {exc}") from exc


def _restore(backup: Path, uri: str, workdir: Path, show_progress: bool) -> dict[str, Any]:
    """Restore the backup into the copy with ``mongo.restore``'s own code (checked first)."""
    from migration.steps.mongo.restore import MongoRestore

    params = MongoRestore.Params.model_validate(
        {"uri": uri, "from": str(backup), "drop": True, "allow_other_database": True}
    )
    ctx: StepContext[MongoRestore.Params] = StepContext(
        step_id=RESTORE_STEP_ID,
        params=params,
        workdir=workdir,
        redact=redactor(),
        show_progress_bar=show_progress,
    )
    try:
        return MongoRestore().run(ctx)
    except StepError as exc:
        raise MigrationError(f"restoring the backup into the rehearsal server failed: {exc}") from exc


def rehearse(request: RehearseRequest) -> RehearsalResult:
    """Run the plan on a copy of ``request.backup``; never connects to the plan's database."""
    inputs = prepare(
        request.plan_path, request.var_pairs, request.env_file, request.workdir, redactor(), strict_env=True
    )
    for warning in inputs.warnings:
        log.warning(warning)
    check_vars(inputs)
    plan = inputs.loaded.plan
    estimates = parse_estimates(request.estimates)
    unknown = sorted(set(estimates) - {s.id for s in plan.all_steps()})
    if unknown:
        raise UsageError(f"--estimate names no step of the plan: {', '.join(unknown)}")
    backup = Path(request.backup).expanduser()
    backup = backup if backup.is_absolute() else request.workdir / backup
    dumped = _dump_database(backup)

    workspace = Path(tempfile.mkdtemp(prefix=f"migration-rehearse-{plan.name}-"))
    log.info("starting the rehearsal server", folder=str(workspace))
    started = time.monotonic()
    try:
        # A folder of its own, not under the workspace: PostgreSQL runs as its own user
        # when we are root, and must reach it.
        server = testserver.start(None, backend=request.backend, detach=request.keep_server)
    except BaseException:
        shutil.rmtree(workspace, ignore_errors=True)
        raise
    timings: dict[str, float] = {"server": time.monotonic() - started}
    rehearsal = Rehearsal(server.url, workspace / "files")
    try:
        inputs.env = rehearsal.point_value(inputs.env)
        run_id, started_at = new_run_id(), now_iso()
        context = run_context(inputs, run_id, started_at, redactor())
        context.vars = rehearsal.point_value(context.vars)
        database = _target_database(request, context.vars, dumped)
        started = time.monotonic()
        restored = _restore(backup, rehearsal.uri(f"mongodb://copy/{database}"), request.workdir, False)
        timings["restore"] = time.monotonic() - started
        log.info("backup restored on the copy", database=database, documents=restored.get("total"))
        store = StateStore(workspace / "state", plan.name, redactor())
        store.acquire()
        try:
            state = new_state(inputs.loaded, run_id, started_at, request.workdir, list(inputs.overrides))
            store.save(state)
            store.set_current(run_id)
            options = RunOptions(
                workdir=request.workdir,
                show_progress_bars=request.show_progress_bars,
                rehearsal=rehearsal,
            )
            runner = Runner(plan, store, state, context, options, redactor())
            started = time.monotonic()
            with _environment_pointed(rehearsal), runner.signals():
                runner.execute()
            timings["run"] = time.monotonic() - started
        finally:
            store.release()
        final = runner.state
        kept = server if request.keep_server else None
        where = Where(backup, database, restored, workspace, kept)
        text = summary(plan, final, rehearsal, estimates, timings, where)
        return RehearsalResult(text, _failure(final), final)
    finally:
        if request.keep_server:
            server.record()
        else:
            server.stop()
            shutil.rmtree(workspace, ignore_errors=True)
            shutil.rmtree(server.directory, ignore_errors=True)


def _failure(state: RunDoc) -> MigrationError | None:
    status = state["status"]
    if status == Status.SUCCEEDED:
        return None
    error = failure_message(state) or status
    rollback = state["rollback"]
    if status == Status.ROLLED_BACK:
        return RolledBack(f"rehearsal failed: {error}; the rollback, rehearsed on the copy, completed")
    if status == Status.ROLLBACK_FAILED:
        return RollbackFailed(
            f"rehearsal failed: {error}; the rollback FAILED on the copy too: {rollback.get('error')}"
        )
    if status == Status.INTERRUPTED:
        return Interrupted("rehearsal interrupted; the copy was thrown away")
    return StepFailed(f"rehearsal failed: {error}")


@dataclass
class Where:
    backup: Path
    database: str
    restored: dict[str, Any]
    workspace: Path
    kept: testserver.Server | None


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    a = datetime.fromisoformat(start.replace("Z", "+00:00"))
    b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    return (b - a).total_seconds()


def summary(
    plan: Plan,
    state: RunDoc,
    rehearsal: Rehearsal,
    estimates: dict[str, float],
    timings: dict[str, float],
    where: Where,
) -> str:
    """The rehearsal as an operator reads it: phases and steps with durations, what was
    skipped and why, and the projected downtime."""
    collections = len(where.restored.get("restored") or {})
    lines = [
        f"rehearsal of {plan.name} on a copy of {where.backup}",
        f"  copy: database {where.database}, {where.restored.get('total', 0)} documents in "
        f"{collections} collection{'' if collections == 1 else 's'}, restored in "
        f"{fmt_seconds(timings.get('restore'))} (server started in {fmt_seconds(timings.get('server'))})",
        "",
        f"{'phase / step':<34} {'status':<10} duration",
    ]
    for phase in state["phases"]:
        phase_s = _seconds(phase.get("started_at"), phase.get("finished_at"))
        checkpoint = checkpoint_status(phase)
        note = f"  checkpoint {checkpoint}" if checkpoint in (Status.PASSED, Status.FAILED) else ""
        lines.append(f"{phase['id']:<34} {phase['status']:<10} {fmt_seconds(phase_s)}{note}")
        for st in phase["steps"]:
            seconds = st.get("duration_s") if st["status"] != Status.SKIPPED else None
            lines.append(f"  {st['id']:<32} {st['status']:<10} {fmt_seconds(seconds)}")
    rollback = state["rollback"]
    if rollback.get("steps"):
        lines.append(f"{'rollback (on the copy)':<34} {rollback.get('status') or '-'}")
        for st in rollback["steps"]:
            seconds = st.get("duration_s") if st["status"] != Status.SKIPPED else None
            lines.append(f"  {st['id']:<32} {st['status']:<10} {fmt_seconds(seconds)}")
    if rehearsal.skipped:
        lines += ["", "skipped (not run on the copy):"]
        lines += [f"  {step}: {reason}" for step, reason in rehearsal.skipped.items()]
    if rehearsal.unchecked:
        lines += ["", "checkpoint conditions not evaluated:"]
        lines += [f"  {phase}: {that} ({why})" for phase, that, why in rehearsal.unchecked]
    lines += ["", _downtime(plan, state, estimates)]
    if where.kept is not None:
        lines += [
            "",
            f"kept: the copy at {where.kept.url}{where.database}",
            f"  state and files of the rehearsal: {where.workspace}",
            f"  its report: migration report {plan.name} --state-dir {where.workspace / 'state'}",
            f"  stop the server with: python scripts/testdb.py stop --dir {where.kept.directory}",
        ]
    verdict = "ok" if state["status"] == Status.SUCCEEDED else f"FAILED ({state['status']})"
    lines.append(f"rehearsal: {verdict} (the plan ran in {fmt_seconds(timings.get('run'))})")
    return "\n".join(lines) + "\n"


def _downtime(plan: Plan, state: RunDoc, estimates: dict[str, float]) -> str:
    """The plan's ``downtime: {start, end}`` span, measured on the copy, plus estimates."""
    if plan.downtime is None:
        return "downtime: the plan declares no downtime: {start, end}; nothing to project"
    order = [st for phase in state["phases"] for st in phase["steps"]]
    ids = [st["id"] for st in order]
    start, end = plan.downtime.start, plan.downtime.end
    if start not in ids or end not in ids or ids.index(start) > ids.index(end):
        return f"downtime: {start} -> {end} is not a span of phase steps; not projected"
    span = order[ids.index(start) : ids.index(end) + 1]
    measured = sum(st.get("duration_s") or 0.0 for st in span if st["status"] == Status.SUCCEEDED)
    guessed = {
        st["id"]: estimates[st["id"]]
        for st in span
        if st["status"] == Status.SKIPPED and st["id"] in estimates
    }
    unknown = [st["id"] for st in span if st["status"] == Status.SKIPPED and st["id"] not in estimates]
    not_run = [st["id"] for st in span if st["status"] not in (Status.SUCCEEDED, Status.SKIPPED)]
    total = measured + sum(guessed.values())
    text = f"projected downtime ({start} -> {end}): {fmt_seconds(total)}"
    text += f" = {fmt_seconds(measured)} measured on the copy"
    if guessed:
        text += " + " + ", ".join(f"{fmt_seconds(s)} {step} (--estimate)" for step, s in guessed.items())
    if unknown:
        text += f"; plus the unknown time of skipped {', '.join(unknown)} (give --estimate STEP=SECONDS)"
    if not_run:
        text += f"; incomplete: {', '.join(not_run)} did not succeed"
    return text
