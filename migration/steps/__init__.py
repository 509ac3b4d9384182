"""Step types: one registry, built-ins plus the ``migration.steps`` entry point group."""

from migration.steps.base import Step, StepContext, StepParams
from migration.steps.registry import get_step_type, register, step_types

__all__ = ["Step", "StepContext", "StepParams", "get_step_type", "register", "step_types"]
