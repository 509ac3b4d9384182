"""Our dumps and mongodump's are interchangeable.

Two halves. The format half always runs: it pins our output to mongodump's
directory layout (file names as Go's ``url.QueryEscape`` of the collection name,
long names cut to 208 bytes + ``%24`` + base64url(SHA-1), ``--gzip`` naming, the
``.metadata.json`` document in canonical extended JSON, plain concatenated BSON)
and restores a folder shaped as mongodump writes it (natural order, ``ns`` in
index specs, escaped names, a text index with its weights). The tools half runs
the real mongodump/mongorestore (100.x), from PATH or built by
``scripts/mongotools.py``; it skips, saying why, only when neither is possible
(the Go module proxy here refuses github.com/mongodb/mongo-tools).

mongorestore adds ``ns`` to every index spec it sends in ``createIndexes``, which
FerretDB 1.x refuses (``Index option "ns" is unknown``): on that server the
mongorestore tests skip naming that limit.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import SON, json_util

from migration.steps.base import StepContext
from migration.steps.mongo.backup import MongoBackup
from migration.steps.mongo.checksums import collection_checksum
from migration.steps.mongo.dumpfmt import bson_file_name, file_stem
from migration.steps.mongo.restore import MongoRestore

pytestmark = pytest.mark.mongo

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "scripts"))

import mongotools  # noqa: E402
from helpers import server_limit  # noqa: E402

METADATA_KEYS = ["options", "indexes", "uuid", "collectionName", "type"]  # mongodump's order

# Collection name -> file stem, as mongodump 100.x writes it: Go's url.QueryEscape
# (A-Z a-z 0-9 - _ . ~ kept, space -> "+", every other UTF-8 byte -> %XX upper-case).
ESCAPED = {
    "with space": "with+space",
    "odd:name@x+y=z": "odd%3Aname%40x%2By%3Dz",
    "odd name+x:y@z=1": "odd+name%2Bx%3Ay%40z%3D1",
    "ünï": "%C3%BCn%C3%AF",
    "a/b": "a%2Fb",
    "per%cent": "per%25cent",
    "dots.in.name": "dots.in.name",
    "tilde~dash-under_score": "tilde~dash-under_score",
}
# 60 x "ü" is 120 bytes (a short namespace on any server) but 360 escaped: over 238,
# so mongodump cuts it to 208 bytes + "%24" + base64url(SHA-1(name)), 27 characters.
LONG = "ü" * 60
# The cut falls inside an escape ("%C3%" + "%24..."): the stem no longer unescapes at
# all, so the name can only come from the metadata file, as mongorestore reads it.
LONG_STEM = "%C3%BC" * 34 + "%C3%" + "%24" + "tW85TjFTF0GKrymoFc4QxBdG19w"
NAMES = [*ESCAPED, LONG]


def backup(url: str, tmp_path: Path, **params: Any) -> dict[str, Any]:
    ctx = StepContext(
        step_id="backup", params=MongoBackup.Params(uri=url, out="backups", **params), workdir=tmp_path
    )
    return MongoBackup().run(ctx)


def restore(url: str, source: Path, tmp_path: Path, **params: Any) -> dict[str, Any]:
    model = MongoRestore.Params.model_validate({"uri": url, "from": str(source), **params})
    return MongoRestore().run(StepContext(step_id="restore", params=model, workdir=tmp_path))


def checksums(db: Any) -> dict[str, str]:
    return {name: collection_checksum(db, name) for name in sorted(db.list_collection_names())}


@pytest.fixture
def odd_names(mongo_db: Any) -> Any:
    for i, name in enumerate(NAMES):
        mongo_db[name].insert_many([{"_id": j, "i": i, "text": f"{name} {j}"} for j in range(5)])
    mongo_db["with space"].create_index([("i", 1), ("text", -1)], name="i_text")
    return mongo_db


def test_file_names_are_escaped_as_mongodump_escapes_them() -> None:
    """Rule: the stem is url.QueryEscape(name); escaped stems over 238 bytes become their
    first 208 bytes + "%24" + unpadded base64url(SHA-1(name)); ".bson", ".metadata.json"
    and their ".gz" forms share the stem (mongodump/prepare.go, outputPath)."""
    for name, stem in ESCAPED.items():
        assert file_stem(name) == stem
    assert bson_file_name("a/b", gzipped=True) == "a%2Fb.bson.gz"
    assert file_stem(LONG) == LONG_STEM and len(LONG_STEM) == 238
    long_stem = file_stem("x" * 300)
    assert len(long_stem) == 208 + 3 + 27 and long_stem[208:211] == "%24"


def test_dump_matches_the_documented_mongodump_layout(
    mongo_url: str, odd_names: Any, server_caps: Any, tmp_path: Path
) -> None:
    """Rule: <out>/<db>/<QueryEscape(name)>.bson holds the documents as concatenated BSON;
    <same stem>.metadata.json holds {options, indexes, uuid, collectionName, type} in
    canonical extended JSON; a long name's real name is its collectionName."""
    outputs = backup(mongo_url, tmp_path)

    dump_root = Path(outputs["path"]) / "mongodb-dump"
    assert [p.name for p in dump_root.iterdir()] == [odd_names.name], "only database folders"
    db_dir = dump_root / odd_names.name
    stems = {**ESCAPED, LONG: LONG_STEM}
    expected = {f"{stem}.bson" for stem in stems.values()}
    expected |= {f"{stem}.metadata.json" for stem in stems.values()}
    assert {p.name for p in db_dir.iterdir()} == expected
    for name, stem in stems.items():
        with open(db_dir / f"{stem}.bson", "rb") as handle:
            documents = list(bson.decode_file_iter(handle))
        assert documents == list(odd_names[name].find().sort("_id", 1))
        text = (db_dir / f"{stem}.metadata.json").read_text()
        raw = json.loads(text)
        with_uuid = server_caps.limit("collection_uuid") is None  # else none, as mongodump
        assert list(raw) == (METADATA_KEYS if with_uuid else [k for k in METADATA_KEYS if k != "uuid"])
        assert raw["collectionName"] == name and raw["type"] == "collection"
        assert raw["options"] == {}
        if with_uuid:
            assert len(raw["uuid"]) == 32 and int(raw["uuid"], 16) >= 0
        assert raw["indexes"][0] == {
            "v": {"$numberInt": "2"},
            "key": {"_id": {"$numberInt": "1"}},
            "name": "_id_",
        }
    spaced = json_util.loads((db_dir / "with+space.metadata.json").read_text())
    assert [dict(i["key"]) for i in spaced["indexes"]][1] == {"i": 1, "text": -1}


