"""The status stays small at the ledger's default limits, and the limits lose no spend.

Every grant rewrites the whole PrivacyBudget status and the API server sends all of it to every
watcher, so the defaults (limits.py) are chosen to keep it under 100 KiB (issue 14, goal 2).
"""

from __future__ import annotations

from datetime import timedelta

from ledger_helpers import GAUSS, NS, T0, mechanism, spec

from dpserve.api.privacybudget import LeaseRecord, LedgerEntry, PrivacyBudgetStatus
from dpserve.ledger import state
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.lease_ids import ID_MEMORY, MAX_REMEMBERED, sequenced_id
from dpserve.ledger.leases import retain_records
from dpserve.ledger.limits import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_LEASES
from dpserve_testkit.status_size import status_at, stored_bytes

TARGET_BYTES = 100 * 1024


def test_a_status_at_the_default_limits_is_under_100_kib() -> None:
    full = status_at(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_LEASES, MAX_REMEMBERED)
    assert (len(full.ledger), len(full.leases)) == (
        DEFAULT_MAX_ENTRIES, DEFAULT_MAX_LEASES + MAX_REMEMBERED
    )
    assert stored_bytes(full) < TARGET_BYTES
    # A multi-tenant budget at its largest: every entry and lease charged to one of 256
    # tenants, the most spent of them listed.
    tenants = status_at(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_LEASES, MAX_REMEMBERED, tenants=True)
    assert len({entry.partition for entry in tenants.ledger}) == tenants.tenant_count == 256
    assert stored_bytes(tenants) < TARGET_BYTES
    # The former limits (1,024 of each kind) were four times the target and more.
    assert stored_bytes(status_at(1024, 1024, 1024)) > 4 * TARGET_BYTES


def test_the_status_keeps_the_most_recent_remembered_records_up_to_the_limit() -> None:
    def record(pod: int, expired_ago: timedelta) -> LeaseRecord:
        return LeaseRecord(
            lease_id=sequenced_id(f"triage-{pod}", None, 7), consumer=f"{NS}/triage",
            model_version="v1", pod=f"triage-{pod}", granted=5,
            expires_at=(T0 - expired_ago).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    pools = MAX_REMEMBERED + 40
    expired = [record(i, timedelta(minutes=1 + i)) for i in range(pools)]
    outstanding = record(pools, -timedelta(minutes=4))
    kept = retain_records([*expired, outstanding], T0)
    assert outstanding in kept
    assert [r for r in kept if r is not outstanding] == expired[:MAX_REMEMBERED]
    # Past the id memory nothing expired is kept at all.
    assert retain_records(expired, T0 + ID_MEMORY) == []


def test_a_ledger_over_the_new_entry_limit_keeps_every_entry(
    accounting: LedgerAccounting,
) -> None:
    """A status an earlier release filled past today's default is debited, never truncated;
    only a new consumer is refused, with the reason."""
    entries = [LedgerEntry(consumer=f"{NS}/m{i}", model_version="v1", kind="query",
                           mechanism=mechanism(GAUSS), count=1)
               for i in range(DEFAULT_MAX_ENTRIES + 10)]
    before = PrivacyBudgetStatus(ledger=entries)

    def ask(consumer: str) -> state.Grant | state.Refusal:
        return state.grant(
            spec(), 1, before,
            state.GrantRequest(consumer=consumer, model_version="v1", mechanism=mechanism(GAUSS),
                               requested=3, lease_id=sequenced_id("m0-pod", None, 1),
                               pod="m0-pod"),
            T0, accounting=accounting,
        )

    known = ask(f"{NS}/m0")
    assert isinstance(known, state.Grant), known
    assert len(known.status.ledger) == len(entries)
    assert known.status.ledger[0].count == 1 + known.granted
    assert known.status.ledger[1:] == entries[1:]
    new = ask(f"{NS}/newcomer")
    assert isinstance(new, state.Refusal)
    assert new.reason == "Unavailable" and "ledger is full" in new.message
