"""Lease client against a fake ledger served over HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dpserve.api.filterconfig import LeaseSettings
from dpserve.api.mechanism import Mechanism
from dpserve_runtime.filter.lease_client import (
    BudgetExhausted,
    LeaseClient,
    LedgerUnavailable,
)
from dpserve_runtime.filter.metrics import FilterMetrics
from dpserve_testkit.fakes import FakeLedger

MECHANISM = Mechanism(type="pate", teachers=10, noise_multiplier="40")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("test-token\n")
    return path


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _serve(ledger: FakeLedger) -> TestServer:
    server = TestServer(ledger.app(), host="127.0.0.1")
    await server.start_server()
    return server


def _client(session: aiohttp.ClientSession, url: str, token_file: Path, *,
            initial: int = 10, maximum: int = 1000, prefetch: float = 0.25,
            clock: FakeClock | None = None, metrics: FilterMetrics | None = None,
            attempts: int = 3, version: str = "v1") -> LeaseClient:
    return LeaseClient(
        session=session, ledger_url=url, model="ns/model", model_version=version, pod="pod-0",
        mechanism=MECHANISM,
        token_path=token_file, metrics=metrics, request_timeout=2.0, attempts=attempts,
        settings=LeaseSettings(initial_size=initial, max_size=maximum,
                               prefetch_fraction=prefetch),
        clock=clock if clock is not None else time.monotonic,
    )


async def test_serves_at_most_granted_then_exhausted(session: aiohttp.ClientSession,
                                                     token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 25})
    server = await _serve(ledger)
    client = _client(session, str(server.make_url("")), token_file, initial=10)
    served = 0
    with pytest.raises(BudgetExhausted) as info:
        for _ in range(100):
            reservation = await client.reserve(1)
            client.settle(reservation, 1)
            served += 1
    assert served == 25 == ledger.granted_total()
    assert info.value.epsilon_remaining == 0.0
    await client.close()
    await server.close()


async def test_concurrent_requests_never_over_serve(session: aiohttp.ClientSession,
                                                    token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 50})
    server = await _serve(ledger)
    client = _client(session, str(server.make_url("")), token_file, initial=8)

    async def one() -> bool:
        try:
            reservation = await client.reserve(1)
        except BudgetExhausted:
            return False
        await asyncio.sleep(0)
        client.settle(reservation, 1)
        return True

    outcomes = await asyncio.gather(*(one() for _ in range(200)))
    assert sum(outcomes) == 50 == ledger.granted_total()
    await client.close()
    await server.close()


async def test_batch_reservation_spans_leases_and_unused_returns(
        session: aiohttp.ClientSession, token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 1000}, max_grant=4)
    server = await _serve(ledger)
    client = _client(session, str(server.make_url("")), token_file, initial=4)
    reservation = await client.reserve(10)  # needs three grants of at most 4
    assert sum(n for _, n in reservation.parts) == 10
    before = client.remaining()
    client.settle(reservation, 3)
    assert client.remaining() == before + 7
    with pytest.raises(RuntimeError):
        client.settle(reservation, 1)
    with pytest.raises(ValueError):
        client.settle(await client.reserve(2), 3)
    await client.close()
    await server.close()


async def test_retries_keep_lease_id_and_fresh_id_after_answer(
        session: aiohttp.ClientSession, token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 1000}, fail_next=2)
    server = await _serve(ledger)
    client = _client(session, str(server.make_url("")), token_file, initial=5, prefetch=0.01)
    first = await client.reserve(5)
    ids = [r["leaseId"] for r in ledger.requests]
    assert len(ids) == 3 and len(set(ids)) == 1  # two 503s, then the grant, same id
    assert len(ledger.grants) == 1
    client.settle(first, 5)
    await client.reserve(1)
    assert ledger.requests[-1]["leaseId"] != ids[0]
    await client.close()
    await server.close()


async def test_id_kept_across_failed_rounds(session: aiohttp.ClientSession,
                                            token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 1000}, fail_next=3)
    server = await _serve(ledger)
    clock = FakeClock()
    client = _client(session, str(server.make_url("")), token_file, attempts=2, clock=clock)
    with pytest.raises(LedgerUnavailable):
        await client.reserve(1)
    clock.now += 60  # past the Retry-After window
    await client.reserve(1)
    assert len({r["leaseId"] for r in ledger.requests}) == 1
    assert len(ledger.grants) == 1
    await client.close()
    await server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_ledger_down_fails_closed_with_retry_after(
        session: aiohttp.ClientSession, token_file: Path) -> None:
    clock = FakeClock()
    client = _client(session, f"http://127.0.0.1:{_closed_port()}", token_file, clock=clock,
                     attempts=2)
    with pytest.raises(LedgerUnavailable) as info:
        await client.reserve(1)
    assert info.value.retry_after > 0 and "unreachable" in info.value.message
    # Remembered: the next request fails at once, without another round of connects.
    with pytest.raises(LedgerUnavailable):
        await asyncio.wait_for(client.reserve(1), 0.05)
    await client.close()


async def test_refusal_is_definitive(session: aiohttp.ClientSession, token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 10}, token="other-token")
    server = await _serve(ledger)
    clock = FakeClock()
    client = _client(session, str(server.make_url("")), token_file, clock=clock)
    with pytest.raises(LedgerUnavailable, match="401 Unauthenticated"):
        await client.reserve(1)
    assert len(ledger.requests) == 0  # refused before parsing: one attempt only
    clock.now += 60
    # A rotated projected token: the client reads the file on every request.
    await asyncio.to_thread(token_file.write_text, "other-token")
    await client.reserve(1)
    assert len(ledger.grants) == 1
    await client.close()
    await server.close()


async def test_requests_name_the_served_version(session: aiohttp.ClientSession,
                                                token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 100}, versions=frozenset({"v1", "v3"}))
    server = await _serve(ledger)
    client = _client(session, str(server.make_url("")), token_file, version="v3")
    client.settle(await client.reserve(1), 1)
    assert [r["modelVersion"] for r in ledger.requests] == ["v3"]
    assert [g.model_version for g in ledger.grants] == ["v3"]
    await client.close()
    await server.close()


async def test_unknown_version_fails_closed(session: aiohttp.ClientSession,
                                            token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 100}, versions=frozenset({"v2"}))
    server = await _serve(ledger)
    clock = FakeClock()
    client = _client(session, str(server.make_url("")), token_file, clock=clock, version="v1")
    with pytest.raises(LedgerUnavailable, match="ns/model v1") as info:
        await client.reserve(1)
    assert info.value.retry_after > 0
    assert len(ledger.requests) == 1 and ledger.grants == []  # definitive: not retried
    with pytest.raises(LedgerUnavailable):  # remembered for Retry-After: no new request
        await client.reserve(1)
    assert len(ledger.requests) == 1
    clock.now += 60
    ledger.versions = frozenset({"v1", "v2"})  # e.g. the ledger caught up with the model
    client.settle(await client.reserve(1), 1)
    assert len(ledger.grants) == 1 and ledger.requests[-1]["modelVersion"] == "v1"
    await client.close()
    await server.close()


class LedgerGate:
    """Holds the ledger's lease answers until released: a test sees a fetch in flight and
    decides when it lands, instead of timing a slow ledger."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.held = 0  # requests waiting at the gate
        self.answered = 0

    @web.middleware
    async def middleware(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        self.held += 1
        try:
            await self.open.wait()
            return await handler(request)
        finally:
            self.held -= 1
            self.answered += 1

    async def release_one(self, landed: Callable[[], bool]) -> None:
        """Let the held request through, and wait until ``landed`` says it arrived."""
        answered = self.answered
        self.open.set()
        for _ in range(30_000):  # the client handles the answer a few loop turns later
            if self.answered > answered and landed():
                self.open.clear()
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the held lease request never landed")


async def test_prefetch_avoids_stalls(session: aiohttp.ClientSession, token_file: Path) -> None:
    """With the ledger held, requests are still served from the remainder while the next
    lease is fetched: none waits for the ledger (it would not finish its first step)."""
    ledger = FakeLedger(budget={None: 10_000})
    gate = LedgerGate()
    app = ledger.app()
    app.middlewares.append(gate.middleware)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    clock = FakeClock()
    client = _client(session, str(server.make_url("")), token_file, initial=20, maximum=30,
                     prefetch=0.5, clock=clock)
    first = asyncio.ensure_future(client.reserve(1))  # the first one waits for the ledger
    await gate.release_one(first.done)
    client.settle(first.result(), 1)
    served_during_fetch = 0
    for _ in range(60):
        task = asyncio.ensure_future(client.reserve(1))
        await asyncio.sleep(0)  # one step: a reservation from memory completes in it
        assert task.done(), "a request waited for the ledger"
        client.settle(task.result(), 1)
        clock.now += 0.02  # a steady 50 queries per second
        if gate.held:
            served_during_fetch += 1
            if served_during_fetch % 4 == 0:  # a few more served, then the lease lands
                before = client.remaining()

                def landed(before: int = before) -> bool:
                    return client.remaining() > before

                await gate.release_one(landed)
    assert len(ledger.grants) >= 3
    assert served_during_fetch >= 8  # requests were served while fetches were in flight
    gate.open.set()
    await client.close()
    await server.close()


async def test_expired_lease_is_not_served(session: aiohttp.ClientSession,
                                           token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 1000}, ttl_seconds=30)
    server = await _serve(ledger)
    clock = FakeClock()
    metrics = FilterMetrics("ns/model")
    client = _client(session, str(server.make_url("")), token_file, initial=10, clock=clock,
                     metrics=metrics)
    client.settle(await client.reserve(1), 1)
    assert client.remaining() == 9
    clock.now += 30  # past expiresAt minus the margin
    assert client.remaining() == 0
    client.settle(await client.reserve(1), 1)
    assert len(ledger.grants) == 2
    expired = metrics.registry.get_sample_value(
        "dpserve_lease_expired_queries_total", {"model_id": "ns/model", "user_group": "default"})
    assert expired == 9
    await client.close()
    await server.close()


