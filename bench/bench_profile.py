"""Profiles for ``run.py --profile``: pyinstrument of backup and restore, cProfile of the transform.

Run in-process, on the collection the earlier sections left in ``bench_source``.
Wall-clock profiles: on FerretDB nearly all of it is ``socket.recv_into`` (waiting
for the server), which is the point: it shows which server round trips dominate.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import structlog
from harness import say
from sections import SOURCE, TARGET, Setup

from migration.steps.base import StepContext
from migration.steps.mongo.backup import MongoBackup
from migration.steps.mongo.restore import MongoRestore


def _profiler() -> Any:
    try:
        from pyinstrument import Profiler
    except ImportError as exc:
        raise SystemExit("bench: --profile needs pyinstrument (pip install pyinstrument)") from exc
    return Profiler(interval=0.001)


def backup_and_restore(setup: Setup, out_dir: Path) -> dict[str, str]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    written: dict[str, str] = {}
    out = setup.work / "profile-backups"
    out.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(
        step_id="backup", params=MongoBackup.Params(uri=setup.url(SOURCE), out=str(out)), workdir=out
    )
    profiler = _profiler()
    profiler.start()
    outputs = MongoBackup().run(ctx)
    profiler.stop()
    docs = outputs["total_records"]
    path = out_dir / f"profile-backup-{docs}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False))
    written["backup"] = str(path)
    params = MongoRestore.Params.model_validate(
        {"uri": setup.url(TARGET), "from": outputs["path"], "drop": True, "allow_other_database": True}
    )
    rctx = StepContext(step_id="restore", params=params, workdir=out)
    profiler = _profiler()
    profiler.start()
    MongoRestore().run(rctx)
    profiler.stop()
    path = out_dir / f"profile-restore-{docs}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False))
    written["restore"] = str(path)
    shutil.rmtree(out, ignore_errors=True)
    say(f"profiles written: {', '.join(written.values())}")
    return written


def transform_cpu(setup: Setup, out_dir: Path) -> str:
    """A cProfile of ``mongo.transform`` on CPU time (not wall time), sorted by own time.

    On CPU time because the question for the transform is its client CPU per
    document: on FerretDB a wall-clock profile is mostly waiting for the server.
    Seeds ``transform_docs`` documents, runs the step once to import and warm
    everything (the recipe's registry), then profiles a second run.
    """
    import cProfile
    import io
    import pstats
    import time

    from harness import COLLECTION, dataset_file, seed
    from sections import SCRATCH

    from migration.steps.mongo.transform import MongoTransform

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = setup.transform_docs
    logs = setup.work / "profile-transform-logs"

    params = MongoTransform.Params(
        uri=setup.url(SCRATCH),
        collection=COLLECTION,
        function="migration.recipes.bank_details:split_swift_bic_iban",
        log_dir=str(logs),
    )

    def run() -> None:
        MongoTransform().run(StepContext(step_id="transform", params=params, workdir=logs))

    seed(setup.server, SCRATCH, dataset_file(n, setup.cache), COLLECTION)
    run()
    seed(setup.server, SCRATCH, dataset_file(n, setup.cache), COLLECTION)
    profiler = cProfile.Profile(time.process_time)
    profiler.runcall(run)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
    path = out_dir / f"profile-transform-cpu-{n}.txt"
    path.write_text(text.getvalue())
    shutil.rmtree(logs, ignore_errors=True)
    say(f"profile written: {path}")
    return str(path)
