"""The drive loop: run steps, evaluate checkpoints, roll back; persist after every change.

The run document is the truth. Each action is: decide from the document,
persist the intent (``running``), act, persist the result. A process killed at
any moment therefore leaves a state file that says exactly what was completed.

There is one step loop, :meth:`Runner._run_entries`: it runs a phase's steps
forward and the rollback's entries (computed by :mod:`migration.rollback`)
backward.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from migration import attempts
from migration.checkpoints import evaluate_checkpoint
from migration.context import TemplateContext, render_with
from migration.errors import Interrupted, MigrationError, StepError
from migration.hosts import check_files, foreign_outputs, process_elsewhere, steps_to_run
from migration.interrupts import Interrupts, StepTimeout
from migration.leftovers import STEP_MARK, leftover_processes, stop_leftovers
from migration.machine import Lifecycle, phase_lifecycle, run_lifecycle, step_lifecycle
from migration.plan import templates
from migration.plan.model import Phase, Plan, StepSpec
from migration.rollback import Entry, missing_dependency, phase_entries, rollback_entries, rollback_steps
from migration.run_document import all_steps, failure_message, jsonable
from migration.secrets import Redactor
from migration.state import DONE, PhaseDoc, RunDoc, StateBackend, Status, StepDoc, host_name, now_iso
from migration.state.document import ENDED
from migration.steps.base import Step, StepContext
from migration.steps.registry import get_step_type
from migration.steps.rollback_handler import handler_step_type

log = structlog.get_logger("migration")
S = Status


class _PhaseFailed(Exception):
    def __init__(self, message: str, phase: str, step: str | None) -> None:
        super().__init__(message)
        self.phase = phase
        self.step = step


@dataclass
class RunOptions:
    workdir: Path
    assume_yes: bool = False
    interactive: bool = False
    show_progress_bars: bool = False


class Runner:
    """Drives one run of a plan to an end state, persisting after every change."""

    def __init__(
        self,
        plan: Plan,
        store: StateBackend,
        state: RunDoc,
        context: TemplateContext,
        options: RunOptions,
        redact: Redactor,
    ) -> None:
        self.plan = plan
        self.store = store
        self.state = state
        self.context = context
        self.options = options
        self.redact = redact
        self.interrupts = Interrupts()
        self.stop_flag = self.interrupts.stop_flag
        self.run = run_lifecycle(state["status"])
        # One machine checks every step's moves (built once: a run may have thousands of steps).
        self._step_machine = step_lifecycle("", S.PENDING)
        self.events = store.open_events(state["run_id"])
        self.host = host_name()
        self._foreign = foreign_outputs(state, self.host)
        self._refresh_step_context()

    # -- persistence ----------------------------------------------------------------
    def signals(self) -> contextlib.AbstractContextManager[None]:
        """SIGINT/SIGTERM stop the run at a safe point (resumable) while this is entered."""
        return self.interrupts.signals()

    def persist(self, step: StepDoc | None = None, *, durable: bool = True) -> None:
        """Make the state durable; a change confined to ``step`` may go to the journal.

        ``durable=False`` (a step's end): written at once, made durable by the next
        persist, which always precedes the next action (see ``StateStore.save_step``).
        """
        with self.interrupts.critical():
            if step is None:
                self.store.save(self.state)
            else:
                self.store.save_step(self.state, step, durable=durable)

    def event(self, name: str, **fields: Any) -> None:
        self.events.emit(name, run_id=self.state["run_id"], **fields)

    def _fire_run(self, trigger: str) -> None:
        before = self.run.fire(trigger)
        self.state["status"] = self.run.state
        if self.run.state in ENDED:
            self.state["finished_at"] = now_iso()
        elif self.run.state in (S.RUNNING, S.ROLLING_BACK):
            self.state["finished_at"] = None
        self.persist()
        self.event("run", transition=trigger, source=before, dest=self.run.state)
        log.debug("run state", source=before, dest=self.run.state)

    def _fire_phase(self, machine: Lifecycle, phase_state: PhaseDoc, trigger: str) -> None:
        before = machine.fire(trigger)
        phase_state["status"] = machine.state
        if machine.state == S.RUNNING and not phase_state.get("started_at"):
            phase_state["started_at"] = now_iso()
        if machine.state in (S.SUCCEEDED, S.FAILED, S.SKIPPED):
            phase_state["finished_at"] = now_iso()
        self.persist()
        self.event("phase", phase=phase_state["id"], transition=trigger, source=before, dest=machine.state)

    def _move_step(self, st: StepDoc, trigger: str) -> None:
        """Apply ``trigger`` to a step document (an illegal move is a StateError)."""
        st["status"] = self._step_machine.fire_from(st["status"], trigger, f"step {st['id']}")

    # -- what templates see ---------------------------------------------------------
    def _refresh_step_context(self) -> None:
        """Rebuild what templates see of finished steps (once, at start)."""
        self.context.steps = {}
        self._outputs: dict[str, dict[str, Any]] = {}
        for st in all_steps(self.state):
            self._note_step(st)

    def _note_step(self, st: StepDoc) -> None:
        """Make one finished step visible to templates: O(1), where a rebuild after
        every step made a 1,000-step run O(steps²) (35% of its time, profiled)."""
        if st.get("status") not in (S.SUCCEEDED, S.FAILED) or not st.get("attempts", 0):
            return
        outputs = st.get("outputs") or {}
        self.context.steps[st["id"]] = {"outputs": outputs, "status": st["status"]}
        if st["status"] == S.SUCCEEDED:
            self._outputs[st["id"]] = outputs
        else:
            self._outputs.pop(st["id"], None)

    def _outputs_of(self) -> dict[str, dict[str, Any]]:
        return dict(self._outputs)

    def _debug_log(self, exc: BaseException) -> str:
        path = self.store.debug_log_path()
        text = "".join(traceback.format_exception(exc))
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(f"--- {now_iso()} run {self.state['run_id']}\n{self.redact.text(text)}\n")
        return str(path)

    def check_other_hosts(self, *, rollback: bool = False) -> None:
        """Before anything runs: stop if a step still to run needs a file another host left
        (see :mod:`migration.hosts`). A resumed run checks its rollback's steps too."""
        if self._foreign:
            to_run = steps_to_run(self.plan, self.state, rollback=rollback)
            check_files(self._foreign, to_run, self.host, self.options.workdir)

    # -- the run ------------------------------------------------------------------------
    def execute(self) -> RunDoc:
        """Run (or resume) to an end state and return the state."""
        status = self.run.state
        try:
            if status == S.PENDING:
                self._fire_run("start")
            elif (
                status in (S.RUNNING, S.INTERRUPTED, S.FAILED)
                and self.state.get("interrupted_from") != S.ROLLING_BACK
            ):
                if status == S.RUNNING:
                    self._fire_run("interrupt")  # found half-done: the process died
                self.state["interrupted_from"] = None
                self._fire_run("resume")
            if self.run.state in (S.ROLLING_BACK, S.INTERRUPTED, S.ROLLBACK_FAILED):
                self.state["interrupted_from"] = None
                self._rollback(self.state["rollback"].get("reason") or "resumed rollback")
                return self.state
            try:
                self._run_phases()
            except _PhaseFailed as failure:
                self.state["error"] = {"message": str(failure), "phase": failure.phase, "step": failure.step}
                self._fire_run("fail")
                self.event("failure", message=str(failure), phase=failure.phase, step=failure.step)
                if self.plan.on_failure == "rollback":
                    if rollback_steps(self.plan, self.state):
                        self._rollback(str(failure))
                    else:
                        # Nothing to undo with: stop as with on_failure: stop, resumable.
                        log.error("no rollback for the phases that ran; nothing was undone")
                return self.state
            self._fire_run("succeed")
        except Interrupted as exc:
            self._interrupt(str(exc))
        return self.state

    def rollback(self, reason: str) -> RunDoc:
        """``migration rollback PLAN``: run (or finish) the rollback on demand."""
        try:
            self._rollback(reason)
        except Interrupted as exc:
            self._interrupt(str(exc))
        return self.state

    def _interrupt(self, reason: str) -> None:
        self.interrupts.disarm()
        self.state["interrupted_from"] = (
            self.run.state if self.run.state in (S.RUNNING, S.ROLLING_BACK) else None
        )
        if self.run.state in (S.RUNNING, S.ROLLING_BACK, S.PENDING):
            for st in all_steps(self.state):
                if st["status"] == S.RUNNING:
                    self._move_step(st, "interrupt")
                    st["error"] = reason
                    attempts.end(st, S.INTERRUPTED, reason, now_iso())
            self.run.fire("interrupt")
            self.state["status"] = S.INTERRUPTED
            self.store.save(self.state)
            self.event("run", transition="interrupt", dest=S.INTERRUPTED, reason=reason)

    def _run_phases(self) -> None:
        for phase, phase_state in zip(self.plan.phases, self.state["phases"], strict=True):
            if phase_state["status"] in (S.SUCCEEDED, S.SKIPPED):
                continue
            machine = phase_lifecycle(phase.id, phase_state["status"])
            self._fire_phase(machine, phase_state, "start")
            log.info("phase", phase=phase.id, status=S.RUNNING)
            failure: _PhaseFailed | None = None
            failed = self._run_entries(phase_entries(phase, phase_state))
            if failed is not None:
                why = f"step {failed.doc['id']} failed: {failed.doc.get('error')}"
                failure = _PhaseFailed(why, phase.id, failed.doc["id"])
            else:
                failure = self._checkpoint(phase, phase_state)
            if failure is not None:
                self._fire_phase(machine, phase_state, "fail")
                log.error("phase failed", phase=phase.id, reason=str(failure))
                raise failure
            self._fire_phase(machine, phase_state, "succeed")
            log.info("phase", phase=phase.id, status=S.SUCCEEDED)

    def _rollback(self, reason: str) -> None:
        """Phase rollbacks of started phases newest first, then the plan's; persisted
        after every change like the rest."""
        rb = self.state["rollback"]
        if self.run.state != S.ROLLING_BACK:
            self._fire_run("roll_back")
        if not rb["steps"] or rb["status"] in (None, S.SUCCEEDED):
            rb["steps"] = rollback_steps(self.plan, self.state)
        if not rb.get("reason"):
            rb["reason"] = reason
        rb["status"] = S.RUNNING
        rb["started_at"] = rb.get("started_at") or now_iso()
        rb["error"] = None
        self.persist()
        log.warning("rolling back", reason=rb["reason"], steps=[e["id"] for e in rb["steps"]])
        failed = self._run_entries(rollback_entries(self.plan, rb["steps"]))
        rb["finished_at"] = now_iso()
        if failed is not None:
            rb["status"] = S.FAILED
            rb["error"] = f"rollback step {failed.doc['id']} failed: {failed.doc.get('error')}"
            rb["done"] = [e["id"] for e in rb["steps"] if e["status"] in DONE]
            rb["remaining"] = [e["id"] for e in rb["steps"] if e["status"] not in DONE]
            self.state["needs_operator"] = True
            self._fire_run("rollback_error")
            return
        rb["status"] = S.SUCCEEDED
        self.state["needs_operator"] = False
        self._fire_run("rollback_done")

    def _checkpoint(self, phase: Phase, phase_state: PhaseDoc) -> _PhaseFailed | None:
        checkpoint, failed = evaluate_checkpoint(phase, self.context.as_dict(), self.redact)
        phase_state["checkpoint"] = checkpoint
        if not phase.checkpoint:
            return None
        self.persist()
        self.event("checkpoint", phase=phase.id, status=checkpoint["status"], failed=failed)
        if failed:
            return _PhaseFailed(f"checkpoint of phase {phase.id} failed: {'; '.join(failed)}", phase.id, None)
        log.info("checkpoint passed", phase=phase.id, conditions=len(checkpoint["results"]))
        return None

    # -- the one step loop -------------------------------------------------------------
    def _run_entries(self, entries: list[Entry]) -> Entry | None:
        """Run each entry not yet done, in order; return the first that failed and may
        not be passed over (``continue_on_error``), or None."""
        for entry in entries:
            if entry.doc["status"] in DONE:
                continue
            if not self._run_entry(entry) and not entry.may_fail:
                return entry
        return None

    def _run_entry(self, entry: Entry) -> bool:
        """Run one entry; True when it succeeded or was skipped."""
        st, spec = entry.doc, entry.spec
        if spec is None:  # the plan changed (--allow-plan-change) while rolling back
            self._move_step(st, "skip")
            st["reason"] = "no longer in the plan"
            self.persist()
            log.warning("rollback step skipped", step=st["id"], reason=st["reason"])
            return True
        elsewhere = process_elsewhere(self._foreign, spec, self.host) if self._foreign else None
        if elsewhere is not None:
            self._move_step(st, "skip")
            st["reason"] = elsewhere
            record: Any = self.state
            record.setdefault("host_notes", []).append(
                {"step": spec.id, "host": self.host, "note": elsewhere}
            )
            self.persist()
            self.event("step", step=spec.id, dest=S.SKIPPED, reason=elsewhere)
            log.warning("step skipped", step=spec.id, reason=elsewhere)
            return True
        if entry.undo and entry.handler is None:
            missing = missing_dependency(spec, self.context.steps)
            if missing is not None:
                step_type = get_step_type(spec.uses)
                verb = step_type.undo_verb if step_type is not None else Step.undo_verb
                self._move_step(st, "skip")
                st["reason"] = f"nothing to {verb}: step {missing} did not complete"
                self.persist()
                self.event("step", step=spec.id, dest=S.SKIPPED, reason=st["reason"])
                log.warning("rollback step skipped", step=spec.id, reason=st["reason"])
                return True
        return self._run_step(entry)

    # -- one step --------------------------------------------------------------------------
    def _run_step(self, entry: Entry) -> bool:
        """Run one step (with retries). True when it succeeded or was skipped."""
        st, phase_id = entry.doc, entry.phase
        spec = entry.spec
        assert spec is not None
        attempts.close_dead(st)  # an attempt a killed process left open
        ctx_dict = self.context.as_dict()
        if spec.when is not None:
            try:
                go = templates.truthy(templates.evaluate(spec.when, ctx_dict))
            except templates.TemplateError as exc:
                return self._step_failed(spec, st, f"when: {exc}")
            if not go:
                self._move_step(st, "skip")
                st["reason"] = f"when: {spec.when} is false"
                self.persist(st, durable=False)
                self.event("step", step=spec.id, dest=S.SKIPPED, reason=st["reason"])
                log.info("step skipped", step=spec.id, reason=st["reason"])
                return True
        step_type = handler_step_type(entry.handler) if entry.handler else get_step_type(spec.uses)
        if step_type is None:  # checked at load; a handler's plugin may be gone since
            return self._step_failed(spec, st, f"rollback handler {entry.handler!r} is not registered")
        try:
            rendered = render_with(step_type, spec.with_, ctx_dict)
        except templates.TemplateError as exc:
            return self._step_failed(spec, st, str(exc))
        self.redact.learn(rendered)
        try:
            params = step_type.Params.model_validate(rendered)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return self._step_failed(spec, st, f"with.{where}: {first['msg']} (after rendering)")

        mark = f"{self.state['run_id']}/{spec.id}"
        if st["status"] in (S.RUNNING, S.INTERRUPTED):
            # Re-run from the start, but never next to what the dead attempt still runs
            # (for process.start: a service it started but never recorded as its output).
            leftovers = leftover_processes(mark)
            if leftovers:
                log.warning("stopping leftovers of the interrupted attempt", step=spec.id, pids=leftovers)
                survivors = stop_leftovers(mark)
                if survivors:
                    why = f"processes {survivors} of the interrupted attempt do not stop; stop them first"
                    return self._step_failed(spec, st, why)
        # Each process gets the whole retry policy; attempts counts all of them.
        tries_left = spec.retries
        delay = spec.retry_delay
        while True:
            self._move_step(st, "start")
            st["attempts"] = st.get("attempts", 0) + 1
            st["started_at"] = now_iso()
            attempts.begin(st)
            st["error"] = None
            st["host"] = self.host
            self.persist(st)
            self.event("step", step=spec.id, phase=phase_id, dest=S.RUNNING, attempt=st["attempts"])
            log.info("step", step=spec.id, uses=spec.uses, status=S.RUNNING, attempt=st["attempts"])
            started = time.monotonic()
            ctx = StepContext(
                step_id=spec.id,
                params=params,
                workdir=self.options.workdir,
                run_id=self.state["run_id"],
                plan_name=self.plan.name,
                state_dir=self.store.dir,
                resume=dict(st.get("progress") or {}),
                outputs_of=self._outputs_of(),
                assume_yes=self.options.assume_yes,
                interactive=self.options.interactive,
                redact=self.redact,
                stop_flag=self.stop_flag,
                on_progress=self._progress_saver(st),
                show_progress_bar=self.options.show_progress_bars,
                env={**self.context.env, STEP_MARK: mark},
                failure=failure_message(self.state) if entry.undo else None,
            )
            error: str | None = None
            outputs: dict[str, Any] = {}
            try:
                with self.interrupts.section(spec.timeout):
                    outputs = step_type().run(ctx) or {}
            except Interrupted:
                raise
            except StepError as exc:
                error, outputs = str(exc), exc.outputs
            except StepTimeout as exc:
                error = str(exc)
            except MigrationError as exc:
                error = str(exc)
            except Exception as exc:  # a bug in a step or plugin: keep the traceback
                where = self._debug_log(exc)
                error = f"{type(exc).__name__}: {exc} (traceback in {where})"
            elapsed = time.monotonic() - started
            if outputs is not None and not isinstance(outputs, dict):
                outputs = {"result": outputs}  # a plugin's list or string: the state keeps objects
            st["outputs"] = self.redact(jsonable(outputs))
            st["duration_s"] = round(elapsed, 3)
            st["finished_at"] = now_iso()
            if error is None:
                self._move_step(st, "succeed")
                attempts.end(st, S.SUCCEEDED)
                st.pop("progress", None)
                self.persist(st, durable=False)
                self.event(
                    "step", step=spec.id, phase=phase_id, dest=S.SUCCEEDED, duration_s=st["duration_s"]
                )
                log.info("step", step=spec.id, status=S.SUCCEEDED, duration_s=st["duration_s"])
                self._note_step(st)
                return True
            error = self.redact.text(error)
            if tries_left > 0:
                tries_left -= 1
                self._move_step(st, "retry")
                st["error"] = error
                attempts.end(st, S.FAILED, error)
                self.persist(st)
                self.event("step", step=spec.id, dest="retry", error=error, attempt=st["attempts"])
                log.warning("step failed; retrying", step=spec.id, error=error, in_s=delay)
                with self.interrupts.section(None):
                    self.stop_flag.wait(delay)
                delay = min(delay * 2, 60)
                continue
            return self._step_failed(spec, st, error)

    def _step_failed(self, spec: StepSpec, st: StepDoc, error: str) -> bool:
        self._move_step(st, "fail")
        st["error"] = self.redact.text(error)
        st["finished_at"] = now_iso()
        attempts.end(st, S.FAILED, st["error"])
        self.persist()
        self.event("step", step=spec.id, dest=S.FAILED, error=st["error"])
        log.error("step failed", step=spec.id, error=st["error"])
        self._note_step(st)
        return False

    def _progress_saver(self, st: StepDoc) -> Callable[[dict[str, Any]], None]:
        def save(fields: dict[str, Any]) -> None:
            st["progress"] = self.redact(jsonable(fields))
            self.persist(st)

        return save


def interactive_stdin() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False
