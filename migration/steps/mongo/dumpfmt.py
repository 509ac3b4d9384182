"""The on-disk backup format: mongodump's directory layout plus our manifest.

A backup folder written by ``mongo.backup``::

    <out>/backup-2026-02-11T10-30-00-000Z/
        backup-manifest.json          what is in the dump, with counts and checksums
        stats.json                    {"database", "collections": {name: count}, "totalRecords"}
        mongodb-dump/<db>/<coll>.bson            raw BSON documents, in _id order
        mongodb-dump/<db>/<coll>.metadata.json   indexes and options (mongodump's format)

With ``gzip`` both per-collection files get ``.gz`` appended, as ``mongodump --gzip``
names them. ``mongorestore --drop <folder>/mongodb-dump`` restores it as it is.

Manifest (``format: migration-backup/1``)::

    {"format", "database", "created_at", "server_version", "ferretdb", "tool", "gzip",
     "dump_dir": "mongodb-dump/<db>", "totalRecords", "totalBytes", "verified",
     "collections": {name: {"count", "bytes", "sha256", "checksum", "file",
                            "file_bytes", "metadata", "indexes"}}}

``sha256`` is the SHA-256 of the uncompressed ``.bson`` content; ``checksum`` is the
collection checksum (see :mod:`checksums`) at backup time. With the native tool
the file is written in ``_id`` order, so the two are equal (and the MD5 of the file is
what MongoDB's ``dbHash`` answers for the collection: a restore computes it while
checking the file, where the server has ``dbHash``). Paths are relative to
the backup folder.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from bson import SON, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from migration.steps.mongo.dumpnames import BadFileName, collection_name, stem_candidates

# Re-exported: these names have been importable from this module since the start.
from migration.steps.mongo.dumpnames import bson_file_name as bson_file_name
from migration.steps.mongo.dumpnames import file_stem as file_stem
from migration.steps.mongo.dumpnames import metadata_file_name as metadata_file_name

DUMP_DIR = "mongodb-dump"
MANIFEST_NAME = "backup-manifest.json"
STATS_NAME = "stats.json"
MANIFEST_FORMAT = "migration-backup/1"
PARTIAL_SUFFIX = ".partial"
BACKUP_NAME = re.compile(r"^backup-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
# A document may be 16 MiB plus a little; anything far beyond is a corrupt length.
MAX_DOCUMENT_BYTES = 48_000_000
GZIP_LEVEL = 6  # mongodump's (Go's default) level
READ_CHUNK_BYTES = 1 << 20
_LENGTH = struct.Struct("<I")  # a BSON document starts with its length, little-endian


class DumpError(Exception):
    """A dump folder or file is not what it should be; the message is one line."""


def backup_folder_name(moment: datetime) -> str:
    """``backup-2026-02-11T10-30-00-000Z`` for a UTC moment."""
    return "backup-" + moment.strftime("%Y-%m-%dT%H-%M-%S-") + f"{moment.microsecond // 1000:03d}Z"


def iso_utc(moment: datetime) -> str:
    """``2026-02-11T10:30:00.000Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def metadata_text(
    collection: str,
    indexes: list[Any],
    uuid: str = "",
    options: dict[str, Any] | None = None,
    kind: str = "collection",
) -> str:
    """A ``.metadata.json`` in mongodump's format (canonical extended JSON).

    ``uuid`` is left out when the server gives none, as mongodump does (its
    ``Metadata.UUID`` is ``bson:"uuid,omitempty"``).
    """
    fields: list[tuple[str, Any]] = [("options", options or {}), ("indexes", indexes)]
    if uuid:
        fields.append(("uuid", uuid))
    document = SON([*fields, ("collectionName", collection), ("type", kind)])
    return json_util.dumps(document, json_options=CANONICAL_JSON_OPTIONS, separators=(",", ":"))