def test_gzip_dump_uses_mongodump_gzip_names_and_plain_gzip(
    mongo_url: str, odd_names: Any, tmp_path: Path
) -> None:
    """Rule (mongodump --gzip): the same escaped stem, ".gz" appended to both files,
    each a plain gzip stream of what the uncompressed file would hold."""
    outputs = backup(mongo_url, tmp_path, gzip=True)
    db_dir = Path(outputs["path"]) / "mongodb-dump" / odd_names.name
    assert sorted(p.name for p in db_dir.iterdir() if p.name.startswith("with")) == [
        "with+space.bson.gz",
        "with+space.metadata.json.gz",
    ]
    assert (db_dir / f"{LONG_STEM}.metadata.json.gz").is_file()
    content = gzip.decompress((db_dir / "with+space.bson.gz").read_bytes())
    assert len(bson.decode_all(content)) == 5
    metadata = json.loads(gzip.decompress((db_dir / "with+space.metadata.json.gz").read_bytes()))
    assert metadata["collectionName"] == "with space"


def write_mongodump_style(folder: Path, database: str, collections: dict[str, list[dict[str, Any]]]) -> None:
    """A dump as mongodump writes it: <out>/<db>/<QueryEscape(name)>.bson in natural order,
    metadata with ``ns`` in index specs (older servers), no manifest. The text index is
    as listIndexes returns it and mongodump keeps it: key {_fts: "text", _ftsx: 1} with
    ``weights``, ``default_language``, ``language_override`` and ``textIndexVersion``."""
    db_dir = folder / database
    db_dir.mkdir(parents=True)
    for name, documents in collections.items():
        stem = file_stem(name)
        (db_dir / f"{stem}.bson").write_bytes(b"".join(bson.encode(d) for d in documents))
        text_index = SON(
            [
                ("v", 2),
                ("key", SON([("_fts", "text"), ("_ftsx", 1)])),
                ("name", "code_text"),
                ("weights", SON([("code", 1)])),
                ("default_language", "english"),
                ("language_override", "language"),
                ("textIndexVersion", 3),
            ]
        )
        indexes = [
            SON([("v", 2), ("key", SON([("_id", 1)])), ("name", "_id_"), ("ns", f"{database}.{name}")]),
            SON([("v", 2), ("key", SON([("code", 1)])), ("name", "code_1"), ("unique", True)]),
            SON([("v", 2), ("key", SON([("at", 1)])), ("name", "at_ttl"), ("expireAfterSeconds", 3600)]),
            text_index,
        ]
        metadata = SON(
            [
                ("options", SON()),
                ("indexes", indexes),
                ("uuid", "0" * 32),
                ("collectionName", name),
                ("type", "collection"),
            ]
        )
        text = json_util.dumps(metadata, json_options=json_util.CANONICAL_JSON_OPTIONS)
        (db_dir / f"{stem}.metadata.json").write_text(text)


