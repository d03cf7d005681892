"""Granting a lease: replay, which ledger is charged, and the debit before the grant.

Pure: (spec, status, request, now) -> the new status with the debit and the lease record,
or a Refusal. The caller persists ``Grant.status`` (when ``changed``) *before* it answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dpserve.accounting.events import Event
from dpserve.api.privacybudget import (
    LeaseRecord,
    LedgerEntry,
    PrivacyBudgetSpec,
    PrivacyBudgetStatus,
)
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.conditions import rfc3339
from dpserve.ledger.entries import (
    debit,
    ledger_numbers,
    on_ledger,
    request_key,
    training_entry,
)
from dpserve.ledger.evaluation import (
    ACCOUNTING_ERRORS,
    accounting_message,
    evaluable,
    ledger_epsilon,
)
from dpserve.ledger.lease_ids import parse, pool_tag
from dpserve.ledger.leases import high_water, lease_size, prune_leases, subtract_outstanding
from dpserve.ledger.limits import LeasePolicy, Limits
from dpserve.ledger.outcomes import BudgetEvent, Grant, GrantRequest, Prefetch, Refusal
from dpserve.ledger.partitions import tenant_status
from dpserve.ledger.rounding import format_up, remaining
from dpserve.ledger.status import compute_status
from dpserve.ledger.training import charge_training

DEFAULT_POLICY = LeasePolicy()


@dataclass(frozen=True)
class _Context:
    """What every step of one grant needs (the arguments of :func:`grant`, parsed)."""

    spec: PrivacyBudgetSpec
    generation: int | None
    previous: PrivacyBudgetStatus
    request: GrantRequest
    now: datetime
    accounting: Accounting
    policy: LeasePolicy
    limits: Limits


def grant(
    spec: PrivacyBudgetSpec,
    generation: int | None,
    status: PrivacyBudgetStatus | None,
    request: GrantRequest,
    now: datetime,
    *,
    accounting: Accounting,
    policy: LeasePolicy = DEFAULT_POLICY,
) -> Grant | Refusal:
    """Grant the largest n <= requested queries that fit, debited into the new status.

    The caller persists ``Grant.status`` (when ``changed``) *before* it answers; a lease id
    already on the status is answered from its record (``replay``) and never debited twice.
    """
    previous = status if status is not None else PrivacyBudgetStatus()
    replayed = replay(previous, request)
    if isinstance(replayed, LeaseRecord):
        return _replayed_grant(spec, previous, replayed, accounting)
    if replayed is not None:
        return replayed
    try:
        limits = Limits.from_spec(spec)
        event = ev.mechanism_event(request.mechanism)
    except ACCOUNTING_ERRORS as exc:
        return Refusal(
            "Unavailable", f"the budget or model spec is invalid: {accounting_message(exc)}"
        )
    partition = charged_partition(request, limits, event)
    if isinstance(partition, Refusal):
        return partition
    ctx = _Context(spec, generation, previous, request, now, accounting, policy, limits)
    entries = _with_declared_training(ctx)
    if isinstance(entries, Refusal):
        return entries
    if event is None:
        return _free_grant(ctx, entries)
    try:
        return _paid_grant(ctx, entries, event, partition)
    except ACCOUNTING_ERRORS as exc:
        return Refusal("Unavailable", f"accounting failed: {accounting_message(exc)}")


def replay(
    previous: PrivacyBudgetStatus, request: GrantRequest
) -> LeaseRecord | Refusal | None:
    """The lease's record when its id is on the status and it is the same request's; None:
    a new lease id."""
    for record in previous.leases:
        if record.lease_id != request.lease_id:
            continue
        if (
            record.consumer != request.consumer
            or record.pod != request.pod
            or record.model_version not in (None, request.model_version)
        ):
            return Refusal(
                "BadRequest",
                f"leaseId: {request.lease_id!r} was already used by another model, "
                "version or pod",
            )
        return record
    return _forgotten(previous, request)


def _replayed_grant(
    spec: PrivacyBudgetSpec,
    previous: PrivacyBudgetStatus,
    record: LeaseRecord,
    accounting: Accounting,
) -> Grant | Refusal:
    """The recorded answer, with the charged ledger's numbers as stored (a tenant outside the
    status's bounded view has its numbers computed from the entries)."""
    numbers = ledger_numbers(previous, record.partition)
    if numbers is None and record.partition is not None:
        try:
            limits = Limits.from_spec(spec)
            _, row = tenant_status(limits, previous.ledger, record.partition, accounting)
        except ACCOUNTING_ERRORS as exc:
            return Refusal("Unavailable", f"accounting failed: {accounting_message(exc)}")
        numbers = float(row.epsilon_spent), float(row.epsilon_remaining)
    spent, left = numbers or (0.0, 0.0)
    return Grant(previous, record.granted, record, spent, left, changed=False, replay=True)


