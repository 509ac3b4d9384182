"""The ``python`` step type: call the user's ``module:function``."""

from __future__ import annotations

import contextlib
import inspect
import io
import traceback
from typing import Any

from pydantic import Field, field_validator

from migration.errors import MigrationError, StepError
from migration.jsonable import jsonable
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.callables import check_spec, load_callable, module_exists
from migration.steps.registry import register


@register
class Python(Step["Python.Params"]):
    """Call a Python function ``module:function`` with keyword arguments.

    The module is imported with the working directory and ``PYTHONPATH`` on
    ``sys.path``. ``params`` are passed as keyword arguments, plus ``ctx`` (the step
    context: ``ctx.log``, ``ctx.check_stop()``...) if the function has a parameter
    of that name. A returned dict becomes the outputs; another value becomes
    ``{"result": value}``; None gives no outputs. An exception fails the step with
    its message (the traceback is logged); raise ``migration.errors.StepError`` for
    a clean one-line failure.

    Example:
        ```yaml
        - id: count-orphans
          uses: python
          with:
            function: scripts.checks:count_orphans
            params: {collection: PropertyBankDetails, limit: 100}
        ```
    """

    name = "python"

    class Params(StepParams):
        function: str = Field(description="'module:function' to call")
        params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments")

        @field_validator("function")
        @classmethod
        def _spec(cls, value: str) -> str:
            return check_spec(value)

    def run(self, ctx: StepContext[Python.Params]) -> dict[str, Any]:
        p = ctx.params
        function = load_callable(p.function, ctx.workdir, ctx.env)
        kwargs = dict(p.params)
        try:
            accepts_ctx = "ctx" in inspect.signature(function).parameters
        except (TypeError, ValueError):
            accepts_ctx = False
        if accepts_ctx:
            kwargs["ctx"] = ctx
        ctx.log.info("calling", function=p.function)
        printed = io.StringIO()
        try:
            # stdout is for machine-readable output; what the function prints is logged, masked.
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                result = function(**kwargs)
        except MigrationError:
            raise
        except Exception as exc:
            ctx.log.error(
                "python function failed",
                function=p.function,
                traceback=ctx.redact(traceback.format_exc()),
            )
            raise StepError(f"{p.function} raised {type(exc).__name__}: {ctx.redact(str(exc))}") from exc
        finally:
            for line in printed.getvalue().splitlines():
                ctx.log.info("output", line=ctx.redact(line))
        if result is None:
            return {}
        outputs = result if isinstance(result, dict) else {"result": result}
        return dict(ctx.redact(jsonable(outputs)))

    def preview(self, ctx: StepContext[Python.Params]) -> str:
        p = ctx.params
        module_name = p.function.partition(":")[0]
        args = ", ".join(f"{k}={v!r}" for k, v in p.params.items())
        text = f"would call {p.function}({ctx.redact(args)})"
        # Locate the module without executing it (importing may have side effects).
        found = module_exists(p.function, ctx.workdir, ctx.env)
        return text if found else text + f"; WARNING: module {module_name!r} not found"
