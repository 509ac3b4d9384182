"""mongo.restore killed again and again: each attempt resumes from what all earlier ones did.

A kill is simulated by an exception nothing in the step catches (as SIGKILL), raised
right after a progress report (which the runner has persisted by then) or right
after a batch of documents was inserted (a half-restored collection). The next
attempt gets the last report as ``ctx.resume``, as the runner would give it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_mongo_backup_restore import COLLECTIONS, backup_ctx, checksums, seed

from migration.errors import StepError
from migration.steps.base import ProgressReporter, StepContext
from migration.steps.mongo import restore
from migration.steps.mongo.backup import MongoBackup
from migration.steps.mongo.checksums import collection_checksum
from migration.steps.mongo.dumpfmt import MANIFEST_NAME
from migration.steps.mongo.restore import MongoRestore

pytestmark = pytest.mark.mongo

# Sorted as the step restores them: Empty (0 documents), Property (200),
# PropertyBankDetails (42), User (60); inserted in batches of BATCH (below FerretDB
# 1.x's cap of 20 statements per command, so batches are the same on every server).
BATCH = 10


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the step catches it."""


@dataclass
class KillingContext(StepContext[Any]):
    """Dies after its ``kill_at_progress``-th progress report, or once the restoring
    bar has counted ``kill_after_docs`` documents (collections kept from an earlier
    attempt count whole)."""

    kill_at_progress: int = 0
    kill_after_docs: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)

    def progress(self, **fields: Any) -> None:
        self.reports.append(json.loads(json.dumps(fields)))  # as the state file keeps it
        if len(self.reports) == self.kill_at_progress:
            raise Killed

    @contextmanager
    def progress_bar(self, description: str, total: int | None) -> Iterator[ProgressReporter]:
        with super().progress_bar(description, total) as bar:
            if description == "restoring" and self.kill_after_docs:
                advance, limit = bar.advance, self.kill_after_docs

                def counting(n: int = 1) -> None:
                    advance(n)
                    if bar.done >= limit:
                        raise Killed

                bar.advance = counting  # type: ignore[method-assign]
            yield bar


@pytest.fixture
def dump(mongo_url: str, mongo_db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    """A backup of the seeded database, then the database emptied; small insert batches."""
    seed(mongo_db)
    folder = Path(MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url))["path"])
    for name in COLLECTIONS:
        mongo_db.drop_collection(name)
    monkeypatch.setattr(restore, "INSERT_BATCH_DOCS", BATCH)
    return folder, mongo_db


