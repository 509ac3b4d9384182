"""Values as they survive a JSON file (the state file, events, reports).

Neutral ground: step types and the engine both need it, and steps must not
import the engine.
"""

from __future__ import annotations

import json
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` round-tripped through JSON: types JSON lacks (dates, ObjectIds...) become strings."""
    return json.loads(json.dumps(value, default=str))
