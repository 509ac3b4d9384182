"""docs/steps.md, generated from the step registry so the docs never drift.

python -m migration.stepdocs > docs/steps.md
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

from pydantic import BaseModel, Tag

from migration.steps.base import Step
from migration.steps.registry import step_types


def _type_of(prop: dict[str, Any]) -> str:
    if "type" in prop:
        kind = prop["type"]
        if kind == "array" and isinstance(prop.get("items"), dict) and "type" in prop["items"]:
            return f"list of {prop['items']['type']}"
        return str(kind)
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"] if p.get("type") != "null") or "any"
    if "enum" in prop:
        return " | ".join(map(str, prop["enum"]))
    if "const" in prop:
        return repr(prop["const"])
    return "any"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _docstring(obj: Any) -> list[str]:
    """A docstring as Markdown: indented ```yaml blocks under "Example:" become top-level."""
    doc = inspect.cleandoc(obj.__doc__ or "")
    doc = re.sub(r"^Example:\s*$", "**Example:**", doc, flags=re.MULTILINE)
    return [re.sub(r"^    ", "", line) for line in doc.splitlines()]


def _parameter_table(model: type[BaseModel]) -> list[str]:
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    lines = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for pname, prop in schema.get("properties", {}).items():
        shown = f"**{pname}**" if pname in required else pname
        default = "" if pname in required else f"`{prop['default']!r}`" if "default" in prop else ""
        description = _cell(prop.get("description", ""))
        lines.append(f"| {shown} | {_cell(_type_of(prop))} | {_cell(default)} | {description} |")
    return lines


def _outputs_table(step: type[Step[Any]]) -> list[str]:
    declared = step.declared_outputs()
    if declared is None:
        return ["**Outputs:** not declared (a template may read any name; the run decides)."]
    if not declared:
        return ["**Outputs:** none."]
    lines = ["**Outputs:**", "", "| output | description |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(description)} |" for name, description in declared.items()]
    return lines


def _documented_items(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The models a parameter's items may be, each with its tag, when they carry an example.

    ``operations: list[set | unset | ...]`` gives ``[("set", SetOperation), ...]``:
    each kind of item is then documented from its own docstring.
    """
    found: list[tuple[str, type[BaseModel]]] = []
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        tags = [m.tag for m in metadata if isinstance(m, Tag)]
        if isinstance(base, type) and issubclass(base, BaseModel):
            if tags and "Example:" in (base.__doc__ or ""):
                found.append((tags[0], base))
            return found
        return _documented_items(base)
    for arg in typing.get_args(annotation):
        found += _documented_items(arg)
    return found


def _item_sections(params: type[BaseModel]) -> list[str]:
    lines: list[str] = []
    for field_name, info in params.model_fields.items():
        items = _documented_items(info.annotation)
        if not items:
            continue
        lines += [f"### `{info.alias or field_name}`", ""]
        for tag, model in items:
            lines += [f"#### `{tag}`", "", *_docstring(model), ""]
    return lines


def steps_markdown() -> str:
    lines = [
        "# Step types",
        "",
        "Generated from the step registry by `python -m migration.stepdocs > docs/steps.md`;",
        "`migration steps` prints the same list. Required parameters are **bold**.",
        "A step's declared outputs are what templates may read as `steps.<id>.outputs.<name>`:",
        "`migration validate` refuses any other name.",
        "",
    ]
    for name, cls in step_types().items():
        lines += step_section(name, cls)
    return "\n".join(lines)


def step_section(name: str, cls: type[Step[Any]]) -> list[str]:
    """One step type's reference: docstring, parameters, outputs, documented items."""
    lines = [f"## `{name}`", ""]
    lines += _docstring(cls)
    lines += ["", *_parameter_table(cls.Params), ""]
    lines += [*_outputs_table(cls), ""]
    lines += _item_sections(cls.Params)
    return lines


if __name__ == "__main__":
    print(steps_markdown(), end="")
