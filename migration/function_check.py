"""Whether the ``module:function`` a step names exists, without running the module.

For the dry run: a missing function is something the plan's static checks can
know (exit 2), not a prediction from the data. The module is found with
``importlib``'s finder and its source read with :mod:`ast`; nothing is imported
(importing user code may have side effects). Only what is certain is reported:
a module that is not Python source, that star-imports, or that defines a
module-level ``__getattr__`` is given the benefit of the doubt.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from migration.steps.callables import SPEC, import_search_paths


def function_specs(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``function: "module:name"`` inside rendered parameters, with where it is."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "function" and isinstance(item, str) and SPEC.match(item):
                yield where, item
            else:
                yield from function_specs(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from function_specs(item, f"{path}[{i}]")


def missing_function(spec: str, workdir: Path, env: Mapping[str, str]) -> str | None:
    """Why ``spec`` cannot be called (no such module, no such name in it), or None."""
    module_name, _, attribute = spec.partition(":")
    saved = list(sys.path)
    try:
        sys.path[:0] = import_search_paths(workdir, env)
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    finally:
        sys.path[:] = saved
    if found is None:
        return f"no module named {module_name!r} (searched {workdir} and PYTHONPATH)"
    origin = found.origin
    if not origin or not origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"), origin)
    except (OSError, SyntaxError, ValueError) as exc:
        return f"module {module_name!r} cannot be read: {exc}"
    first = attribute.split(".")[0]
    names = _top_level_names(tree)
    if first in names or "*" in names or "__getattr__" in names:
        return None
    return f"module {module_name!r} has no {first!r}"


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names bound at module level (in ``if``/``try`` blocks too)."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []) or [])
                for handler in getattr(node, "handlers", []) or []:
                    visit(handler.body)
            elif isinstance(node, ast.Expr):
                continue

    visit(tree.body)
    # NamedExpr (walrus) at module level binds too.
    names.update(n.target.id for n in ast.walk(tree) if isinstance(n, ast.NamedExpr))
    return names
