"""The local kubelet's startup and liveness probe bookkeeping, as a table of events."""

from __future__ import annotations

from dpserve_testkit.localkube.kubelet.probes import STARTUP_POLL_S, ProbeClock

STARTUP = {"httpGet": {"path": "/healthz"}, "periodSeconds": 2, "failureThreshold": 3,
           "initialDelaySeconds": 1}
LIVENESS = {"httpGet": {"path": "/healthz"}, "periodSeconds": 10, "failureThreshold": 3,
            "initialDelaySeconds": 5, "timeoutSeconds": 2}


def test_liveness_waits_for_startup_then_counts_consecutive_failures() -> None:
    clock = ProbeClock(STARTUP, LIVENESS)
    clock.reset(100.0)
    assert clock.due(100.5) is None  # startup's initial delay
    assert clock.due(101.0) is STARTUP and clock.timeout_s() == 1
    assert clock.record(False, 101.0) is None
    assert clock.due(101.0 + STARTUP_POLL_S) is STARTUP  # polled, budget 1 + 3 x 2 s
    assert clock.record(True, 102.0) is None and clock.started
    assert clock.due(106.0) is None and clock.due(107.0) is LIVENESS  # its initial delay
    assert clock.timeout_s() == 2
    assert clock.record(False, 107.0) is None and clock.due(116.0) is None
    assert clock.record(False, 117.0) is None
    assert clock.record(True, 127.0) is None  # a success resets the count
    assert clock.record(False, 137.0) is None
    assert clock.record(False, 147.0) is None
    assert clock.record(False, 157.0) == "Liveness probe failed 3 times in a row"


def test_a_startup_probe_that_never_succeeds_kills_within_its_budget() -> None:
    clock = ProbeClock(STARTUP, LIVENESS)
    clock.reset(0.0)
    assert clock.record(False, 6.9) is None
    assert clock.record(False, 7.0) == "Startup probe failed for 7s"
    assert not clock.started


def test_without_a_startup_probe_liveness_starts_after_its_delay_and_restarts_reset() -> None:
    clock = ProbeClock(None, LIVENESS)
    clock.reset(0.0)
    assert clock.started and clock.due(4.9) is None and clock.due(5.0) is LIVENESS
    clock.record(False, 5.0)
    clock.record(False, 15.0)
    clock.reset(20.0)  # the container restarted
    assert clock.failures == 0 and clock.due(25.0) is LIVENESS
    assert ProbeClock(STARTUP, None).due(0.0) is STARTUP
