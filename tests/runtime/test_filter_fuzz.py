"""Fuzzing the request path: arbitrary bodies and headers never crash the sidecar, always get
a JSON answer, and never carry the PII the model put in its outputs."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dpserve.api.filterconfig import FilterConfig
from dpserve_runtime.filter.app import create_app
from dpserve_testkit.fakes import FakeLedger, FakeModel

EMAIL = "jane.roe@example.com"
PHONE = "(212) 555-0143"
TENANT_HEADER = "X-Dpserve-Tenant"
ALLOWED = {200, 400, 404, 405, 408, 413, 429, 431, 451, 503}


class LoopbackStack:
    """Ledger, model and sidecar on loopback, served by an event loop in a thread."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[web.AppRunner] = []
        self.port = 0

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        return int(runner.addresses[0][1])

    async def _start(self) -> None:
        ledger_port = await self._serve(
            FakeLedger(budget={None: 10**9, "t1": 10**9, "t2": 5}).app())
        model_port = await self._serve(FakeModel(text=f"call {PHONE} or mail {EMAIL}").app())
        token = self.tmp / "token"
        token.write_text("test-token")
        config = FilterConfig.model_validate({
            "model": "ns/model",
            "modelVersion": "v1",
            "mechanism": {"type": "pate", "teachers": 10, "noiseMultiplier": "40"},
            "upstream": f"http://127.0.0.1:{model_port}",
            "ledgerUrl": f"http://127.0.0.1:{ledger_port}",
            "tokenPath": str(token),
            "outputFilter": {"action": "redact", "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER"],
                             "entityThresholds": {"PHONE_NUMBER": "0.4"}},
            "partitionHeader": TENANT_HEADER,
            "maxBodyBytes": 8192,
            "clientTimeoutSeconds": 5,
        })
        self.port = await self._serve(create_app(config, "pod-0"))

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in reversed(self.runners):
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def request(self, method: str, path: str, body: bytes | None,
                headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackStack]:
    running = LoopbackStack(tmp_path_factory.mktemp("fuzz"))
    running.start()
    yield running
    running.stop()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=5),
    max_leaves=25,
)
_valid_bodies = st.builds(
    lambda inputs: json.dumps({"inputs": inputs}).encode(),
    st.lists(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=4), min_size=1, max_size=5))
_bodies = st.one_of(
    _valid_bodies, _valid_bodies, _valid_bodies,
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda inputs, extra: json.dumps({"inputs": inputs, **extra}).encode(),
              st.lists(_json_values, max_size=6),
              st.dictionaries(st.text(max_size=6), _json_values, max_size=3)),
    st.binary(min_size=8193, max_size=9000),
)
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_tenants = st.one_of(st.just("t1"), st.just("t1"), st.just("t2"), st.none(), _header_value)
_headers = st.builds(
    lambda tenant, other: {**other, **({TENANT_HEADER: tenant} if tenant is not None else {})},
    _tenants,
    st.dictionaries(st.sampled_from(["Content-Type", "X-Request-Id", "Accept",
                                     "Content-Encoding", "X-Anything"]),
                    _header_value, max_size=3),
)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=_bodies, headers=_headers,
       method=st.sampled_from(["POST"] * 8 + ["GET", "PUT"]))
def test_fuzzed_requests_get_json_and_never_leak(stack: LoopbackStack, body: bytes,
                                                 headers: dict[str, str], method: str) -> None:
    status, response_headers, raw = stack.request(method, "/v1/predict", body, headers)
    event(f"status {status}")
    assert status in ALLOWED, (status, raw[:200])
    assert response_headers.get("Content-Type", "").startswith("application/json")
    answer: Any = json.loads(raw)
    assert EMAIL.encode() not in raw and b"555-0143" not in raw
    if status == 200:
        assert answer["outputs"][0]["text"] == "call <PHONE_NUMBER> or mail <EMAIL_ADDRESS>"
    else:
        assert set(answer) >= {"reason", "message"}


def test_still_serving_after_fuzzing(stack: LoopbackStack) -> None:
    status, _, raw = stack.request("POST", "/v1/predict", b'{"inputs": [[1]]}',
                                   {TENANT_HEADER: "t1"})
    assert status == 200 and EMAIL.encode() not in raw
    assert stack.request("GET", "/healthz", None, {})[0] == 200
