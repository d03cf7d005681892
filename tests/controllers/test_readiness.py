"""The crash-loop part of readiness: the condition says why a container keeps exiting."""

from __future__ import annotations

from typing import Any

from dpserve.controllers.readiness import failing_container


def _pod(last: dict[str, Any] | None) -> dict[str, Any]:
    status: dict[str, Any] = {"name": "filter", "restartCount": 3,
                              "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                    "message": "back-off 40s"}}}
    if last is not None:
        status["lastState"] = {"terminated": last}
    return {"metadata": {"name": "m-0"}, "status": {"containerStatuses": [status]}}


def test_the_last_exit_message_is_named() -> None:
    why = ("dpserve-filter: entities PERSON cannot be detected: name/place data "
           "names/dist.male.first is not installed")
    reason, message = failing_container([_pod({"exitCode": 2, "message": "log line\n" + why})])
    assert reason == "CrashLoopBackOff"
    assert message.endswith("; last exit: " + why)
    assert "restarts: 3" in message


def test_without_a_termination_message_the_message_is_unchanged() -> None:
    for last in (None, {"exitCode": 1}, {"exitCode": 1, "message": "  \n"}):
        _, message = failing_container([_pod(last)])
        assert message == "container filter of pod m-0 is in CrashLoopBackOff (restarts: 3): " \
                          "back-off 40s"
