"""A dry run never says "ok" when it can tell the run would fail (through the CLI, real server).

Exit 2 for what the plan's static checks know (a missing function, a missing env
value), exit 1 for what the live preview predicts (errors above ``max_errors``, a
checkpoint that can already be judged and fails); the problems summarised at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import assert_no_traceback, cli_env, listing, migration, write_plan

FIXES = """
def broken(doc):
    raise ValueError(f"cannot convert {doc['_id']}")


def good(doc):
    return {"$set": {"n": 1}}
"""

PLAN = """
name: predict-demo
vars:
  db: "{{{{ env.PREDICT_DB }}}}"
  batch: 100
phases:
  - id: preflight
    steps:
      - {{id: preflight, uses: mongo.preflight, with: {{uri: "{{{{ vars.db }}}}"}}}}
    checkpoint:
      - that: "steps.preflight.outputs.collections['things']['count'] == {expected}"
        message: all the things are there
      - that: "vars.batch <= 1000"
  - id: transform
    steps:
      - id: convert
        uses: mongo.transform
        with: {{uri: "{{{{ vars.db }}}}", collection: things, function: "{function}", max_errors: 0}}
    checkpoint:
      - that: "steps.convert.outputs.errors == 0"
"""


def _dry_run(tmp_path: Path, mongo_url: str, *, function: str, expected: int = 40) -> Any:
    write_plan(tmp_path / "plan.yaml", PLAN.format(function=function, expected=expected))
    (tmp_path / "fixes.py").write_text(FIXES)
    before = listing(tmp_path)
    result = migration(
        tmp_path,
        "run",
        "plan.yaml",
        "--dry-run",
        "--state-dir",
        "state",
        "--log-format",
        "json",
        env=cli_env({"PREDICT_DB": mongo_url}),
    )
    assert_no_traceback(result)
    assert listing(tmp_path) == before  # a dry run writes nothing, failing or not
    for line in result.stderr.splitlines():
        json.loads(line)  # stderr stays JSON lines
    return result


def _seed(mongo_db: Any) -> None:
    mongo_db.things.insert_many([{"_id": i, "n": 0} for i in range(40)])


def test_a_transform_predicted_to_exceed_max_errors_fails_the_dry_run_with_exit_1(
    mongo_url: str, mongo_db: Any, tmp_path: Path
) -> None:
    _seed(mongo_db)
    result = _dry_run(tmp_path, mongo_url, function="fixes:broken")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "of the first 40: 0 would change, 0 unchanged, 0 invalid, 40 errors" in out
    assert "PREDICTED FAILURE: 40 errors in the first 40 documents, max_errors 0" in out
    assert "dry run: ok" not in out
    tail = out[out.index("dry run found") :]
    assert tail.startswith("dry run found 1 problem(s); the run would fail:")
    assert "predicted from the live data:" in tail and "- convert: 40 errors" in tail
    assert out.rstrip().endswith("dry run: FAILED (exit 1: the preview predicts a failure)")
    assert "the run would fail" in json.loads(result.stderr.splitlines()[-1])["event"]
    assert list(mongo_db.things.find({"n": {"$ne": 0}})) == []


def test_known_checkpoints_are_judged_and_a_failing_one_fails_the_dry_run(
    mongo_url: str, mongo_db: Any, tmp_path: Path
) -> None:
    _seed(mongo_db)
    wrong = _dry_run(tmp_path, mongo_url, function="fixes:good", expected=41)
    assert wrong.returncode == 1, wrong.stdout
    assert "== 41   # all the things are there   -> WOULD FAIL" in wrong.stdout
    assert "- checkpoint of phase preflight: would fail: all the things are there" in wrong.stdout
    assert "- vars.batch <= 1000   -> would pass" in wrong.stdout
    assert "outputs.errors == 0   -> judged at run time (needs steps convert)" in wrong.stdout

    right = _dry_run(tmp_path, mongo_url, function="fixes:good", expected=40)
    assert right.returncode == 0, right.stdout
    assert "== 40   # all the things are there   -> would pass" in right.stdout
    assert right.stdout.rstrip().endswith("dry run: ok")


def test_a_missing_function_is_a_static_problem_exit_2(mongo_url: str, mongo_db: Any, tmp_path: Path) -> None:
    _seed(mongo_db)
    no_name = _dry_run(tmp_path, mongo_url, function="fixes:convert_all")
    assert no_name.returncode == 2, no_name.stdout
    assert (
        "- convert: with.function: fixes:convert_all: module 'fixes' has no 'convert_all'" in no_name.stdout
    )
    assert "in the plan (fix it before running):" in no_name.stdout
    assert no_name.stdout.rstrip().endswith("dry run: FAILED (exit 2: the plan is wrong)")

    no_module = _dry_run(tmp_path, mongo_url, function="fixes_gone:broken")
    assert no_module.returncode == 2, no_module.stdout
    assert "fixes_gone:broken: no module named 'fixes_gone'" in no_module.stdout


def test_a_missing_env_value_stops_the_dry_run_with_exit_2(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.yaml", PLAN.format(function="fixes:good", expected=1))
    result = migration(tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state", env=cli_env())
    assert result.returncode == 2
    assert "environment variable PREDICT_DB is not set" in result.stderr
    assert_no_traceback(result)


def test_the_function_check_reads_source_and_reports_only_what_is_certain(tmp_path: Path) -> None:
    from migration.function_check import function_specs, missing_function

    (tmp_path / "certain.py").write_text(
        "import os\nfrom json import loads as parse\n"
        "try:\n    def fast(doc):\n        return None\nexcept ImportError:\n    fast = None\n"
        "if os.name:\n    class Fixer:\n        pass\nTABLE: dict = {}\n"
        "raise SystemExit('importing this module would run it')\n"
    )
    (tmp_path / "starry.py").write_text("from os.path import *\n")
    (tmp_path / "lazy.py").write_text("def __getattr__(name):\n    return print\n")
    env: dict[str, str] = {}
    for present in ("certain:fast", "certain:Fixer.method", "certain:parse", "certain:TABLE"):
        assert missing_function(present, tmp_path, env) is None, present
    assert missing_function("certain:slow", tmp_path, env) == "module 'certain' has no 'slow'"
    assert missing_function("starry:anything", tmp_path, env) is None  # cannot be sure
    assert missing_function("lazy:anything", tmp_path, env) is None
    assert missing_function("gone.sub:f", tmp_path, env) == (
        f"no module named 'gone.sub' (searched {tmp_path} and PYTHONPATH)"
    )
    rendered = {"function": "a:b", "operations": [{"split": {"classify": {"x": {"function": "c:d"}}}}]}
    assert list(function_specs(rendered)) == [
        ("function", "a:b"),
        ("operations[0].split.classify.x.function", "c:d"),
    ]
