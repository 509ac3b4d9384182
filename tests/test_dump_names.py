"""Dump file names are exactly mongodump's, in both directions, for every collection name.

The rule (mongo-tools ``common/util/file.go`` and ``mongodump/prepare.go``): the file
stem is Go's ``url.QueryEscape(name)`` (``A-Z a-z 0-9 - _ . ~`` kept, space -> ``+``,
every other UTF-8 byte -> ``%XX`` upper-case); an escaped stem over 238 bytes becomes
its first 208 bytes + ``%24`` + unpadded base64url(SHA-1(name)), the real name then
read from ``collectionName`` in the metadata file. mongorestore reads stems back with
``url.QueryUnescape``. Backups this project wrote before used ``url.PathEscape``
(``$ & + : = @`` kept, space -> ``%20``); they still restore.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migration.steps.base import StepContext
from migration.steps.mongo.backup import MongoBackup
from migration.steps.mongo.checksums import collection_checksum
from migration.steps.mongo.dumpfmt import MANIFEST_NAME, DumpError, dumped_files
from migration.steps.mongo.dumpnames import (
    BadFileName,
    collection_name,
    file_stem,
    is_truncated,
    legacy_file_stem,
    query_escape,
    query_unescape,
)
from migration.steps.mongo.restore import MongoRestore

# The examples measured with mongodump 100.18.0 (issue 10) and Go's documented rules.
KNOWN = {
    "odd:name@x+y=z": "odd%3Aname%40x%2By%3Dz",
    "odd name+x:y@z=1": "odd+name%2Bx%3Ay%40z%3D1",
    "with space": "with+space",
    "a/b": "a%2Fb",
    "per%cent": "per%25cent",
    "ünï": "%C3%BCn%C3%AF",
    "dots.in.name": "dots.in.name",
    "a~b-c_d": "a~b-c_d",
    "price$": "price%24",
    "x&y,z;w?v": "x%26y%2Cz%3Bw%3Fv",
}

AWKWARD = " +%:@=/.$&~-_?#,;'\"\\*ü€😀"
# Any name (the escaping is total), weighted towards the characters that matter and
# towards names long enough to be cut. No NUL (no server allows it) and no surrogates
# (not text).
names = st.text(
    alphabet=st.one_of(
        st.sampled_from(AWKWARD),
        st.sampled_from(string.ascii_letters + string.digits),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    ),
    min_size=1,
    max_size=300,
)


def test_known_examples_escape_exactly() -> None:
    for name, stem in KNOWN.items():
        assert query_escape(name) == stem
        assert file_stem(name) == stem
        assert query_unescape(stem) == name


@given(names)
def test_escape_is_go_query_escape_and_unescape_inverts_it(name: str) -> None:
    escaped = query_escape(name)
    # Python's quote_plus with nothing extra safe follows the same RFC 3986 rule as Go's
    # QueryEscape: an independent oracle for every generated name.
    assert escaped == quote_plus(name, safe="")
    assert set(escaped) <= set(string.ascii_letters + string.digits + "-_.~+%")
    assert query_unescape(escaped) == name
    assert " " not in escaped and ("+" in escaped) == (" " in name)


@given(names)
def test_file_stems_are_cut_as_mongodump_cuts_them_and_read_back(name: str) -> None:
    escaped = query_escape(name)
    stem = file_stem(name)
    if len(escaped) <= 238:
        assert stem == escaped and not is_truncated(stem)
        assert collection_name(stem, None) == name  # from the file name alone
    else:
        digest = base64.urlsafe_b64encode(hashlib.sha1(name.encode()).digest()).decode().rstrip("=")
        assert stem == escaped[:208] + "%24" + digest
        assert len(stem) == 238 and is_truncated(stem)
        with pytest.raises(BadFileName, match="names no collectionName"):
            collection_name(stem, None)
    assert collection_name(stem, name) == name  # with the metadata's collectionName
    assert collection_name(legacy_file_stem(name), name) == name  # a backup named the old way


def test_a_renamed_file_restores_under_its_file_name_as_with_mongorestore() -> None:
    assert collection_name("new+name", "old name") == "new name"


@pytest.mark.parametrize("stem", ["%zz", "abc%4", "abc%", "%FF"])
def test_names_mongorestore_cannot_read_are_refused(stem: str) -> None:
    with pytest.raises(BadFileName):
        query_unescape(stem)


def test_dumped_files_are_found_under_either_naming(tmp_path: Path) -> None:
    name = "odd:name@x+y=z"
    for stem in (file_stem(name), legacy_file_stem(name)):
        folder = tmp_path / stem.replace("%", "_")
        folder.mkdir()
        (folder / f"{stem}.bson.gz").write_bytes(b"")
        assert dumped_files(folder, name, gzipped=True) == (
            folder / f"{stem}.bson.gz",
            folder / f"{stem}.metadata.json.gz",
        )
    with pytest.raises(DumpError, match=r"looked for odd%3Aname%40x%2By%3Dz.bson, odd:name@x\+y=z.bson"):
        dumped_files(tmp_path, name, gzipped=False)


# --- on the server -------------------------------------------------------------------

# Awkward names every server allows ("$" is not allowed in collection names), and long
# ones: short as names (a namespace stays under 255 bytes) but over 238 bytes escaped.
SERVER_NAMES = [
    "odd:name@x+y=z",
    "odd name+x:y@z=1",
    "per%cent 100%",
    "a/b=c&d",
    "ünï €",
    "ü" * 60,
    "+" * 90,
    "x%" * 60,
]


def _checksums(db: Any) -> dict[str, str]:
    return {name: collection_checksum(db, name) for name in sorted(db.list_collection_names())}


def _restore(url: str, source: Path, tmp_path: Path) -> dict[str, Any]:
    model = MongoRestore.Params.model_validate({"uri": url, "from": str(source), "drop": True})
    return MongoRestore().run(StepContext(step_id="restore", params=model, workdir=tmp_path))


@pytest.fixture
def awkward(mongo_db: Any) -> Any:
    for i, name in enumerate(SERVER_NAMES):
        mongo_db[name].insert_many([{"_id": j, "i": i, "name": name} for j in range(i + 1)])
    return mongo_db


@pytest.mark.mongo
def test_awkward_and_long_names_round_trip_through_backup_and_restore(
    mongo_url: str, awkward: Any, tmp_path: Path
) -> None:
    before = _checksums(awkward)
    params = MongoBackup.Params(uri=mongo_url, out="backups", gzip=True)
    outputs = MongoBackup().run(StepContext(step_id="backup", params=params, workdir=tmp_path))
    db_dir = Path(outputs["path"]) / "mongodb-dump" / awkward.name
    assert {p.name for p in db_dir.iterdir()} == {
        f"{file_stem(n)}{suffix}" for n in SERVER_NAMES for suffix in (".bson.gz", ".metadata.json.gz")
    }
    assert sum(is_truncated(file_stem(n)) for n in SERVER_NAMES) == 3
    for name in SERVER_NAMES:
        awkward.drop_collection(name)

    restored = _restore(mongo_url, Path(outputs["path"]), tmp_path)

    assert restored["verified"] == "counts+checksums"
    assert _checksums(awkward) == before

    # The same files without the manifest (a plain mongodump folder): names come back
    # from the file names, and from collectionName for the truncated ones.
    plain = tmp_path / "plain"
    shutil.copytree(db_dir.parent, plain)
    for name in SERVER_NAMES:
        awkward[name].insert_one({"_id": "extra"})
    restored = _restore(mongo_url, plain, tmp_path)
    assert restored["verified"] == "counts"
    assert _checksums(awkward) == before


@pytest.mark.mongo
def test_a_backup_written_with_the_old_naming_still_restores(
    mongo_url: str, awkward: Any, tmp_path: Path
) -> None:
    before = _checksums(awkward)
    params = MongoBackup.Params(uri=mongo_url, out="backups")
    folder = Path(MongoBackup().run(StepContext(step_id="backup", params=params, workdir=tmp_path))["path"])
    # Rewrite it as this project wrote backups before: PathEscape stems, manifest to match.
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for name, entry in manifest["collections"].items():
        for key, suffix in (("file", ".bson"), ("metadata", ".metadata.json")):
            old = entry[key].rsplit("/", 1)[0] + "/" + legacy_file_stem(name) + suffix
            (folder / entry[key]).rename(folder / old)
            entry[key] = old
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    db_dir = folder / "mongodb-dump" / awkward.name
    assert (db_dir / "odd:name@x+y=z.bson").is_file() and (db_dir / "odd%20name+x:y@z=1.bson").is_file()
    for name in SERVER_NAMES:
        awkward.drop_collection(name)

    assert _restore(mongo_url, folder, tmp_path)["verified"] == "counts+checksums"
    assert _checksums(awkward) == before

    # Without its manifest the old folder restores too: the metadata names each collection.
    for name in SERVER_NAMES:
        awkward.drop_collection(name)
    assert _restore(mongo_url, db_dir, tmp_path)["restored"] == {n: i + 1 for i, n in enumerate(SERVER_NAMES)}
    assert _checksums(awkward) == before