def _forgotten(previous: PrivacyBudgetStatus, request: GrantRequest) -> Refusal | None:
    """A sequenced id of another pool, or one at or below its pool's high-water mark."""
    parsed = parse(request.lease_id)
    if parsed is None:
        return None  # a random id: new unless its record is on the status
    if parsed.tag != pool_tag(request.pod, request.partition):
        return Refusal(
            "BadRequest",
            f"leaseId: {request.lease_id!r} was not formed for pod {request.pod!r} and "
            f"partition {request.partition!r}",
        )
    mark = high_water(previous.leases, request.consumer, request.pod, parsed.tag)
    if mark is not None and parsed.sequence <= mark:
        return Refusal(
            "LeaseIdUsed",
            f"leaseId: {request.lease_id!r} is at or below this pod's last granted sequence "
            f"{mark:016x}: it was granted before and is not charged again; a new lease "
            "needs a higher sequence",
            high_water=mark,
        )
    return None


def charged_partition(
    request: GrantRequest, limits: Limits, event: Event | None
) -> str | Refusal | None:
    """The ledger the request's queries are charged to: None (main) or a tenant."""
    if event is None or not ev.is_tenant_side(request.mechanism):
        return None
    if not limits.partition_epsilon:
        # A tenant's query-text spend is never debited from the dataset's ledger.
        return Refusal(
            "BadRequest",
            f"partition: {request.mechanism.type} queries protect the tenant's query text and "
            "are charged to a tenant partition, never to the dataset's ledger; the budget has "
            "no spec.partitions",
        )
    if request.partition is None:
        return Refusal(
            "BadRequest",
            "partition: required: the budget keeps per-tenant ledgers for "
            f"{request.mechanism.type} queries",
        )
    if limits.tenants is not None and request.partition not in limits.tenants:
        return Refusal(
            "Forbidden", f"partition: {request.partition!r} is not a tenant of the budget"
        )
    return request.partition


def _with_declared_training(ctx: _Context) -> list[LedgerEntry] | Refusal:
    """The entries, with the version's declared DP-SGD run charged if it is not yet."""
    entries = list(ctx.previous.ledger)
    request = ctx.request
    if request.training is None or training_entry(
        entries, request.consumer, request.model_version
    ) is not None:
        return entries
    return charge_training(
        ctx.limits, entries, request.consumer, request.model_version, request.training,
        ctx.accounting,
    )


def _new_lease(ctx: _Context, partition: str | None, granted: int) -> LeaseRecord:
    request = ctx.request
    return LeaseRecord(
        lease_id=request.lease_id,
        consumer=request.consumer,
        model_version=request.model_version,
        pod=request.pod,
        partition=partition,
        granted=granted,
        expires_at=rfc3339(ctx.now + ctx.policy.ttl),
    )


def _free_grant(ctx: _Context, entries: list[LedgerEntry]) -> Grant:
    """Free queries (post-processing of a DP-trained model): nothing to debit or record."""
    changed = len(entries) != len(ctx.previous.ledger)  # the declared training was charged
    update = compute_status(
        ctx.spec,
        ctx.generation,
        ctx.previous.model_copy(update={"ledger": entries}),
        ctx.now,
        accounting=ctx.accounting,
    )
    spent, left = ledger_numbers(update.status, None) or (0.0, 0.0)
    lease = _new_lease(ctx, None, ctx.request.requested)
    return Grant(
        update.status, ctx.request.requested, lease, spent, left, changed=changed,
        events=update.events,
    )


