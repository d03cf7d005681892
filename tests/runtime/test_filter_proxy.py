"""The sidecar proxy with a fake ledger and a fake model, all real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from dpserve.api.filterconfig import FilterConfig
from dpserve_runtime.filter.app import create_app
from dpserve_runtime.filter.metrics import FilterMetrics
from dpserve_runtime.filter.pii import Finding, PiiAnalyzer
from dpserve_runtime.filter.verbatim import write_fingerprint_file
from dpserve_testkit.fakes import FakeLedger, FakeModel

EMAIL = "jane.roe@example.com"
PHONE = "(212) 555-0143"
PII_TEXT = f"contact {EMAIL} or {PHONE}"
TRAINING_TEXT = ("the quarterly statement for account holder Dmitri Ivanov lists a balance of "
                 "forty two thousand euros held at the Lisbon branch")
MODEL_ID = "ns/model"


@dataclass
class Stack:
    ledger: FakeLedger
    model: FakeModel
    url: str
    session: aiohttp.ClientSession
    metrics: FilterMetrics

    async def predict(self, body: Any = None, *, raw: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        data = raw if raw is not None else json.dumps(
            body if body is not None else {"inputs": [[0.0]]}).encode()
        async with self.session.post(f"{self.url}/v1/predict", data=data,
                                     headers=headers or {}) as response:
            text = await response.text()
            return response.status, json.loads(text), response.headers

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"model_id": MODEL_ID, **labels})
        return value or 0.0


StackFactory = Callable[..., Any]


@pytest.fixture(scope="module")
def analyzer() -> PiiAnalyzer:
    return PiiAnalyzer(["EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN"], 0.5,
                       {"PHONE_NUMBER": 0.4})


@pytest.fixture
async def make_stack(tmp_path: Path, analyzer: PiiAnalyzer) -> AsyncIterator[StackFactory]:
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def factory(*, budget: dict[str | None, int] | None = None,
                      model: FakeModel | None = None, ledger_url: str | None = None,
                      mechanism: dict[str, Any] | None = None,
                      analyzer_override: PiiAnalyzer | None = None,
                      ledger_versions: frozenset[str] | None = None,
                      **config: Any) -> Stack:
        ledger = FakeLedger(budget=budget if budget is not None else {None: 10_000},
                            versions=ledger_versions)
        model = model or FakeModel()
        ledger_server = TestServer(ledger.app(), host="127.0.0.1")
        model_server = TestServer(model.app(), host="127.0.0.1")
        for server in (ledger_server, model_server):
            await server.start_server()
            servers.append(server)
        token = tmp_path / "token"
        token.write_text("test-token")
        fingerprints = tmp_path / "fingerprints.json"
        write_fingerprint_file([TRAINING_TEXT], fingerprints, 8)
        raw_config = {
            "model": MODEL_ID,
            "modelVersion": "v1",
            "mechanism": mechanism or {"type": "pate", "teachers": 10, "noiseMultiplier": "40"},
            "upstream": str(model_server.make_url("")).rstrip("/"),
            "ledgerUrl": ledger_url or str(ledger_server.make_url("")).rstrip("/"),
            "tokenPath": str(token),
            "podName": "pod-0",
            "outputFilter": {"action": "redact",
                             "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN"],
                             "entityThresholds": {"PHONE_NUMBER": "0.4"},
                             "verbatimGuard": {"windowTokens": 8}},
            "fingerprintPath": str(fingerprints),
            "lease": {"initialSize": 8, "maxSize": 64, "prefetchFraction": 0.25},
            "upstreamTimeoutSeconds": 2,
            "maxBodyBytes": 4096,
        }
        raw_config.update(config)
        filter_config = FilterConfig.model_validate(raw_config)
        metrics = FilterMetrics(MODEL_ID)
        app = create_app(filter_config, "pod-0", analyzer=analyzer_override or analyzer,
                         metrics=metrics)
        sidecar = TestServer(app, host="127.0.0.1")
        await sidecar.start_server()
        servers.append(sidecar)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Stack(ledger, model, str(sidecar.make_url("")).rstrip("/"), session, metrics)

    yield factory
    for session in sessions:
        await session.close()
    for server in reversed(servers):
        await server.close()


async def test_clean_answer_passes_and_is_charged(make_stack: StackFactory) -> None:
    stack = await make_stack()
    status, body, headers = await stack.predict({"inputs": [[1.0], [2.0], [3.0]]},
                                                headers={"X-Request-Id": "req-123"})
    assert status == 200 and body["queries"] == 3 and body["outputs"][0]["text"] == "benign"
    assert headers["X-Request-Id"] == "req-123"
    assert stack.metric("dpserve_queries_charged_total", user_group="default") == 3
    assert stack.metric("dpserve_filter_requests_total", outcome="ok") == 1
    assert stack.ledger.requests[0]["requested"] == 8  # initialSize


async def test_pii_is_redacted(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeModel(text=PII_TEXT))
    status, body, _ = await stack.predict({"inputs": [[1.0], [2.0]]})
    assert status == 200
    assert body["outputs"][0]["text"] == "contact <EMAIL_ADDRESS> or <PHONE_NUMBER>"
    assert EMAIL not in json.dumps(body)
    assert stack.metric("ml_pii_filtered_output_total", entity_type="EMAIL_ADDRESS") == 2
    assert stack.metric("ml_pii_filtered_output_total", entity_type="PHONE_NUMBER") == 2


async def test_new_pii_in_every_answer_is_redacted(make_stack: StackFactory) -> None:
    """Another address and number in each output (bench/sidecar.py's echo-pii-new): every
    one analysed afresh and redacted."""
    model = FakeModel(text="mail jane{n}@example.com or (212) 555-{n}", numbered=True)
    stack = await make_stack(model=model)
    for _ in range(3):
        status, body, _ = await stack.predict({"inputs": [[1.0], [2.0]]})
        assert status == 200
        assert [o["text"] for o in body["outputs"]] == [
            "mail <EMAIL_ADDRESS> or <PHONE_NUMBER>"] * 2
    assert model.texts_sent == 6  # six distinct texts: jane0000 ... jane0005
    assert stack.metric("ml_pii_filtered_output_total", entity_type="EMAIL_ADDRESS") == 6
    assert stack.metric("ml_pii_filtered_output_total", entity_type="PHONE_NUMBER") == 6


async def test_block_action_withholds_answer(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeModel(text=PII_TEXT), outputFilter={
        "action": "block", "entities": ["EMAIL_ADDRESS"]})
    status, body, _ = await stack.predict()
    assert status == 451 and body["reason"] == "OutputBlocked"
    assert body["entityTypes"] == ["EMAIL_ADDRESS", "PHONE_NUMBER"]
    assert EMAIL not in json.dumps(body) and "555" not in json.dumps(body)
    assert stack.metric("dpserve_queries_charged_total", user_group="default") == 1


async def test_verbatim_reproduction_blocked(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeModel(text="Here: " + TRAINING_TEXT))
    status, body, _ = await stack.predict()
    assert status == 451 and body["reason"] == "VerbatimReproduction"
    assert "Ivanov" not in json.dumps(body)
    assert stack.metric("ml_verbatim_reproduction_blocked_total") == 1


async def test_budget_exhausted_is_429(make_stack: StackFactory) -> None:
    stack = await make_stack(budget={None: 0})
    status, body, _ = await stack.predict()
    assert status == 429 and body["reason"] == "BudgetExhausted" and body["message"]
    assert stack.model.answered_queries == 0


async def test_ledger_down_is_503_with_retry_after(make_stack: StackFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack = await make_stack(ledger_url=f"http://127.0.0.1:{port}")
    status, body, headers = await stack.predict()
    assert status == 503 and body["reason"] == "LedgerUnavailable"
    assert int(headers["Retry-After"]) >= 1
    assert stack.model.answered_queries == 0


async def test_unknown_version_fails_closed_with_retry_after(make_stack: StackFactory) -> None:
    # The model moved past this pod's version: the ledger has no budget to charge for it.
    stack = await make_stack(ledger_versions=frozenset({"v2"}))
    status, body, headers = await stack.predict()
    assert status == 503 and body["reason"] == "LedgerUnavailable"
    assert "v1" in body["message"] and int(headers["Retry-After"]) >= 1
    assert stack.model.answered_queries == 0 and stack.ledger.grants == []
    assert stack.ledger.requests[0]["modelVersion"] == "v1"


async def test_never_serves_more_than_granted(make_stack: StackFactory) -> None:
    stack = await make_stack(budget={None: 30})
    statuses = await asyncio.gather(*(stack.predict() for _ in range(100)))
    codes = [s for s, _, _ in statuses]
    assert codes.count(200) == 30 and codes.count(429) == 70
    assert stack.model.answered_queries == 30 == stack.ledger.granted_total()


async def test_batch_reservation_refunds_unreported_queries(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeModel(queries_per_input=0))
    status, body, _ = await stack.predict({"inputs": [[1.0]] * 5})
    assert status == 200 and body["queries"] == 0
    assert stack.metric("dpserve_queries_charged_total", user_group="default") == 0
    assert stack.metric("dpserve_lease_remaining_queries", user_group="default") == 8


async def test_partition_header(make_stack: StackFactory) -> None:
    stack = await make_stack(budget={"tenant-a": 1, "tenant-b": 5},
                             partitionHeader="X-Dpserve-Tenant")
    status, body, _ = await stack.predict()
    assert status == 400 and "X-Dpserve-Tenant" in body["message"]
    status, body, _ = await stack.predict(headers={"X-Dpserve-Tenant": "bad tenant!"})
    assert status == 400
    assert (await stack.predict(headers={"X-Dpserve-Tenant": "tenant-a"}))[0] == 200
    assert (await stack.predict(headers={"X-Dpserve-Tenant": "tenant-a"}))[0] == 429
    assert (await stack.predict(headers={"X-Dpserve-Tenant": "tenant-b"}))[0] == 200
    assert {r["partition"] for r in stack.ledger.requests} == {"tenant-a", "tenant-b"}


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"inputs": [[1.0]], "x": "\xff\xfe"}', 400, "UTF-8"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"inputs": []}', 400, "non-empty"),
        (b'{"inputs": "abc"}', 400, "non-empty"),
        (b'{"inputs": [' + b"[0]," * 100 + b"[0]]}", 413, "maxSize"),
        (b'{"inputs": [[' + b"0," * 3000 + b"0]]}", 413, "limit"),
        (b"[" * 2000 + b"]" * 2000, 400, ""),  # too deep, or not an object
    ],
)
async def test_bad_requests_get_json_answers(make_stack: StackFactory, raw: bytes,
                                             status: int, fragment: str) -> None:
    stack = await make_stack()
    got, body, _ = await stack.predict(raw=raw)
    assert got == status and body["reason"] and fragment in body["message"]
    assert stack.model.answered_queries == 0
    assert (await stack.predict())[0] == 200  # and the sidecar keeps serving


async def test_unknown_route_and_method_are_json(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.session.get(f"{stack.url}/nope") as response:
        assert response.status == 404 and (await response.json())["reason"] == "NotFound"
    async with stack.session.get(f"{stack.url}/v1/predict") as response:
        assert response.status == 405
        assert (await response.json())["reason"] == "MethodNotAllowed"


@pytest.mark.parametrize(
    ("mode", "status", "reason"),
    [
        ("bad-json", 502, "UpstreamError"),
        ("over-report", 502, "UpstreamProtocolError"),
        ("no-queries", 502, "UpstreamProtocolError"),
        ("huge-nesting", 502, "UpstreamError"),
        ("slow", 504, "UpstreamTimeout"),
    ],
)
async def test_upstream_misbehaviour(make_stack: StackFactory, mode: str, status: int,
                                     reason: str) -> None:
    stack = await make_stack(model=FakeModel(mode=mode, slow_seconds=5),  # type: ignore[arg-type]
                             upstreamTimeoutSeconds=0.5)
    got, body, _ = await stack.predict({"inputs": [[1.0], [2.0]]})
    assert (got, body["reason"]) == (status, reason)
    # A 200 answer whose spend cannot be read is charged in full; no answer, nothing.
    charged = 0 if mode == "slow" else 2
    assert stack.metric("dpserve_queries_charged_total", user_group="default") == charged


async def test_upstream_error_passes_through_as_json(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeModel(mode="error"))
    status, body, _ = await stack.predict()
    assert status == 500 and body["reason"] == "Internal"
    assert stack.metric("dpserve_queries_charged_total", user_group="default") == 0


async def test_upstream_down_is_502(make_stack: StackFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack = await make_stack(upstream=f"http://127.0.0.1:{port}")
    status, body, _ = await stack.predict()
    assert status == 502 and body["reason"] == "UpstreamError"
    assert stack.metric("dpserve_lease_remaining_queries", user_group="default") == 8


class _FailingAnalyzer(PiiAnalyzer):
    def analyze(self, text: str) -> list[Finding]:
        raise RuntimeError("analyzer crashed")


async def test_filter_failure_never_sends_unfiltered_body(make_stack: StackFactory) -> None:
    failing = _FailingAnalyzer(["EMAIL_ADDRESS"])
    stack = await make_stack(model=FakeModel(text=PII_TEXT), analyzer_override=failing)
    status, body, _ = await stack.predict()
    assert status == 500 and body["reason"] == "FilterError"
    assert EMAIL not in json.dumps(body)
    assert stack.metric("dpserve_queries_charged_total", user_group="default") == 1


async def test_mechanism_none_needs_no_lease(make_stack: StackFactory) -> None:
    stack = await make_stack(mechanism={"type": "none"}, model=FakeModel(queries_per_input=0))
    assert (await stack.predict())[0] == 200
    assert stack.ledger.requests == []
    charging = await make_stack(mechanism={"type": "none"})
    status, body, _ = await charging.predict()
    assert status == 502 and "none" in body["message"]


async def test_health_ready_metrics(make_stack: StackFactory) -> None:
    model = FakeModel()
    stack = await make_stack(model=model)
    async with stack.session.get(f"{stack.url}/healthz") as response:
        assert response.status == 200
    async with stack.session.get(f"{stack.url}/readyz") as response:
        assert response.status == 200
    model.ready = False
    async with stack.session.get(f"{stack.url}/readyz") as response:
        assert response.status == 503
        assert (await response.json())["reason"] == "UpstreamNotReady"
    await stack.predict()
    async with stack.session.get(f"{stack.url}/metrics") as response:
        text = await response.text()
    for name in ("ml_pii_filtered_output_total", "ml_verbatim_reproduction_blocked_total",
                 "ml_privacy_budget_consumed", "dpserve_filter_request_duration_seconds",
                 "dpserve_lease_granted_queries_total", "dpserve_filter_requests_total"):
        assert name in text
    assert 'ml_privacy_budget_consumed{model_id="ns/model",user_group="default"} 0.08' in text


async def test_slow_client_gets_408(make_stack: StackFactory) -> None:
    stack = await make_stack(clientTimeoutSeconds=0.3)
    host, port = stack.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"inputs\"")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert b" 408 " in head.split(b"\r\n")[0] and b"RequestTimeout" in head
    assert (await stack.predict())[0] == 200


async def test_audit_log_has_no_pii(make_stack: StackFactory,
                                    caplog: pytest.LogCaptureFixture) -> None:
    stack = await make_stack(model=FakeModel(text=PII_TEXT))
    with caplog.at_level(logging.INFO, logger="dpserve.audit"):
        await stack.predict({"inputs": [[1.0], [2.0]]}, headers={"X-Request-Id": "abc-1"})
    lines = [r.getMessage() for r in caplog.records if r.name == "dpserve.audit"]
    assert len(lines) == 1
    record = json.loads(lines[0])
    # The client's id is logged as a keyed hash only (tests/runtime/test_sidecar_audit.py).
    assert record["requestId"].startswith("h-") and "abc-1" not in lines[0]
    assert record["outcome"] == "redacted"
    assert record["entities"] == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 2}
    assert record["queriesCharged"] == 2 and record["latencyMs"] > 0
    assert EMAIL not in lines[0] and "555" not in lines[0]
