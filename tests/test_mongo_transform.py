"""mongo.transform against the real server: batches, guards, crashes and resume."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pydantic import ValidationError
from pymongo.database import Database

from migration.errors import Interrupted, StepError
from migration.steps.base import StepContext
from migration.steps.mongo.documents import after_id, decode_id, diff, encode_id, guard
from migration.steps.mongo.transform import InvalidDocument, MongoTransform
from migration.steps.mongo.update_command import UpdateCommand

pytestmark = pytest.mark.mongo

PROJECT = Path(__file__).resolve().parent.parent
THIS = "test_mongo_transform"


# --- transform functions used by the plans below ------------------------------------


def relabel(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Mixed outcomes by ``n``: skipped, invalid, error, else a set/unset/rename."""
    n = doc["n"]
    if n % 10 == 0:
        return None
    if n % 97 == 0:
        raise InvalidDocument(f"n={n} is divisible by 97")
    if n % 251 == 0:
        raise RuntimeError(f"cannot relabel n={n}")
    return {
        "$set": {"label": f"item-{n}", "double": n * 2, "meta.version": 2},
        "$unset": {"old": ""},
        "$rename": {"name": "title"},
    }


def explode_on_13(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["n"] in (13, 17):
        raise ValueError(f"bad document {doc['n']}")
    return {"$set": {"done": True}}


def same_code(doc: dict[str, Any]) -> dict[str, Any]:
    return {"$set": {"code": "same"}}


def increment(doc: dict[str, Any]) -> dict[str, Any]:
    return {"$inc": {"n": 1}}


# --- helpers ------------------------------------------------------------------------


class Crash(Exception):
    """Stands for the process dying."""


def seed(db: Database[Any], name: str, count: int, ids: Callable[[int], Any] = lambda i: i) -> None:
    docs = [
        {"_id": ids(i), "n": i, "name": f"name-{i}", "old": "x", "meta": {"version": 1}} for i in range(count)
    ]
    for start in range(0, count, 5000):
        db[name].insert_many(docs[start : start + 5000])


def context(url: str, workdir: Path, **params: Any) -> StepContext[MongoTransform.Params]:
    resume = params.pop("resume", {})
    on_progress = params.pop("on_progress", None)
    return StepContext(
        step_id="transform",
        params=MongoTransform.Params.model_validate({"uri": url, **params}),
        workdir=workdir,
        resume=resume,
        on_progress=on_progress,
    )


def transform(url: str, workdir: Path, **params: Any) -> dict[str, Any]:
    return MongoTransform().run(context(url, workdir, **params))


def get(db: Database[Any], name: str, doc_id: Any) -> dict[str, Any]:
    doc = db[name].find_one({"_id": doc_id})
    assert doc is not None, f"no {doc_id!r} in {name}"
    return doc


def snapshot(db: Database[Any], name: str) -> list[dict[str, Any]]:
    return list(db[name].find(sort=[("_id", 1)]))


def records(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def without_log(outputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outputs.items() if k != "log"}


# --- the tests ----------------------------------------------------------------------


def test_function_transform_migrates_and_logs_every_document(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "things", 1000)
    outputs = transform(
        mongo_url, tmp_path, collection="things", function=f"{THIS}:relabel", batch_size=128, max_errors=10
    )
    expected_skipped = len([n for n in range(1000) if n % 10 == 0])
    expected_invalid = len([n for n in range(1000) if n % 10 and n % 97 == 0])
    expected_errors = len([n for n in range(1000) if n % 10 and n % 97 and n % 251 == 0])
    assert outputs["total"] == 1000
    assert outputs["skipped"] == expected_skipped
    assert outputs["invalid"] == expected_invalid
    assert outputs["errors"] == expected_errors
    assert outputs["conflicts"] == 0
    assert outputs["migrated"] == 1000 - expected_skipped - expected_invalid - expected_errors
    assert Path(outputs["log"]).parent == tmp_path / "backups"
    assert Path(outputs["log"]).name.startswith("migration-log-")

    doc = mongo_db.things.find_one({"_id": 1})
    assert doc == {
        "_id": 1,
        "n": 1,
        "title": "name-1",
        "meta": {"version": 2},
        "label": "item-1",
        "double": 2,
    }
    assert get(mongo_db, "things", 97)["old"] == "x"  # invalid: untouched

    log = records(outputs["log"])
    assert [r["id"] for r in log] == list(range(1000))
    by_id = {r["id"]: r for r in log}
    assert by_id[1]["status"] == "migrated" and by_id[1]["after"]["label"] == "item-1"
    assert by_id[1]["before"]["old"] == "x"
    assert by_id[10]["status"] == "skipped"
    assert (by_id[97]["status"], by_id[97]["reason"]) == ("invalid", "n=97 is divisible by 97")
    assert by_id[97]["after"] is None
    assert by_id[251]["status"] == "error"
    assert by_id[251]["reason"] == "RuntimeError: cannot relabel n=251"


def test_rerun_on_a_migrated_collection_changes_nothing(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "things", 300)
    first = transform(mongo_url, tmp_path, collection="things", function=f"{THIS}:relabel", max_errors=10)
    assert first["migrated"] > 0
    before = snapshot(mongo_db, "things")
    second = transform(mongo_url, tmp_path, collection="things", function=f"{THIS}:relabel", max_errors=10)
    assert snapshot(mongo_db, "things") == before
    assert second["migrated"] == 0 and second["conflicts"] == 0
    assert second["skipped"] == first["skipped"] + first["migrated"]
    assert {r["reason"] for r in records(second["log"]) if r["status"] == "skipped"} == {
        "no change",
        "the function returned None",
    }


CRASH_MODES = ("before progress is persisted", "after progress is persisted", "between writes")
REAL_SEND = UpdateCommand.send  # one update command: a chunk of a batch's writes


class Dying:
    """One attempt that dies at call ``crash_at`` of progress or of an update command."""

    def __init__(self, mode: str, crash_at: int, saved: dict[str, Any]) -> None:
        self.mode, self.crash_at, self.saved = mode, crash_at, saved
        self.progress_calls = self.write_calls = 0

    def progress(self, fields: dict[str, Any]) -> None:
        self.progress_calls += 1
        crash = self.mode.endswith("persisted") and self.progress_calls == self.crash_at
        if crash and self.mode.startswith("before"):
            raise Crash
        self.saved.clear()
        self.saved.update(json.loads(json.dumps(fields)))  # what a state file keeps
        if crash:
            raise Crash

    def send(self, command: UpdateCommand, pairs: Any) -> Any:
        result = REAL_SEND(command, pairs)
        self.write_calls += 1
        if self.mode == "between writes" and self.write_calls == self.crash_at:
            raise Crash
        return result


def _run_with_crashes(
    url: str,
    workdir: Path,
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
    crashes: int,
    **params: Any,
) -> tuple[dict[str, Any], list[str]]:
    """Run until success, dying at random points: around a progress call, or mid-batch
    right after one update command (the rest of the batch unwritten)."""
    saved: dict[str, Any] = {}
    story = []
    for attempt in range(crashes + 1):
        dying = Dying(rng.choice(CRASH_MODES) if attempt < crashes else "", rng.randint(1, 6), saved)
        with monkeypatch.context() as patched:
            patched.setattr(UpdateCommand, "send", lambda c, p, d=dying: d.send(c, p))
            try:
                outputs = transform(url, workdir, resume=dict(saved), on_progress=dying.progress, **params)
            except Crash:
                story.append(f"died {dying.mode} (call {dying.crash_at})")
                continue
        return outputs, story
    raise AssertionError("unreachable")


def test_crashes_at_random_batches_then_resume_equal_an_uninterrupted_run(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count, batch = 10_000, 500
    seed(mongo_db, "reference", count)
    seed(mongo_db, "crashing", count)
    common = {"function": f"{THIS}:relabel", "batch_size": batch, "max_errors": 100}
    reference = transform(mongo_url, tmp_path / "ref", collection="reference", **common)

    seed_value = random.randrange(1 << 30)
    rng = random.Random(seed_value)
    outputs, story = _run_with_crashes(
        mongo_url, tmp_path / "work", rng, monkeypatch, crashes=4, collection="crashing", **common
    )
    where = f"random seed {seed_value}: {story}"
    assert without_log(outputs) == without_log(reference), where
    expected, actual = snapshot(mongo_db, "reference"), snapshot(mongo_db, "crashing")
    assert len(actual) == count
    for want, got in zip(expected, actual, strict=True):
        assert got == want, where
    # The log of the interrupted run is the log of an uninterrupted one.
    assert records(outputs["log"]) == records(reference["log"]), where
    assert [p.name for p in (tmp_path / "work" / "backups").iterdir()] == [Path(outputs["log"]).name]


def test_sigint_mid_batch_stops_cleanly_and_resumes(
    mongo_url: str, mongo_db: Database[Any], server_kind: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(mongo_db, "reference", 300)
    seed(mongo_db, "stopped", 300)
    common = {"function": f"{THIS}:relabel", "batch_size": 100, "max_errors": 10}
    reference = transform(mongo_url, tmp_path / "ref", collection="reference", **common)
    saved: dict[str, Any] = {}
    ctx = context(mongo_url, tmp_path / "work", collection="stopped", on_progress=saved.update, **common)

    def send_then_sigint(command: UpdateCommand, pairs: Any) -> Any:
        if command.name == "stopped" and saved.get("last_id") is not None:
            ctx.stop_flag.set("SIGINT")  # arrives during the second batch's writes
        return REAL_SEND(command, pairs)

    with monkeypatch.context() as patched:
        patched.setattr(UpdateCommand, "send", send_then_sigint)
        with pytest.raises(Interrupted, match="SIGINT"):
            MongoTransform().run(ctx)
    # Under a statement cap a batch is several commands and the stop comes between two:
    # that batch is not recorded. Uncapped, its one command completes and is recorded.
    assert saved["counters"]["total"] == (100 if server_kind.statements_per_command else 200)
    outputs = transform(mongo_url, tmp_path / "work", collection="stopped", resume=saved, **common)
    assert without_log(outputs) == without_log(reference)
    assert snapshot(mongo_db, "stopped") == snapshot(mongo_db, "reference")
    assert records(outputs["log"]) == records(reference["log"])


def test_resume_continues_after_ids_of_every_type(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    oids = [ObjectId() for _ in range(5)]
    values: list[Any] = [3, 1.5, "b", "a", *oids, True, False]
    mongo_db.mixed.insert_many([{"_id": v, "n": i, "old": "x"} for i, v in enumerate(values)])
    for crash_at in range(1, len(values)):
        mongo_db.mixed.update_many({}, {"$set": {"old": "x"}, "$unset": {"done": ""}})
        saved: dict[str, Any] = {}

        def hook(fields: dict[str, Any], crash_at: int = crash_at, saved: dict[str, Any] = saved) -> None:
            saved.update(json.loads(json.dumps(fields)))
            if saved["counters"]["total"] == crash_at:
                raise Crash

        params = {"collection": "mixed", "function": f"{THIS}:explode_on_13", "batch_size": 1}
        with pytest.raises(Crash):
            transform(mongo_url, tmp_path, on_progress=hook, **params)
        outputs = transform(mongo_url, tmp_path, resume=saved, **params)
        assert outputs["total"] == len(values), f"crash after {crash_at}"
        assert mongo_db.mixed.count_documents({"done": True}) == len(values)


def test_a_function_error_is_recorded_and_the_run_continues_until_max_errors(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "things", 30)
    outputs = transform(
        mongo_url, tmp_path, collection="things", function=f"{THIS}:explode_on_13", max_errors=2
    )
    assert (outputs["errors"], outputs["migrated"], outputs["total"]) == (2, 28, 30)
    errors = [r for r in records(outputs["log"]) if r["status"] == "error"]
    assert [(r["id"], r["reason"]) for r in errors] == [
        (13, "ValueError: bad document 13"),
        (17, "ValueError: bad document 17"),
    ]
    assert mongo_db.things.count_documents({"done": True}) == 28


def test_errors_beyond_max_errors_fail_the_step_and_keep_what_was_done(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "things", 30)
    saved: dict[str, Any] = {}
    with pytest.raises(
        StepError, match=r"too many errors \(2, max_errors 1\); last: _id 17: ValueError"
    ) as failed:
        transform(
            mongo_url, tmp_path, collection="things", function=f"{THIS}:explode_on_13",
            max_errors=1, batch_size=10, on_progress=saved.update,
        )  # fmt: skip
    assert failed.value.outputs["errors"] == 2
    assert failed.value.outputs["total"] == 18
    # Documents before the failing one are written; it and the rest are not.
    assert mongo_db.things.count_documents({"done": True}) == 16
    assert saved["counters"] == {
        "total": 17, "migrated": 16, "skipped": 0, "invalid": 0, "errors": 1, "conflicts": 0
    }  # fmt: skip
    assert decode_id(saved["last_id"]) == 16
    log = records(str(failed.value.outputs["log"]))
    assert log[-1]["id"] == 17 and log[-1]["status"] == "error"


def test_writes_the_server_refuses_are_errors(
    mongo_url: str, mongo_db: Database[Any], server_kind: Any, tmp_path: Path
) -> None:
    # A unique-index violation is a refusal every server makes, with code 11000 (its
    # wording differs: "E11000 duplicate key", "Duplicate key violation"). Each
    # document has its own code first: a unique index over several documents that
    # lack the field is refused by MongoDB and FerretDB 2 alike (duplicate nulls).
    seed(mongo_db, "things", 5)
    for n in range(5):
        mongo_db.things.update_one({"_id": n}, {"$set": {"code": f"code-{n}"}})
    mongo_db.things.create_index("code", unique=True, name="code_unique")
    params = {"collection": "things", "function": f"{THIS}:same_code"}
    outputs = transform(mongo_url, tmp_path, max_errors=10, **params)
    assert (outputs["migrated"], outputs["errors"]) == (1, 4)
    reasons = [r["reason"] for r in records(outputs["log"]) if r["status"] == "error"]
    codes = {match.group(1) for r in reasons if (match := re.search(r"\(code (\d+)\)$", r))}
    # FerretDB 1.x answers a unique violation by an update with code 1 (InternalError,
    # PostgreSQL's SQLSTATE 23505 in the text): a limit of that server, detected.
    expected = "1" if server_kind.ferretdb1 else "11000"
    assert len(reasons) == 4 and codes == {expected}, reasons
    assert mongo_db.things.count_documents({"code": "same"}) == 1

    for n in range(5):
        mongo_db.things.update_one({"_id": n}, {"$set": {"code": f"code-{n}"}})
    saved: dict[str, Any] = {}
    with pytest.raises(StepError, match=rf"too many errors \(4, max_errors 2\).*\(code {expected}\)"):
        transform(mongo_url, tmp_path, max_errors=2, on_progress=saved.update, **params)
    assert saved["last_id"] is None  # the batch is not recorded: a re-run retries it


def test_a_document_changed_by_someone_else_mid_run_is_a_conflict_not_overwritten(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "things", 30)

    def someone_else_writes(fields: dict[str, Any]) -> None:
        if fields["counters"]["total"] == 10:  # after batch 1; batch 2 is already read
            mongo_db.things.update_one({"_id": 15}, {"$set": {"name": "changed by the app"}})
            mongo_db.things.update_one({"_id": 16}, {"$set": {"untouched_field": 1}})
            mongo_db.things.delete_one({"_id": 17})

    outputs = transform(
        mongo_url, tmp_path, collection="things", function=f"{THIS}:relabel",
        batch_size=10, on_progress=someone_else_writes,
    )  # fmt: skip
    assert outputs["conflicts"] == 2
    assert mongo_db.things.find_one({"_id": 15}) == {
        "_id": 15, "n": 15, "name": "changed by the app", "old": "x", "meta": {"version": 1}
    }  # fmt: skip
    # A change to a field the update does not touch is kept, and the update applies.
    assert get(mongo_db, "things", 16)["untouched_field"] == 1
    assert get(mongo_db, "things", 16)["label"] == "item-16"
    by_id = {r["id"]: r for r in records(outputs["log"])}
    assert by_id[15]["status"] == "conflict"
    assert "changed by someone else" in by_id[15]["reason"]
    assert by_id[15]["current"]["name"] == "changed by the app"
    assert by_id[17]["status"] == "conflict" and "deleted" in by_id[17]["reason"]
    assert by_id[16]["status"] == "migrated"


def test_operations_set_unset_rename_split(mongo_url: str, mongo_db: Database[Any], tmp_path: Path) -> None:
    mongo_db.bank.insert_many(
        [
            {"_id": 1, "code": "GB82WEST12345698765432", "bank": "West", "legacy": 1},
            {"_id": 2, "code": "HSBCGB2LXXX", "bank": "HSBC"},
            {"_id": 3, "code": "", "bank": "None"},
            {"_id": 4, "code": "garbage", "bank": "?"},
            {"_id": 5, "bank": "no code"},
        ]
    )
    operations = [
        {"set": {"schema.version": 2}},
        {"rename": {"bank": "bank_name"}},
        {"unset": ["legacy"]},
        {
            "split": {
                "field": "code",
                "into": {
                    "iban_number": {"function": "migration.recipes.bank_details:is_valid_iban"},
                    "swift_bic_number": {"regex": "^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$"},
                },
            }
        },
    ]
    outputs = transform(mongo_url, tmp_path, collection="bank", operations=operations)
    assert (outputs["migrated"], outputs["invalid"]) == (4, 1)
    docs = {d["_id"]: d for d in mongo_db.bank.find()}
    assert docs[1] == {
        "_id": 1, "schema": {"version": 2}, "bank_name": "West",
        "iban_number": "GB82WEST12345698765432", "swift_bic_number": None,
    }  # fmt: skip
    assert docs[2]["swift_bic_number"] == "HSBCGB2LXXX" and docs[2]["iban_number"] is None
    assert docs[3]["iban_number"] is None and docs[3]["swift_bic_number"] is None
    assert "code" not in docs[3]
    assert docs[4] == {"_id": 4, "code": "garbage", "bank": "?"}  # invalid: untouched
    assert docs[5] == {"_id": 5, "bank_name": "no code", "schema": {"version": 2}}
    reason = next(r["reason"] for r in records(outputs["log"]) if r["id"] == 4)
    assert reason == "split: code value 'garbage' matches none of iban_number, swift_bic_number"

    again = transform(mongo_url, tmp_path, collection="bank", operations=operations)
    assert (again["migrated"], again["skipped"], again["invalid"]) == (0, 4, 1)


@pytest.mark.parametrize(
    ("unmatched", "counter"), [("error", "errors"), ("skip", "skipped"), ("invalid", "invalid")]
)
def test_split_unmatched_policy(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path, unmatched: str, counter: str
) -> None:
    mongo_db.bank.insert_many([{"_id": 1, "code": "zzz"}, {"_id": 2, "code": "AB12"}])
    operations = [
        {
            "split": {
                "field": "code",
                "into": {"short": {"regex": "^[A-Z]{2}[0-9]{2}$"}},
                "unmatched": unmatched,
                "remove_source": False,
            }
        }
    ]
    outputs = transform(mongo_url, tmp_path, collection="bank", operations=operations, max_errors=5)
    assert outputs[counter] == 1 and outputs["migrated"] == 1
    assert mongo_db.bank.find_one({"_id": 1}) == {"_id": 1, "code": "zzz"}
    assert mongo_db.bank.find_one({"_id": 2}) == {"_id": 2, "code": "AB12", "short": "AB12"}


def test_recipe_invalid_values_count_as_invalid(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    mongo_db.PropertyBankDetails.insert_many(
        [{"_id": 1, "swift_bic_iban": "GB82WEST12345698765432"}, {"_id": 2, "swift_bic_iban": "GB00BAD"}]
    )
    outputs = transform(
        mongo_url, tmp_path, collection="PropertyBankDetails",
        function="migration.recipes.bank_details:split_swift_bic_iban",
    )  # fmt: skip
    assert (outputs["migrated"], outputs["invalid"], outputs["errors"]) == (1, 1, 0)


def test_unsupported_update_operator_is_an_error(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "things", 3)
    with pytest.raises(StepError, match=r"unsupported update operator '\$inc'"):
        transform(mongo_url, tmp_path, collection="things", function=f"{THIS}:increment")
    assert get(mongo_db, "things", 0)["n"] == 0


def test_a_filter_limits_the_documents(mongo_url: str, mongo_db: Database[Any], tmp_path: Path) -> None:
    seed(mongo_db, "things", 50)
    outputs = transform(
        mongo_url, tmp_path, collection="things", function=f"{THIS}:explode_on_13", filter={"n": {"$lt": 10}}
    )
    assert outputs["total"] == 10 and mongo_db.things.count_documents({"done": True}) == 10


def test_bad_filters_and_regexes_fail_at_load(tmp_path: Path) -> None:
    base = {"uri": "mongodb://localhost/x", "collection": "c"}
    bad_filters: list[Any] = [{"a": {"$foo": 1}}, {"a": {"$regex": "("}}, {"$or": {}}, {"a": {"$in": 5}}]
    for bad in bad_filters:
        with pytest.raises(ValidationError):
            MongoTransform.Params.model_validate({**base, "function": "m:f", "filter": bad})
    split = {"split": {"field": "a", "into": {"b": {"regex": "[unclosed"}}}}
    with pytest.raises(ValidationError, match="does not compile"):
        MongoTransform.Params.model_validate({**base, "operations": [split]})
    with pytest.raises(ValidationError, match="exactly one of function or operations"):
        MongoTransform.Params.model_validate(base)
    with pytest.raises(ValidationError, match="exactly one key"):
        MongoTransform.Params.model_validate({**base, "operations": [{"copy": {}}]})


def test_a_filter_the_server_rejects_fails_before_anything_is_written(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "things", 5)
    with pytest.raises(StepError, match="rejected by the server"):
        transform(
            mongo_url, tmp_path, collection="things", function=f"{THIS}:explode_on_13",
            filter={"n": {"$type": "no-such-type"}},
        )  # fmt: skip
    assert mongo_db.things.count_documents({"done": True}) == 0
    assert not (tmp_path / "backups").exists()


def test_a_missing_collection_is_an_error(mongo_url: str, mongo_db: Database[Any], tmp_path: Path) -> None:
    seed(mongo_db, "things", 1)
    ctx = context(mongo_url, tmp_path, collection="Things", function=f"{THIS}:relabel")
    with pytest.raises(StepError, match="collection 'Things' does not exist"):
        MongoTransform().run(ctx)
    with pytest.raises(StepError, match="does not exist"):
        MongoTransform().preview(ctx)
    assert not (tmp_path / "backups").exists()


def test_dry_run_counts_and_shows_diffs_and_writes_nothing(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed(mongo_db, "things", 40)
    before = snapshot(mongo_db, "things")
    ctx = context(mongo_url, tmp_path, collection="things", function=f"{THIS}:relabel", sample=3)
    text = MongoTransform().preview(ctx)
    assert "would transform 40 documents" in text
    assert "_id 1:" in text and '+ label: "item-1"' in text and '- old: "x"' in text
    assert "~ meta.version: 1 -> 2" in text
    assert "_id 4:" not in text  # only 3 samples
    assert snapshot(mongo_db, "things") == before
    assert not (tmp_path / "backups").exists()


def test_guards_and_resume_filters() -> None:
    before = {"_id": 1, "a": "x", "b": None, "c": {"d": 1}, "e": [1], "f": 2.5}
    update = diff(before, {"_id": 1, "a": "y", "b": 1, "c": {"d": 2}, "e": [2], "g": 1, "f": 2.5})
    assert update == {"$set": {"a": "y", "b": 1, "c.d": 2, "e": [2], "g": 1}}
    assert guard(1, before, update) == {
        "_id": 1, "a": "x", "b": {"$type": "null"}, "c.d": 1, "g": {"$exists": False}
    }  # fmt: skip
    assert diff({"a": 1}, {"a": 1.0}) == {"$set": {"a": 1.0}}
    assert diff({"a": 1}, {"a": True}) == {"$set": {"a": True}}
    oid = ObjectId()
    assert decode_id(encode_id(oid)) == oid and decode_id(encode_id(5)) == 5
    assert after_id(oid) == {
        "$or": [{"_id": {"$gt": oid}}, {"_id": {"$type": ["bool", "date", "timestamp", "regex"]}}]
    }


# --- a real crash: SIGKILL of a process running the step -------------------------------

_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    sys.path[:0] = [{project!r}, {tests!r}]
    from migration.steps.base import StepContext
    from migration.steps.mongo.transform import MongoTransform

    progress = Path({progress!r})

    def persist(fields):
        tmp = progress.with_suffix(".tmp")
        tmp.write_text(json.dumps(fields))
        with open(tmp) as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, progress)

    params = MongoTransform.Params(**json.loads({params!r}))
    ctx = StepContext(step_id="t", params=params, workdir=Path({workdir!r}), on_progress=persist)
    MongoTransform().run(ctx)
    """
)


@pytest.mark.slow
def test_sigkill_mid_run_then_a_new_run_resumes_from_saved_progress(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    count, batch = 3000, 100
    seed(mongo_db, "reference", count)
    seed(mongo_db, "killed", count)
    common = {"function": f"{THIS}:relabel", "batch_size": batch, "max_errors": 100}
    reference = transform(mongo_url, tmp_path / "ref", collection="reference", **common)

    progress = tmp_path / "progress.json"
    params = json.dumps({"uri": mongo_url, "collection": "killed", **common})
    script = _CHILD.format(
        project=str(PROJECT), tests=str(PROJECT / "tests"), progress=str(progress),
        params=params, workdir=str(tmp_path / "work"),
    )  # fmt: skip
    kill_after = random.randint(2, count // batch - 5)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while True:
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline
        if progress.exists() and json.loads(progress.read_text())["counters"]["total"] >= kill_after * batch:
            break
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    saved = json.loads(progress.read_text())
    assert saved["counters"]["total"] < count, "the child finished before it was killed"

    outputs = transform(mongo_url, tmp_path / "work", collection="killed", resume=saved, **common)
    assert without_log(outputs) == without_log(reference), f"killed after {kill_after} batches"
    assert snapshot(mongo_db, "killed") == snapshot(mongo_db, "reference")
    assert records(outputs["log"]) == records(reference["log"])
