"""Run reports from a state document: what both formats show, gathered once, and the Markdown.

The gathering (:func:`facts`, :func:`attempt_rows`, :func:`step_sections`, ...) is
shared with :mod:`migration.report_html`, which renders the same content as a
self-contained HTML page. Every attempt of a step is shown (from the step's
``history``, see :mod:`migration.attempts`): a crash and the resume after it
appear as two attempts, with the time the failed one cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from migration import mdtext
from migration.errors import MigrationError
from migration.state.document import AttemptDoc, RunDoc, Status, StepDoc
from migration.steps.base import Step
from migration.steps.registry import get_step_type

# Statuses an operator must notice: highlighted in both formats.
FAILURES = frozenset(
    {Status.FAILED, Status.ROLLBACK_FAILED, Status.INTERRUPTED, Status.ABANDONED, "crashed", "FAIL"}
)


def _ts(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _duration(start: str | None, end: str | None) -> float | None:
    a, b = _ts(start), _ts(end)
    if a is None or b is None:
        return None
    return (b - a).total_seconds()


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s"


def _find_step(state: RunDoc, step_id: str) -> StepDoc | None:
    for phase in state.get("phases", []):
        for st in phase.get("steps", []):
            if st.get("id") == step_id:
                return st
    for st in state["rollback"]["steps"]:
        if st.get("id") == step_id:
            return st
    return None


def downtime(state: RunDoc) -> dict[str, Any] | None:
    """From the start of the step that stops the app to the end of the one that brings it back.

    While the app is still down (the run failed or stopped before ``end``), the
    downtime runs to the run's end (or now) and is marked ``ongoing``.
    """
    spec = state.get("downtime")
    if not spec:
        return None
    start = _find_step(state, spec["start"])
    end = _find_step(state, spec["end"])
    if not start or not start.get("started_at"):
        return {"seconds": None, "from": None, "to": None, "note": "the app was not stopped"}
    if end and end.get("status") == Status.SUCCEEDED:
        return {
            "seconds": _duration(start["started_at"], end["finished_at"]),
            "from": start["started_at"],
            "to": end["finished_at"],
            "note": f"{spec['start']} -> {spec['end']}",
        }
    finished = state.get("finished_at")
    return {
        "seconds": _duration(start["started_at"], finished) if finished else None,
        "from": start["started_at"],
        "to": finished,
        "note": f"step {spec['end']} did not complete; the app may still be down",
    }


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return mdtext.one_line(text, limit)


# -- shared gathering ---------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    """One line of the report's head: ``label: value``; ``alarm`` marks a failure."""

    label: str
    value: str
    alarm: bool = False
    strong: bool = False
    code: bool = False


@dataclass(frozen=True)
class AttemptRow:
    attempt: int
    status: str
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    # For an attempt that did not succeed: from its start to the next attempt's start
    # (the resume included), or to its own end when it was the last.
    lost_s: float | None
    error: str | None


def facts(state: RunDoc) -> list[Fact]:
    out = [
        Fact("run", str(state.get("run_id")), code=True),
        Fact("status", str(state.get("status")), alarm=state.get("status") != Status.SUCCEEDED, strong=True),
        Fact("started", str(state.get("started_at"))),
        Fact("finished", str(state.get("finished_at") or "-")),
        Fact("duration", fmt_seconds(_duration(state.get("started_at"), state.get("finished_at")))),
    ]
    dt = downtime(state)
    if dt is not None:
        out.append(Fact("downtime", f"{fmt_seconds(dt['seconds'])} ({dt['note']})", strong=True))
    lost = sum(row.lost_s or 0.0 for st in _every_step(state) for row in attempt_rows(st))
    if lost:
        out.append(Fact("time lost to failed or interrupted attempts", fmt_seconds(lost), alarm=True))
    out.append(Fact("plan", f"{state.get('plan_path')} ({state.get('plan_digest')})"))
    hosts = state.get("hosts")
    if hosts:
        out.append(Fact("hosts", " > ".join(str(h) for h in hosts)))
    given = state.get("var_values") or {}
    if given:
        shown = ", ".join(f"{k}={_short(v.get('value'), 60)}" for k, v in sorted(given.items()))
        out.append(Fact("--var", shown))
    error = state.get("error")
    if error:
        out.append(Fact("failure", str(error.get("message")), alarm=True))
    if state.get("needs_operator"):
        out.append(Fact("needs an operator", "the rollback did not complete", alarm=True, strong=True))
    return out


