"""One registry of plugins: step types, keyed by name, and rollback handlers.

Step types are filled by the :func:`register` decorator (built-ins) and by the
``migration.steps`` entry point group (plugins: each entry point names a
:class:`Step` subclass, and the entry point's name is the step type's name).
Rollback handlers (``rollback: {handler: NAME}``) come from :func:`register_handler`
or the ``migration.rollback_handlers`` group.

A plugin that fails to load never takes the others down: it is reported once as
a warning naming its entry point, left out of ``migration steps`` and ``schema``,
and a plan that uses it gets a one-line error saying why it is missing.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, TypeVar

from migration.errors import MigrationError, UsageError
from migration.steps.base import Step

ENTRY_POINT_GROUP = "migration.steps"

_REGISTRY: dict[str, type[Step[Any]]] = {}
# Step type name -> why the plugin entry point that should provide it is missing.
_BROKEN: dict[str, str] = {}
_LOADED = False

# stdlib logging: the warning reaches stderr whether or not the CLI has configured
# structlog yet (``migration schema`` does not), and never stdout.
_log = logging.getLogger("migration.steps")

# Built-in step types by name, imported on first use: a plan of shell steps
# never pays for importing pymongo.
BUILTIN_MODULES = {
    "shell": "migration.steps.shell",
    "http.check": "migration.steps.http",
    "process.start": "migration.steps.process",
    "process.stop": "migration.steps.process",
    "confirm": "migration.steps.gates",
    "notify": "migration.steps.notify",
    "python": "migration.steps.python_call",
    "sleep": "migration.steps.sleep",
    "require": "migration.steps.require",
    "mongo.preflight": "migration.steps.mongo.preflight",
    "mongo.backup": "migration.steps.mongo.backup",
    "mongo.restore": "migration.steps.mongo.restore",
    "mongo.transform": "migration.steps.mongo.transform",
    "mongo.validate": "migration.steps.mongo.validate",
}

S = TypeVar("S", bound=type[Step[Any]])


class PluginError(UsageError):
    """A plan uses a step type whose plugin entry point failed to load (exit 2)."""


def register(cls: S) -> S:
    """Class decorator: add a step type under ``cls.name``; a duplicate name raises."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"step type {cls.__qualname__} has no name")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise MigrationError(
            f"step type {name!r} registered twice ({existing.__module__} and {cls.__module__})"
        )
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a step type (tests that register a throwaway type clean up with this)."""
    _REGISTRY.pop(name, None)


def _where_it_failed(exc: BaseException, ep: EntryPoint) -> str:
    """`` (at file:line[:col])``: the plugin's own line that failed, for its author.

    The deepest frame in the plugin's own package (the entry point's module's top
    package); none when the failure is not in its code (a module that does not exist).
    """
    if isinstance(exc, SyntaxError) and exc.filename:
        column = f":{exc.offset}" if exc.offset else ""
        return f" (at {exc.filename}:{exc.lineno}{column})"
    package = ep.module.split(".")[0]
    own = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename != __file__ and _in_package(frame.filename, package)
    ]
    return f" (at {own[-1].filename}:{own[-1].lineno})" if own else ""


def _in_package(filename: str, package: str) -> bool:
    path = Path(filename)
    return path.stem == package or package in path.parts[:-1]


def _load_entry_point(ep: EntryPoint) -> None:
    """Register one plugin, or raise MigrationError saying why it cannot be used."""
    where = f"step plugin entry point {ep.name!r} ({ep.value})"
    try:
        cls = ep.load()
    except Exception as exc:
        raise MigrationError(
            f"{where} failed to load: {type(exc).__name__}: {exc}{_where_it_failed(exc, ep)}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Step)):
        raise MigrationError(f"{where} is not a migration.steps.Step subclass")
    declared = cls.__dict__.get("name")
    if declared is None:
        cls.name = ep.name
    elif declared != ep.name:
        # Either name alone would surprise someone: the plan author reads the
        # entry point in the package metadata, the plugin author the class.
        raise MigrationError(
            f"{where}: class {cls.__qualname__} declares name {declared!r}, but the entry point "
            f"is named {ep.name!r}; make them the same"
        )
    if ep.name in BUILTIN_MODULES:
        raise MigrationError(f"{where}: {ep.name!r} is a built-in step type")
    register(cls)


def _load() -> None:
    """Import every built-in and every plugin; a broken plugin is reported, not raised."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in sorted(set(BUILTIN_MODULES.values())):
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            _load_entry_point(ep)
        except MigrationError as exc:
            reason = str(exc)
            _BROKEN.setdefault(ep.name, reason)
            _log.warning("warning: %s (left out: plans that use it fail)", reason)


def broken_plugins() -> dict[str, str]:
    """Entry point names of plugins that failed to load, with the reason."""
    _load()
    return dict(_BROKEN)


def step_types() -> dict[str, type[Step[Any]]]:
    """Every usable step type by name, built-ins and plugins, sorted."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_step_type(name: str) -> type[Step[Any]] | None:
    """The step type called ``name``, or None if there is none.

    Raises:
        PluginError: ``name`` is the entry point of a plugin that failed to load.
    """
    if name not in _REGISTRY and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        _load()  # a plugin, or unknown
    if name not in _REGISTRY and name in _BROKEN:
        raise PluginError(f"step type {name!r} is not available: {_BROKEN[name]}")
    return _REGISTRY.get(name)


@contextmanager
def registered(cls: S) -> Iterator[S]:
    """Register ``cls`` for the duration of a ``with`` block."""
    register(cls)
    try:
        yield cls
    finally:
        unregister(cls.name)


# -- rollback handlers --------------------------------------------------------------
# ``handler(ctx, **with)`` callables, run as ordinary steps through the adapter in
# :mod:`migration.steps.rollback_handler`.

RollbackHandler = Callable[..., Any]
HANDLER_GROUP = "migration.rollback_handlers"

_HANDLERS: dict[str, RollbackHandler] = {}


def register_handler(name: str) -> Callable[[RollbackHandler], RollbackHandler]:
    """Decorator: register a rollback handler under ``name``."""

    def decorate(fn: RollbackHandler) -> RollbackHandler:
        _HANDLERS[name] = fn
        return fn

    return decorate


def find_handler(name: str) -> RollbackHandler | None:
    """The rollback handler registered (or installed as an entry point) under ``name``."""
    if name in _HANDLERS:
        return _HANDLERS[name]
    for ep in entry_points(group=HANDLER_GROUP):
        if ep.name == name:
            try:
                handler = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"rollback handler entry point {name!r} ({ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}{_where_it_failed(exc, ep)}"
                ) from exc
            _HANDLERS[name] = handler
            return handler
    return None
