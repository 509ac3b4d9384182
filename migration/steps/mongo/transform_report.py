"""What a ``mongo.transform`` step adds to the run report beyond its counters.

The ``_id`` and reason of the first invalid documents and of the first documents
in error, read from the per-record log (``migration-log-<ts>.json``, whose path
is in the step's outputs), then how many more there are. Markdown lines, values
made safe with :mod:`migration.mdtext` (the HTML report renders them too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from migration import mdtext

# Invalid ids (and errors) a report lists before it gives only a count.
REPORT_EXAMPLES = 10


def first_records(path: Path, statuses: tuple[str, ...], limit: int) -> dict[str, list[dict[str, Any]]]:
    """The first ``limit`` records of each of ``statuses`` in a log (for reports).

    Reads line by line and parses only lines that can match, so a log of a
    million migrated documents costs one pass of substring tests. Raises OSError.
    """
    found: dict[str, list[dict[str, Any]]] = {status: [] for status in statuses}
    needles = {status: f'"status":{json.dumps(status)}'.encode() for status in statuses}
    with open(path, "rb") as handle:
        for line in handle:
            for status, needle in needles.items():
                if needle in line and len(found[status]) < limit:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a line cut by a crash: the resumed run rewrote it
                    if record.get("status") == status:
                        found[status].append(record)
            if all(len(records) >= limit for records in found.values()):
                break
    return found


def problem_records_section(outputs: dict[str, Any], limit: int = REPORT_EXAMPLES) -> list[str]:
    """Report lines (Markdown) of a transform's invalid and failed documents: ``_id`` and
    reason of the first ``limit`` of each, read from the per-record log, then a count."""
    wanted = tuple(
        status for status, key in (("invalid", "invalid"), ("error", "errors")) if outputs.get(key)
    )
    lines: list[str] = []
    shown: dict[str, list[dict[str, Any]]] = {}
    if wanted and outputs.get("log"):
        try:
            shown = first_records(Path(outputs["log"]), wanted, limit)
        except OSError as exc:
            lines += ["", f"(the per-record log cannot be read here: {mdtext.plain(exc.strerror)})"]
    for status in wanted:
        count = int(outputs.get("invalid" if status == "invalid" else "errors") or 0)
        records = shown.get(status, [])
        title = "Invalid documents" if status == "invalid" else "Documents in error"
        lines += ["", f"{title}: {count}" + (f" (the first {len(records)}):" if records else ""), ""]
        for record in records:
            ident = record.get("id")
            ident = ident.get("$oid", ident) if isinstance(ident, dict) and len(ident) == 1 else ident
            reason = mdtext.plain(record.get("reason") or "-")
            lines.append(f"- _id {mdtext.code(json.dumps(ident, default=str))}: {reason}")
        if count > len(records):
            lines.append(f"- ... and {count - len(records)} more (in the per-record log)")
    return lines
