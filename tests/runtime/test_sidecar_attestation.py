"""The sidecar presents attestation with its lease requests (issue 15, item 6).

Real HTTP on loopback: the sidecar app (its FilterConfig as the operator renders it), the
real ledger service on an in-memory API server, the fake in-guest attestation agent with
a test issuer, and a fake model. The ledger verifies what the sidecar sends; no TEE needed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from attestation_support import FakeAgent, TestIssuer, spec
from dpserve.api.filterconfig import FilterConfig, LeaseSettings
from dpserve.api.mechanism import Mechanism
from dpserve.attestation.wire import PROOF_HEADER, TOKEN_HEADER
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.auth import Identity, service_account_user
from dpserve.ledger.service import LedgerService
from dpserve.ledger.settings import LedgerSettings
from dpserve_runtime.filter.app import create_app
from dpserve_runtime.filter.attestation import AttestationClient
from dpserve_runtime.filter.lease_client import LeaseClient, LedgerUnavailable
from dpserve_runtime.filter.metrics import FilterMetrics
from dpserve_testkit.fakes import FakeModel
from dpserve_testkit.memory_store import MemoryStore
from pod_support import add_serving_pod

NS, NAME, POD = "clinical-ml", "triage", "triage-0"
KEY = f"{NS}/{NAME}"
PATE = {"type": "pate", "teachers": 10, "noiseMultiplier": "40"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reviewer:
    async def review(self, token: str) -> Identity | None:
        if token != "sa-token":
            return None
        return Identity(username=service_account_user(NS, NAME), pod_name=POD)


@dataclass
class Stack:
    url: str
    session: aiohttp.ClientSession
    ledger: LedgerService
    store: MemoryStore
    agent: FakeAgent
    seen_headers: list[dict[str, str]]
    ledger_url: str
    token_path: Path
    # Lease requests the ledger has answered; notified after each answer.
    answered: list[int]
    answers: asyncio.Condition

    async def all_lease_requests_answered(self) -> None:
        async with self.answers:
            await asyncio.wait_for(self.answers.wait_for(
                lambda: self.answered[0] == len(self.seen_headers)), timeout=60)

    async def predict(self) -> tuple[int, Any]:
        async with self.session.post(f"{self.url}/v1/predict",
                                     json={"inputs": [[0.0]]}) as response:
            return response.status, json.loads(await response.text())

    def leases(self) -> list[dict[str, Any]]:
        status = self.store.budget(NS, "patients").get("status") or {}
        return list(status.get("leases", []))


Factory = Callable[..., Any]


@pytest.fixture
async def make_stack(tmp_path: Path) -> AsyncIterator[Factory]:
    servers: list[TestServer] = []
    agents: list[FakeAgent] = []
    sessions: list[aiohttp.ClientSession] = []

    async def factory(*, attested: bool = True, agent_issuer: TestIssuer | None = None,
                      trusted: TestIssuer | None = None) -> Stack:
        trusted = trusted or TestIssuer()
        agent = FakeAgent(agent_issuer or trusted, key_kind="EC")
        await agent.start()
        agents.append(agent)
        attestation = spec(jwks=trusted.jwks(), agent={"url": agent.url})
        confidential: dict[str, Any] = {"profile": "none", "required": False}
        if attested:
            confidential = {"profile": "coco-snp", "required": True,
                            "attestation": attestation.wire()}
        store = MemoryStore()
        store.put_budget(NS, "patients", {"epsilon": "8", "delta": "1e-6"})
        store.put_model(NS, NAME, {
            "budgetRef": {"name": "patients"},
            "model": {"artifact": "pvc://models/m/v1", "format": "pate-ensemble"},
            "serving": {"mechanism": PATE}, "confidential": confidential})
        add_serving_pod(store, NAME, POD, namespace=NS)  # the ledger grants to serving pods
        ledger = LedgerService(store, Reviewer(), settings=LedgerSettings(),
                               accounting=LedgerAccounting(), registry=CollectorRegistry())
        seen: list[dict[str, str]] = []
        answered, answers = [0], asyncio.Condition()

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path != "/v1/leases":
                return await handler(request)  # type: ignore[no-any-return]
            seen.append(dict(request.headers))
            try:
                return await handler(request)  # type: ignore[no-any-return]
            finally:
                async with answers:
                    answered[0] += 1
                    answers.notify_all()

        ledger.app.middlewares.append(record)
        ledger_server = TestServer(ledger.app, host="127.0.0.1", max_field_size=66 * 1024)
        model_server = TestServer(FakeModel().app(), host="127.0.0.1")
        for server in (ledger_server, model_server):
            await server.start_server()
            servers.append(server)
        token = tmp_path / "token"
        token.write_text("sa-token")
        config: dict[str, Any] = {
            "model": KEY, "modelVersion": "v1", "mechanism": PATE,
            "upstream": str(model_server.make_url("")).rstrip("/"),
            "ledgerUrl": str(ledger_server.make_url("")).rstrip("/"),
            "tokenPath": str(token), "podName": POD,
            "lease": {"initialSize": 4, "maxSize": 8, "prefetchFraction": 0.25},
        }
        if attested:
            config["attestation"] = {"agent": attestation.agent.wire(),
                                     "binding": attestation.binding.wire(),
                                     "maxAgeSeconds": attestation.max_age_seconds}
        app = create_app(FilterConfig.model_validate(config), POD,
                         metrics=FilterMetrics(KEY))
        sidecar = TestServer(app, host="127.0.0.1")
        await sidecar.start_server()
        servers.append(sidecar)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Stack(str(sidecar.make_url("")).rstrip("/"), session, ledger, store, agent,
                     seen, config["ledgerUrl"], token, answered, answers)

    yield factory
    for session in sessions:
        await session.close()
    for server in reversed(servers):
        await server.close()
    for agent in agents:
        await agent.stop()


async def test_the_sidecar_sends_its_token_and_a_proof_and_is_granted(
    make_stack: Factory,
) -> None:
    stack: Stack = await make_stack()
    for _ in range(6):  # more than one lease (initialSize 4)
        status, body = await stack.predict()
        assert status == 200, body
    assert len(stack.seen_headers) >= 2
    tokens = {h[TOKEN_HEADER] for h in stack.seen_headers}
    assert len(tokens) == 1  # fetched once from the agent, cached
    assert len(stack.agent.requests) == 1
    proofs = [h[PROOF_HEADER] for h in stack.seen_headers]
    assert len(set(proofs)) == len(proofs)  # one proof per lease request (its lease id)
    # A prefetch the last request started may still be waiting for its grant (the answer
    # does not wait for it): once the ledger answered it, every request with a token is
    # granted.
    await stack.all_lease_requests_answered()
    grants = stack.ledger.registry.get_sample_value("dpserve_lease_grants_total",
                                                    {"model_id": KEY})
    assert grants == len(stack.seen_headers)  # every request with a token was granted
    seen = stack.ledger.attestation.seen(KEY)
    assert seen.last is not None and seen.last.verdict.ok and seen.last.pod == POD


async def test_a_refused_token_means_no_answer_and_a_fresh_token_next(
    make_stack: Factory,
) -> None:
    trusted = TestIssuer()
    stack: Stack = await make_stack(trusted=trusted, agent_issuer=TestIssuer())
    status, body = await stack.predict()
    assert status == 503, body  # fail closed: no lease, no answer
    assert stack.leases() == []
    seen = stack.ledger.attestation.seen(KEY)
    assert seen.last is not None and seen.last.verdict.reason == "signature"
    # The lease client forgets a refused token: after Retry-After it fetches a new one
    # (here the agent's verifier has been fixed meanwhile) and is granted.
    clock = Clock()
    agent_settings = spec(jwks=trusted.jwks(), agent={"url": stack.agent.url})
    attestation = AttestationClient(
        session=stack.session, agent=agent_settings.agent, binding=agent_settings.binding,
        max_age_s=600, model=KEY, pod=POD)
    leases = LeaseClient(
        session=stack.session, ledger_url=stack.ledger_url, model=KEY, model_version="v1",
        pod=POD, mechanism=Mechanism.model_validate(PATE), token_path=stack.token_path,
        settings=LeaseSettings(initial_size=2, max_size=4), clock=clock,
        attestation=attestation)
    fetched = len(stack.agent.requests)
    with pytest.raises(LedgerUnavailable, match="AttestationFailed"):
        await leases.reserve(1)
    assert len(stack.agent.requests) == fetched + 1
    stack.agent.issuer = trusted
    clock.now += 10  # past Retry-After
    reservation = await leases.reserve(1)
    leases.settle(reservation, 1)
    assert len(stack.agent.requests) == fetched + 2  # the refused token was not reused
    assert len(stack.leases()) == 1
    await leases.close()


async def test_no_agent_no_lease_request(make_stack: Factory) -> None:
    stack: Stack = await make_stack()
    stack.agent.fail_status = 500
    status, body = await stack.predict()
    assert status == 503, body
    assert stack.seen_headers == []  # nothing was sent to the ledger without a token


async def test_without_attestation_no_headers_are_sent(make_stack: Factory) -> None:
    stack: Stack = await make_stack(attested=False)
    status, body = await stack.predict()
    assert status == 200, body
    assert stack.seen_headers and all(TOKEN_HEADER not in h and PROOF_HEADER not in h
                                      for h in stack.seen_headers)
    assert stack.agent.requests == []
