"""Whether a loaded state document has the shape of :mod:`migration.state.document`.

A state file that is valid JSON can still have been edited into something the
runner cannot use (a list where a dict belongs, a step without an id, a status
no machine knows). ``shape_problem`` names the first such problem in one linear
pass of cheap type checks (load is on the hot path: no models built, nothing
copied), so the operator gets one clear line instead of a TypeError later.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from migration.errors import StateError
from migration.state.document import (
    PHASE_STATES,
    ROLLBACK_STATES,
    RUN_STATES,
    SCHEMA_VERSION,
    STEP_STATES,
    RunDoc,
    StepDoc,
    required_keys,
)

_RUN_KEYS = required_keys(RunDoc)
_STEP_KEYS = required_keys(StepDoc)
_MISSING = object()
_KIND_NAMES: dict[type, str] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
}


class _Shape(Exception):
    """One problem with the shape of a state document (the message says where)."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return _KIND_NAMES.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)


def show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _field(doc: dict[str, Any], key: str, kind: type, where: str, *, required: bool = False) -> Any:
    """``doc[key]`` if it is a ``kind`` (or absent or null, unless ``required``); else ``_Shape``."""
    value = doc.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise _Shape(f"{where}{key} is {'missing' if value is _MISSING else 'null'}")
        return None
    # A bool is an int to isinstance: never take one for a count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Shape(f"{where}{key} is {_kind(value)}, not {_KIND_NAMES[kind]}")
    return value


def _ident(doc: dict[str, Any], where: str) -> str:
    value: str = _field(doc, "id", str, where, required=True)
    if not value:
        raise _Shape(f"{where}id is empty")
    return value


def _status(doc: dict[str, Any], allowed: Collection[str | None], where: str) -> None:
    value = doc.get("status")
    if not (value is None or isinstance(value, str)) or value not in allowed:  # a list is unhashable
        known = ", ".join(sorted(str(s) for s in allowed if s is not None))
        known += " or null" if None in allowed else ""
        raise _Shape(f"{where}status {show(doc.get('status'))} is not one of {known}")


_STEP_TEXTS = ("error", "started_at", "finished_at", "reason", "phase")


def _step_ok(step: Any) -> bool:
    """The common case, fast (a state can hold thousands of steps): a well-formed step."""
    if type(step) is not dict:
        return False
    ident, status, attempts = step.get("id"), step.get("status"), step.get("attempts")
    if not (type(ident) is str and ident and type(step.get("uses")) is str):
        return False
    if not (type(status) is str and status in STEP_STATES and type(attempts) is int and attempts >= 0):
        return False
    for key in ("outputs", "progress"):
        value = step.get(key)
        if value is not None and type(value) is not dict:
            return False
    history = step.get("history")
    if history is not None and not (type(history) is list and all(type(a) is dict for a in history)):
        return False
    for key in _STEP_TEXTS:
        value = step.get(key)
        if value is not None and type(value) is not str:
            return False
    return True


def _check_step(step: Any, where: str) -> None:
    if _step_ok(step):
        return
    if not isinstance(step, dict):
        raise _Shape(f"{where} is {_kind(step)}, not an object")
    missing = [k for k in _STEP_KEYS if k not in step]
    if missing:
        raise _Shape(f"{where} has no {', '.join(missing)}")
    where += "."
    _ident(step, where)
    _field(step, "uses", str, where, required=True)
    _status(step, STEP_STATES, where)
    if _field(step, "attempts", int, where, required=True) < 0:
        raise _Shape(f"{where}attempts is negative")
    _field(step, "outputs", dict, where)
    _field(step, "progress", dict, where)
    for key in _STEP_TEXTS:
        _field(step, key, str, where)
    for j, attempt in enumerate(_field(step, "history", list, where) or ()):
        if not isinstance(attempt, dict):
            raise _Shape(f"{where}history[{j}] is {_kind(attempt)}, not an object")


def _check_steps(steps: list[Any], where: str) -> None:
    for i, step in enumerate(steps):
        _check_step(step, f"{where}[{i}]")


