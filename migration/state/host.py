"""Who is running: the host name and the operator a run records."""

from __future__ import annotations

import getpass
import os
import socket


def host_name() -> str:
    """The host name a run records: ``MIGRATION_HOSTNAME`` when set, else the machine's.

    Set it where machine names say nothing (containers, CI runners); tests use it
    to simulate several hosts on one machine.
    """
    return os.environ.get("MIGRATION_HOSTNAME") or socket.gethostname()


def operator_name() -> str:
    """The operator: ``$USER``, else the login name, else ``unknown``."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        return "unknown"
