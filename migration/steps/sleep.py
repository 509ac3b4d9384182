"""The ``sleep`` step type: wait, interruptibly."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from migration.steps.base import Step, StepContext, StepParams
from migration.steps.registry import register


@register
class Sleep(Step["Sleep.Params"]):
    """Wait a number of seconds (interrupted at once by SIGINT/SIGTERM).

    Example:
        ```yaml
        - id: let-connections-drain
          uses: sleep
          with: {seconds: 30}
        ```
    """

    name = "sleep"
    outside_effects = False
    outputs = {
        "seconds": "how long it waited",
    }

    class Params(StepParams):
        seconds: float = Field(ge=0, description="how long to wait")

    def run(self, ctx: StepContext[Sleep.Params]) -> dict[str, Any]:
        ctx.log.info("sleeping", seconds=ctx.params.seconds)
        ctx.wait(ctx.params.seconds)
        return {"seconds": ctx.params.seconds}

    def preview(self, ctx: StepContext[Sleep.Params]) -> str:
        return f"would wait {ctx.params.seconds:g}s"