def host_notes(state: RunDoc) -> list[str]:
    """Steps skipped because what they reach stayed on another host (team state)."""
    notes = state.get("host_notes") or []
    notes = [n for n in notes if isinstance(n, dict)]
    return [f"{n.get('step')} (on host {n.get('host')}): {n.get('note')}" for n in notes]


def _every_step(state: RunDoc) -> list[StepDoc]:
    return [*(st for phase in state["phases"] for st in phase["steps"]), *state["rollback"]["steps"]]


def attempt_rows(step: StepDoc) -> list[AttemptRow]:
    """Every recorded attempt of a step, oldest first (none for a document without history)."""
    history: list[AttemptDoc] = [a for a in step.get("history") or [] if isinstance(a, dict)]
    rows = []
    for i, entry in enumerate(history):
        started, finished = entry.get("started_at"), entry.get("finished_at")
        status = str(entry.get("status") or "-")
        lost = None
        if status != Status.SUCCEEDED:
            following = history[i + 1].get("started_at") if i + 1 < len(history) else None
            lost = _duration(started, following) if following else _duration(started, finished)
        rows.append(
            AttemptRow(
                attempt=int(entry.get("attempt") or i + 1),
                status=status,
                started_at=started,
                finished_at=finished,
                duration_s=_duration(started, finished),
                lost_s=lost,
                error=entry.get("error"),
            )
        )
    return rows


def attempt_text(row: AttemptRow) -> str:
    """One attempt in a sentence (for lists: the rollback's steps)."""
    took = fmt_seconds(row.duration_s)
    text = f"attempt {row.attempt}: {row.status}, started {row.started_at or '-'}, took {took}"
    if row.lost_s:
        text += f", lost {fmt_seconds(row.lost_s)}"
    return text + (f" ({mdtext.one_line(row.error, 300)})" if row.error else "")


def shows_attempts(step: StepDoc) -> bool:
    """Attempts get rows of their own when there was more than one, or one that failed."""
    rows = attempt_rows(step)
    return len(rows) > 1 or any(r.status != Status.SUCCEEDED for r in rows if r.status != Status.RUNNING)


def step_sections(state: RunDoc) -> list[str]:
    """What an operator reads first (transform counters, invalid ids, validation results,
    samples, dangling references): each step type says what it adds
    (``Step.report_sections``); grouped by type, in name order. Markdown lines."""
    lines: list[str] = []
    by_type: dict[str, list[StepDoc]] = {}
    for phase in state["phases"]:
        for st in phase["steps"]:
            if st.get("outputs"):
                by_type.setdefault(st["uses"], []).append(st)
    for uses in sorted(by_type):
        step_type = _step_type(uses)
        if step_type is None:
            continue
        for st in by_type[uses]:
            try:
                lines.extend(step_type.report_sections(st["id"], st.get("outputs") or {}))
            except Exception as exc:  # a plugin's section must not cost the whole report
                lines += [f"Section of step {mdtext.plain(st['id'])} unavailable: {mdtext.plain(exc)}", ""]
    return lines


def _step_type(uses: str) -> type[Step[Any]] | None:
    """The step type a report section comes from; a report of an old run must not fail
    because a plugin is gone or broken."""
    try:
        return get_step_type(uses)
    except MigrationError:
        return None


def summary_line(state: RunDoc) -> str:
    """One line for the end of a run on a non-terminal."""
    steps = [st for phase in state["phases"] for st in phase["steps"]]
    done = sum(1 for st in steps if st["status"] == Status.SUCCEEDED)
    text = (
        f"run {state['run_id']} {state['status']} in "
        f"{fmt_seconds(_duration(state.get('started_at'), state.get('finished_at')))}: "
        f"{len(state['phases'])} phases, {done}/{len(steps)} steps succeeded"
    )
    dt = downtime(state)
    if dt is not None:
        text += f", downtime {fmt_seconds(dt['seconds'])}"
    return text


