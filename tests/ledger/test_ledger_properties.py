"""Property-based: concurrent sidecars, retries, conflicts, lost replies, restarts.

Several pods of three models (pate, gaussian, laplace with per-tenant partitions) ask two
operator processes (two LedgerService instances over one store, so only the resourceVersion
precondition keeps them apart) for leases in concurrent batches, while hypothesis injects
write conflicts, writes that never land, writes whose reply is lost, API outages, operator
restarts and clock jumps. Each pod behaves like the sidecar: one request in flight, retried
with the same lease id after a 503, possibly abandoned.

Invariants, checked after every step from scratch with the accounting package:
- the ε of everything answered 200 (deduplicated by lease id) fits the budget, and every
  tenant's answered laplace queries fit that tenant's ε;
- a lease id answered twice got the same grant both times;
- every debit on the ledger belongs to exactly one lease id: per consumer and partition,
  the ledger count equals the sum of the distinct persisted leases' grants (none twice).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from ledger_helpers import GAUSS, LAPLACE, NS, PATE, Clock, FakeReviewer, make_service, model_spec

from dpserve.accounting import epsilon_spent
from dpserve.api.privacybudget import LeaseRecord
from dpserve.ledger import events as ev
from dpserve.ledger.lease_ids import sequenced_id
from dpserve.ledger.service import LeaseFailure, LedgerService
from dpserve.ledger.state import LeasePolicy
from dpserve_testkit.memory_store import MemoryStore

EPSILON = 2.0
TENANT_EPSILON = 1.0
DELTA = 1e-6
TENANTS = ("acme", "globex")
MODELS = {"triage": PATE, "gauss": GAUSS, "embed": LAPLACE}
PODS = [(model, f"{model}-{i}") for model in MODELS for i in range(2)]


@dataclass
class Pending:
    lease_id: str
    requested: int
    partition: str | None
    since: float


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = MemoryStore()
        self.clock = Clock()
        self.reviewer = FakeReviewer(store=self.store)
        self.counter = 0
        self.pending: dict[str, Pending] = {}  # pod -> the request it keeps retrying
        self.answered: dict[str, tuple[str, str | None, int]] = {}  # lease id -> grant
        self.persisted: dict[str, LeaseRecord] = {}  # lease id -> record as first written
        self.rewritten: list[str] = []  # lease ids whose record changed after it was written
        self.services: list[LedgerService] = []
        self.policy = LeasePolicy()

    def teardown(self) -> None:
        for service in self.services:
            self.loop.run_until_complete(service.stop())
        self.loop.close()

    @initialize(at_risk=st.sampled_from([0.01, 0.2, 1.0]))
    def setup(self, at_risk: float) -> None:
        self.policy = LeasePolicy(at_risk_fraction=at_risk)
        self.store.put_budget(
            NS,
            "patients",
            {
                "epsilon": str(EPSILON),
                "delta": str(DELTA),
                "partitions": {
                    "header": "X-Tenant",
                    "epsilon": str(TENANT_EPSILON),
                    "tenants": list(TENANTS),
                },
            },
        )
        for model, mech in MODELS.items():
            self.store.put_model(NS, model, model_spec(mech))
        for model, pod in PODS:
            self.reviewer.add(f"tok-{pod}", model, pod=pod)
        self.store.after_persist = self._seen
        self.services = [self._new_service(), self._new_service()]

    def _new_service(self) -> LedgerService:
        return make_service(
            self.store, self.reviewer, clock=self.clock, policy=self.policy, max_write_attempts=4
        )

    def _seen(self, obj: dict[str, Any]) -> None:
        for raw in (obj.get("status") or {}).get("leases", []):
            record = LeaseRecord.model_validate(raw)
            first = self.persisted.setdefault(record.lease_id, record)
            if first != record:  # asserting here would only reach the service as a 503
                self.rewritten.append(record.lease_id)

    # ------------------------------------------------------------------ rules

    @rule(
        pods=st.lists(st.sampled_from(PODS), min_size=1, max_size=6, unique=True),
        requested=st.lists(st.integers(1, 400), min_size=6, max_size=6),
        via=st.lists(st.integers(0, 1), min_size=6, max_size=6),
        tenants=st.lists(st.sampled_from(TENANTS), min_size=6, max_size=6),
        conflicts=st.sampled_from([0, 0, 0, 1, 3]),
        unreachable_writes=st.sampled_from([0, 0, 0, 1]),
        lost_replies=st.sampled_from([0, 0, 0, 1, 2]),
    )
    def batch(
        self,
        pods: list[tuple[str, str]],
        requested: list[int],
        via: list[int],
        tenants: list[str],
        conflicts: int,
        unreachable_writes: int,
        lost_replies: int,
    ) -> None:
        self.store.conflicts = conflicts
        self.store.unreachable_writes = unreachable_writes
        self.store.lost_replies = lost_replies
        calls = []
        for index, (model, pod) in enumerate(pods):
            pending = self.pending.get(pod)
            if pending is None:
                self.counter += 1
                partition = tenants[index] if model == "embed" else None
                pending = Pending(
                    sequenced_id(pod, partition, self.counter),
                    requested[index],
                    partition,
                    self.clock.now.timestamp(),
                )
                self.pending[pod] = pending
            calls.append(self._ask(self.services[via[index]], model, pod, pending))
        self.loop.run_until_complete(_gather(calls))
        self.store.conflicts = self.store.unreachable_writes = self.store.lost_replies = 0

    async def _ask(self, service: LedgerService, model: str, pod: str, pending: Pending) -> None:
        body = {
            "leaseId": pending.lease_id,
            "model": f"{NS}/{model}",
            "modelVersion": "v1",
            "pod": pod,
            "mechanism": MODELS[model],
            "requested": pending.requested,
        }
        if pending.partition is not None:
            body["partition"] = pending.partition
        try:
            grant = await service.lease(json.dumps(body).encode(), f"Bearer tok-{pod}")
        except LeaseFailure as failure:
            event(f"answer {failure.error.reason}")
            if failure.error.reason != "Unavailable":  # 429 etc.: done; 503: retry same id
                assert failure.error.reason == "BudgetExhausted", failure.error
                del self.pending[pod]
            return
        event("answer 200 replay" if pending.lease_id in self.answered else "answer 200")
        before = self.answered.setdefault(
            pending.lease_id, (f"{NS}/{model}", grant.partition, grant.granted)
        )
        assert before == (f"{NS}/{model}", grant.partition, grant.granted)
        assert 1 <= grant.granted <= pending.requested
        del self.pending[pod]

    @rule(pod=st.sampled_from([pod for _, pod in PODS]))
    def abandon(self, pod: str) -> None:
        """The sidecar gives up a request that kept failing (its debit, if any, is lost)."""
        self.pending.pop(pod, None)

    @rule(which=st.integers(0, 1))
    def restart(self, which: int) -> None:
        """An operator process restarts: no cache, no locks, same API server."""
        old = self.services[which]
        self.loop.run_until_complete(old.stop())
        self.services[which] = self._new_service()

    @rule(seconds=st.sampled_from([1, 30, 200, 400]))
    def tick(self, seconds: int) -> None:
        self.clock.advance(seconds)
        ttl = self.policy.ttl.total_seconds()
        # A sidecar stops retrying before its lease would expire (docs/ledger.md).
        for pod, pending in list(self.pending.items()):
            if self.clock.now.timestamp() - pending.since >= ttl / 2:
                del self.pending[pod]

    @rule()
    def outage(self) -> None:
        self.store.unreachable = True
        pods = [(m, p) for m, p in PODS if p not in self.pending][:2]
        for model, pod in pods:
            self.counter += 1
            partition = TENANTS[0] if model == "embed" else None
            self.pending[pod] = Pending(
                sequenced_id(pod, partition, self.counter), 5, partition, self.clock.now.timestamp()
            )
            self.loop.run_until_complete(self._ask(self.services[0], model, pod, self.pending[pod]))
        self.store.unreachable = False

    # ------------------------------------------------------------------ invariants

    @invariant()
    def answered_grants_fit(self) -> None:
        main: dict[Any, int] = defaultdict(int)
        tenants: dict[str, dict[Any, int]] = defaultdict(lambda: defaultdict(int))
        for consumer, partition, granted in self.answered.values():
            event = ev.mechanism_event(ev_mechanism(consumer))
            if partition is None:
                main[event] += granted
            else:
                tenants[partition][event] += granted
        assert epsilon_spent(list(main.items()), DELTA, "rdp") <= EPSILON
        for per_tenant in tenants.values():
            assert epsilon_spent(list(per_tenant.items()), DELTA, "rdp") <= TENANT_EPSILON

    @invariant()
    def every_debit_is_one_lease(self) -> None:
        assert self.rewritten == []
        if not self.services:
            return
        status = self.store.budget(NS, "patients").get("status") or {}
        counts: dict[tuple[str, str | None], int] = defaultdict(int)
        for entry in status.get("ledger", []):
            if entry["kind"] == "query":
                counts[(entry["consumer"], entry.get("partition"))] += entry["count"]
        expected: dict[tuple[str, str | None], int] = defaultdict(int)
        for record in self.persisted.values():
            expected[(record.consumer, record.partition)] += record.granted
        assert dict(counts) == dict(expected)
        for lease_id, (consumer, partition, granted) in self.answered.items():
            record = self.persisted[lease_id]
            assert (record.consumer, record.partition, record.granted) == (
                consumer,
                partition,
                granted,
            )


async def _gather(calls: list[Any]) -> None:
    await asyncio.gather(*calls)


def ev_mechanism(consumer: str) -> Any:
    from dpserve.api.mechanism import Mechanism

    return Mechanism.model_validate(MODELS[consumer.split("/", 1)[1]])


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerProperties = LedgerMachine.TestCase


def test_lease_ttl_is_longer_than_the_retry_window() -> None:
    # the machine's tick rule relies on it: retries stop at ttl / 2
    assert LeasePolicy().ttl > timedelta(seconds=60)
