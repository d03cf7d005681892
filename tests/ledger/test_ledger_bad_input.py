"""Client mistakes never come back as a 5xx or a traceback (issue 13, item 5).

The lease endpoint is fuzzed with hypothesis-generated bodies: arbitrary JSON, a valid body
with one field replaced by arbitrary JSON, and deep nesting. Every answer must be a
documented 4xx (or a grant), and nothing may be logged with a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import LAPLACE, NS, FakeReviewer, budget_spec, lease_body, make_service

from dpserve.api.lease import LeaseError
from dpserve_testkit.memory_store import MemoryStore

AUTH = {"Authorization": "Bearer tok-triage"}
Client = TestClient[Any, Any]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELDS = ["leaseId", "model", "modelVersion", "pod", "mechanism", "partition", "requested"]


@pytest.fixture
def served(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[asyncio.Runner, Client]]:
    """A ledger over HTTP on its own loop, so hypothesis can drive it example by example."""
    store = MemoryStore()
    partitions = {"header": "X-Dpserve-Tenant", "epsilon": "1"}
    store.put_budget(NS, "patients", budget_spec(partitions=partitions))
    store.put_model(NS, "triage", _model(LAPLACE))
    reviewer = FakeReviewer(store=store)
    reviewer.add("tok-triage", "triage", pod="triage-0")
    caplog.set_level(logging.DEBUG)
    with asyncio.Runner() as runner:
        client = runner.run(_client(make_service(store, reviewer).app))
        try:
            yield runner, client
        finally:
            runner.run(client.close())


async def _client(app: Any) -> Client:
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    return client


def _model(mech: dict[str, Any]) -> dict[str, Any]:
    return {
        "budgetRef": {"name": "patients"},
        "model": {"artifact": "pvc://models/m/v1", "format": "state-dict"},
        "serving": {"mechanism": mech},
        "confidential": {"profile": "none", "required": False},
    }


async def _post(client: Client, data: bytes) -> tuple[int, Any]:
    response = await client.post("/v1/leases", data=data, headers=AUTH)
    return response.status, await response.json()


def _check(
    runner: asyncio.Runner, client: Client, caplog: pytest.LogCaptureFixture, data: bytes
) -> tuple[int, LeaseError | None]:
    caplog.clear()
    status, payload = runner.run(_post(client, data))
    assert status < 500, (status, payload, data[:200])
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert not tracebacks, tracebacks[0].getMessage()
    if status == 200:
        return status, None
    return status, LeaseError.model_validate(payload)


def test_deeply_nested_json_is_a_400_naming_the_body(
    served: tuple[asyncio.Runner, Client], caplog: pytest.LogCaptureFixture
) -> None:
    runner, client = served
    for opener, closer in (("[", "]"), ('{"":', "}")):
        data = (opener * 2500 + "1" + closer * 2500).encode()  # within the 16 KiB limit
        status, error = _check(runner, client, caplog, data)
        assert status == 400 and error is not None and error.reason == "BadRequest"
        assert error.message.startswith("body:"), error.message


def test_a_partition_that_fails_its_pattern_is_a_400_naming_it(
    served: tuple[asyncio.Runner, Client], caplog: pytest.LogCaptureFixture
) -> None:
    runner, client = served
    for tenant in ("-leading-dash", "has space", "trailing.", "ü-tenant"):
        body = lease_body(mech=LAPLACE, partition=tenant)
        status, error = _check(runner, client, caplog, json.dumps(body).encode())
        assert status == 400 and error is not None, (tenant, status)
        assert error.message.startswith("partition:"), error.message
    good = lease_body(mech=LAPLACE, partition="tenant-a", lease_id="lease-good-1")
    assert _check(runner, client, caplog, json.dumps(good).encode())[0] == 200


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def _fuzz_one(
    runner: asyncio.Runner, client: Client, caplog: pytest.LogCaptureFixture, data: st.DataObject
) -> None:
    kind = data.draw(st.sampled_from(["any", "field", "bytes"]))
    if kind == "any":
        raw = json.dumps(data.draw(JSON)).encode()
    elif kind == "field":
        body = lease_body(mech=LAPLACE, partition="tenant-a",
                          lease_id=f"lease-{data.draw(st.integers(0, 10**9)):012d}")
        body[data.draw(st.sampled_from(FIELDS))] = data.draw(JSON)
        raw = json.dumps(body).encode()
    else:
        raw = data.draw(st.binary(max_size=200))
    _check(runner, client, caplog, raw)


def test_fuzzed_bodies_never_answer_5xx_or_log_a_traceback(
    served: tuple[asyncio.Runner, Client], caplog: pytest.LogCaptureFixture
) -> None:
    runner, client = served
    _fuzz_one(runner, client, caplog)
