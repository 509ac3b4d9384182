"""What a transform ``function`` may get besides the document: ``ctx``.

A function that declares a second parameter (``def f(doc, ctx)`` or
``def f(doc, ctx=None)``) is called ``f(doc, ctx)`` with a
:class:`TransformContext`; one with a single parameter is called ``f(doc)``.

A function may carry a per-batch hook, ``f.prepare_batch = g``: ``g(docs, ctx)``
is called with the documents of each batch (copies, as read) before ``f`` is
called for each of them, so it can fetch what the whole batch needs in one
query and leave it in ``ctx.batch`` (emptied before every batch). Nothing a
correct result depends on may outlive the batch: a resumed run, or each worker
of ``workers: N``, starts from the batch it is at with a fresh ``ctx``
(``ctx.cache`` lives as long as one process and must only ever be a cache).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo.database import Database

from migration.errors import StepError
from migration.steps.callables import load_callable
from migration.steps.mongo.common import collection_exists
from migration.steps.mongo.documents import copy_value
from migration.steps.mongo.guarded_writes import Planner
from migration.steps.mongo.lookups import LookupOperation
from migration.steps.mongo.operations import OperationsProgram


@dataclass
class TransformContext:
    """The second argument of a transform function.

    Attributes:
        args: the step's ``with.args`` mapping, rendered (``--var`` and ``env`` applied).
        db: the step's database (pymongo ``Database``) on the step's own connection:
            read what the function needs; writes made through it are neither
            guarded nor logged nor undone.
        log: the run's logger (structlog style: ``ctx.log.info("event", key=value)``).
        batch: what ``prepare_batch`` fetched for the current batch; emptied before each.
        cache: kept for the life of the process (a worker's, or the step's): a cache only.
    """

    args: dict[str, Any]
    db: Database[Any]
    log: Any
    batch: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def wants_context(function: Callable[..., Any]) -> bool:
    """Whether ``function`` declares a second positional parameter (or ``*args``)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    return len([p for p in parameters if p.kind in _POSITIONAL]) >= 2


def batch_hook(function: Callable[..., Any], spec: str) -> Callable[..., Any] | None:
    """The function's ``prepare_batch`` hook, or None.

    Raises:
        StepError: ``prepare_batch`` is there but is not callable.
    """
    hook = getattr(function, "prepare_batch", None)
    if hook is None:
        return None
    if not callable(hook):
        raise StepError(f"{spec}.prepare_batch is not a function (it is a {type(hook).__name__})")
    return hook


class FunctionCaller:
    """Calls a transform function the way it asks to be called, with its batch hook first."""

    def __init__(self, function: Callable[..., Any], spec: str, context: TransformContext) -> None:
        self.function = function
        self.context = context
        self.with_context = wants_context(function)
        self.hook = batch_hook(function, spec)

    def prepare(self, docs: list[dict[str, Any]]) -> None:
        """Start a batch: empty ``ctx.batch`` and run the hook (its exceptions propagate)."""
        self.context.batch.clear()
        if self.hook is not None:
            self.hook([copy_value(doc) for doc in docs], self.context)

    def __call__(self, doc: dict[str, Any]) -> Any:
        if self.with_context:
            return self.function(doc, self.context)
        return self.function(doc)


def make_planner(
    function: str | None,
    operations: list[Any] | None,
    *,
    workdir: Path,
    env: Mapping[str, str],
    redact: Callable[[str], str],
    db: Database[Any],
    args: dict[str, Any],
    log: Any,
) -> Planner:
    """The planner of a transform, built alike in the step's process and in each worker.

    Raises:
        StepError: the function (or a classifier) cannot be imported.
    """
    if function is not None:
        context = TransformContext(args, db, log)
        caller = FunctionCaller(load_callable(function, workdir, env), function, context)
        return Planner(caller, None, redact, caller.prepare if caller.hook is not None else None)
    assert operations is not None
    for operation in operations:
        if isinstance(operation, LookupOperation) and not collection_exists(db, operation.lookup.from_):
            raise StepError(
                f"lookup: collection {operation.lookup.from_!r} does not exist in database {db.name!r}"
            )
    program = OperationsProgram(operations, workdir, env, db)
    return Planner(None, program, redact, program.prepare if program.needs_batches else None)
