"""A loaded plan: the checked model with its file, digest, raw data and positions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration.errors import PlanError
from migration.plan.model import Plan
from migration.plan.yaml_positions import Loc, Positions


@dataclass
class LoadedPlan:
    """A plan that passed every static check, with what locates its errors."""

    plan: Plan
    path: Path
    display_path: str
    digest: str
    raw: dict[str, Any]
    positions: Positions

    def error(self, loc: Loc, message: str, at_key: bool = False) -> PlanError:
        return self.positions.error(self.display_path, loc, message, at_key)
