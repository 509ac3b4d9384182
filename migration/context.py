"""The run's context: what templates see (``vars``, ``env``, ``steps``, ``run``), built once.

A pipeline: :func:`prepare` loads the plan, the environment and ``--var``
overrides (everything known before a run exists); :func:`run_context` renders
``vars`` once the run's id and start time are known (a new run, or the run
being resumed) and gives the :class:`TemplateContext` the runner renders every
step with. A dry run and ``validate`` use a placeholder run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration.errors import UsageError
from migration.plan import templates
from migration.plan.loader import LoadedPlan, env_references, format_path, load_plan
from migration.secrets import Redactor
from migration.steps.base import Step

# The run id a dry run or ``validate`` renders with: no run exists.
PLACEHOLDER_RUN_ID = "<dry-run>"

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*?)\s*$")


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file: KEY=VALUE lines, optional quotes, ``#`` comments."""
    values: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read env file {path}: {exc.strerror}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if not match:
            raise UsageError(f"{path}:{number}: not a KEY=VALUE line")
        value = match.group("value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        values[match.group("key")] = value
    return values


def build_env(loaded: LoadedPlan, workdir: Path, env_file: str | None, warnings: list[str]) -> dict[str, str]:
    """The process environment over the plan's (or ``--env-file``'s) env file.

    Variables already set in the environment win, as with dotenv.
    """
    env = dict(os.environ)
    chosen = env_file or loaded.plan.env_file
    if chosen:
        path = Path(chosen)
        if not path.is_absolute():
            path = workdir / path
        if path.exists():
            for key, value in read_env_file(path).items():
                env.setdefault(key, value)
        elif env_file:
            raise UsageError(f"env file {chosen} not found")
        else:
            warnings.append(f"{loaded.display_path}: env_file {chosen} not found; using the environment only")
    return env


def missing_env(loaded: LoadedPlan, env: Mapping[str, str]) -> list[str]:
    """``file:line:col: path: ...`` lines for env variables the plan needs but lacks."""
    lines = []
    for name, loc in sorted(env_references(loaded).items()):
        if name not in env:
            line, col = loaded.positions.of_value(loc)
            lines.append(
                f"{loaded.display_path}:{line}:{col}: {format_path(loc)}: "
                f"environment variable {name} is not set"
            )
    return lines


@dataclass
class TemplateContext:
    """The rendering context of a run; ``steps`` fills as steps complete."""

    vars: dict[str, Any]
    env: Mapping[str, str]
    run: dict[str, Any]
    steps: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"vars": self.vars, "env": self.env, "steps": self.steps, "run": self.run}


def render_vars(
    loaded: LoadedPlan, overrides: Mapping[str, Any], env: Mapping[str, str], run: dict[str, Any]
) -> dict[str, Any]:
    """Render ``vars`` in order (a var may use env and the vars above it)."""
    rendered: dict[str, Any] = {}
    for name, value in loaded.plan.vars.items():
        if name in overrides:
            continue
        try:
            rendered[name] = templates.render_value(
                value, {"vars": {**rendered, **overrides}, "env": env, "run": run, "steps": {}}
            )
        except templates.TemplateError as exc:
            raise loaded.error(("vars", name), str(exc)) from exc
    rendered.update(overrides)
    # Keep the plan's order for readability in previews.
    ordered = {k: rendered[k] for k in loaded.plan.vars if k in rendered}
    ordered.update({k: v for k, v in rendered.items() if k not in ordered})
    return ordered


def parse_var_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--var K=V`` pairs; V is read as YAML (so numbers and booleans keep their type)."""
    import yaml

    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--var {pair!r}: expected KEY=VALUE")
        key, _, value = pair.partition("=")
        key = key.strip()
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise UsageError(f"--var {pair!r}: {key!r} is not a valid variable name")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        result[key] = parsed if isinstance(parsed, (str, int, float, bool)) or parsed is None else value
    return result


@dataclass
class RunInputs:
    """Everything a run of a plan needs that is known before the run exists."""

    loaded: LoadedPlan
    env: dict[str, str]
    overrides: dict[str, Any]
    warnings: list[str]
    missing_env: list[str]


def prepare(
    plan_path: str,
    var_pairs: tuple[str, ...],
    env_file: str | None,
    workdir: Path,
    redact: Redactor,
    *,
    strict_env: bool,
) -> RunInputs:
    """Load the plan, its environment and ``--var`` overrides; teach ``redact`` their secrets.

    With ``strict_env`` a missing environment variable is a UsageError (``run``);
    without, a warning (``validate``).
    """
    overrides = parse_var_overrides(var_pairs)
    loaded = load_plan(plan_path, overrides)
    warnings: list[str] = []
    env = build_env(loaded, workdir, env_file, warnings)
    missing = missing_env(loaded, env)
    if missing and strict_env:
        raise UsageError(missing[0] + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    warnings.extend(missing)
    redact.add_env(env)
    redact.learn(overrides)
    # A variable named like a secret (--var db_password=...) is one, as in the environment.
    redact.add_env({k: v for k, v in overrides.items() if isinstance(v, str)})
    return RunInputs(loaded, env, overrides, warnings, missing)


def check_vars(inputs: RunInputs) -> None:
    """Render ``vars`` with a placeholder run, to refuse a bad template before anything
    is written (the run's own context comes once the run exists)."""
    if not inputs.missing_env:
        name = inputs.loaded.plan.name
        run = {"id": PLACEHOLDER_RUN_ID, "started_at": "", "plan": name, "plan_name": name}
        render_vars(inputs.loaded, inputs.overrides, inputs.env, run)


def run_context(inputs: RunInputs, run_id: str, started_at: str, redact: Redactor) -> TemplateContext:
    """The context of one run: ``vars`` rendered with the real ``run`` (id, start, plan)."""
    name = inputs.loaded.plan.name
    run = {"id": run_id, "started_at": started_at, "plan": name, "plan_name": name}
    if inputs.missing_env:  # validate: vars that read env cannot be rendered
        return TemplateContext(vars={}, env=inputs.env, run=run)
    rendered = render_vars(inputs.loaded, inputs.overrides, inputs.env, run)
    redact.learn(rendered)
    redact.add_env({k: v for k, v in rendered.items() if isinstance(v, str)})
    return TemplateContext(vars=rendered, env=inputs.env, run=run)


def render_with(step_type: type[Step[Any]], with_: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """A step's ``with:`` rendered against ``context`` for its step type (each field
    quoted as the type says: see ``Step.field_quoters``). Raises TemplateError."""
    return templates.render_with(with_, context, step_type.field_quoters(with_))
