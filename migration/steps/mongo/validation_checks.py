"""The checks of ``mongo.validate``: one pydantic model and one function per ``type``.

Every check gets the database and returns ``(passed, details)``; ``details`` is
plain JSON data with a one-line ``summary``. A check of a collection that does
not exist fails (it never passes vacuously).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from bson import Binary, Int64, ObjectId
from pydantic import Field, field_validator, model_validator
from pymongo.database import Database
from pymongo.errors import OperationFailure

from migration.steps.base import StepParams
from migration.steps.mongo.documents import MISSING, UNADDRESSABLE, get_path, show_id, to_json
from migration.steps.mongo.query_filters import check_filter

EXAMPLES = 10
IN_BATCH = 1000
MANIFEST_NAME = "backup-manifest.json"


class CheckFailed(Exception):
    """A check that cannot be evaluated (missing collection, rejected filter): it fails."""


class _Check(StepParams):
    name: str = Field(min_length=1, description="unique name, shown in the report")


class _OnCollection(_Check):
    collection: str = Field(min_length=1)
    filter: dict[str, Any] = Field(default_factory=dict)

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_filter(value)


class CountCheck(_OnCollection):
    """Documents matching ``filter`` equal a figure (``equals``), the backup manifest's
    count (``manifest``: a backup folder or its manifest), or lie within ``min``/``max``."""

    type: Literal["count"]
    equals: int | None = None
    manifest: str | None = None
    min: int | None = None
    max: int | None = None

    @model_validator(mode="after")
    def _expectation(self) -> CountCheck:
        if self.equals is None and self.manifest is None and self.min is None and self.max is None:
            raise ValueError("a count check needs equals, manifest, min or max")
        if self.equals is not None and self.manifest is not None:
            raise ValueError("give equals or manifest, not both")
        return self


class FieldsPresentCheck(_OnCollection):
    """Every document matching ``filter`` has every field (null allowed unless ``allow_null: false``)."""

    type: Literal["fields_present"]
    fields: list[str] = Field(min_length=1)
    allow_null: bool = True


class FieldsAbsentCheck(_OnCollection):
    """No document matching ``filter`` has any of the fields."""

    type: Literal["fields_absent"]
    fields: list[str] = Field(min_length=1)


class ReferencesCheck(_OnCollection):
    """Every non-null value of ``field`` (each element of an array) is an ``_id`` in ``to``."""

    type: Literal["references"]
    field: str = Field(min_length=1)
    to: str = Field(min_length=1)


class DistributionCheck(_OnCollection):
    """Counts per group (``groups``: name -> filter, within ``filter``); optional
    ``expect`` (exact counts), ``min`` and ``max`` per group name."""

    type: Literal["distribution"]
    groups: dict[str, dict[str, Any]] = Field(min_length=1)
    expect: dict[str, int] = Field(default_factory=dict)
    min: dict[str, int] = Field(default_factory=dict)
    max: dict[str, int] = Field(default_factory=dict)

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, query in value.items():
            check_filter(query, f"groups.{name}")
        return value

    @model_validator(mode="after")
    def _known_groups(self) -> DistributionCheck:
        for what in ("expect", "min", "max"):
            unknown = set(getattr(self, what)) - set(self.groups)
            if unknown:
                raise ValueError(f"{what} names unknown groups: {', '.join(sorted(unknown))}")
        return self


class SampleCheck(_OnCollection):
    """Shows the first ``size`` documents (in ``_id`` order) in the report; passes."""

    type: Literal["sample"]
    size: int = Field(default=5, ge=1, le=100)
    fields: list[str] | None = None


class CollectionsIntactCheck(_Check):
    """Every collection of the backup manifest has its manifest count, ``except`` these."""

    type: Literal["collections_intact"]
    manifest: str = Field(min_length=1)
    except_: list[str] = Field(default_factory=list, alias="except")


ID_TYPES: dict[str, Callable[[Any], bool]] = {
    "objectId": lambda v: isinstance(v, ObjectId),
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, (bool, Int64)),
    "long": lambda v: isinstance(v, Int64),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "binData": lambda v: isinstance(v, (bytes, Binary)),
}


class ValidIdsCheck(_OnCollection):
    """Every ``_id`` is non-null and, with ``id_type``, of that type
    (objectId, string, int, long, number, binData)."""

    type: Literal["valid_ids"]
    id_type: Literal["objectId", "string", "int", "long", "number", "binData"] | None = None


Check = Annotated[
    CountCheck
    | FieldsPresentCheck
    | FieldsAbsentCheck
    | ReferencesCheck
    | DistributionCheck
    | SampleCheck
    | CollectionsIntactCheck
    | ValidIdsCheck,
    Field(discriminator="type"),
]


def manifest_counts(path: Path) -> dict[str, int]:
    """Collection -> count from a ``backup-manifest.json`` (or the backup folder holding it).

    Reads ``collections`` as ``{name: {"count": n}}``, ``{name: n}`` or
    ``[{"name": ..., "count": n}]``.
    """
    file = path / MANIFEST_NAME if path.is_dir() else path
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckFailed(f"no backup manifest at {file}") from None
    except (OSError, ValueError) as exc:
        raise CheckFailed(f"cannot read the backup manifest {file}: {exc}") from None
    collections = manifest.get("collections") if isinstance(manifest, dict) else None
    counts: dict[str, int] = {}
    try:
        if isinstance(collections, dict):
            for name, entry in collections.items():
                counts[name] = int(entry["count"] if isinstance(entry, dict) else entry)
        elif isinstance(collections, list):
            for entry in collections:
                counts[str(entry["name"])] = int(entry["count"])
        else:
            raise CheckFailed(f"the backup manifest {file} has no collections")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckFailed(f"the backup manifest {file} has an unreadable count: {exc!r}") from None
    return counts


class Checker:
    """Runs checks against one database; ``resolve`` turns a plan path into a Path."""

    def __init__(self, db: Database[Any], resolve: Callable[[str], Path], ferretdb: bool) -> None:
        self.db = db
        self.resolve = resolve
        self.ferretdb = ferretdb
        self._names: set[str] | None = None

    def run(self, check: Any) -> tuple[bool, dict[str, Any]]:
        method = getattr(self, "_" + check.type)
        try:
            passed, details = method(check)
        except CheckFailed as exc:
            return False, {"summary": str(exc), "error": str(exc)}
        except OperationFailure as exc:
            message = (exc.details or {}).get("errmsg") or str(exc)
            return False, {"summary": f"the server refused the check: {message}", "error": message}
        return passed, details

    def _collection(self, name: str) -> Any:
        if self._names is None:
            self._names = set(self.db.list_collection_names())
        if name not in self._names:
            raise CheckFailed(f"collection {name!r} does not exist in database {self.db.name!r}")
        return self.db[name]

    def _examples(self, name: str, query: dict[str, Any]) -> list[Any]:
        cursor = self._collection(name).find(query, {"_id": 1}, sort=[("_id", 1)], limit=EXAMPLES)
        return [show_id(d["_id"]) for d in cursor]

    def _count(self, check: CountCheck) -> tuple[bool, dict[str, Any]]:
        found = self._collection(check.collection).count_documents(check.filter)
        expected = check.equals
        source = "equals"
        if check.manifest is not None:
            counts = manifest_counts(self.resolve(check.manifest))
            if check.collection not in counts:
                raise CheckFailed(f"the backup manifest has no collection {check.collection!r}")
            expected, source = counts[check.collection], f"manifest {self.resolve(check.manifest)}"
        problems = []
        if expected is not None and found != expected:
            problems.append(f"expected {expected}")
        if check.min is not None and found < check.min:
            problems.append(f"expected at least {check.min}")
        if check.max is not None and found > check.max:
            problems.append(f"expected at most {check.max}")
        summary = f"{check.collection}: {found} documents" + (f" ({'; '.join(problems)})" if problems else "")
        details: dict[str, Any] = {"summary": summary, "collection": check.collection, "count": found}
        details.update({"expected": expected, "source": source, "min": check.min, "max": check.max})
        return not problems, details

    def _fields(self, check: Any, missing: bool) -> tuple[bool, dict[str, Any]]:
        collection = self._collection(check.collection)
        if missing:
            absent = "$exists" if getattr(check, "allow_null", True) else None
            wrong = [{f: {"$exists": False}} if absent else {f: None} for f in check.fields]
        else:
            wrong = [{f: {"$exists": True}} for f in check.fields]
        query = {"$and": [check.filter, {"$or": wrong}]} if check.filter else {"$or": wrong}
        bad = collection.count_documents(query)
        checked = collection.count_documents(check.filter)
        verb = "lack" if missing else "have"
        summary = f"{check.collection}: {bad} of {checked} documents {verb} " + ", ".join(check.fields)
        details: dict[str, Any] = {"summary": summary, "collection": check.collection, "checked": checked}
        details.update({"fields": check.fields, "offending": bad})
        details["examples"] = self._examples(check.collection, query) if bad else []
        return bad == 0, details

    def _fields_present(self, check: FieldsPresentCheck) -> tuple[bool, dict[str, Any]]:
        return self._fields(check, missing=True)

    def _fields_absent(self, check: FieldsAbsentCheck) -> tuple[bool, dict[str, Any]]:
        return self._fields(check, missing=False)

    def _references(self, check: ReferencesCheck) -> tuple[bool, dict[str, Any]]:
        source = self._collection(check.collection)
        target = self._collection(check.to)
        query = (
            {"$and": [check.filter, {check.field: {"$ne": None}}]}
            if check.filter
            else {check.field: {"$ne": None}}
        )
        values: dict[Any, Any] = {}  # reference key -> first referencing _id
        checked = 0
        for doc in source.find(query, {check.field: 1}, sort=[("_id", 1)], batch_size=IN_BATCH):
            checked += 1
            value = get_path(doc, check.field)
            for item in value if isinstance(value, list) else [value]:
                if item is not None and item is not MISSING and item is not UNADDRESSABLE:
                    values.setdefault(_ref_key(item), (item, doc["_id"]))
        found = self._existing_ids(target, [v for v, _ in values.values()])
        dangling = [(k, v) for k, v in values.items() if k not in found]
        examples = [
            {"id": show_id(doc_id), "value": to_json(value)} for _, (value, doc_id) in dangling[:EXAMPLES]
        ]
        summary = (
            f"{check.collection}.{check.field}: {len(values)} distinct references in {checked} "
            f"documents, {len(dangling)} not found in {check.to}"
        )
        details: dict[str, Any] = {"summary": summary, "collection": check.collection, "field": check.field}
        details.update({"to": check.to, "checked": checked, "distinct": len(values)})
        details.update({"dangling": len(dangling), "examples": examples})
        return not dangling, details

    def _existing_ids(self, target: Any, wanted: list[Any]) -> set[Any]:
        """Keys of the wanted values that are ``_id``s of ``target``."""
        if self.ferretdb:
            # FerretDB never pushes $in down: each batch would scan the whole
            # target. Reading its _ids once is one scan.
            ids = {_ref_key(d["_id"]) for d in target.find({}, {"_id": 1}, batch_size=10_000)}
            return {_ref_key(v) for v in wanted} & ids
        found: set[Any] = set()
        ordered = sorted(wanted, key=_sort_key)
        for start in range(0, len(ordered), IN_BATCH):
            chunk = ordered[start : start + IN_BATCH]
            for doc in target.find({"_id": {"$in": chunk}}, {"_id": 1}):
                found.add(_ref_key(doc["_id"]))
        return found

    def _distribution(self, check: DistributionCheck) -> tuple[bool, dict[str, Any]]:
        collection = self._collection(check.collection)
        counts = {}
        for group, query in check.groups.items():
            counts[group] = collection.count_documents(
                {"$and": [check.filter, query]} if check.filter else query
            )
        problems = [f"{g}: {counts[g]} != {n}" for g, n in check.expect.items() if counts[g] != n]
        problems += [f"{g}: {counts[g]} < {n}" for g, n in check.min.items() if counts[g] < n]
        problems += [f"{g}: {counts[g]} > {n}" for g, n in check.max.items() if counts[g] > n]
        shown = ", ".join(f"{g} {n}" for g, n in counts.items())
        summary = f"{check.collection}: {shown}" + (f" ({'; '.join(problems)})" if problems else "")
        details: dict[str, Any] = {"summary": summary, "collection": check.collection, "counts": counts}
        details["problems"] = problems
        return not problems, details

    def _sample(self, check: SampleCheck) -> tuple[bool, dict[str, Any]]:
        collection = self._collection(check.collection)
        projection = dict.fromkeys(check.fields, 1) if check.fields else None
        docs = list(collection.find(check.filter, projection, sort=[("_id", 1)], limit=check.size))
        summary = f"{check.collection}: {len(docs)} sample documents" + (
            " (no document matches)" if not docs else ""
        )
        details: dict[str, Any] = {"summary": summary, "collection": check.collection}
        details["ids"] = [show_id(d["_id"]) for d in docs]
        details["documents"] = to_json(docs)
        return True, details

    def _collections_intact(self, check: CollectionsIntactCheck) -> tuple[bool, dict[str, Any]]:
        path = self.resolve(check.manifest)
        expected = manifest_counts(path)
        existing = set(self.db.list_collection_names())
        rows = {}
        problems = []
        for name, count in sorted(expected.items()):
            if name in check.except_:
                continue
            actual = self.db[name].count_documents({}) if name in existing else None
            rows[name] = {"expected": count, "actual": actual}
            if actual is None:
                problems.append(f"{name} is missing")
            elif actual != count:
                problems.append(f"{name}: {actual} != {count}")
        extra = sorted(existing - set(expected) - {n for n in existing if n.startswith("system.")})
        summary = f"{len(rows) - len(problems)} of {len(rows)} collections match {path}" + (
            f" ({'; '.join(problems[:5])})" if problems else ""
        )
        details: dict[str, Any] = {"summary": summary, "manifest": str(path), "collections": rows}
        details.update({"excepted": check.except_, "not_in_manifest": extra, "problems": problems})
        return not problems, details

    def _valid_ids(self, check: ValidIdsCheck) -> tuple[bool, dict[str, Any]]:
        collection = self._collection(check.collection)
        accept = ID_TYPES[check.id_type] if check.id_type else None
        types: Counter[str] = Counter()
        bad: list[Any] = []
        checked = 0
        for doc in _ids(collection, check.filter):
            checked += 1
            value = doc.get("_id")
            types[type(value).__name__] += 1
            if value is None or (accept is not None and not accept(value)):
                bad.append(value)
        wanted = f" of type {check.id_type}" if check.id_type else ""
        summary = f"{check.collection}: {checked - len(bad)} of {checked} _ids non-null{wanted}"
        details: dict[str, Any] = {"summary": summary, "collection": check.collection, "checked": checked}
        details.update({"invalid": len(bad), "types": dict(types)})
        details["examples"] = [to_json(v) for v in bad[:EXAMPLES]]
        return not bad, details


def _ids(collection: Any, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from collection.find(query, {"_id": 1}, batch_size=10_000)


def _ref_key(value: Any) -> Any:
    """Hashable key with MongoDB equality: 5 == 5.0, but "5" != 5 and True != 1."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, (dict, list)):
        return ("json", json.dumps(to_json(value), sort_keys=True))
    return (type(value).__name__, value)


def _sort_key(value: Any) -> tuple[str, str]:
    return (type(value).__name__, str(value))