def attempt(
    url: str, folder: Path, tmp_path: Path, resume: dict[str, Any], drop: bool = False, **kill: int
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """One attempt of the step: (outputs, or None if it was killed; its last progress report)."""
    ctx = attempt_ctx(url, folder, tmp_path, resume, drop, **kill)
    try:
        outputs = MongoRestore().run(ctx)
    except Killed:
        return None, ctx.reports[-1]
    return outputs, ctx.reports[-1]


def attempt_ctx(
    url: str,
    folder: Path,
    tmp_path: Path,
    resume: dict[str, Any],
    drop: bool = False,
    kill_at_progress: int = 0,
    kill_after_docs: int = 0,
    parallel_collections: int = 1,
) -> KillingContext:
    # One collection at a time unless asked: the kill points below are counted in documents.
    params = MongoRestore.Params.model_validate(
        {"uri": url, "from": str(folder), "drop": drop, "parallel_collections": parallel_collections}
    )
    return KillingContext(
        step_id="restore",
        params=params,
        workdir=tmp_path,
        resume=resume,
        kill_at_progress=kill_at_progress,
        kill_after_docs=kill_after_docs,
    )


def expected_checksums(folder: Path) -> dict[str, str]:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    return {name: entry["checksum"] for name, entry in manifest["collections"].items()}


def test_restore_killed_three_times_without_drop_resumes_and_keeps_what_it_restored(
    mongo_url: str, dump: tuple[Path, Any], tmp_path: Path
) -> None:
    folder, db = dump
    # 1: killed after Property's first batch.
    outputs, progress = attempt(mongo_url, folder, tmp_path, {}, kill_after_docs=BATCH)
    assert outputs is None
    assert (progress["done"], progress["current"]) == (["Empty"], "Property")
    assert db.Property.count_documents({}) == BATCH
    # 2: Property restored anew and whole; killed after PropertyBankDetails' documents
    # went in, before its indexes (half-restored as far as the step knows).
    outputs, progress = attempt(mongo_url, folder, tmp_path, progress, kill_after_docs=200 + 42)
    assert outputs is None
    assert (progress["done"], progress["current"]) == (["Empty", "Property"], "PropertyBankDetails")
    # 3: Empty and Property are kept, not redone; killed half-way into User.
    outputs, progress = attempt(mongo_url, folder, tmp_path, progress, kill_after_docs=200 + 42 + BATCH)
    assert outputs is None
    assert (progress["done"], progress["current"]) == (["Empty", "Property", "PropertyBankDetails"], "User")
    assert db.User.count_documents({}) == BATCH
    last = attempt_ctx(mongo_url, folder, tmp_path, progress)

    outputs = MongoRestore().run(last)

    # Only User was restored (anew): no progress report for any other collection.
    assert [r["current"] for r in last.reports] == ["User", ""]
    assert outputs["verified"] == "counts+checksums"
    assert outputs["dropped"] == []  # only its own half-restored collections were redone
    assert sorted(outputs["indexes"]) == COLLECTIONS
    assert "email_1" in outputs["indexes"]["User"]
    assert {n: collection_checksum(db, n) for n in COLLECTIONS} == expected_checksums(folder)
    assert last.reports[-1]["done"] == COLLECTIONS


def test_a_half_restored_collection_is_remembered_while_another_is_redone(
    mongo_url: str, dump: tuple[Path, Any], tmp_path: Path
) -> None:
    folder, db = dump
    outputs, progress = attempt(mongo_url, folder, tmp_path, {}, kill_after_docs=200 + 42 + BATCH)
    assert outputs is None and progress["current"] == "User"
    # A collection it had restored is gone: the next attempt restores it first, while
    # User, half-restored, is still its own.
    db.drop_collection("Property")
    outputs, progress = attempt(mongo_url, folder, tmp_path, progress, kill_at_progress=1)
    assert outputs is None
    assert (progress["current"], progress["partial"]) == ("Property", ["User"])

    outputs, _ = attempt(mongo_url, folder, tmp_path, progress)

    assert outputs is not None and outputs["verified"] == "counts+checksums"
    assert {n: collection_checksum(db, n) for n in COLLECTIONS} == expected_checksums(folder)


def test_a_collection_changed_after_it_was_restored_is_not_taken_for_its_own(
    mongo_url: str, dump: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, db = dump
    verify = restore.verify_collection

    def written_to_meanwhile(target: Any, dumped: Any, *args: Any) -> Any:
        if dumped.name == "User":
            db.User.insert_one({"_id": "someone else's"})
        return verify(target, dumped, *args)

    monkeypatch.setattr(restore, "verify_collection", written_to_meanwhile)
    ctx = attempt_ctx(mongo_url, folder, tmp_path, {})
    with pytest.raises(StepError, match="User has 61 documents, the dump 60"):
        MongoRestore().run(ctx)
    assert ctx.reports[-1]["done"] == ["Empty", "Property", "PropertyBankDetails"]
    monkeypatch.setattr(restore, "verify_collection", verify)
    before = checksums(db)

    with pytest.raises(StepError, match=r"refusing to restore: User \(61 documents\) already hold data"):
        attempt(mongo_url, folder, tmp_path, ctx.reports[-1])

    assert checksums(db) == before


def test_restore_with_drop_killed_twice_reports_every_collection_it_dropped(
    mongo_url: str, dump: tuple[Path, Any], tmp_path: Path
) -> None:
    folder, db = dump
    seed(db)
    db.Property.insert_one({"_id": "added after the backup"})
    outputs, progress = attempt(mongo_url, folder, tmp_path, {}, drop=True, kill_after_docs=BATCH)
    assert outputs is None and progress["dropped"] == ["Empty", "Property"]
    outputs, progress = attempt(mongo_url, folder, tmp_path, progress, drop=True, kill_at_progress=2)
    assert outputs is None and progress["dropped"] == ["Empty", "Property", "PropertyBankDetails"]

    outputs, _ = attempt(mongo_url, folder, tmp_path, progress, drop=True)

    assert outputs is not None and outputs["dropped"] == COLLECTIONS
    assert {n: collection_checksum(db, n) for n in COLLECTIONS} == expected_checksums(folder)
    assert db.Property.find_one({"_id": "added after the backup"}) is None


def test_a_resume_into_another_database_takes_nothing_there_for_its_own(
    mongo_server: Any, mongo_url: str, dump: tuple[Path, Any], tmp_path: Path
) -> None:
    """Killed while restoring into one database, resumed with a URI naming another (a
    fixed .env, another --var): the half-restored collection's name there is someone
    else's data, never dropped."""
    import pymongo

    folder, _ = dump
    outputs, progress = attempt(mongo_url, folder, tmp_path, {}, kill_after_docs=BATCH)
    assert outputs is None and progress["current"] == "Property"
    other = "t_other_" + uuid.uuid4().hex[:8]
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_server.database_url(other))
    try:
        client[other].Property.insert_one({"_id": "theirs"})
        ctx = attempt_ctx(mongo_server.database_url(other), folder, tmp_path, progress)
        ctx.params = MongoRestore.Params.model_validate(
            {"uri": mongo_server.database_url(other), "from": str(folder), "allow_other_database": True}
        )
        with pytest.raises(StepError, match=r"refusing to restore: Property \(1 documents\) already hold"):
            MongoRestore().run(ctx)
        assert list(client[other].Property.find()) == [{"_id": "theirs"}]
    finally:
        client.drop_database(other)
        client.close()


def test_restore_of_several_collections_at_once_killed_resumes_to_the_backup(
    mongo_url: str, dump: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four collections in flight at once; killed with several of them half-restored.
    Without drop, the next attempt restores only because the kill's record names every
    collection it had started as its own (anything else holding data is refused)."""
    folder, db = dump
    real = restore.restore_native
    started = threading.Barrier(3, timeout=30)  # Property, PropertyBankDetails, User
    inserted: list[int] = []

    def held(target: Any, dumped: Any, server: Any, warn: Any, advance: Any, *rest: Any) -> Any:
        # Each collection, after its first batch, waits until all three are in flight;
        # then the first to see BATCH * 4 documents inserted in all dies.
        first = [True]

        def holding(n: int) -> None:
            advance(n)
            inserted.append(n)
            if first[0]:
                first[0] = False
                started.wait()
            if sum(inserted) >= BATCH * 4:
                raise Killed

        return real(target, dumped, server, warn, holding, *rest)

    monkeypatch.setattr(restore, "restore_native", held)
    ctx = attempt_ctx(mongo_url, folder, tmp_path, {}, parallel_collections=4)
    with pytest.raises(Killed):
        MongoRestore().run(ctx)
    monkeypatch.setattr(restore, "restore_native", real)
    progress = ctx.reports[-1]
    in_flight = {progress["current"], *progress["partial"]}
    assert {"Property", "PropertyBankDetails", "User"} <= in_flight
    assert all(0 < db[n].count_documents({}) <= BATCH * 4 for n in in_flight - {"Empty"})

    outputs, last = attempt(mongo_url, folder, tmp_path, progress)

    assert outputs is not None and outputs["verified"] == "counts+checksums"
    assert {n: collection_checksum(db, n) for n in COLLECTIONS} == expected_checksums(folder)
    assert last["done"] == COLLECTIONS and (last["current"], last["partial"]) == ("", [])


def test_insertion_workers_restore_one_collection_by_several_threads(
    mongo_url: str, dump: tuple[Path, Any], tmp_path: Path
) -> None:
    folder, db = dump
    params = MongoRestore.Params.model_validate(
        {"uri": mongo_url, "from": str(folder), "insertion_workers": 3, "parallel_collections": 2}
    )
    outputs = MongoRestore().run(StepContext(step_id="restore", params=params, workdir=tmp_path))

    assert outputs["verified"] == "counts+checksums"
    assert outputs["restored"] == {"Empty": 0, "Property": 200, "PropertyBankDetails": 42, "User": 60}
    assert {n: collection_checksum(db, n) for n in COLLECTIONS} == expected_checksums(folder)
    assert "email_1" in outputs["indexes"]["User"]