def open_for_reading(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    return open(path, "rb", buffering=1 << 20)


def read_metadata(path: Path) -> dict[str, Any]:
    """Parse a ``.metadata.json`` (or ``.gz``) file; a broken one is a DumpError."""
    try:
        with open_for_reading(path) as handle:
            text = handle.read().decode("utf-8")
        document = json_util.loads(text)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise DumpError(f"{path.name} cannot be read: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("indexes", []), list):
        raise DumpError(f"{path.name} is not a mongodump metadata file (no indexes list)")
    return dict(document)


def iter_documents(path: Path) -> Iterator[bytes]:
    """The raw BSON documents of a ``.bson`` (or ``.bson.gz``) file, one at a time.

    Memory stays at one read chunk (or one document, if larger). A file that ends
    inside a document, or whose framing is broken, raises DumpError naming the
    document and offset.
    """
    # Read in chunks and cut documents out of them: one read() and one length
    # decode per document cost 3x more CPU than this (bench/: restore profile).
    name = path.name
    count = 0
    offset = 0  # file offset of buffer[position]
    buffer = b""
    position = 0
    length = 0
    try:
        with open_for_reading(path) as handle:
            while True:
                available = len(buffer) - position
                if available >= 4:
                    length = _LENGTH.unpack_from(buffer, position)[0]
                    if length < 5 or length > MAX_DOCUMENT_BYTES:
                        where = f"document {count + 1} at byte {offset}"
                        raise DumpError(f"{name} is corrupt: {where} claims {length} bytes")
                    if available >= length:
                        end = position + length
                        if buffer[end - 1] != 0:
                            where = f"document {count + 1} at byte {offset}"
                            raise DumpError(f"{name} is corrupt: {where} does not end a BSON document")
                        yield buffer[position:end]
                        position = end
                        count += 1
                        offset += length
                        continue
                    wanted = length - available
                else:
                    wanted = 4 - available
                chunk = handle.read(max(READ_CHUNK_BYTES, wanted))
                if not chunk:
                    if available == 0:
                        return
                    where = f"document {count + 1} at byte {offset}"
                    if available < 4:
                        raise DumpError(f"{name} is truncated: {where} is cut short")
                    raise DumpError(
                        f"{name} is truncated: {where} needs {length} bytes, only {available} are left"
                    )
                buffer = buffer[position:] + chunk
                position = 0
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DumpError(f"{name} is truncated or corrupt after {count} documents: {exc}") from exc


@dataclass
class FileScan:
    count: int
    bytes: int
    sha256: str
    md5: str | None = None


def scan_bson_file(path: Path, md5: bool = False) -> FileScan:
    """Count, size and SHA-256 (and MD5 if asked) of the uncompressed content of a ``.bson`` file."""
    hasher = hashlib.sha256()
    md5_hasher = hashlib.md5(usedforsecurity=False) if md5 else None
    count = 0
    size = 0
    pending: list[bytes] = []
    for document in iter_documents(path):
        # One update per ~1,000 documents: per-document calls cost more than the hashing.
        pending.append(document)
        if len(pending) == 1024:
            joined = b"".join(pending)
            hasher.update(joined)
            if md5_hasher is not None:
                md5_hasher.update(joined)
            size += len(joined)
            count += len(pending)
            pending.clear()
    joined = b"".join(pending)
    hasher.update(joined)
    if md5_hasher is not None:
        md5_hasher.update(joined)
    md5_hex = md5_hasher.hexdigest() if md5_hasher is not None else None
    return FileScan(count + len(pending), size + len(joined), hasher.hexdigest(), md5_hex)


class BsonWriter:
    """Writes raw BSON to a file (gzip-compressed if asked), hashing what it writes.

    ``close()`` flushes and fsyncs, so a file that closed cleanly is on disk.
    """

    def __init__(self, path: Path, gzipped: bool) -> None:
        self.path = path
        self.bytes = 0
        self._hasher = hashlib.sha256()
        self._raw = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._out: BinaryIO = self._raw
        if gzipped:
            compressed = gzip.GzipFile(
                filename="", fileobj=self._raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0
            )
            self._out = cast(BinaryIO, compressed)

    def write(self, data: bytes) -> None:
        self._out.write(data)
        self._hasher.update(data)
        self.bytes += len(data)

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()

    def abort(self) -> None:
        for handle in (self._out, self._raw):
            with contextlib.suppress(OSError):
                handle.close()


def write_text(path: Path, text: str, gzipped: bool = False) -> None:
    """Write a small file and fsync it (optionally gzip-compressed)."""
    data = text.encode("utf-8")
    if gzipped:
        data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: Path, document: Any) -> None:
    """Write JSON atomically: a temporary file, fsync, rename."""
    temporary = path.with_name(path.name + ".tmp")
    write_text(temporary, json.dumps(document, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def load_manifest(path: Path) -> dict[str, Any]:
    """Read and check a ``backup-manifest.json``; anything off is a DumpError."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DumpError(f"{path} is missing") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DumpError(f"{path} is corrupt (not valid JSON: {exc})") from exc
    problems: list[str] = []
    if not isinstance(manifest, dict):
        raise DumpError(f"{path} is corrupt (not a JSON object)")
    if not isinstance(manifest.get("database"), str) or not manifest["database"]:
        problems.append("no database")
    collections = manifest.get("collections")
    if not isinstance(collections, dict):
        problems.append("no collections")
        collections = {}
    for name, entry in collections.items():
        if not isinstance(entry, dict):
            problems.append(f"collection {name} has no entry")
            continue
        if not isinstance(entry.get("count"), int) or entry["count"] < 0:
            problems.append(f"collection {name} has no count")
        if not isinstance(entry.get("file"), str):
            problems.append(f"collection {name} has no file")
        for key in ("sha256", "checksum"):
            if not isinstance(entry.get(key), str) or not _HEX64.match(entry[key]):
                problems.append(f"collection {name} has no {key}")
    total = manifest.get("totalRecords")
    if isinstance(total, int) and not problems:
        counted = sum(int(entry["count"]) for entry in collections.values())
        if counted != total:
            problems.append(f"totalRecords {total} != sum of counts {counted}")
    elif not isinstance(total, int):
        problems.append("no totalRecords")
    if problems:
        raise DumpError(f"{path} is corrupt: {'; '.join(problems[:3])}")
    return manifest


@dataclass
class DumpedCollection:
    """One collection in a dump: its files and, with a manifest, its recorded figures."""

    name: str
    bson: Path
    metadata: Path | None
    count: int | None = None
    sha256: str | None = None
    checksum: str | None = None
    # MD5 of the file when it holds the documents in _id order (native backups): what
    # MongoDB's dbHash answers for the collection. Filled while checking the file.
    md5: str | None = None


@dataclass
class DumpSource:
    """A dump located on disk, ready to check and restore."""

    folder: Path
    db_dir: Path
    database: str
    manifest: dict[str, Any] | None
    collections: dict[str, DumpedCollection] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def dumped_files(db_dir: Path, collection: str, gzipped: bool) -> tuple[Path, Path]:
    """The ``.bson`` and ``.metadata.json`` (``.gz``) a mongodump run wrote for ``collection``.

    Current mongodump names them with ``url.QueryEscape``; older versions (and this
    project's earlier backups) with ``url.PathEscape``: both are looked for.
    """
    suffix = ".gz" if gzipped else ""
    tried = []
    for stem in stem_candidates(collection):
        bson_path = db_dir / f"{stem}.bson{suffix}"
        if bson_path.is_file():
            return bson_path, db_dir / f"{stem}.metadata.json{suffix}"
        tried.append(bson_path.name)
    raise DumpError(f"no file for collection {collection!r} in {db_dir}: looked for {', '.join(tried)}")


def _manifest_near(path: Path) -> Path | None:
    candidates = [path]
    if path.name == DUMP_DIR:
        candidates.append(path.parent)
    if path.parent.name == DUMP_DIR:
        candidates.append(path.parent.parent)
    for folder in candidates:
        if (folder / MANIFEST_NAME).exists():
            return folder
    return None


def _is_bson(path: Path) -> bool:
    return path.name.endswith((".bson", ".bson.gz"))


def _scan_db_dir(db_dir: Path, warnings: list[str]) -> dict[str, DumpedCollection]:
    found: dict[str, DumpedCollection] = {}
    for path in sorted(db_dir.iterdir()):
        if not path.is_file() or not _is_bson(path):
            continue
        suffix = ".bson.gz" if path.name.endswith(".gz") else ".bson"
        stem = path.name[: -len(suffix)]
        metadata: Path | None = None
        for candidate in (stem + ".metadata.json", stem + ".metadata.json.gz"):
            if (db_dir / candidate).exists():
                metadata = db_dir / candidate
        recorded = read_metadata(metadata).get("collectionName") if metadata is not None else None
        try:
            name = collection_name(stem, recorded if isinstance(recorded, str) else None)
        except BadFileName as exc:
            # mongorestore refuses the whole dump for such a name; so do we.
            raise DumpError(f"{path.name}: not a collection name as mongodump escapes it: {exc}") from exc
        if name.startswith("system."):
            warnings.append(f"skipped {path.name}: system collections are not restored")
            continue
        found[name] = DumpedCollection(name=name, bson=path, metadata=metadata)
    return found


def locate_dump(path: Path, target_database: str) -> DumpSource:
    """Find the dump behind ``path``: a backup folder with its manifest, its
    ``mongodb-dump`` subfolder, a plain mongodump output folder, or a database folder.
    """
    if not path.exists():
        raise DumpError(f"backup folder {path} does not exist")
    if not path.is_dir():
        raise DumpError(f"{path} is not a folder")
    if path.name.endswith(PARTIAL_SUFFIX):
        raise DumpError(f"{path} is an unfinished backup (its writer stopped before the end)")
    root = _manifest_near(path)
    if root is not None:
        return _from_manifest(root, path)
    if (path / DUMP_DIR).is_dir() or (path / STATS_NAME).exists() or BACKUP_NAME.match(path.name):
        raise DumpError(
            f"{MANIFEST_NAME} is missing from {path}: the backup is incomplete or damaged "
            f"(to restore its files anyway, without checksums, use from: {path / DUMP_DIR})"
        )
    return _plain(path, target_database)


def _from_manifest(root: Path, named: Path) -> DumpSource:
    manifest = load_manifest(root / MANIFEST_NAME)
    warnings: list[str] = []
    dump_dir = root / str(manifest.get("dump_dir") or f"{DUMP_DIR}/{manifest['database']}")
    if not dump_dir.is_dir():
        raise DumpError(f"the manifest names {dump_dir}, which is missing")
    collections: dict[str, DumpedCollection] = {}
    for name, entry in manifest["collections"].items():
        bson_path = root / entry["file"]
        meta = root / entry["metadata"] if isinstance(entry.get("metadata"), str) else None
        collections[name] = DumpedCollection(
            name=name,
            bson=bson_path,
            metadata=meta,
            count=int(entry["count"]),
            sha256=entry["sha256"],
            checksum=entry["checksum"],
        )
    listed = {c.bson.name for c in collections.values()}
    for path in sorted(dump_dir.iterdir()):
        if _is_bson(path) and path.name not in listed:
            warnings.append(f"{path.name} is not in the manifest; ignored")
    return DumpSource(root, dump_dir, str(manifest["database"]), manifest, collections, warnings)


def _plain(path: Path, target_database: str) -> DumpSource:
    warnings: list[str] = []
    if any(_is_bson(p) for p in path.iterdir()):
        db_dir = path
    else:
        databases = sorted(p for p in path.iterdir() if p.is_dir() and any(_is_bson(f) for f in p.iterdir()))
        if not databases:
            backups = sorted(p.name for p in path.iterdir() if BACKUP_NAME.match(p.name))
            if backups:
                raise DumpError(f"{path} holds backups, not one dump: name one, e.g. {backups[-1]}")
            raise DumpError(f"no .bson files under {path}: not a mongodump folder")
        matching = [p for p in databases if p.name == target_database]
        if matching:
            db_dir = matching[0]
        elif len(databases) == 1:
            db_dir = databases[0]
        else:
            names = ", ".join(p.name for p in databases)
            raise DumpError(f"{path} holds databases {names}; none is {target_database}")
    collections = _scan_db_dir(db_dir, warnings)
    warnings.insert(0, f"{path} has no {MANIFEST_NAME}: counts come from the files, no checksums to check")
    return DumpSource(path, db_dir, db_dir.name, None, collections, warnings)
