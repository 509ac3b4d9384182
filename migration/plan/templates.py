"""Jinja2 templates in a sandbox with StrictUndefined: the plan layer's one import for them.

The context is ``vars``, ``env``, ``steps.<id>.outputs`` and ``run``. The work is
done by modules named for each concern; this one gathers their public names:

- :mod:`.sandbox`: the environment, :class:`TemplateError`, :func:`is_template`;
- :mod:`.limits`: what one rendering may compute (:class:`LimitExceeded`, ``MAX_*``);
- :mod:`.template_check`: static analysis (:func:`parse`, :func:`references`,
  :func:`check_renderable`);
- :mod:`.placeholders`: dry-run stand-ins for outputs (:class:`Placeholder`);
- :mod:`.quoting`: a quoter per ``with:`` field (shell, SQL literal, none);
- :mod:`.render`: :func:`render_string`, :func:`render_value`, :func:`render_with`,
  :func:`evaluate`, :func:`truthy`.
"""

from __future__ import annotations

from migration.plan.limits import (
    MAX_CPU_SECONDS,
    MAX_INT_BITS,
    MAX_MADE,
    MAX_STEPS,
    MAX_VALUE,
    LimitExceeded,
)
from migration.plan.placeholders import Placeholder
from migration.plan.quoting import Quoter, check_shell_template, check_sql_template, check_template
from migration.plan.render import ENVIRONMENTS, evaluate, render_string, render_value, render_with, truthy
from migration.plan.sandbox import ENV, TemplateError, is_template
from migration.plan.template_check import (
    ROOTS,
    References,
    check_renderable,
    iter_strings,
    parse,
    parse_expression,
    references,
)

__all__ = [
    "ENV",
    "ENVIRONMENTS",
    "MAX_CPU_SECONDS",
    "MAX_INT_BITS",
    "MAX_MADE",
    "MAX_STEPS",
    "MAX_VALUE",
    "ROOTS",
    "LimitExceeded",
    "Placeholder",
    "Quoter",
    "References",
    "TemplateError",
    "check_renderable",
    "check_shell_template",
    "check_sql_template",
    "check_template",
    "evaluate",
    "is_template",
    "iter_strings",
    "parse",
    "parse_expression",
    "references",
    "render_string",
    "render_value",
    "render_with",
    "truthy",
]
