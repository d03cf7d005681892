"""The pure status functions: conditions, thresholds, partitions, grants, training."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest
from ledger_helpers import FREE, GAUSS, LAPLACE, NS, PATE, T0, mechanism, spec

from dpserve.accounting.events import GaussianQuery, GNMaxQuery, LaplaceQuery
from dpserve.api.privacybudget import (
    LeaseRecord,
    LedgerEntry,
    PrivacyBudgetSpec,
    PrivacyBudgetStatus,
    TrainingSpend,
)
from dpserve.ledger import events as ev
from dpserve.ledger import state
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.conditions import get_condition, rfc3339
from dpserve.ledger.lease_ids import sequenced_id
from dpserve.ledger.leases import subtract_outstanding

CONSUMER = f"{NS}/triage"


def request(
    lease_id: str,
    *,
    pod: str = "triage-0",
    mech: dict[str, Any] = PATE,
    requested: int = 10,
    partition: str | None = None,
    consumer: str = CONSUMER,
    version: str = "v1",
    training: TrainingSpend | None = None,
) -> state.GrantRequest:
    return state.GrantRequest(
        consumer=consumer,
        model_version=version,
        mechanism=mechanism(mech),
        requested=requested,
        lease_id=lease_id,
        pod=pod,
        partition=partition,
        training=training,
    )


def granted(result: state.Grant | state.Refusal) -> state.Grant:
    assert isinstance(result, state.Grant), result
    return result


def refused(result: state.Grant | state.Refusal) -> state.Refusal:
    assert isinstance(result, state.Refusal), result
    return result


BIG = state.LeasePolicy(at_risk_fraction=1.0)  # leases as large as fits: reach states fast


def conditions(status: PrivacyBudgetStatus) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.last_transition_time) for c in status.conditions}


# --------------------------------------------------------------------------- conditions


def test_first_reconcile_writes_numbers_and_every_condition(accounting: LedgerAccounting) -> None:
    update = state.compute_status(spec(), 3, None, T0, accounting=accounting)
    status = update.status
    assert (status.epsilon_spent, status.epsilon_remaining, status.lifetime_epsilon) == (
        "0",
        "8",
        "0",
    )
    assert status.observed_generation == 3
    got = conditions(status)
    assert got == {
        "Ready": ("True", "BudgetAvailable", rfc3339(T0)),
        "Exhausted": ("False", "BudgetAvailable", rfc3339(T0)),
        "BudgetLow": ("False", "BelowThresholds", rfc3339(T0)),
        # kstatus, as the PrivateModel's: GitOps tools read a budget the same way
        "Reconciling": ("False", "Reconciled", rfc3339(T0)),
        "Stalled": ("False", "NotStalled", rfc3339(T0)),
    }
    assert all(c.observed_generation == 3 for c in status.conditions)
    assert update.events == ()


def test_an_invalid_spec_is_stalled_for_gitops(accounting: LedgerAccounting) -> None:
    update = state.invalid_spec_status(None, 2, T0, "spec: epsilon: not a decimal")
    got = conditions(update)
    assert got["Stalled"][:2] == ("True", "InvalidSpec")
    assert got["Reconciling"][:2] == ("False", "Stalled")
    stalled = next(c for c in update.conditions if c.type == "Stalled")
    assert stalled.message == "spec: epsilon: not a decimal" and stalled.observed_generation == 2


def test_invalid_spec_sets_unknown_conditions_and_keeps_the_ledger(
    accounting: LedgerAccounting,
) -> None:
    first = granted(state.grant(spec(), 1, None, request("lease-0001"), T0, accounting=accounting))
    bad = PrivacyBudgetSpec.model_construct(
        epsilon="0", delta="1e-6", accountant="rdp", alert_thresholds=[], partitions=None
    )
    status = state.compute_status(bad, 2, first.status, T0, accounting=accounting).status
    got = conditions(status)
    assert got["Ready"][:2] == ("False", "InvalidSpec")
    assert got["Exhausted"][0] == got["BudgetLow"][0] == "Unknown"
    assert status.ledger == first.status.ledger
    assert "spec.epsilon" in status.conditions[0].message


def test_transition_time_moves_only_when_the_status_flips(accounting: LedgerAccounting) -> None:
    s0 = state.compute_status(spec(), 1, None, T0, accounting=accounting).status
    t1 = T0 + timedelta(minutes=5)
    s1 = granted(state.grant(spec(), 1, s0, request("lease-0001"), t1, accounting=accounting))
    assert conditions(s1.status)["Ready"] == ("True", "BudgetAvailable", rfc3339(T0))
    ready0 = get_condition(s0.conditions, "Ready")
    ready1 = get_condition(s1.status.conditions, "Ready")
    assert ready0 is not None and ready1 is not None
    assert ready1.message != ready0.message  # the numbers moved, the status did not

    t2 = T0 + timedelta(minutes=10)
    s2 = state.compute_status(spec(), 2, s1.status, t2, accounting=accounting).status
    assert all(c.observed_generation == 2 for c in s2.conditions)
    assert conditions(s2)["Ready"][2] == rfc3339(T0)

    t3 = T0 + timedelta(minutes=15)
    big = request("lease-0002", requested=10**6)
    s3 = granted(state.grant(spec(), 2, s2, big, t3, accounting=accounting, policy=BIG))
    got = conditions(s3.status)
    assert got["Exhausted"] == ("True", "BudgetExhausted", rfc3339(t3))
    assert got["Ready"] == ("False", "BudgetExhausted", rfc3339(t3))
    assert got["BudgetLow"] == ("True", "ThresholdCrossed", rfc3339(t3))

    # unchanged inputs, later clock: nothing moves (no status churn)
    t4 = t3 + timedelta(minutes=1)
    s4 = state.compute_status(spec(), 2, s3.status, t4, accounting=accounting)
    assert s4.status.conditions == s3.status.conditions
    assert s4.events == ()


# --------------------------------------------------------------------------- thresholds


def test_thresholds_fire_once_and_rearm_when_epsilon_is_raised(
    accounting: LedgerAccounting,
) -> None:
    budget = spec(alertThresholds=["0.5", "0.8"])
    status: PrivacyBudgetStatus | None = None
    fired: list[str] = []
    spent: list[float] = []
    for i in range(400):
        result = state.grant(
            budget,
            1,
            status,
            request(f"lease-{i:05d}", pod=f"p{i % 3}", requested=25),
            T0 + timedelta(seconds=i),
            accounting=accounting,
            policy=BIG,
        )
        if isinstance(result, state.Refusal):
            break
        status = result.status
        spent.append(float(status.epsilon_spent or 0))
        fired += [
            e.message.split("threshold ")[1].split(" ")[0]
            for e in result.events
            if e.reason == "BudgetThresholdCrossed"
        ]
    assert status is not None
    assert fired == ["0.5", "0.8"]
    assert status.alerts_fired == ["0.5", "0.8"]
    assert spent == sorted(spent), "spent must never go down"

    raised = spec("80", alertThresholds=["0.5", "0.8"])
    again = state.compute_status(raised, 2, status, T0 + timedelta(hours=1), accounting=accounting)
    assert again.status.alerts_fired == []
    assert again.status.epsilon_spent == status.epsilon_spent
    assert again.events and again.events[0].reason == "BudgetReplenished"
    assert conditions(again.status)["BudgetLow"][:2] == ("False", "BelowThresholds")


# --------------------------------------------------------------------------- exhaustion


def test_exhaustion_and_raising_epsilon_brings_the_budget_back(
    accounting: LedgerAccounting,
) -> None:
    first = granted(
        state.grant(
            spec(),
            1,
            None,
            request("lease-0001", requested=10**6),
            T0,
            accounting=accounting,
            policy=BIG,
        )
    )
    fits = accounting.max_additional([], GNMaxQuery(40.0), 8.0, 1e-6, "rdp", 10**6)
    assert first.granted == fits  # exactly as many as fit, all in one lease
    assert [e.reason for e in first.events] == [
        "BudgetThresholdCrossed",
        "BudgetThresholdCrossed",
        "BudgetExhausted",
    ]
    assert float(first.status.epsilon_spent or 0) <= 8.0
    no = refused(
        state.grant(spec(), 1, first.status, request("lease-0002"), T0, accounting=accounting)
    )
    assert no.reason == "BudgetExhausted"
    assert no.epsilon_spent == float(first.status.epsilon_spent or 0)

    raised = state.compute_status(spec("9"), 2, first.status, T0, accounting=accounting)
    assert conditions(raised.status)["Exhausted"][0] == "False"
    assert [e.reason for e in raised.events] == ["BudgetReplenished"]
    more = granted(
        state.grant(
            spec("9"),
            2,
            raised.status,
            request("lease-0003"),
            T0,
            accounting=accounting,
            policy=BIG,
        )
    )
    assert more.granted == 10

    # lowering ε below what is spent never lowers the record: it only exhausts
    lowered = state.compute_status(spec("1"), 3, more.status, T0, accounting=accounting).status
    assert lowered.epsilon_spent == more.status.epsilon_spent
    assert lowered.ledger == more.status.ledger
    assert lowered.epsilon_remaining == "0"
    assert conditions(lowered)["Exhausted"][0] == "True"


def test_exhausted_means_no_mechanism_in_use_fits(accounting: LedgerAccounting) -> None:
    # drain with pate, then a cheaper gaussian consumer still fits: not exhausted
    budget = spec()
    pate = granted(
        state.grant(
            budget,
            1,
            None,
            request("lease-0001", requested=10**6),
            T0,
            accounting=accounting,
            policy=BIG,
        )
    )
    assert conditions(pate.status)["Exhausted"][0] == "True"
    # A dataset-side mechanism (a tenant-side one is never charged here: no partitions).
    cheap = {"type": "gaussian", "noiseMultiplier": "10000", "clipNorm": "1",
             "sensitivity": "1"}
    assert state.query_fits(budget, pate.status, mechanism(cheap), accounting=accounting)
    assert not state.query_fits(budget, pate.status, mechanism(PATE), accounting=accounting)
    probed = state.compute_status(
        budget, 1, pate.status, T0, accounting=accounting, probes=[GaussianQuery(10000.0)]
    )
    assert conditions(probed.status)["Exhausted"][0] == "False"


# --------------------------------------------------------------------------- partitions


def partitioned(**extra: Any) -> PrivacyBudgetSpec:
    parts = {"header": "X-Tenant", "epsilon": "1", **extra}
    return spec(partitions=parts)


def test_tenants_compose_in_parallel_on_their_own_sub_ledgers(
    accounting: LedgerAccounting,
) -> None:
    budget = partitioned(tenants=["acme", "globex"])
    per_tenant = accounting.max_additional([], LaplaceQuery(0.5), 1.0, 1e-6, "rdp", 100)
    assert per_tenant >= 2  # pure-DP sum: 2 x 0.5 = 1
    status: PrivacyBudgetStatus | None = None
    for tenant in ("acme", "globex"):
        g = granted(
            state.grant(
                budget,
                1,
                status,
                request(f"lease-{tenant}", mech=LAPLACE, requested=100, partition=tenant),
                T0,
                accounting=accounting,
                policy=BIG,
            )
        )
        assert (g.granted, g.lease.partition) == (per_tenant, tenant)
        status = g.status
    assert status is not None
    assert status.epsilon_spent == "0"  # the dataset's ledger is untouched
    rows = {p.tenant: p for p in status.partitions}
    assert set(rows) == {"acme", "globex"}
    assert float(rows["acme"].epsilon_spent) <= 1.0
    assert rows["acme"].epsilon_spent == rows["globex"].epsilon_spent
    again = refused(
        state.grant(
            budget,
            1,
            status,
            request("lease-acme-2", mech=LAPLACE, partition="acme"),
            T0,
            accounting=accounting,
        )
    )
    assert again.reason == "BudgetExhausted" and "acme" in again.message

    stranger = refused(
        state.grant(
            budget,
            1,
            status,
            request("lease-x", mech=LAPLACE, partition="initech"),
            T0,
            accounting=accounting,
        )
    )
    assert stranger.reason == "Forbidden" and stranger.message.startswith("partition")
    missing = refused(
        state.grant(budget, 1, status, request("lease-y", mech=LAPLACE), T0, accounting=accounting)
    )
    assert missing.reason == "BadRequest" and missing.message.startswith("partition")

    # dataset-side mechanisms go to the main ledger whatever the tenant header says
    pate = granted(
        state.grant(
            budget, 1, status, request("lease-z", partition="acme"), T0, accounting=accounting
        )
    )
    assert pate.lease.partition is None
    assert float(pate.status.epsilon_spent or 0) > 0
    assert {p.tenant: p.epsilon_spent for p in pate.status.partitions} == {
        p.tenant: p.epsilon_spent for p in status.partitions
    }


def test_without_partitions_tenant_side_queries_are_refused(
    accounting: LedgerAccounting,
) -> None:
    # A tenant's query-text spend is never debited from the dataset's ledger.
    for partition in ("acme", None):
        refused = state.grant(spec(), 1, None,
                              request("lease-1", mech=LAPLACE, partition=partition), T0,
                              accounting=accounting)
        assert isinstance(refused, state.Refusal), refused
        assert "never to the dataset's ledger" in refused.message
    assert not state.query_fits(spec(), None, mechanism(LAPLACE), accounting=accounting)


# --------------------------------------------------------------------------- leases


def test_same_lease_id_same_grant_no_second_debit(accounting: LedgerAccounting) -> None:
    first = granted(state.grant(spec(), 1, None, request("lease-0001"), T0, accounting=accounting))
    again = granted(
        state.grant(
            spec(),
            1,
            first.status,
            request("lease-0001", requested=999),
            T0 + timedelta(seconds=5),
            accounting=accounting,
        )
    )
    assert again.replay and not again.changed
    assert again.granted == first.granted
    assert again.lease == first.lease
    assert again.status.ledger == first.status.ledger
    thief = refused(
        state.grant(
            spec(), 1, first.status, request("lease-0001", pod="other"), T0, accounting=accounting
        )
    )
    assert thief.reason == "BadRequest" and thief.message.startswith("leaseId")


def _at_risk(accounting: LedgerAccounting, status: PrivacyBudgetStatus, event: Any) -> float:
    """ε(ledger) - ε(ledger without the outstanding leases), computed from scratch."""
    (entry,) = [e for e in status.ledger if e.kind == "query"]
    outstanding = sum(lease.granted for lease in status.leases)
    full = accounting.epsilon([(event, entry.count)], 1e-6, "rdp")
    rest = accounting.epsilon([(event, entry.count - outstanding)], 1e-6, "rdp")
    return full - rest


def test_outstanding_leases_stay_within_one_percent(accounting: LedgerAccounting) -> None:
    event = ev.mechanism_event(mechanism(GAUSS))
    status: PrivacyBudgetStatus | None = None
    sizes = []
    now = T0
    for i in range(300):
        now += timedelta(milliseconds=250)
        result = state.grant(
            spec(),
            1,
            status,
            request(f"lease-{i:05d}", pod=f"p{i % 7}", mech=GAUSS, requested=10**5),
            now,
            accounting=accounting,
        )
        g = granted(result)
        status = g.status
        sizes.append(g.granted)
        assert len([x for x in status.leases if x.pod == f"p{i % 7}"]) <= 2
        risk = _at_risk(accounting, status, event)
        if g.granted > 1:
            assert risk <= 0.01 * 8 + 1e-9, (i, g.granted, risk)
    assert max(sizes) > 1, "leases grow once the marginal cost of a query is small"
    assert min(sizes) == 1, "and shrink to 1 while outstanding leases use up the 1%"


def test_a_pods_next_lease_is_not_cut_to_one_by_its_own_previous_lease(
    accounting: LedgerAccounting,
) -> None:
    """One pod asks for its next lease while the previous one is in use (the sidecar's
    prefetch). Each lease takes at most half the 1%, so the next one finds room as large:
    the leases grow with the ledger instead of alternating between large and 1 (a stall on
    every other lease)."""
    event = ev.mechanism_event(mechanism(GAUSS))
    status: PrivacyBudgetStatus | None = None
    sizes: list[int] = []
    for i in range(16):
        g = granted(state.grant(spec(), 1, status, request(f"lease-{i:05d}", mech=GAUSS,
                                                           requested=10**5),
                                T0, accounting=accounting))
        (entry,) = [e for e in g.status.ledger if e.kind == "query"]
        before = accounting.epsilon([(event, entry.count - g.granted)], 1e-6, "rdp")
        after = accounting.epsilon([(event, entry.count)], 1e-6, "rdp")
        if g.granted > 1:
            assert after - before <= 0.01 * 8 / 2 + 1e-12  # at most half the 1%
        assert _at_risk(accounting, g.status, event) <= 0.01 * 8 + 1e-9 or g.granted == 1
        status = g.status
        sizes.append(g.granted)
    assert all(later >= earlier // 2 for earlier, later in pairwise(sizes)), sizes
    assert sizes[-1] > 10, sizes  # and they grow as a query's marginal cost falls


def test_a_query_is_always_granted_while_one_fits(accounting: LedgerAccounting) -> None:
    # The first pate query costs ~1.8% of ε=8 under RDP, more than the 1% at risk: still 1.
    g = granted(
        state.grant(spec(), 1, None, request("lease-1", requested=500), T0, accounting=accounting)
    )
    assert g.granted == 1
    g2 = granted(
        state.grant(spec(), 1, g.status, request("lease-2", pod="p2"), T0, accounting=accounting)
    )
    assert g2.granted == 1


def test_lease_records_are_pruned_by_expiry_and_per_pod(accounting: LedgerAccounting) -> None:
    policy = state.LeasePolicy(ttl=timedelta(seconds=60))
    status: PrivacyBudgetStatus | None = None
    for i in range(4):
        status = granted(
            state.grant(
                spec(),
                1,
                status,
                request(f"lease-a{i}", pod="a"),
                T0,
                accounting=accounting,
                policy=policy,
            )
        ).status
    assert status is not None
    assert [x.lease_id for x in status.leases] == ["lease-a2", "lease-a3"]
    status = granted(
        state.grant(
            spec(),
            1,
            status,
            request("lease-b0", pod="b"),
            T0 + timedelta(seconds=30),
            accounting=accounting,
            policy=policy,
        )
    ).status
    later = state.compute_status(
        spec(), 1, status, T0 + timedelta(seconds=61), accounting=accounting
    ).status
    assert [x.lease_id for x in later.leases] == ["lease-b0"]
    assert later.ledger[0].count == status.ledger[0].count  # records go, debits stay


def test_too_many_outstanding_leases_are_refused_not_overwritten(
    accounting: LedgerAccounting,
) -> None:
    policy = state.LeasePolicy(max_leases=3)
    status: PrivacyBudgetStatus | None = None
    for i in range(3):
        status = granted(
            state.grant(
                spec(),
                1,
                status,
                request(f"lease-{i:04d}", pod=f"p{i}"),
                T0,
                accounting=accounting,
                policy=policy,
            )
        ).status
    full = refused(
        state.grant(
            spec(),
            1,
            status,
            request("lease-9999", pod="p9"),
            T0,
            accounting=accounting,
            policy=policy,
        )
    )
    assert full.reason == "Unavailable"


def test_ledger_entry_limit(accounting: LedgerAccounting) -> None:
    policy = state.LeasePolicy(max_entries=1)
    first = granted(
        state.grant(
            spec(), 1, None, request("lease-0001"), T0, accounting=accounting, policy=policy
        )
    )
    other = refused(
        state.grant(
            spec(),
            1,
            first.status,
            request("lease-0002", consumer=f"{NS}/other"),
            T0,
            accounting=accounting,
            policy=policy,
        )
    )
    assert other.reason == "Unavailable" and "ledger is full" in other.message


def test_one_compact_entry_per_consumer_version_mechanism(accounting: LedgerAccounting) -> None:
    status: PrivacyBudgetStatus | None = None
    for i, version in enumerate(["v1", "v1", "v2", "v2", "v2"]):
        status = granted(
            state.grant(
                spec(),
                1,
                status,
                request(f"lease-{i:04d}", pod=f"p{i}", version=version, requested=2),
                T0,
                accounting=accounting,
                policy=BIG,
            )
        ).status
    assert status is not None
    assert [(e.model_version, e.count) for e in status.ledger] == [("v1", 4), ("v2", 6)]
    # a retired version's spend keeps counting
    both = accounting.epsilon([(GNMaxQuery(40.0), 10)], 1e-6, "rdp")
    assert float(status.epsilon_spent or 0) >= both
    assert status.lifetime_epsilon == status.epsilon_spent


def test_free_queries_need_no_write(accounting: LedgerAccounting) -> None:
    g = granted(
        state.grant(
            spec(),
            1,
            None,
            request("lease-1", mech=FREE, requested=1000),
            T0,
            accounting=accounting,
        )
    )
    assert (g.granted, g.changed) == (1000, False)
    assert g.status.ledger == []


# --------------------------------------------------------------------------- training


SGD = TrainingSpend(noise_multiplier="1.1", sample_rate="0.01", steps=1000)


def test_training_is_charged_once_per_version(accounting: LedgerAccounting) -> None:
    first = state.record_training(
        spec(),
        1,
        None,
        consumer=CONSUMER,
        model_version="v1",
        spend=SGD,
        now=T0,
        accounting=accounting,
    )
    assert isinstance(first, state.TrainingRecorded) and first.changed
    spent = float(first.status.epsilon_spent or 0)
    assert spent > 0
    again = state.record_training(
        spec(),
        1,
        first.status,
        consumer=CONSUMER,
        model_version="v1",
        spend=SGD,
        now=T0,
        accounting=accounting,
    )
    assert isinstance(again, state.TrainingRecorded)
    assert (again.changed, again.matches) == (False, True)
    other = state.record_training(
        spec(),
        1,
        first.status,
        consumer=CONSUMER,
        model_version="v1",
        spend=SGD.model_copy(update={"steps": 5}),
        now=T0,
        accounting=accounting,
    )
    assert isinstance(other, state.TrainingRecorded)
    assert (other.changed, other.matches, other.existing) == (False, False, SGD)
    v2 = state.record_training(
        spec(),
        1,
        first.status,
        consumer=CONSUMER,
        model_version="v2",
        spend=SGD,
        now=T0,
        accounting=accounting,
    )
    assert isinstance(v2, state.TrainingRecorded) and v2.changed
    assert float(v2.status.epsilon_spent or 0) > spent


def test_training_that_does_not_fit_is_refused(accounting: LedgerAccounting) -> None:
    loud = TrainingSpend(noise_multiplier="0.3", sample_rate="0.5", steps=100_000)
    result = state.record_training(
        spec(),
        1,
        None,
        consumer=CONSUMER,
        model_version="v1",
        spend=loud,
        now=T0,
        accounting=accounting,
    )
    assert isinstance(result, state.Refusal) and result.reason == "BudgetExhausted"


def test_declared_training_is_charged_with_the_first_lease(accounting: LedgerAccounting) -> None:
    g = granted(
        state.grant(spec(), 1, None, request("lease-1", training=SGD), T0, accounting=accounting)
    )
    kinds = sorted(e.kind for e in g.status.ledger)
    assert kinds == ["query", "training"]
    g2 = granted(
        state.grant(
            spec(),
            1,
            g.status,
            request("lease-2", pod="p2", training=SGD),
            T0,
            accounting=accounting,
        )
    )
    assert sorted(e.kind for e in g2.status.ledger) == ["query", "training"]
    free = granted(
        state.grant(
            spec(), 1, None, request("lease-3", mech=FREE, training=SGD), T0, accounting=accounting
        )
    )
    assert free.changed and [e.kind for e in free.status.ledger] == ["training"]


def test_lease_record_fields(accounting: LedgerAccounting) -> None:
    g = granted(state.grant(spec(), 1, None, request("lease-1"), T0, accounting=accounting))
    assert g.lease == LeaseRecord(
        lease_id="lease-1",
        consumer=CONSUMER,
        model_version="v1",
        pod="triage-0",
        granted=1,
        expires_at=rfc3339(T0 + state.LeasePolicy().ttl),
    )
    assert g.status.leases == [g.lease]


def test_each_version_is_debited_to_its_own_entry(accounting: LedgerAccounting) -> None:
    first = granted(state.grant(spec(), 1, None, request("lease-1"), T0, accounting=accounting))
    second = granted(
        state.grant(
            spec(),
            1,
            first.status,
            request("lease-2", pod="triage-v2-0", version="v2"),
            T0,
            accounting=accounting,
        )
    )
    assert second.lease.model_version == "v2"
    assert [(e.model_version, e.count) for e in second.status.ledger] == [
        ("v1", first.granted),
        ("v2", second.granted),
    ]


def test_a_lease_id_is_bound_to_its_version(accounting: LedgerAccounting) -> None:
    first = granted(state.grant(spec(), 1, None, request("lease-1"), T0, accounting=accounting))
    other = refused(
        state.grant(
            spec(), 1, first.status, request("lease-1", version="v2"), T0, accounting=accounting
        )
    )
    assert other.reason == "BadRequest" and other.message.startswith("leaseId")
    # A record written before leases named a version replays for the pod that holds it.
    legacy = first.status.model_copy(
        update={"leases": [first.lease.model_copy(update={"model_version": None})]}
    )
    again = granted(state.grant(spec(), 1, legacy, request("lease-1"), T0, accounting=accounting))
    assert again.replay and again.granted == first.granted


def _entry(version: str, count: int, mech: dict[str, Any] = PATE) -> LedgerEntry:
    return LedgerEntry(
        consumer=CONSUMER,
        model_version=version,
        kind="query",
        mechanism=mechanism(mech),
        count=count,
    )


def _lease(lease_id: str, pod: str, version: str | None, n: int) -> LeaseRecord:
    return LeaseRecord(
        lease_id=lease_id,
        consumer=CONSUMER,
        model_version=version,
        pod=pod,
        granted=n,
        expires_at=rfc3339(T0 + timedelta(minutes=5)),
    )


def test_outstanding_leases_are_taken_from_their_own_versions_entry() -> None:
    # Two versions of one model on one budget (a v1 pod still serving during the rollout).
    entries = [_entry("v1", 100), _entry("v2", 5)]
    v2_key = (CONSUMER, "v2", None, ev.canonical_mechanism(mechanism(PATE)))
    v1_lease, v2_lease = _lease("l-1", "triage-0", "v1", 50), _lease("l-2", "triage-v2-0", "v2", 3)
    rest = subtract_outstanding(entries, [v1_lease, v2_lease], v2_key)
    assert [e.count for e in rest] == [50, 2]  # v1's lease never shrinks v2's entry
    v1_key = (CONSUMER, "v1", None, ev.canonical_mechanism(mechanism(PATE)))
    assert [e.count for e in subtract_outstanding(entries, [v2_lease], v1_key)] == [100, 2]
    # Own version, entry of another mechanism (a spec edit): the lease was charged there.
    edited = [_entry("v1", 100, GAUSS), _entry("v2", 5)]
    v1_pate = (CONSUMER, "v1", None, ev.canonical_mechanism(mechanism(PATE)))
    assert [e.count for e in subtract_outstanding(edited, [v1_lease], v1_pate)] == [50, 5]
    # Records without a version keep the old rule: the requester's own entry.
    legacy = _lease("l-0", "triage-0", None, 4)
    assert [e.count for e in subtract_outstanding(entries, [legacy], v2_key)] == [100, 1]


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="at_risk_fraction"):
        state.LeasePolicy(at_risk_fraction=0)
    with pytest.raises(ValueError, match="max_leases"):
        state.LeasePolicy(max_leases=5000)


@pytest.mark.parametrize(("mech", "accountant"), [(GAUSS, "rdp"), (PATE, "rdp"), (GAUSS, "pld")])
def test_a_grant_status_equals_the_status_recomputed_from_its_ledger(
    accounting: LedgerAccounting, mech: dict[str, Any], accountant: str
) -> None:
    """A grant skips solving again for its own mechanism while room is left (still_fits);
    the conditions it writes are the ones a full recomputation gives, up to exhaustion."""
    budget = spec("1", accountant=accountant)
    status: PrivacyBudgetStatus | None = None
    for i in range(3000):
        result = state.grant(budget, 1, status, request(f"lease-{i:04d}", pod=f"p{i % 3}",
                                                        mech=mech, requested=1000),
                             T0, accounting=accounting)
        if isinstance(result, state.Refusal):
            assert result.reason == "BudgetExhausted"
            break
        status = result.status
        again = state.compute_status(budget, 1, status, T0, accounting=accounting).status
        assert conditions(again) == conditions(status)
        assert again.epsilon_spent == status.epsilon_spent
    else:
        pytest.fail("the budget was never exhausted")
    assert status is not None and conditions(status)["Exhausted"][0] == "True"


def test_a_pod_leasing_for_many_tenants_keeps_every_pools_latest_lease(
    accounting: LedgerAccounting,
) -> None:
    """Records are pruned per pool (pod and partition), as the sidecar keeps one lease
    sequence per tenant: retrying any pool's latest id within its TTL is a replay, never a
    second charge, however many tenants the pod serves."""
    partitioned = spec(partitions={"header": "X-Tenant", "epsilon": "2"})
    policy = state.LeasePolicy(max_leases=2048)
    tenants = [f"t{i:03d}" for i in range(100)]
    status: PrivacyBudgetStatus | None = None
    asked = {}
    for tenant in tenants:
        asked[tenant] = request(sequenced_id("embed-0", tenant, 1), pod="embed-0", mech=LAPLACE,
                                partition=tenant, consumer=f"{NS}/embed")
        status = granted(state.grant(partitioned, 1, status, asked[tenant], T0,
                                     accounting=accounting, policy=policy)).status
    assert status is not None and len(status.leases) == len(tenants)
    for tenant in (tenants[0], tenants[70]):
        again = granted(state.grant(partitioned, 1, status, asked[tenant], T0,
                                    accounting=accounting, policy=policy))
        assert again.replay and not again.changed
