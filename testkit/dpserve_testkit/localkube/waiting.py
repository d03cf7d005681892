"""Polling until a condition holds: what tests, benchmarks and the demo wait with."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.2,
               what: str | Callable[[], str] = "condition") -> Any:
    """``check()`` once truthy; ``what`` (or its result) names it in the timeout message.

    Lookups into objects that do not have the field yet (KeyError, IndexError, TypeError)
    count as "not yet".
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KeyError, IndexError, TypeError):
            last = None
        if last:
            return last
        time.sleep(interval_s)
    described = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout_s}s waiting for {described} "
                         f"(last: {last!r})")
