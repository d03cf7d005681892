"""The status lists the most-spent tenants only; every tenant's numbers stay right.

``status.partitions`` is a bounded view (the ledger entries stay the truth): it lists the
LISTED_PARTITIONS most-spent tenants and ``tenantCount`` says how many there are. A grant or a
replay for a tenant outside the view must still report that tenant's own ε spent and
remaining, never 0 and 0.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import LAPLACE, NS, T0, mechanism, spec

from dpserve.api.privacybudget import LedgerEntry, PrivacyBudgetStatus
from dpserve.ledger import state
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.lease_ids import sequenced_id
from dpserve.ledger.limits import LISTED_PARTITIONS, LeasePolicy, Limits
from dpserve.ledger.partitions import partition_statuses, tenant_status

BIG = LeasePolicy(at_risk_fraction=1.0)
PER_TENANT_EPSILON = "50"


def _budget() -> Any:
    return spec(partitions={"header": "X-Tenant", "epsilon": PER_TENANT_EPSILON})


def _entry(tenant: str, count: int) -> LedgerEntry:
    return LedgerEntry(consumer=f"{NS}/embedder", model_version="v1", kind="query",
                       mechanism=mechanism(LAPLACE), partition=tenant, count=count)


def _ask(status: PrivacyBudgetStatus, tenant: str, sequence: int,
         accounting: LedgerAccounting) -> state.Grant | state.Refusal:
    return state.grant(
        _budget(), 1, status,
        state.GrantRequest(consumer=f"{NS}/embedder", model_version="v1",
                           mechanism=mechanism(LAPLACE), requested=2,
                           lease_id=sequenced_id("embedder-0", tenant, sequence),
                           pod="embedder-0", partition=tenant),
        T0, accounting=accounting, policy=BIG,
    )


def test_a_tenant_outside_the_listed_view_gets_its_own_numbers(
    accounting: LedgerAccounting,
) -> None:
    # More tenants than the view lists, each having spent 2 ε (0.5 per Laplace query); the
    # quiet one 0.5 ε, and 1.5 ε after this grant: still the least spent.
    tenants = [f"tenant-{i:04d}" for i in range(LISTED_PARTITIONS + 8)]
    before = PrivacyBudgetStatus(ledger=[_entry(t, 4) for t in tenants[:-1]]
                                 + [_entry(tenants[-1], 1)])
    quiet = tenants[-1]  # the least spent: last in the view, so not listed

    result = _ask(before, quiet, 1, accounting)
    assert isinstance(result, state.Grant), result
    listed = [row.tenant for row in result.status.partitions]
    assert len(listed) == LISTED_PARTITIONS and quiet not in listed
    assert result.status.tenant_count == len(tenants)
    # 1 + 2 Laplace queries at 0.5 each on the tenant's own ledger.
    assert (result.epsilon_spent, result.epsilon_remaining) == (1.5, 48.5)

    # A replay of the same lease id answers the same numbers from the stored status.
    again = _ask(result.status, quiet, 1, accounting)
    assert isinstance(again, state.Grant) and again.replay
    assert (again.epsilon_spent, again.epsilon_remaining) == (1.5, 48.5)


def test_the_view_lists_the_most_spent_tenants_first(accounting: LedgerAccounting) -> None:
    tenants = [f"tenant-{i:04d}" for i in range(LISTED_PARTITIONS + 3)]
    before = PrivacyBudgetStatus(
        ledger=[_entry(t, 1 + i % 7) for i, t in enumerate(tenants)])
    result = _ask(before, tenants[0], 1, accounting)
    assert isinstance(result, state.Grant), result
    spent = [float(row.epsilon_spent) for row in result.status.partitions]
    assert spent == sorted(spent, reverse=True)
    unlisted = set(tenants) - {row.tenant for row in result.status.partitions}
    floor = min(spent)
    assert all(0.5 * (1 + tenants.index(t) % 7) <= floor for t in unlisted)


MECHANISMS = [
    {"type": "laplace-embedding", "epsilon": "0.25"},
    {"type": "laplace-embedding", "epsilon": "0.5"},
    {"type": "gaussian", "noiseMultiplier": "2", "clipNorm": "1", "sensitivity": "1",
     "privacyUnit": "query-text"},
]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2), st.integers(0, 40)),
                  max_size=40),
    declared=st.lists(st.integers(0, 12), max_size=5),
)
def test_every_tenants_numbers_are_its_own_sub_ledgers(
    accounting: LedgerAccounting, rows: list[tuple[int, int, int]], declared: list[int]
) -> None:
    """The one-pass grouping answers what each tenant's ledger alone gives, declared tenants
    without entries included, most spent first."""
    entries = [LedgerEntry(consumer=f"{NS}/m{m}", model_version="v1", kind="query",
                           mechanism=mechanism(MECHANISMS[m]), partition=f"t{t}", count=n)
               for t, m, n in rows]
    tenants = sorted({f"t{t}" for t in declared})
    budget = spec(partitions={"header": "X-Tenant", "epsilon": PER_TENANT_EPSILON,
                              **({"tenants": tenants} if tenants else {})})
    limits = Limits.from_spec(budget)
    got = partition_statuses(limits, entries, accounting)
    names = {entry.partition for entry in entries if entry.partition} | set(tenants)
    alone = [tenant_status(limits, entries, name, accounting) for name in names]
    alone.sort(key=lambda row: (-row[0], row[1].tenant))
    assert got == [row for _, row in alone]
