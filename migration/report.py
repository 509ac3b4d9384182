"""Run reports (Markdown or HTML) from a state file: timeline, durations, outputs,
checkpoints, rollback, and the measured downtime."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from migration.errors import MigrationError
from migration.state.document import RunDoc, Status, StepDoc
from migration.steps.base import Step
from migration.steps.registry import get_step_type


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
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown(state: RunDoc) -> str:
    lines: list[str] = []
    add = lines.append
    add(f"# Migration report: {state.get('plan_name')}")
    add("")
    add(f"- run: `{state.get('run_id')}`")
    add(f"- status: **{state.get('status')}**")
    add(f"- started: {state.get('started_at')}")
    add(f"- finished: {state.get('finished_at') or '-'}")
    add(f"- duration: {fmt_seconds(_duration(state.get('started_at'), state.get('finished_at')))}")
    dt = downtime(state)
    if dt is not None:
        add(f"- downtime: **{fmt_seconds(dt['seconds'])}** ({dt['note']})")
    add(f"- plan: `{state.get('plan_path')}` ({state.get('plan_digest')})")
    if state.get("hosts"):
        add(f"- hosts: {' > '.join(state.get('hosts') or [])}")
    error = state.get("error")
    if error:
        add(f"- failure: {error.get('message')}")
    if state.get("needs_operator"):
        add("- **needs an operator**: the rollback did not complete")
    add("")
    add("## Phases")
    add("")
    add("| phase | step | type | status | attempts | duration |")
    add("|---|---|---|---|---|---|")
    for phase in state.get("phases", []):
        add(
            f"| **{phase['id']}** | | | {phase['status']} | | "
            f"{fmt_seconds(_duration(phase.get('started_at'), phase.get('finished_at')))} |"
        )
        for st in phase.get("steps", []):
            add(
                f"| | {st['id']} | {st.get('uses', '')} | {st['status']} | {st.get('attempts', 0)} | "
                f"{fmt_seconds(st.get('duration_s'))} |"
            )
    add("")
    add("## Checkpoints")
    add("")
    for phase in state.get("phases", []):
        cp = phase.get("checkpoint")
        if not cp or not cp.get("results"):
            continue
        add(f"- **{phase['id']}**: {cp.get('status')}")
        for r in cp["results"]:
            mark = "pass" if r.get("passed") else "FAIL"
            extra = f" - {r['message']}" if r.get("message") else ""
            err = f" ({r['error']})" if r.get("error") else ""
            add(f"  - [{mark}] `{r['that']}`{extra}{err}")
    add("")
    _domain_sections(state, add)
    add("## Outputs")
    add("")
    for phase in state.get("phases", []):
        for st in phase.get("steps", []):
            if st.get("outputs"):
                add(f"### {st['id']}")
                for k, v in st["outputs"].items():
                    add(f"- {k}: `{_short(v)}`")
                add("")
            if st.get("error"):
                add(f"- **{st['id']} error**: {st['error']}")
                add("")
    if state.get("host_notes"):
        add("## Left on another host")
        add("")
        for note in state.get("host_notes") or []:
            add(f"- {note.get('step')} (on host {note.get('host')}): {note.get('note')}")
        add("")
    rb = state["rollback"]
    if rb.get("status"):
        add("## Rollback")
        add("")
        add(f"- status: **{rb['status']}**")
        add(f"- reason: {rb.get('reason')}")
        if rb.get("error"):
            add(f"- error: {rb['error']}")
        for st in rb.get("steps", []):
            why = st.get("reason") or st.get("error") or ""
            add(f"- {st['id']} ({st.get('uses')}): {st['status']}" + (f" - {why}" if why else ""))
        add("")
    return "\n".join(lines) + "\n"


def _domain_sections(state: RunDoc, add: Callable[[str], None]) -> None:
    """What an operator reads first (transform counters, validation results): each step
    type says what it adds (``Step.report_sections``); grouped by type, in name order."""
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
            for line in step_type.report_sections(st["id"], st.get("outputs") or {}):
                add(line)


def _step_type(uses: str) -> type[Step[Any]] | None:
    """The step type a report section comes from; a report of an old run must not fail
    because a plugin is gone or broken."""
    try:
        return get_step_type(uses)
    except MigrationError:
        return None


def html_report(state: RunDoc) -> str:
    """HTML: the Markdown report's content, escaped, in a minimal page."""
    body = []
    for line in markdown(state).splitlines():
        esc = html.escape(line)
        if line.startswith("# "):
            body.append(f"<h1>{esc[2:]}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{esc[3:]}</h2>")
        elif line.startswith("### "):
            body.append(f"<h3>{esc[4:]}</h3>")
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        elif line.strip():
            body.append(f"<p>{esc}</p>")
    out, in_table = [], False
    for part in body:
        if part.startswith("<tr>") and not in_table:
            out.append("<table border='1' cellspacing='0' cellpadding='4'>")
            in_table = True
        if not part.startswith("<tr>") and in_table:
            out.append("</table>")
            in_table = False
        out.append(part)
    if in_table:
        out.append("</table>")
    title = html.escape(f"Migration report: {state.get('plan_name')}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>\n"
        + "\n".join(out)
        + "\n</body></html>\n"
    )
