"""The contract between the runner and a step type.

A step type is a class with a pydantic parameter model (``Params``), ``run(ctx)``
returning its outputs, and ``preview(ctx)`` describing, read-only, what ``run``
would do (used by ``--dry-run``). Register it with :func:`migration.steps.register`.

Example::

    @register
    class Sleep(Step["Sleep.Params"]):
        '''Wait a number of seconds.'''
        name = "sleep"

        class Params(StepParams):
            seconds: float

        def run(self, ctx: StepContext["Sleep.Params"]) -> dict[str, Any]:
            ctx.wait(ctx.params.seconds)
            return {}
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict

from migration.errors import Interrupted
from migration.secrets import Redactor


class StepParams(BaseModel):
    """Base of every step type's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


P = TypeVar("P", bound=StepParams)


class StopFlag:
    """Set by the signal handler; long steps poll it to stop at a safe point."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def set(self, signal_name: str = "SIGINT") -> None:
        self.signal_name = signal_name
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


@dataclass
class StepContext(Generic[P]):
    """What a step sees while it runs (or previews).

    Attributes:
        step_id: the step's id in the plan.
        params: the validated, rendered parameters.
        workdir: the directory ``migration`` was started in (shell steps run here).
        run_id / plan_name: identify the run.
        resume: progress saved by an earlier, interrupted attempt of this step
            (what it last passed to :meth:`progress`), or ``{}``.
        outputs_of: outputs of earlier steps, by id (``process.stop`` finds its start step).
        dry_run: True while previewing.
        assume_yes: ``--yes`` was given (gates pass without a terminal).
        interactive: stdin is a terminal.
        redact: masks secrets in anything a step logs or returns.
        failure: while rolling back, the failure that started the rollback.
    """

    step_id: str
    params: P
    workdir: Path
    run_id: str = ""
    plan_name: str = ""
    state_dir: Path | None = None
    resume: dict[str, Any] = field(default_factory=dict)
    outputs_of: dict[str, dict[str, Any]] = field(default_factory=dict)
    dry_run: bool = False
    assume_yes: bool = False
    interactive: bool = False
    redact: Redactor = field(default_factory=Redactor)
    stop_flag: StopFlag = field(default_factory=StopFlag)
    # The runner persists whatever is passed to progress() before it returns.
    on_progress: Callable[[dict[str, Any]], None] | None = None
    show_progress_bar: bool = False
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    failure: str | None = None

    @property
    def log(self) -> Any:
        return structlog.get_logger("migration.step").bind(step=self.step_id)

    def progress(self, **fields: Any) -> None:
        """Record fine-grained progress; it is durable when this returns.

        A resumed attempt finds the last recorded fields in :attr:`resume`.
        """
        if self.on_progress is not None:
            self.on_progress(dict(fields))

    def check_stop(self) -> None:
        """Raise :class:`Interrupted` if SIGINT/SIGTERM arrived; call between units of work."""
        if self.stop_flag.is_set():
            raise Interrupted(f"interrupted by {self.stop_flag.signal_name}")

    def wait(self, seconds: float) -> None:
        """Sleep, but wake up and raise at once on SIGINT/SIGTERM."""
        if self.stop_flag.wait(max(0.0, seconds)):
            self.check_stop()

    def path(self, value: str | os.PathLike[str]) -> Path:
        """Resolve a path parameter against the working directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.workdir / p

    @contextmanager
    def progress_bar(self, description: str, total: int | None) -> Iterator[ProgressReporter]:
        """A progress bar on a terminal, periodic log lines otherwise."""
        reporter = ProgressReporter(self, description, total)
        try:
            yield reporter
        finally:
            reporter.close()


