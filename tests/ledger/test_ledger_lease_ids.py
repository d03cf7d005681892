"""Sequenced lease ids: a replay is never charged twice, another pod's id is refused, the
ledger never over-spends (issue 13, item 10), as hypothesis properties of ``state.grant``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import LAPLACE, NS, PATE, T0, mechanism, spec

from dpserve.api.privacybudget import PrivacyBudgetStatus
from dpserve.ledger import state
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.lease_ids import ID_MEMORY, parse, pool_tag, sequenced_id

CONSUMER = f"{NS}/triage"
PODS = ("triage-0", "triage-1")
ACCOUNTING = LedgerAccounting()
BUDGET = spec("2")


def _ask(status: PrivacyBudgetStatus | None, pod: str, lease_id: str, now: Any,
         mech: dict[str, Any] = PATE, partition: str | None = None,
         budget: Any = BUDGET) -> state.Grant | state.Refusal:
    request = state.GrantRequest(consumer=CONSUMER, model_version="v1", mechanism=mechanism(mech),
                                 requested=5, lease_id=lease_id, pod=pod, partition=partition)
    return state.grant(budget, 1, status, request, now, accounting=ACCOUNTING)


def _counted(status: PrivacyBudgetStatus | None) -> int:
    return sum(e.count for e in status.ledger) if status is not None else 0


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("new"), st.sampled_from(PODS)),
        st.tuples(st.just("replay"), st.integers(0, 63)),
        st.tuples(st.just("steal"), st.integers(0, 63)),
        st.tuples(st.just("advance"), st.integers(1, 400)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_replays_are_never_charged_twice_and_other_pods_are_refused(
    ops: list[tuple[str, Any]],
) -> None:
    status: PrivacyBudgetStatus | None = None
    now = T0
    sequence = dict.fromkeys(PODS, 1)
    granted: list[tuple[str, str, int]] = []  # (pod, lease id, queries) of every new lease
    for op, arg in ops:
        before = _counted(status)
        new_charge = 0
        if op == "new":
            lease_id = sequenced_id(arg, None, sequence[arg])
            sequence[arg] += 1
            result = _ask(status, arg, lease_id, now)
            if isinstance(result, state.Grant):
                assert not result.replay
                granted.append((arg, lease_id, result.granted))
                new_charge = result.granted
                status = result.status
            else:
                assert result.reason == "BudgetExhausted", result
        elif op == "advance":
            now += timedelta(seconds=arg)
        elif granted:
            pod, lease_id, queries = granted[arg % len(granted)]
            if op == "steal":
                pod = next(p for p in PODS if p != pod)
            result = _ask(status, pod, lease_id, now)
            if op == "steal":
                assert isinstance(result, state.Refusal) and result.reason == "BadRequest"
                assert result.message.startswith("leaseId:")
            elif isinstance(result, state.Grant):
                assert result.replay and not result.changed and result.granted == queries
            else:
                assert result.reason == "LeaseIdUsed" and "granted before" in result.message
                assert result.high_water is not None and result.high_water > 0
        # Nothing is ever charged but new leases, each once; never more than the budget.
        assert _counted(status) - before == new_charge
        assert _counted(status) == sum(queries for _, _, queries in granted)
        if status is not None:
            assert float(status.epsilon_spent or 0) <= 2.0


def test_each_partition_is_its_own_pool() -> None:
    """A pod leases for several tenants at once: their sequences do not interfere."""
    budget = spec("8", partitions={"header": "X-Dpserve-Tenant", "epsilon": "1"})
    first = _ask(None, "triage-0", sequenced_id("triage-0", "acme", 7), T0, LAPLACE, "acme",
                 budget)
    assert isinstance(first, state.Grant)
    second = _ask(first.status, "triage-0", sequenced_id("triage-0", "zeta", 3), T0, LAPLACE,
                  "zeta", budget)
    assert isinstance(second, state.Grant) and not second.replay
    wrong_pool = _ask(second.status, "triage-0", sequenced_id("triage-0", "zeta", 9), T0,
                      LAPLACE, "acme", budget)
    assert isinstance(wrong_pool, state.Refusal) and wrong_pool.message.startswith("leaseId:")


def test_the_high_water_mark_outlives_expiry_and_stays_bounded() -> None:
    status: PrivacyBudgetStatus | None = None
    now = T0
    for index in range(1, 30):
        result = _ask(status, "triage-0", sequenced_id("triage-0", None, index), now)
        assert isinstance(result, state.Grant), result
        status = result.status
        now += timedelta(seconds=1)
    assert status is not None and len(status.leases) == 2  # the two outstanding
    # Long after every lease expired, the latest is remembered: old ids stay refused.
    later = now + timedelta(hours=1)
    update = state.compute_status(BUDGET, 1, status, later, accounting=ACCOUNTING)
    assert [parse(r.lease_id).sequence for r in update.status.leases  # type: ignore[union-attr]
            ] == [29]
    replay = _ask(update.status, "triage-0", sequenced_id("triage-0", None, 3), later)
    assert isinstance(replay, state.Refusal) and "granted before" in replay.message
    assert replay.reason == "LeaseIdUsed" and replay.high_water == 29
    # After ID_MEMORY the pool is forgotten: the status does not grow with dead pods.
    gone = state.compute_status(BUDGET, 1, update.status, later + ID_MEMORY,
                                accounting=ACCOUNTING)
    assert gone.status.leases == []


def test_tags_bind_pod_and_partition() -> None:
    assert pool_tag("a", None) != pool_tag("b", None) != pool_tag("a", "t")
    assert parse(sequenced_id("a", None, 255)) is not None
    assert parse("3f2c0000deadbeef") is None  # random ids keep working (legacy)
