"""The run, phase and step lifecycles as ``transitions`` state machines.

The machines only decide which moves are legal; the runner does the work in its
own loop and persists after every trigger (a callback that raised after a state
change would leave the new state in place, so no work happens in callbacks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transitions import Machine, MachineError

from migration.errors import StateError
from migration.state.document import PHASE_STATES, RUN_STATES, STEP_STATES, Status

S = Status

RUN_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "start", "source": S.PENDING, "dest": S.RUNNING},
    # resume after SIGINT/SIGTERM or a crash, or retry after on_failure: stop
    {"trigger": "resume", "source": [S.INTERRUPTED, S.FAILED, S.RUNNING], "dest": S.RUNNING},
    {"trigger": "succeed", "source": S.RUNNING, "dest": S.SUCCEEDED},
    {"trigger": "fail", "source": S.RUNNING, "dest": S.FAILED},
    {
        "trigger": "roll_back",
        "source": [S.FAILED, S.SUCCEEDED, S.INTERRUPTED, S.ROLLBACK_FAILED, S.ROLLING_BACK, S.RUNNING],
        "dest": S.ROLLING_BACK,
    },
    {"trigger": "rollback_done", "source": S.ROLLING_BACK, "dest": S.ROLLED_BACK},
    {"trigger": "rollback_error", "source": S.ROLLING_BACK, "dest": S.ROLLBACK_FAILED},
    {"trigger": "interrupt", "source": [S.RUNNING, S.ROLLING_BACK, S.PENDING], "dest": S.INTERRUPTED},
    {
        "trigger": "abandon",
        "source": [S.PENDING, S.RUNNING, S.FAILED, S.INTERRUPTED, S.ROLLING_BACK, S.ROLLBACK_FAILED],
        "dest": S.ABANDONED,
    },
]

PHASE_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "start", "source": [S.PENDING, S.RUNNING, S.FAILED], "dest": S.RUNNING},
    {"trigger": "succeed", "source": S.RUNNING, "dest": S.SUCCEEDED},
    {"trigger": "fail", "source": S.RUNNING, "dest": S.FAILED},
    {"trigger": "skip", "source": S.PENDING, "dest": S.SKIPPED},
]


STEP_TRANSITIONS: list[dict[str, Any]] = [
    # a fresh attempt; also the re-run of an attempt a dead process left "running"
    {"trigger": "start", "source": [S.PENDING, S.RUNNING, S.INTERRUPTED, S.FAILED], "dest": S.RUNNING},
    {"trigger": "succeed", "source": S.RUNNING, "dest": S.SUCCEEDED},
    # a failed attempt with retries left waits as pending
    {"trigger": "retry", "source": S.RUNNING, "dest": S.PENDING},
    {"trigger": "fail", "source": [S.PENDING, S.RUNNING, S.INTERRUPTED, S.FAILED], "dest": S.FAILED},
    # ``when:`` false, or a rollback step whose inputs never came to be
    {"trigger": "skip", "source": [S.PENDING, S.INTERRUPTED, S.FAILED, S.RUNNING], "dest": S.SKIPPED},
    {"trigger": "interrupt", "source": S.RUNNING, "dest": S.INTERRUPTED},
]


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [str(item) for item in value]
    return str(value)


class Lifecycle:
    """A model whose ``state`` is driven by a transitions Machine."""

    state: str

    def __init__(
        self, states: Iterable[str], transitions: list[dict[str, Any]], initial: str, what: str
    ) -> None:
        self.what = what
        # Plain strings: transitions would name Enum states by their member names.
        self.machine = Machine(
            model=self,
            states=[str(state) for state in states],
            transitions=[{key: _plain(value) for key, value in move.items()} for move in transitions],
            initial=str(initial),
            auto_transitions=False,
            send_event=False,
        )

    def fire_from(self, state: str, trigger: str, what: str) -> str:
        """Apply ``trigger`` from ``state`` (this machine reused for many objects); the new state."""
        self.state = str(state)
        self.what = what
        self.fire(trigger)
        return self.state

    def fire(self, trigger: str) -> str:
        """Apply ``trigger``; an illegal move is a StateError naming both states."""
        before = self.state
        try:
            self.trigger(trigger)  # type: ignore[attr-defined]
        except MachineError as exc:
            raise StateError(f"{self.what}: cannot {trigger} from state {before}") from exc
        return before


def run_lifecycle(initial: str) -> Lifecycle:
    if initial not in RUN_STATES:
        raise StateError(f"unknown run status {initial!r} in the state file")
    return Lifecycle(RUN_STATES, RUN_TRANSITIONS, initial, "run")


def phase_lifecycle(phase_id: str, initial: str) -> Lifecycle:
    if initial not in PHASE_STATES:
        raise StateError(f"unknown status {initial!r} of phase {phase_id} in the state file")
    return Lifecycle(PHASE_STATES, PHASE_TRANSITIONS, initial, f"phase {phase_id}")


def step_lifecycle(step_id: str, initial: str) -> Lifecycle:
    if initial not in STEP_STATES:
        raise StateError(f"unknown status {initial!r} of step {step_id} in the state file")
    return Lifecycle(sorted(STEP_STATES), STEP_TRANSITIONS, initial, f"step {step_id}")
