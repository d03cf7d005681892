"""The sidecar's attestation client against a fake in-guest agent, checked by the verifier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from attestation_support import (
    MODEL,
    RUNTIME_DATA_PATH,
    FakeAgent,
    TestIssuer,
    spec,
)
from dpserve.attestation import LeaseContext, binding_digest, load_jwks, verify
from dpserve.attestation.spec import DEFAULT_AGENT_URL, AgentSettings, PodBinding
from dpserve.attestation.wire import PROOF_HEADER, TOKEN_HEADER
from dpserve_runtime.filter.attestation import (
    AttestationClient,
    AttestationUnavailable,
    agent_url,
    parse_agent_answer,
)

POD = "triage-7c9-x2"
OTHER_POD = "triage-7c9-q8"
LEASE = "3f2c0d9e1a7b4c55"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def agent() -> AsyncIterator[FakeAgent]:
    fake = FakeAgent(TestIssuer())
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _client(session: aiohttp.ClientSession, url: str, *, mode: str = "tee-key",
            clock: Clock | None = None, pod: str = POD, timeout: int = 5) -> AttestationClient:
    binding = PodBinding.model_validate(
        {"mode": mode, "path": RUNTIME_DATA_PATH} if mode == "runtime-data" else {})
    return AttestationClient(
        session=session, agent=AgentSettings(url=url, timeout_seconds=timeout),
        binding=binding, max_age_s=600, model=MODEL, pod=pod,
        clock=clock or Clock(1_800_000_000.0),
    )


def _verify(agent: FakeAgent, headers: dict[str, str], *, now: float, pod: str = POD,
            lease_id: str = LEASE, **overrides: Any) -> Any:
    attestation = spec(jwks=agent.issuer.jwks(), **overrides)
    lease = LeaseContext(model=MODEL, pod=pod, lease_id=lease_id,
                         proof=headers.get(PROOF_HEADER))
    return verify(headers.get(TOKEN_HEADER), attestation, load_jwks(agent.issuer.jwks()),
                  now=now, lease=lease)


def test_default_agent_is_coco_api_server_rest() -> None:
    assert DEFAULT_AGENT_URL == "http://127.0.0.1:8006/aa/token?token_type=kbs"
    assert AgentSettings().url == DEFAULT_AGENT_URL


async def test_token_and_proof_from_the_agent_verify(
    agent: FakeAgent, session: aiohttp.ClientSession
) -> None:
    clock = Clock(1_800_000_000.0)
    agent.clock = clock
    client = _client(session, agent.url, clock=clock)
    headers = await client.headers(LEASE)
    assert set(headers) == {TOKEN_HEADER, PROOF_HEADER}
    verdict = _verify(agent, headers, now=clock.now)
    assert verdict.ok, verdict.message
    # the same headers replayed by another pod, or for another lease, are refused
    assert _verify(agent, headers, now=clock.now, pod=OTHER_POD).reason == "binding"
    assert _verify(agent, headers, now=clock.now, lease_id="ffffffffffffffff").reason == \
        "binding"


async def test_token_is_cached_until_near_expiry(
    agent: FakeAgent, session: aiohttp.ClientSession
) -> None:
    clock = Clock(1_800_000_000.0)
    agent.clock = clock
    client = _client(session, agent.url, clock=clock)
    first = await client.headers(LEASE)
    clock.now += 200  # 300 s token: still well before its refresh point
    second = await client.headers("aaaaaaaaaaaaaaaa")
    assert len(agent.requests) == 1
    assert first[TOKEN_HEADER] == second[TOKEN_HEADER]
    assert first[PROOF_HEADER] != second[PROOF_HEADER]  # one proof per lease request
    clock.now += 80  # within the refresh margin (30 s of a 300 s token)
    third = await client.headers(LEASE)
    assert len(agent.requests) == 2 and third[TOKEN_HEADER] != first[TOKEN_HEADER]
    assert _verify(agent, third, now=clock.now).ok


async def test_concurrent_requests_share_one_fetch(
    agent: FakeAgent, session: aiohttp.ClientSession
) -> None:
    clock = Clock(1_800_000_000.0)
    agent.clock = clock
    client = _client(session, agent.url, clock=clock)
    results = await asyncio.gather(*(client.headers(f"lease-{i:012d}") for i in range(8)))
    assert len(agent.requests) == 1
    assert len({r[TOKEN_HEADER] for r in results}) == 1


async def test_agent_failure_fails_closed(
    agent: FakeAgent, session: aiohttp.ClientSession
) -> None:
    agent.fail_status = 500
    client = _client(session, agent.url)
    with pytest.raises(AttestationUnavailable, match="answered 500"):
        await client.headers(LEASE)


async def test_refresh_failure_keeps_a_still_usable_token_then_fails_closed(
    agent: FakeAgent, session: aiohttp.ClientSession
) -> None:
    clock = Clock(1_800_000_000.0)
    agent.clock = clock
    client = _client(session, agent.url, clock=clock)
    first = await client.headers(LEASE)
    agent.fail_status = 503
    clock.now += 280  # past the refresh point, before the token's end
    assert (await client.headers(LEASE))[TOKEN_HEADER] == first[TOKEN_HEADER]
    clock.now += 20  # past exp - 5 s: never sent again
    with pytest.raises(AttestationUnavailable):
        await client.headers(LEASE)


async def test_unreachable_agent_fails_closed(session: aiohttp.ClientSession) -> None:
    fake = FakeAgent(TestIssuer())
    url = await fake.start()
    await fake.stop()  # nothing listens there any more
    client = _client(session, url, timeout=2)
    with pytest.raises(AttestationUnavailable, match="unreachable"):
        await client.headers(LEASE)


async def test_tee_key_mode_needs_the_agent_keypair(
    agent: FakeAgent, session: aiohttp.ClientSession
) -> None:
    agent.send_keypair = False
    with pytest.raises(AttestationUnavailable, match="tee_keypair"):
        await _client(session, agent.url).headers(LEASE)


async def test_token_expired_on_arrival_is_not_used(
    agent: FakeAgent, session: aiohttp.ClientSession
) -> None:
    clock = Clock(1_800_000_000.0)
    agent.clock = lambda: clock.now - 1000  # the agent's tokens are long expired
    with pytest.raises(AttestationUnavailable, match="usable for"):
        await _client(session, agent.url, clock=clock).headers(LEASE)


async def test_runtime_data_mode_asks_for_a_token_bound_to_this_pod(
    agent: FakeAgent, session: aiohttp.ClientSession
) -> None:
    clock = Clock(1_800_000_000.0)
    agent.clock = clock
    agent.bare_token = True  # an agent answering the token alone
    client = _client(session, agent.url, mode="runtime-data", clock=clock)
    headers = await client.headers(LEASE)
    assert set(headers) == {TOKEN_HEADER}
    assert agent.requests[0].query == {"token_type": "kbs",
                                       "runtime_data": binding_digest(MODEL, POD)}
    binding = {"mode": "runtime-data", "path": RUNTIME_DATA_PATH}
    assert _verify(agent, headers, now=clock.now, binding=binding).ok
    assert _verify(agent, headers, now=clock.now, pod=OTHER_POD, binding=binding).reason == \
        "binding"


def test_agent_url_appends_runtime_data_only_in_that_mode() -> None:
    digest = binding_digest(MODEL, POD)
    assert agent_url(DEFAULT_AGENT_URL, "tee-key", MODEL, POD) == DEFAULT_AGENT_URL
    assert agent_url(DEFAULT_AGENT_URL, "runtime-data", MODEL, POD) == \
        f"{DEFAULT_AGENT_URL}&runtime_data={digest}"
    assert agent_url("http://127.0.0.1:9/token", "runtime-data", MODEL, POD) == \
        f"http://127.0.0.1:9/token?runtime_data={digest}"


@pytest.mark.parametrize("raw,problem", [
    (b'{"tee_keypair": "x"}', "no token"),
    (b'{"token": "a.b.c", "tee_keypair": 5}', "PEM string"),
])
def test_bad_agent_answers_are_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(AttestationUnavailable, match=problem):
        parse_agent_answer(raw)


def test_agent_answer_forms() -> None:
    assert parse_agent_answer(b'{"token": "a.b.c", "tee_keypair": "PEM"}') == ("a.b.c", "PEM")
    assert parse_agent_answer(b'"a.b.c"') == ("a.b.c", None)
    assert parse_agent_answer(b"a.b.c\n") == ("a.b.c", None)


async def test_invalidate_fetches_a_new_token(
    agent: FakeAgent, session: aiohttp.ClientSession
) -> None:
    clock = Clock(1_800_000_000.0)
    agent.clock = clock
    client = _client(session, agent.url, clock=clock)
    first = await client.headers(LEASE)
    client.invalidate()  # e.g. the ledger answered 403 AttestationFailed
    second = await client.headers(LEASE)
    assert len(agent.requests) == 2 and second[TOKEN_HEADER] != first[TOKEN_HEADER]
