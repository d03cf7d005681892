"""The lease server over HTTP: every answer, persistence before reply, the controller API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ledger_helpers import (
    GAUSS,
    LAPLACE,
    NS,
    PATE,
    Clock,
    FakeReviewer,
    budget_spec,
    lease_body,
    make_service,
    model_spec,
    seq_id,
)

from dpserve.api.lease import MAX_LEASE_BODY_BYTES, LeaseError, LeaseGrant
from dpserve.api.privacybudget import TrainingSpend
from dpserve.ledger import state
from dpserve.ledger.limits import DEFAULT_MAX_ENTRIES
from dpserve.ledger.service import LeaseFailure, LedgerService
from dpserve.ledger.settings import LedgerSettings
from dpserve.ledger.store import NotFound
from dpserve_testkit.memory_store import MemoryStore

Client = TestClient[Any, Any]
AUTH = {"Authorization": "Bearer tok-triage"}


async def post(client: Client, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(
        "/v1/leases", data=data, headers=headers if headers is not None else AUTH
    )


async def error(response: Any, status: int, reason: str) -> LeaseError:
    assert response.status == status, await response.text()
    payload = await response.json()
    parsed = LeaseError.model_validate(payload)
    assert parsed.reason == reason
    assert parsed.message
    return parsed


def ledger_count(store: MemoryStore) -> int:
    status = store.budget(NS, "patients").get("status") or {}
    return sum(e["count"] for e in status.get("ledger", []) if e["kind"] == "query")


# --------------------------------------------------------------------------- grants


async def test_grant_is_persisted_before_the_answer(client: Client, store: MemoryStore) -> None:
    seen: list[int] = []
    store.after_persist = lambda obj: seen.append(ledger_count(store))
    response = await post(client, lease_body(requested=5))
    assert response.status == 200
    grant = LeaseGrant.model_validate(await response.json())
    assert grant.granted == 1  # the first pate query costs more than the 1% at risk
    assert seen == [1]
    status = store.budget(NS, "patients")["status"]
    assert status["epsilonSpent"] == format(grant.epsilon_spent, "g")
    assert [lease["leaseId"] for lease in status["leases"]] == [seq_id("lease-0001")]
    assert [c["type"] for c in status["conditions"]] == ["Exhausted", "Ready", "BudgetLow",
                                                       "Reconciling", "Stalled"]


async def test_retry_with_the_same_lease_id_is_not_debited_twice(
    client: Client, store: MemoryStore
) -> None:
    first = await (await post(client, lease_body())).json()
    writes = store.status_writes
    second = await (await post(client, lease_body())).json()
    assert second == first
    assert store.status_writes == writes
    assert ledger_count(store) == first["granted"]


async def test_lost_reply_then_retry_returns_the_persisted_grant(
    client: Client, store: MemoryStore
) -> None:
    store.lost_replies = 1
    await error(await post(client, lease_body()), 503, "Unavailable")
    assert ledger_count(store) == 1  # it did land
    retry = await post(client, lease_body())
    assert retry.status == 200
    assert (await retry.json())["granted"] == 1
    assert ledger_count(store) == 1


async def test_conflicts_are_retried_and_answered(
    client: Client, store: MemoryStore, service: LedgerService
) -> None:
    store.conflicts = 3
    response = await post(client, lease_body())
    assert response.status == 200
    assert service.metrics.status_writes.labels("conflict")._value.get() == 3
    assert ledger_count(store) == 1


async def test_endless_conflicts_answer_503_and_grant_nothing(
    client: Client, store: MemoryStore
) -> None:
    store.conflicts = 1000
    response = await error(await post(client, lease_body()), 503, "Unavailable")
    assert "conflicting" in response.message
    assert ledger_count(store) == 0


async def test_unreachable_api_answers_503_with_retry_after(
    client: Client, store: MemoryStore
) -> None:
    store.unreachable_writes = 1
    response = await post(client, lease_body())
    await error(response, 503, "Unavailable")
    assert response.headers["Retry-After"] == "1"
    assert ledger_count(store) == 0
    store.unreachable = True
    await error(await post(client, lease_body("lease-0002")), 503, "Unavailable")
    ready = await client.get("/readyz")
    await error(ready, 503, "Unavailable")
    store.unreachable = False
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_a_stale_cached_copy_is_resolved_by_the_precondition(
    client: Client, store: MemoryStore, service: LedgerService
) -> None:
    await post(client, lease_body("lease-0001", pod="triage-0"))
    # another operator process grants behind this one's back
    other = make_service(store, FakeReviewer(dict(service.reviewer.inner.identities)))  # type: ignore[attr-defined]
    other_grant = await other.lease(
        json.dumps(lease_body("lease-0002")).encode(), "Bearer tok-triage"
    )
    assert other_grant.granted == 1
    # this process's cached copy is stale: its write conflicts, it re-reads, and the replayed
    # lease id from the other process is found instead of being debited again
    response = await post(client, lease_body("lease-0002"))
    assert (await response.json())["granted"] == 1
    assert ledger_count(store) == 2
    assert service.metrics.status_writes.labels("conflict")._value.get() == 1


async def test_exhaustion_answers_429_with_the_numbers(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    service = make_service(store, reviewer, policy=state.LeasePolicy(at_risk_fraction=1.0))
    async with TestClient(TestServer(service.app)) as c:
        first = await post(c, lease_body(requested=1_000_000))
        assert first.status == 200
        refusal = await error(await post(c, lease_body("lease-0002")), 429, "BudgetExhausted")
        assert refusal.epsilon_spent is not None and refusal.epsilon_remaining is not None
        assert refusal.epsilon_spent <= 8.0
        assert refusal.epsilon_spent + refusal.epsilon_remaining <= 8.0 + 1e-9
    reasons = [event.reason for _, _, event in store.events]
    assert reasons == ["BudgetThresholdCrossed", "BudgetThresholdCrossed", "BudgetExhausted"]


async def test_partition_header_value_goes_to_the_tenant_ledger(
    store: MemoryStore, client: Client
) -> None:
    store.put_budget(NS, "patients", budget_spec(partitions={"header": "X-Tenant", "epsilon": "2"}))
    body = lease_body(model=f"{NS}/embed", pod="embed-0", mech=LAPLACE, partition="acme")
    response = await post(client, body, {"Authorization": "Bearer tok-embed"})
    grant = LeaseGrant.model_validate(await response.json())
    assert grant.partition == "acme"
    status = store.budget(NS, "patients")["status"]
    assert status["epsilonSpent"] == "0"
    assert status["partitions"][0]["tenant"] == "acme"
    missing = lease_body("lease-0002", model=f"{NS}/embed", pod="embed-0", mech=LAPLACE)
    await error(
        await post(client, missing, {"Authorization": "Bearer tok-embed"}), 400, "BadRequest"
    )


# --------------------------------------------------------------------------- bad input


async def test_malformed_json(client: Client) -> None:
    await error(await post(client, b"{not json"), 400, "BadRequest")
    await error(await post(client, b"[1, 2]"), 400, "BadRequest")
    await error(await post(client, b"\xff\xfe"), 400, "BadRequest")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"leaseId": "x"}, "leaseId"),
        # A random id (the form before sequenced ids) would be idempotent only while its
        # record is on the status: the wire takes sequenced ids only.
        ({"leaseId": "3f2c9a7e-1b4d-4c8e-9f00-6a5b4c3d2e1f"}, "leaseId"),
        ({"leaseId": "S0000000000000001-ee1c11331b9f1b2f"}, "leaseId"),
        ({"model": "no-slash"}, "model"),
        ({"requested": 0}, "requested"),
        ({"requested": "ten"}, "requested"),
        ({"pod": ""}, "pod"),
        ({"mechanism": {"type": "magic"}}, "mechanism.type"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_bad_fields_are_named(client: Client, change: dict[str, Any], field: str) -> None:
    body = {**lease_body(), **change}
    answer = await error(await post(client, body), 400, "BadRequest")
    assert answer.message.startswith(field)


async def test_missing_field_is_named(client: Client) -> None:
    body = lease_body()
    del body["requested"]
    answer = await error(await post(client, body), 400, "BadRequest")
    assert answer.message.startswith("requested")


async def test_too_large(client: Client) -> None:
    big = json.dumps({**lease_body(), "pod": "p" * (MAX_LEASE_BODY_BYTES + 10)}).encode()
    await error(await post(client, big), 413, "TooLarge")

    async def chunks() -> Any:  # no Content-Length: the limit still holds
        for _ in range(4):
            yield b" " * (MAX_LEASE_BODY_BYTES // 2)

    response = await client.post("/v1/leases", data=chunks(), headers=AUTH)
    await error(response, 413, "TooLarge")


async def test_authentication(client: Client, reviewer: FakeReviewer) -> None:
    await error(await post(client, lease_body(), {}), 401, "Unauthenticated")
    await error(
        await post(client, lease_body(), {"Authorization": "Basic abc"}), 401, "Unauthenticated"
    )
    await error(
        await post(client, lease_body(), {"Authorization": "Bearer nope"}), 401, "Unauthenticated"
    )
    reviewer.unreachable = True
    await error(
        await post(client, lease_body(), {"Authorization": "Bearer tok-new"}), 503, "Unavailable"
    )


async def test_authorization(client: Client) -> None:
    wrong_sa = await error(
        await post(client, lease_body(), {"Authorization": "Bearer tok-other"}), 403, "Forbidden"
    )
    assert "triage-dpserve" in wrong_sa.message
    wrong_pod = await error(await post(client, lease_body(pod="triage-7")), 403, "Forbidden")
    assert wrong_pod.message.startswith("pod")
    other_ns = lease_body(model="elsewhere/triage")
    await error(await post(client, other_ns), 403, "Forbidden")


async def test_unknown_model_or_budget(
    client: Client, store: MemoryStore, reviewer: FakeReviewer
) -> None:
    reviewer.add("tok-ghost", "ghost", pod="triage-0")
    await error(
        await post(client, lease_body(model=f"{NS}/ghost"), {"Authorization": "Bearer tok-ghost"}),
        404,
        "NotFound",
    )
    store.put_model(NS, "orphan", model_spec(PATE, budget="missing"))
    reviewer.add("tok-orphan", "orphan", pod="triage-0")
    answer = await error(
        await post(
            client, lease_body(model=f"{NS}/orphan"), {"Authorization": "Bearer tok-orphan"}
        ),
        404,
        "NotFound",
    )
    assert "missing" in answer.message


async def test_mechanism_mismatch(client: Client) -> None:
    answer = await error(await post(client, lease_body(mech=GAUSS)), 409, "MechanismMismatch")
    assert answer.message.startswith("mechanism")
    weaker = {**PATE, "noiseMultiplier": "4"}
    await error(await post(client, lease_body(mech=weaker)), 409, "MechanismMismatch")
    same_value = {**PATE, "noiseMultiplier": "40.0"}
    assert (await post(client, lease_body(mech=same_value))).status == 200


async def test_unexpected_failure_fails_closed(client: Client, store: MemoryStore) -> None:
    def boom(obj: Any) -> None:
        raise RuntimeError("disk on fire")

    store.after_persist = boom
    await error(await post(client, lease_body()), 503, "Unavailable")


# --------------------------------------------------------------------------- metrics, tokens


async def test_metrics(client: Client, service: LedgerService) -> None:
    await post(client, lease_body())
    await post(client, lease_body(mech=GAUSS))
    text = await (await client.get("/metrics")).text()
    assert f'dpserve_lease_grants_total{{model_id="{NS}/triage"}} 1.0' in text
    assert 'dpserve_lease_refusals_total{reason="MechanismMismatch"} 1.0' in text
    assert f'ml_privacy_budget_consumed{{model_id="{NS}/triage",user_group="all"}}' in text
    assert f'dpserve_budget_epsilon_limit{{budget="patients",namespace="{NS}"}} 8.0' in text
    assert "dpserve_lease_grant_duration_seconds_bucket" in text


async def test_token_reviews_are_cached(client: Client, reviewer: FakeReviewer) -> None:
    for i in range(5):
        await post(client, lease_body(f"lease-{i:04d}"))
    assert reviewer.calls == 1


# --------------------------------------------------------------------------- controller API


async def test_recompute_writes_only_on_change(
    store: MemoryStore, service: LedgerService, clock: Clock
) -> None:
    status = await service.ensure_status(NS, "patients")
    assert status.epsilon_spent == "0"
    writes = store.status_writes
    await service.recompute(NS, "patients")
    assert store.status_writes == writes  # steady state: no write
    store.put_budget(NS, "patients", budget_spec("4"))
    status = await service.recompute(NS, "patients")
    assert store.status_writes == writes + 1
    assert status.observed_generation == 2
    assert status.epsilon_remaining == "4"
    with pytest.raises(NotFound):
        await service.recompute(NS, "nope")


async def test_recompute_of_an_invalid_spec_reports_it(
    store: MemoryStore, service: LedgerService
) -> None:
    store.put_budget(NS, "patients", {"epsilon": "eight", "delta": "1e-6"})
    status = await service.recompute(NS, "patients")
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "InvalidSpec")
    assert "epsilon" in ready.message


async def test_record_training_persists_once(store: MemoryStore, service: LedgerService) -> None:
    spend = TrainingSpend(noise_multiplier="1.1", sample_rate="0.01", steps=1000)
    first = await service.record_training(
        NS, "patients", consumer=f"{NS}/triage", model_version="v1", spend=spend
    )
    assert isinstance(first, state.TrainingRecorded) and first.changed
    writes = store.status_writes
    again = await service.record_training(
        NS, "patients", consumer=f"{NS}/triage", model_version="v1", spend=spend
    )
    assert isinstance(again, state.TrainingRecorded) and not again.changed
    assert store.status_writes == writes
    assert float(store.budget(NS, "patients")["status"]["epsilonSpent"]) > 0


async def test_declared_training_of_the_model_is_charged_with_its_first_lease(
    store: MemoryStore, client: Client
) -> None:
    training = {"noiseMultiplier": "1.1", "sampleRate": "0.01", "steps": 1000}
    store.put_model(NS, "triage", model_spec(PATE, training=training))
    assert (await post(client, lease_body())).status == 200
    kinds = sorted(e["kind"] for e in store.budget(NS, "patients")["status"]["ledger"])
    assert kinds == ["query", "training"]


async def test_concurrent_requests_share_one_write(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    service = make_service(store, reviewer)
    store.latency_s = 0.01  # a write takes a while: requests queue up behind it
    for i in range(10):
        reviewer.add(f"tok-{i}", "triage", pod=f"triage-{i}")
    grants = await asyncio.gather(
        *(
            service.lease(
                json.dumps(lease_body(f"lease-{i:04d}", pod=f"triage-{i}")).encode(),
                f"Bearer tok-{i}",
            )
            for i in range(10)
        )
    )
    assert all(g.granted == 1 for g in grants)
    assert ledger_count(store) == 10
    assert store.status_writes <= 3  # group commit: not one write per grant
    leases = store.budget(NS, "patients")["status"]["leases"]
    assert sorted(lease["leaseId"] for lease in leases) == sorted(
        seq_id(f"lease-{i:04d}", f"triage-{i}") for i in range(10))


@pytest.mark.parametrize("phase", ["get_model", "replace_budget_status"])
async def test_stopping_fails_requests_in_flight(
    store: MemoryStore, reviewer: FakeReviewer, phase: str
) -> None:
    """Stopped while reading the model, or while committing the grant: 503, never a hang."""
    service = make_service(store, reviewer)
    entered, held = asyncio.Event(), asyncio.Event()
    inner = getattr(store, phase)

    async def blocked(*args: Any) -> Any:
        entered.set()
        await held.wait()  # the API call in flight, until the test lets it go
        return await inner(*args)

    setattr(store, phase, blocked)
    call = asyncio.ensure_future(
        service.lease(json.dumps(lease_body()).encode(), "Bearer tok-triage")
    )
    async with asyncio.timeout(30):
        await entered.wait()
    stopping = asyncio.ensure_future(service.stop())
    await asyncio.sleep(0)
    held.set()
    await stopping
    with pytest.raises(LeaseFailure) as info:
        await call
    assert info.value.http_status == 503


async def test_pld_budgets_are_decided_off_the_event_loop(
    store: MemoryStore, client: Client, service: LedgerService
) -> None:
    store.put_budget(NS, "patients", budget_spec(accountant="pld"))
    response = await post(client, lease_body(requested=3))
    grant = LeaseGrant.model_validate(await response.json())
    assert grant.granted >= 1
    assert ledger_count(store) == grant.granted


def test_settings_from_environment() -> None:
    settings = LedgerSettings.from_env(
        {
            "DPSERVE_LEDGER_LEASE_TTL_S": "60",
            "DPSERVE_LEDGER_AT_RISK_FRACTION": "0.05",
        }
    )
    assert settings.policy.ttl.total_seconds() == 60
    assert settings.policy.at_risk_fraction == 0.05
    assert not hasattr(settings, "crash_after_persist")  # the crash hook is the testkit's
    with pytest.raises(ValueError, match="DPSERVE_LEDGER_LEASE_TTL_S"):
        LedgerSettings.from_env({"DPSERVE_LEDGER_LEASE_TTL_S": "soon"})
    assert LedgerSettings.from_env({}).policy.max_entries == DEFAULT_MAX_ENTRIES
    raised = LedgerSettings.from_env(
        {"DPSERVE_LEDGER_MAX_ENTRIES": "1024", "DPSERVE_LEDGER_MAX_LEASES": "2048"}
    ).policy
    assert (raised.max_entries, raised.max_leases) == (1024, 2048)
    for name, text in [("DPSERVE_LEDGER_MAX_ENTRIES", "1025"), ("DPSERVE_LEDGER_MAX_LEASES", "0"),
                       ("DPSERVE_LEDGER_MAX_LEASES", "12.5")]:
        with pytest.raises(ValueError, match=name):
            LedgerSettings.from_env({name: text})
