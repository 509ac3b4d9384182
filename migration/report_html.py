"""The run report as one self-contained HTML page (``migration report --format html``).

The same content as the Markdown report (gathered by :mod:`migration.report`),
rendered as HTML: the head as a definition list, phases, steps and every attempt
as a ``<table>``, checkpoints and rollback as lists, failures highlighted by the
``fail`` class. The sections step types add (``Step.report_sections``) are
Markdown lines; :class:`_MarkdownBlocks` turns the subset they use (headings,
tables, nested lists, fenced code, code spans, bold, backslash escapes) into
HTML, so no Markdown markup reaches the page. Every value is escaped. Inline
CSS only, no scripts, and a Content-Security-Policy that forbids loading
anything: the page opens the same offline, attached to an incident ticket.
"""

from __future__ import annotations

import html
import re
from typing import Any

from migration.report import (
    FAILURES,
    Fact,
    _duration,
    _short,
    attempt_rows,
    attempt_text,
    facts,
    fmt_seconds,
    host_notes,
    shows_attempts,
    step_sections,
)
from migration.secrets import MASK
from migration.state.document import RunDoc, Status, StepDoc

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:72em;
  padding:0 1em;color:#1d232a;background:#fff}
h1{font-size:1.6em;margin-bottom:.3em}h2{margin-top:1.6em;border-bottom:1px solid #d5dae0}
table{border-collapse:collapse;margin:.6em 0;width:100%}
th,td{border:1px solid #ccd2d9;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#eef1f4}tr.phase td{background:#f6f8fa;font-weight:600}
tr.attempt td{color:#4a545e;font-size:.93em}tr.attempt td.what{padding-left:2em}
.fail,tr.fail td{background:#fde8e8;color:#8a1010}tr.fail td{font-weight:600}
li.fail{background:#fde8e8;color:#8a1010}li.pass{color:#1d5f2a}
.ok{color:#1d5f2a;font-weight:600}.badge{font-weight:700;font-family:ui-monospace,monospace}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.15em 1em}
dl.facts dt{font-weight:600}dl.facts dd{margin:0}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.92em}
code{background:#f1f3f5;padding:0 .2em;border-radius:3px}
pre{background:#f6f8fa;border:1px solid #dde2e7;padding:.6em;overflow:auto;white-space:pre-wrap}
""".strip()

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _status_cell(status: str) -> str:
    cls = "fail" if status in FAILURES else "ok" if status in (Status.SUCCEEDED, Status.PASSED) else ""
    return f"<td class='{cls}'>{_e(status)}</td>" if cls else f"<td>{_e(status)}</td>"


def _fact(fact: Fact) -> str:
    value = f"<code>{_e(fact.value)}</code>" if fact.code else _e(fact.value)
    if fact.strong:
        value = f"<strong>{value}</strong>"
    cls = " class='fail'" if fact.alarm else ""
    return f"<dt{cls}>{_e(fact.label)}</dt><dd{cls}>{value}</dd>"


def render(state: RunDoc) -> str:
    """The whole page."""
    title = f"Migration report: {state.get('plan_name')}"
    out = [
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<dl class='facts'>",
        *(_fact(f) for f in facts(state)),
        "</dl>",
        "<h2>Phases</h2>",
        *_phases_table(state),
        *_checkpoints(state),
        _MarkdownBlocks(step_sections(state)).html(),
        *_outputs(state),
        *_host_notes(state),
        *_rollback(state),
        "</body></html>",
    ]
    return "\n".join(part for part in out if part) + "\n"


def _phases_table(state: RunDoc) -> list[str]:
    rows = [
        "<table class='phases'><thead><tr><th>phase</th><th>step</th><th>type</th><th>status</th>"
        "<th>attempts</th><th>duration</th><th>time lost</th><th>note</th></tr></thead><tbody>"
    ]
    for phase in state.get("phases", []):
        cls = "phase fail" if phase["status"] in FAILURES else "phase"
        took = fmt_seconds(_duration(phase.get("started_at"), phase.get("finished_at")))
        rows.append(
            f"<tr class='{cls}'><td>{_e(phase['id'])}</td><td></td><td></td>{_status_cell(phase['status'])}"
            f"<td></td><td>{took}</td><td></td><td></td></tr>"
        )
        for st in phase.get("steps", []):
            rows.extend(_step_rows(st))
    rows.append("</tbody></table>")
    return rows


def _step_rows(st: StepDoc) -> list[str]:
    attempts = attempt_rows(st)
    lost = sum(r.lost_s or 0.0 for r in attempts)
    note = st.get("error") or st.get("reason") or ""
    cls = "step fail" if st["status"] in FAILURES else "step"
    rows = [
        f"<tr class='{cls}'><td></td><td>{_e(st['id'])}</td><td>{_e(st.get('uses', ''))}</td>"
        f"{_status_cell(st['status'])}<td>{_e(st.get('attempts', 0))}</td>"
        f"<td>{fmt_seconds(st.get('duration_s'))}</td><td>{fmt_seconds(lost) if lost else ''}</td>"
        f"<td>{_e(_short(note, 300))}</td></tr>"
    ]
    if shows_attempts(st):
        for row in attempts:
            cls = "attempt fail" if row.status in FAILURES else "attempt"
            rows.append(
                f"<tr class='{cls}'><td></td><td class='what'>attempt {row.attempt}</td>"
                f"<td>{_e(row.started_at or '-')}</td>{_status_cell(row.status)}<td></td>"
                f"<td>{fmt_seconds(row.duration_s)}</td>"
                f"<td>{fmt_seconds(row.lost_s) if row.lost_s else ''}</td>"
                f"<td>{_e(_short(row.error or '', 300))}</td></tr>"
            )
    return rows


def _checkpoints(state: RunDoc) -> list[str]:
    out = ["<h2>Checkpoints</h2>", "<ul class='checkpoints'>"]
    for phase in state.get("phases", []):
        cp = phase.get("checkpoint")
        if not cp or not cp.get("results"):
            continue
        failed = cp.get("status") == Status.FAILED
        out.append(
            f"<li{' class=fail' if failed else ''}><strong>{_e(phase['id'])}</strong>: "
            f"{_e(cp.get('status'))}<ul>"
        )
        for r in cp["results"]:
            ok = bool(r.get("passed"))
            text = f"<span class='badge'>{'pass' if ok else 'FAIL'}</span> <code>{_e(r['that'])}</code>"
            if r.get("message"):
                text += f" - {_e(r['message'])}"
            if r.get("error"):
                text += f" ({_e(r['error'])})"
            out.append(f"<li class='{'pass' if ok else 'fail'}'>{text}</li>")
        out.append("</ul></li>")
    out.append("</ul>")
    return out


def _outputs(state: RunDoc) -> list[str]:
    out = ["<h2>Outputs</h2>"]
    for phase in state.get("phases", []):
        for st in phase.get("steps", []):
            if st.get("outputs"):
                out.append(f"<h3>{_e(st['id'])}</h3><ul>")
                out.extend(
                    f"<li>{_e(k)}: <code>{_e(_short(v))}</code></li>" for k, v in st["outputs"].items()
                )
                out.append("</ul>")
            if st.get("error"):
                error = _e(_short(st["error"], 400))
                out.append(f"<p class='fail'><strong>{_e(st['id'])} error</strong>: {error}</p>")
    return out


def _host_notes(state: RunDoc) -> list[str]:
    notes = host_notes(state)
    if not notes:
        return []
    return ["<h2>Left on another host</h2>", "<ul>", *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]


def _rollback(state: RunDoc) -> list[str]:
    rb = state["rollback"]
    if not rb.get("status"):
        return []
    out = ["<h2>Rollback</h2>", "<ul class='rollback'>"]
    failed = rb["status"] == Status.FAILED
    out.append(f"<li{' class=fail' if failed else ''}>status: <strong>{_e(rb['status'])}</strong></li>")
    out.append(f"<li>reason: {_e(rb.get('reason') or '-')}</li>")
    if rb.get("error"):
        out.append(f"<li class='fail'>error: {_e(rb['error'])}</li>")
    for st in rb.get("steps", []):
        why = st.get("reason") or st.get("error") or ""
        cls = " class='fail'" if st["status"] in FAILURES else ""
        out.append(
            f"<li{cls}>{_e(st['id'])} ({_e(st.get('uses'))}): {_e(st['status'])}"
            + (f" - {_e(why)}" if why else "")
            + _attempt_list(st)
            + "</li>"
        )
    out.append("</ul>")
    return out


def _attempt_list(st: StepDoc) -> str:
    if not shows_attempts(st):
        return ""
    items = "".join(
        f"<li{' class=fail' if row.status in FAILURES else ''}>{_e(attempt_text(row))}</li>"
        for row in attempt_rows(st)
    )
    return f"<ul>{items}</ul>"


# -- the Markdown of step sections, as HTML -----------------------------------------------
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_ITEM = re.compile(r"^(\s*)[-*]\s+(.*)$")
_FENCE = re.compile(r"^\s*(`{3,})")
_MARK = re.compile(r"^\[(pass|FAIL|fail|ok|warn)\]\s*")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_STRONG = re.compile(r"\*\*(.+?)\*\*")
_ESCAPED = re.compile(r"\\([\\`*_|\[\]<>#-])")
_SEPARATOR = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


def inline(text: str) -> str:
    """Markdown inline markup (code spans, bold, backslash escapes) as escaped HTML."""
    out: list[str] = []
    pos = 0
    for match in _CODE_SPAN.finditer(text):
        start = match.start()
        if start > 0 and text[start - 1] == "\\":  # an escaped backtick opens nothing
            continue
        out.append(_emphasis(text[pos:start]))
        body = match.group(2).replace("\\|", "|")
        if body.startswith(" ") and body.endswith(" ") and body.strip():
            body = body[1:-1]
        out.append(f"<code>{_e(body)}</code>")
        pos = match.end()
    out.append(_emphasis(text[pos:]))
    return "".join(out)


def _emphasis(text: str) -> str:
    # Escapes first (as placeholders), so an escaped asterisk never pairs up into bold.
    keep: list[str] = [MASK]  # \x000\x00: the secrets mask, never taken for bold

    def hold(match: re.Match[str]) -> str:
        keep.append(match.group(1))
        return f"\x00{len(keep) - 1}\x00"

    held = _ESCAPED.sub(hold, text.replace(MASK, "\x000\x00"))
    escaped = _STRONG.sub(lambda m: f"<strong>{m.group(1)}</strong>", _e(held))
    return re.sub(r"\x00(\d+)\x00", lambda m: _e(keep[int(m.group(1))]), escaped)


def _cells(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def _plain_text(cell: str) -> str:
    return re.sub(r"[*`]", "", cell).strip()


class _MarkdownBlocks:
    """Block structure of the Markdown subset step sections use."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.out: list[str] = []
        self.list_depths: list[int] = []

    def html(self) -> str:
        i = 0
        lines = self.lines
        while i < len(lines):
            line = lines[i]
            fence = _FENCE.match(line)
            if fence:
                self._close_lists()
                body = []
                i += 1
                while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
                    body.append(lines[i])
                    i += 1
                self.out.append(f"<pre><code>{_e(chr(10).join(body))}</code></pre>")
            elif line.lstrip().startswith("|"):
                self._close_lists()
                table = []
                while i < len(lines) and lines[i].lstrip().startswith("|"):
                    table.append(lines[i])
                    i += 1
                self._table(table)
                continue
            elif (heading := _HEADING.match(line)) is not None:
                self._close_lists()
                level = min(len(heading.group(1)), 4)
                self.out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
            elif (item := _ITEM.match(line)) is not None:
                self._item(len(item.group(1).expandtabs(2)) // 2, item.group(2))
            elif not line.strip():
                self._close_lists()
            else:
                self._close_lists()
                self.out.append(f"<p>{inline(line.strip())}</p>")
            i += 1
        self._close_lists()
        return "\n".join(self.out)

    def _item(self, depth: int, text: str) -> None:
        while self.list_depths and self.list_depths[-1] > depth:
            self.out.append("</li></ul>")
            self.list_depths.pop()
        if not self.list_depths or self.list_depths[-1] < depth:
            self.out.append("<ul>")
            self.list_depths.append(depth)
        else:
            self.out.append("</li>")
        mark = _MARK.match(text)
        cls = ""
        if mark:
            word = mark.group(1)
            cls = (
                " class='fail'"
                if word.lower() == "fail"
                else " class='pass'"
                if word in ("pass", "ok")
                else ""
            )
            text = f"\x01{word}\x01" + text[mark.end() :]
        body = inline(text)
        if mark:
            body = re.sub(r"\x01(\w+)\x01", r"<span class='badge'>\1</span> ", body)
        self.out.append(f"<li{cls}>{body}")

    def _close_lists(self) -> None:
        while self.list_depths:
            self.out.append("</li></ul>")
            self.list_depths.pop()

    def _table(self, rows: list[str]) -> None:
        header: list[str] | None = None
        if len(rows) >= 2 and _SEPARATOR.match(rows[1].strip()):
            header, rows = _cells(rows[0]), rows[2:]
        self.out.append("<table>")
        if header is not None:
            self.out.append(
                "<thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in header) + "</tr></thead>"
            )
        self.out.append("<tbody>")
        for row in rows:
            cells = _cells(row)
            bad = any(_plain_text(c) in FAILURES for c in cells)
            self.out.append(
                f"<tr{' class=fail' if bad else ''}>"
                + "".join(f"<td>{inline(c)}</td>" for c in cells)
                + "</tr>"
            )
        self.out.append("</tbody></table>")
