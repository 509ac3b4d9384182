"""The run and phase lifecycles as ``transitions`` state machines.

The machines only decide which moves are legal; the runner does the work in its
own loop and persists after every trigger (a callback that raised after a state
change would leave the new state in place, so no work happens in callbacks).
"""

from __future__ import annotations

from typing import Any

from transitions import Machine, MachineError

from migration.errors import StateError

RUN_STATES = [
    "pending",
    "running",
    "succeeded",
    "failed",
    "rolling_back",
    "rolled_back",
    "rollback_failed",
    "interrupted",
    "abandoned",
]

RUN_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "start", "source": "pending", "dest": "running"},
    # resume after SIGINT/SIGTERM or a crash, or retry after on_failure: stop
    {"trigger": "resume", "source": ["interrupted", "failed", "running"], "dest": "running"},
    {"trigger": "succeed", "source": "running", "dest": "succeeded"},
    {"trigger": "fail", "source": "running", "dest": "failed"},
    {
        "trigger": "roll_back",
        "source": ["failed", "succeeded", "interrupted", "rollback_failed", "rolling_back", "running"],
        "dest": "rolling_back",
    },
    {"trigger": "rollback_done", "source": "rolling_back", "dest": "rolled_back"},
    {"trigger": "rollback_error", "source": "rolling_back", "dest": "rollback_failed"},
    {"trigger": "interrupt", "source": ["running", "rolling_back", "pending"], "dest": "interrupted"},
    {
        "trigger": "abandon",
        "source": ["pending", "running", "failed", "interrupted", "rolling_back", "rollback_failed"],
        "dest": "abandoned",
    },
]

PHASE_STATES = ["pending", "running", "succeeded", "failed", "skipped"]

PHASE_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "start", "source": ["pending", "running", "failed"], "dest": "running"},
    {"trigger": "succeed", "source": "running", "dest": "succeeded"},
    {"trigger": "fail", "source": "running", "dest": "failed"},
    {"trigger": "skip", "source": "pending", "dest": "skipped"},
]


class Lifecycle:
    """A model whose ``state`` is driven by a transitions Machine."""

    state: str

    def __init__(self, states: list[str], transitions: list[dict[str, Any]], initial: str, what: str) -> None:
        self.what = what
        self.machine = Machine(
            model=self,
            states=states,
            transitions=transitions,
            initial=initial,
            auto_transitions=False,
            send_event=False,
        )

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