# -- Markdown ---------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return mdtext.plain(text, 120)


def _fact_md(fact: Fact) -> str:
    value = mdtext.code(fact.value) if fact.code else mdtext.plain(fact.value, 400)
    if fact.strong:
        value = f"**{value}**"
    return f"- {fact.label}: {value}"


def markdown(state: RunDoc) -> str:
    lines: list[str] = []
    add = lines.append
    add(f"# Migration report: {mdtext.plain(state.get('plan_name'))}")
    add("")
    lines.extend(_fact_md(f) for f in facts(state))
    add("")
    add("## Phases")
    add("")
    add("| phase | step | type | status | attempts | duration | time lost | note |")
    add("|---|---|---|---|---|---|---|---|")
    for phase in state.get("phases", []):
        add(
            f"| **{_cell(phase['id'])}** | | | {phase['status']} | | "
            f"{fmt_seconds(_duration(phase.get('started_at'), phase.get('finished_at')))} | | |"
        )
        for st in phase.get("steps", []):
            _step_rows_md(st, add)
    add("")
    add("## Checkpoints")
    add("")
    for phase in state.get("phases", []):
        cp = phase.get("checkpoint")
        if not cp or not cp.get("results"):
            continue
        add(f"- **{_cell(phase['id'])}**: {cp.get('status')}")
        for r in cp["results"]:
            mark = "pass" if r.get("passed") else "FAIL"
            extra = f" - {mdtext.plain(r['message'])}" if r.get("message") else ""
            err = f" ({mdtext.plain(r['error'])})" if r.get("error") else ""
            add(f"  - [{mark}] {mdtext.code(r['that'])}{extra}{err}")
    add("")
    lines.extend(step_sections(state))
    add("## Outputs")
    add("")
    for phase in state.get("phases", []):
        for st in phase.get("steps", []):
            if st.get("outputs"):
                add(f"### {mdtext.plain(st['id'])}")
                for k, v in st["outputs"].items():
                    add(f"- {mdtext.plain(k)}: {mdtext.code(_short(v))}")
                add("")
            if st.get("error"):
                add(f"- **{mdtext.plain(st['id'])} error**: {mdtext.plain(st['error'], 400)}")
                add("")
    notes = host_notes(state)
    if notes:
        add("## Left on another host")
        add("")
        lines.extend(f"- {mdtext.plain(note, 400)}" for note in notes)
        add("")
    rb = state["rollback"]
    if rb.get("status"):
        add("## Rollback")
        add("")
        add(f"- status: **{rb['status']}**")
        add(f"- reason: {mdtext.plain(rb.get('reason') or '-', 400)}")
        if rb.get("error"):
            add(f"- error: {mdtext.plain(rb['error'], 400)}")
        for st in rb.get("steps", []):
            why = st.get("reason") or st.get("error") or ""
            add(
                f"- {mdtext.plain(st['id'])} ({st.get('uses')}): {st['status']}"
                + (f" - {mdtext.plain(why, 400)}" if why else "")
            )
            if shows_attempts(st):
                lines.extend(f"  - {mdtext.plain(attempt_text(row), 400)}" for row in attempt_rows(st))
        add("")
    return "\n".join(lines) + "\n"


def _step_rows_md(st: StepDoc, add: Any) -> None:
    rows = attempt_rows(st)
    lost = sum(r.lost_s or 0.0 for r in rows)
    note = st.get("error") or st.get("reason") or ""
    add(
        f"| | {_cell(st['id'])} | {st.get('uses', '')} | {st['status']} | {st.get('attempts', 0)} | "
        f"{fmt_seconds(st.get('duration_s'))} | {fmt_seconds(lost) if lost else ''} | {_cell(note)} |"
    )
    if not shows_attempts(st):
        return
    for row in rows:
        add(
            f"| | attempt {row.attempt} | {row.started_at or '-'} | {row.status} | | "
            f"{fmt_seconds(row.duration_s)} | {fmt_seconds(row.lost_s) if row.lost_s else ''} | "
            f"{_cell(row.error or '')} |"
        )
