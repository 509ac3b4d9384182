"""What templates see: ``vars``, ``env``, ``steps``, ``run``; and the environment they come from."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration.errors import PlanError, UsageError
from migration.plan import templates
from migration.plan.loader import LoadedPlan, env_references, format_path
from migration.secrets import Redactor

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


def learn_secrets(redact: Redactor, env: Mapping[str, str], values: Any) -> None:
    redact.add_env(env)
    redact.learn(values)


def plan_error_for(loaded: LoadedPlan, exc: templates.TemplateError, loc: tuple[str | int, ...]) -> PlanError:
    return loaded.error(loc, str(exc))