def test_restores_a_folder_shaped_as_mongodump_writes_it(
    mongo_url: str, mongo_db: Any, server_kind: Any, tmp_path: Path
) -> None:
    """Rule: a plain mongodump folder restores with names read back by url.QueryUnescape
    (a long name from collectionName), documents as in the files, and every index spec
    sent as the dump has it (as mongorestore does), except what the server's detected
    limits rule out (FerretDB 1.x: TTL option dropped, text index skipped, each warned)."""
    natural: list[dict[str, Any]] = [
        {"_id": 3, "code": "c"},
        {"_id": 1, "code": "a"},
        {"_id": 2, "code": "b"},
    ]
    collections = {"with space": natural, "odd name+x:y@z=1": natural[:2], LONG: natural[:1]}
    write_mongodump_style(tmp_path / "dump", mongo_db.name, collections)

    outputs = restore(mongo_url, tmp_path / "dump", tmp_path, drop=True)

    assert outputs["restored"] == {"with space": 3, "odd name+x:y@z=1": 2, LONG: 1}
    assert outputs["verified"] == "counts"
    assert list(mongo_db["with space"].find().sort("_id", 1)) == sorted(natural, key=lambda d: d["_id"])
    indexes = {i["name"]: i for i in mongo_db["with space"].list_indexes()}
    assert indexes["code_1"]["unique"] is True
    warnings = " | ".join(outputs["warnings"])
    if server_limit(server_kind, "text_indexes"):
        # FerretDB 1.x has no TTL or text indexes: the TTL index is made without the
        # option, the text index is skipped, each with a warning naming the server.
        assert set(indexes) == {"_id_", "code_1", "at_ttl"}
        assert "expireAfterSeconds" not in indexes["at_ttl"]
        assert "index with space.at_ttl: FerretDB does not support expireAfterSeconds" in warnings
        assert "index with space.code_text not created: FerretDB cannot" in warnings
        assert server_kind.name in warnings
    else:
        assert set(indexes) == {"_id_", "code_1", "at_ttl", "code_text"}, warnings
        assert indexes["at_ttl"]["expireAfterSeconds"] == 3600
        assert dict(indexes["code_text"]["weights"]) == {"code": 1}
        assert indexes["code_text"]["default_language"] == "english"


# --- the real tools ----------------------------------------------------------------


