"""Step types, and the public API for writing more of them (see docs/plugins.md).

A plugin imports everything it needs from here; the modules behind these names
may move, these names stay::

    from migration.steps import Step, StepContext, StepError, StepParams, run_command

Built-in step types and plugins (the ``migration.steps`` entry point group) share
one registry: :func:`register`, :func:`get_step_type`, :func:`step_types`.
"""

from migration.errors import InvalidDocument, StepError
from migration.steps._subprocess import Completed, command_text, last_line, run_command
from migration.steps.base import Preview, Quoter, Step, StepContext, StepParams, StopFlag
from migration.steps.registry import (
    ENTRY_POINT_GROUP,
    PluginError,
    broken_plugins,
    get_step_type,
    register,
    step_types,
    unregister,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Completed",
    "InvalidDocument",
    "PluginError",
    "Preview",
    "Quoter",
    "Step",
    "StepContext",
    "StepError",
    "StepParams",
    "StopFlag",
    "broken_plugins",
    "command_text",
    "get_step_type",
    "last_line",
    "register",
    "run_command",
    "step_types",
    "unregister",
]