def _check_phase(phase: Any, where: str) -> None:
    if not isinstance(phase, dict):
        raise _Shape(f"{where} is {_kind(phase)}, not an object")
    where += "."
    _ident(phase, where)
    _status(phase, PHASE_STATES, where)
    _field(phase, "started_at", str, where)
    _field(phase, "finished_at", str, where)
    checkpoint = _field(phase, "checkpoint", dict, where)
    if checkpoint is not None:
        _field(checkpoint, "status", str, f"{where}checkpoint.")
        for j, result in enumerate(_field(checkpoint, "results", list, f"{where}checkpoint.") or ()):
            if not isinstance(result, dict):
                raise _Shape(f"{where}checkpoint.results[{j}] is {_kind(result)}, not an object")
    _check_steps(_field(phase, "steps", list, where, required=True), f"{where}steps")


def _check_state(state: Any) -> None:
    if not isinstance(state, dict):
        raise _Shape(f"it is {_kind(state)}, not an object")
    missing = [k for k in _RUN_KEYS if k not in state]
    if missing:
        raise _Shape(f"missing {', '.join(missing)}")
    if not _field(state, "run_id", str, "", required=True):
        raise _Shape("run_id is empty")
    _status(state, RUN_STATES, "")
    if state.get("interrupted_from") not in (None, *RUN_STATES):
        raise _Shape(f"interrupted_from {show(state['interrupted_from'])} is not a run status")
    for key in ("plan_digest", "plan_name", "started_at"):
        _field(state, key, str, "", required=True)
    _field(state, "finished_at", str, "")
    _field(state, "schema_version", int, "")
    _field(state, "needs_operator", bool, "")
    _field(state, "downtime", dict, "")
    _field(state, "plan_changes", list, "")
    _field(state, "var_values", dict, "")
    if (_field(state, "journal_seq", int, "") or 0) < 0:
        raise _Shape("journal_seq is negative")
    error = _field(state, "error", dict, "")
    if error is not None:
        _field(error, "message", str, "error.")
    for i, phase in enumerate(_field(state, "phases", list, "", required=True)):
        _check_phase(phase, f"phases[{i}]")
    rollback = _field(state, "rollback", dict, "", required=True)
    _status(rollback, ROLLBACK_STATES, "rollback.")
    for key in ("reason", "error", "started_at", "finished_at"):
        _field(rollback, key, str, "rollback.")
    for key in ("done", "remaining"):
        _field(rollback, key, list, "rollback.")
    _check_steps(_field(rollback, "steps", list, "rollback.", required=True), "rollback.steps")


def shape_problem(state: Any) -> str | None:
    """The first thing wrong with the shape of a state document, or None if it can be used."""
    try:
        _check_state(state)
    except _Shape as problem:
        return str(problem)
    return None


def journal_problem(entry: Any) -> str | None:
    """What is wrong with one parsed journal line, or None."""
    try:
        if not isinstance(entry, dict):
            raise _Shape(f"it is {_kind(entry)}, not an object")
        _field(entry, "seq", int, "", required=True)
        step = _field(entry, "step", dict, "", required=True)
        _check_step(step, "step")
    except _Shape as problem:
        return str(problem)
    return None


def parse_run_document(
    text: str, run_id: str, place: str, id_origin: str, repair_hint: str, abandon: str
) -> Any:
    """The run document stored at ``place`` as ``text``, checked; raises StateError saying why not.

    Shared by both stores: ``id_origin`` names where ``run_id`` came from (a file
    name, a document id), ``repair_hint`` where the events are, ``abandon`` how to
    set the run aside.
    """
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{place} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            f"it was edited or damaged. Repair it ({repair_hint}), or {abandon}"
        ) from exc
    version = state.get("schema_version") if isinstance(state, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise StateError(
            f"{place} was written by a newer migration (schema {version}); upgrade migration to resume it"
        )
    problem = shape_problem(state)
    if problem is None and state["run_id"] != run_id:
        problem = f"its run_id {show(state['run_id'])} is not its {id_origin} {show(run_id)}"
    if problem is not None:
        raise StateError(
            f"{place} is not a migration state ({problem}); it was edited or damaged. Repair it, or {abandon}"
        )
    return state
