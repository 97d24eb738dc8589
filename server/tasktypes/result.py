"""Small helpers for server task types: a JSON result, or a failure with its reason."""

from __future__ import annotations

import json
import time
from typing import Any

from protocol.states import InstanceState
from runtime.runner import Outcome


def done(started: float, output: Any) -> Outcome:
    """Success, with ``output`` as JSON."""
    return Outcome(InstanceState.SUCCEEDED, 0, json.dumps(output), "", started, time.time())


def failed(started: float, reason: str) -> Outcome:
    """Failure, with a reason a person can act on."""
    return Outcome.failed(reason, started_at=started)
