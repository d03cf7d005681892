"""Startup and liveness probes as a kubelet runs them: when each is due and when a container
has failed it often enough to be killed.

A kubelet runs a container's startup probe first; liveness and readiness probes start once it
has succeeded (at once where there is none). A startup probe that has not succeeded within
``initialDelaySeconds + failureThreshold * periodSeconds`` kills the container, and so do
``failureThreshold`` consecutive liveness failures; the pod's restart policy then decides
whether it starts again (with back-off). The local kubelet probes a starting container every
``STARTUP_POLL_S`` (a real one every ``periodSeconds``) but gives it the same time budget;
liveness runs at its stated period, since its failures are counted, not timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STARTUP_POLL_S = 0.25


def _number(spec: dict[str, Any], key: str, default: float) -> float:
    value = spec.get(key)
    return float(value) if isinstance(value, int | float) and value >= 0 else default


@dataclass
class ProbeClock:
    """One container's startup and liveness probes (``None``: the container has none)."""

    startup: dict[str, Any] | None
    liveness: dict[str, Any] | None
    started_mono: float = 0.0
    started: bool = False  # the startup probe succeeded (or there is none)
    failures: int = 0  # consecutive liveness failures
    next_at: float = 0.0

    def reset(self, clock: float) -> None:
        """A (re)started container: probing starts over."""
        self.started_mono = clock
        self.started = self.startup is None
        self.failures = 0
        self.next_at = clock + (_number(self.liveness or {}, "initialDelaySeconds", 0)
                                if self.started else _number(self.startup or {},
                                                             "initialDelaySeconds", 0))

    def due(self, clock: float) -> dict[str, Any] | None:
        """The probe to run now, if one is due."""
        if clock < self.next_at:
            return None
        return self.startup if not self.started else self.liveness

    def timeout_s(self) -> float:
        spec = self.startup if not self.started else self.liveness
        return _number(spec or {}, "timeoutSeconds", 1)

    def record(self, ok: bool, clock: float) -> str | None:
        """A probe's result; returns why the container must be killed, or None."""
        if not self.started:
            spec = self.startup or {}
            if ok:
                self.started = True
                self.next_at = clock + _number(self.liveness or {}, "initialDelaySeconds", 0)
                return None
            budget = (_number(spec, "initialDelaySeconds", 0)
                      + _number(spec, "failureThreshold", 3) * _number(spec, "periodSeconds", 10))
            self.next_at = clock + STARTUP_POLL_S
            if clock - self.started_mono >= budget:
                return f"Startup probe failed for {budget:g}s"
            return None
        spec = self.liveness or {}
        self.next_at = clock + _number(spec, "periodSeconds", 10)
        self.failures = 0 if ok else self.failures + 1
        threshold = max(1, int(_number(spec, "failureThreshold", 3)))
        if self.failures >= threshold:
            return f"Liveness probe failed {self.failures} times in a row"
        return None
