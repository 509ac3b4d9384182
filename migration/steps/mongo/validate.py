"""The ``mongo.validate`` step type: named checks of the data, with a report."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pymongo.errors import PyMongoError

from migration import mdtext
from migration.errors import StepError
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.mongo import validation_report
from migration.steps.mongo.common import connect, detect_server
from migration.steps.mongo.record_log import new_path
from migration.steps.mongo.validation_checks import (
    Check,
    Checker,
    CollectionsIntactCheck,
    CountCheck,
    DistributionCheck,
    FieldsAbsentCheck,
    FieldsPresentCheck,
    ReferencesCheck,
    SampleCheck,
    ValidIdsCheck,
)
from migration.steps.registry import register


@register
class MongoValidate(Step["MongoValidate.Params"]):
    """Check the data after a migration with named checks, and write a report.

    ``checks`` is a list; each item has a unique ``name``, a ``type`` and that
    type's fields:

    - ``count``: ``collection``, ``filter``; ``equals`` (a figure, e.g. a backup
      step's output), ``manifest`` (a backup folder or its ``backup-manifest.json``:
      the collection's count there), and/or ``min`` / ``max``.
    - ``fields_present``: ``collection``, ``fields``, ``filter``: every matched
      document has every field (``allow_null: false`` also rejects nulls).
    - ``fields_absent``: ``collection``, ``fields``, ``filter``: none has any.
    - ``references``: ``collection``, ``field``, ``to``: every non-null value (each
      element of an array) is an ``_id`` in ``to`` (batched ``$in`` queries, no
      ``$lookup``; on FerretDB, which never pushes ``$in`` down, one scan of ``to``).
    - ``distribution``: ``collection``, ``groups`` (name -> filter); reports the
      counts; optional ``expect``, ``min``, ``max`` (name -> figure).
    - ``sample``: ``collection``, ``size`` (5), ``filter``, ``fields``: the first
      documents in ``_id`` order, shown in the report; always passes.
    - ``collections_intact``: ``manifest``, ``except``: every collection of the
      backup has its backed-up count, except the listed ones.
    - ``valid_ids``: ``collection``, ``id_type`` (objectId, string, int, long,
      number, binData): every ``_id`` is non-null and of that type.

    A check of a collection that does not exist fails. The step itself succeeds
    and reports (judge with a checkpoint: ``steps.validate.outputs.failed == 0``)
    unless ``fail_on_error: true``. Writes ``validation-report-<ts>.json`` to
    ``report_dir``.

    Example:
        ```yaml
        - id: validate
          uses: mongo.validate
          with:
            uri: "{{ vars.db }}"
            checks:
              - {name: record-count, type: count, collection: PropertyBankDetails,
                 manifest: "{{ steps.backup.outputs.path }}"}
              - {name: old-field-gone, type: fields_absent, collection: PropertyBankDetails,
                 fields: [swift_bic_iban]}
              - {name: properties-exist, type: references, collection: PropertyBankDetails,
                 field: propertyId, to: Property}
              - name: iban-or-swift
                type: distribution
                collection: PropertyBankDetails
                groups:
                  iban: {iban_number: {$ne: null}, swift_bic_number: null}
                  swift: {swift_bic_number: {$ne: null}, iban_number: null}
                  both: {iban_number: {$ne: null}, swift_bic_number: {$ne: null}}
                expect: {both: 0}
        ```
    """

    name = "mongo.validate"
    outside_effects = False
    writes_folders = ("report_dir",)
    previewed_fields = frozenset({"checks"})  # one readable line per check, not a JSON line
    outputs = {
        "passed": "number of checks that passed",
        "failed": "number of checks that failed",
        "checks": "list of {name, type, passed, details}",
        "report": "path of validation-report-<ts>.json",
        "sample_id": "the first _id shown by a sample check, as text, or null",
    }

    class Params(StepParams):
        uri: str = Field(description="connection string naming the database")
        checks: list[Check] = Field(min_length=1, description="named checks, run in order")
        report_dir: str = Field(default="backups", description="folder of validation-report-<ts>.json")
        fail_on_error: bool = Field(default=False, description="fail the step when a check fails")

        @field_validator("checks")
        @classmethod
        def _unique_names(cls, value: list[Any]) -> list[Any]:
            seen: set[str] = set()
            for check in value:
                if check.name in seen:
                    raise ValueError(f"two checks are named {check.name!r}")
                seen.add(check.name)
            return value

    def run(self, ctx: StepContext[MongoValidate.Params]) -> dict[str, Any]:
        params = ctx.params
        client, db = connect(params.uri)
        try:
            server = detect_server(client)
            if server.ferretdb1:
                ctx.log.info(
                    "FerretDB 1.x workaround: references read target _ids in one scan", server=server.name
                )
            checker = Checker(db, ctx.path, server.ferretdb1)
            results = []
            for check in params.checks:
                ctx.check_stop()
                passed, details = checker.run(check)
                details = ctx.redact(details)
                results.append({"name": check.name, "type": check.type, "passed": passed, "details": details})
                log = ctx.log.info if passed else ctx.log.warning
                log("check", name=check.name, passed=passed, summary=details.get("summary"))
        except PyMongoError as exc:
            raise StepError(f"MongoDB error while validating: {ctx.redact(str(exc))}") from exc
        finally:
            client.close()
        failed = sum(1 for r in results if not r["passed"])
        report = self._write_report(ctx, db.name, results)
        sample_ids = [
            r["details"]["ids"][0] for r in results if r["type"] == "sample" and r["details"].get("ids")
        ]
        outputs = {
            "passed": len(results) - failed,
            "failed": failed,
            "checks": results,
            "report": str(report),
            "sample_id": sample_ids[0] if sample_ids else None,
        }
        ctx.log.info("validation finished", passed=outputs["passed"], failed=failed, report=str(report))
        if failed and params.fail_on_error:
            names = ", ".join(r["name"] for r in results if not r["passed"])
            raise StepError(f"{failed} validation checks failed: {names} (see {report})", outputs=outputs)
        return outputs

    @staticmethod
    def _write_report(ctx: StepContext[Any], database: str, results: list[dict[str, Any]]) -> Path:
        folder = ctx.path(ctx.params.report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = new_path(folder, "validation-report")
        failed = sum(1 for r in results if not r["passed"])
        report = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "database": database,
            "step": ctx.step_id,
            "run_id": ctx.run_id,
            "total": len(results),
            "passed": len(results) - failed,
            "failed": failed,
            "checks": results,
        }
        partial = path.with_name(path.name + ".partial")
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        return path

    def preview(self, ctx: StepContext[MongoValidate.Params]) -> str:
        params = ctx.params
        client, db = connect(params.uri)
        try:
            existing = set(db.list_collection_names())
        finally:
            client.close()
        lines = [
            f"would run {len(params.checks)} checks on {db.name} and write "
            f"{ctx.path(params.report_dir)}/validation-report-<timestamp>.json"
            + ("; the step fails if any check fails" if params.fail_on_error else "")
        ]
        for check in params.checks:
            target = getattr(check, "collection", None)
            missing = " (collection does not exist now)" if target and target not in existing else ""
            lines.append(f"  {check.name} ({check.type}): {describe_check(check)}{missing}")
        return "\n".join(lines)

    @classmethod
    def report_sections(cls, step_id: str, outputs: dict[str, Any]) -> list[str]:
        passed, failed = outputs.get("passed", 0), outputs.get("failed", 0)
        lines = [f"## Validation: {step_id} ({passed} passed, {failed} failed)", ""]
        for check in outputs.get("checks") or []:
            mark = "pass" if check.get("passed") else "FAIL"
            details = check.get("details") or {}
            summary = details.get("summary") if isinstance(details, dict) else None
            lines.append(
                f"- [{mark}] **{check.get('name')}** ({check.get('type')})"
                + (f": {summary}" if summary else "")
            )
            counts = details.get("counts") if isinstance(details, dict) else None
            if check.get("type") == "distribution" and isinstance(counts, dict):
                lines.extend(f"  - {group}: {count}" for group, count in counts.items())
            lines.extend(validation_report.evidence_lines(check))  # dangling references, offending ids
        lines.extend(validation_report.sample_lines(outputs.get("checks") or []))
        if outputs.get("report"):
            lines += ["", f"Validation report: {mdtext.code(outputs['report'])}"]
        return [*lines, ""]


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _figures(figures: dict[str, int]) -> str:
    return ", ".join(f"{name}={figure}" for name, figure in figures.items())


def describe_check(check: Any) -> str:
    """One readable line saying what a check will verify (for the dry run)."""
    where = f" where {_json(check.filter)}" if getattr(check, "filter", None) else ""
    on = f"{getattr(check, 'collection', '')}{where}"
    if isinstance(check, CountCheck):
        wanted = []
        if check.equals is not None:
            wanted.append(f"= {check.equals}")
        if check.manifest is not None:
            wanted.append(f"= its count in the backup manifest {check.manifest}")
        if check.min is not None:
            wanted.append(f">= {check.min}")
        if check.max is not None:
            wanted.append(f"<= {check.max}")
        return f"documents in {on} {' and '.join(wanted)}"
    if isinstance(check, FieldsPresentCheck):
        null = "" if check.allow_null else ", none of them null"
        return f"every document in {on} has {', '.join(check.fields)}{null}"
    if isinstance(check, FieldsAbsentCheck):
        return f"no document in {on} has {', '.join(check.fields)}"
    if isinstance(check, ReferencesCheck):
        return f"every {check.field} in {on} is an _id in {check.to}"
    if isinstance(check, DistributionCheck):
        groups = "; ".join(f"{name} {_json(query)}" for name, query in check.groups.items())
        text = f"counts in {on} per group: {groups}"
        for what in ("expect", "min", "max"):
            if getattr(check, what):
                text += f"; {what} {_figures(getattr(check, what))}"
        return text
    if isinstance(check, SampleCheck):
        fields = f" (fields {', '.join(check.fields)})" if check.fields else ""
        return f"show the first {check.size} documents of {on}{fields}; always passes"
    if isinstance(check, CollectionsIntactCheck):
        excepted = f", except {', '.join(check.except_)}" if check.except_ else ""
        return f"every collection of the backup manifest {check.manifest} has its count{excepted}"
    if isinstance(check, ValidIdsCheck):
        kind = f" and of type {check.id_type}" if check.id_type else ""
        return f"every _id in {on} is non-null{kind}"
    return _json(check.model_dump(mode="json", by_alias=True, exclude={"name", "type"}))
