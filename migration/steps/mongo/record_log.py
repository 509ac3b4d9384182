"""The per-record log of ``mongo.transform``: ``migration-log-<ts>.json``, one JSON object a line.

Each line is ``{"id", "status", "reason", "before", "after"}`` (plus ``current`` for
a conflict: what someone else left there), in relaxed extended JSON (an ObjectId
is ``{"$oid": "..."}``). Lines are appended batch by batch and made durable before
the batch's progress is recorded; a resumed run truncates the file to the length
recorded with that progress, so the log of an interrupted-then-resumed run is the
log of an uninterrupted one. ``jq`` reads it as it is (``jq -c 'select(.status
!= "migrated")' migration-log-*.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import bson
from bson import json_util
from bson.codec_options import DEFAULT_CODEC_OPTIONS, CodecOptions
from bson.json_util import CANONICAL_JSON_OPTIONS

from migration.steps.mongo.documents import id_key, to_json


def timestamp(moment: datetime | None = None) -> str:
    """``2026-02-11T10-30-00-000Z``: the guide's file-name timestamp (UTC, milliseconds)."""
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H-%M-%S-") + f"{moment.microsecond // 1000:03d}Z"


def new_path(folder: Path, prefix: str, suffix: str = ".json") -> Path:
    """A file name ``<prefix>-<timestamp><suffix>`` in ``folder`` that does not exist yet."""
    path = folder / f"{prefix}-{timestamp()}{suffix}"
    counter = 1
    while path.exists():
        path = folder / f"{prefix}-{timestamp()}-{counter}{suffix}"
        counter += 1
    return path


class RecordLog:
    """Append-only JSON-lines file, committed (flushed and fsynced) per batch."""

    def __init__(self, path: Path, resume_offset: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes]
        if resume_offset and path.exists():
            self._file = open(path, "r+b")  # noqa: SIM115 - closed by close()
            self._file.truncate(resume_offset)
            self._file.seek(resume_offset)
        else:
            self._file = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(
        self,
        doc_id: Any,
        status: str,
        reason: str | None,
        before: Any,
        after: Any,
        current: Any = None,
    ) -> None:
        before_json = to_json(before)
        if type(before_json) is dict and type(before) is dict and before.get("_id", _ABSENT) is doc_id:
            id_json = before_json["_id"]  # converted with the document already
        else:
            id_json = to_json(doc_id)
        record: dict[str, Any] = {"id": id_json, "status": status, "reason": reason}
        record["before"] = before_json
        record["after"] = _json_sharing(after, before, before_json)
        if current is not None:
            record["current"] = to_json(current)
        self._file.write(_encode_line(record).encode("utf-8") + b"\n")

    def commit(self) -> int:
        """Make everything written so far durable; return the file's length."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        if not self._file.closed:
            self.commit()
            self._file.close()


def _line_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"))`` without its per-call setup.

    ``json.dumps`` with arguments builds a ``JSONEncoder`` and a C encoder for every
    call (~2 µs a record); this builds the C encoder once. The records hold what
    :func:`to_json` made (no cycles), so it keeps no circular-reference markers.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    try:
        encoder = make(None, None, json.encoder.encode_basestring, None, ":", ",", False, False, True)
        "".join(encoder({"a": [1, None]}, 0))
    except (TypeError, ValueError):  # another signature: json.dumps's own way
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return lambda value: "".join(encoder(value, 0))


_encode_line = _line_encoder()


def _json_sharing(value: Any, before: Any, before_json: Any) -> Any:
    """``to_json(value)``, reusing ``before_json`` for the fields ``value`` shares with ``before``.

    An after-state is a copy of the before-state that shares its unchanged values
    (the same objects), so most of its conversion is already done.
    """
    if type(value) is not dict or type(before) is not dict or type(before_json) is not dict:
        return to_json(value)
    if not (_TEXT.issuperset(map(type, value)) and _TEXT.issuperset(map(type, before))):
        return to_json(value)  # a non-text key: the general path
    converted = {}
    for key, item in value.items():
        old = before.get(key, _ABSENT)
        if old is item and key in before_json:
            converted[key] = before_json[key]
        elif type(item) is dict and type(old) is dict:
            converted[key] = _json_sharing(item, old, before_json.get(key))
        else:
            converted[key] = to_json(item)
    return converted


_ABSENT = object()
_TEXT = frozenset({str})


class InflightJournal:
    """The before-states of the batch being written, made durable before its writes.

    A crash after some of a batch's writes leaves those documents in their
    after-state, where the function would now see nothing to do ("skipped"). The
    resumed attempt replans them from the journaled before-states instead, so
    their guards fail, the re-read finds them in their after-state, and they count
    as ``migrated``, exactly as in an uninterrupted run. The file sits next to the
    log (``<log>.inflight``) and is removed when the transform finishes.

    Format: a magic line, one BSON document ``{after: <_id>}``, then the documents
    exactly as the server sent them (no re-encoding: writing it costs a copy of
    the bytes, not a conversion). Journals in the earlier extended-JSON format
    are still read.
    """

    MAGIC = b"migration-inflight-bson-1\n"

    def __init__(self, log_path: Path) -> None:
        self.path = log_path.with_name(log_path.name + ".inflight")

    def save(self, after_id: Any, raw_docs: list[bytes]) -> None:
        """Record ``raw_docs`` (BSON) as the batch that follows ``after_id`` (None: the first)."""
        partial = self.path.with_name(self.path.name + ".tmp")
        with open(partial, "wb") as handle:
            handle.write(self.MAGIC)
            handle.write(bson.encode({"after": after_id}))
            handle.write(b"".join(raw_docs))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def load(self, after_id: Any, codec_options: CodecOptions[Any] | None = None) -> dict[str, bytes]:
        """Raw before-states by ``_id`` key, if the journal is of the batch after ``after_id``."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        options = codec_options or DEFAULT_CODEC_OPTIONS
        if data.startswith(self.MAGIC):
            body = memoryview(data)[len(self.MAGIC) :]
            header_length = int.from_bytes(body[:4], "little")
            after = bson.decode(body[:header_length], options).get("after")
            raws = split_raw(bytes(body[header_length:]))
        else:
            legacy = json_util.loads(data.decode("utf-8"), json_options=CANONICAL_JSON_OPTIONS)
            after = legacy.get("after")
            raws = [bson.encode(doc) for doc in legacy.get("docs", [])]
        if id_key(after) != id_key(after_id):
            return {}  # a batch whose progress was recorded: nothing in flight
        return {id_key(bson.decode(raw, options)["_id"]): raw for raw in raws}

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def split_raw(data: bytes) -> list[bytes]:
    """The documents of concatenated BSON (a raw batch, a journal body)."""
    docs = []
    position, end = 0, len(data)
    while position < end:
        length = int.from_bytes(data[position : position + 4], "little")
        if length < 5 or position + length > end:
            raise ValueError(f"truncated BSON at byte {position}")
        docs.append(data[position : position + length])
        position += length
    return docs
