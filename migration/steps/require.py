"""The ``require`` step type: commands, variables and free disk the plan needs."""

from __future__ import annotations

import os
import shutil
from typing import Annotated, Any

from pydantic import Field, WithJsonSchema, field_validator

from migration.errors import StepError
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.registry import register
from migration.steps.sizes import free_disk_bytes, human_bytes, parse_size


class FreeDisk(StepParams):
    path: str = Field(default=".", description="a path on the disk to check")
    # A size string is accepted and converted; the schema says so for editors. A
    # template (checked at load time, before rendering) stays a string until then.
    required: Annotated[
        int | str,
        WithJsonSchema(
            {
                "type": ["integer", "string"],
                "description": "bytes needed: 1000000, '10GB', '512MiB' or '2 x 5GB'",
            }
        ),
    ] = Field(alias="bytes")

    @field_validator("required", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | str:
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            return value
        if not isinstance(value, (int, float, str)):
            raise ValueError(f"not a size: {value!r}")
        return parse_size(value)

    @property
    def required_bytes(self) -> int:
        return parse_size(self.required)


@register
class Require(Step["Require.Params"]):
    """Check the machine has what the plan needs: commands, variables, free disk.

    Everything is checked, then the step fails with one line listing all that is
    missing. ``free_disk`` takes a path (it need not exist yet; its nearest existing
    parent is measured) and ``bytes``: a number, a size such as ``10GB`` or
    ``512MiB``, or a product such as ``"2 x {{ steps.preflight.outputs.data_bytes }}"``.
    Outputs where each command was found, which variables were checked (never their
    values) and the free bytes measured.

    Example:
        ```yaml
        - id: prerequisites
          uses: require
          with:
            commands: [mongodump, mongorestore, yarn]
            env: [DATABASE_URL]
            free_disk: {path: backups, bytes: "2 x {{ steps.preflight.outputs.data_bytes }}"}
        ```
    """

    name = "require"
    outside_effects = False
    outputs = {
        "commands": "command -> where it was found on PATH",
        "env": "names of the variables found set (never their values)",
        "free_disk": "list of {path, free_bytes, required_bytes} measured",
        "free_bytes": "free bytes at the first free_disk path",
    }

    class Params(StepParams):
        commands: list[str] = Field(default_factory=list, description="executables on PATH")
        env: list[str] = Field(default_factory=list, description="variables set and non-empty")
        free_disk: list[FreeDisk] = Field(
            default_factory=list, description="{path, bytes} (or a list of them): free space needed"
        )

        @field_validator("free_disk", mode="before")
        @classmethod
        def _one_or_many(cls, value: Any) -> Any:
            return [value] if isinstance(value, dict) else value if value is not None else []

    def run(self, ctx: StepContext[Require.Params]) -> dict[str, Any]:
        outputs, missing = self._check(ctx)
        if missing:
            raise StepError("missing: " + "; ".join(missing), outputs=outputs)
        ctx.log.info("requirements met", **{k: v for k, v in outputs.items() if k != "env"})
        return outputs

    def _check(self, ctx: StepContext[Require.Params]) -> tuple[dict[str, Any], list[str]]:
        p = ctx.params
        missing: list[str] = []
        search = ctx.env.get("PATH", os.defpath)
        found: dict[str, str] = {}
        absent = []
        for command in p.commands:
            where = shutil.which(command, path=search)
            if where:
                found[command] = where
            else:
                absent.append(command)
        if absent:
            missing.append("commands not on PATH: " + ", ".join(absent))
        unset = [name for name in p.env if not ctx.env.get(name)]
        if unset:
            missing.append("environment variables not set: " + ", ".join(unset))
        disks: list[dict[str, Any]] = []
        for disk in p.free_disk:
            try:
                required = disk.required_bytes
            except ValueError as exc:
                missing.append(f"free disk at {disk.path}: {exc}")
                continue
            target = ctx.path(disk.path)
            try:
                _, free = free_disk_bytes(target)
            except OSError as exc:
                missing.append(f"free disk at {target}: cannot measure ({exc.strerror or exc})")
                continue
            disks.append({"path": str(target), "free_bytes": free, "required_bytes": required})
            if free < required:
                missing.append(
                    f"free disk at {target}: {human_bytes(free)} free, need {human_bytes(required)}"
                )
        outputs: dict[str, Any] = {
            "commands": found,
            "env": [name for name in p.env if name not in unset],
            "free_disk": disks,
        }
        if disks:
            outputs["free_bytes"] = disks[0]["free_bytes"]
        return outputs, missing

    def preview(self, ctx: StepContext[Require.Params]) -> str:
        outputs, missing = self._check(ctx)
        parts = []
        if ctx.params.commands:
            parts.append("commands " + ", ".join(ctx.params.commands))
        if ctx.params.env:
            parts.append("env " + ", ".join(ctx.params.env))
        for disk in outputs["free_disk"]:
            parts.append(f"{human_bytes(disk['required_bytes'])} free at {disk['path']}")
        now = "would FAIL now: " + "; ".join(missing) if missing else "all present now"
        return f"would check {', '.join(parts) or 'nothing'}; {now}"
