"""docs/steps.md documents what plan authors need without reading source.

(That it matches the registry at all is tests/test_docs.py.)
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import Tag

from migration.stepdocs import steps_markdown
from migration.steps.mongo.operations import Operation
from migration.steps.registry import step_types

ROOT = Path(__file__).resolve().parent.parent


def _section(markdown: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = markdown.index(heading + "\n")
    following = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE)
    end = following.search(markdown, start + len(heading))
    return markdown[start : end.start() if end else len(markdown)]


def _operation_kinds() -> list[str]:
    union = typing.get_args(Operation)[0]
    kinds = []
    for member in typing.get_args(union):
        kinds += [m.tag for m in typing.get_args(member)[1:] if isinstance(m, Tag)]
    return kinds


def test_every_transform_operation_is_documented_with_an_example() -> None:
    kinds = _operation_kinds()
    assert {"set", "unset", "rename", "split"} <= set(kinds)
    transform = _section(steps_markdown(), "## `mongo.transform`")
    operations = _section(transform, "### `operations`")
    for kind in kinds:
        text = _section(operations, f"#### `{kind}`")
        assert "**Example:**\n```yaml\noperations:\n" in text, kind
        assert re.search(rf"^  - {kind}:", text, re.MULTILINE), kind
    assert "migration.steps.mongo.operations" not in transform  # no "see the source"


def test_each_step_lists_its_declared_outputs() -> None:
    markdown = steps_markdown()
    for name, cls in step_types().items():
        section = _section(markdown, f"## `{name}`")
        declared = cls.declared_outputs()
        if declared is None:
            assert "**Outputs:** not declared" in section, name
            continue
        for output, description in declared.items():
            assert f"| `{output}` | {description} |" in section, (name, output)


def test_the_docs_name_one_import_path_for_invalid_document() -> None:
    texts = {p: p.read_text() for p in [*ROOT.joinpath("docs").glob("*.md"), ROOT / "README.md"]}
    texts.update({p: p.read_text() for p in ROOT.joinpath("migration").rglob("*.py")})
    for path, text in texts.items():
        for match in re.finditer(r"[\w.]*InvalidDocument", text):
            named = match.group(0)
            if "." in named and not named.startswith("bson."):
                assert named == "migration.errors.InvalidDocument", (path, named)