async def test_lease_size_follows_query_rate(session: aiohttp.ClientSession,
                                             token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 10**6})
    server = await _serve(ledger)
    clock = FakeClock()
    client = _client(session, str(server.make_url("")), token_file, initial=10, maximum=500,
                     prefetch=0.01, clock=clock)
    while len(ledger.requests) < 3:
        client.settle(await client.reserve(1), 1)
        clock.now += 0.01  # 100 queries per second
        await asyncio.sleep(0)
    sizes = [r["requested"] for r in ledger.requests]
    # initialSize; then the rate over the first (floored) second: 10/s x 10 s horizon; then
    # the steady 100/s x 10 s, capped at maxSize.
    assert sizes == [10, 100, 500]
    await client.close()
    await server.close()


async def test_partitions_have_separate_leases(session: aiohttp.ClientSession,
                                               token_file: Path) -> None:
    ledger = FakeLedger(budget={"tenant-a": 3, "tenant-b": 5})
    server = await _serve(ledger)
    metrics = FilterMetrics("ns/model")
    client = _client(session, str(server.make_url("")), token_file, initial=10, metrics=metrics)
    for _ in range(3):
        client.settle(await client.reserve(1, "tenant-a"), 1)
    with pytest.raises(BudgetExhausted):
        await client.reserve(1, "tenant-a")
    for _ in range(5):
        client.settle(await client.reserve(1, "tenant-b"), 1)
    assert {r["partition"] for r in ledger.requests} == {"tenant-a", "tenant-b"}
    consumed = metrics.registry.get_sample_value(
        "ml_privacy_budget_consumed", {"model_id": "ns/model", "user_group": "tenant-b"})
    assert consumed == pytest.approx(0.05)
    await client.close()
    await server.close()


async def test_grant_larger_than_requested_is_capped(session: aiohttp.ClientSession,
                                                     token_file: Path) -> None:
    ledger = FakeLedger(budget={None: 100})
    original = ledger._handle

    async def generous(request: aiohttp.web.Request) -> aiohttp.web.Response:
        response = await original(request)
        body = json.loads(response.body)  # type: ignore[arg-type]
        body["granted"] = 50
        return aiohttp.web.json_response(body)

    ledger._handle = generous  # type: ignore[method-assign]
    server = await _serve(ledger)
    client = _client(session, str(server.make_url("")), token_file, initial=4)
    await client.reserve(1)
    assert client.remaining() == 3  # the ledger said 50; only the 4 asked for are served
    await client.close()
    await server.close()
