"""Sizes in bytes: parsing what plans write (``10GB``, ``2 x 5GB``), showing and measuring them.

One formatter for every figure the tool prints (decimal units, as ``df -H`` and
disk vendors count), so a free-disk figure reads the same in ``require``,
``mongo.preflight`` and ``mongo.backup``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")
# "x", "*" or the multiplication sign U+00D7, as in the design's "k \u00d7 figure".
_TIMES = re.compile("\\s*[x*\u00d7]\\s*", re.IGNORECASE)


def parse_size(value: int | float | str) -> int:
    """Bytes from ``10737418240``, ``"10GB"``, ``"512MiB"`` or ``"2 x 5GB"`` (a product).

    ``KB/MB/GB/TB`` are powers of 1000; ``KiB/MiB/GiB/TiB`` and bare ``K/M/G/T``
    powers of 1024.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"size must not be negative: {value!r}")
        return int(value)
    total = 1.0
    for factor in _TIMES.split(value.strip()):
        match = _QUANTITY.match(factor)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _UNITS:
            raise ValueError(f"not a size: {value!r} (use bytes, '10GB', '512MiB' or '2 x 5GB')")
        total *= float(match.group(1)) * _UNITS[unit]
    return int(total)


def human_bytes(n: float) -> str:
    """``1.2 GB``: decimal units, one decimal place above bytes."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def free_disk_bytes(path: Path) -> tuple[Path, int]:
    """Free bytes (for an unprivileged writer) on the filesystem that would hold ``path``.

    Creates nothing: measures the nearest parent that exists (a backup folder may
    not exist yet). Returns that parent too.

    Raises:
        OSError: the filesystem cannot be measured.
    """
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stat = os.statvfs(probe)
    return probe, stat.f_bavail * stat.f_frsize
