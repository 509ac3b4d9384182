"""File names of a dump's collections, exactly as mongodump writes and mongorestore reads them.

mongodump (mongo-tools ``common/util/file.go``, ``mongodump/prepare.go``) names the
files of collection ``C`` with Go's ``url.QueryEscape(C)``: the bytes ``A-Z a-z 0-9
- _ . ~`` stay, a space becomes ``+``, every other byte of the UTF-8 name becomes
``%XX`` (upper-case hex). An escaped name longer than 238 bytes is cut to its first
208 bytes, followed by ``%24`` and the unpadded base64url of the SHA-1 of the
collection name (238 bytes in all, so that ``.metadata.json.gz`` still fits in 255);
the real name is then only in the ``collectionName`` field of the ``.metadata.json``.
``.bson``, ``.metadata.json`` and their ``.gz`` forms share that escaped base.

mongorestore (``mongorestore/filepath.go``) reads a name back with
``url.QueryUnescape`` (``+`` is a space, ``%XX`` a byte; a ``%`` without two hex
digits is an error) and, for a 238-byte name holding ``%24``, takes
``collectionName`` from the metadata file.

Backups written before this module used Go's ``url.PathEscape`` rules (the naming
of older mongodump versions too): ``$ & + : = @`` kept, a space as ``%20``. Such
files are recognised through the name recorded in their metadata (or manifest).
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import quote

# Go's net/url shouldEscape(c, encodeQueryComponent) keeps exactly these bytes.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
MAX_ESCAPED_BYTES = 238
TRUNCATED_KEEP_BYTES = 208
TRUNCATION_MARK = "%24"  # an escaped "$", which QueryEscape never leaves in a name otherwise


class BadFileName(ValueError):
    """A file name that mongorestore could not turn back into a collection name."""


def query_escape(text: str) -> str:
    """Go's ``url.QueryEscape``: ``odd name+x:y@z=1`` -> ``odd+name%2Bx%3Ay%40z%3D1``."""
    out: list[str] = []
    for byte in text.encode("utf-8"):
        if byte in _UNRESERVED:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def query_unescape(text: str) -> str:
    """Go's ``url.QueryUnescape``: ``+`` is a space, ``%XX`` a byte; anything else stays.

    Raises BadFileName for a ``%`` not followed by two hex digits, or bytes that are
    not UTF-8 (no MongoDB collection name has them).
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")  # a file name may hold undecodable bytes
    except UnicodeEncodeError as exc:
        raise BadFileName(f"characters that are not UTF-8 ({exc.reason})") from exc
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # %
            pair = raw[i + 1 : i + 3]
            if len(pair) < 2 or not all(b in _HEX for b in pair):
                raise BadFileName(f"invalid URL escape {raw[i : i + 3].decode('utf-8', 'replace')!r}")
            out.append(int(pair, 16))
            i += 3
            continue
        out.append(0x20 if byte == 0x2B else byte)
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFileName(f"escapes that are not UTF-8 ({exc.reason})") from exc


def _truncate(collection: str, escaped: str) -> str:
    if len(escaped) <= MAX_ESCAPED_BYTES:
        return escaped
    digest = hashlib.sha1(collection.encode("utf-8")).digest()
    tail = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
    return escaped[:TRUNCATED_KEEP_BYTES] + TRUNCATION_MARK + tail


def file_stem(collection: str) -> str:
    """The base name of a collection's files (no extension), as mongodump writes it."""
    return _truncate(collection, query_escape(collection))


def legacy_file_stem(collection: str) -> str:
    """The base name this project wrote before (Go's ``url.PathEscape``, older mongodump)."""
    return _truncate(collection, quote(collection, safe="$&+:=@"))


def stem_candidates(collection: str) -> list[str]:
    """Where a collection's files may be: mongodump's current naming first, then the old one."""
    stems = [file_stem(collection)]
    legacy = legacy_file_stem(collection)
    return stems if legacy in stems else [*stems, legacy]


def is_truncated(stem: str) -> bool:
    """mongorestore's test for a cut name: exactly 238 bytes and holding ``%24``."""
    try:
        size = len(stem.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        size = len(stem.encode("utf-8", "surrogatepass"))
    return size == MAX_ESCAPED_BYTES and TRUNCATION_MARK in stem


def collection_name(stem: str, recorded: str | None) -> str:
    """The collection a file belongs to, from its base name and its metadata's ``collectionName``.

    The recorded name wins when the file is named after it (either naming) or the
    file name is truncated; otherwise the file name is unescaped, as mongorestore
    does (so a file renamed by hand restores under its new name).
    """
    if recorded and stem in stem_candidates(recorded):
        return recorded
    if is_truncated(stem):
        if not recorded:
            raise BadFileName("the name is truncated and its metadata file names no collectionName")
        return recorded
    return query_unescape(stem)


def bson_file_name(collection: str, gzipped: bool) -> str:
    return file_stem(collection) + (".bson.gz" if gzipped else ".bson")


def metadata_file_name(collection: str, gzipped: bool) -> str:
    return file_stem(collection) + (".metadata.json.gz" if gzipped else ".metadata.json")
