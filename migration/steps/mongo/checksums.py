"""Checksums of collections and of BSON streams, comparable with each other.

The checksum of a collection is the SHA-256 of the raw BSON of its documents,
concatenated in ``_id`` order: exactly the bytes ``mongo.backup`` writes to
``<collection>.bson``. So the manifest's checksum of a file, the checksum of the
live collection at backup time and the checksum after a restore are one figure.
Documents are never decoded: the server's bytes are hashed as they arrive.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable, Iterator
from typing import Any

from bson import SON, Int64
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import ConfigurationError, PyMongoError

try:  # pymongo's own fast path for raw batches (private, so looked for, not assumed)
    from bson._cbson import _array_of_documents_to_buffer
    from bson.raw_bson import _RAW_ARRAY_BSON_OPTIONS
except ImportError:  # pragma: no cover - pure-Python bson
    _array_of_documents_to_buffer = None

# Raw batches are concatenated documents; a larger batch means fewer round trips.
READ_BATCH_DOCS = 1000
_LENGTH = struct.Struct("<I")


def count_in_buffer(buffer: bytes | memoryview) -> int:
    """Number of BSON documents in a buffer of concatenated documents.

    Raises ValueError if the buffer does not end exactly at a document boundary.
    """
    # struct.unpack_from on the buffer itself: half the CPU of slicing a
    # memoryview and int.from_bytes per document (bench/: backup profile).
    unpack = _LENGTH.unpack_from
    position = 0
    count = 0
    end = len(buffer)
    while position < end:
        if end - position < 5:
            raise ValueError(f"{end - position} stray bytes after document {count}")
        length = unpack(buffer, position)[0]
        if length < 5 or position + length > end:
            raise ValueError(f"document {count} claims {length} bytes, {end - position} left")
        position += length
        count += 1
    return count


def raw_batches(db: Database[Any], name: str, started: Callable[[], None] | None = None) -> Iterator[bytes]:
    """The collection's documents as raw BSON batches, in ``_id`` order.

    ``started`` is called once the server has answered the ``find`` (before the first
    batch is yielded, even for an empty collection).

    ``find``/``getMore`` are sent as commands whose replies stay undecoded, and each
    batch's array is turned into concatenated documents by bson's C code: no Python
    object per document (``find_raw_batches`` makes one per document; bench/:
    ~1.7 against ~1 µs of client CPU a document).
    """
    if _array_of_documents_to_buffer is None:  # pragma: no cover
        cursor = db[name].find_raw_batches(sort=[("_id", 1)], batch_size=READ_BATCH_DOCS)
        try:
            first = next(cursor, None)  # the find is sent here
            if started is not None:
                started()
            if first is not None:
                yield first
                yield from cursor
        finally:
            cursor.close()
        return
    # One explicit session: a server refuses a getMore from another session than the find's.
    with db.client.start_session() as opened:
        session: ClientSession | None = opened
        find = SON([("find", name), ("filter", {}), ("sort", {"_id": 1}), ("batchSize", READ_BATCH_DOCS)])
        try:
            cursor = db.command(find, codec_options=_RAW_ARRAY_BSON_OPTIONS, session=session)["cursor"]
        except ConfigurationError:
            # A server without sessions (no logicalSessionTimeoutMinutes in its hello):
            # it ties a getMore to no session either.
            session = None
            cursor = db.command(find, codec_options=_RAW_ARRAY_BSON_OPTIONS)["cursor"]
        # Int64 always: a server refuses a getMore whose id came back small enough for int32.
        batch, cursor_id = cursor["firstBatch"], Int64(cursor["id"])
        try:
            if started is not None:
                started()
            while True:
                if len(batch) > 5:  # an empty BSON array is 5 bytes
                    yield _array_of_documents_to_buffer(batch)
                if not cursor_id:
                    return
                more = SON([("getMore", cursor_id), ("collection", name), ("batchSize", READ_BATCH_DOCS)])
                cursor = db.command(more, codec_options=_RAW_ARRAY_BSON_OPTIONS, session=session)["cursor"]
                batch, cursor_id = cursor["nextBatch"], Int64(cursor["id"])
        finally:
            if cursor_id:
                with contextlib.suppress(PyMongoError):
                    db.command("killCursors", name, cursors=[cursor_id], session=session)


def collection_digest(db: Database[Any], name: str) -> tuple[int, str]:
    """(document count, checksum) of a collection, from one pass in ``_id`` order."""
    hasher = hashlib.sha256()
    count = 0
    for batch in raw_batches(db, name):
        hasher.update(batch)
        count += count_in_buffer(batch)
    return count, hasher.hexdigest()


def collection_checksum(db: Database[Any], name: str) -> str:
    """SHA-256 (hex) over the raw BSON of the collection's documents in ``_id`` order."""
    return collection_digest(db, name)[1]
