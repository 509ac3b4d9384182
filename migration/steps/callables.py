"""Importing the user's ``module:function``: ``python`` steps, transform functions, classifiers.

One importer, so every step that names user code finds it the same way: the
working directory, then the entries of the step's ``PYTHONPATH`` (relative ones
from the working directory), ahead of the rest of ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from migration.errors import StepError

SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def check_spec(value: str) -> str:
    """Validate the shape ``package.module:function`` (for parameter models)."""
    if not SPEC.match(value):
        raise ValueError(f"expected 'module:function' (e.g. mypkg.fixes:run), got {value!r}")
    return value


def import_search_paths(workdir: Path, env: Mapping[str, str]) -> list[str]:
    """The working directory, then ``PYTHONPATH`` entries (relative ones from ``workdir``)."""
    paths = [str(workdir)]
    for entry in (env.get("PYTHONPATH") or "").split(os.pathsep):
        if entry:
            paths.append(entry if os.path.isabs(entry) else str(workdir / entry))
    return paths


def module_exists(spec: str, workdir: Path, env: Mapping[str, str]) -> bool:
    """Whether the module of ``spec`` can be found, without importing (running) it."""
    module_name = spec.partition(":")[0]
    saved = list(sys.path)
    try:
        sys.path[:0] = import_search_paths(workdir, env)
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False
    finally:
        sys.path[:] = saved


def load_callable(spec: str, workdir: Path, env: Mapping[str, str]) -> Callable[..., Any]:
    """Import ``module:function`` with ``workdir`` and ``PYTHONPATH`` on ``sys.path``.

    The entries stay on ``sys.path`` (a function may import lazily when called).

    Raises:
        StepError: the module is not found or fails to import, or has no such callable.
    """
    check_spec(spec)
    module_name, _, attribute = spec.partition(":")
    for entry in reversed(import_search_paths(workdir, env)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise StepError(
                f"cannot import {spec}: no module named {module_name!r} (searched {workdir} and PYTHONPATH)"
            ) from exc
        raise StepError(f"cannot import {spec}: module {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise StepError(
            f"cannot import {spec}: module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise StepError(f"cannot import {spec}: module {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise StepError(f"{spec} is not a function (it is a {type(target).__name__})")
    return target