class ProgressReporter:
    """Advance with :meth:`advance`; shows rate and ETA. Never writes to stdout."""

    LOG_EVERY_SECONDS = 5.0

    def __init__(self, ctx: StepContext[Any], description: str, total: int | None) -> None:
        self.ctx = ctx
        self.description = description
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._last_log = self.started
        self._bar: Any = None
        self._task: Any = None
        if ctx.show_progress_bar and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, rate="0")

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        if not self.total or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rate:,.0f}")
            return
        now = time.monotonic()
        if now - self._last_log >= self.LOG_EVERY_SECONDS:
            self._last_log = now
            eta = self.eta_seconds()
            self.ctx.log.info(
                "progress",
                what=self.description,
                done=self.done,
                total=self.total,
                rate=round(self.rate, 1),
                eta_s=None if eta is None else round(eta, 1),
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class Quoter(StrEnum):
    """How a rendered value is quoted into a ``with:`` field (see :meth:`Step.field_quoters`).

    Each ``{{ }}`` value is quoted where it stands, so it can never add syntax; a
    template inside quotes (or a comment) of such a field is refused at load.
    """

    SHELL = "shell"
    """:func:`shlex.quote`: ``O'Brien`` becomes ``'O'"'"'Brien'`` (a command run by a shell)."""
    SQL_LITERAL = "sql_literal"
    """A standard SQL string literal: ``O'Brien`` becomes ``'O''Brien'``."""
    NONE = "none"
    """As rendered; a lone ``{{ expr }}`` keeps its type (a number stays a number)."""


class Preview(str):
    """A step's dry-run text that also says what it predicts.

    ``problems`` are failures the preview predicts (the dry run then ends non-zero:
    "200 errors in the first 200 documents, max_errors 0"); ``outputs`` are outputs
    the preview already knows exactly (read-only facts), so checkpoints over them
    are judged in the dry run. It is a ``str`` (the text), so everything that
    reads a preview as text keeps working, and a plugin's plain string preview
    is a preview with no predictions.
    """

    problems: list[str]
    outputs: dict[str, Any] | None

    def __new__(
        cls, text: str, problems: list[str] | None = None, outputs: dict[str, Any] | None = None
    ) -> Preview:
        self = super().__new__(cls, text)
        self.problems = list(problems or [])
        self.outputs = outputs
        return self

    @property
    def predicts_failure(self) -> bool:
        return bool(self.problems)

    @classmethod
    def of(cls, value: object) -> Preview:
        return value if isinstance(value, Preview) else cls(str(value))


class Step(Generic[P]):
    """Base class of step types. Subclasses set ``name``, ``Params`` and ``run``."""

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]]
    # What a rollback step of this type, skipped for want of its inputs, had nothing
    # to do: "nothing to restore: step backup did not complete".
    undo_verb: ClassVar[str] = "do"
    # Whether running the step reaches beyond the database and the folders it is
    # given (runs commands, starts or stops services, calls URLs, asks people):
    # `migration rehearse` skips such steps on its copy. A step type that does not
    # say (a plugin) is taken to, until it declares ``outside_effects = False``.
    outside_effects: ClassVar[bool] = True
    # ``with:`` fields naming folders the step writes files into (backups, logs,
    # reports); a rehearsal points them at its scratch folder, never the real ones.
    writes_folders: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx: StepContext[P]) -> dict[str, Any]:
        raise NotImplementedError

    def preview(self, ctx: StepContext[P]) -> str:
        """Describe what ``run`` would do, reading but writing nothing (a string, or a
        :class:`Preview`: a string with the problems it predicts)."""
        return f"would run {self.name}"

    @classmethod
    def field_quoters(cls, raw_with: dict[str, Any]) -> dict[str, Quoter]:
        """How the template values of each ``with:`` field are quoted; other fields are not.

        ``raw_with`` is the step's ``with:`` as written (not rendered), so the answer may
        depend on it: ``shell`` quotes ``command`` for the shell only with ``shell: true``.
        A step that runs SQL would return ``{"sql": Quoter.SQL_LITERAL}``. The default
        shell-quotes the fields that :meth:`quoted_fields` names.
        """
        return dict.fromkeys(cls.quoted_fields(raw_with), Quoter.SHELL)

    @classmethod
    def quoted_fields(cls, raw_with: dict[str, Any]) -> set[str]:
        """Names of ``with:`` fields whose template values are shell-quoted.

        The older form of :meth:`field_quoters`, which can only mean the shell: a step
        type that overrides it keeps working; new ones override ``field_quoters``.
        """
        # Each default defers to the other only when that one is overridden.
        if getattr(cls.field_quoters, "__func__", None) is getattr(Step.field_quoters, "__func__", None):
            return set()
        return {name for name, quoter in cls.field_quoters(raw_with).items() if quoter == Quoter.SHELL}

    @classmethod
    def report_sections(cls, step_id: str, outputs: dict[str, Any]) -> list[str]:
        """Markdown lines this step type adds to the run report, from one step's outputs.

        What an operator reads first (``mongo.transform`` counters, ``mongo.validate``
        results); nothing by default.
        """
        return []

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else cls.name

    # ---- Declared outputs -------------------------------------------------------------
    # What ``steps.<id>.outputs.<name>`` may name: the plan loader refuses any other name
    # (a checkpoint's ``that:``, a ``when:``, any template) and docs/steps.md lists them.
    # Kept in this block of its own, apart from the other class attributes of Step.

    outputs: ClassVar[Mapping[str, str] | None] = None
    """Every output ``run`` may return (also with a failure), name -> one-line description.

    ``None`` (the default) declares nothing: such a step's outputs are not checked
    (the ``python`` step, whose outputs are what its function returns, and plugins
    written before outputs were declared). Only a class's own declaration counts: a
    subclass that returns more declares them again, or is not checked.
    """

    @classmethod
    def declared_outputs(cls) -> Mapping[str, str] | None:
        """The outputs this class itself declares, or None when it declares none."""
        declared = cls.__dict__.get("outputs")
        return declared if isinstance(declared, Mapping) else None

    # ---- end of declared outputs ------------------------------------------------------

    # ---- Fields the preview shows itself ------------------------------------------------

    previewed_fields: ClassVar[frozenset[str]] = frozenset()
    """``with:`` fields that :meth:`preview` describes itself, readably (``mongo.validate``'s
    ``checks``, one line each): the dry run does not print their raw value as well."""
