"""What does not move between hosts: files and processes a step left on the host that ran it.

A step type says which of its outputs stay on the host that ran it, with the
class attribute ``host_local_outputs`` (output name -> ``"file"`` or
``"process"``; e.g. ``{"path": "file"}`` for a backup folder), and which of its
parameters name another step (``step_id_params``, e.g. ``("id",)`` for the step
that stops a service another step started). The runner records the host that ran
each step (``host`` in its step document). On a run resumed or rolled back on
another host:

- a *file* another host wrote that a step still to run reads must be here too
  (shared storage), else the run stops before touching anything, naming the host
  and the path;
- a *process* another host started cannot be reached from here: the step that
  reads it is skipped with that reason, and the run records it for the report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration.errors import MigrationError
from migration.plan import templates
from migration.plan.model import Plan, StepSpec
from migration.state import DONE, RunDoc, Status
from migration.steps.registry import get_step_type

FILE = "file"
PROCESS = "process"


class LeftOnAnotherHost(MigrationError):
    """A file the run needs is on the disk of the host that wrote it, not here."""

    exit_code = 1


@dataclass(frozen=True)
class Foreign:
    """An output of a step that ran on another host and stays there."""

    step_id: str
    host: str
    kind: str
    output: str
    value: Any


def _host_local(uses: str) -> dict[str, str]:
    try:
        step_type = get_step_type(uses)
    except MigrationError:  # a plugin gone since the step ran: nothing known of its outputs
        return {}
    declared = getattr(step_type, "host_local_outputs", None) if step_type is not None else None
    return dict(declared) if isinstance(declared, dict) else {}


def foreign_outputs(state: RunDoc, here: str) -> dict[str, list[Foreign]]:
    """Host-local outputs of succeeded steps that another host ran, by step id."""
    found: dict[str, list[Foreign]] = {}
    for phase in state["phases"]:
        for st in phase["steps"]:
            host = st.get("host")
            if st["status"] != Status.SUCCEEDED or not isinstance(host, str) or host == here:
                continue
            outputs = st.get("outputs") or {}
            for name, kind in _host_local(st.get("uses", "")).items():
                if outputs.get(name) is not None:
                    found.setdefault(st["id"], []).append(Foreign(st["id"], host, kind, name, outputs[name]))
    return found


def steps_read(spec: StepSpec) -> set[str]:
    """The ids of the steps whose outputs ``spec`` reads (templates, and step-id parameters)."""
    refs = templates.References()
    for _, text in templates.iter_strings(spec.with_):
        if templates.is_template(text):
            try:
                refs.update(templates.references(templates.parse(text)))
            except templates.TemplateError:
                continue
    if spec.when:
        with contextlib.suppress(templates.TemplateError):
            refs.update(templates.references(templates.parse_expression(spec.when)))
    read = set(refs.steps)
    step_type = get_step_type(spec.uses)
    for param in getattr(step_type, "step_id_params", ()) if step_type is not None else ():
        value = spec.with_.get(param)
        if isinstance(value, str) and not templates.is_template(value):
            read.add(value)
    return read


def check_files(
    foreign: dict[str, list[Foreign]], to_run: Iterable[StepSpec], here: str, workdir: Path
) -> None:
    """Stop before anything runs when a step still to run needs a file left on another host."""
    for spec in to_run:
        for step_id in sorted(steps_read(spec)):
            for item in foreign.get(step_id, []):
                if item.kind != FILE:
                    continue
                path = Path(str(item.value))
                if not path.is_absolute():
                    path = workdir / path
                if path.exists():
                    continue  # shared storage: the step that reads it checks it (a manifest, ...)
                raise LeftOnAnotherHost(
                    f"step {spec.id} needs {path} (output {item.output} of step {step_id}), which host "
                    f"{item.host} wrote and this host ({here}) does not have; nothing was touched. "
                    f"Run this on {item.host}, or copy the folder to the same path here (or put it on "
                    "storage both hosts see) and run again"
                )


def process_elsewhere(foreign: dict[str, list[Foreign]], spec: StepSpec, here: str) -> str | None:
    """Why ``spec`` cannot run here: it reaches a process another host started (None: it can)."""
    for step_id in sorted(steps_read(spec)):
        for item in foreign.get(step_id, []):
            if item.kind == PROCESS:
                return (
                    f"the process started by step {step_id} runs on host {item.host} "
                    f"({item.output} {item.value}); it cannot be reached from host {here}: "
                    f"stop it there"
                )
    return None


def steps_to_run(plan: Plan, state: RunDoc, *, rollback: bool) -> list[StepSpec]:
    """The steps a resumed run may still run: those not done, and every rollback step
    (only these when ``rollback``)."""
    to_run: list[StepSpec] = []
    if not rollback:
        for phase, doc in zip(plan.phases, state["phases"], strict=False):
            to_run.extend(
                spec for spec, st in zip(phase.steps, doc["steps"], strict=False) if st["status"] not in DONE
            )
    for phase in plan.phases:
        to_run.extend(phase.rollback)
    to_run.extend(plan.rollback_steps())
    return to_run
