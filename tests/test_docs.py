"""The step reference is generated from the registry; a stale copy fails here."""

from pathlib import Path

from migration.stepdocs import steps_markdown
from migration.steps.registry import step_types

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_steps_reference_matches_the_registry():
    assert (DOCS / "steps.md").read_text() == steps_markdown(), (
        "docs/steps.md is stale: python -m migration.stepdocs > docs/steps.md"
    )


def test_every_step_type_documents_an_example():
    for name, cls in step_types().items():
        assert "Example:" in (cls.__doc__ or ""), f"{name} has no YAML example in its docstring"