def _paid_grant(
    ctx: _Context, entries: list[LedgerEntry], event: Event, partition: str | None
) -> Grant | Refusal:
    """The debit of a paid query lease (accounting errors raise)."""
    request, limits = ctx.request, ctx.limits
    limit, limit_text = limits.limit_of(partition)
    sub = on_ledger(entries, partition)
    sub_spends = ev.spends(sub)
    checked = evaluable(event, limits, ctx.accounting)
    fit = ctx.accounting.max_additional(
        sub_spends, checked, limit, limits.delta, limits.kind, request.requested
    )
    if fit < 1:
        return _exhausted(ctx, sub, partition, limit_text)
    leases = prune_leases(ctx.previous.leases, ctx.now)
    lease = _new_lease(ctx, partition, request.requested)
    kept = prune_leases([*leases, lease], ctx.now)
    if len(kept) > ctx.policy.max_leases:
        message = (f"{len(kept) - 1} unexpired leases on this budget (limit "
                   f"{ctx.policy.max_leases}, DPSERVE_LEDGER_MAX_LEASES); retry when some expire")
        return Refusal("Unavailable", message,
                       event=BudgetEvent("Warning", "LeaseLimitReached", message))
    # At risk after this grant: the leases that may still hold unused queries (each pool's
    # latest two, the new one included); the new one is added as the n being solved for.
    outstanding = [r for r in kept if r is not lease and r.partition == partition]
    key = request_key(request.consumer, request.model_version, partition, request.mechanism)
    granted = lease_size(
        sub, outstanding, key, event, fit, limit, limits, ctx.policy, ctx.accounting
    )
    debited = debit(entries, request, partition, granted, ctx.policy.max_entries)
    if isinstance(debited, Refusal):
        return debited
    lease = lease.model_copy(update={"granted": granted})
    update = compute_status(
        ctx.spec,
        ctx.generation,
        ctx.previous.model_copy(
            update={"ledger": debited, "leases": [*ctx.previous.leases, lease]}
        ),
        ctx.now,
        accounting=ctx.accounting,
        # fit queries fitted before the debit, so fit - granted still fit after it: the
        # status need not solve for this mechanism again (on the main ledger it checks). The
        # answers of the two solves can differ only by float rounding at the very boundary,
        # and then only in when Exhausted is reported; no grant depends on it.
        still_fits=checked if partition is None and fit - granted >= 1 else None,
    )
    # The charged tenant is among update.tenants, listed on the status or not.
    spent, left = ledger_numbers(update.status, partition, update.tenants) or (0.0, 0.0)
    prefetch = None
    if limits.kind == "pld":
        # The pod's next lease will have this one outstanding (its older ones gone) and
        # every other pod's as now: its rule starts from this ledger minus those others.
        others = [r for r in outstanding if (r.consumer, r.pod) != (lease.consumer, lease.pod)]
        prefetch = Prefetch(
            tuple(ev.spends(subtract_outstanding(sub, others, key))),
            tuple(ev.spends(on_ledger(debited, partition))), event, request.requested, limit,
            limits.delta, ctx.policy.at_risk_fraction)
    return Grant(update.status, granted, lease, spent, left, changed=True, events=update.events,
                 prefetch=prefetch)


def _exhausted(
    ctx: _Context, sub: list[LedgerEntry], partition: str | None, limit_text: str
) -> Refusal:
    """429: not one more query of the request's mechanism fits its ledger."""
    spent = ledger_epsilon(ev.spends(sub), ctx.limits, ctx.accounting)
    whose = f"tenant {partition!r}" if partition else "the budget"
    return Refusal(
        "BudgetExhausted",
        f"not one more {ctx.request.mechanism.type} query fits {whose}: "
        f"ε spent {format_up(spent)} of {limit_text}",
        epsilon_spent=float(format_up(spent)),
        epsilon_remaining=float(remaining(limit_text, spent)),
    )