@pytest.fixture(scope="session")
def mongo_tools() -> Path:
    try:
        return mongotools.install()
    except mongotools.ToolsUnavailable as exc:
        # Ends the day the tools can be had: on PATH, or buildable from the Go proxy.
        pytest.skip(
            f"mongodump/mongorestore unavailable: {exc}; put both on PATH (or let scripts/mongotools.py "
            "build them from the Go module proxy) to run these tests"
        )


def skip_if_mongorestore_cannot_create_indexes(kind: Any) -> None:
    """mongorestore adds ``ns`` to every index spec it sends; FerretDB 1.x refuses it."""
    reason = server_limit(kind, "index_ns_option")
    if reason is not None:
        pytest.skip(f"mongorestore cannot restore indexes here: {reason}")


def run_tool(tool: Path, *args: str) -> None:
    done = subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_our_dump_restores_with_mongorestore(
    mongo_tools: Path, server_kind: Any, mongo_url: str, odd_names: Any, tmp_path: Path
) -> None:
    """Rule: mongorestore maps each of our files back to its collection by
    url.QueryUnescape of the stem ("+" is a space, "%2B" a plus), a long name by the
    collectionName of its metadata: every collection comes back under its own name."""
    skip_if_mongorestore_cannot_create_indexes(server_kind)
    before = checksums(odd_names)
    outputs = backup(mongo_url, tmp_path)
    for name in NAMES:
        odd_names[name].delete_many({})

    # The runbook's rollback: mongorestore --drop <backup>/mongodb-dump (URI names the database).
    dump_db = Path(outputs["path"]) / "mongodb-dump" / odd_names.name
    run_tool(mongo_tools / "mongorestore", f"--uri={mongo_url}", "--drop", str(dump_db))

    assert checksums(odd_names) == before


def test_mongodump_output_restores_with_ours(
    mongo_tools: Path, mongo_url: str, odd_names: Any, tmp_path: Path
) -> None:
    """Rule: we read mongodump's file names with url.QueryUnescape (and collectionName
    for a truncated one), so each collection restores under its own name."""
    before = {name: odd_names[name].count_documents({}) for name in NAMES}
    run_tool(mongo_tools / "mongodump", f"--uri={mongo_url}", f"--out={tmp_path / 'dump'}")
    db_dir = tmp_path / "dump" / odd_names.name
    assert {p.name for p in db_dir.glob("*.bson")} == {f"{file_stem(n)}.bson" for n in NAMES}
    for name in NAMES:
        odd_names[name].insert_one({"_id": "extra"})

    outputs = restore(mongo_url, tmp_path / "dump", tmp_path, drop=True)

    assert outputs["restored"] == before
    assert any("no checksums" in w for w in outputs["warnings"])


def test_tool_modes_round_trip(
    mongo_tools: Path, server_kind: Any, mongo_url: str, odd_names: Any, tmp_path: Path
) -> None:
    """Rule: tool: mongodump finds the files mongodump wrote under url.QueryEscape names;
    tool: mongorestore restores each into the collection the manifest names."""
    skip_if_mongorestore_cannot_create_indexes(server_kind)
    before = checksums(odd_names)
    env_path = f"{mongo_tools}:{Path(sys.executable).parent}"
    ctx = StepContext(
        step_id="backup",
        params=MongoBackup.Params(uri=mongo_url, out="backups", tool="mongodump", verify="checksums"),
        workdir=tmp_path,
        env={"PATH": env_path},
    )
    outputs = MongoBackup().run(ctx)
    for name in NAMES:
        odd_names[name].delete_many({})
    model = MongoRestore.Params.model_validate(
        {"uri": mongo_url, "from": outputs["path"], "drop": True, "tool": "mongorestore"}
    )
    restored = MongoRestore().run(
        StepContext(step_id="restore", params=model, workdir=tmp_path, env={"PATH": env_path})
    )
    assert restored["verified"] == "counts+checksums"
    assert checksums(odd_names) == before
