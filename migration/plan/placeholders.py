"""Dry-run placeholders: stand-ins for step outputs that do not exist before the run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class Placeholder:
    """Stands for a value not known before the run (dry run): renders as ``<steps.x.outputs.y>``."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Placeholder:
        if attr.startswith("_"):  # as for a dict, the sandbox then tries placeholder['_x']
            raise AttributeError(attr)
        return Placeholder(f"{self._name}.{attr}")

    def __getitem__(self, key: Any) -> Placeholder:
        return Placeholder(f"{self._name}[{key!r}]")

    def __iter__(self) -> Iterator[Placeholder]:
        # Without it Python iterates placeholder[0], [1], ... forever. One item stands for
        # the items not known yet: ``join`` and ``{% for %}`` preview as <steps.x.outputs.y[*]>.
        return iter((Placeholder(f"{self._name}[*]"),))

    def __str__(self) -> str:
        return f"<{self._name}>"

    __repr__ = __str__
