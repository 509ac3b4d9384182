"""A phase's checkpoint: every ``that:`` condition evaluated over the run's context."""

from __future__ import annotations

from typing import Any

from migration.plan import templates
from migration.plan.model import Phase
from migration.run_document import jsonable
from migration.secrets import Redactor
from migration.state import Status, now_iso
from migration.state.document import CheckpointDoc, CheckpointResult


def evaluate_checkpoint(
    phase: Phase, context: dict[str, Any], redact: Redactor
) -> tuple[CheckpointDoc, list[str]]:
    """The checkpoint's document and why it failed (empty: it passed, or there is none)."""
    if not phase.checkpoint:
        return {"status": Status.NONE, "results": []}, []
    results: list[CheckpointResult] = []
    failed: list[str] = []
    for cp in phase.checkpoint:
        result: CheckpointResult = {"that": cp.that, "message": cp.message}
        try:
            value = templates.evaluate(cp.that, context)
            result["passed"] = templates.truthy(value)
            result["value"] = jsonable(value) if not isinstance(value, bool) else value
        except templates.TemplateError as exc:
            result["passed"] = False
            result["error"] = str(exc)
        results.append(redact(result))
        if not result["passed"]:
            why = cp.message or cp.that
            if result.get("error"):
                why += f" ({result['error']})"
            failed.append(why)
    document: CheckpointDoc = {
        "status": Status.FAILED if failed else Status.PASSED,
        "results": results,
        "evaluated_at": now_iso(),
    }
    return document, failed
