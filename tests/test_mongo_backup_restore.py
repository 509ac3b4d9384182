"""mongo.backup and mongo.restore against the real test server: round trips, bad input."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, Int64, ObjectId, Regex, Timestamp
from bson import encode as bson_encode
from helpers import SMALL_FS_SKIP, tmpfs, umount
from pymongo.errors import DuplicateKeyError

from migration.errors import Interrupted, StepError
from migration.steps.base import ProgressReporter, StepContext
from migration.steps.mongo.backup import MongoBackup
from migration.steps.mongo.checksums import collection_checksum
from migration.steps.mongo.dumpfmt import BACKUP_NAME, MANIFEST_NAME
from migration.steps.mongo.restore import MongoRestore

pytestmark = pytest.mark.mongo

PROJECT = Path(__file__).resolve().parent.parent
COLLECTIONS = ["Empty", "Property", "PropertyBankDetails", "User"]


@dataclass
class HookedContext(StepContext[Any]):
    """A context that calls ``hook`` (once) after the first advance of progress bar ``hook_on``."""

    hook: Callable[[], None] | None = None
    hook_on: str = ""

    @contextmanager
    def progress_bar(self, description: str, total: int | None) -> Iterator[ProgressReporter]:
        with super().progress_bar(description, total) as bar:
            advance = bar.advance

            def hooked(n: int = 1) -> None:
                advance(n)
                if self.hook is not None and description == self.hook_on:
                    hook, self.hook = self.hook, None
                    hook()

            bar.advance = hooked  # type: ignore[method-assign]
            yield bar


def backup_ctx(tmp_path: Path, **params: Any) -> StepContext[MongoBackup.Params]:
    params.setdefault("out", "backups")
    return StepContext(step_id="backup", params=MongoBackup.Params(**params), workdir=tmp_path)


def restore_ctx(tmp_path: Path, **params: Any) -> StepContext[MongoRestore.Params]:
    model = MongoRestore.Params.model_validate(params)
    return StepContext(step_id="restore", params=model, workdir=tmp_path)


def checksums(db: Any) -> dict[str, str]:
    return {name: collection_checksum(db, name) for name in sorted(db.list_collection_names())}


def seed(db: Any) -> None:
    """Several collections, indexes (unique, compound), nested documents, many BSON types."""
    users = [
        {
            "_id": ObjectId(),
            "email": f"user{i}@example.com",
            "name": f"Ünïcødé user {i} ✓",
            "created": datetime.datetime(2024, 1, 1, 12, 30, 15, 123000) + datetime.timedelta(days=i),
            "born": datetime.datetime(1950, 5, 1, 0, 0, 0, 7000),
            "avatar": Binary(bytes(range(i % 50)), 0),
            "uuid": Binary(uuid.UUID(int=i).bytes, 4),
            "balance": Int64(2**62 - i),
            "score": i + 0.25,
            "rank": i,
            "active": i % 2 == 0,
            "deleted_at": None,
            "pattern": Regex("^user[0-9]+$", "i"),
            "seen": Timestamp(1_700_000_000 + i, 1),
            "address": {"street": f"{i} Main St", "geo": {"lat": 52.5, "lng": 13.4}},
            "tags": ["a", "b", i, {"k": "v"}],
            "nothing": [],
            "empty": {},
        }
        for i in range(60)
    ]
    db.User.insert_many(users)
    db.User.create_index("email", unique=True)
    db.User.create_index([("rank", 1), ("active", -1)], name="rank_active")
    db.Property.insert_many(
        [{"_id": f"prop-{i:04d}", "name": f"Hotel {i}", "rooms": i * 3} for i in range(200)]
    )
    db.Property.create_index([("name", 1)])
    db.PropertyBankDetails.insert_many(
        [
            {"_id": i, "propertyId": f"prop-{i:04d}", "swift_bic_iban": f"DEUTDEFF DE{i:020d}"}
            for i in range(42)
        ]
    )
    db.create_collection("Empty")


@pytest.fixture
def seeded(mongo_db: Any) -> Any:
    seed(mongo_db)
    return mongo_db


def test_backup_writes_mongodump_layout_manifest_and_stats(
    mongo_url: str, seeded: Any, tmp_path: Path, server_caps: Any
) -> None:
    outputs = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url))

    folder = Path(outputs["path"])
    assert folder.parent == tmp_path / "backups"
    assert BACKUP_NAME.match(folder.name)
    assert outputs["total_records"] == 60 + 200 + 42
    assert outputs["collections"] == {"Empty": 0, "Property": 200, "PropertyBankDetails": 42, "User": 60}
    assert outputs["verified"] == "counts"
    dump = folder / "mongodb-dump" / seeded.name
    assert sorted(p.name for p in dump.iterdir()) == sorted(
        [f"{c}.bson" for c in COLLECTIONS] + [f"{c}.metadata.json" for c in COLLECTIONS]
    )
    assert (dump / "Empty.bson").stat().st_size == 0
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["totalRecords"] == 302
    assert manifest["database"] == seeded.name
    assert manifest["server_version"]
    assert manifest["created_at"].endswith("Z")
    assert manifest["collections"]["User"]["count"] == 60
    live = checksums(seeded)
    for name in COLLECTIONS:
        assert manifest["collections"][name]["sha256"] == live[name]
    assert outputs["bytes"] == sum(e["bytes"] for e in manifest["collections"].values())
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["collections"] == outputs["collections"]
    metadata = json.loads((dump / "User.metadata.json").read_text())
    # mongodump leaves uuid out when the server gives collections none.
    with_uuid = server_caps.limit("collection_uuid") is None
    assert list(metadata) == [
        "options",
        "indexes",
        *(["uuid"] if with_uuid else []),
        "collectionName",
        "type",
    ]
    assert {i["name"] for i in metadata["indexes"]} == {"_id_", "email_1", "rank_active"}
    assert not list((tmp_path / "backups").glob("*.partial"))


def test_round_trip_restores_identical_checksums_after_data_changed(
    mongo_url: str, seeded: Any, tmp_path: Path
) -> None:
    before = checksums(seeded)
    backup = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url, verify="checksums"))
    # What a transform, a schema push and a stray write would do.
    seeded.PropertyBankDetails.update_many({}, {"$set": {"iban_number": "X"}})
    seeded.PropertyBankDetails.update_many({}, {"$unset": {"swift_bic_iban": ""}})
    seeded.User.delete_many({"rank": {"$lt": 10}})
    seeded.Property.insert_one({"_id": "prop-new", "name": "New"})
    seeded.Empty.insert_one({"_id": 1})
    seeded.User.drop_index("rank_active")
    seeded.Unrelated.insert_one({"_id": 1, "keep": True})
    assert checksums(seeded)["PropertyBankDetails"] != before["PropertyBankDetails"]

    outputs = MongoRestore().run(restore_ctx(tmp_path, uri=mongo_url, **{"from": backup["path"]}, drop=True))

    after = checksums(seeded)
    assert {k: after[k] for k in before} == before
    assert outputs["verified"] == "counts+checksums"
    assert outputs["restored"] == backup["collections"]
    assert outputs["left_alone"] == ["Unrelated"]
    assert seeded.Unrelated.find_one({"_id": 1}) == {"_id": 1, "keep": True}
    indexes = {i["name"]: i for i in seeded.User.list_indexes()}
    assert indexes["email_1"]["unique"] is True
    assert list(indexes["rank_active"]["key"].items()) == [("rank", 1), ("active", -1)]
    with pytest.raises(DuplicateKeyError) as refused:  # the unique index is back
        seeded.User.insert_one({"email": "user20@example.com"})
    assert refused.value.code == 11000  # the code every server shares, not its wording


def test_gzip_backup_verified_by_restore_round_trips(mongo_url: str, seeded: Any, tmp_path: Path) -> None:
    before = checksums(seeded)
    client = seeded.client
    databases_before = set(client.list_database_names())

    backup = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url, gzip=True, verify="restore"))

    assert backup["verified"] == "restore"
    assert set(client.list_database_names()) == databases_before, "scratch database left behind"
    dump = Path(backup["path"]) / "mongodb-dump" / seeded.name
    assert (dump / "User.bson.gz").exists() and (dump / "User.metadata.json.gz").exists()
    assert not list(dump.glob("*.bson"))
    seeded.drop_collection("User")
    MongoRestore().run(restore_ctx(tmp_path, uri=mongo_url, **{"from": backup["path"]}, drop=True))
    assert checksums(seeded) == before


def test_backup_subset_of_collections(mongo_url: str, seeded: Any, tmp_path: Path) -> None:
    outputs = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url, collections=["User", "Property"]))
    assert outputs["collections"] == {"Property": 200, "User": 60}
    with pytest.raises(StepError, match=r"collections not found in database .*: Nope"):
        MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url, collections=["User", "Nope"]))


def test_restore_subset_leaves_other_collections_alone(mongo_url: str, seeded: Any, tmp_path: Path) -> None:
    backup = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url))
    seeded.User.delete_many({})
    seeded.Property.delete_many({})
    outputs = MongoRestore().run(
        restore_ctx(tmp_path, uri=mongo_url, **{"from": backup["path"]}, drop=True, collections=["User"])
    )
    assert outputs["restored"] == {"User": 60}
    assert seeded.User.count_documents({}) == 60
    assert seeded.Property.count_documents({}) == 0
    assert "Property" in outputs["left_alone"]


def test_writes_during_backup_fail_it_and_leave_no_backup(
    mongo_url: str, seeded: Any, tmp_path: Path
) -> None:
    # One collection at a time, so User (dumped last) is read after the late write.
    ctx = HookedContext(
        step_id="backup",
        params=MongoBackup.Params(uri=mongo_url, out="backups", parallel_collections=1),
        workdir=tmp_path,
        hook=lambda: seeded.User.insert_one({"email": "late@example.com"}),
        hook_on="backup",
    )
    with pytest.raises(StepError) as failure:
        MongoBackup().run(ctx)

    message = str(failure.value)
    assert "documents changed during the backup: User (before 60, dumped 61, after 61)" in message
    assert "something is still writing" in message
    assert "was removed" in message
    assert list((tmp_path / "backups").iterdir()) == []


def test_keep_prunes_older_backups_never_the_new_one(mongo_url: str, seeded: Any, tmp_path: Path) -> None:
    out = tmp_path / "backups"
    out.mkdir()
    for old in ("backup-2020-01-01T00-00-00-000Z", "backup-2021-01-01T00-00-00-000Z"):
        (out / old / "mongodb-dump").mkdir(parents=True)
    (out / "not-a-backup").mkdir()
    (out / "backup-notes.txt").write_text("keep me")

    first = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url, keep=2))
    assert first["pruned"] == ["backup-2020-01-01T00-00-00-000Z"]
    second = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url, keep=1))

    assert second["pruned"] == sorted(["backup-2021-01-01T00-00-00-000Z", Path(first["path"]).name])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [Path(second["path"]).name, "not-a-backup", "backup-notes.txt"]
    )


def test_backup_preview_writes_nothing(mongo_url: str, seeded: Any, tmp_path: Path) -> None:
    text = MongoBackup().preview(backup_ctx(tmp_path, uri=mongo_url, gzip=True))
    assert "would dump 4 collections" in text
    assert "PropertyBankDetails: 42 documents" in text
    assert "free disk at" in text
    assert list(tmp_path.iterdir()) == []


def test_asking_for_mongodump_when_missing_is_a_clear_error(mongo_url: str, tmp_path: Path) -> None:
    ctx = backup_ctx(tmp_path, uri=mongo_url, tool="mongodump")
    ctx.env = {"PATH": str(tmp_path)}
    with pytest.raises(StepError, match="tool: mongodump was asked for, but mongodump is not on PATH"):
        MongoBackup().run(ctx)
    assert not (tmp_path / "backups").exists()


# --- bad input: refused before anything is dropped ---------------------------------


@pytest.fixture
def backed_up(mongo_url: str, seeded: Any, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A backup, then changed data whose checksums a refused restore must leave as they are."""
    backup = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url))
    seeded.PropertyBankDetails.update_many({}, {"$set": {"transformed": True}})
    return Path(backup["path"]), checksums(seeded)


