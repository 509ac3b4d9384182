"""``--dry-run``: show every phase, step, checkpoint and the rollback path, changing nothing.

Each step's parameters are rendered (outputs of earlier steps appear as
``<steps.x.outputs.y>`` placeholders) and its step type's own ``preview`` runs:
it may read the live database, never write. Nothing is written under the state
directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from migration.context import TemplateContext, render_with
from migration.errors import MigrationError
from migration.plan import templates
from migration.plan.loader import LoadedPlan
from migration.plan.model import StepSpec
from migration.secrets import Redactor
from migration.state.document import Status
from migration.steps.base import StepContext
from migration.steps.registry import get_step_type


def _fmt(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


class Previewer:
    def __init__(
        self,
        loaded: LoadedPlan,
        context: TemplateContext,
        workdir: Path,
        redact: Redactor,
        assume_yes: bool,
    ) -> None:
        self.loaded = loaded
        self.context = context
        self.workdir = workdir
        self.redact = redact
        self.assume_yes = assume_yes
        self.problems: list[str] = []
        self.lines: list[str] = []
        everything = [
            *loaded.plan.all_steps(),
            *(s for p in loaded.plan.phases for s in p.rollback),
            *loaded.plan.rollback_steps(),
        ]
        context.steps = {
            s.id: {"outputs": templates.Placeholder(f"steps.{s.id}.outputs"), "status": Status.PENDING}
            for s in everything
        }

    def out(self, text: str = "", indent: int = 0) -> None:
        pad = "  " * indent
        for line in self.redact.text(text).splitlines() or [""]:
            self.lines.append(pad + line)

    def step(self, spec: StepSpec, indent: int) -> None:
        self.out(f"- step {spec.id} ({spec.uses})", indent)
        extras = []
        if spec.when:
            extras.append(f"when: {spec.when}")
        if spec.retries:
            extras.append(f"retries: {spec.retries}")
        if spec.timeout:
            extras.append(f"timeout: {spec.timeout:g}s")
        if spec.continue_on_error:
            extras.append("continue_on_error")
        if extras:
            self.out(", ".join(extras), indent + 2)
        step_type = get_step_type(spec.uses)
        assert step_type is not None
        ctx_dict = self.context.as_dict()
        try:
            rendered = render_with(step_type, spec.with_, ctx_dict)
        except templates.TemplateError as exc:
            self.problems.append(f"{spec.id}: {exc}")
            self.out(f"with: cannot render: {exc}", indent + 2)
            return
        self.redact.learn(rendered)
        for key, value in rendered.items():
            if key in step_type.previewed_fields:
                self.out(f"{key}: see the preview below", indent + 2)
            else:
                self.out(f"{key}: {_fmt(value)}", indent + 2)
        try:
            params = step_type.Params.model_validate(rendered)
        except ValidationError:
            for key in step_type.previewed_fields & set(rendered):  # the preview will not show them
                self.out(f"{key}: {_fmt(rendered[key])}", indent + 2)
            if "<steps." in _fmt(rendered):
                self.out("preview: depends on outputs of earlier steps; shown at run time", indent + 2)
            else:
                self.problems.append(f"{spec.id}: parameters do not validate after rendering")
                self.out("preview: parameters do not validate after rendering", indent + 2)
            return
        ctx = StepContext(
            step_id=spec.id,
            params=params,
            workdir=self.workdir,
            plan_name=self.loaded.plan.name,
            dry_run=True,
            assume_yes=self.assume_yes,
            redact=self.redact,
            env=dict(self.context.env),
        )
        try:
            text = step_type().preview(ctx)
        except MigrationError as exc:
            self.problems.append(f"{spec.id}: {exc}")
            text = f"PROBLEM: {exc}"
        except Exception as exc:  # a step's preview must not crash the dry run
            self.problems.append(f"{spec.id}: {type(exc).__name__}: {exc}")
            text = f"PROBLEM: {type(exc).__name__}: {exc}"
        self.out("preview:", indent + 2)
        self.out(str(text), indent + 3)

    def render(self) -> str:
        plan = self.loaded.plan
        self.out(f"plan: {plan.name}  (dry run: nothing is changed, nothing is written)")
        if plan.description:
            self.out(f"description: {plan.description}")
        self.out(f"file: {self.loaded.display_path}  digest: {self.loaded.digest}")
        self.out(f"on_failure: {plan.on_failure}")
        if self.context.vars:
            self.out("vars:")
            for k, v in self.context.vars.items():
                self.out(f"{k}: {_fmt(v)}", 1)
        for number, phase in enumerate(plan.phases, 1):
            self.out("")
            self.out(
                f"phase {number}/{len(plan.phases)}: {phase.id}"
                + (f" - {phase.description}" if phase.description else "")
            )
            for spec in phase.steps:
                self.step(spec, 1)
            if phase.checkpoint:
                self.out(
                    "checkpoint (all must hold, else "
                    + ("rollback" if plan.on_failure == "rollback" else "stop")
                    + "):",
                    1,
                )
                for cp in phase.checkpoint:
                    self.out(f"- {cp.that}" + (f"   # {cp.message}" if cp.message else ""), 2)
        self.out("")
        self.out("rollback path (on a failed step or checkpoint, with on_failure: rollback):")
        phase_rb = [p for p in plan.phases if p.rollback]
        if phase_rb:
            self.out("phase rollbacks of started phases, newest first:", 1)
            for phase in reversed(phase_rb):
                self.out(f"phase {phase.id}:", 2)
                for spec in phase.rollback:
                    self.step(spec, 3)
        if isinstance(plan.rollback, list):
            if plan.rollback:
                self.out("then the plan's rollback:", 1)
                for spec in plan.rollback:
                    self.step(spec, 2)
            elif not phase_rb:
                self.out("none defined", 1)
        else:
            self.out(f"then the rollback handler {plan.rollback.handler} with {_fmt(plan.rollback.with_)}", 1)
        self.out("")
        if self.problems:
            self.out(f"dry run found {len(self.problems)} problem(s):")
            for p in self.problems:
                self.out(f"- {p}", 1)
        else:
            self.out("dry run: ok")
        return "\n".join(self.lines) + "\n"
