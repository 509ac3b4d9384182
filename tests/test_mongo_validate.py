"""mongo.validate against the real server: every check passing, and failing on purpose."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pydantic import ValidationError
from pymongo.database import Database

from migration.errors import StepError
from migration.steps.base import StepContext
from migration.steps.mongo.common import ServerKind
from migration.steps.mongo.validate import MongoValidate

pytestmark = pytest.mark.mongo

PROPERTIES = [ObjectId() for _ in range(4)]


@pytest.fixture
def migrated(mongo_db: Database[Any]) -> Database[Any]:
    """A small database after the bank-details migration, plus one untouched collection."""
    mongo_db.Property.insert_many([{"_id": p, "name": f"p{i}"} for i, p in enumerate(PROPERTIES)])

    def bank(property_id: Any, iban: str | None, swift: str | None) -> dict[str, Any]:
        return {"_id": ObjectId(), "propertyId": property_id, "iban_number": iban, "swift_bic_number": swift}

    mongo_db.PropertyBankDetails.insert_many(
        [
            bank(PROPERTIES[0], "GB82WEST12345698765432", None),
            bank(PROPERTIES[1], None, "HSBCGB2LXXX"),
            bank(PROPERTIES[2], None, "DEUTDEFF"),
            bank(None, None, None),
        ]
    )
    mongo_db.User.insert_many([{"_id": i, "email": f"u{i}@example.com"} for i in range(3)])
    return mongo_db


def validate(url: str, workdir: Path, *checks: dict[str, Any], **params: Any) -> dict[str, Any]:
    ctx = StepContext(
        step_id="validate",
        params=MongoValidate.Params.model_validate({"uri": url, "checks": list(checks), **params}),
        workdir=workdir,
    )
    return MongoValidate().run(ctx)


def one(url: str, workdir: Path, check: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    outputs = validate(url, workdir, {"name": "c", **check})
    (result,) = outputs["checks"]
    assert (outputs["passed"], outputs["failed"]) == ((1, 0) if result["passed"] else (0, 1))
    return result["passed"], result["details"]


def manifest(folder: Path, counts: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = {
        "collections": {name: {"count": n, "bytes": 1, "sha256": "x"} for name, n in counts.items()},
        "totalRecords": sum(counts.values()),
    }
    (folder / "backup-manifest.json").write_text(json.dumps(body))
    return folder


BANK = "PropertyBankDetails"


def test_count(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    assert one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "equals": 4})[0]
    passed, details = one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "equals": 5})
    assert not passed and details["count"] == 4 and "expected 5" in details["summary"]
    # A templated figure arrives as text.
    assert one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "equals": "4"})[0]
    query = {"swift_bic_number": {"$ne": None}}
    assert one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "filter": query, "equals": 2})[0]
    assert one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "min": 1, "max": 4})[0]
    assert not one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "min": 5})[0]


def test_count_from_a_backup_manifest(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    good = manifest(tmp_path / "backup-good", {BANK: 4})
    bad = manifest(tmp_path / "backup-bad", {BANK: 42})
    assert one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "manifest": str(good)})[0]
    file = str(good / "backup-manifest.json")
    assert one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "manifest": file})[0]
    passed, details = one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "manifest": str(bad)})
    assert not passed and details["expected"] == 42
    passed, details = one(mongo_url, tmp_path, {"type": "count", "collection": "User", "manifest": str(good)})
    assert not passed and "no collection 'User'" in details["error"]
    passed, details = one(mongo_url, tmp_path, {"type": "count", "collection": BANK, "manifest": "nowhere"})
    assert not passed and "no backup manifest" in details["error"]


def test_fields_present(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    check = {"type": "fields_present", "collection": BANK, "fields": ["iban_number", "swift_bic_number"]}
    assert one(mongo_url, tmp_path, check)[0]
    passed, details = one(mongo_url, tmp_path, {**check, "allow_null": False})
    assert not passed and details["offending"] == 4
    migrated[BANK].insert_one({"_id": "half", "iban_number": None})
    passed, details = one(mongo_url, tmp_path, check)
    assert not passed and details["offending"] == 1 and details["examples"] == ["half"]
    assert one(mongo_url, tmp_path, {**check, "filter": {"_id": {"$ne": "half"}}})[0]


def test_fields_absent(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    check = {"type": "fields_absent", "collection": BANK, "fields": ["swift_bic_iban"]}
    assert one(mongo_url, tmp_path, check)[0]
    migrated[BANK].insert_one({"_id": "old", "swift_bic_iban": "DEUTDEFF"})
    passed, details = one(mongo_url, tmp_path, check)
    assert not passed and details["offending"] == 1 and details["examples"] == ["old"]


def test_references(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    check = {"type": "references", "collection": BANK, "field": "propertyId", "to": "Property"}
    passed, details = one(mongo_url, tmp_path, check)
    assert passed and details["distinct"] == 3 and details["dangling"] == 0  # null is not a reference
    ghost = ObjectId()
    migrated[BANK].insert_one({"_id": "dangling", "propertyId": ghost})
    migrated[BANK].insert_one({"_id": "as-text", "propertyId": str(PROPERTIES[0])})
    passed, details = one(mongo_url, tmp_path, check)
    assert not passed and details["dangling"] == 2
    assert {e["id"] for e in details["examples"]} == {"dangling", "as-text"}
    assert {"$oid": str(ghost)} in [e["value"] for e in details["examples"]]


def test_references_through_batched_in_queries(
    mongo_url: str, migrated: Database[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The $in path (used on MongoDB) gives the same answer as the scan used on FerretDB.
    monkeypatch.setattr("migration.steps.mongo.validation_checks.IN_BATCH", 2)
    monkeypatch.setattr("migration.steps.mongo.validate.detect_server", lambda c: ServerKind("7.0.0"))
    migrated[BANK].insert_one({"_id": "dangling", "propertyId": ObjectId()})
    migrated[BANK].insert_one({"_id": "array", "propertyId": [PROPERTIES[3], PROPERTIES[0]]})
    check = {"type": "references", "collection": BANK, "field": "propertyId", "to": "Property"}
    passed, details = one(mongo_url, tmp_path, check)
    assert not passed and details["dangling"] == 1 and details["distinct"] == 5


def test_distribution(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    groups = {
        "iban": {"iban_number": {"$ne": None}, "swift_bic_number": None},
        "swift": {"swift_bic_number": {"$ne": None}, "iban_number": None},
        "both": {"iban_number": {"$ne": None}, "swift_bic_number": {"$ne": None}},
        "neither": {"iban_number": None, "swift_bic_number": None},
    }
    check = {"type": "distribution", "collection": BANK, "groups": groups}
    passed, details = one(mongo_url, tmp_path, check)
    assert passed and details["counts"] == {"iban": 1, "swift": 2, "both": 0, "neither": 1}
    assert one(mongo_url, tmp_path, {**check, "expect": {"both": 0}, "min": {"swift": 2}})[0]
    passed, details = one(mongo_url, tmp_path, {**check, "expect": {"iban": 3}, "max": {"swift": 1}})
    assert not passed and details["problems"] == ["iban: 1 != 3", "swift: 2 > 1"]


def test_sample_passes_and_shows_documents(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    outputs = validate(mongo_url, tmp_path, {"name": "s", "type": "sample", "collection": BANK, "size": 2})
    (result,) = outputs["checks"]
    first = migrated[BANK].find_one(sort=[("_id", 1)])
    assert first is not None
    assert result["passed"] and len(result["details"]["documents"]) == 2
    assert result["details"]["documents"][0]["_id"] == {"$oid": str(first["_id"])}
    assert outputs["sample_id"] == str(first["_id"])


def test_collections_intact(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    backup = manifest(tmp_path / "backup", {"Property": 4, "User": 3, BANK: 99})
    check = {"type": "collections_intact", "manifest": str(backup), "except": [BANK]}
    passed, details = one(mongo_url, tmp_path, check)
    assert passed and details["collections"]["User"] == {"expected": 3, "actual": 3}
    passed, details = one(mongo_url, tmp_path, {**check, "except": []})
    assert not passed and details["problems"] == [f"{BANK}: 4 != 99"]
    migrated.User.delete_one({"_id": 0})
    migrated.Property.drop()
    passed, details = one(mongo_url, tmp_path, check)
    assert not passed and details["problems"] == ["Property is missing", "User: 2 != 3"]


def test_valid_ids(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    check = {"type": "valid_ids", "collection": BANK, "id_type": "objectId"}
    assert one(mongo_url, tmp_path, check)[0]
    assert one(mongo_url, tmp_path, {"type": "valid_ids", "collection": "User", "id_type": "int"})[0]
    migrated[BANK].insert_one({"_id": "text-id"})
    passed, details = one(mongo_url, tmp_path, check)
    assert not passed and details["invalid"] == 1 and details["examples"] == ["text-id"]
    assert one(mongo_url, tmp_path, {"type": "valid_ids", "collection": BANK})[0]  # any non-null type


def test_a_missing_collection_fails_its_check(
    mongo_url: str, migrated: Database[Any], tmp_path: Path
) -> None:
    for check in (
        {"type": "count", "collection": "Nope", "equals": 0},
        {"type": "fields_absent", "collection": "Nope", "fields": ["x"]},
        {"type": "sample", "collection": "Nope"},
        {"type": "valid_ids", "collection": "Nope"},
        {"type": "references", "collection": BANK, "field": "propertyId", "to": "Nope"},
    ):
        passed, details = one(mongo_url, tmp_path, check)
        assert not passed and "collection 'Nope' does not exist" in details["error"], check


def test_report_outputs_and_fail_on_error(mongo_url: str, migrated: Database[Any], tmp_path: Path) -> None:
    checks = [
        {"name": "count", "type": "count", "collection": BANK, "equals": 4},
        {"name": "wrong", "type": "count", "collection": BANK, "equals": 1},
    ]
    outputs = validate(mongo_url, tmp_path, *checks, report_dir="reports")
    assert (outputs["passed"], outputs["failed"]) == (1, 1)
    assert [(c["name"], c["type"], c["passed"]) for c in outputs["checks"]] == [
        ("count", "count", True),
        ("wrong", "count", False),
    ]
    report = Path(outputs["report"])
    assert report.parent == tmp_path / "reports" and report.name.startswith("validation-report-")
    assert json.loads(report.read_text())["failed"] == 1
    json.dumps(outputs)  # outputs are plain JSON
    with pytest.raises(StepError, match="1 validation checks failed: wrong") as failed:
        validate(mongo_url, tmp_path, *checks, fail_on_error=True)
    assert failed.value.outputs["failed"] == 1


def test_a_filter_the_server_rejects_fails_the_check(
    mongo_url: str, migrated: Database[Any], tmp_path: Path
) -> None:
    check = {"type": "count", "collection": BANK, "filter": {"x": {"$type": "nonsense"}}, "equals": 0}
    passed, details = one(mongo_url, tmp_path, check)
    assert not passed and "nonsense" in details["error"]


def test_bad_checks_fail_at_load() -> None:
    def params(*checks: dict[str, Any]) -> None:
        MongoValidate.Params.model_validate({"uri": "mongodb://localhost/x", "checks": list(checks)})

    with pytest.raises(ValidationError, match="needs equals, manifest, min or max"):
        params({"name": "a", "type": "count", "collection": "c"})
    with pytest.raises(ValidationError, match="two checks are named 'a'"):
        params(
            {"name": "a", "type": "sample", "collection": "c"},
            {"name": "a", "type": "sample", "collection": "c"},
        )
    with pytest.raises(ValidationError, match="unknown groups: nope"):
        params(
            {
                "name": "a",
                "type": "distribution",
                "collection": "c",
                "groups": {"x": {}},
                "expect": {"nope": 1},
            }
        )
    with pytest.raises(ValidationError, match="unknown operator"):
        params({"name": "a", "type": "count", "collection": "c", "filter": {"a": {"$bogus": 1}}, "equals": 1})
    with pytest.raises(ValidationError):
        params({"name": "a", "type": "no_such_check", "collection": "c"})


def test_dry_run_lists_checks_and_writes_nothing(
    mongo_url: str, migrated: Database[Any], tmp_path: Path
) -> None:
    ctx = StepContext(
        step_id="validate",
        params=MongoValidate.Params.model_validate(
            {
                "uri": mongo_url,
                "checks": [
                    {"name": "count", "type": "count", "collection": BANK, "equals": 4},
                    {"name": "gone", "type": "sample", "collection": "Nope"},
                ],
            }
        ),
        workdir=tmp_path,
    )
    text = MongoValidate().preview(ctx)
    assert "would run 2 checks" in text
    assert "  count (count): documents in PropertyBankDetails = 4\n" in text
    assert (
        "gone (sample): show the first 5 documents of Nope; always passes (collection does not exist now)"
        in text
    )
    assert not (tmp_path / "backups").exists()
