"""The run document: the one typed schema of what a state file holds.

``<run-id>.json`` is a contract (docs/design.md, "State file"): these types name
its keys and :class:`Status` its status values. A ``StrEnum`` member is a ``str``
equal to its value, so documents built with it serialise exactly as before.
The shape check that guards loading (:mod:`migration.state.shape`) reads its
required keys and allowed statuses from here.

No ``from __future__ import annotations`` here: ``Required``/``NotRequired``
must be real objects for ``__required_keys__`` to be computed.
"""

from enum import StrEnum
from typing import Any, Required, TypedDict

SCHEMA_VERSION = 1


class Status(StrEnum):
    """Every status a run, phase, step, checkpoint or rollback can have."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    ABANDONED = "abandoned"
    # checkpoints only
    PASSED = "passed"
    NONE = "none"


S = Status
RUN_STATES: tuple[Status, ...] = (
    S.PENDING,
    S.RUNNING,
    S.SUCCEEDED,
    S.FAILED,
    S.ROLLING_BACK,
    S.ROLLED_BACK,
    S.ROLLBACK_FAILED,
    S.INTERRUPTED,
    S.ABANDONED,
)
PHASE_STATES: tuple[Status, ...] = (S.PENDING, S.RUNNING, S.SUCCEEDED, S.FAILED, S.SKIPPED)
STEP_STATES: frozenset[str] = frozenset(
    {S.PENDING, S.RUNNING, S.SUCCEEDED, S.FAILED, S.SKIPPED, S.INTERRUPTED}
)
ROLLBACK_STATES: frozenset[str | None] = frozenset({None, S.RUNNING, S.SUCCEEDED, S.FAILED})
# A run in one of these is over: the next ``migration run`` starts a new one.
FINISHED: frozenset[str] = frozenset({S.SUCCEEDED, S.ROLLED_BACK, S.ABANDONED})
# A step (or rollback entry) in one of these is not run again.
DONE: frozenset[str] = frozenset({S.SUCCEEDED, S.SKIPPED})
# A run in one of these has a live process (or had one that died).
LIVE: frozenset[str] = frozenset({S.PENDING, S.RUNNING, S.ROLLING_BACK})
# The run states that stamp ``finished_at``.
ENDED: frozenset[str] = frozenset({S.SUCCEEDED, S.ROLLED_BACK, S.ROLLBACK_FAILED, S.FAILED, S.ABANDONED})


class AttemptDoc(TypedDict, total=False):
    """One attempt of a step (see :mod:`migration.attempts`); ``status`` is ``running``
    while it runs, ``crashed`` when its process died without recording its end."""

    attempt: int
    started_at: str | None
    finished_at: str | None
    status: str
    error: str | None


class StepDoc(TypedDict, total=False):
    """One step (or rollback entry): its status, attempts, outputs and error."""

    id: Required[str]
    uses: Required[str]
    status: Required[str]
    attempts: Required[int]
    # optional (added later): every attempt, oldest first (see migration.attempts)
    history: list[AttemptDoc]
    outputs: dict[str, Any]
    error: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float
    reason: str
    progress: dict[str, Any]
    # the host that ran its latest attempt (see migration.hosts)
    host: str
    # rollback entries only: the phase whose rollback list it comes from
    phase: str | None


class CheckpointResult(TypedDict, total=False):
    that: Required[str]
    message: str | None
    passed: bool
    value: Any
    error: str


class CheckpointDoc(TypedDict, total=False):
    status: Required[str]
    results: Required[list[CheckpointResult]]
    evaluated_at: str


class PhaseDoc(TypedDict, total=False):
    id: Required[str]
    status: Required[str]
    started_at: str | None
    finished_at: str | None
    checkpoint: CheckpointDoc
    steps: Required[list[StepDoc]]


class RollbackDoc(TypedDict, total=False):
    status: Required[str | None]
    reason: str | None
    started_at: str | None
    finished_at: str | None
    steps: Required[list[StepDoc]]
    error: str | None
    done: list[str]
    remaining: list[str]


class VarValue(TypedDict):
    """A ``--var`` value as stored: ``masked`` when it held a secret (then not reusable)."""

    value: Any
    masked: bool


class RunError(TypedDict, total=False):
    message: Required[str]
    phase: str | None
    step: str | None


# "from" is a Python keyword: the functional syntax.
PlanChange = TypedDict("PlanChange", {"at": str, "from": str | None, "to": str})


class RunDoc(TypedDict, total=False):
    """A whole run: ``STATE_DIR/<plan-name>/<run-id>.json``."""

    run_id: Required[str]
    status: Required[str]
    phases: Required[list[PhaseDoc]]
    plan_digest: Required[str]
    plan_name: Required[str]
    started_at: Required[str]
    rollback: Required[RollbackDoc]
    schema_version: int
    plan_path: str
    finished_at: str | None
    workdir: str
    host: str
    pid: int
    var_overrides: list[str]
    # optional (added later): the --var values of the first run, secrets masked
    var_values: dict[str, VarValue]
    error: RunError | None
    needs_operator: bool
    interrupted_from: str | None
    downtime: dict[str, Any] | None
    plan_changes: list[PlanChange]
    journal_seq: int
    abandoned_from: str
    # who ran it, and where (for ``migration history``): every host that held it, in order
    hosts: list[str]
    operator: str
    target: str | None
    # steps skipped because what they reach stayed on another host (see migration.hosts)
    host_notes: list[dict[str, str]]


class JournalEntry(TypedDict):
    """One line of ``<run-id>.journal.jsonl``: a step's new state."""

    seq: int
    step: StepDoc


def required_keys(doc_type: Any) -> tuple[str, ...]:
    """The required keys of a document type, in declaration order (for messages)."""
    required = doc_type.__required_keys__
    return tuple(key for key in doc_type.__annotations__ if key in required)