def refuse(url: str, folder: Path, tmp_path: Path, db: Any, changed: dict[str, str], **kw: Any) -> str:
    with pytest.raises(StepError) as failure:
        MongoRestore().run(restore_ctx(tmp_path, uri=url, **{"from": str(folder)}, drop=True, **kw))
    assert checksums(db) == changed, "a refused restore changed the database"
    message = str(failure.value)
    assert "\n" not in message
    return message


def test_missing_manifest_is_refused(mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path) -> None:
    folder, changed = backed_up
    (folder / MANIFEST_NAME).unlink()
    message = refuse(mongo_url, folder, tmp_path, seeded, changed)
    assert "backup-manifest.json is missing" in message
    assert "nothing was changed" in message


def test_corrupt_manifest_is_refused(mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path) -> None:
    folder, changed = backed_up
    text = (folder / MANIFEST_NAME).read_text()
    (folder / MANIFEST_NAME).write_text(text[: len(text) // 2])
    assert "is corrupt (not valid JSON" in refuse(mongo_url, folder, tmp_path, seeded, changed)


def test_manifest_with_wrong_count_is_refused(
    mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path
) -> None:
    folder, changed = backed_up
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["collections"]["User"]["count"] = 61
    manifest["totalRecords"] += 1
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    message = refuse(mongo_url, folder, tmp_path, seeded, changed)
    assert "User.bson holds 60 documents, the manifest says 61" in message


def test_truncated_bson_is_refused(mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path) -> None:
    folder, changed = backed_up
    bson_file = folder / "mongodb-dump" / seeded.name / "User.bson"
    os.truncate(bson_file, bson_file.stat().st_size - 10)
    message = refuse(mongo_url, folder, tmp_path, seeded, changed)
    assert "User.bson is truncated: document 60" in message
    assert message.startswith("refusing to restore from ")


def test_bson_with_a_changed_byte_is_refused(
    mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path
) -> None:
    folder, changed = backed_up
    bson_file = folder / "mongodb-dump" / seeded.name / "Property.bson"
    data = bytearray(bson_file.read_bytes())
    at = data.index(b"Hotel 7")
    data[at] = ord("M")
    bson_file.write_bytes(bytes(data))
    assert "Property.bson does not match its checksum" in refuse(mongo_url, folder, tmp_path, seeded, changed)


def test_missing_bson_file_is_refused(mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path) -> None:
    folder, changed = backed_up
    (folder / "mongodb-dump" / seeded.name / "Empty.bson").unlink()
    assert "Empty.bson is missing" in refuse(mongo_url, folder, tmp_path, seeded, changed)


def test_dump_of_another_database_is_refused_unless_allowed(
    mongo_server: Any, seeded: Any, backed_up: Any, tmp_path: Path
) -> None:
    folder, _ = backed_up
    other_name = "t_other_" + uuid.uuid4().hex[:8]
    other_url = mongo_server.database_url(other_name)
    other = seeded.client[other_name]
    try:
        other.User.insert_one({"_id": "precious"})
        message = refuse(other_url, folder, tmp_path, other, checksums(other))
        assert f"the dump is of database {seeded.name}, the URI names {other_name}" in message
        assert "allow_other_database: true" in message

        outputs = MongoRestore().run(
            restore_ctx(
                tmp_path, uri=other_url, **{"from": str(folder)}, drop=True, allow_other_database=True
            )
        )
        assert outputs["restored"]["User"] == 60
        assert other.User.find_one({"_id": "precious"}) is None
    finally:
        seeded.client.drop_database(other_name)


def test_restore_without_drop_refuses_collections_holding_data(
    mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path
) -> None:
    folder, changed = backed_up
    with pytest.raises(StepError, match="already hold data; set drop: true") as failure:
        MongoRestore().run(restore_ctx(tmp_path, uri=mongo_url, **{"from": str(folder)}))
    assert "PropertyBankDetails (42 documents)" in str(failure.value)
    assert checksums(seeded) == changed


def test_restore_into_an_empty_database_without_drop(
    mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path
) -> None:
    folder, _ = backed_up
    for name in COLLECTIONS:
        seeded.drop_collection(name)
    outputs = MongoRestore().run(restore_ctx(tmp_path, uri=mongo_url, **{"from": str(folder)}))
    assert outputs["dropped"] == []
    assert outputs["total"] == 302
    assert "Empty" in seeded.list_collection_names()


def test_restore_preview_checks_the_dump_and_changes_nothing(
    mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path
) -> None:
    folder, changed = backed_up
    text = MongoRestore().preview(restore_ctx(tmp_path, uri=mongo_url, **{"from": str(folder)}, drop=True))
    assert "files intact" in text
    assert "PropertyBankDetails: drop and restore 42 documents" in text
    os.truncate(folder / "mongodb-dump" / seeded.name / "User.bson", 100)
    text = MongoRestore().preview(restore_ctx(tmp_path, uri=mongo_url, **{"from": str(folder)}, drop=True))
    assert text.startswith("would REFUSE: refusing to restore")
    assert checksums(seeded) == changed


def test_interrupted_restore_resumes_without_drop(
    mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path
) -> None:
    folder, _ = backed_up
    expected = {n: c for n, c in json.loads((folder / MANIFEST_NAME).read_text())["collections"].items()}
    for name in COLLECTIONS:
        seeded.drop_collection(name)
    recorded: list[dict[str, Any]] = []
    ctx = HookedContext(
        step_id="restore",
        params=MongoRestore.Params.model_validate({"uri": mongo_url, "from": str(folder)}),
        workdir=tmp_path,
        on_progress=recorded.append,
        hook_on="restoring",
    )
    ctx.hook = lambda: ctx.stop_flag.set("SIGTERM")
    with pytest.raises(Interrupted):
        MongoRestore().run(ctx)
    assert recorded and recorded[-1]["current"]

    again = restore_ctx(tmp_path, uri=mongo_url, **{"from": str(folder)})
    again.resume = recorded[-1]
    outputs = MongoRestore().run(again)
    assert outputs["verified"] == "counts+checksums"
    assert {n: collection_checksum(seeded, n) for n in COLLECTIONS} == {
        n: e["checksum"] for n, e in expected.items()
    }


def test_plain_dump_folder_without_manifest_restores_with_a_warning(
    mongo_url: str, seeded: Any, backed_up: Any, tmp_path: Path
) -> None:
    folder, _ = backed_up
    plain = tmp_path / "plain-dump"
    shutil.copytree(folder / "mongodb-dump", plain)
    outputs = MongoRestore().run(restore_ctx(tmp_path, uri=mongo_url, **{"from": str(plain)}, drop=True))
    assert outputs["verified"] == "counts"
    assert outputs["restored"]["User"] == 60
    assert any("no backup-manifest.json" in w and "no checksums" in w for w in outputs["warnings"])


# --- a disk that fills while the backup is written ---------------------------------

DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from migration.errors import StepError
    from migration.steps.base import StepContext
    from migration.steps.mongo.backup import MongoBackup

    url, workdir, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    # Python ignores SIGXFSZ, so writing past the limit fails with EFBIG.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    ctx = StepContext(step_id="backup", params=MongoBackup.Params(uri=url, out="backups"),
                      workdir=workdir)
    try:
        MongoBackup().run(ctx)
        print(json.dumps({"error": None}))
    except StepError as exc:
        print(json.dumps({"error": str(exc)}))
    """
)


def test_disk_filling_up_during_backup_fails_cleanly(mongo_url: str, mongo_db: Any, tmp_path: Path) -> None:
    mongo_db.Big.insert_many([{"_id": i, "payload": "x" * 1000} for i in range(200)])
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, mongo_url, str(tmp_path), str(64 * 1024)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    error = json.loads(done.stdout.strip().splitlines()[-1])["error"]
    assert error is not None
    assert error.startswith(f"disk full while writing the backup in {tmp_path / 'backups'} (File too large")
    assert "was removed" in error
    assert list((tmp_path / "backups").iterdir()) == []


def test_backup_onto_a_full_filesystem_fails_cleanly(mongo_url: str, mongo_db: Any, tmp_path: Path) -> None:
    small = tmp_path / "small-disk"
    if not tmpfs(small, "256k"):
        # Without root, test_disk_filling_up_during_backup_fails_cleanly (RLIMIT_FSIZE) covers it.
        pytest.skip(SMALL_FS_SKIP)
    try:
        mongo_db.Big.insert_many([{"_id": i, "payload": "y" * 1000} for i in range(400)])
        with pytest.raises(StepError) as failure:
            MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url, out=str(small)))
        message = str(failure.value)
        assert message.startswith(f"disk full while writing the backup in {small} (No space left")
        assert "was removed" in message
        assert list(small.iterdir()) == []
    finally:
        umount(small)


@pytest.mark.slow
def test_memory_stays_flat_however_large_the_collection(
    mongo_url: str, mongo_db: Any, tmp_path: Path
) -> None:
    import tracemalloc

    from bson.raw_bson import RawBSONDocument

    payload = "z" * 1000
    for start in range(0, 30_000, 5000):
        mongo_db.Big.insert_many(
            [RawBSONDocument(bson_encode({"_id": i, "p": payload})) for i in range(start, start + 5000)]
        )
    tracemalloc.start()
    try:
        backup = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url))
        _, backup_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        MongoRestore().run(restore_ctx(tmp_path, uri=mongo_url, **{"from": backup["path"]}, drop=True))
        _, restore_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert backup["bytes"] > 30_000_000
    # About 30 MB went through each way; a copy in memory would show here. The
    # restore holds a bounded number of insert batches (the queue of 2 a worker, the
    # one being sent and its encoded command): ~1 MB each where a server takes 1,000
    # documents an insert, so up to ~9 MB there whatever the collection's size.
    assert backup_peak < 8_000_000
    assert restore_peak < 12_000_000


def test_raw_batches_are_the_bytes_find_raw_batches_gives(
    seeded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from migration.steps.mongo import checksums as raw

    monkeypatch.setattr(raw, "READ_BATCH_DOCS", 7)  # several getMores, a short last batch
    for name in COLLECTIONS:
        ours = list(raw.raw_batches(seeded, name))
        theirs = b"".join(seeded[name].find_raw_batches(sort=[("_id", 1)], batch_size=7))
        assert b"".join(ours) == theirs
        assert all(raw.count_in_buffer(batch) <= 7 for batch in ours)
        assert len(ours) == -(-seeded[name].count_documents({}) // 7)


def test_restore_verifies_by_dbhash_where_the_server_has_it_else_reads_back(
    mongo_url: str, seeded: Any, tmp_path: Path
) -> None:
    from migration.steps.mongo.common import detect_server
    from migration.steps.mongo.restore_data import has_dbhash

    folder = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url))["path"]
    server = detect_server(seeded.client)
    outputs = MongoRestore().run(restore_ctx(tmp_path, uri=mongo_url, drop=True, **{"from": folder}))

    assert outputs["verified"] == "counts+checksums"
    if server.ferretdb1:  # FerretDB 1.x has no dbHash (CommandNotFound)
        assert not has_dbhash(seeded)
        assert set(outputs["verified_by"].values()) == {"read-back"}
    elif has_dbhash(seeded):
        assert set(outputs["verified_by"].values()) == {"dbHash"}
    counts_only = MongoRestore().run(
        restore_ctx(tmp_path, uri=mongo_url, drop=True, verify="counts", **{"from": folder})
    )
    assert counts_only["verified"] == "counts"
    assert set(counts_only["verified_by"].values()) == {"count"}
