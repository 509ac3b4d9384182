"""The one error the MongoDB store adds: this process's lease was taken over."""

from __future__ import annotations

from migration.errors import MigrationError


class LeaseLost(MigrationError):
    """Another host took over the lease of this plan: this process must not write again.

    Raised at the first state write after the takeover (nothing is written), with
    the new holder named. Exit code 5, as for a plan locked by a live run.
    """

    exit_code = 5
