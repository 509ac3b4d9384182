"""The ``k8s.scale`` step type: an example plugin for ``migration``.

Everything it needs comes from the public API in ``migration.steps``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from migration.steps import Step, StepContext, StepError, StepParams, command_text, last_line, run_command


class Scale(Step["Scale.Params"]):
    """Scale a Kubernetes deployment with kubectl (e.g. to 0 while the data moves).

    Runs ``kubectl scale deployment/<deployment> --replicas=<replicas>``; the
    command is stopped (with its process group) if the migration is interrupted,
    and its output is logged with secrets masked.

    Example:
        ```yaml
        - id: stop-workers
          uses: k8s.scale
          with: {deployment: workers, replicas: 0, namespace: vnp}
        ```
    """

    # No ``name`` here: the entry point's name ("k8s.scale") is the step type's
    # name. A class that sets one must set the same.

    class Params(StepParams):
        deployment: str = Field(description="deployment to scale")
        replicas: int = Field(ge=0, description="how many pods it should run")
        namespace: str = Field(default="default", description="Kubernetes namespace")
        kubectl: str = Field(default="kubectl", description="the kubectl program")
        timeout: float = Field(default=120.0, gt=0, description="seconds before kubectl is stopped")

    def _argv(self, params: Scale.Params) -> list[str]:
        return [
            params.kubectl,
            "scale",
            f"deployment/{params.deployment}",
            f"--replicas={params.replicas}",
            f"--namespace={params.namespace}",
        ]

    def run(self, ctx: StepContext[Scale.Params]) -> dict[str, Any]:
        argv = self._argv(ctx.params)
        result = run_command(
            argv,
            cwd=ctx.workdir,
            env=ctx.env,
            timeout=ctx.params.timeout,
            redact=ctx.redact.text,
            log=ctx.log,
            stop_flag=ctx.stop_flag,
        )
        if result.timed_out:
            raise StepError(f"kubectl did not finish in {ctx.params.timeout:g}s: {command_text(argv)}")
        if result.exit_code != 0:
            reason = last_line(result.stderr) or last_line(result.stdout)
            raise StepError(
                f"kubectl exited with code {result.exit_code}: {reason}",
                outputs={"exit_code": result.exit_code},
            )
        return {"deployment": ctx.params.deployment, "replicas": ctx.params.replicas, "said": result.stdout}

    def preview(self, ctx: StepContext[Scale.Params]) -> str:
        return f"would run: {ctx.redact(command_text(self._argv(ctx.params)))}"
