"""Every JSON endpoint of the sidecar under hypothesis-generated bodies (issue 13.5): a client
mistake is a 4xx in the route's own error shape (OpenAI for /v1/*completions and
/v1/embeddings, Open Inference Protocol v2 for /v2, ``{"reason", "message"}`` for
/v1/predict), never a 5xx, never a traceback in the log; a body nested too deeply to parse
is a 400 naming the field."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.openai_fake_upstream import FakeTextModel

from dpserve.api.filterconfig import FilterConfig
from dpserve_runtime.filter.app import create_app
from dpserve_runtime.filter.pii import PiiAnalyzer
from dpserve_testkit.fakes import FakeLedger, FakeModel

PREDICT, INFER = "/v1/predict", "/v2/models/model/infer"
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
TENSOR_PATHS, GENERATION_PATHS = (PREDICT, INFER), (CHAT, COMPLETIONS)


class _Errors(logging.Handler):
    """Every ERROR record, or any record with a traceback, logged while the stacks run."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@dataclass
class Stacks:
    """Three sidecars (tensor model, text generator, embeddings) on one background loop."""

    ports: dict[str, int]
    errors: _Errors

    def post(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        port = self.ports[path]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type") or "", response.read()
        finally:
            conn.close()


def _config(tmp: Path, upstream: str, ledger: str, **fields: Any) -> FilterConfig:
    return FilterConfig.model_validate({
        "model": "ns/model", "modelVersion": "v1",
        "mechanism": {"type": "pate", "teachers": 10, "noiseMultiplier": "40"},
        "upstream": upstream, "ledgerUrl": ledger, "tokenPath": str(tmp / "token"),
        "podName": "pod-0",
        "outputFilter": {"action": "redact", "entities": ["EMAIL_ADDRESS"],
                         "verbatimGuard": {"enabled": False}},
        "lease": {"initialSize": 8, "maxSize": 64}, "maxBodyBytes": 512 * 1024,
    } | fields)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "token").write_text("test-token")
    analyzer = PiiAnalyzer(["EMAIL_ADDRESS"], 0.5, {})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[TestServer] = []
    errors = _Errors()
    logging.getLogger().addHandler(errors)

    async def serve(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    async def start() -> dict[str, int]:
        ledger = await serve(FakeLedger(budget={None: 10**9}).app())
        ports: dict[str, int] = {}
        for paths, model, fields in (
            (TENSOR_PATHS, FakeModel().app(), {}),
            (GENERATION_PATHS, FakeTextModel().app(),
             {"task": "text-generation", "mechanism": {"type": "none"}}),
            ((EMBEDDINGS,), FakeTextModel().app(),
             {"task": "feature-extraction",
              "mechanism": {"type": "laplace-embedding", "epsilon": "1"}}),
        ):
            config = _config(tmp, await serve(model), ledger, **fields)
            url = await serve(create_app(config, "pod-0", analyzer=analyzer))
            for path in paths:
                ports[path] = int(url.rsplit(":", 1)[1])
        return ports

    try:
        ports = asyncio.run_coroutine_threadsafe(start(), loop).result(120)
        yield Stacks(ports, errors)
    finally:
        logging.getLogger().removeHandler(errors)

        async def stop() -> None:
            for server in reversed(servers):
                await server.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def _check_refusal(path: str, status: int, raw: bytes) -> dict[str, Any]:
    """A client mistake: a 4xx in the route's error shape; the decoded body."""
    assert 400 <= status < 500, (path, status, raw[:300])
    body: dict[str, Any] = json.loads(raw)
    if path == PREDICT:
        assert set(body) >= {"reason", "message"} and body["message"], body
    elif path == INFER:
        assert set(body) == {"error"} and isinstance(body["error"], str), body
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body


def _message(path: str, body: dict[str, Any]) -> str:
    if path == PREDICT:
        return str(body["message"])
    if path == INFER:
        return str(body["error"])
    return str(body["error"]["message"])


_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
            | st.text(max_size=16))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_fields = st.sampled_from([
    "inputs", "model", "messages", "prompt", "input", "max_tokens", "n", "stream", "stop",
    "temperature", "top_p", "seed", "encoding_format", "id", "parameters", "outputs", "name",
    "shape", "datatype", "data", "role", "content"])
_inputs = st.fixed_dictionaries({
    "name": st.sampled_from(["input", "text"]) | st.text(max_size=4),
    "shape": st.lists(st.integers(-1, 4), max_size=3) | _json,
    "datatype": st.sampled_from(["FP32", "INT8", "BYTES", "UINT64"]) | _json,
    "data": _json})
_bodies = st.one_of(
    _json,
    st.dictionaries(_fields, _json, max_size=6),
    st.fixed_dictionaries({"model": st.sampled_from(["model", "other"]),
                           "messages": st.lists(st.fixed_dictionaries({
                               "role": st.sampled_from(["user", "system", "tool", "x"]),
                               "content": _json}), max_size=2)},
                          optional={"n": _json, "max_tokens": _json, "stream": _json}),
    st.fixed_dictionaries({"model": st.just("model"), "prompt": _json, "input": _json}),
    st.fixed_dictionaries({"inputs": st.lists(_inputs, max_size=2)},
                          optional={"outputs": _json, "id": _json, "parameters": _json}),
)
_ALL_PATHS = st.sampled_from([*TENSOR_PATHS, *GENERATION_PATHS, EMBEDDINGS])


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=_ALL_PATHS, body=_bodies)
def test_fuzzed_bodies_get_a_4xx_in_the_route_shape_or_an_answer(
        stacks: Stacks, path: str, body: Any) -> None:
    try:
        raw = json.dumps(body).encode()
    except ValueError:  # NaN/inf are not JSON: sent as Python writes them, still refused
        raw = json.dumps(body, allow_nan=True).encode()
    status, _, answer = stacks.post(path, raw)
    if status != 200:
        _check_refusal(path, status, answer)
    assert not stacks.errors.records, [r.getMessage() for r in stacks.errors.records]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=_ALL_PATHS, raw=st.binary(max_size=64))
def test_fuzzed_bytes_are_refused_in_the_route_shape(stacks: Stacks, path: str,
                                                     raw: bytes) -> None:
    status, _, answer = stacks.post(path, raw)
    if status != 200:
        _check_refusal(path, status, answer)
    assert not stacks.errors.records, [r.getMessage() for r in stacks.errors.records]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=_ALL_PATHS, field=_fields, depth=st.integers(5_000, 60_000),
       opening=st.sampled_from(["[", "{"]))
def test_a_body_nested_too_deeply_is_a_400_naming_the_field(
        stacks: Stacks, path: str, field: str, depth: int, opening: str) -> None:
    nested = ('{"k":' * depth + "1" + "}" * depth if opening == "{"
              else "[" * depth + "]" * depth)
    raw = f'{{"model": "model", "{field}": {nested}}}'.encode()
    status, _, answer = stacks.post(path, raw)
    body = _check_refusal(path, status, answer)
    assert status == 400
    assert f"field '{field}' is nested too deeply" in _message(path, body), body
    if path not in (PREDICT, INFER):
        assert body["error"]["param"] == field
    # The body itself nested too deeply: an array names no field, an object its key.
    status, _, answer = stacks.post(path, nested.encode())
    body = _check_refusal(path, status, answer)
    where = "the body" if opening == "[" else "field 'k'"
    assert f"{where} is nested too deeply" in _message(path, body), body
    assert not stacks.errors.records, [r.getMessage() for r in stacks.errors.records]
