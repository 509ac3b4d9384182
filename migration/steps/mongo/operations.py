"""Declarative ``operations`` of ``mongo.transform``: set, unset, rename, split.

Each list item is one operation with a single key, applied in order to a copy of
the document::

    operations:
      - set: {schema_version: 2}
      - rename: {bank: bank_name}
      - unset: [legacy_flag]
      - split:
          field: swift_bic_iban
          into:
            iban_number: {regex: "^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$"}
            swift_bic_number: {function: "migration.recipes.bank_details:is_valid_bic"}
          remove_source: true     # default
          unmatched: invalid      # invalid (default) | error | skip

``split`` moves the value of ``field`` into the first target whose classifier
accepts it and sets the other targets to null; a null, empty or blank value sets
every target to null; a document without ``field`` is left alone. A ``regex``
classifier matches text anywhere (MongoDB ``$regex`` semantics: anchor it with
``^...$``); a ``function`` classifier gets the value and returns a bool (raising
ValueError counts as "no").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator
from pymongo.database import Database

from migration.steps.base import StepParams
from migration.steps.callables import check_spec, load_callable
from migration.steps.mongo.conversions import (
    CONVERSIONS,
    ConvertOperation,
    LowerOperation,
    ReplaceOperation,
    TrimOperation,
    UpperOperation,
)
from migration.steps.mongo.documents import (
    MISSING,
    UNADDRESSABLE,
    copy_value,
    get_path,
    set_path,
    unset_path,
)
from migration.steps.mongo.lookups import LookupOperation
from migration.steps.mongo.operation_base import OperationOutcome, check_field_path
from migration.steps.mongo.query_filters import compile_regex

KINDS = ("set", "unset", "rename", "split", "convert", "lower", "upper", "trim", "replace", "lookup")


class Classifier(StepParams):
    """``{regex: "..."}`` (with optional ``options``, e.g. ``i``) or ``{function: "module:function"}``."""

    regex: str | None = None
    options: str = ""
    function: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Classifier:
        if (self.regex is None) == (self.function is None):
            raise ValueError("a classifier is either {regex: ...} or {function: ...}")
        if self.regex is not None:
            compile_regex(self.regex, self.options)
        if self.function is not None:
            check_spec(self.function)
        return self


class SplitSpec(StepParams):
    field: str
    into: dict[str, Classifier] = Field(min_length=1)
    remove_source: bool = True
    unmatched: Literal["invalid", "error", "skip"] = "invalid"

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        return check_field_path(value)

    @field_validator("into")
    @classmethod
    def _targets(cls, value: dict[str, Classifier]) -> dict[str, Classifier]:
        for target in value:
            check_field_path(target)
        return value


class SetOperation(StepParams):
    """Give fields a value: ``{path: value, ...}``.

    A dotted path reaches into embedded documents and creates the missing ones, as
    MongoDB's ``$set`` does; setting a field inside a value that is not a document
    (``address.city`` when ``address`` is a string) is an error for that document.
    Values are written as given (a template in them renders before the step runs).

    Example:
        ```yaml
        operations:
          - set: {schema_version: 2, "address.country": DE, legacy: null}
        ```
    """

    set: dict[str, Any] = Field(min_length=1)

    @field_validator("set")
    @classmethod
    def _paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            check_field_path(path)
        return value


class UnsetOperation(StepParams):
    """Remove fields: ``[path, ...]``; a field already absent is no change.

    Example:
        ```yaml
        operations:
          - unset: [legacy_flag, "address.fax"]
        ```
    """

    unset: list[str] = Field(min_length=1)

    @field_validator("unset")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            check_field_path(path)
        return value


class RenameOperation(StepParams):
    """Move fields: ``{old path: new path, ...}``, in the order given.

    The value moves as it is, replacing whatever the new path held; a document
    without the old field is left as it is for that pair.

    Example:
        ```yaml
        operations:
          - rename: {bank: bank_name, "contact.tel": "contact.phone"}
        ```
    """

    rename: dict[str, str] = Field(min_length=1)

    @field_validator("rename")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for old, new in value.items():
            check_field_path(old)
            check_field_path(new)
            if old == new:
                raise ValueError(f"rename of {old!r} to itself")
        return value


class SplitOperation(StepParams):
    """Move one field's value into the first of several fields whose classifier accepts it.

    ``field`` is the source; ``into`` maps each target field to a classifier,
    tried in order: ``{regex: "..."}`` (with optional ``options`` such as ``i``;
    it matches anywhere, MongoDB ``$regex`` semantics: anchor it with ``^...$``) or
    ``{function: "module:function"}`` (gets the value, returns true or false;
    raising ValueError counts as false). The chosen target gets the value, the
    other targets null; a null, empty or blank value sets every target to null; a
    document without ``field`` is left alone. ``remove_source`` (default true)
    removes ``field``. A value no classifier accepts makes the document
    ``unmatched``: ``invalid`` (default: left as it is, counted and logged),
    ``error`` (counts against ``max_errors``) or ``skip``.

    Example:
        ```yaml
        operations:
          - split:
              field: swift_bic_iban
              into:
                iban_number: {regex: "^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$"}
                swift_bic_number: {function: "migration.recipes.bank_details:is_valid_bic"}
              remove_source: true
              unmatched: invalid
        ```
    """

    split: SplitSpec


def _kind(value: Any) -> str | None:
    if isinstance(value, Mapping):
        keys = [k for k in value if k in KINDS]
        return keys[0] if len(keys) == 1 and len(value) == 1 else None
    for kind in KINDS:
        if isinstance(value, StepParams) and kind in type(value).model_fields:
            return kind
    return None


Operation = Annotated[
    Annotated[SetOperation, Tag("set")]
    | Annotated[UnsetOperation, Tag("unset")]
    | Annotated[RenameOperation, Tag("rename")]
    | Annotated[SplitOperation, Tag("split")]
    | Annotated[ConvertOperation, Tag("convert")]
    | Annotated[LowerOperation, Tag("lower")]
    | Annotated[UpperOperation, Tag("upper")]
    | Annotated[TrimOperation, Tag("trim")]
    | Annotated[ReplaceOperation, Tag("replace")]
    | Annotated[LookupOperation, Tag("lookup")],
    Discriminator(
        _kind,
        custom_error_type="operation",
        custom_error_message="each operation has exactly one key: " + ", ".join(KINDS),
    ),
]


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class OperationsProgram:
    """Compiled operations: classifiers imported once, regexes compiled once.

    ``db`` is the step's database, which ``lookup`` reads; :meth:`prepare` reads
    what a batch's lookups need before its documents are applied.
    """

    def __init__(
        self,
        operations: list[Any],
        workdir: Path,
        env: Mapping[str, str],
        db: Database[Any] | None = None,
    ) -> None:
        self.operations = operations
        self.db = db
        self.looked_up: dict[int, dict[str, Any]] = {}
        self.classifiers: dict[tuple[int, str], Callable[[Any], bool]] = {}
        for index, operation in enumerate(operations):
            if isinstance(operation, SplitOperation):
                for target, spec in operation.split.into.items():
                    self.classifiers[(index, target)] = _compile_classifier(spec, workdir, env)

    @property
    def needs_batches(self) -> bool:
        return any(isinstance(operation, LookupOperation) for operation in self.operations)

    def prepare(self, docs: list[dict[str, Any]]) -> None:
        """Read what the lookups of this batch need (one query per lookup); forget the last batch's."""
        self.looked_up = {}
        for index, operation in enumerate(self.operations):
            if isinstance(operation, LookupOperation):
                if self.db is None:
                    raise RuntimeError("lookup needs the step's database")
                self.looked_up[index] = operation.fetch(self.db, docs)

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The document after every operation.

        Raises:
            OperationOutcome: a split value no classifier accepts (per ``unmatched``), a
                value a conversion cannot take, a reference a lookup does not find.
        """
        after = copy_value(doc)
        for index, operation in enumerate(self.operations):
            if isinstance(operation, SetOperation):
                for path, value in operation.set.items():
                    set_path(after, path, copy_value(value))
            elif isinstance(operation, UnsetOperation):
                for path in operation.unset:
                    unset_path(after, path)
            elif isinstance(operation, RenameOperation):
                for old, new in operation.rename.items():
                    moved = unset_path(after, old)
                    if moved is not MISSING:
                        set_path(after, new, moved)
            elif isinstance(operation, SplitOperation):
                self._split(index, operation.split, after)
            elif isinstance(operation, LookupOperation):
                if index not in self.looked_up:
                    self.prepare([doc])  # a single document, as the dry run's samples are
                operation.apply(after, self.looked_up[index], doc)
            else:
                operation.apply(after)
        return after

    def _split(self, index: int, spec: SplitSpec, doc: dict[str, Any]) -> None:
        value = get_path(doc, spec.field)
        if value is MISSING:
            return
        if value is UNADDRESSABLE:
            raise OperationOutcome("error", f"split: {spec.field} is inside an array")
        chosen: str | None = None
        if not _is_blank(value):
            for target in spec.into:
                if self.classifiers[(index, target)](value):
                    chosen = target
                    break
            if chosen is None:
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                reason = f"split: {spec.field} value {shown} matches none of {', '.join(spec.into)}"
                status = "skipped" if spec.unmatched == "skip" else spec.unmatched
                raise OperationOutcome(status, reason)
        if spec.remove_source:
            unset_path(doc, spec.field)
        for target in spec.into:
            set_path(doc, target, copy_value(value) if target == chosen else None)


def _compile_classifier(spec: Classifier, workdir: Path, env: Mapping[str, str]) -> Callable[[Any], bool]:
    if spec.regex is not None:
        pattern = compile_regex(spec.regex, spec.options)

        def by_regex(value: Any) -> bool:
            return isinstance(value, str) and pattern.search(value) is not None

        return by_regex
    assert spec.function is not None
    function = load_callable(spec.function, workdir, env)

    def by_function(value: Any) -> bool:
        try:
            return bool(function(value))
        except ValueError:
            return False

    return by_function


def describe(operations: list[Any]) -> str:
    """One line per operation, for previews."""
    lines = []
    for operation in operations:
        if isinstance(operation, SetOperation):
            lines.append("set " + ", ".join(f"{k}={v!r}" for k, v in operation.set.items()))
        elif isinstance(operation, UnsetOperation):
            lines.append("unset " + ", ".join(operation.unset))
        elif isinstance(operation, RenameOperation):
            lines.append("rename " + ", ".join(f"{k} -> {v}" for k, v in operation.rename.items()))
        elif isinstance(operation, (*CONVERSIONS, LookupOperation)):
            lines.append(operation.describe())
        else:
            spec = operation.split
            lines.append(
                f"split {spec.field} into {', '.join(spec.into)} (unmatched: {spec.unmatched}"
                + (", source removed)" if spec.remove_source else ", source kept)")
            )
    return "; ".join(lines)
