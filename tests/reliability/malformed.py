"""Malformed plans, made from a valid one by seeded random mutations.

:func:`malformed_plan` takes a ``random.Random``: hypothesis drives it (and
shrinks what it finds) through ``st.randoms()``, and the subprocess sample
uses plain seeded generators. The base plan's steps are harmless (``true``,
``sh`` on PATH), so a mutation that happens to leave a valid plan runs nothing
that matters.

The generator also makes (small) versions of the resource bombs of
test_bad_input.py: integers of more than 4300 digits, nesting past the loader's
limit of 100 levels, alias bombs; the full-size bombs have their own test.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import yaml

BASE_PLAN: dict[str, Any] = {
    "name": "fuzz-plan",
    "description": "a plan to break",
    "vars": {"greeting": "hello", "again": "{{ vars.greeting }} again"},
    "on_failure": "stop",
    "phases": [
        {
            "id": "one",
            "steps": [
                {"id": "s1", "uses": "shell", "with": {"command": ["true"]}},
                {"id": "s2", "uses": "shell", "with": {"command": "true {{ vars.again }}", "shell": True}},
            ],
            "checkpoint": [{"that": "steps.s1.outputs.exit_code == 0", "message": "s1 must work"}],
        },
        {
            "id": "two",
            "steps": [{"id": "s3", "uses": "require", "with": {"commands": ["sh"]}}],
            "rollback": [{"id": "undo", "uses": "shell", "with": {"command": ["true"]}}],
        },
    ],
}

# Template injection attempts: the sandbox must refuse them, never run them.
PAYLOADS = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('touch pwned').read() }}",
    "{{ lipsum.__globals__['os'].system('touch pwned') }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ request.application.__globals__ }}",
    "{{ config.items() }}",
    "{{ run.__class__.__init__ }}",
    "{% set x = cycler.__init__ %}{{ x }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for i in range(99999999999) %}{% endfor %}",
    "{{ range(10**12)|list }}",
    "{% include '/etc/passwd' %}",
    "{% extends '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os }}",
    "{% for %}",
    "{% if %}",
    "{{ ",
    "}}{{",
    "{{ vars }}",
    "{{ env }}",
    "{{ vars.again }}",
    "{{ steps.nope.outputs.x }}",
    "{{ env.MIGRATION_FUZZ_UNSET }}",
    "{{ 1/0 }}",
    "{{ 'x' * 1000 }}",
    "{{ 9**9**9 }}",
]

UNICODE = [
    "ünï©ødé",
    "名前",
    "\u202eevil",
    "\x00",
    "\t",
    "e\u0301",
    "🙂",
    "\ufeffbom",
    "a\u2028b",
    "\x7f\x1b[31m",
]
PUNCTUATION = list(":{}[]&*!|>'\"%@`\t\n#-?,\\")


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def weird_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(14)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([-1, 0, 1, 2**31, 2**63, -(2**63) - 1])
    if kind == 3:
        return 10 ** rng.randint(1, 300)
    if kind == 4:
        return rng.choice([float("nan"), float("inf"), -float("inf"), 1e308, -1e-308, 0.5])
    if kind == 5:
        return ""
    if kind == 6:
        return rng.choice(["x" * 1000, "x" * 100_000, " " * 50])
    if kind == 7:
        return "".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 4)))
    if kind == 8:
        return rng.choice(PAYLOADS)
    if kind == 9 and depth < 3:
        return [weird_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == 10 and depth < 3:
        return {weird_key(rng): weird_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if kind == 11:
        return nested(rng.randint(5, 130))  # the loader refuses more than 100 levels
    if kind == 12:
        return "".join(rng.choice(PUNCTUATION) for _ in range(rng.randint(1, 8)))
    return rng.choice(["shell", "mongo.backup", "nope", "phases", "id", "with", "true", "-1", "0x10"])


def weird_key(rng: random.Random) -> Any:
    return rng.choice(
        [
            "extra",
            "Name",
            "phases ",
            "with_",
            "from",
            "__class__",
            "",
            "名前",
            "x" * 300,
            1,
            True,
            None,
            3.5,
            "{{ vars.greeting }}",
        ]
    )


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*path, i))
    return found


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def mutate(plan: dict[str, Any], rng: random.Random) -> None:
    """One structural change at a random place."""
    paths = [p for p in _paths(plan) if p]
    path = rng.choice(paths)
    parent = _get(plan, path[:-1])
    last = path[-1]
    op = rng.randrange(7)
    if op == 0:
        del parent[last]
    elif op in (1, 2):
        parent[last] = weird_value(rng)
    elif op == 3 and isinstance(parent, dict):
        parent[weird_key(rng)] = weird_value(rng)
    elif op == 4 and isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))  # duplicate ids, duplicate phases
    elif op == 5:
        plan.setdefault("vars", {})
        if isinstance(plan["vars"], dict):
            plan["vars"][rng.choice(["greeting", "again", "extra"])] = rng.choice(PAYLOADS)
    else:
        parent[last] = rng.choice(["", "UPPER", "has space", "../../etc", "a" * 200, "名前", "-x"])


def text_mutation(text: str, rng: random.Random) -> str:
    """A change to the YAML text itself: truncation, stray characters, broken indentation."""
    op = rng.randrange(7)
    at = rng.randrange(len(text) + 1)
    if op == 0:
        return text[:at]
    if op == 1:
        return text[:at] + rng.choice(PUNCTUATION) + text[at:]
    if op == 2:
        lines = text.splitlines(keepends=True)
        i = rng.randrange(len(lines))
        return "".join([*lines[:i], lines[i], lines[i], *lines[i + 1 :]])
    if op == 3:
        return "\n".join(" " * rng.randint(0, 3) + line for line in text.splitlines())
    if op == 4:
        return text[:at] + "\t" + text[at:]
    if op == 5:
        return text + rng.choice(
            [
                "---\nname: second-doc\n",
                "...\n",
                "&a [*a]\n",
                "? [x]\n: y\n",
                "%YAML 9.9\n",
                "big: 1" + "0" * 5000 + "\n",
                "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n",
            ]
        )
    return rng.choice(["", "null", "[]", "42", "- a\n- b\n", "name: only-a-name\n", "!!binary aGk=\n"])


def malformed_plan(rng: random.Random) -> bytes:
    """A plan file's bytes: the base plan after one to three mutations (usually invalid)."""
    plan = copy.deepcopy(BASE_PLAN)
    for _ in range(rng.randint(1, 3)):
        mutate(plan, rng)
    try:
        text = yaml.safe_dump(plan, allow_unicode=True, sort_keys=False, width=4096)
    except yaml.YAMLError:
        text = repr(plan)
    if rng.random() < 0.35:
        text = text_mutation(text, rng)
    encoding = rng.choices(["utf-8", "utf-16", "latin-1", "bad"], weights=[90, 3, 4, 3])[0]
    if encoding == "bad":
        return text.encode("utf-8", "surrogatepass")[: max(1, len(text) // 2)] + b"\xff\xfe\x80"
    return text.encode(encoding, "replace")
