"""The chart tells the ledger whether to compare a lease request's source with its pod's IPs
(on by default; off where the cluster rewrites pod sources) and the per-budget limits, and the
ledger reads them."""

from __future__ import annotations

from typing import Any

import pytest

from dpserve.ledger.limits import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_LEASES
from dpserve.ledger.settings import LedgerSettings


def _env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value") for o in objects if o["kind"] == "Deployment"
            for e in o["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize(("values", "checked"), [({}, True),
                                                  ({"ledgerCheckSourceAddress": False}, False)])
def test_the_source_check_follows_the_value(render: Any, values: dict[str, Any],
                                            checked: bool) -> None:
    env = _env(render(values))
    assert env["DPSERVE_LEDGER_CHECK_SOURCE_ADDRESS"] == str(checked).lower()
    assert LedgerSettings.from_env(env).check_source_address is checked


@pytest.mark.parametrize(("values", "limits"), [
    ({}, (DEFAULT_MAX_ENTRIES, DEFAULT_MAX_LEASES)),
    ({"ledgerMaxEntries": 1024, "ledgerMaxLeases": 2048}, (1024, 2048)),
])
def test_the_budget_limits_follow_the_values(render: Any, values: dict[str, Any],
                                             limits: tuple[int, int]) -> None:
    policy = LedgerSettings.from_env(_env(render(values))).policy
    assert (policy.max_entries, policy.max_leases) == limits

