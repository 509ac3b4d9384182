"""Python rollback handlers, registered by name.

A plan may say ``rollback: {handler: NAME, with: {...}}`` instead of a list of
steps. NAME is looked up in the entry point group ``migration.rollback_handlers``
(or registered in-process with :func:`register_handler`). The handler is called
as ``handler(ctx, **with)`` where ``ctx`` is a :class:`RollbackContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import structlog

RollbackHandler = Callable[..., Any]

_HANDLERS: dict[str, RollbackHandler] = {}


@dataclass
class RollbackContext:
    """What a rollback handler gets: the failure, the run, earlier outputs."""

    run_id: str
    plan_name: str
    workdir: Path
    error: str | None
    outputs_of: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def log(self) -> Any:
        return structlog.get_logger("migration.rollback")


def register_handler(name: str) -> Callable[[RollbackHandler], RollbackHandler]:
    def decorate(fn: RollbackHandler) -> RollbackHandler:
        _HANDLERS[name] = fn
        return fn

    return decorate


def find_handler(name: str) -> RollbackHandler | None:
    if name in _HANDLERS:
        return _HANDLERS[name]
    for ep in entry_points(group="migration.rollback_handlers"):
        if ep.name == name:
            handler = ep.load()
            _HANDLERS[name] = handler
            return handler
    return None
