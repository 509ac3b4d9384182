"""What a ``mongo.validate`` step adds to the run report, beyond one line per check.

The evidence behind a verdict: the ``_id`` and value of dangling references,
the ``_id`` of documents that lack (or have) a field or have a bad ``_id``, and
the documents a ``sample`` check shows. Markdown lines, values made safe with
:mod:`migration.mdtext` (the HTML report renders them too).
"""

from __future__ import annotations

import json
from typing import Any

from migration import mdtext

# A sample document longer than this is cut in the report (the JSON report keeps it whole).
SAMPLE_CHARS = 4000


def evidence_lines(check: dict[str, Any]) -> list[str]:
    """Nested list items under one check's line: examples, then how many more."""
    details = check.get("details")
    if not isinstance(details, dict):
        return []
    examples = details.get("examples") or []
    if not isinstance(examples, list) or not examples:
        return []
    kind = check.get("type")
    lines = []
    if kind == "references":
        target = mdtext.plain(details.get("to", "?"))
        total = details.get("dangling")
        lines.append(f"  - dangling references (first {len(examples)}):")
        for example in examples:
            if isinstance(example, dict):
                lines.append(
                    f"    - _id {mdtext.code(example.get('id'))}: "
                    f"{mdtext.code(json.dumps(example.get('value'), default=str))} is not an _id in {target}"
                )
    else:
        total = details.get("offending", details.get("invalid"))
        lines.append(f"  - offending documents (first {len(examples)}):")
        lines.extend(f"    - _id {mdtext.code(_text(example))}" for example in examples)
    if isinstance(total, int) and total > len(examples):
        lines.append(f"    - ... and {total - len(examples)} more")
    return lines


def sample_lines(checks: list[dict[str, Any]]) -> list[str]:
    """A subsection per ``sample`` check: each document as pretty JSON in a fenced block."""
    lines: list[str] = []
    for check in checks:
        details = check.get("details")
        if check.get("type") != "sample" or not isinstance(details, dict):
            continue
        documents = details.get("documents") or []
        lines += ["", f"### Sample documents: {mdtext.plain(check.get('name'))} ({len(documents)})", ""]
        if not documents:
            lines.append("No document matches.")
        for document in documents:
            text = json.dumps(document, indent=2, ensure_ascii=False, default=str)
            if len(text) > SAMPLE_CHARS:
                text = text[:SAMPLE_CHARS] + "\n... (cut; the validation report has it whole)"
            fence = "`" * max(3, _longest_backticks(text) + 1)
            lines += [f"{fence}json", *text.splitlines(), fence]
    return lines


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _longest_backticks(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest
