"""``--dry-run``: show every phase, step, checkpoint and the rollback path, changing nothing.

Each step's parameters are rendered (outputs of earlier steps appear as
``<steps.x.outputs.y>`` placeholders) and its step type's own ``preview`` runs:
it may read the live database, never write. Nothing is written under the state
directory.

A dry run never says "ok" when it can tell the run would fail. Each problem is
a :class:`Problem`: *static* when the plan itself is wrong (a template that does
not render, parameters that do not validate, a ``function`` that does not
exist: exit 2), *predicted* when the live preview foresees a failure (a step's
preview says so through :class:`~migration.steps.base.Preview`, a preview that
cannot even read, a checkpoint that can already be judged and fails: exit 1).
Checkpoints whose inputs are known (vars, outputs a preview computed exactly,
such as ``mongo.preflight``'s) are evaluated and shown as would pass / would fail.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from migration.context import TemplateContext, render_with
from migration.errors import MigrationError
from migration.function_check import function_specs, missing_function
from migration.plan import templates
from migration.plan.loader import LoadedPlan
from migration.plan.model import Checkpoint, StepSpec
from migration.resume_vars import learn_secrets_of_steps
from migration.secrets import Redactor
from migration.state.document import Status
from migration.steps.base import Preview, Step, StepContext
from migration.steps.registry import get_step_type
from migration.steps.rollback_handler import HANDLER_USES, handler_entry_id, handler_step_type

# How a dry run renders an output not known yet (migration.plan.placeholders).
_OUTPUT_PLACEHOLDER = re.compile(r"<steps(?:\.([A-Za-z0-9_]+)|\['([^'\]]+)'\])\.outputs\.([A-Za-z0-9_]+)>")

# The exit codes of a dry run that predicts a failure (docs/design.md, "Dry run").
EXIT_STATIC = 2
EXIT_PREDICTED = 1


def _fmt(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


@dataclass(frozen=True)
class Problem:
    """Something that makes the run fail: ``static`` when the plan is wrong (exit 2),
    else predicted by the live preview (exit 1)."""

    where: str
    text: str
    static: bool

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


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
        self.problems: list[Problem] = []
        self.lines: list[str] = []
        self.known: set[str] = set()  # steps whose outputs a preview computed
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

    def _explain_outputs(self, text: str) -> str:
        """A step's preview in words where it shows an output still to come: ``<steps.backup.outputs.path>``
        reads "the path that step backup (phase backup) writes during this run"."""
        phase_of = {s.id: p.id for p in self.loaded.plan.phases for s in p.steps}

        def words(match: re.Match[str]) -> str:
            step_id, output = match.group(1) or match.group(2), match.group(3)
            phase = phase_of.get(step_id)
            where = f" (phase {phase})" if phase else ""
            return f"the {output} that step {step_id}{where} writes during this run"

        return _OUTPUT_PLACEHOLDER.sub(words, text)

    def step(
        self, spec: StepSpec, indent: int, main: bool = False, step_type: type[Step[Any]] | None = None
    ) -> None:
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
        step_type = step_type or get_step_type(spec.uses)
        assert step_type is not None
        ctx_dict = self.context.as_dict()
        try:
            rendered = render_with(step_type, spec.with_, ctx_dict)
        except templates.TemplateError as exc:
            self.problems.append(Problem(spec.id, str(exc), static=True))
            self.out(f"with: cannot render: {exc}", indent + 2)
            return
        self.redact.learn(rendered)
        for key, value in rendered.items():
            if key in step_type.previewed_fields:
                self.out(f"{key}: see the preview below", indent + 2)
            else:
                self.out(f"{key}: {_fmt(value)}", indent + 2)
        if spec.uses == HANDLER_USES and "<steps." in _fmt(rendered):
            # A handler takes any arguments: placeholders would reach its own preview
            # as if they were values (a backup folder named "<steps.backup...>").
            self.out("preview: depends on outputs of earlier steps; shown at run time", indent + 2)
            return
        try:
            params = step_type.Params.model_validate(rendered)
        except ValidationError:
            for key in step_type.previewed_fields & set(rendered):  # the preview will not show them
                self.out(f"{key}: {_fmt(rendered[key])}", indent + 2)
            if "<steps." in _fmt(rendered):
                self.out("preview: depends on outputs of earlier steps; shown at run time", indent + 2)
            else:
                self.problems.append(Problem(spec.id, "parameters do not validate after rendering", True))
                self.out("preview: parameters do not validate after rendering", indent + 2)
            return
        missing = [
            Problem(spec.id, f"with.{where}: {function}: {why}", static=True)
            for where, function in function_specs(rendered)
            if (why := missing_function(function, self.workdir, self.context.env)) is not None
        ]
        if missing:
            self.problems.extend(missing)
            self.out("preview: not run: " + "; ".join(p.text for p in missing), indent + 2)
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
            preview = Preview.of(step_type().preview(ctx))
        except MigrationError as exc:
            self.problems.append(Problem(spec.id, str(exc), static=False))
            preview = Preview(f"PROBLEM: {exc}")
        except Exception as exc:  # a step's preview must not crash the dry run
            self.problems.append(Problem(spec.id, f"{type(exc).__name__}: {exc}", static=False))
            preview = Preview(f"PROBLEM: {type(exc).__name__}: {exc}")
        self.out("preview:", indent + 2)
        self.out(self._explain_outputs(str(preview)), indent + 3)
        for problem in preview.problems:
            self.problems.append(Problem(spec.id, problem, static=False))
            self.out(f"PREDICTED FAILURE: {problem}", indent + 3)
        if preview.outputs is not None and not preview.problems and main:
            # Known now, exactly as the run would record them: later checkpoints use them.
            self.context.steps[spec.id] = {"outputs": preview.outputs, "status": Status.SUCCEEDED}
            self.known.add(spec.id)

    def checkpoint(self, phase_id: str, cp: Checkpoint, indent: int) -> None:
        """One condition: judged now when its inputs are known, else at run time."""
        line = f"- {cp.that}" + (f"   # {cp.message}" if cp.message else "")
        try:
            needs = templates.references(templates.parse_expression(cp.that)).steps - self.known
        except templates.TemplateError:
            needs = {"?"}
        if needs:
            self.out(f"{line}   -> judged at run time (needs steps {', '.join(sorted(needs))})", indent)
            return
        try:
            value = templates.evaluate(cp.that, self.context.as_dict())
            holds = templates.truthy(value)
            shown = _fmt(value) if not isinstance(value, bool) else ""
        except templates.TemplateError as exc:
            holds, shown = False, f"error: {exc}"
        verdict = "would pass" if holds else "WOULD FAIL"
        self.out(f"{line}   -> {verdict}" + (f" ({shown})" if shown else ""), indent)
        if not holds:
            why = cp.message or cp.that
            self.problems.append(Problem(f"checkpoint of phase {phase_id}", f"would fail: {why}", False))

    def render(self) -> str:
        plan = self.loaded.plan
        self.out(f"plan: {plan.name}  (dry run: nothing is changed, nothing is written)")
        if plan.description:
            self.out(f"description: {plan.description}")
        self.out(f"file: {self.loaded.display_path}  digest: {self.loaded.digest}")
        self.out(f"on_failure: {plan.on_failure}")
        if self.context.vars:
            # A value that is a secret only where a step uses it is masked here too.
            learn_secrets_of_steps(plan, self.context, self.redact)
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
                self.step(spec, 1, main=True)
            if phase.checkpoint:
                self.out(
                    "checkpoint (all must hold, else "
                    + ("rollback" if plan.on_failure == "rollback" else "stop")
                    + "):",
                    1,
                )
                for cp in phase.checkpoint:
                    self.checkpoint(phase.id, cp, 2)
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
            name = plan.rollback.handler
            handler = handler_step_type(name)
            self.out(f"then the rollback handler {name}:", 1)
            if handler is None:  # validation refuses this first; a plugin may vanish meanwhile
                self.problems.append(Problem("rollback", f"no rollback handler {name!r} registered", True))
                self.out(f"PROBLEM: no rollback handler {name!r} registered", 2)
            else:
                spec = StepSpec.model_construct(
                    id=handler_entry_id(name), uses=HANDLER_USES, with_=plan.rollback.with_
                )
                self.step(spec, 2, step_type=handler)
        self.out("")
        self.summary()
        return "\n".join(self.lines) + "\n"

    @property
    def exit_code(self) -> int:
        """0 when nothing predicts a failure; 2 when the plan is wrong; 1 when the data is."""
        if any(p.static for p in self.problems):
            return EXIT_STATIC
        return EXIT_PREDICTED if self.problems else 0

    def summary(self) -> None:
        if not self.problems:
            self.out("dry run: ok")
            return
        self.out(f"dry run found {len(self.problems)} problem(s); the run would fail:")
        static = [p for p in self.problems if p.static]
        predicted = [p for p in self.problems if not p.static]
        if static:
            self.out("in the plan (fix it before running):", 1)
            for p in static:
                self.out(f"- {p}", 2)
        if predicted:
            self.out("predicted from the live data:", 1)
            for p in predicted:
                self.out(f"- {p}", 2)
        kind = "the plan is wrong" if static else "the preview predicts a failure"
        self.out(f"dry run: FAILED (exit {self.exit_code}: {kind})")
