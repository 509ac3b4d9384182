"""Everything a user can cause is a MigrationError; the CLI prints it as one line.

Each class carries the process exit code the design assigns to it.
"""

from __future__ import annotations


class MigrationError(Exception):
    """Root of all expected errors. ``str(err)`` is the one line the user sees."""

    exit_code = 1


class UsageError(MigrationError):
    """Bad command-line usage or an environment that cannot run the plan."""

    exit_code = 2


class PlanError(MigrationError):
    """An invalid plan, located in its file.

    Formats as ``<file>:<line>:<col>: <path>: <message>`` (the CLI prefixes ``error: ``).
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        col: int | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.path = path
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            where += ": "
        path = f"{self.path}: " if self.path else ""
        return f"{where}{path}{self.message}"


class StateError(MigrationError):
    """The state directory or a state file cannot be used as it is."""

    exit_code = 1


class LockedError(MigrationError):
    """Another live process holds the plan's lock."""

    exit_code = 5


class StepError(MigrationError):
    """Raised by a step type when its work failed in an expected way.

    ``outputs`` holds whatever the step measured before failing (kept in the state file).
    """

    exit_code = 1

    def __init__(self, message: str, outputs: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.outputs = outputs or {}


class StepFailed(MigrationError):
    """A step or checkpoint failed and the run stopped (``on_failure: stop``)."""

    exit_code = 1


class RolledBack(MigrationError):
    """A step or checkpoint failed and the rollback completed."""

    exit_code = 3


class RollbackFailed(MigrationError):
    """The rollback itself failed: an operator must look."""

    exit_code = 4


class Interrupted(MigrationError):
    """SIGINT/SIGTERM: the run stopped cleanly and can be resumed."""

    exit_code = 130


class InvalidDocument(Exception):
    """Raise from a ``mongo.transform`` function to mark a document invalid.

    The document is left as it is, counted as ``invalid`` and logged with the
    message as its reason; it is not an error (``max_errors`` does not apply).
    Subclasses count too (the bank-details recipe's ``InvalidValue`` is one).
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
