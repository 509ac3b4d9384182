"""Importing the user's ``module:function`` (transform functions, split classifiers)."""

from __future__ import annotations

import importlib
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
        raise ValueError(f"expected 'module:function' (e.g. mypkg.fixes:split), got {value!r}")
    return value


def load_callable(spec: str, workdir: Path, env: Mapping[str, str]) -> Callable[..., Any]:
    """Import ``module:function`` with ``workdir`` and ``PYTHONPATH`` on ``sys.path``.

    The entries stay on ``sys.path`` (a function may import lazily when called).

    Raises:
        StepError: the module does not import, or has no such callable.
    """
    check_spec(spec)
    module_name, _, attribute = spec.partition(":")
    entries = [str(workdir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    for entry in reversed(entries):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise StepError(
            f"cannot import {module_name!r} for {spec!r} (looked in {workdir} and PYTHONPATH): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise StepError(f"{module_name!r} has no {attribute!r} (from {spec!r})")
        target = getattr(target, part)
    if not callable(target):
        raise StepError(f"{spec!r} is a {type(target).__name__}, not a function")
    return target
