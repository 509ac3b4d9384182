"""docs/steps.md, generated from the step registry so the docs never drift.

python -m migration.stepdocs > docs/steps.md
"""

from __future__ import annotations

import inspect
import re
from typing import Any

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


def steps_markdown() -> str:
    lines = [
        "# Step types",
        "",
        "Generated from the step registry by `python -m migration.stepdocs > docs/steps.md`;",
        "`migration steps` prints the same list. Required parameters are **bold**.",
        "",
    ]
    for name, cls in step_types().items():
        schema = cls.Params.model_json_schema(by_alias=True)
        required = set(schema.get("required", []))
        lines += [f"## `{name}`", ""]
        doc = inspect.cleandoc(cls.__doc__ or "")
        # Indented ```yaml blocks inside "Example:" become top-level fenced blocks.
        doc = re.sub(r"^Example:\s*$", "**Example:**", doc, flags=re.MULTILINE)
        lines += [re.sub(r"^    ", "", line) for line in doc.splitlines()]
        lines += ["", "| parameter | type | default | description |", "|---|---|---|---|"]
        for pname, prop in schema.get("properties", {}).items():
            shown = f"**{pname}**" if pname in required else pname
            default = "" if pname in required else f"`{prop['default']!r}`" if "default" in prop else ""
            description = _cell(prop.get("description", ""))
            lines.append(f"| {shown} | {_cell(_type_of(prop))} | {_cell(default)} | {description} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(steps_markdown(), end="")
